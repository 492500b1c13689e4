//! The per-VM config disk: a tiny ext4 filesystem (label `banger-cfg`) made
//! with `mkfs.ext4 -d` from a directory, no mounts. [`ConfigDisk::files`]
//! is the pure layout; [`write`] is the effect.
//!
//! ```text
//! hostname         the VM's hostname
//! network          ADDRESS='10.x.y.z/24' GATEWAY='...' DNS='...' (sh, values quoted)
//! authorized_keys  keys allowed to log in as root
//! ssh/ssh_host_ed25519_key(.pub)  the VM's own host key, made by the daemon
//! environment      KEY=VALUE lines for /etc/environment
//! machine-id       32 hex digits
//! work             where to mount the work disk (label banger-work)
//! guest.sh         the guest script banger-agent runs (rename, reload)
//! banger-agent     the daemon's guest agent (a static binary), when it has one
//! ```

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::shell::quote;
use crate::tools::{self, ToolError};

use super::CONFIG_LABEL;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDisk {
    pub hostname: String,
    /// CIDR, e.g. `172.30.0.2/24`; `None` leaves the network unconfigured.
    pub address: Option<String>,
    pub gateway: Option<String>,
    /// The NIC's MAC; applied by the agent after a restore (at boot the VMM
    /// already gives the NIC its MAC).
    pub mac: Option<String>,
    pub dns: Vec<String>,
    pub authorized_keys: Vec<String>,
    /// OpenSSH private key text and public key line.
    pub host_key: Option<(String, String)>,
    pub env: Vec<(String, String)>,
    pub machine_id: Option<String>,
    pub work_mount: Option<String>,
    /// Ask the guest to grow its root filesystem to the disk (after `vm set --disk-size`).
    pub grow_root: bool,
    /// The guest agent binary to ship (a host path), see [`super::agent`].
    pub agent_binary: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ConfigDiskError {
    #[error("Invalid environment variable {0:?}: names are letters, digits and '_', values have no newline")]
    BadEnv(String),
    #[error("Invalid {what}: {value:?}")]
    BadValue { what: &'static str, value: String },
    #[error("Cannot write the config disk's files")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl crate::ToApiError for ConfigDiskError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            ConfigDiskError::BadEnv(_) | ConfigDiskError::BadValue { .. } => {
                banger_api::ErrorCode::InvalidRequest
            }
            _ => banger_api::ErrorCode::Internal,
        }
    }
}

fn plain(what: &'static str, v: &str, extra: &str) -> Result<(), ConfigDiskError> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        return Err(ConfigDiskError::BadValue {
            what,
            value: v.into(),
        });
    }
    Ok(())
}

impl ConfigDisk {
    /// The files of the disk: (relative path, contents, mode). Validates
    /// every value first.
    pub fn files(&self) -> Result<Vec<(PathBuf, Vec<u8>, u32)>, ConfigDiskError> {
        plain("hostname", &self.hostname, "-")?;
        let mut files: Vec<(PathBuf, Vec<u8>, u32)> = vec![(
            "hostname".into(),
            format!("{}\n", self.hostname).into_bytes(),
            0o644,
        )];
        let mut net = String::new();
        if let Some(a) = &self.address {
            plain("address", a, "./:")?;
            net.push_str(&format!("ADDRESS={}\n", quote(a)));
        }
        if let Some(g) = &self.gateway {
            plain("gateway", g, ".:")?;
            net.push_str(&format!("GATEWAY={}\n", quote(g)));
        }
        if let Some(m) = &self.mac {
            plain("MAC", m, ":")?;
            net.push_str(&format!("MAC={}\n", quote(m)));
        }
        for d in &self.dns {
            plain("DNS server", d, ".:")?;
        }
        if !self.dns.is_empty() {
            net.push_str(&format!("DNS={}\n", quote(&self.dns.join(" "))));
        }
        if !net.is_empty() {
            files.push(("network".into(), net.into_bytes(), 0o644));
        }
        if !self.authorized_keys.is_empty() {
            if let Some(k) = self.authorized_keys.iter().find(|k| k.contains('\n')) {
                return Err(ConfigDiskError::BadValue {
                    what: "authorized key",
                    value: k.clone(),
                });
            }
            files.push((
                "authorized_keys".into(),
                format!("{}\n", self.authorized_keys.join("\n")).into_bytes(),
                0o600,
            ));
        }
        if let Some((private, public)) = &self.host_key {
            files.push((
                "ssh/ssh_host_ed25519_key".into(),
                private.clone().into_bytes(),
                0o600,
            ));
            files.push((
                "ssh/ssh_host_ed25519_key.pub".into(),
                format!("{}\n", public.trim()).into_bytes(),
                0o644,
            ));
        }
        if !self.env.is_empty() {
            let mut s = String::new();
            for (k, v) in &self.env {
                let name_ok = !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !name_ok || v.contains('\n') || v.contains('\0') {
                    return Err(ConfigDiskError::BadEnv(k.clone()));
                }
                s.push_str(&format!("{k}={v}\n"));
            }
            files.push(("environment".into(), s.into_bytes(), 0o644));
        }
        if let Some(m) = &self.machine_id {
            if m.len() != 32 || !m.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigDiskError::BadValue {
                    what: "machine-id",
                    value: m.clone(),
                });
            }
            files.push(("machine-id".into(), format!("{m}\n").into_bytes(), 0o444));
        }
        if let Some(w) = &self.work_mount {
            if !w.starts_with('/') || w.contains("..") {
                return Err(ConfigDiskError::BadValue {
                    what: "work disk mount point",
                    value: w.clone(),
                });
            }
            plain("work disk mount point", w, "/-_.")?;
            files.push(("work".into(), format!("{w}\n").into_bytes(), 0o644));
        }
        if self.grow_root {
            files.push(("grow-root".into(), b"1\n".to_vec(), 0o644));
        }
        files.push(("guest.sh".into(), super::guest_script().into_bytes(), 0o644));
        Ok(files)
    }
}

/// Writes the config disk image at `out` (8 MiB, sparse) using `scratch` for
/// the staging directory (removed afterwards).
pub fn write(disk: &ConfigDisk, out: &Path, scratch: &Path) -> Result<(), ConfigDiskError> {
    use std::os::unix::fs::PermissionsExt;
    let files = disk.files()?;
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch)?;
    let result = (|| -> Result<(), ConfigDiskError> {
        for (rel, contents, mode) in &files {
            let p = scratch.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, contents)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
        if let Some(bin) = &disk.agent_binary {
            let p = scratch.join(super::AGENT_BIN);
            std::fs::copy(bin, &p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        let mkfs = tools::require("mkfs.ext4")?;
        tools::run(
            &mkfs,
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-L".as_ref(),
                CONFIG_LABEL.as_ref(),
                "-O".as_ref(),
                "^has_journal".as_ref(),
                "-d".as_ref(),
                scratch.as_os_str(),
                out.as_os_str(),
                "8M".as_ref(),
            ],
        )?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfigDisk {
        ConfigDisk {
            hostname: "dev-1".into(),
            address: Some("172.30.0.2/24".into()),
            gateway: Some("172.30.0.1".into()),
            mac: None,
            dns: vec!["172.30.0.1".into()],
            authorized_keys: vec!["ssh-ed25519 AAAA test".into()],
            host_key: Some((
                "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n".into(),
                "ssh-ed25519 BBBB host".into(),
            )),
            env: vec![("FOO".into(), "bar baz".into())],
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            work_mount: Some("/work".into()),
            grow_root: false,
            agent_binary: None,
        }
    }

    #[test]
    fn layout_has_every_file_with_modes() {
        let files = sample().files().expect("valid");
        let names: Vec<String> = files
            .iter()
            .map(|(p, _, _)| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "hostname",
                "network",
                "authorized_keys",
                "ssh/ssh_host_ed25519_key",
                "ssh/ssh_host_ed25519_key.pub",
                "environment",
                "machine-id",
                "work",
                "guest.sh"
            ]
        );
        let net = String::from_utf8(files[1].1.clone()).expect("utf8");
        assert_eq!(
            net,
            "ADDRESS='172.30.0.2/24'\nGATEWAY='172.30.0.1'\nDNS='172.30.0.1'\n"
        );
        assert_eq!(files[3].2, 0o600);
    }

    #[test]
    fn network_file_sources_in_sh() {
        let files = sample().files().expect("valid");
        let net = String::from_utf8(files[1].1.clone()).expect("utf8");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{net}\necho \"$ADDRESS|$GATEWAY|$DNS\""))
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "172.30.0.2/24|172.30.0.1|172.30.0.1"
        );
    }

    #[test]
    fn rejects_hostile_values() {
        let bad = [
            ConfigDisk {
                hostname: "a;b".into(),
                ..sample()
            },
            ConfigDisk {
                address: Some("1.2.3.4/24'; reboot; '".into()),
                ..sample()
            },
            ConfigDisk {
                env: vec![("A B".into(), "x".into())],
                ..sample()
            },
            ConfigDisk {
                env: vec![("A".into(), "x\ny=z".into())],
                ..sample()
            },
            ConfigDisk {
                machine_id: Some("xyz".into()),
                ..sample()
            },
            ConfigDisk {
                work_mount: Some("/../etc".into()),
                ..sample()
            },
            ConfigDisk {
                authorized_keys: vec!["a\nb".into()],
                ..sample()
            },
        ];
        for d in bad {
            assert!(d.files().is_err(), "{d:?}");
        }
    }
}
