//! The VMs subsystem's errors.

use std::path::PathBuf;

use banger_api::ErrorCode;
use thiserror::Error;

use crate::images::ImageError;
use crate::names::NameError;
use crate::network::NetworkError;
use crate::storage::StorageError;
use crate::store::StoreError;
use crate::tools::ToolError;
use crate::ToApiError;

use super::vmm;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("A VM named {0:?} already exists")]
    Exists(String),
    #[error("No VM named {name:?}")]
    NotFound {
        name: String,
        /// The closest existing name, for "did you mean".
        close: Option<String>,
    },
    #[error("VM {name:?} is {state}; {what}")]
    WrongState {
        name: String,
        state: &'static str,
        what: &'static str,
    },
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    /// A failure of banger's, not of the request (never a 400).
    #[error("Internal failure ({what}): {reason}")]
    Internal { what: &'static str, reason: String },
    #[error("The VMM exited while the guest was booting ({report})")]
    VmmDied { report: String },
    #[error("The guest did not report ready within {secs}s")]
    BootTimeout { secs: u64 },
    #[error("Backend {backend:?} is not usable here: {reason}")]
    Backend { backend: String, reason: String },
    #[error(transparent)]
    Image(Box<ImageError>),
    #[error(transparent)]
    Agent(#[from] crate::agents::AgentError),
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Netns(#[from] crate::netns_lock::NetnsLockError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error("No snapshot named {0:?}")]
    SnapshotNotFound(String),
    #[error("A snapshot named {0:?} already exists")]
    SnapshotExists(String),
    #[error("VM {name:?} cannot be snapshotted while running: its guest agent does not answer ({reason})")]
    NoGuestAgent { name: String, reason: String },
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    #[error(transparent)]
    Guest(#[from] crate::guest_ssh::GuestSshError),
    #[error(transparent)]
    AgentConn(#[from] crate::guest_agent::AgentConnError),
    #[error("VM file I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot reach port {port} of VM {name:?}")]
    Connect {
        name: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl From<ImageError> for VmError {
    fn from(e: ImageError) -> Self {
        VmError::Image(Box::new(e))
    }
}

impl From<rusqlite::Error> for VmError {
    fn from(e: rusqlite::Error) -> Self {
        VmError::Store(StoreError::Sqlite(e))
    }
}

impl ToApiError for VmError {
    fn code(&self) -> ErrorCode {
        match self {
            VmError::Name(_) | VmError::Invalid { .. } | VmError::Resources(_) => {
                ErrorCode::InvalidRequest
            }
            VmError::Exists(_)
            | VmError::SnapshotExists(_)
            | VmError::NoGuestAgent { .. }
            | VmError::WrongState { .. } => ErrorCode::Conflict,
            VmError::NotFound { .. } | VmError::SnapshotNotFound(_) => ErrorCode::NotFound,
            VmError::Backend { .. } => ErrorCode::Unavailable,
            VmError::Image(e) => e.code(),
            VmError::Agent(e) => e.code(),
            VmError::Firewall(e) => e.code(),
            VmError::Network(e) => e.code(),
            VmError::Netns(e) => e.code(),
            VmError::Tool(e) => e.code(),
            VmError::Guest(e) => e.code(),
            VmError::AgentConn(e) => e.code(),
            VmError::Ops(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            VmError::Name(e) => e.hint(),
            VmError::Exists(_) => {
                Some("Pick another name, or remove the VM first (banger vm rm NAME)".into())
            }
            VmError::NotFound { close: Some(c), .. } => {
                Some(format!("Did you mean {c}? (`banger vm ls` lists VMs)"))
            }
            VmError::NotFound { close: None, .. } => Some("List VMs with `banger vm ls`".into()),
            VmError::SnapshotNotFound(_) => {
                Some("List snapshots with `banger snapshot ls`".into())
            }
            VmError::SnapshotExists(_) => Some(
                "Pick another name, or remove it first (banger snapshot rm NAME)".into(),
            ),
            VmError::NoGuestAgent { .. } => Some(
                "VMs of images built before banger had a guest agent cannot be snapshotted while running: rebuild the image (banger image build), or stop the VM for a disk-only snapshot".into(),
            ),
            VmError::Backend { .. } => {
                Some("See `banger doctor` (checks qemu and firecracker)".into())
            }
            VmError::Image(e) => e.hint(),
            VmError::Agent(e) => e.hint(),
            VmError::Firewall(e) => e.hint(),
            VmError::Network(e) => e.hint(),
            VmError::Netns(e) => e.hint(),
            VmError::Tool(e) => e.hint(),
            VmError::Guest(e) => e.hint(),
            VmError::AgentConn(e) => e.hint(),
            VmError::VmmDied { .. } => Some(
                "See the whole console with `banger vm logs NAME`; `banger doctor` says whether \
                 this host can run the image's kernel"
                    .into(),
            ),
            VmError::BootTimeout { .. } => Some("See its console with `banger vm logs NAME`".into()),
            VmError::Connect { .. } => {
                Some("Is the VM running and listening on that port? (banger vm ls)".into())
            }
            _ => None,
        }
    }
}
