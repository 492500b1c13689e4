//! Firecracker's jailer: its arguments and the jail's layout (pure).

use std::path::PathBuf;

/// Firecracker's jailer: chroot, new namespaces, dropped privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    pub binary: PathBuf,
    pub chroot_base: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The path Firecracker sees for its API socket inside the jail.
pub const JAILED_API_SOCKET: &str = "/run/firecracker.socket";

impl Jailer {
    /// The jail's id: `banger-vm-` and the first 16 hex digits of the VM id
    /// (the API socket's path inside the jail must stay under 108 bytes).
    pub fn jail_id(vm_id: &str) -> String {
        format!("banger-vm-{}", &vm_id[..vm_id.len().min(16)])
    }

    /// `<chroot_base>/<exec file name>/<jail id>`, as the jailer makes it.
    pub fn jail_dir(&self, exec: &std::path::Path, vm_id: &str) -> PathBuf {
        let name = exec
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "firecracker".into());
        self.chroot_base.join(name).join(Jailer::jail_id(vm_id))
    }

    /// The jailer's arguments. Pure.
    pub fn args(&self, exec: &std::path::Path, vm_id: &str) -> Vec<String> {
        vec![
            "--id".into(),
            Jailer::jail_id(vm_id),
            "--exec-file".into(),
            exec.display().to_string(),
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--chroot-base-dir".into(),
            self.chroot_base.display().to_string(),
            "--".into(),
            "--api-sock".into(),
            JAILED_API_SOCKET.into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn jailer_arguments_and_layout() {
        let j = Jailer {
            binary: "/usr/bin/jailer".into(),
            chroot_base: "/srv/jail".into(),
            uid: 123,
            gid: 456,
        };
        assert_eq!(
            j.jail_dir(std::path::Path::new("/usr/bin/firecracker"), "ab12"),
            PathBuf::from("/srv/jail/firecracker/banger-vm-ab12")
        );
        assert_eq!(
            j.args(std::path::Path::new("/usr/bin/firecracker"), "ab12"),
            [
                "--id",
                "banger-vm-ab12",
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "123",
                "--gid",
                "456",
                "--chroot-base-dir",
                "/srv/jail",
                "--",
                "--api-sock",
                "/run/firecracker.socket"
            ]
        );
    }
}
