//! A VM's files, and growing its disks.

use std::path::PathBuf;

use crate::tools::{self, ToolError};

use super::error::VmError;

/// A VM's files.
#[derive(Clone)]
pub(crate) struct VmPaths {
    pub(super) dir: PathBuf,
    pub(super) run: PathBuf,
}

impl VmPaths {
    /// Makes the VM's state and runtime directories.
    pub(super) fn create(&self) -> Result<(), VmError> {
        for d in [&self.dir, &self.run] {
            std::fs::create_dir_all(d).map_err(|source| VmError::Io {
                path: d.clone(),
                source,
            })?;
        }
        Ok(())
    }
    pub(super) fn root(&self, backend: &str) -> PathBuf {
        self.dir.join(if backend == "firecracker" {
            "root.raw"
        } else {
            "root.qcow2"
        })
    }
    /// The copy-on-write file of a device-mapper snapshot root disk.
    pub(super) fn root_cow(&self) -> PathBuf {
        self.dir.join("root.cow")
    }
    pub(super) fn work(&self) -> PathBuf {
        self.dir.join("work.ext4")
    }
    pub(super) fn config(&self) -> PathBuf {
        self.dir.join("config.ext4")
    }
    pub(super) fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// Removes the VMM's control sockets (after it exited).
    pub(super) fn remove_sockets(&self) {
        for f in ["qmp.sock", "firecracker.sock"] {
            let _ = std::fs::remove_file(self.run.join(f));
        }
    }
}

/// Grows a raw ext4 image file (not mounted) to `size` and its filesystem with it.
pub(super) fn grow_ext4_file(path: &std::path::Path, size: u64) -> Result<(), VmError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| VmError::Io {
            path: path.into(),
            source,
        })?;
    f.set_len(size).map_err(|source| VmError::Io {
        path: path.into(),
        source,
    })?;
    drop(f);
    let e2fsck = tools::require("e2fsck")?;
    // -p: fix what is safe; exit codes 0 and 1 mean clean or fixed.
    let st = std::process::Command::new(e2fsck)
        .arg("-fp")
        .arg(path)
        .output()
        .map_err(|source| VmError::Io {
            path: path.into(),
            source,
        })?;
    if !matches!(st.status.code(), Some(0 | 1)) {
        return Err(VmError::Tool(ToolError::Failed {
            command: format!("e2fsck -fp {}", path.display()),
            status: st.status.to_string(),
            stderr: String::from_utf8_lossy(&st.stdout).trim().to_string(),
        }));
    }
    let resize2fs = tools::require("resize2fs")?;
    tools::run(&resize2fs, [path.as_os_str()])?;
    Ok(())
}

/// The virtual size of a qcow2 image (`qemu-img info --output=json`).
pub(super) fn qcow2_virtual_size(path: &std::path::Path) -> Result<u64, VmError> {
    let qemu_img = tools::require("qemu-img")?;
    let out = tools::run(
        &qemu_img,
        [
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            path.as_os_str(),
        ],
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| VmError::Internal {
            what: "qemu-img output",
            reason: e.to_string(),
        })?;
    v.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| VmError::Internal {
            what: "qemu-img output",
            reason: "no virtual-size".into(),
        })
}
