//! A VM's files, and growing its disks.

use std::path::{Path, PathBuf};

use banger_api::Backend;

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
    pub(super) fn root(&self, backend: Backend) -> PathBuf {
        self.dir.join(root_disk_file(backend))
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

/// The root disk's file name: Firecracker boots raw block devices, QEMU a
/// qcow2 overlay of the image.
pub(super) fn root_disk_file(backend: Backend) -> &'static str {
    match backend {
        Backend::Firecracker => "root.raw",
        Backend::Qemu => "root.qcow2",
    }
}

/// Makes a new VM's root disk in `dir` from the image's `base` rootfs,
/// `size` bytes (default: the image's). Blocking.
///
/// QEMU: a qcow2 overlay. Firecracker (raw devices): a reflink where the
/// filesystem can, else a device-mapper snapshot (its COW file is mapped at
/// each boot), else a sparse copy.
pub(super) fn make_root_disk(
    backend: Backend,
    base: &Path,
    dir: &Path,
    size: Option<u64>,
) -> Result<(), VmError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmError::Io { path, source }
    };
    match backend {
        Backend::Qemu => {
            let qemu_img = tools::require("qemu-img")?;
            let root = dir.join(root_disk_file(backend));
            let size = size.map(|b| b.to_string()).unwrap_or_default();
            let args: [&std::ffi::OsStr; 10] = [
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                "raw".as_ref(),
                "-b".as_ref(),
                base.as_os_str(),
                root.as_os_str(),
                size.as_ref(),
            ];
            tools::run(&qemu_img, args.into_iter().filter(|a| !a.is_empty()))?;
        }
        Backend::Firecracker => {
            let raw = dir.join(root_disk_file(backend));
            if !crate::storage::try_reflink(base, &raw) {
                if crate::storage::dm::available() {
                    if size.is_some() {
                        return Err(VmError::Invalid {
                            what: "disk size",
                            reason: "a device-mapper snapshot root disk cannot be larger \
                                     than its image"
                                .into(),
                        });
                    }
                    let len = std::fs::metadata(base).map(|m| m.len()).map_err(io(base))?;
                    let cow = dir.join("root.cow");
                    let f = std::fs::File::create(&cow).map_err(io(&cow))?;
                    f.set_len(len).map_err(io(&cow))?;
                } else {
                    crate::storage::clone_file(base, &raw)?;
                }
            }
            if let (Some(size), true) = (size, raw.exists()) {
                grow_ext4_file(&raw, size)?;
            }
        }
    }
    Ok(())
}

/// The size the guest sees of a root disk.
pub(super) fn root_disk_size(backend: Backend, root: &Path) -> Result<u64, VmError> {
    match backend {
        Backend::Firecracker => Ok(std::fs::metadata(root).map(|m| m.len()).unwrap_or(0)),
        Backend::Qemu => qcow2_virtual_size(root),
    }
}

/// Grows a root disk to `size` (Firecracker's filesystem with it; QEMU's
/// guest grows its own at the next boot). Blocking.
pub(super) fn grow_root_disk(backend: Backend, root: &Path, size: u64) -> Result<(), VmError> {
    match backend {
        Backend::Firecracker => grow_ext4_file(root, size),
        Backend::Qemu => {
            let qemu_img = tools::require("qemu-img")?;
            let size = size.to_string();
            tools::run(
                &qemu_img,
                [
                    "resize".as_ref(),
                    "-q".as_ref(),
                    root.as_os_str(),
                    size.as_ref(),
                ],
            )?;
            Ok(())
        }
    }
}
