//! Where banger keeps things. Pure: no I/O.
//!
//! ```text
//! STATE_DIR (default /var/lib/banger, mode 0700)
//!   banger.db            SQLite store (+ -wal, -shm)
//!   bangerd.lock         flock(2) held by the running daemon; holds its pid
//!   logs/bangerd.DATE.log  JSON logs, a file a day, 14 kept
//!   images/DIGEST/       rootfs.ext4, vmlinuz, initrd.img, vmlinux, manifest.json
//!   cache/apt/           downloaded .debs, reused by builds
//!   cache/kernels/       extracted kernel packages
//!   seeds/work-SIZE.ext4 pre-formatted work disks, cloned per VM
//!   tmp/OP_ID/           scratch space of a running operation
//! RUNTIME_DIR (default /run/banger, mode 0755)
//!   bangerd.sock         API socket, 0660 root:banger
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Layout {
    pub fn new(state_dir: impl Into<PathBuf>, runtime_dir: impl Into<PathBuf>) -> Self {
        Layout {
            state_dir: state_dir.into(),
            runtime_dir: runtime_dir.into(),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir.join("banger.db")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("bangerd.lock")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub fn default_socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }

    /// Image artifacts, one directory per digest.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn image_dir(&self, digest: &str) -> PathBuf {
        self.images_dir().join(digest)
    }

    /// Downloaded packages (apt archives), reused between builds.
    pub fn apt_cache(&self) -> PathBuf {
        self.state_dir.join("cache/apt")
    }

    /// Extracted kernel packages.
    pub fn kernel_cache(&self) -> PathBuf {
        self.state_dir.join("cache/kernels")
    }

    /// Pre-formatted work-disk seeds, one per size.
    pub fn seeds_dir(&self) -> PathBuf {
        self.state_dir.join("seeds")
    }

    /// Scratch space of one operation; removed when it ends, and at start.
    pub fn op_tmp(&self, op_id: &str) -> PathBuf {
        self.tmp_dir().join(op_id)
    }

    /// Every VM's files (disks, keys, console), one directory per VM id.
    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }

    /// Every VM's runtime files (VMM sockets), one directory per VM id.
    pub fn vms_run_dir(&self) -> PathBuf {
        self.runtime_dir.join("vms")
    }

    /// The daemon's SSH client key pair.
    pub fn ssh_key_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }

    /// SSH control sockets, one per VM.
    pub fn ssh_control_dir(&self) -> PathBuf {
        self.runtime_dir.join("ssh")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_under_the_dirs() {
        let l = Layout::new("/s", "/r");
        assert_eq!(l.db(), PathBuf::from("/s/banger.db"));
        assert_eq!(l.lock_file(), PathBuf::from("/s/bangerd.lock"));
        assert_eq!(l.default_socket(), PathBuf::from("/r/bangerd.sock"));
        assert_eq!(l.log_dir(), PathBuf::from("/s/logs"));
    }
}
