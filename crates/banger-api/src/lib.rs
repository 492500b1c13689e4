//! Wire types of the banger API (`/v1/...`).
//!
//! Every request and response body that crosses the Unix socket is defined
//! here, once, and shared by `bangerd` (server), `banger` (CLI) and the web
//! dashboard. Request bodies reject unknown fields so a typo in a client is
//! an error, not a silently ignored option. The OpenAPI document the daemon
//! serves is derived from these types.

pub mod doctor;
pub mod e2b;
pub mod error;
pub mod guest;
pub mod images;
pub mod ops;
pub mod sessions;
pub mod system;
pub mod units;

pub mod vms;
pub mod workspaces;

pub use doctor::{Capabilities, CheckStatus, DoctorCheck, DoctorReport};
pub use e2b::{E2bInfo, E2bKey, E2bKeyCreate, E2bKeyCreated, E2bKeyList};
pub use error::{ApiError, ErrorCode};
pub use guest::{
    GuestFile, GuestFileEvent, GuestFileList, GuestFileOp, TermSize, VmExecRequest, VmExecResult,
};
pub use images::{Artifact, Image, ImageBuildRequest, ImageImportRequest, ImageList, ImageRemoved};
pub use ops::{
    DebugOpRequest, OpEvent, OpEventBody, OpList, OpState, OpStep, Operation, Progress, StepStatus,
};
pub use sessions::{
    Session, SessionList, SessionSendRequest, SessionSignalRequest, SessionStartRequest,
};
pub use system::{FleetSnapshot, UiInfo, UiLogout, VersionInfo, VmLive};
pub use vms::{
    Accel, Backend, BackendChoice, Forward, ForwardList, ForwardRequest, GuestStats, HostStats,
    PoolList, PoolSetRequest, PoolStatus, Snapshot, SnapshotList, SshClientKey, Vm,
    VmCreateRequest, VmDefaults, VmForkRequest, VmList, VmPort, VmPortEvent, VmPortList,
    VmResources, VmSetRequest, VmSnapshotRequest, VmSshInfo, VmState, VmStats, VmStopRequest,
};

pub use workspaces::{
    AgentList, AgentProfile, AgentRunRequest, AuthItem, AuthItemList, AuthSyncReport,
    AuthSyncRequest, AuthSynced, AuthValue, Workspace, WorkspaceChanges, WorkspaceCommit,
    WorkspaceExported, WorkspaceList,
};

/// The API version segment every path starts with.
pub const API_VERSION: &str = "v1";
