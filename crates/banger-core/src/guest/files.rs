//! The files banger puts into every rootfs, and their fingerprint (part of
//! an image's digest). Pure.

use serde::{Deserialize, Serialize};

use crate::guest;

/// How a guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// busybox init + sshd: boots in about 4 s under TCG.
    Light,
    /// The distribution's systemd.
    Systemd,
}

/// A hash of everything banger puts into a rootfs and initrd (both init
/// modes): part of an image's digest, so a change to the guest side makes
/// new images even when no one bumped `images::recipe::BUILDER_VERSION`.
pub fn guest_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for init in [InitMode::Light, InitMode::Systemd] {
        for (path, contents, mode) in guest_files(init) {
            h.update(format!("{path} {mode:o} {}\n", contents.len()));
            h.update(contents.as_bytes());
        }
    }
    h.update(guest::initrd_init().as_bytes());
    hex::encode(h.finalize())
}

/// The files banger puts into every rootfs (relative path, contents, mode).
pub fn guest_files(init: InitMode) -> Vec<(&'static str, String, u32)> {
    vec![
        ("usr/lib/banger/init", guest::guest_init(), 0o755),
        ("usr/lib/banger/inittab", guest::inittab(), 0o644),
        ("usr/lib/banger/ready", guest::ready_script(), 0o755),
        ("usr/lib/banger/agent", guest::agent_stub(), 0o755),
        ("usr/lib/banger/agent-sh", guest::agent_script(), 0o755),
        (
            "usr/lib/banger/init-mode",
            match init {
                InitMode::Light => "light\n".into(),
                InitMode::Systemd => "systemd\n".into(),
            },
            0o644,
        ),
        ("etc/systemd/system/banger-ready.service", guest::ready_unit(), 0o644),
        ("etc/systemd/system/banger-agent.service", guest::agent_unit(), 0o644),
        (
            "etc/ssh/sshd_config.d/banger.conf",
            "# banger: key-only root login, no reverse DNS of clients.\nUseDNS no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                .into(),
            0o644,
        ),
        ("etc/fstab", "/dev/vda / ext4 rw,noatime 0 1\n".into(), 0o644),
    ]
}
