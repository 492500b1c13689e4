//! Snapshots, restores and forks.
//!
//! A snapshot is a directory `<state>/snapshots/<id>/` with copies of a
//! VM's disks (the root overlay or raw root, and the work disk) and, when
//! the VM was running, its device and memory state as its backend saved it
//! (QEMU: a migration stream; Firecracker: `vmstate` + `memory`). The VM is
//! paused while its state is saved and its disks copied, so both are of the
//! same instant; then it resumes. Snapshots and VMs do not depend on each
//! other (a restore copies the disks), only on their image.
//!
//! Restoring (`vm create --from-snapshot`, `vm fork`) makes a new VM row
//! (its own id, address, MAC, TAP, SSH host key, machine-id), gives it a
//! config disk with that identity, and starts the VMM from the saved state
//! with the new VM's disks, TAP and sockets. The guest then still believes
//! it is the snapshot's VM; the guest agent re-reads the config disk and
//! applies it live (name, address, MAC, host key, machine-id, clock,
//! randomness). Until then the firewall's per-port anti-spoofing drops
//! anything it sends with the old address or MAC, before the bridge learns
//! it, so the original VM is never disturbed.
//!
//! A fork is a snapshot (hidden) whose files are moved into the new VM and
//! that is removed once the new VM runs.

use std::path::{Path, PathBuf};

use banger_api::{
    Accel, Backend, Operation, Snapshot, SnapshotList, Vm, VmCreateRequest, VmForkRequest,
    VmSnapshotRequest, VmState,
};
use rusqlite::{params, OptionalExtension};

use super::blocking;
use super::rows::NewRow;
use super::{VmError, Vms};
use crate::names::validate_name;
use crate::ops::{OpHandle, StepSpec};

/// The snapshot verbs (`vm snapshot`, `vm fork`, `snapshot ls|rm`, the
/// restart recovery): what the daemon's handlers call. Restores are
/// `vm create --from-snapshot`, through [`Vms::start_create`]. Cheap to
/// clone; it shares the VMs' locks and store.
#[derive(Clone)]
pub struct Snapshots {
    vms: Vms,
}

impl Snapshots {
    pub fn new(vms: Vms) -> Snapshots {
        Snapshots { vms }
    }

    /// Every ready snapshot (hidden fork snapshots left out).
    pub fn list(&self) -> Result<SnapshotList, VmError> {
        self.vms.snapshot_list()
    }

    /// Removes a snapshot and its files.
    pub fn remove(&self, name: &str) -> Result<(), VmError> {
        self.vms.snapshot_remove(name)
    }

    /// `vm snapshot`: the operation that saves a VM's disks (and its
    /// memory, when it runs).
    pub fn take(&self, vm: &str, req: VmSnapshotRequest) -> Result<Operation, VmError> {
        self.vms.start_snapshot(vm, req)
    }

    /// `vm fork`: the operation that makes a running copy of a VM.
    pub fn fork(&self, vm: &str, req: VmForkRequest) -> Result<Operation, VmError> {
        self.vms.start_fork(vm, req)
    }

    /// After a daemon start: unfinished and hidden snapshots removed, VMs a
    /// dead daemon left paused resumed.
    pub fn reconcile(&self) -> Result<(), VmError> {
        self.vms.reconcile_snapshots()
    }
}

/// Disk files a snapshot copies from a VM's directory (those that exist).
const DISK_FILES: &[&str] = &["root.qcow2", "root.raw", "root.cow", "work.ext4"];

/// Copies (reflink, else sparse) the VM's disk files into a snapshot's
/// directory. Blocking.
fn copy_disks(vm_dir: &Path, snap_dir: &Path) -> Result<(), VmError> {
    for f in DISK_FILES {
        let from = vm_dir.join(f);
        if from.exists() {
            crate::storage::clone_file(&from, &snap_dir.join(f)).map_err(VmError::Storage)?;
        }
    }
    Ok(())
}

/// A snapshot's row.
#[derive(Debug, Clone)]
struct SnapRow {
    id: String,
    name: String,
    source_vm: String,
    source_id: String,
    image: String,
    digest: String,
    backend: Backend,
    accel: Accel,
    cpus: u32,
    memory_mib: u32,
    work_bytes: u64,
    agent: Option<String>,
    with_memory: bool,
    state: String,
    size_bytes: u64,
    created_at: String,
}

const SNAP_COLUMNS: &str = "id, name, source_vm, source_id, image, image_digest, backend, accel, cpus, memory_mib, work_bytes, agent, with_memory, state, size_bytes, created_at";

fn snap_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapRow> {
    Ok(SnapRow {
        id: r.get(0)?,
        name: r.get(1)?,
        source_vm: r.get(2)?,
        source_id: r.get(3)?,
        image: r.get(4)?,
        digest: r.get(5)?,
        backend: super::rows::backend_at(r, 6)?,
        accel: super::rows::accel_at(r, 7)?,
        cpus: r.get(8)?,
        memory_mib: r.get(9)?,
        work_bytes: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
        agent: r.get(11)?,
        with_memory: r.get::<_, i64>(12)? != 0,
        state: r.get(13)?,
        size_bytes: u64::try_from(r.get::<_, i64>(14)?).unwrap_or(0),
        created_at: r.get(15)?,
    })
}

impl SnapRow {
    fn to_api(&self) -> Snapshot {
        Snapshot {
            name: self.name.clone(),
            source_vm: self.source_vm.clone(),
            image: self.image.clone(),
            backend: self.backend,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            work_disk_bytes: self.work_bytes,
            with_memory: self.with_memory,
            size_bytes: self.size_bytes,
            state: self.state.clone(),
            created_at: self.created_at.clone(),
        }
    }
}

/// The default snapshot name: the VM's and the time. Pure.
pub fn default_snapshot_name(vm: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let stamp = now.format("%Y%m%d-%H%M%S").to_string();
    // Names are at most 63 characters: shorten the VM's part.
    let keep = crate::names::MAX_NAME_LEN - stamp.len() - 1;
    let vm: String = vm.chars().take(keep).collect();
    format!("{}-{stamp}", vm.trim_end_matches('-'))
}

/// Bytes the files in `dir` take on disk (`only`: just these names).
fn allocated(dir: &Path, only: Option<&[&str]>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| only.is_none_or(|o| o.iter().any(|n| e.file_name() == *n)))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Headroom kept free beyond what a snapshot or restore writes.
const SPACE_MARGIN: u64 = 256 << 20;

impl Vms {
    fn snap_dir(&self, id: &str) -> PathBuf {
        self.inner.layout.state_dir.join("snapshots").join(id)
    }

    /// Ready, visible snapshots, by name.
    pub(super) fn snapshot_list(&self) -> Result<SnapshotList, VmError> {
        let rows = self
            .inner
            .store
            .read(|c| -> Result<Vec<SnapRow>, VmError> {
                let mut stmt = c.prepare(&format!(
                    "SELECT {SNAP_COLUMNS} FROM snapshots WHERE hidden = 0 ORDER BY name"
                ))?;
                let rows = stmt.query_map([], snap_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })?;
        Ok(SnapshotList {
            snapshots: rows.iter().map(SnapRow::to_api).collect(),
        })
    }

    fn snapshot_row(&self, name: &str) -> Result<SnapRow, VmError> {
        validate_name("snapshot", name)?;
        self.inner
            .store
            .read(|c| {
                c.query_row(
                    &format!("SELECT {SNAP_COLUMNS} FROM snapshots WHERE name = ?1 AND hidden = 0"),
                    [name],
                    snap_from_row,
                )
                .optional()
            })?
            .ok_or_else(|| VmError::SnapshotNotFound(name.into()))
    }

    /// Names of the (visible) snapshots of `image` (for `image rm`).
    pub(super) fn snapshots_of_image(&self, image: &str) -> Result<Vec<String>, VmError> {
        self.inner.store.read(|c| -> Result<Vec<String>, VmError> {
            let mut stmt = c.prepare(
                "SELECT name FROM snapshots WHERE image = ?1 AND hidden = 0 ORDER BY name",
            )?;
            let rows = stmt.query_map([image], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Removes a snapshot (row first, then its files).
    pub(super) fn snapshot_remove(&self, name: &str) -> Result<(), VmError> {
        let row = self.snapshot_row(name)?;
        if row.state != "ready" {
            return Err(VmError::Invalid {
                what: "snapshot",
                reason: format!("{name:?} is still being taken"),
            });
        }
        self.drop_snapshot(&row.id)
    }

    fn drop_snapshot(&self, id: &str) -> Result<(), VmError> {
        self.inner.store.write(|tx| {
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])
                .map(|_| ())
        })?;
        let dir = self.snap_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| VmError::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// Records a `creating` snapshot of `vm`.
    fn insert_snapshot(&self, vm: &Vm, name: &str, hidden: bool) -> Result<SnapRow, VmError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let with_memory = vm.state == VmState::Running;
        let now = chrono::Utc::now().to_rfc3339();
        self.inner.store.write(|tx| -> Result<SnapRow, VmError> {
            if tx
                .query_row(
                    "SELECT 1 FROM snapshots WHERE name = ?1",
                    [name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            {
                return Err(VmError::SnapshotExists(name.into()));
            }
            let digest: String = tx.query_row(
                "SELECT image_digest FROM vms WHERE id = ?1",
                [&vm.id],
                |r| r.get(0),
            )?;
            // The workspaces the guest holds: a VM made from the snapshot
            // holds them too (and can export their commits).
            let workspaces = crate::carried_workspaces::carried_by_snapshot(tx, &vm.id)?;
            tx.execute(
                "INSERT INTO snapshots (id, name, state, source_vm, source_id, \
                image, image_digest, backend, accel, cpus, memory_mib, \
                work_bytes, agent, with_memory, hidden, created_at, workspaces, \
                owner_uid) \
                VALUES (?1, ?2, 'creating', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                ?11, ?12, ?13, ?14, ?15, ?16, \
                (SELECT owner_uid FROM vms WHERE id = ?4))",
                params![
                    id,
                    name,
                    vm.name,
                    vm.id,
                    vm.image,
                    digest,
                    vm.backend.as_str(),
                    vm.accel.as_str(),
                    vm.cpus,
                    vm.memory_mib,
                    vm.work_disk_bytes as i64,
                    vm.agent,
                    i64::from(with_memory),
                    i64::from(hidden),
                    now,
                    workspaces
                ],
            )?;
            Ok(tx.query_row(
                &format!("SELECT {SNAP_COLUMNS} FROM snapshots WHERE id = ?1"),
                [&id],
                snap_from_row,
            )?)
        })
    }

    /// A snapshot writes the guest's memory (when running) and copies of
    /// its disks: refused up front when they would not fit.
    fn check_snapshot_space(&self, vm: &Vm) -> Result<(), VmError> {
        let memory = if vm.state == VmState::Running {
            u64::from(vm.memory_mib) << 20
        } else {
            0
        };
        let disks = allocated(&self.paths(&vm.id).dir, Some(DISK_FILES));
        self.check_free_space(memory + disks + SPACE_MARGIN)
    }

    /// `vm snapshot NAME [SNAP]`: an operation (`vm.snapshot`).
    pub(super) fn start_snapshot(
        &self,
        vm_name: &str,
        req: VmSnapshotRequest,
    ) -> Result<Operation, VmError> {
        let vm = self.get(vm_name)?;
        let name = req
            .name
            .unwrap_or_else(|| default_snapshot_name(&vm.name, chrono::Utc::now()));
        validate_name("snapshot", &name)?;
        check_snapshottable(&vm)?;
        self.check_snapshot_space(&vm)?;
        let snap = self.insert_snapshot(&vm, &name, false)?;
        let (this, snap_id) = (self.clone(), snap.id.clone());
        let op = self.inner.ops.spawn(
            "vm.snapshot",
            &vm.name.clone(),
            snapshot_steps(),
            move |h| async move {
                let lock = this.lock_for(&vm.name);
                let held = lock.lock().await;
                let r = this.take_snapshot(&h, &vm.name, &snap).await;
                drop(held);
                match r {
                    Ok(row) => Ok(serde_json::json!({
                        "snapshot": row.name, "vm": row.source_vm,
                        "with_memory": row.with_memory, "size_bytes": row.size_bytes,
                    })),
                    Err(e) => {
                        let _ = this.drop_snapshot(&snap.id);
                        Err(e)
                    }
                }
            },
        );
        op.map_err(|e| {
            let _ = self.drop_snapshot(&snap_id);
            VmError::from(e)
        })
    }

    /// Pauses (when running), saves the state, copies the disks, resumes.
    /// Call with the VM's lock held. Returns the ready row.
    async fn take_snapshot(
        &self,
        h: &OpHandle,
        vm_name: &str,
        snap: &SnapRow,
    ) -> Result<SnapRow, VmError> {
        let vm = self.snapshot_source(vm_name, snap)?;
        let running = snap.with_memory;
        let dir = self.snap_dir(&snap.id);
        std::fs::create_dir_all(&dir).map_err(|source| VmError::Io {
            path: dir.clone(),
            source,
        })?;
        let spec = self.launch_spec(&vm)?;
        if running {
            self.save_running(h, &vm, &spec, &dir).await?;
        } else {
            h.skip("save");
        }
        let (src, d2) = (self.paths(&vm.id).dir, dir.clone());
        let copied = h
            .step_to_end("copy", blocking(move || copy_disks(&src, &d2)))
            .await;
        if running {
            let (vmm, spec2) = (self.vmm(vm.backend), spec.clone());
            let resume = blocking(move || vmm.resume(&spec2).map_err(VmError::Vmm));
            let resumed = h.step_to_end("resume", resume).await;
            copied?;
            resumed?;
        } else {
            h.skip("resume");
            copied?;
        }
        if h.cancel_token().is_cancelled() {
            // The VM runs again; the caller drops the snapshot.
            return Err(crate::ops::OpsError::Cancelled.into());
        }
        let size = allocated(&dir, None);
        let id = snap.id.clone();
        self.inner.store.write(|tx| {
            tx.execute(
                "UPDATE snapshots SET state = 'ready', size_bytes = ?2 WHERE id = ?1",
                params![id, size as i64],
            )
            .map(|_| ())
        })?;
        Ok(SnapRow {
            state: "ready".into(),
            size_bytes: size,
            ..snap.clone()
        })
    }

    /// The VM a queued snapshot is of, as it is now: still the same VM,
    /// still running (or stopped) as when the snapshot was asked for.
    fn snapshot_source(&self, vm_name: &str, snap: &SnapRow) -> Result<Vm, VmError> {
        let vm = self.get(vm_name)?;
        if vm.id != snap.source_id {
            return Err(VmError::Invalid {
                what: "snapshot",
                reason: format!("VM {vm_name:?} was replaced while the snapshot was queued"),
            });
        }
        if (vm.state == VmState::Running) != snap.with_memory {
            return Err(VmError::WrongState {
                name: vm.name.clone(),
                state: vm.state.as_str(),
                what: "it changed state while the snapshot was queued; try again",
            });
        }
        Ok(vm)
    }

    /// The `save` step of a running VM: its agent must answer (a restore
    /// needs it), then the VMM pauses it and saves its state into `dir`.
    /// From here to the resume nothing is abandoned halfway: a cancel takes
    /// effect once the VM runs again; a failed save resumes it.
    async fn save_running(
        &self,
        h: &OpHandle,
        vm: &Vm,
        spec: &super::vmm::LaunchSpec,
        dir: &Path,
    ) -> Result<(), VmError> {
        self.agent_ping(vm)
            .await
            .map_err(|e| VmError::NoGuestAgent {
                name: vm.name.clone(),
                reason: crate::error::error_chain(&e),
            })?;
        let (vmm, spec2, d2) = (self.vmm(vm.backend), spec.clone(), dir.to_path_buf());
        let save = blocking(move || vmm.save_state(&spec2, &d2).map_err(VmError::Vmm));
        let saved = h.step_to_end("save", save).await;
        if saved.is_err() {
            self.resume_quietly(vm);
        }
        saved
    }

    /// Resumes a VM left paused by a failed snapshot; errors are logged.
    fn resume_quietly(&self, vm: &Vm) {
        match self.launch_spec(vm) {
            Ok(spec) => {
                if let Err(e) = self.vmm(vm.backend).resume(&spec) {
                    tracing::warn!(vm = %vm.name, error = %e, "cannot resume after a failed snapshot");
                }
            }
            Err(e) => {
                tracing::warn!(vm = %vm.name, error = %e, "cannot resume after a failed snapshot")
            }
        }
    }

    /// `vm create NEW --from-snapshot SNAP`: checks, reserves the row, and
    /// starts the `vm.create` operation that restores it.
    pub(super) fn start_create_from_snapshot(
        &self,
        req: VmCreateRequest,
        snap_name: &str,
    ) -> Result<Operation, VmError> {
        validate_name("VM", &req.name)?;
        for (set, what) in [
            (req.image.is_some(), "--image"),
            (req.resources.cpus.is_some(), "--cpus"),
            (req.resources.memory.is_some(), "--memory"),
            (req.resources.disk_size.is_some(), "--disk-size"),
            (req.resources.work_disk_size.is_some(), "--work-disk-size"),
            (req.backend.is_some(), "--backend"),
            (req.no_start, "--no-start"),
        ] {
            if set {
                return Err(VmError::Invalid {
                    what: "create from a snapshot",
                    reason: format!("{what} cannot be combined with a snapshot: the new VM takes the snapshot's image, backend, resources and disks"),
                });
            }
        }
        let snap = self.snapshot_row(snap_name)?;
        if snap.state != "ready" {
            return Err(VmError::Invalid {
                what: "snapshot",
                reason: format!("{snap_name:?} is still being taken"),
            });
        }
        self.check_snapshot_image(&snap)?;
        // The restore copies the snapshot's disks (sparse, or reflinks).
        self.check_free_space(
            allocated(&self.snap_dir(&snap.id), Some(DISK_FILES)) + SPACE_MARGIN,
        )?;
        if let Some(a) = &req.agent {
            validate_name("agent", a)?;
            self.inner.config.agents.get(a)?;
        }
        let egress = super::resolve::parse_egress(req.egress_allow.as_deref())?;
        let vm =
            self.reserve_from_snapshot(&req.name, &snap, req.agent.clone(), req.isolated, egress)?;
        let (this, id, name) = (self.clone(), vm.id.clone(), vm.name.clone());
        self.inner
            .ops
            .spawn("vm.create", &vm.name.clone(), restore_steps(), move |h| async move {
                let lock = this.lock_for(&vm.name);
                let _held = lock.lock().await;
                let dir = this.snap_dir(&snap.id);
                let r = this.restore_into(&h, &vm, &snap, &dir, false).await;
                if let Err(e) = &r {
                    tracing::warn!(vm = %vm.name, error = %crate::error::error_chain(e), "restore failed; rolling back");
                    this.rollback_off_thread(&vm.id, &vm.name).await;
                }
                r
            })
            .map_err(|e| {
                self.rollback(&id, &name);
                VmError::from(e)
            })
    }

    fn check_snapshot_image(&self, snap: &SnapRow) -> Result<(), VmError> {
        let image = self
            .inner
            .images
            .get(&snap.image)
            .map_err(|_| VmError::Invalid {
                what: "snapshot",
                reason: format!("its image {:?} no longer exists", snap.image),
            })?;
        if image.digest != snap.digest {
            return Err(VmError::Invalid {
                what: "snapshot",
                reason: format!(
                    "its image {:?} was rebuilt since (its disks are overlays of the old one)",
                    snap.image
                ),
            });
        }
        Ok(())
    }

    fn reserve_from_snapshot(
        &self,
        name: &str,
        snap: &SnapRow,
        agent: Option<String>,
        isolated: bool,
        egress: Option<String>,
    ) -> Result<Vm, VmError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let vm = self.reserve_row(&NewRow {
            id: &id,
            name,
            image: &snap.image,
            digest: &snap.digest,
            backend: snap.backend,
            accel: snap.accel,
            cpus: snap.cpus,
            memory_mib: u64::from(snap.memory_mib),
            work_bytes: snap.work_bytes,
            agent: agent.as_deref().or(snap.agent.as_deref()),
            isolated,
            egress: egress.as_deref(),
            pool: false,
        })?;
        // The snapshot's workspaces, with the new VM (gone with its row if
        // the restore rolls back).
        let (snap_id, vm_id) = (snap.id.clone(), vm.id.clone());
        let copied = self.inner.store.write(|tx| -> Result<(), VmError> {
            let json: String = tx.query_row(
                "SELECT workspaces FROM snapshots WHERE id = ?1",
                [&snap_id],
                |r| r.get(0),
            )?;
            crate::carried_workspaces::restore_carried(tx, &vm_id, &json).map_err(|e| match e {
                crate::carried_workspaces::CarriedError::Sql(e) => VmError::from(e),
                e => VmError::Internal {
                    what: "snapshot workspaces",
                    reason: e.to_string(),
                },
            })?;
            Ok(())
        });
        if let Err(e) = copied {
            self.rollback(&vm.id, &vm.name);
            return Err(e);
        }
        Ok(vm)
    }

    /// Disks from the snapshot (cloned, or moved with `take`), a new
    /// identity, then a restore (or a boot, for a disk-only snapshot).
    async fn restore_into(
        &self,
        h: &OpHandle,
        vm: &Vm,
        snap: &SnapRow,
        snap_dir: &Path,
        take: bool,
    ) -> Result<serde_json::Value, VmError> {
        let p = self.paths(&vm.id);
        let (dir, from) = (p.dir.clone(), snap_dir.to_path_buf());
        h.step(
            "disks",
            blocking(move || {
                p.create()?;
                for f in DISK_FILES {
                    let (src, dst) = (from.join(f), dir.join(f));
                    if !src.exists() {
                        continue;
                    }
                    if !(take && std::fs::rename(&src, &dst).is_ok()) {
                        crate::storage::clone_file(&src, &dst).map_err(VmError::Storage)?;
                    }
                }
                Ok(())
            }),
        )
        .await?;
        let (this, vm2) = (self.clone(), vm.clone());
        h.step("config", blocking(move || this.new_identity(&vm2, false)))
            .await?;
        let t = self
            .boot(h, vm, snap.with_memory.then(|| snap_dir.to_path_buf()))
            .await?;
        let vm = self.get_by_id(&vm.id)?;
        Ok(serde_json::json!({
            "vm": vm.name, "ip": vm.ip, "state": "running", "boot_seconds": t,
            "from_snapshot": snap.name, "restored": snap.with_memory,
        }))
    }

    /// `vm fork NAME NEW`: a snapshot of NAME restored as NEW, in one
    /// operation (`vm.fork`).
    pub(super) fn start_fork(
        &self,
        src_name: &str,
        req: VmForkRequest,
    ) -> Result<Operation, VmError> {
        validate_name("VM", &req.name)?;
        let src = self.get(src_name)?;
        if src.state != VmState::Running {
            return Err(VmError::WrongState {
                name: src.name.clone(),
                state: src.state.as_str(),
                what: "only a running VM can be forked (for a stopped one: banger vm snapshot, then vm create --from-snapshot)",
            });
        }
        check_snapshottable(&src)?;
        self.check_snapshot_space(&src)?;
        let snap_name = format!("fork-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let snap = self.insert_snapshot(&src, &snap_name, true)?;
        let vm = match self.reserve_from_snapshot(
            &req.name,
            &snap,
            src.agent.clone(),
            src.isolated,
            super::resolve::parse_egress(src.egress_allow.as_deref())?,
        ) {
            Ok(vm) => vm,
            Err(e) => {
                let _ = self.drop_snapshot(&snap.id);
                return Err(e);
            }
        };
        let mut steps = snapshot_steps();
        steps.extend(restore_steps());
        let this = self.clone();
        let (snap2, vm2) = (snap.clone(), vm.clone());
        self.inner
            .ops
            .spawn("vm.fork", &vm.name.clone(), steps, move |h| async move {
                let r: Result<serde_json::Value, VmError> = async {
                    let taken = {
                        let lock = this.lock_for(&src.name);
                        let _held = lock.lock().await;
                        this.take_snapshot(&h, &src.name, &snap2).await?
                    };
                    let lock = this.lock_for(&vm2.name);
                    let _held = lock.lock().await;
                    let dir = this.snap_dir(&taken.id);
                    let mut out = this.restore_into(&h, &vm2, &taken, &dir, true).await?;
                    out["forked_from"] = serde_json::json!(src.name);
                    Ok(out)
                }
                .await;
                let _ = this.drop_snapshot(&snap2.id);
                if let Err(e) = &r {
                    tracing::warn!(vm = %vm2.name, error = %crate::error::error_chain(e), "fork failed; rolling back");
                    this.rollback_off_thread(&vm2.id, &vm2.name).await;
                }
                r
            })
            .map_err(|e| {
                let _ = self.drop_snapshot(&snap.id);
                self.rollback(&vm.id, &vm.name);
                VmError::from(e)
            })
    }

    /// After a restart: snapshots the previous daemon did not finish are
    /// removed, and their VMs resumed if it died while they were paused.
    pub(super) fn reconcile_snapshots(&self) -> Result<(), VmError> {
        let stale: Vec<(String, String, String)> = self.inner.store.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, source_id FROM snapshots WHERE state != 'ready' OR hidden = 1",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for (id, name, source) in stale {
            tracing::warn!(snapshot = %name, "removing a snapshot the previous daemon did not finish");
            if let Ok(vm) = self.get_by_id(&source) {
                if vm.state == VmState::Running {
                    self.resume_quietly(&vm);
                }
            }
            self.drop_snapshot(&id)?;
        }
        // Directories no row claims.
        let ids: std::collections::HashSet<String> = self.inner.store.read(|c| {
            let mut stmt = c.prepare("SELECT id FROM snapshots")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()
        })?;
        if let Ok(rd) = std::fs::read_dir(self.inner.layout.state_dir.join("snapshots")) {
            for e in rd.filter_map(Result::ok) {
                if !ids.contains(&e.file_name().to_string_lossy().into_owned()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }
}

/// A VM can be snapshotted when running or stopped (not in between).
fn check_snapshottable(vm: &Vm) -> Result<(), VmError> {
    match vm.state {
        VmState::Running | VmState::Stopped => Ok(()),
        s => Err(VmError::WrongState {
            name: vm.name.clone(),
            state: s.as_str(),
            what: "a snapshot needs it running or stopped",
        }),
    }
}

fn snapshot_steps() -> Vec<StepSpec> {
    vec![
        StepSpec::new("save", "Pause the VM and save its device and memory state"),
        StepSpec::new("copy", "Copy its disks"),
        StepSpec::new("resume", "Resume the VM"),
    ]
}

fn restore_steps() -> Vec<StepSpec> {
    vec![
        StepSpec::new("disks", "Take the snapshot's disks"),
        StepSpec::new("config", "Write the config disk (new identity)"),
        StepSpec::new("network", "Set up bridge and TAP"),
        StepSpec::new("spawn", "Start the VMM from the saved state"),
        StepSpec::new("boot", "Re-apply the VM's identity in the guest"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_and_bounded() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-25T18:35:11Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        assert_eq!(default_snapshot_name("dev", t), "dev-20261125-183511");
        let long = "a".repeat(63);
        let n = default_snapshot_name(&long, t);
        assert!(n.len() <= 63, "{n}");
        validate_name("snapshot", &n).expect("valid");
        let dashy = format!("{}-b", "a".repeat(46));
        validate_name("snapshot", &default_snapshot_name(&dashy, t)).expect("valid");
    }
}
