//! One daemon owns banger's network in a network namespace. The bridge,
//! the TAPs, the nftables tables `ip banger` and `bridge banger` and the
//! `.vm` DNS port are names shared by everything in a namespace, so two
//! daemons there (another state dir reading the same config, say) would
//! take each other's TAPs for strays and overwrite each other's rules.
//!
//! The owner holds `flock(2)` on `/run/lock/banger/netns-DEV-INODE.lock`
//! (the namespace's identity) for its life; the file says who it is (pid
//! and state dir) and, once the owner is gone, who it was. A daemon takes
//! the lock when it has VMs (at start) or first needs the network; a daemon
//! that finds it held refuses, naming the owner. The kernel drops the lock
//! when the owner dies, however it dies.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// Where the namespace locks live (shared by every daemon on the host).
pub const LOCK_DIR: &str = "/run/lock/banger";

#[derive(Debug, Error)]
pub enum NetnsLockError {
    #[error(
        "Another bangerd (pid {pid}, state dir {state_dir}) owns banger's network in this \
         network namespace"
    )]
    Owned { pid: String, state_dir: String },
    #[error("Cannot take this network namespace's lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::ToApiError for NetnsLockError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            NetnsLockError::Owned { .. } => banger_api::ErrorCode::Conflict,
            NetnsLockError::Io { .. } => banger_api::ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            NetnsLockError::Owned { pid, .. } => Some(format!(
                "Stop that daemon first (kill {pid}), or give this one a network namespace of \
                 its own (network.netns in its config)"
            )),
            NetnsLockError::Io { .. } => None,
        }
    }
}

/// Who holds (or last held) a namespace's lock: its file's text. Pure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    pub pid: String,
    pub state_dir: String,
}

impl Owner {
    fn parse(text: &str) -> Owner {
        let mut lines = text.lines();
        Owner {
            pid: lines.next().unwrap_or("").trim().to_string(),
            state_dir: lines.next().unwrap_or("").to_string(),
        }
    }

    fn render(&self) -> String {
        format!("{}\n{}\n", self.pid, self.state_dir)
    }
}

/// Held while this daemon owns its namespace's network.
#[derive(Debug)]
pub struct NetnsLock {
    _lock: Flock<std::fs::File>,
    /// Who held it before (empty: nobody since the host booted).
    pub previous: Owner,
}

impl NetnsLock {
    /// Whether what is left in the namespace is this daemon's own: nobody
    /// held the lock before, or this state dir did, or the daemon that did
    /// has no state dir any more. Only then are strays cleaned up.
    pub fn leftovers_are_ours(&self, state_dir: &Path) -> bool {
        let prev = &self.previous.state_dir;
        prev.is_empty() || Path::new(prev) == state_dir || !Path::new(prev).exists()
    }
}

fn lock_path() -> std::io::Result<PathBuf> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(Path::new(LOCK_DIR).join(format!("netns-{}-{}.lock", ns.dev(), ns.ino())))
}

/// Takes the lock of the network namespace this thread is in.
pub fn acquire(state_dir: &Path) -> Result<NetnsLock, NetnsLockError> {
    let path = match lock_path() {
        Ok(p) => p,
        Err(source) => {
            return Err(NetnsLockError::Io {
                path: "/proc/thread-self/ns/net".into(),
                source,
            })
        }
    };
    let io = |source| NetnsLockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(LOCK_DIR).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let o = Owner::parse(&text);
            return Err(NetnsLockError::Owned {
                pid: o.pid,
                state_dir: o.state_dir,
            });
        }
        Err((_, e)) => return Err(io(std::io::Error::from(e))),
    };
    let mut text = String::new();
    let _ = lock.read_to_string(&mut text);
    let previous = Owner::parse(&text);
    let me = Owner {
        pid: std::process::id().to_string(),
        state_dir: state_dir.display().to_string(),
    };
    lock.set_len(0).map_err(io)?;
    lock.rewind().map_err(io)?;
    lock.write_all(me.render().as_bytes()).map_err(io)?;
    Ok(NetnsLock {
        _lock: lock,
        previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_read_back_and_leftovers_belong_to_the_last_owner() {
        let o = Owner {
            pid: "42".into(),
            state_dir: "/var/lib/banger".into(),
        };
        assert_eq!(Owner::parse(&o.render()), o);
        assert_eq!(Owner::parse(""), Owner::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = |prev: &str| NetnsLock {
            _lock: Flock::lock(
                tempfile::tempfile().expect("file"),
                FlockArg::LockExclusiveNonblock,
            )
            .map_err(|(_, e)| e)
            .expect("flock"),
            previous: Owner {
                pid: "1".into(),
                state_dir: prev.into(),
            },
        };
        let me = dir.path();
        assert!(lock("").leftovers_are_ours(me));
        assert!(lock(&me.display().to_string()).leftovers_are_ours(me));
        assert!(lock("/nonexistent/state").leftovers_are_ours(me));
        let other = tempfile::tempdir().expect("tempdir");
        assert!(!lock(&other.path().display().to_string()).leftovers_are_ours(me));
    }
}
