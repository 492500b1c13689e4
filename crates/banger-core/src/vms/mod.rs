//! VMs: create, start, stop, kill, remove, list; readiness; crash reconcile.
//!
//! State machine (the `vms.state` column is also the crash-recovery record):
//! ```text
//! creating --(disks, config, network, spawn, boot)--> running
//!     \--(failure, cancel, daemon death)--> rolled back (row and files gone)
//! running --stop--> stopping --> stopped --start--> starting --> running
//! running --(VMM exits)--> stopped (stop_reason says why)
//! ```
//! Operations on one VM are serialized by a per-VM lock; different VMs
//! proceed in parallel. On daemon start, [`Vms::reconcile`] rolls back
//! `creating` rows, adopts VMM processes that still run (pid + cmdline
//! verified), and marks the rest stopped, removing their TAPs.

pub mod kvm_probe;
pub mod pool;
pub mod ports;

pub mod ready;
pub mod snapshots;
pub mod stats;
pub mod vmm;

mod agent;
mod boot;
mod commands;
pub mod console;
mod create;
mod disks;
mod error;
mod health;
mod identity;
mod lifecycle;
mod net;
mod observe;
mod procs;
mod reconcile;
mod resize;
mod resolve;
mod rows;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{Backend, Vm, VmSshInfo, VmState};
use rusqlite::OptionalExtension;

use crate::guest_ssh::{Guest, GuestSsh, GuestTarget};
use crate::images::Images;
use crate::names::validate_name;
use crate::network::Subnet;
use crate::ops::Ops;
use crate::paths::Layout;
use crate::storage::WorkSeeds;
use crate::store::Store;
use crate::tools;

use disks::VmPaths;
use rows::{vm_from_row, VM_COLUMNS};
use vmm::qemu::Accel;

pub use commands::{GuestCmd, GuestCmdError};
pub use error::VmError;
pub use pool::WarmPool;
pub use procs::{is_our_vmm, pid_alive};
pub use snapshots::Snapshots;

/// How long a boot may take before create/start fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Readiness and exit polling interval (fixed, never backed off).
const POLL: Duration = Duration::from_millis(20);

/// [`crate::ops::blocking`] for VM steps: their error is a [`VmError`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VmError> + Send + 'static,
) -> Result<T, VmError> {
    crate::ops::blocking(f).await
}

/// Defaults and network settings the VMs subsystem needs.
#[derive(Debug, Clone)]
pub struct VmsConfig {
    pub bridge: String,
    pub subnet: Subnet,
    pub default_image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub work_disk_bytes: u64,
    /// A console log's limit before it is rotated (vms/console.rs).
    pub console_log_bytes: u64,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// The firecracker binary (name on PATH or path).
    pub firecracker_binary: String,
    /// The jailer binary; empty: no jailer.
    pub jailer: String,
    /// Empty: `<state_dir>/jail`.
    pub chroot_base: PathBuf,
    pub jail_uid: u32,
    pub jail_gid: u32,
    /// Agent profiles (`vm create --agent`).
    pub agents: crate::agents::Agents,
    /// TAP devices kept ready (0: none).
    pub tap_pool: usize,
    /// Memory the warm pool's VMs may take, bytes.
    pub pool_memory_budget: u64,
    /// Whether the host's own network namespace routes to the VMs (false
    /// with `network.netns`: only forwards reach them from the host).
    pub host_routes_to_vms: bool,
    /// The banger-agent binary shipped on config disks (`None`: guests run
    /// their shell agent, and commands go over SSH).
    pub agent_binary: Option<PathBuf>,
}

struct VmsInner {
    layout: Layout,
    store: Arc<Store>,
    ops: Ops,
    images: Images,
    seeds: WorkSeeds,
    config: VmsConfig,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// True once the bridge exists (services on its address may start).
    net_up: tokio::sync::watch::Sender<bool>,
    pool: crate::taps::TapPool,
    ssh: GuestSsh,
    /// Each VM's agent connection slot, by VM id.
    agents: Mutex<HashMap<String, agent::Slot>>,
    /// Held while this daemon owns its namespace's network (net.rs).
    netns: Mutex<Option<crate::netns_lock::NetnsLock>>,
    /// What is wrong with running VMs, by id, with the VMM's pid then
    /// (health.rs).
    problems: Mutex<HashMap<String, (Option<u32>, String)>>,
}

/// The VMs subsystem. Cheap to clone.
#[derive(Clone)]
pub struct Vms {
    inner: Arc<VmsInner>,
}

impl Vms {
    pub fn new(
        layout: Layout,
        store: Arc<Store>,
        ops: Ops,
        images: Images,
        config: VmsConfig,
    ) -> Vms {
        let seeds = WorkSeeds::new(layout.seeds_dir());
        let ssh = GuestSsh::new(layout.clone());
        let pool = crate::taps::TapPool::new(&config.bridge, config.tap_pool);
        Vms {
            inner: Arc::new(VmsInner {
                layout,
                store,
                ops,
                images,
                seeds,
                config,
                locks: Mutex::new(HashMap::new()),
                net_up: tokio::sync::watch::channel(false).0,
                pool,
                ssh,
                agents: Mutex::new(HashMap::new()),
                netns: Mutex::new(None),
                problems: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(super) fn paths(&self, id: &str) -> VmPaths {
        VmPaths {
            dir: self.inner.layout.vms_dir().join(id),
            run: self.inner.layout.vms_run_dir().join(id),
        }
    }

    pub(super) fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// Every VM, warm-pool VMs included.
    pub(super) fn list(&self) -> Result<Vec<Vm>, VmError> {
        self.list_where("1")
    }

    /// VMs users see: unclaimed warm-pool VMs are hidden.
    pub fn list_user(&self) -> Result<Vec<Vm>, VmError> {
        self.list_where("pool = 0")
    }

    /// The address of the VM `name`, if it exists (for `.vm` DNS).
    pub fn ip_of(&self, name: &str) -> Option<Ipv4Addr> {
        let ip: Option<String> = self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT ip FROM vms WHERE name = ?1", [name], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten();
        ip?.parse().ok()
    }

    /// The name of the VM at `ip`, if any (for reverse DNS).
    pub fn name_at(&self, ip: Ipv4Addr) -> Option<String> {
        self.inner
            .store
            .read(|c| {
                c.query_row(
                    "SELECT name FROM vms WHERE ip = ?1",
                    [ip.to_string()],
                    |r| r.get(0),
                )
                .optional()
            })
            .ok()
            .flatten()
    }

    pub fn get(&self, name: &str) -> Result<Vm, VmError> {
        validate_name("VM", name)?;
        self.inner
            .store
            .read(|c| {
                c.query_row(
                    &format!("SELECT {VM_COLUMNS} FROM vms WHERE name = ?1"),
                    [name],
                    vm_from_row,
                )
                .optional()
            })?
            .transpose()?
            .map(|vm| self.annotate(vm))
            .ok_or_else(|| VmError::NotFound {
                name: name.into(),
                close: self.closest_name(name),
            })
    }

    /// The VM name users see that is closest to `name` (a typo's
    /// correction), if one is close enough.
    fn closest_name(&self, name: &str) -> Option<String> {
        let names: Vec<String> = self
            .inner
            .store
            .read(|c| -> rusqlite::Result<Vec<String>> {
                let mut stmt = c.prepare("SELECT name FROM vms WHERE pool = 0")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .ok()?;
        crate::names::closest(name, &names)
    }

    /// Names of VMs (and `snapshot NAME`s) using `image` (for `image rm`).
    pub fn users_of_image(&self, image: &str) -> Result<Vec<String>, VmError> {
        self.inner
            .store
            .read(|c| -> Result<Vec<String>, VmError> {
                let mut stmt = c.prepare("SELECT name FROM vms WHERE image = ?1 ORDER BY name")?;
                let rows = stmt.query_map([image], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .and_then(|mut users| {
                users.extend(
                    self.snapshots_of_image(image)?
                        .into_iter()
                        .map(|s| format!("snapshot {s}")),
                );
                Ok(users)
            })
    }

    /// The QEMU accelerator for `image`: `auto` is KVM only when the
    /// real-kernel probe (cached per kernel and boot) says KVM boots it.
    pub(super) fn accel(&self, image: &banger_api::Image) -> Accel {
        match self.inner.config.accel.as_str() {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            _ => {
                let kernel = self.inner.images.artifact_path(image, "kernel");
                let sha = image
                    .artifacts
                    .iter()
                    .find(|a| a.kind == "kernel")
                    .map(|a| a.sha256.clone());
                match (kernel, sha) {
                    (Some(k), Some(sha))
                        if kvm_probe::probe(&self.inner.layout.state_dir, &k, &sha)
                            .kvm_boots_real_kernels =>
                    {
                        Accel::Kvm
                    }
                    _ => Accel::Tcg,
                }
            }
        }
    }

    pub(super) fn vmm(&self, backend: Backend) -> Box<dyn vmm::Vmm> {
        if backend == Backend::Firecracker {
            let binary = tools::find(&self.inner.config.firecracker_binary)
                .unwrap_or_else(|| PathBuf::from(&self.inner.config.firecracker_binary));
            let c = &self.inner.config;
            let jailer = (!c.jailer.is_empty()).then(|| vmm::Jailer {
                binary: tools::find(&c.jailer).unwrap_or_else(|| PathBuf::from(&c.jailer)),
                chroot_base: if c.chroot_base.as_os_str().is_empty() {
                    self.inner.layout.state_dir.join("jail")
                } else {
                    c.chroot_base.clone()
                },
                uid: c.jail_uid,
                gid: c.jail_gid,
            });
            Box::new(vmm::FirecrackerVmm { binary, jailer })
        } else {
            Box::new(vmm::QemuVmm {
                binary: tools::find("qemu-system-x86_64")
                    .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            })
        }
    }

    /// The image a VM was made from, by the digest it recorded: the name
    /// may be gone (`image rm --force`) or name a rebuilt image since.
    pub(super) fn image_of(&self, vm: &Vm) -> Result<banger_api::Image, VmError> {
        let digest: String = self.inner.store.read(|c| {
            c.query_row(
                "SELECT image_digest FROM vms WHERE id = ?1",
                [&vm.id],
                |r| r.get(0),
            )
        })?;
        Ok(self.inner.images.by_digest(&digest)?)
    }

    /// The image digests VMs and snapshots use (their files must stay).
    pub fn digests_in_use(&self) -> Result<std::collections::HashSet<String>, VmError> {
        self.inner.store.read(|c| -> Result<_, VmError> {
            let mut stmt =
                c.prepare("SELECT image_digest FROM vms UNION SELECT image_digest FROM snapshots")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The name of the VM with this id, if it still exists.
    pub fn name_of(&self, id: &str) -> Option<String> {
        self.inner
            .store
            .read(|c| {
                c.query_row("SELECT name FROM vms WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten()
    }

    /// The key every VM authorizes.
    pub fn client_key_info(&self) -> Result<banger_api::SshClientKey, VmError> {
        Ok(banger_api::SshClientKey {
            user: "root".into(),
            private_key: self.inner.ssh.client_private_key()?,
        })
    }

    /// The guest transport to a running VM (what sessions, workspaces,
    /// credentials, agents and the pool run commands through).
    pub fn guest(&self, vm: &Vm) -> Result<Guest, VmError> {
        if vm.state != VmState::Running {
            return Err(VmError::WrongState {
                name: vm.name.clone(),
                state: vm.state.as_str(),
                what: "commands run only in a running VM",
            });
        }
        Ok(self.inner.ssh.guest(GuestTarget {
            id: vm.id.clone(),
            name: vm.name.clone(),
            ip: vm.ip.clone(),
            host_key: self.host_key(&vm.id)?,
        }))
    }

    /// What `banger vm ssh` needs; refused for a VM that is not running
    /// (ssh would only report a failed key exchange).
    pub fn ssh_info(&self, name: &str) -> Result<VmSshInfo, VmError> {
        let vm = self.get(name)?;
        if vm.state != VmState::Running {
            return Err(VmError::WrongState {
                name: vm.name.clone(),
                state: vm.state.as_str(),
                what: "SSH reaches only a running VM (start it with `banger vm start NAME`)",
            });
        }
        let banger_api::SshClientKey { user, private_key } = self.client_key_info()?;
        let host_key = self.host_key(&vm.id)?;
        Ok(VmSshInfo {
            name: vm.name.clone(),
            user,
            host_alias: format!("{}.vm", vm.name),
            host_key,
            private_key,
            ip: vm.ip,
        })
    }
}
