//! Disks: cheap clones of image files and work seeds.
//!
//! A clone is a reflink where the filesystem supports it (btrfs, xfs: O(1)),
//! otherwise a sparse copy (cost grows with the data, not the apparent size).
//! Work seeds are pre-formatted ext4 images, one per size, made on first need
//! and cloned per VM, so creating a VM never runs mkfs.

pub mod dm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::guest::WORK_LABEL;
use crate::tools::{self, ToolError};

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("Cannot clone {from} to {to}")]
    Clone {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: ToolError,
    },
    #[error("Cannot create the {size}-byte work seed")]
    Seed {
        size: u64,
        #[source]
        source: ToolError,
    },
    #[error("Storage I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::ToApiError for StorageError {}

/// How a clone was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    Reflink,
    SparseCopy,
}

/// Tries an O(1) reflink clone; false when the filesystem cannot.
pub fn try_reflink(from: &Path, to: &Path) -> bool {
    let ok = tools::find("cp").is_some_and(|cp| {
        tools::run(
            &cp,
            [
                "--reflink=always".as_ref(),
                from.as_os_str(),
                to.as_os_str(),
            ],
        )
        .is_ok()
    });
    if !ok {
        let _ = std::fs::remove_file(to);
    }
    ok
}

/// Clones `from` to `to` (which must not exist): reflink if possible, else
/// a sparse copy.
pub fn clone_file(from: &Path, to: &Path) -> Result<CloneKind, StorageError> {
    let cp = tools::require("cp").map_err(|source| StorageError::Clone {
        from: from.into(),
        to: to.into(),
        source,
    })?;
    if tools::run(
        &cp,
        [
            "--reflink=always".as_ref(),
            from.as_os_str(),
            to.as_os_str(),
        ],
    )
    .is_ok()
    {
        return Ok(CloneKind::Reflink);
    }
    let _ = std::fs::remove_file(to);
    tools::run(
        &cp,
        ["--sparse=always".as_ref(), from.as_os_str(), to.as_os_str()],
    )
    .map_err(|source| StorageError::Clone {
        from: from.into(),
        to: to.into(),
        source,
    })?;
    Ok(CloneKind::SparseCopy)
}

/// Pre-formatted work disks by size.
#[derive(Clone)]
pub struct WorkSeeds {
    dir: PathBuf,
    locks: Arc<Mutex<HashMap<u64, Arc<Mutex<()>>>>>,
}

impl WorkSeeds {
    pub fn new(dir: PathBuf) -> WorkSeeds {
        WorkSeeds {
            dir,
            locks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn seed_path(&self, size: u64) -> PathBuf {
        self.dir.join(format!("work-{size}.ext4"))
    }

    /// The seed for `size`, created (mkfs.ext4, label `banger-work`) on first
    /// need. Blocking.
    pub fn ensure(&self, size: u64) -> Result<PathBuf, StorageError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(size).or_default().clone()
        };
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.seed_path(size);
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| StorageError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let tmp = self.dir.join(format!(".work-{size}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mkfs =
            tools::require("mkfs.ext4").map_err(|source| StorageError::Seed { size, source })?;
        tools::run(
            &mkfs,
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-L".as_ref(),
                WORK_LABEL.as_ref(),
                "-E".as_ref(),
                "lazy_itable_init=1,lazy_journal_init=1".as_ref(),
                tmp.as_os_str(),
                format!("{}k", size / 1024).as_ref(),
            ],
        )
        .map_err(|source| StorageError::Seed { size, source })?;
        std::fs::rename(&tmp, &path).map_err(|source| StorageError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// A new work disk of `size` at `to`, cloned from the seed.
    pub fn clone_to(&self, size: u64, to: &Path) -> Result<CloneKind, StorageError> {
        let seed = self.ensure(size)?;
        clone_file(&seed, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_copies_content_and_keeps_sparseness() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = dir.path().join("a");
        let f = std::fs::File::create(&a).expect("create");
        f.set_len(64 << 20).expect("truncate");
        drop(f);
        std::fs::write(dir.path().join("marker"), b"x").expect("w");
        let b = dir.path().join("b");
        clone_file(&a, &b).expect("clone");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&b).expect("meta");
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "clone is not sparse: {} blocks",
            m.blocks()
        );
    }

    #[test]
    fn work_seed_is_made_once_and_cloned() {
        let dir = tempfile::tempdir().expect("tmp");
        let seeds = WorkSeeds::new(dir.path().join("seeds"));
        let size = 64 << 20;
        let p1 = seeds.ensure(size).expect("seed");
        let mtime = std::fs::metadata(&p1)
            .expect("meta")
            .modified()
            .expect("mtime");
        let p2 = seeds.ensure(size).expect("seed again");
        assert_eq!(p1, p2);
        assert_eq!(
            std::fs::metadata(&p2)
                .expect("meta")
                .modified()
                .expect("mtime"),
            mtime,
            "seed was remade"
        );
        let disk = dir.path().join("vm-work.ext4");
        seeds.clone_to(size, &disk).expect("clone");
        let out = std::process::Command::new("e2label")
            .arg(&disk)
            .output()
            .expect("e2label");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), WORK_LABEL);
    }
}
