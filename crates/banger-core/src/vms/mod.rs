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
pub mod qemu;

pub mod agent;
pub mod pool;
pub mod ports;
pub mod ready;
pub mod snapshots;
pub mod stats;
pub mod vmm;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_api::{ApiError, ErrorCode, Operation, Vm, VmCreateRequest, VmSshInfo, VmState};
use rusqlite::{params, OptionalExtension, Row};
use thiserror::Error;

use crate::guest::configdisk::{self, ConfigDisk};
use crate::images::{ImageError, Images};
use crate::names::{validate_name, NameError};
use crate::network::{self, NetworkError, Subnet};
use crate::ops::{blocking, OpHandle, Ops, StepSpec};
use crate::paths::Layout;
use crate::storage::{StorageError, WorkSeeds};
use crate::store::{Store, StoreError};
use crate::tools::{self, ToolError};
use crate::units::parse_size;
use crate::ToApiError;

use qemu::Accel;

/// How long a boot may take before create/start fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Readiness and exit polling interval (fixed, never backed off).
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("A VM named {0:?} already exists")]
    Exists(String),
    #[error("No VM named {0:?}")]
    NotFound(String),
    #[error("VM {name:?} is {state}; {what}")]
    WrongState {
        name: String,
        state: &'static str,
        what: &'static str,
    },
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
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
            VmError::Name(_) | VmError::Invalid { .. } => ErrorCode::InvalidRequest,
            VmError::Exists(_)
            | VmError::SnapshotExists(_)
            | VmError::NoGuestAgent { .. }
            | VmError::WrongState { .. } => ErrorCode::Conflict,
            VmError::NotFound(_) | VmError::SnapshotNotFound(_) => ErrorCode::NotFound,
            VmError::Backend { .. } => ErrorCode::Unavailable,
            VmError::Image(e) => e.code(),
            VmError::Agent(e) => e.code(),
            VmError::Firewall(e) => e.code(),
            VmError::Network(e) => e.code(),
            VmError::Tool(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            VmError::Name(e) => e.hint(),
            VmError::Exists(_) => {
                Some("Pick another name, or remove the VM first (banger vm rm NAME)".into())
            }
            VmError::NotFound(_) => Some("List VMs with `banger vm ls`".into()),
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
            VmError::Tool(e) => e.hint(),
            VmError::Connect { .. } => {
                Some("Is the VM running and listening on that port? (banger vm ls)".into())
            }
            _ => None,
        }
    }
}

fn api<E: ToApiError>(e: E) -> ApiError {
    e.to_api_error()
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
}

/// The VMs subsystem. Cheap to clone.
#[derive(Clone)]
pub struct Vms {
    inner: Arc<VmsInner>,
}

/// A new VM row (see [`Vms::reserve_row`]).
struct NewRow<'a> {
    id: &'a str,
    name: &'a str,
    image: &'a str,
    digest: &'a str,
    backend: &'a str,
    accel: &'a str,
    cpus: u32,
    memory_mib: u64,
    work_bytes: u64,
    agent: Option<&'a str>,
    isolated: bool,
    egress: Option<&'a str>,
    pool: bool,
}

/// A VM's files.
#[derive(Clone)]
struct VmPaths {
    dir: PathBuf,
    run: PathBuf,
}

impl VmPaths {
    /// Makes the VM's state and runtime directories.
    fn create(&self) -> Result<(), VmError> {
        for d in [&self.dir, &self.run] {
            std::fs::create_dir_all(d).map_err(|source| VmError::Io {
                path: d.clone(),
                source,
            })?;
        }
        Ok(())
    }
    fn root(&self, backend: &str) -> PathBuf {
        self.dir.join(if backend == "firecracker" {
            "root.raw"
        } else {
            "root.qcow2"
        })
    }
    /// The copy-on-write file of a device-mapper snapshot root disk.
    fn root_cow(&self) -> PathBuf {
        self.dir.join("root.cow")
    }
    fn work(&self) -> PathBuf {
        self.dir.join("work.ext4")
    }
    fn config(&self) -> PathBuf {
        self.dir.join("config.ext4")
    }
    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// Removes the VMM's control sockets (after it exited).
    fn remove_sockets(&self) {
        for f in ["qmp.sock", "firecracker.sock"] {
            let _ = std::fs::remove_file(self.run.join(f));
        }
    }
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
            }),
        }
    }

    fn paths(&self, id: &str) -> VmPaths {
        VmPaths {
            dir: self.inner.layout.state_dir.join("vms").join(id),
            run: self.inner.layout.runtime_dir.join("vms").join(id),
        }
    }

    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// The daemon's SSH client key, made on first use.
    fn client_key(&self) -> Result<PathBuf, VmError> {
        // Creates run in parallel; the key is made once, atomically.
        static KEY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = KEY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.inner.layout.state_dir.join("ssh");
        let key = dir.join("id_ed25519");
        if !key.exists() {
            std::fs::create_dir_all(&dir).map_err(|source| VmError::Io {
                path: dir.clone(),
                source,
            })?;
            let tmp = dir.join(format!("id_ed25519.tmp{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let _ =
                std::fs::remove_file(tmp.with_extension(format!("tmp{}.pub", std::process::id())));
            tools::ssh_keygen(&tmp, "bangerd")?;
            let tmp_pub = PathBuf::from(format!("{}.pub", tmp.display()));
            std::fs::rename(&tmp_pub, key.with_extension("pub")).map_err(|source| VmError::Io {
                path: tmp_pub.clone(),
                source,
            })?;
            std::fs::rename(&tmp, &key).map_err(|source| VmError::Io {
                path: tmp.clone(),
                source,
            })?;
        }
        Ok(key)
    }

    pub fn list(&self) -> Result<Vec<Vm>, VmError> {
        self.list_where("1")
    }

    /// VMs users see: unclaimed warm-pool VMs are hidden.
    pub fn list_user(&self) -> Result<Vec<Vm>, VmError> {
        self.list_where("pool = 0")
    }

    fn list_where(&self, filter: &'static str) -> Result<Vec<Vm>, VmError> {
        self.inner.store.read(|c| -> Result<Vec<Vm>, VmError> {
            let mut stmt = c.prepare(&format!(
                "SELECT {VM_COLUMNS} FROM vms WHERE {filter} ORDER BY name"
            ))?;
            let rows = stmt.query_map([], vm_from_row)?;
            let mut v = Vec::new();
            for r in rows {
                v.push(r??);
            }
            Ok(v)
        })
    }

    /// A VM by id.
    fn get_by_id(&self, id: &str) -> Result<Vm, VmError> {
        self.inner
            .store
            .read(|c| {
                c.query_row(
                    &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                    [id],
                    vm_from_row,
                )
                .optional()
            })?
            .transpose()?
            .ok_or_else(|| VmError::NotFound(id.into()))
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
            .ok_or_else(|| VmError::NotFound(name.into()))
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

    fn set_state(
        &self,
        id: &str,
        state: VmState,
        pid: Option<u32>,
        reason: Option<&str>,
    ) -> Result<(), VmError> {
        let started = (state == VmState::Running).then(|| chrono::Utc::now().to_rfc3339());
        self.inner.store.write(|tx| -> Result<(), VmError> {
            tx.execute(
                "UPDATE vms SET state = ?2, pid = ?3, stop_reason = ?4, started_at = COALESCE(?5, CASE WHEN ?2 = 'running' THEN started_at ELSE NULL END) WHERE id = ?1",
                params![id, state.as_str(), pid, reason, started],
            )?;
            Ok(())
        })
    }

    /// The QEMU accelerator for `image`: `auto` is KVM only when the
    /// real-kernel probe (cached per kernel and boot) says KVM boots it.
    fn accel(&self, image: &banger_api::Image) -> Accel {
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

    /// Preflight (nothing changes if it fails), then the `vm.create` operation.
    pub async fn start_create(&self, req: VmCreateRequest) -> Result<Operation, VmError> {
        validate_name("VM", &req.name)?;
        if let Some(snap) = req.from_snapshot.clone() {
            return self.start_create_from_snapshot(req, &snap);
        }
        let image_name = req
            .image
            .clone()
            .unwrap_or_else(|| self.inner.config.default_image.clone());
        let image = self.inner.images.get(&image_name)?;
        let images = self.inner.images.clone();
        // The KVM verdict is QEMU's: a Firecracker VM does not wait for it.
        let qemu = self
            .resolve_backend(req.backend.as_deref().unwrap_or("auto"), &image)
            .is_ok_and(|b| b == "qemu");
        let (state_dir, auto) = (
            self.inner.layout.state_dir.clone(),
            qemu && self.inner.config.accel == "auto",
        );
        tokio::task::spawn_blocking(move || {
            images.verify(&image)?;
            // Warm the KVM verdict for this kernel (up to 5 s the first time
            // after a reboot) off the async threads.
            if let (true, Some(k), Some(a)) = (
                auto,
                images.artifact_path(&image, "kernel"),
                image.artifacts.iter().find(|a| a.kind == "kernel"),
            ) {
                kvm_probe::probe(&state_dir, &k, &a.sha256);
            }
            Ok::<(), ImageError>(())
        })
        .await
        .map_err(|e| VmError::Invalid {
            what: "image",
            reason: format!("verification task failed: {e}"),
        })??;
        self.start_create_checked(req, false)
    }

    /// Plans a create: checks everything, then either claims a warm pool VM
    /// that fits (a VM booted ahead of time, renamed and personalized) or
    /// reserves a new row and boots it. `pool`: this is a pool VM itself.
    fn start_create_checked(&self, req: VmCreateRequest, pool: bool) -> Result<Operation, VmError> {
        validate_name("VM", &req.name)?;
        let cfg = &self.inner.config;
        let image_name = req
            .image
            .clone()
            .unwrap_or_else(|| cfg.default_image.clone());
        let image = self.inner.images.get(&image_name)?;
        let backend = self.resolve_backend(req.backend.as_deref().unwrap_or("auto"), &image)?;
        // The agent: asked for (must exist), else the image's (when a
        // profile for it exists). Its resources are the defaults.
        let (agent, profile) = match (&req.agent, &image.agent) {
            (Some(a), _) => {
                validate_name("agent", a)?;
                (Some(a.clone()), Some(cfg.agents.get(a)?.0))
            }
            (None, Some(a)) => match cfg.agents.get(a) {
                Ok((p, _)) => (Some(a.clone()), Some(p)),
                Err(_) => (None, None),
            },
            (None, None) => (None, None),
        };
        let cpus = req
            .cpus
            .or(profile.as_ref().and_then(|p| p.cpus))
            .unwrap_or(cfg.cpus);
        check_cpus(cpus)?;
        let memory_mib = match req
            .memory
            .as_ref()
            .or(profile.as_ref().and_then(|p| p.memory.as_ref()))
        {
            Some(m) => {
                parse_size(m).map_err(|e| VmError::Invalid {
                    what: "memory",
                    reason: e.to_string(),
                })? >> 20
            }
            None => u64::from(cfg.memory_mib),
        };
        if !(128..=65536).contains(&memory_mib) {
            return Err(VmError::Invalid {
                what: "memory",
                reason: format!("{memory_mib} MiB is not in 128 MiB..=64 GiB"),
            });
        }
        let work_bytes = match &req.work_disk_size {
            Some(s) => parse_size(s).map_err(|e| VmError::Invalid {
                what: "work disk size",
                reason: e.to_string(),
            })?,
            None => cfg.work_disk_bytes,
        };
        if !((64 << 20)..=(16 << 40)).contains(&work_bytes) {
            return Err(VmError::Invalid {
                what: "work disk size",
                reason: "it must be between 64 MiB and 16 TiB".into(),
            });
        }
        let rootfs_size = image
            .artifacts
            .iter()
            .find(|a| a.kind == "rootfs")
            .map(|a| a.size)
            .unwrap_or(0);
        let root_bytes = match &req.disk_size {
            Some(s) => {
                let b = parse_size(s).map_err(|e| VmError::Invalid {
                    what: "disk size",
                    reason: e.to_string(),
                })?;
                if b < rootfs_size || b > (16 << 40) {
                    return Err(VmError::Invalid {
                        what: "disk size",
                        reason: format!("it must be at least the image's root filesystem ({}) and at most 16 TiB", crate::units::format_size(rootfs_size)),
                    });
                }
                Some(b)
            }
            None => None,
        };
        // Clones are sparse or copy-on-write; a raw copy for Firecracker
        // without reflink takes what the image's rootfs uses.
        let rootfs_allocated = {
            use std::os::unix::fs::MetadataExt;
            self.inner
                .images
                .artifact_path(&image, "rootfs")
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.blocks() * 512)
                .unwrap_or(0)
        };
        let needed = (512u64 << 20)
            + if backend == "firecracker" {
                rootfs_allocated
            } else {
                0
            };
        self.check_free_space(needed)?;
        let egress_json = parse_egress(req.egress_allow.as_deref())?;
        if !pool && !req.no_start && root_bytes.is_none() {
            let fit = pool::Fit {
                image: image_name.clone(),
                cpus,
                memory_mib: u32::try_from(memory_mib).unwrap_or(u32::MAX),
                work_bytes,
                backend: backend.clone(),
            };
            if let Some(op) = self.claim_pool_vm(&fit, &req, agent.clone(), egress_json.clone())? {
                return Ok(op);
            }
        }
        let client_key = self.client_key()?;
        // Reserve name and address in one transaction: the `creating` row is
        // what a restarted daemon rolls back.
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = req.name.clone();
        let accel = if backend == "qemu" {
            self.accel(&image)
        } else {
            Accel::Kvm
        };
        let vm = self.reserve_row(&NewRow {
            id: &id,
            name: &name,
            image: &image_name,
            digest: &image.digest,
            backend: &backend,
            accel: if backend == "firecracker" {
                "kvm"
            } else {
                accel.as_str()
            },
            cpus,
            memory_mib,
            work_bytes,
            agent: agent.as_deref(),
            isolated: req.isolated,
            egress: egress_json.as_deref(),
            pool,
        })?;
        let steps = vec![
            StepSpec::new("disks", "Clone root disk and work disk"),
            StepSpec::new("config", "Write the config disk (host key, network, keys)"),
            StepSpec::new("network", "Set up bridge and TAP"),
            StepSpec::new("spawn", "Start the VMM"),
            StepSpec::new("boot", "Wait for the guest (sshd ready)"),
        ];
        let this = self.clone();
        let no_start = req.no_start;
        Ok(self.inner.ops.spawn("vm.create", &vm.name.clone(), steps, move |h| async move {
            let lock = this.lock_for(&vm.name);
            let _held = lock.lock().await;
            let _ = &client_key;
            let r = this.create(&h, &vm, &image, root_bytes, no_start).await;
            if let Err(e) = &r {
                tracing::warn!(vm = %vm.name, error = %e.message, "create failed; rolling back");
                this.rollback(&vm.id, &vm.name);
            }
            r
        })?)
    }

    /// Refuses (changing nothing) when the state dir has less than `needed`
    /// bytes free.
    fn check_free_space(&self, needed: u64) -> Result<(), VmError> {
        let free = nix::sys::statvfs::statvfs(&self.inner.layout.state_dir)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(u64::MAX);
        if free < needed {
            return Err(VmError::Invalid {
                what: "disk space",
                reason: format!(
                    "only {} free in the state dir, {} needed",
                    crate::units::format_size(free),
                    crate::units::format_size(needed)
                ),
            });
        }
        Ok(())
    }

    /// Reserves name and address in one transaction: the `creating` row is
    /// what a restarted daemon rolls back.
    fn reserve_row(&self, r: &NewRow<'_>) -> Result<Vm, VmError> {
        let subnet = self.inner.config.subnet;
        self.inner.store.write(|tx| -> Result<Vm, VmError> {
            if tx.query_row("SELECT 1 FROM vms WHERE name = ?1", [r.name], |_| Ok(())).optional()?.is_some() {
                return Err(VmError::Exists(r.name.to_string()));
            }
            let mut stmt = tx.prepare("SELECT ip FROM vms")?;
            let used: Vec<Ipv4Addr> = stmt.query_map([], |r| r.get::<_, String>(0))?.filter_map(|r| r.ok()?.parse().ok()).collect();
            drop(stmt);
            let ip = subnet.allocate(&used)?;
            let now = chrono::Utc::now();
            tx.execute(
                &format!("INSERT INTO vms ({VM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'creating', NULL, ?13, NULL, NULL, '', ?14, ?15, ?16, ?17)"),
                params![r.id, r.name, r.image, r.digest, r.backend, r.accel, r.cpus, r.memory_mib, r.work_bytes as i64, ip.to_string(), network::mac_for(r.id), network::tap_name(r.id), now.to_rfc3339(), r.agent, i64::from(r.isolated), r.egress, i64::from(r.pool)],
            )?;
            tx.query_row(&format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"), [r.id], vm_from_row)?
        })
    }

    async fn create(
        &self,
        h: &OpHandle,
        vm: &Vm,
        image: &banger_api::Image,
        root_bytes: Option<u64>,
        no_start: bool,
    ) -> Result<serde_json::Value, ApiError> {
        let p = self.paths(&vm.id);
        let (dir, paths) = (p.dir.clone(), p.clone());
        let base = self
            .inner
            .images
            .artifact_path(image, "rootfs")
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "image has no rootfs"))?;
        let seeds = self.inner.seeds.clone();
        let work_bytes = vm.work_disk_bytes;
        let backend = vm.backend.clone();
        h.step(
            "disks",
            blocking(move || {
                paths.create().map_err(api)?;
                if backend == "firecracker" {
                    // Firecracker boots raw block devices: a reflink where the
                    // filesystem can, else a device-mapper snapshot (the COW
                    // file is mapped at each boot), else a sparse copy.
                    let raw = dir.join("root.raw");
                                        let cloned = crate::storage::try_reflink(&base, &raw);
                    if !cloned {
                        if crate::storage::dm::available() {
                            if root_bytes.is_some() {
                                return Err(api(VmError::Invalid { what: "disk size", reason: "a device-mapper snapshot root disk cannot be larger than its image".into() }));
                            }
                            let size =
                                std::fs::metadata(&base)
                                    .map(|m| m.len())
                                    .map_err(|source| {
                                        api(VmError::Io {
                                            path: base.clone(),
                                            source,
                                        })
                                    })?;
                            let cow = dir.join("root.cow");
                            let f = std::fs::File::create(&cow).map_err(|source| {
                                api(VmError::Io {
                                    path: cow.clone(),
                                    source,
                                })
                            })?;
                            f.set_len(size).map_err(|source| {
                                api(VmError::Io {
                                    path: cow.clone(),
                                    source,
                                })
                            })?;
                                                } else {
                            crate::storage::clone_file(&base, &raw).map_err(api)?;
                        }
                    }
                    if let (Some(size), true) = (root_bytes, raw.exists()) {
                        grow_ext4_file(&raw, size).map_err(api)?;
                    }
                } else {
                    let qemu_img = tools::require("qemu-img").map_err(api)?;
                    let root = dir.join("root.qcow2");
                    tools::run(
                        &qemu_img,
                        [
                            "create".as_ref(),
                            "-q".as_ref(),
                            "-f".as_ref(),
                            "qcow2".as_ref(),
                            "-F".as_ref(),
                            "raw".as_ref(),
                            "-b".as_ref(),
                                                        base.as_os_str(),
                            root.as_os_str(),
                            root_bytes.map(|b| b.to_string()).unwrap_or_default().as_ref(),
                        ]
                        .into_iter()
                        .filter(|a| !a.is_empty()),
                    )
                    .map_err(api)?;
                }
                seeds
                    .clone_to(work_bytes, &dir.join("work.ext4"))
                    .map_err(api)?;
                Ok(())
            }),
        )
        .await?;

        let (this, vm2) = (self.clone(), vm.clone());
        let base_size = image
            .artifacts
            .iter()
            .find(|a| a.kind == "rootfs")
            .map(|a| a.size)
            .unwrap_or(0);
        let grow_root = vm.backend == "qemu" && root_bytes.is_some_and(|b| b > base_size);
        h.step(
            "config",
            blocking(move || this.new_identity(&vm2, grow_root).map_err(api)),
        )
        .await?;
        if no_start {
            for s in ["network", "spawn", "boot"] {
                h.skip(s);
            }
            self.set_state(
                &vm.id,
                VmState::Stopped,
                None,
                Some("created with --no-start"),
            )
            .map_err(api)?;
            return Ok(serde_json::json!({ "vm": vm.name, "ip": vm.ip, "state": "stopped" }));
        }
        let t = self.boot(h, vm, None).await?;
        if self.is_pool(&vm.id) {
            self.warm_pool_connection(vm).await;
        }
        Ok(serde_json::json!({ "vm": vm.name, "ip": vm.ip, "state": "running", "boot_seconds": t }))
    }

    /// network -> spawn -> boot; leaves the VM running or returns an error
    /// (the caller rolls back or marks it stopped).
    /// `restore`: a snapshot's directory to resume from instead of booting
    /// (then the guest agent re-applies the VM's identity).
    async fn boot(&self, h: &OpHandle, vm: &Vm, restore: Option<PathBuf>) -> Result<f64, ApiError> {
        let vm_ip = vm.ip.clone();
        // A jailed Firecracker opens its TAP as the jail's user.
        let tap_owner = (vm.backend == "firecracker" && !self.inner.config.jailer.is_empty())
            .then_some((self.inner.config.jail_uid, self.inner.config.jail_gid));
        let (bridge, subnet) = (self.inner.config.bridge.clone(), self.inner.config.subnet);
        let this = self.clone();
        let id = vm.id.clone();
        h.step(
            "network",
            blocking(move || {
                network::ensure_bridge(&bridge, &subnet).map_err(api)?;
                network::flush_neighbor(&vm_ip, &bridge);
                // A ready TAP from the pool, else a new one (a jailed
                // Firecracker needs one owned by the jail's user).
                let pooled = if tap_owner.is_none() {
                    this.inner.pool.take()
                } else {
                    None
                };
                let tap = match pooled {
                    Some(t) => t,
                    None => {
                        let t = network::tap_name(&id);
                        network::create_tap(&t, &bridge, tap_owner).map_err(api)?;
                        t
                    }
                };
                let t2 = tap.clone();
                this.inner
                    .store
                    .write(|tx| -> Result<(), VmError> {
                        tx.execute("UPDATE vms SET tap = ?2 WHERE id = ?1", params![id, t2])?;
                        Ok(())
                    })
                    .map_err(api)?;
                this.sync_firewall().map_err(api)?;
                this.inner.net_up.send_replace(true);
                this.inner.pool.refill_later();
                Ok(())
            }),
        )
        .await?;
        let p = self.paths(&vm.id);
        let spec = self.launch_spec(vm).map_err(api)?;
        let vmm = self.vmm(&vm.backend);
        if vm.backend == "firecracker" && p.root_cow().exists() {
            let image = self.image_of(vm).map_err(api)?;
            let base = self
                .inner
                .images
                .artifact_path(&image, "rootfs")
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "image has no rootfs"))?;
            let (id, cow) = (vm.id.clone(), p.root_cow());
            blocking(move || {
                crate::storage::dm::setup(&id, &base, &cow)
                    .map(|_| ())
                    .map_err(api)
            })
            .await?;
        }
        let started = Instant::now();
        let pid = h
            .step("spawn", async {
                let (spec2, restore) = (spec.clone(), restore.clone());
                let child = blocking(move || {
                    match &restore {
                        Some(dir) => vmm.restore(&spec2, dir),
                        None => vmm.launch(&spec2),
                    }
                    .map_err(api)
                })
                .await?;
                let pid = child.id();
                if vm.state == VmState::Creating {
                    // Stays `creating` (rolled back after a crash) until booted.
                    let id = vm.id.clone();
                    self.inner
                        .store
                        .write(|tx| {
                            tx.execute("UPDATE vms SET pid = ?2 WHERE id = ?1", params![id, pid])
                                .map(|_| ())
                        })
                        .map_err(|e| api(VmError::from(e)))?;
                } else {
                    self.set_state(&vm.id, VmState::Starting, Some(pid), None)
                        .map_err(api)?;
                }
                self.watch_child(vm.id.clone(), child);
                h.message(
                    "spawn",
                    format!("{} pid {pid} ({} accel)", vm.backend, vm.accel),
                );
                Ok(pid)
            })
            .await?;
        let console = p.console();
        let logs = self.vmm(&vm.backend).logs(&spec);
        if restore.is_some() {
            // A restored guest is up already: it takes its own identity.
            let link = self.vmm(&vm.backend).agent(&spec);
            h.step(
                "boot",
                blocking(move || reapply_identity(&link).map_err(api)),
            )
            .await?;
        } else {
            self.wait_ready(h, pid, &console, &logs).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        self.set_state(&vm.id, VmState::Running, Some(pid), None)
            .map_err(api)?;
        Ok(secs)
    }

    /// The `boot` step of a cold boot: until the guest's readiness marker
    /// is on its console (or its VMM exits, or the boot times out).
    async fn wait_ready(
        &self,
        h: &OpHandle,
        pid: u32,
        console: &std::path::Path,
        logs: &[PathBuf],
    ) -> Result<(), ApiError> {
        h.step("boot", async {
            let deadline = Instant::now() + BOOT_TIMEOUT;
            let mut scan = ready::ReadyScan::default();
            loop {
                if scan.poll(console) {
                    return Ok(());
                }
                if !pid_alive(pid) {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "The VMM exited while the guest was booting ({})",
                            ready::tail_report(console, logs)
                        ),
                    )
                    .with_hint(
                        "See the whole console with `banger vm logs NAME`; `banger doctor` \
                         says whether this host can run the image's kernel",
                    ));
                }
                if Instant::now() > deadline {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "The guest did not report ready within {}s",
                            BOOT_TIMEOUT.as_secs()
                        ),
                    )
                    .with_hint("See its console with `banger vm logs NAME`"));
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
    }

    /// Reaps our VMM child and records an unexpected exit. The wait holds
    /// no thread (a blocked `wait4` kept a SIGTERMed daemon alive, since
    /// the runtime waits for its blocking threads and VMMs outlive it).
    fn watch_child(&self, id: String, mut child: std::process::Child) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = tools::wait_exit(&mut child).await;
            let pid = child.id();
            // on_exit blocks on the per-VM lock: not on an async thread.
            let _ = tokio::task::spawn_blocking(move || this.on_exit(&id, pid, status)).await;
        });
    }

    /// Polls an adopted VMM (not our child) until it exits.
    fn watch_adopted(&self, id: String, pid: u32) {
        let this = self.clone();
        tokio::spawn(async move {
            while pid_alive(pid) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // on_exit blocks on the per-VM lock: not on an async thread.
            let _ =
                tokio::task::spawn_blocking(move || this.on_exit(&id, pid, "exited".into())).await;
        });
    }

    /// Records that VMM `pid` of VM `id` exited. Blocking: it takes the
    /// per-VM lock, so it cannot interleave with a stop or start of the same
    /// VM (a late call for an old process then sees another pid and does
    /// nothing). Call from a blocking thread.
    fn on_exit(&self, id: &str, pid: u32, status: String) {
        let name: Option<String> = self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT name FROM vms WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten();
        let Some(name) = name else { return };
        let lock = self.lock_for(&name);
        let _held = lock.blocking_lock();
        let row: Option<(String, Option<i64>, String)> = self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT state, pid, tap FROM vms WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .ok()
            .flatten();
        let Some((state, cur_pid, tap)) = row else {
            return;
        };
        if cur_pid != Some(i64::from(pid)) {
            return;
        }
        let reason = if state == "stopping" {
            "stopped by user".to_string()
        } else {
            format!("VMM exited ({status})")
        };
        if state != "creating" {
            let _ = self.set_state(id, VmState::Stopped, None, Some(&reason));
        }
        network::delete_tap(&tap);
        crate::storage::dm::teardown(id);
        self.vmm("firecracker").cleanup(id);
        self.paths(id).remove_sockets();
        tracing::info!(vm = id, pid, reason, "VMM exited");
    }

    /// Removes everything a failed create left.
    fn rollback(&self, id: &str, name: &str) {
        if let Ok(Some(pid)) = self
            .inner
            .store
            .read(|c| {
                c.query_row("SELECT pid FROM vms WHERE id = ?1", [id], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()
            })
            .map(|o| o.flatten())
        {
            if let Ok(pid) = u32::try_from(pid) {
                kill_vmm(pid, id);
            }
        }
        // A VMM launched but not yet recorded (the daemon died in `spawn`).
        kill_vmms_of(id);
        network::delete_tap(&self.tap_of(id));
        crate::storage::dm::teardown(id);
        self.vmm("firecracker").cleanup(id);
        let p = self.paths(id);
        let _ = std::fs::remove_dir_all(&p.dir);
        let _ = std::fs::remove_dir_all(&p.run);
        let _ = self.inner.store.write(|tx| {
            tx.execute("DELETE FROM vms WHERE id = ?1", [id])
                .map(|_| ())
        });
        tracing::info!(vm = name, "rolled back");
    }

    /// Gives a new VM its SSH host key and config disk (from its row), and
    /// records the host key. Blocking.
    fn new_identity(&self, vm: &Vm, grow_root: bool) -> Result<(), VmError> {
        let hk = self.paths(&vm.id).dir.join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&hk);
        let _ = std::fs::remove_file(hk.with_extension("pub"));
        tools::ssh_keygen(&hk, &format!("{}.vm", vm.name))?;
        let host_pub = self.write_config_disk(vm, grow_root)?;
        self.inner.store.write(|tx| {
            tx.execute(
                "UPDATE vms SET host_key = ?2 WHERE id = ?1",
                params![vm.id, host_pub],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Writes the VM's config disk from its row and its host key; returns
    /// the host public key. `grow_root` asks the guest to grow its root
    /// filesystem to the disk at the next boot.
    fn write_config_disk(&self, vm: &Vm, grow_root: bool) -> Result<String, VmError> {
        let dir = self.paths(&vm.id).dir;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| VmError::Io { path: p, source })
        };
        let host_pub = read(dir.join("ssh_host_ed25519_key.pub"))?
            .trim()
            .to_string();
        let key = self.client_key()?;
        let gateway = self.inner.config.subnet.gateway().to_string();
        let disk = ConfigDisk {
            hostname: vm.name.clone(),
            address: Some(format!("{}/{}", vm.ip, self.inner.config.subnet.prefix)),
            gateway: Some(gateway.clone()),
            mac: Some(vm.mac.clone()),
            dns: vec![gateway],
            authorized_keys: vec![read(key.with_extension("pub"))?.trim().to_string()],
            host_key: Some((read(dir.join("ssh_host_ed25519_key"))?, host_pub.clone())),
            env: vec![("BANGER_VM".into(), vm.name.clone())],
            machine_id: Some(vm.id.clone()),
            work_mount: Some("/work".into()),
            grow_root,
        };
        // Made aside and renamed in: a running VMM keeps reading the old one.
        let (tmp, out) = (dir.join("config.ext4.new"), dir.join("config.ext4"));
        configdisk::write(&disk, &tmp, &dir.join("config.d")).map_err(|e| VmError::Invalid {
            what: "config disk",
            reason: crate::error::error_chain(&e),
        })?;
        std::fs::rename(&tmp, &out).map_err(|source| VmError::Io { path: out, source })?;
        Ok(host_pub)
    }

    /// The console log from byte `offset` on, and the log's size.
    pub fn console_log_from(&self, name: &str, offset: u64) -> Result<(String, u64), VmError> {
        use std::io::{Read, Seek, SeekFrom};
        let vm = self.get(name)?;
        let p = self.paths(&vm.id).console();
        let Ok(mut f) = std::fs::File::open(&p) else {
            return Ok((String::new(), 0));
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        // A log shorter than the offset was restarted (a new boot): from 0.
        let from = if offset > size { 0 } else { offset };
        f.seek(SeekFrom::Start(from))
            .map_err(|source| VmError::Io {
                path: p.clone(),
                source,
            })?;
        let mut buf = Vec::new();
        f.take(4 << 20)
            .read_to_end(&mut buf)
            .map_err(|source| VmError::Io {
                path: p.clone(),
                source,
            })?;
        Ok((
            String::from_utf8_lossy(&buf).into_owned(),
            from + buf.len() as u64,
        ))
    }

    /// Host-side figures from /proc and the disks; guest-side over SSH.
    /// A VMM's CPU ticks and RSS now (for live figures); `None` when not running.
    pub fn vmm_sample(&self, vm: &Vm) -> Option<(u64, Option<u64>)> {
        let pid = vm
            .pid
            .filter(|p| vm.state == VmState::Running && pid_alive(*p))?;
        let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(stats::parse_proc_stat_ticks)?;
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(stats::parse_rss);
        Some((ticks, rss))
    }

    pub async fn stats(&self, name: &str) -> Result<banger_api::VmStats, VmError> {
        let vm = self.get(name)?;
        let p = self.paths(&vm.id);
        let disk_allocated_bytes = std::fs::read_dir(&p.dir)
            .map(|r| {
                use std::os::unix::fs::MetadataExt;
                r.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        let running = vm.state == VmState::Running;
        let pid = vm.pid.filter(|p| running && pid_alive(*p));
        let mut host = banger_api::HostStats {
            pid,
            cpu_percent: None,
            rss_bytes: None,
            disk_allocated_bytes,
        };
        if let Some(pid) = pid {
            let ticks = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .as_deref()
                    .and_then(stats::parse_proc_stat_ticks)
            };
            let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .unwrap_or(100) as f64;
            let (a, t0) = (ticks(), Instant::now());
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let (Some(a), Some(b)) = (a, ticks()) {
                host.cpu_percent = Some(
                    ((b.saturating_sub(a)) as f64 / hz / t0.elapsed().as_secs_f64() * 1000.0)
                        .round()
                        / 10.0,
                );
            }
            host.rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .as_deref()
                .and_then(stats::parse_rss);
        }
        let (guest, guest_error) = if running {
            match self.guest_stdout(&vm, stats::GUEST_STATS_COMMAND).await {
                Ok(out) => match stats::parse_guest(&out) {
                    Ok(g) => (Some(g), None),
                    Err(e) => (None, Some(format!("unexpected output from the guest: {e}"))),
                },
                Err(e) => (None, Some(crate::error::error_chain(&e))),
            }
        } else {
            (None, Some(format!("the VM is {}", vm.state.as_str())))
        };
        Ok(banger_api::VmStats {
            name: vm.name,
            state: vm.state,
            host,
            guest,
            guest_error,
        })
    }

    /// Runs a command in the guest over SSH (from the daemon, with the VM's
    /// pinned host key); returns its stdout.
    async fn guest_stdout(&self, vm: &Vm, command: &str) -> Result<String, VmError> {
        let out = self.guest_run(vm, command, None).await?;
        if !out.status.success() {
            return Err(VmError::Tool(ToolError::Failed {
                command: format!("ssh {} {command}", vm.name),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SSH options for a VM: the daemon's key, the pinned host key, and a
    /// control socket so that one connection serves many commands.
    fn ssh_args(&self, vm: &Vm) -> Result<Vec<String>, VmError> {
        let key = self.client_key()?;
        let dir = self.paths(&vm.id).dir;
        let host_key: String = self.inner.store.read(|c| {
            c.query_row("SELECT host_key FROM vms WHERE id = ?1", [&vm.id], |r| {
                r.get(0)
            })
        })?;
        let kh = dir.join("known_hosts");
        let parts: Vec<&str> = host_key.split_whitespace().take(2).collect();
        let line = format!("{} {}\n", vm.ip, parts.join(" "));
        // Written when it changes, not on every command.
        if std::fs::read_to_string(&kh).ok().as_deref() != Some(line.as_str()) {
            std::fs::write(&kh, line).map_err(|source| VmError::Io {
                path: kh.clone(),
                source,
            })?;
        }
        let ctl_dir = self.inner.layout.runtime_dir.join("ssh");
        std::fs::create_dir_all(&ctl_dir).map_err(|source| VmError::Io {
            path: ctl_dir.clone(),
            source,
        })?;
        Ok(vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("KexAlgorithms={}", banger_api::vms::SSH_KEX_ALGORITHMS),
            "-o".into(),
            format!("UserKnownHostsFile={}", kh.display()),
            "-o".into(),
            format!(
                "ControlPath={}",
                ctl_dir.join(&vm.id[..vm.id.len().min(16)]).display()
            ),
            "-i".into(),
            key.display().to_string(),
            format!("root@{}", vm.ip),
        ])
    }

    /// Runs `command` (a shell command line) in the guest, over the VM's
    /// shared SSH connection (started on first use, kept 10 minutes), with
    /// `stdin` as its input; at most 30 s.
    pub async fn guest_run(
        &self,
        vm: &Vm,
        command: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<std::process::Output, VmError> {
        let input = match stdin {
            Some(b) => GuestInput::Bytes(b),
            None => GuestInput::None,
        };
        self.guest_exec(vm, command, input, Duration::from_secs(30))
            .await
    }

    /// [`Vms::guest_run`] with any input (a stream, for large uploads) and
    /// a time limit of the caller's. The input is written while the output
    /// is read, so neither side can block the other.
    pub async fn guest_exec(
        &self,
        vm: &Vm,
        command: &str,
        input: GuestInput,
        limit: Duration,
    ) -> Result<std::process::Output, VmError> {
        if vm.state != VmState::Running {
            return Err(VmError::WrongState {
                name: vm.name.clone(),
                state: vm.state.as_str(),
                what: "commands run only in a running VM",
            });
        }
        let ssh = tools::require("ssh")?;
        let args = self.ssh_args(vm)?;
        let (opts, target) = args.split_at(args.len() - 1);
        // The master: its own process with no pipes of ours, so that no
        // later command waits on it.
        let check = tokio::process::Command::new(&ssh)
            .args(opts)
            .args(["-O", "check"])
            .args(target)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if !check.is_ok_and(|s| s.success()) {
            let master = tokio::process::Command::new(&ssh)
                .args(opts)
                .args([
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    "ControlPersist=3600",
                    "-o",
                    "ServerAliveInterval=15",
                    "-o",
                    "ServerAliveCountMax=3",
                    "-N",
                    "-f",
                ])
                .args(target)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(20), master).await;
        }
        let mut child = tokio::process::Command::new(&ssh)
            .args(opts)
            .args(["-o", "ControlMaster=no"])
            .args(target)
            .arg("--")
            .arg(command)
            .stdin(if matches!(input, GuestInput::None) {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::piped()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmError::Io {
                path: ssh.clone(),
                source,
            })?;
        let writer = child.stdin.take().map(|mut sin| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let r = match input {
                    GuestInput::None => Ok(()),
                    GuestInput::Bytes(b) => sin.write_all(&b).await,
                    GuestInput::Reader(mut r) => {
                        tokio::io::copy(&mut r, &mut sin).await.map(|_| ())
                    }
                };
                let _ = sin.shutdown().await;
                r
            })
        });
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| VmError::Invalid {
                what: "guest command",
                reason: format!("timed out after {} s", limit.as_secs()),
            })?
            .map_err(|source| VmError::Io {
                path: ssh.clone(),
                source,
            })?;
        if let Some(w) = writer {
            match w.await {
                Ok(Err(source)) if out.status.success() => {
                    return Err(VmError::Io {
                        path: "guest command input".into(),
                        source,
                    })
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Changes resources of a stopped VM; disks only grow.
    pub async fn set(&self, name: &str, req: banger_api::VmSetRequest) -> Result<Vm, VmError> {
        let lock = self.lock_for(name);
        let _held = lock.lock().await;
        let vm = self.get(name)?;
        let policy = req.isolated.is_some() || req.egress_allow.is_some() || req.egress_all;
        let resources = req.cpus.is_some()
            || req.memory.is_some()
            || req.disk_size.is_some()
            || req.work_disk_size.is_some();
        if policy {
            if req.egress_all && req.egress_allow.is_some() {
                return Err(VmError::Invalid {
                    what: "egress",
                    reason: "give an allow-list or egress_all, not both".into(),
                });
            }
            let egress = parse_egress(req.egress_allow.as_deref())?;
            let (id, isolated, clear) = (vm.id.clone(), req.isolated, req.egress_all);
            self.inner.store.write(|tx| -> Result<(), VmError> {
                if let Some(i) = isolated {
                    tx.execute(
                        "UPDATE vms SET isolated = ?2 WHERE id = ?1",
                        params![id, i64::from(i)],
                    )?;
                }
                if egress.is_some() || clear {
                    tx.execute(
                        "UPDATE vms SET egress = ?2 WHERE id = ?1",
                        params![id, egress],
                    )?;
                }
                Ok(())
            })?;
            if self.network_active() {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.sync_firewall())
                    .await
                    .map_err(|e| VmError::Invalid {
                        what: "firewall",
                        reason: format!("task failed: {e}"),
                    })??;
            }
            tracing::info!(vm = %vm.name, isolated = ?req.isolated, egress = ?req.egress_allow, all = req.egress_all, "network policy changed");
            if !resources {
                return self.get(name);
            }
        }
        let vm = self.get(name)?;
        if vm.state != VmState::Stopped {
            return Err(VmError::WrongState {
                name: name.into(),
                state: vm.state.as_str(),
                what: "resources can change only while it is stopped (banger vm stop NAME)",
            });
        }
        let cpus = req.cpus.unwrap_or(vm.cpus);
        check_cpus(cpus)?;
        let memory_mib = match &req.memory {
            Some(m) => u32::try_from(
                parse_size(m).map_err(|e| VmError::Invalid {
                    what: "memory",
                    reason: e.to_string(),
                })? >> 20,
            )
            .unwrap_or(u32::MAX),
            None => vm.memory_mib,
        };
        if !(128..=65536).contains(&memory_mib) {
            return Err(VmError::Invalid {
                what: "memory",
                reason: format!("{memory_mib} MiB is not in 128 MiB..=64 GiB"),
            });
        }
        let (root_size, work_size) = (
            opt_size("disk size", &req.disk_size)?,
            opt_size("work disk size", &req.work_disk_size)?,
        );
        let p = self.paths(&vm.id);
        let mut work_bytes = vm.work_disk_bytes;
        if let Some(size) = work_size {
            if size < vm.work_disk_bytes {
                return Err(VmError::Invalid {
                    what: "work disk size",
                    reason: format!(
                        "disks only grow: it is {} now",
                        crate::units::format_size(vm.work_disk_bytes)
                    ),
                });
            }
            if size > vm.work_disk_bytes {
                grow_ext4_file(&p.work(), size)?;
                work_bytes = size;
            }
        }
        if let Some(size) = root_size {
            let root = p.root(&vm.backend);
            let current = if vm.backend == "firecracker" {
                std::fs::metadata(&root).map(|m| m.len()).unwrap_or(0)
            } else {
                qcow2_virtual_size(&root)?
            };
            if size < current {
                return Err(VmError::Invalid {
                    what: "disk size",
                    reason: format!(
                        "disks only grow: it is {} now",
                        crate::units::format_size(current)
                    ),
                });
            }
            if size > current {
                if vm.backend == "firecracker" {
                    grow_ext4_file(&root, size)?;
                } else {
                    let qemu_img = tools::require("qemu-img")?;
                    tools::run(
                        &qemu_img,
                        [
                            "resize".as_ref(),
                            "-q".as_ref(),
                            root.as_os_str(),
                            size.to_string().as_ref(),
                        ],
                    )?;
                    // The guest grows the mounted filesystem at its next boot.
                    self.write_config_disk(&vm, true)?;
                }
            }
        }
        let id = vm.id.clone();
        self.inner.store.write(|tx| {
            tx.execute(
                "UPDATE vms SET cpus = ?2, memory_mib = ?3, work_bytes = ?4 WHERE id = ?1",
                params![id, cpus, memory_mib, work_bytes as i64],
            )
            .map(|_| ())
        })?;
        self.get(name)
    }

    /// Picks the backend for a create request, or says why it cannot run.
    fn resolve_backend(
        &self,
        requested: &str,
        image: &banger_api::Image,
    ) -> Result<String, VmError> {
        let kvm = std::path::Path::new("/dev/kvm").exists();
        let nested_pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        let fc = tools::find(&self.inner.config.firecracker_binary);
        let image_ok = |b: &str| image.backends.iter().any(|x| x == b);
        let unavailable = |backend: &str, reason: String| {
            Err(VmError::Backend {
                backend: backend.into(),
                reason,
            })
        };
        match requested {
            "firecracker" => {
                if fc.is_none() {
                    return unavailable(
                        "firecracker",
                        format!(
                            "the binary {:?} is not installed (doctor check `firecracker`)",
                            self.inner.config.firecracker_binary
                        ),
                    );
                }
                if !kvm {
                    return unavailable(
                        "firecracker",
                        "/dev/kvm is missing (doctor check `kvm`)".into(),
                    );
                }
                if !image_ok("firecracker") {
                    return unavailable(
                        "firecracker",
                        format!("image {:?} has no vmlinux with virtio-mmio", image.name),
                    );
                }
                Ok("firecracker".into())
            }
            "qemu" | "auto" => {
                if requested == "auto"
                    && fc.is_some()
                    && kvm
                    && !nested_pvm
                    && image_ok("firecracker")
                {
                    return Ok("firecracker".into());
                }
                if tools::find("qemu-system-x86_64").is_none() {
                    return unavailable(
                        "qemu",
                        format!(
                            "qemu-system-x86_64 is not installed (doctor check `qemu`). {}",
                            tools::install_hint("qemu-system-x86_64")
                        ),
                    );
                }
                if !image_ok("qemu") {
                    return unavailable(
                        "qemu",
                        format!("image {:?} has no kernel QEMU can boot", image.name),
                    );
                }
                Ok("qemu".into())
            }
            other => Err(VmError::Invalid {
                what: "backend",
                reason: format!("{other:?} is not auto, qemu or firecracker"),
            }),
        }
    }

    fn vmm(&self, backend: &str) -> Box<dyn vmm::Vmm> {
        if backend == "firecracker" {
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
    fn image_of(&self, vm: &Vm) -> Result<banger_api::Image, VmError> {
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

    fn launch_spec(&self, vm: &Vm) -> Result<vmm::LaunchSpec, VmError> {
        let p = self.paths(&vm.id);
        let image = self.image_of(vm)?;
        let kernel_kind = if vm.backend == "firecracker" {
            "vmlinux"
        } else {
            "kernel"
        };
        let kernel = self
            .inner
            .images
            .artifact_path(&image, kernel_kind)
            .ok_or_else(|| VmError::Invalid {
                what: "image",
                reason: format!("image {:?} has no {kernel_kind}", image.name),
            })?;
        Ok(vmm::LaunchSpec {
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            accel: if vm.accel == "kvm" {
                Accel::Kvm
            } else {
                Accel::Tcg
            },
            kernel,
            initrd: self.inner.images.artifact_path(&image, "initrd"),
            root_disk: if vm.backend == "firecracker" && p.root_cow().exists() {
                crate::storage::dm::device_path(&vm.id)
            } else {
                p.root(&vm.backend)
            },
            config_disk: p.config(),
            work_disk: p.work(),
            tap: self.tap_of(&vm.id),
            mac: vm.mac.clone(),
            console_log: p.console(),
            stderr_log: p.dir.join("vmm.stderr"),
            run_dir: p.run.clone(),
            background: self.is_pool(&vm.id),
        })
    }

    /// `vm.start` of a stopped VM.
    pub fn start_start(&self, name: &str) -> Result<Operation, VmError> {
        let vm = self.get(name)?;
        if vm.state != VmState::Stopped {
            return Err(VmError::WrongState {
                name: name.into(),
                state: vm.state.as_str(),
                what: "only a stopped VM can be started",
            });
        }
        let steps = vec![
            StepSpec::new("network", "Set up bridge and TAP"),
            StepSpec::new("spawn", "Start the VMM"),
            StepSpec::new("boot", "Wait for the guest (sshd ready)"),
        ];
        let this = self.clone();
        Ok(self
            .inner
            .ops
            .spawn("vm.start", name, steps, move |h| async move {
                let lock = this.lock_for(&vm.name);
                let _held = lock.lock().await;
                let cur = this.get(&vm.name).map_err(api)?;
                if cur.state != VmState::Stopped {
                    return Err(api(VmError::WrongState {
                        name: vm.name.clone(),
                        state: cur.state.as_str(),
                        what: "only a stopped VM can be started",
                    }));
                }
                match this.boot(&h, &cur, None).await {
                    Ok(t) => Ok(
                        serde_json::json!({ "vm": vm.name, "state": "running", "boot_seconds": t }),
                    ),
                    Err(e) => {
                        if let Ok(Some(pid)) = this.get(&vm.name).map(|v| v.pid) {
                            kill_vmm(pid, &vm.id);
                        }
                        network::delete_tap(&this.tap_of(&vm.id));
                        let _ = this.set_state(
                            &vm.id,
                            VmState::Stopped,
                            None,
                            Some(&format!("start failed: {}", e.message)),
                        );
                        Err(e)
                    }
                }
            })?)
    }

    /// Stops a running VM: guest power-off (Ctrl-Alt-Del over QMP), then a
    /// kill after `timeout`; at once with `force`.
    pub async fn stop(&self, name: &str, force: bool, timeout: Duration) -> Result<Vm, VmError> {
        let lock = self.lock_for(name);
        let _held = lock.lock().await;
        let vm = self.get(name)?;
        let pid = match (vm.state, vm.pid) {
            (VmState::Running | VmState::Starting, Some(pid)) => pid,
            _ => {
                return Err(VmError::WrongState {
                    name: name.into(),
                    state: vm.state.as_str(),
                    what: "only a running VM can be stopped",
                })
            }
        };
        // Everything that can fail comes before the state changes: a stop
        // that fails leaves the VM running, not stuck in `stopping`.
        let spec = self.launch_spec(&vm)?;
        self.set_state(&vm.id, VmState::Stopping, Some(pid), None)?;
        let vmm = self.vmm(&vm.backend);
        if !force {
            let asked = tokio::task::spawn_blocking(move || vmm.request_poweroff(&spec)).await;
            if !matches!(asked, Ok(Ok(()))) {
                tracing::warn!(vm = name, "graceful power-off request failed; killing");
            }
            let deadline = Instant::now() + timeout;
            while pid_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        if pid_alive(pid) {
            kill_vmm(pid, &vm.id);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        self.set_state(
            &vm.id,
            VmState::Stopped,
            None,
            Some(if force {
                "killed by user"
            } else {
                "stopped by user"
            }),
        )?;
        network::delete_tap(&self.tap_of(&vm.id));
        crate::storage::dm::teardown(&vm.id);
        self.vmm(&vm.backend).cleanup(&vm.id);
        self.paths(&vm.id).remove_sockets();
        self.get(name)
    }

    /// Removes a VM and everything it has (refused while running unless `force`).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), VmError> {
        // A start or a create may hold the VM's lock meanwhile: the state is
        // read again under the lock, and a VM that runs by then is stopped
        // first (a row deleted under a running VMM left it without owner).
        for _ in 0..3 {
            let vm = self.get(name)?;
            let live = matches!(vm.state, VmState::Running | VmState::Starting);
            if (live || vm.state == VmState::Stopping) && !force {
                return Err(VmError::WrongState {
                    name: name.into(),
                    state: vm.state.as_str(),
                    what: "stop it first, or pass --force",
                });
            }
            if live {
                self.stop(name, true, Duration::ZERO).await?;
            }
            let lock = self.lock_for(name);
            let _held = lock.lock().await;
            let vm = self.get(name)?;
            if matches!(vm.state, VmState::Running | VmState::Starting) {
                continue;
            }
            return self.remove_locked(&vm);
        }
        Err(VmError::WrongState {
            name: name.into(),
            state: "starting",
            what: "it was started again while being removed; try again",
        })
    }

    /// Removes a VM that is not running; the caller holds its lock. Any
    /// process still naming the VM (a VMM whose pid was never recorded, a
    /// stuck `stopping` one) is killed.
    fn remove_locked(&self, vm: &Vm) -> Result<(), VmError> {
        let name = vm.name.as_str();
        // Read before the row goes: the TAP may be a pool one.
        let tap = self.tap_of(&vm.id);
        // The row goes first, in one transaction: a daemon killed after it
        // leaves only files and a TAP no row claims, which reconcile removes.
        self.inner.store.write(|tx| {
            tx.execute("DELETE FROM vms WHERE id = ?1", [&vm.id])
                .map(|_| ())
        })?;
        kill_vmms_of(&vm.id);
        network::delete_tap(&tap);
        crate::storage::dm::teardown(&vm.id);
        self.vmm(&vm.backend).cleanup(&vm.id);
        let p = self.paths(&vm.id);
        for d in [&p.dir, &p.run] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|source| VmError::Io {
                    path: d.clone(),
                    source,
                })?;
            }
        }
        if self.network_active() {
            if let Err(e) = self.sync_firewall() {
                tracing::warn!(vm = name, error = %e, "cannot update the firewall after removing a VM");
            }
        }
        tracing::info!(vm = name, "removed");
        Ok(())
    }

    /// The TAP recorded for a VM (a pool TAP, or its own `bg-` one).
    fn tap_of(&self, id: &str) -> String {
        self.inner
            .store
            .read(|c| {
                c.query_row("SELECT tap FROM vms WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| network::tap_name(id))
    }

    /// TAPs ready in the pool.
    pub fn pool_ready(&self) -> usize {
        self.inner.pool.ready()
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

    /// The guest's listening TCP and UDP sockets.
    pub async fn ports(&self, name: &str) -> Result<banger_api::VmPortList, VmError> {
        let vm = self.get(name)?;
        let out = self.guest_stdout(&vm, ports::GUEST_PORTS_COMMAND).await?;
        let ports = ports::parse_ss(&out, &vm.name).map_err(|detail| {
            VmError::Tool(ToolError::BadOutput {
                program: "ss (in the guest)".into(),
                detail,
            })
        })?;
        Ok(banger_api::VmPortList { vm: vm.name, ports })
    }

    /// Becomes true once the bridge exists.
    pub fn network_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.net_up.subscribe()
    }

    /// Whether banger's network (bridge, rules) is set up in this namespace.
    pub fn network_active(&self) -> bool {
        network::link_exists(&self.inner.config.bridge) || crate::firewall::installed()
    }

    /// Every VM's network identity and policy, from the store.
    fn vm_nets(&self) -> Result<Vec<crate::firewall::VmNet>, VmError> {
        let rows: Vec<(String, String, String, String, i64, Option<String>)> =
            self.inner.store.read(|c| -> Result<_, VmError> {
                let mut stmt = c.prepare("SELECT id, ip, mac, tap, isolated, egress FROM vms")?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })?;
        let mut out = Vec::new();
        for (id, ip, mac, tap, isolated, egress) in rows {
            let (Ok(ip), true) = (ip.parse(), crate::firewall::valid_mac(&mac)) else {
                tracing::warn!(vm = %id, %ip, %mac, "bad address or MAC in the store; no rules for it");
                continue;
            };
            let egress = egress.map(|e| {
                serde_json::from_str::<Vec<String>>(&e)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| crate::firewall::Cidr::parse(c).ok())
                    .collect()
            });
            out.push(crate::firewall::VmNet {
                id,
                ip,
                mac,
                tap,
                isolated: isolated != 0,
                egress,
            });
        }
        Ok(out)
    }

    /// Makes banger's nftables tables match the store (one transaction)
    /// and turns IPv4 forwarding on, remembering the value it had.
    pub fn sync_firewall(&self) -> Result<(), VmError> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let nets = self.vm_nets()?;
        let cfg = &self.inner.config;
        crate::firewall::apply(&crate::firewall::ruleset(&cfg.bridge, &cfg.subnet, &nets))?;
        let before = crate::firewall::ip_forward()?;
        if before != "1" {
            self.inner.store.write(|tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO settings (key, value) VALUES ('ip_forward_before', ?1)",
                    [&before],
                )
                .map(|_| ())
            })?;
            crate::firewall::set_ip_forward("1")?;
            tracing::info!(before = %before, "enabled IPv4 forwarding");
        }
        Ok(())
    }

    /// Removes banger's network from this namespace: its nftables tables,
    /// TAPs and bridge; restores IPv4 forwarding to what it was. Refused
    /// while VMs run.
    pub fn uninstall_network(&self) -> Result<(), VmError> {
        if let Some(vm) = self
            .list()?
            .into_iter()
            .find(|v| v.state == VmState::Running)
        {
            return Err(VmError::WrongState {
                name: vm.name,
                state: "running",
                what: "stop every VM before removing banger's network",
            });
        }
        crate::firewall::apply(crate::firewall::teardown())?;
        for link in network::list_links() {
            if link.starts_with("bg-") || link.starts_with("bgp-") {
                network::delete_tap(&link);
            }
        }
        network::delete_tap(&self.inner.config.bridge);
        let before: Option<String> = self.inner.store.read(|c| {
            c.query_row(
                "SELECT value FROM settings WHERE key = 'ip_forward_before'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        if let Some(v) = before {
            crate::firewall::set_ip_forward(&v)?;
            self.inner.store.write(|tx| {
                tx.execute("DELETE FROM settings WHERE key = 'ip_forward_before'", [])
                    .map(|_| ())
            })?;
        }
        Ok(())
    }

    /// The key every VM authorizes.
    pub fn client_key_info(&self) -> Result<banger_api::SshClientKey, VmError> {
        let key = self.client_key()?;
        let private_key = std::fs::read_to_string(&key).map_err(|source| VmError::Io {
            path: key.clone(),
            source,
        })?;
        Ok(banger_api::SshClientKey {
            user: "root".into(),
            private_key,
        })
    }

    /// What `banger vm ssh` needs.
    pub fn ssh_info(&self, name: &str) -> Result<VmSshInfo, VmError> {
        let vm = self.get(name)?;
        let banger_api::SshClientKey { user, private_key } = self.client_key_info()?;
        let host_key: String = self.inner.store.read(|c| {
            c.query_row("SELECT host_key FROM vms WHERE id = ?1", [&vm.id], |r| {
                r.get(0)
            })
        })?;
        Ok(VmSshInfo {
            name: vm.name.clone(),
            user,
            host_alias: format!("{}.vm", vm.name),
            host_key,
            private_key,
            ip: vm.ip,
        })
    }

    /// Opens a TCP connection to a port of a running VM (from the daemon's
    /// network namespace).
    pub async fn connect(&self, name: &str, port: u16) -> Result<tokio::net::TcpStream, VmError> {
        let vm = self.get(name)?;
        if vm.state != VmState::Running {
            return Err(VmError::WrongState {
                name: name.into(),
                state: vm.state.as_str(),
                what: "only a running VM can be reached",
            });
        }
        let addr = format!("{}:{port}", vm.ip);
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| VmError::Connect {
            name: name.into(),
            port,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        })?
        .map_err(|source| VmError::Connect {
            name: name.into(),
            port,
            source,
        })
    }

    /// Removes VM directories and `bg-` TAPs that no row claims (left by a
    /// daemon killed in the middle of `rm` or of a rollback). One daemon owns
    /// the TAPs of its network namespace.
    fn remove_orphans(&self) -> Result<(), VmError> {
        let vms = self.list()?;
        let ids: std::collections::HashSet<String> = vms.iter().map(|v| v.id.clone()).collect();
        for base in [
            self.inner.layout.state_dir.join("vms"),
            self.inner.layout.runtime_dir.join("vms"),
        ] {
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                let id = e.file_name().to_string_lossy().into_owned();
                if !ids.contains(&id) {
                    tracing::warn!(dir = %e.path().display(), "removing files of a VM that no longer exists");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // Snapshot devices of VMs that are gone or not running.
        let running: std::collections::HashSet<String> = vms
            .into_iter()
            .filter(|v| {
                matches!(
                    v.state,
                    VmState::Running | VmState::Starting | VmState::Stopping
                ) && v.pid.is_some_and(|p| is_our_vmm(p, &v.id))
            })
            .map(|v| v.id)
            .collect();
        for dev in crate::storage::dm::list() {
            if let Some(id) = crate::storage::dm::vm_id_of(&dev) {
                if !running.contains(id) {
                    tracing::warn!(device = %dev, "removing a stale device-mapper snapshot");
                    crate::storage::dm::teardown(id);
                }
            }
        }
        let taps: std::collections::HashSet<String> = self.inner.store.read(|c| {
            let mut stmt = c.prepare("SELECT tap FROM vms")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()
        })?;
        for link in network::list_links() {
            if link.starts_with("bg-") && !taps.contains(&link) {
                tracing::warn!(tap = %link, "removing a TAP no VM owns");
                network::delete_tap(&link);
            }
        }
        self.inner.pool.remove_strays(&taps);
        Ok(())
    }

    /// Converges stored state with reality after a daemon (re)start.
    pub fn reconcile(&self) -> Result<(), VmError> {
        self.remove_orphans()?;
        // Rules for VMs that no longer exist go; missing ones come back.
        if self.network_active() {
            if network::link_exists(&self.inner.config.bridge) {
                self.inner.net_up.send_replace(true);
                self.inner.pool.refill_later();
            }
            if let Err(e) = self.sync_firewall() {
                tracing::warn!(error = %e, "cannot reconcile the firewall");
            }
        }
        for vm in self.list()? {
            match vm.state {
                VmState::Creating => {
                    tracing::warn!(vm = %vm.name, "rolling back a create the previous daemon did not finish");
                    self.rollback(&vm.id, &vm.name);
                }
                VmState::Running | VmState::Starting | VmState::Stopping => match vm.pid {
                    Some(pid) if is_our_vmm(pid, &vm.id) => {
                        tracing::info!(vm = %vm.name, pid, "adopted running VM");
                        if vm.state != VmState::Running {
                            self.set_state(&vm.id, VmState::Running, Some(pid), None)?;
                        }
                        self.watch_adopted(vm.id.clone(), pid);
                    }
                    _ => {
                        tracing::warn!(vm = %vm.name, "VMM is gone; marking stopped");
                        self.set_state(
                            &vm.id,
                            VmState::Stopped,
                            None,
                            Some("VMM exited while bangerd was not running"),
                        )?;
                        network::delete_tap(&self.tap_of(&vm.id));
                    }
                },
                VmState::Stopped => network::delete_tap(&self.tap_of(&vm.id)),
            }
        }
        Ok(())
    }
}

/// Asks a guest restored from a snapshot to re-read its config disk (its
/// own name, address, MAC, host key, machine-id) and to take the host's
/// clock and fresh randomness. Blocking.
fn reapply_identity(link: &agent::AgentLink) -> Result<(), VmError> {
    let epoch = chrono::Utc::now().timestamp().to_string();
    let mut seed = [0u8; 32];
    getrandom_fill(&mut seed);
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    agent::request(link, "reload", &[&epoch, &hex], agent::AGENT_TIMEOUT).map_err(|e| {
        VmError::Invalid {
            what: "restored guest",
            reason: format!(
                "re-applying its identity failed: {}",
                crate::error::error_chain(&e)
            ),
        }
    })
}

/// Fills `buf` from the kernel's random source.
fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is the VMM of VM `id` (its cmdline names it).
pub fn is_our_vmm(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c).contains(&format!("banger-vm-{}", &id[..id.len().min(16)]))
        })
        .unwrap_or(false)
        && pid_alive(pid)
}

/// SIGKILLs every process whose command line names VM `id` (its VMM,
/// jailed or not, recorded or not): the id is unique to this VM.
fn kill_vmms_of(id: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.filter_map(Result::ok) {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && is_our_vmm(pid, id) {
            tracing::warn!(pid, vm = id, "killing a VMM no live VM owns");
            kill_vmm(pid, id);
        }
    }
}

/// SIGKILLs `pid` when it is VM `id`'s VMM (a stored pid may be anyone's
/// after a host reboot or a pid reuse: it is checked first).
fn kill_vmm(pid: u32, id: &str) {
    if !is_our_vmm(pid, id) {
        tracing::warn!(pid, vm = id, "not killing pid: it is not this VM's VMM");
        return;
    }
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A VM's CPU count must be 1..=32. Pure.
fn check_cpus(cpus: u32) -> Result<(), VmError> {
    if (1..=32).contains(&cpus) {
        Ok(())
    } else {
        Err(VmError::Invalid {
            what: "cpus",
            reason: format!("{cpus} is not in 1..=32"),
        })
    }
}

/// An optional size from the API (`2G`, `512M`), parsed. Pure.
fn opt_size(what: &'static str, s: &Option<String>) -> Result<Option<u64>, VmError> {
    s.as_deref()
        .map(|s| {
            parse_size(s).map_err(|e| VmError::Invalid {
                what,
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// An egress allow-list from the API, checked and normalized, as stored
/// (JSON); `None`: no list.
fn parse_egress(list: Option<&[String]>) -> Result<Option<String>, VmError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::new();
    for entry in list {
        let c = crate::firewall::Cidr::parse(entry).map_err(|e| VmError::Invalid {
            what: "egress allow-list",
            reason: e.to_string(),
        })?;
        out.push(c.to_string());
    }
    Ok(Some(
        serde_json::to_string(&out).unwrap_or_else(|_| "[]".into()),
    ))
}

/// The input of a guest command.
pub enum GuestInput {
    None,
    Bytes(Vec<u8>),
    Reader(Box<dyn tokio::io::AsyncRead + Send + Unpin>),
}

const VM_COLUMNS: &str = "id, name, image, image_digest, backend, accel, cpus, memory_mib, work_bytes, ip, mac, tap, state, pid, created_at, started_at, stop_reason, host_key, agent, isolated, egress, pool";

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Vm, VmError>> {
    let state: String = r.get(12)?;
    let created: String = r.get(14)?;
    let started: Option<String> = r.get(15)?;
    let pid: Option<i64> = r.get(13)?;
    let work: i64 = r.get(8)?;
    let corrupt =
        |what: &'static str, d: String| VmError::Store(StoreError::Corrupt { what, detail: d });
    let time =
        |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&chrono::Utc));
    let mut vm = Vm {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        backend: r.get(4)?,
        accel: r.get(5)?,
        cpus: r.get(6)?,
        memory_mib: r.get(7)?,
        work_disk_bytes: u64::try_from(work).unwrap_or(0),
        ip: r.get(9)?,
        mac: r.get(10)?,
        state: VmState::Stopped,
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        created_at: chrono::Utc::now(),
        started_at: None,
        stop_reason: r.get(16)?,
        agent: r.get(18)?,
        isolated: r.get::<_, i64>(19)? != 0,
        egress_allow: r
            .get::<_, Option<String>>(20)?
            .and_then(|e| serde_json::from_str(&e).ok()),
    };
    Ok((|| {
        vm.state = VmState::parse(&state).ok_or_else(|| corrupt("VM state", state.clone()))?;
        vm.created_at = time(&created).map_err(|e| corrupt("timestamp", e.to_string()))?;
        vm.started_at = started
            .as_deref()
            .map(time)
            .transpose()
            .map_err(|e| corrupt("timestamp", e.to_string()))?;
        Ok(vm)
    })())
}

/// Grows a raw ext4 image file (not mounted) to `size` and its filesystem with it.
fn grow_ext4_file(path: &std::path::Path, size: u64) -> Result<(), VmError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| VmError::Io {
            path: path.into(),
            source,
        })?;
    f.set_len(size).map_err(|source| VmError::Io {
        path: path.into(),
        source,
    })?;
    drop(f);
    let e2fsck = tools::require("e2fsck")?;
    // -p: fix what is safe; exit codes 0 and 1 mean clean or fixed.
    let st = std::process::Command::new(e2fsck)
        .arg("-fp")
        .arg(path)
        .output()
        .map_err(|source| VmError::Io {
            path: path.into(),
            source,
        })?;
    if !matches!(st.status.code(), Some(0 | 1)) {
        return Err(VmError::Tool(ToolError::Failed {
            command: format!("e2fsck -fp {}", path.display()),
            status: st.status.to_string(),
            stderr: String::from_utf8_lossy(&st.stdout).trim().to_string(),
        }));
    }
    let resize2fs = tools::require("resize2fs")?;
    tools::run(&resize2fs, [path.as_os_str()])?;
    Ok(())
}

/// The virtual size of a qcow2 image (`qemu-img info --output=json`).
fn qcow2_virtual_size(path: &std::path::Path) -> Result<u64, VmError> {
    let qemu_img = tools::require("qemu-img")?;
    let out = tools::run(
        &qemu_img,
        [
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            path.as_os_str(),
        ],
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| VmError::Invalid {
            what: "qemu-img output",
            reason: e.to_string(),
        })?;
    v.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| VmError::Invalid {
            what: "qemu-img output",
            reason: "no virtual-size".into(),
        })
}
