//! The API socket: created 0660 root:<socket_group>, so only root and the
//! group's members can connect; each request's peer credentials are checked
//! again in the API layer (defence in depth, and the uid is logged).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::UnixListener;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("Group {group:?} does not exist")]
    NoGroup { group: String },
    #[error("Cannot look up group {group:?}")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("Another daemon is already serving {path}")]
    InUse { path: PathBuf },
    #[error("Cannot create socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot set owner or mode of {path}")]
    Perms {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SocketError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SocketError::NoGroup { .. } => {
                Some("Create it with: sudo groupadd --system banger (the installer does this)")
            }
            SocketError::InUse { .. } => {
                Some("Stop the other daemon, or give this one another --socket")
            }
            _ => None,
        }
    }
}

pub fn group_gid(group: &str) -> Result<u32, SocketError> {
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(SocketError::NoGroup {
            group: group.into(),
        }),
        Err(source) => Err(SocketError::GroupLookup {
            group: group.into(),
            source,
        }),
    }
}

/// Binds the socket, replacing a stale one (but never a live one).
pub fn bind(path: &Path, gid: u32) -> Result<UnixListener, SocketError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse { path: path.into() });
        }
        std::fs::remove_file(path).map_err(|source| SocketError::Bind {
            path: path.into(),
            source,
        })?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SocketError::Bind {
            path: path.into(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.into(),
        source,
    })?;
    let perms = || -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
    };
    perms().map_err(|source| SocketError::Perms {
        path: path.into(),
        source,
    })?;
    Ok(listener)
}
