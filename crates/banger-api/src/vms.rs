//! `/v1/vms`: VM lifecycle.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Being created (rolled back if the daemon dies now).
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        Some(match s {
            "creating" => VmState::Creating,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "stopped" => VmState::Stopped,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub name: String,
    pub id: String,
    pub state: VmState,
    /// `qemu` or `firecracker`.
    pub backend: String,
    /// `kvm` or `tcg` (QEMU).
    pub accel: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_disk_bytes: u64,
    pub ip: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why it is stopped (`stopped by user`, `VMM exited ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmList {
    pub vms: Vec<Vm>,
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateRequest {
    pub name: String,
    /// Image name (default: the daemon's `vm.default_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// 1..=32 (default from config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// e.g. `1G`, `512M` (128 MiB..=64 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// e.g. `4G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_size: Option<String>,
    /// `auto` (default), `qemu` or `firecracker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Create the disks but do not boot.
    #[serde(default)]
    pub no_start: bool,
}

/// `POST /v1/vms/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStopRequest {
    /// Kill the VMM at once instead of asking the guest to power off.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for a graceful power-off before killing (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// `GET /v1/vms/{name}/ssh`: what a client needs to run `ssh` to the VM
/// through `banger vm proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSshInfo {
    pub name: String,
    pub user: String,
    /// The host alias pinned in `known_hosts` (`NAME.vm`).
    pub host_alias: String,
    /// The VM's SSH host public key line.
    pub host_key: String,
    /// The private key the guest authorizes (OpenSSH format).
    pub private_key: String,
    pub ip: String,
}
