//! `vm.create`: preflight, the warm-pool claim, and the create operation
//! (disks -> config -> network -> spawn -> boot).

use banger_api::{Backend, Operation, Vm, VmCreateRequest, VmState};

use super::blocking;
use crate::images::ImageError;
use crate::names::validate_name;
use crate::ops::{OpHandle, StepSpec};
use crate::units::parse_size;

use super::disks::make_root_disk;
use super::error::VmError;
use super::resolve::{check_cpus, parse_egress};
use super::rows::NewRow;
use super::vmm::qemu::Accel;
use super::{kvm_probe, pool, Vms};

impl Vms {
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
            .resolve_backend(req.backend, &image)
            .is_ok_and(|b| b == Backend::Qemu);
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
        .map_err(|e| VmError::Internal {
            what: "image verification",
            reason: format!("the task failed: {e}"),
        })??;
        self.start_create_checked(req, false)
    }

    /// Plans a create: checks everything, then either claims a warm pool VM
    /// that fits (a VM booted ahead of time, renamed and personalized) or
    /// reserves a new row and boots it. `pool`: this is a pool VM itself.
    pub(super) fn start_create_checked(
        &self,
        req: VmCreateRequest,
        pool: bool,
    ) -> Result<Operation, VmError> {
        validate_name("VM", &req.name)?;
        let cfg = &self.inner.config;
        let image_name = req
            .image
            .clone()
            .unwrap_or_else(|| cfg.default_image.clone());
        let image = self.inner.images.get(&image_name)?;
        let backend = self.resolve_backend(req.backend, &image)?;
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
            + match backend {
                Backend::Firecracker => rootfs_allocated,
                Backend::Qemu => 0,
            };
        self.check_free_space(needed)?;
        let egress_json = parse_egress(req.egress_allow.as_deref())?;
        if !pool && !req.no_start && root_bytes.is_none() {
            let fit = pool::Fit {
                image: image_name.clone(),
                cpus,
                memory_mib: u32::try_from(memory_mib).unwrap_or(u32::MAX),
                work_bytes,
                backend,
            };
            if let Some(op) = self.claim_pool_vm(&fit, &req, agent.clone(), egress_json.clone())? {
                return Ok(op);
            }
        }
        // The daemon key every guest authorizes, made before the first boot.
        self.inner.ssh.client_key()?;
        // Reserve name and address in one transaction: the `creating` row is
        // what a restarted daemon rolls back.
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = req.name.clone();
        let accel = match backend {
            Backend::Qemu => self.accel(&image),
            Backend::Firecracker => Accel::Kvm,
        };
        let vm = self.reserve_row(&NewRow {
            id: &id,
            name: &name,
            image: &image_name,
            digest: &image.digest,
            backend,
            accel,
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
            let r = this.create(&h, &vm, &image, root_bytes, no_start).await;
            if let Err(e) = &r {
                tracing::warn!(vm = %vm.name, error = %crate::error::error_chain(e), "create failed; rolling back");
                this.rollback(&vm.id, &vm.name);
            }
            r
        })?)
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
                    crate::units::format_size(free),
                    crate::units::format_size(needed)
                ),
            });
        }
        Ok(())
    }

    pub(super) async fn create(
        &self,
        h: &OpHandle,
        vm: &Vm,
        image: &banger_api::Image,
        root_bytes: Option<u64>,
        no_start: bool,
    ) -> Result<serde_json::Value, VmError> {
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
        let base_size = image
            .artifacts
            .iter()
            .find(|a| a.kind == "rootfs")
            .map(|a| a.size)
            .unwrap_or(0);
        let grow_root =
            self.vmm(vm.backend).guest_grows_root() && root_bytes.is_some_and(|b| b > base_size);
        h.step(
            "config",
            blocking(move || this.new_identity(&vm2, grow_root)),
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
