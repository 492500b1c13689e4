//! The state-dir lock: one daemon per state directory.
//!
//! `bangerd.lock` is held with `flock(2)` for the daemon's lifetime and
//! holds its pid, so a second daemon can say which one is running. The kernel
//! drops the lock when the process dies, however it dies.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("Cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Another bangerd (pid {pid}) is already running on state dir {state_dir}; stop it first \
         (sudo systemctl stop bangerd, or kill {pid}), or use another --state-dir"
    )]
    Held { pid: String, state_dir: PathBuf },
    #[error("Cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot write pid to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the daemon's lifetime; dropping it releases the lock.
pub struct StateLock {
    _lock: Flock<std::fs::File>,
}

pub fn acquire(path: &Path, state_dir: &Path) -> Result<StateLock, LockError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.into(),
            source,
        })?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
                state_dir: state_dir.into(),
            });
        }
        Err((_, source)) => {
            return Err(LockError::Lock {
                path: path.into(),
                source,
            })
        }
    };
    let write = |f: &mut std::fs::File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()
    };
    write(&mut lock).map_err(|source| LockError::Write {
        path: path.into(),
        source,
    })?;
    Ok(StateLock { _lock: lock })
}
