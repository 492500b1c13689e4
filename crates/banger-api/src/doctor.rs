//! `GET /v1/doctor` and `GET /v1/capabilities`: host requirements as a
//! report for people and as facts for clients.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// The requirement is met.
    Ok,
    /// Not met, but banger works without it (with less speed or fewer features).
    Warn,
    /// Not met; the features that need it will refuse to run.
    Fail,
    /// Informational only.
    Info,
}

/// One host check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoctorCheck {
    /// Stable id, e.g. `kvm`, `qemu`, `tun`.
    pub id: String,
    /// Human title.
    pub title: String,
    pub status: CheckStatus,
    /// Whether banger's core (images and VMs) needs it. A failed required
    /// check makes `banger doctor` exit non-zero.
    pub required: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoctorReport {
    /// False when any required check failed.
    pub ok: bool,
    pub checks: Vec<DoctorCheck>,
}

/// What the host can do, as data for clients to adapt to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// `/dev/kvm` exists.
    pub kvm_device: bool,
    /// The KVM provider module when it is a notable one (e.g. `kvm_pvm`,
    /// a nested PVM host where real kernels may not boot under KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_module: Option<String>,
    /// Path and version of qemu-system-x86_64, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<ToolInfo>,
    /// Path and version of firecracker, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker: Option<ToolInfo>,
    /// VMM backends that can run here.
    pub backends: Vec<crate::vms::Backend>,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// `nft` is installed.
    pub nftables: bool,
    /// `/dev/mapper/control` exists and `dmsetup` is installed.
    pub device_mapper: bool,
    /// The state directory's filesystem supports reflink copies.
    pub reflink: bool,
    /// Root-disk clone strategies usable here, best first.
    pub clone_strategies: Vec<String>,
    /// A rootfs bootstrapper (`mmdebstrap` or `debootstrap`) is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrapper: Option<String>,
    /// Free bytes in the state directory's filesystem.
    pub state_dir_free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    pub path: String,
    pub version: String,
}
