//! `/v1/vms`: VM lifecycle.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A VMM backend (`qemu` or `firecracker` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Qemu,
    Firecracker,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Qemu, Backend::Firecracker];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Firecracker => "firecracker",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backend a create asks for: `auto` picks Firecracker where it can
/// run the image, else QEMU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

impl BackendChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Qemu => "qemu",
            BackendChoice::Firecracker => "firecracker",
        }
    }
}

/// How a VMM runs guest code: hardware virtualization or QEMU's emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<Accel> {
        [Accel::Kvm, Accel::Tcg]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub backend: Backend,
    /// `tcg` only under QEMU.
    pub accel: Accel,
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
    /// The coding agent this VM is set up for (`banger agent run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// No traffic to or from other VMs; only DNS and ping to the host.
    #[serde(default)]
    pub isolated: bool,
    /// Outbound traffic only to these IPv4 networks (absent: anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<String>>,
    /// What is wrong with this running VM, and what to do (e.g. its TAP
    /// is gone); absent when nothing is known to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmList {
    pub vms: Vec<Vm>,
}

/// The bounds every VM's resources are held to (create, `vm set`, the
/// warm pool, the daemon's defaults). One place, so the CLI, the daemon's
/// config and the core agree.
pub mod limits {
    use std::ops::RangeInclusive;

    /// vCPUs.
    pub const CPUS: RangeInclusive<u32> = 1..=32;
    /// Memory, MiB: 128 MiB..=64 GiB.
    pub const MEMORY_MIB: RangeInclusive<u64> = 128..=65536;
    /// The work disk, bytes: 64 MiB..=16 TiB.
    pub const WORK_DISK_BYTES: RangeInclusive<u64> = (64 << 20)..=(16 << 40);
    /// The largest root disk, bytes (16 TiB); the smallest is the image's.
    pub const ROOT_DISK_MAX_BYTES: u64 = 16 << 40;
}

/// `GET /v1/defaults`: what `vm create` takes for each field its request
/// leaves out (the daemon's `vm.*` config; an agent profile's resources
/// come before these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDefaults {
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_disk_bytes: u64,
    /// `auto`, `kvm` or `tcg` (QEMU's accelerator).
    pub accel: String,
}

/// The resources a request may give a VM (`POST /v1/vms`, `vm set`,
/// `POST /v1/pools`): each one left out keeps its default (create, pool)
/// or its current value (set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmResources {
    /// vCPUs, 1..=32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// e.g. `1G`, `512M` (128 MiB..=64 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Root disk size, e.g. `8G`: at least the image's root filesystem
    /// (create), grow only (set), at most 16 TiB. Not for pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<String>,
    /// The work disk mounted at /work, e.g. `4G` (64 MiB..=16 TiB; set:
    /// grow only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_size: Option<String>,
}

impl VmResources {
    /// Whether any resource is given.
    pub fn any(&self) -> bool {
        self.cpus.is_some()
            || self.memory.is_some()
            || self.disk_size.is_some()
            || self.work_disk_size.is_some()
    }
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateRequest {
    pub name: String,
    /// Image name (default: the daemon's `vm.default_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Defaults: the agent profile's, else the daemon's `vm.*`; the root
    /// disk defaults to the image's size.
    #[serde(flatten)]
    pub resources: VmResources,
    /// Default: `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendChoice>,
    /// Create the disks but do not boot.
    #[serde(default)]
    pub no_start: bool,
    /// A coding agent profile (`opencode`, `claude-code`, `codex`, or one in
    /// `agents.dir`); its resources are the defaults. Default: the image's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Isolate the VM: no traffic to or from other VMs, only DNS and ping to the host.
    #[serde(default)]
    pub isolated: bool,
    /// Allow outbound traffic only to these IPv4 addresses or CIDRs (an
    /// empty list: none). Absent: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<String>>,
    /// Restore this snapshot (`banger vm snapshot`) instead of booting: the
    /// new VM resumes where the snapshot's VM was, with its own identity
    /// (name, address, MAC, SSH host key, machine-id). Its image, backend,
    /// CPUs, memory and disks are the snapshot's: those options must be
    /// left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
}

/// A snapshot of a VM: its disks, and its device and memory state when it
/// was running (`GET /v1/snapshots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub name: String,
    /// The VM it was taken of (its name then).
    pub source_vm: String,
    pub image: String,
    pub backend: Backend,
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_disk_bytes: u64,
    /// Whether it holds the running guest's state (restored without a
    /// boot); a snapshot of a stopped VM holds only its disks.
    pub with_memory: bool,
    /// Bytes it takes on disk.
    pub size_bytes: u64,
    /// `creating` or `ready`.
    pub state: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `POST /v1/vms/{name}/snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshotRequest {
    /// Default: `NAME-YYYYMMDD-HHMMSS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /v1/vms/{name}/fork`: a running copy of a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmForkRequest {
    /// The new VM's name.
    pub name: String,
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

/// The key exchanges SSH clients of guests should prefer, most preferred
/// first: X25519 before the post-quantum hybrid OpenSSH 9 picks by default,
/// which costs a guest under TCG about 60 ms per connection (measured). The
/// hybrid stays in the list for guests that offer nothing else; the traffic
/// never leaves the host.
pub const SSH_KEX_ALGORITHMS: &str = "curve25519-sha256,curve25519-sha256@libssh.org,sntrup761x25519-sha512@openssh.com,ecdh-sha2-nistp256";

/// `GET /v1/ssh/client-key`: the key every VM authorizes, for clients that
/// write an ssh config (`banger vm ssh-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshClientKey {
    pub user: String,
    /// OpenSSH private key.
    pub private_key: String,
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

/// `GET /v1/vms/{name}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStats {
    pub name: String,
    pub state: VmState,
    pub host: HostStats,
    /// Measured inside the guest over SSH (running VMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestStats>,
    /// Why guest figures are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// VMM CPU use over a 200 ms sample, percent of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// VMM resident memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Space the VM's disks take on the host (allocated blocks).
    pub disk_allocated_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestStats {
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub root_used_bytes: u64,
    pub root_total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_total_bytes: Option<u64>,
}

/// `POST /v1/vms/{name}/set`: change resources (only while the VM is
/// stopped; disks only grow) or network policy (any time, applied at once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSetRequest {
    /// Only while the VM is stopped; disks only grow.
    #[serde(flatten)]
    pub resources: VmResources,
    /// Isolate the VM (or stop isolating it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<bool>,
    /// Allow outbound traffic only to these IPv4 addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<String>>,
    /// Remove the egress allow-list (outbound traffic anywhere).
    #[serde(default)]
    pub egress_all: bool,
}

/// A listening socket in the guest (`GET /v1/vms/{name}/ports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmPort {
    /// `tcp` or `udp`.
    pub proto: String,
    /// The address it listens on (`0.0.0.0`, `::`, `*`, `127.0.0.1`, ...).
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `http://NAME.vm:PORT` for TCP sockets reachable from outside the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A socket opened or closed in the guest (`GET /v1/vms/{name}/ports/watch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmPortEvent {
    /// `open` or `close`.
    pub event: String,
    pub port: VmPort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmPortList {
    pub vm: String,
    pub ports: Vec<VmPort>,
}

/// A forward from a host address to a guest port (`/v1/vms/{name}/forwards`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub vm: String,
    /// Host address it listens on (default 127.0.0.1), in the host's own
    /// network namespace.
    pub host_addr: String,
    pub host_port: u16,
    pub guest_port: u16,
    /// Listening now (false: the daemon could not bind it; see `error`).
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardList {
    pub forwards: Vec<Forward>,
}

/// `POST /v1/vms/{name}/forwards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// Default 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_addr: Option<String>,
    /// 0: any free port.
    pub host_port: u16,
    pub guest_port: u16,
}

/// A warm pool entry (`GET /v1/pools`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolStatus {
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_disk_bytes: u64,
    /// How many to keep booted.
    pub size: u32,
    /// Booted and waiting for a `vm create`.
    pub ready: u32,
    pub booting: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolList {
    pub pools: Vec<PoolStatus>,
    /// `pool.memory_budget` from the config.
    pub memory_budget_mib: u64,
    /// Memory of the pool's VMs now.
    pub memory_used_mib: u64,
}

/// `POST /v1/pools`: keep `size` VMs of an image and size booted (0: none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSetRequest {
    /// Default: `vm.default_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Each left out: the value of the image's one pool entry when it has
    /// exactly one, else the daemon's default. `disk_size` is refused
    /// (pool VMs have the image's root disk).
    #[serde(flatten)]
    pub resources: VmResources,
    pub size: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_resources_keep_the_wire_shape_and_refuse_unknown_fields() {
        let req: VmCreateRequest =
            serde_json::from_str(r#"{"name":"a","cpus":2,"memory":"1G"}"#).expect("parse");
        assert_eq!(req.resources.cpus, Some(2));
        assert_eq!(req.resources.memory.as_deref(), Some("1G"));
        let back = serde_json::to_value(&req).expect("encode");
        assert_eq!(back["cpus"], 2);
        assert!(back.get("resources").is_none());
        for body in [r#"{"name":"a","cpu":2}"#, r#"{"name":"a","resources":{}}"#] {
            let e = serde_json::from_str::<VmCreateRequest>(body);
            assert!(e.is_err(), "{body} was taken");
        }
        let e = serde_json::from_str::<VmSetRequest>(r#"{"memroy":"1G"}"#);
        assert!(e.is_err());
        let e = serde_json::from_str::<PoolSetRequest>(r#"{"size":1,"x":1}"#);
        assert!(e.is_err());
    }
}
