//! `vm.create`: preflight, the warm-pool claim, and the create operation
//! (disks -> config -> network -> spawn -> boot).

use banger_api::{Backend, Operation, Vm, VmCreateRequest, VmState};

use super::blocking;
use crate::images::ImageError;
use crate::names::validate_name;
use crate::ops::{OpHandle, StepSpec};

use super::disks::make_root_disk;
use super::error::VmError;
use super::resolve::VmSpec;
use super::rows::NewRow;
use super::vmm::qemu::Accel;
use super::{kvm_probe, Vms};

impl Vms {
    /// Preflight (nothing changes if it fails), then the `vm.create` operation.
    pub async fn start_create(&self, req: VmCreateRequest) -> Result<Operation, VmError> {
        validate_name("VM", &req.name)?;
        if let Some(snap) = req.from_snapshot.clone() {
            return self.start_create_from_snapshot(req, &snap);
        }
        let spec = self.plan_create(&req)?;
        self.verify_image(&spec).await?;
        self.start_planned(spec, false)
    }

    /// Checks the image's files against their digests and warms the KVM
    /// verdict for its kernel (up to 5 s the first time after a reboot), off
    /// the async threads. The verdict is QEMU's: a Firecracker VM does not
    /// wait for it.
    async fn verify_image(&self, spec: &VmSpec) -> Result<(), VmError> {
        let images = self.inner.images.clone();
        let image = spec.image.clone();
        let probe = spec.backend == Backend::Qemu && self.inner.config.accel == "auto";
        let state_dir = self.inner.layout.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            images.verify(&image)?;
            if let (true, Some(k), Some(a)) = (
                probe,
                images.artifact_path(&image, "kernel"),
                image.artifacts.iter().find(|a| a.kind == "kernel"),
            ) {
                kvm_probe::probe(&state_dir, &k, &a.sha256);
            }
            Ok::<(), ImageError>(())
        })
        .await
        .map_err(|e| VmError::Internal {
            what: "image verification",
            reason: format!("the task failed: {e}"),
        })??;
        Ok(())
    }

    /// Starts a resolved create: claims a warm pool VM that fits (booted
    /// ahead of time, renamed and personalized), or reserves a new row and
    /// boots it. `pool`: this is a pool VM itself.
    pub(super) fn start_planned(&self, spec: VmSpec, pool: bool) -> Result<Operation, VmError> {
        self.check_free_space(self.create_space_needed(&spec))?;
        if !pool && !spec.no_start && spec.resources.root_bytes.is_none() {
            if let Some(op) = self.claim_pool_vm(&spec)? {
                return Ok(op);
            }
        }
        // The daemon key every guest authorizes, made before the first boot.
        self.inner.ssh.client_key()?;
        let vm = self.reserve(&spec, pool)?;
        let steps = vec![
            StepSpec::new("disks", "Clone root disk and work disk"),
            StepSpec::new("config", "Write the config disk (host key, network, keys)"),
            StepSpec::new("network", "Set up bridge and TAP"),
            StepSpec::new("spawn", "Start the VMM"),
            StepSpec::new("boot", "Wait for the guest (sshd ready)"),
        ];
        let this = self.clone();
        let target = vm.name.clone();
        Ok(self
            .inner
            .ops
            .spawn("vm.create", &target, steps, move |h| async move {
                let lock = this.lock_for(&vm.name);
                let _held = lock.lock().await;
                let r = this.create(&h, &vm, &spec).await;
                if let Err(e) = &r {
                    let chain = crate::error::error_chain(e);
                    tracing::warn!(vm = %vm.name, error = %chain, "create failed; rolling back");
                    this.rollback_off_thread(&vm.id, &vm.name).await;
                }
                r
            })?)
    }

    /// Free space a create needs in the state dir: clones are sparse or
    /// copy-on-write; a raw copy for Firecracker without reflink takes what
    /// the image's rootfs uses.
    fn create_space_needed(&self, spec: &VmSpec) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let raw_copy = match spec.backend {
            Backend::Firecracker => self
                .inner
                .images
                .artifact_path(&spec.image, "rootfs")
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.blocks() * 512)
                .unwrap_or(0),
            Backend::Qemu => 0,
        };
        // The work disk is sparse, but one the host cannot hold would fail
        // the guest with I/O errors once full, and fill the filesystem that
        // holds every other VM's disks: it must fit in what is free.
        (512u64 << 20)
            .saturating_add(raw_copy)
            .saturating_add(spec.resources.work_bytes)
    }

    /// Reserves name and address in one transaction: the `creating` row is
    /// what a restarted daemon rolls back.
    fn reserve(&self, spec: &VmSpec, pool: bool) -> Result<Vm, VmError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let accel = match spec.backend {
            Backend::Qemu => self.accel(&spec.image),
            Backend::Firecracker => Accel::Kvm,
        };
        self.reserve_row(&NewRow {
            id: &id,
            name: &spec.name,
            image: &spec.image.name,
            digest: &spec.image.digest,
            backend: spec.backend,
            accel,
            cpus: spec.resources.cpus,
            memory_mib: u64::from(spec.resources.memory_mib),
            work_bytes: spec.resources.work_bytes,
            agent: spec.agent.as_deref(),
            isolated: spec.isolated,
            egress: spec.egress.as_deref(),
            pool,
        })
    }

    /// Refuses (changing nothing) when the state dir has less than `needed`
    /// bytes free.
    pub(super) fn check_free_space(&self, needed: u64) -> Result<(), VmError> {
        let free = nix::sys::statvfs::statvfs(&self.inner.layout.state_dir)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(u64::MAX);
        if free < needed {
            return Err(VmError::Invalid {
                what: "disk space",
                reason: format!(
                    "only {} free in the state dir, {} needed",
                    banger_api::units::format_size(free),
                    banger_api::units::format_size(needed)
                ),
            });
        }
        Ok(())
    }

    pub(super) async fn create(
        &self,
        h: &OpHandle,
        vm: &Vm,
        spec: &VmSpec,
    ) -> Result<serde_json::Value, VmError> {
        let (image, root_bytes) = (&spec.image, spec.resources.root_bytes);
        let p = self.paths(&vm.id);
        let (dir, paths) = (p.dir.clone(), p.clone());
        let base = self
            .inner
            .images
            .artifact_path(image, "rootfs")
            .ok_or_else(|| VmError::Internal {
                what: "image",
                reason: "it has no root filesystem".into(),
            })?;
        let seeds = self.inner.seeds.clone();
        let work_bytes = vm.work_disk_bytes;
        let backend = vm.backend;
        h.step(
            "disks",
            blocking(move || {
                paths.create()?;
                make_root_disk(backend, &base, &dir, root_bytes)?;
                seeds.clone_to(work_bytes, &dir.join("work.ext4"))?;
                Ok(())
            }),
        )
        .await?;

        let (this, vm2) = (self.clone(), vm.clone());
        let base_size = super::resolve::image_root_bytes(image);
        let grow_root =
            self.vmm(vm.backend).guest_grows_root() && root_bytes.is_some_and(|b| b > base_size);
        h.step(
            "config",
            blocking(move || this.new_identity(&vm2, grow_root)),
        )
        .await?;
        if spec.no_start {
            for s in ["network", "spawn", "boot"] {
                h.skip(s);
            }
            self.set_state(
                &vm.id,
                VmState::Stopped,
                None,
                Some("created with --no-start"),
            )?;
            return Ok(serde_json::json!({ "vm": vm.name, "ip": vm.ip, "state": "stopped" }));
        }
        let t = self.boot(h, vm, None).await?;
        if self.is_pool(&vm.id) {
            self.warm_pool_connection(vm).await;
        }
        Ok(serde_json::json!({ "vm": vm.name, "ip": vm.ip, "state": "running", "boot_seconds": t }))
    }
}
