//! `vm set`: network policy, and resources of a stopped VM (disks only grow).

use banger_api::{Vm, VmSetRequest, VmState};
use rusqlite::params;

use crate::resources::{Floor, Resources};

use super::disks::{grow_ext4_file, grow_root_disk, root_disk_size};
use super::error::VmError;
use super::resolve::parse_egress;
use super::Vms;

impl Vms {
    /// Changes a VM's network policy (at once, running or not) and its
    /// resources (only while it is stopped; disks only grow).
    pub async fn set(&self, name: &str, req: VmSetRequest) -> Result<Vm, VmError> {
        let lock = self.lock_for(name);
        let _held = lock.lock().await;
        let vm = self.get(name)?;
        let policy = req.isolated.is_some() || req.egress_allow.is_some() || req.egress_all;
        if policy {
            self.set_policy(&vm, &req).await?;
        }
        if req.resources.any() || !policy {
            // e2fsck, resize2fs and qemu-img run long: off the async threads.
            let (this, vm) = (self.clone(), self.get(name)?);
            super::blocking(move || this.set_resources(&vm, &req)).await?;
        }
        self.get(name)
    }

    /// Isolation and the egress allow-list, applied to the firewall at once.
    async fn set_policy(&self, vm: &Vm, req: &VmSetRequest) -> Result<(), VmError> {
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
            super::blocking(move || this.sync_firewall()).await?;
        }
        tracing::info!(vm = %vm.name, isolated = ?req.isolated, egress = ?req.egress_allow,
            all = req.egress_all, "network policy changed");
        Ok(())
    }

    /// CPUs, memory and disk sizes of a stopped VM: resolved over what it
    /// has now, every bound checked before a disk is touched.
    fn set_resources(&self, vm: &Vm, req: &VmSetRequest) -> Result<(), VmError> {
        if vm.state != VmState::Stopped {
            return Err(VmError::WrongState {
                name: vm.name.clone(),
                state: vm.state.as_str(),
                what: "resources can change only while it is stopped (banger vm stop NAME)",
            });
        }
        let p = self.paths(&vm.id);
        let root = p.root(vm.backend);
        // Read only when asked to grow it: the floor a new size must reach.
        let current_root = match &req.resources.disk_size {
            Some(_) => root_disk_size(vm.backend, &root)?,
            None => 0,
        };
        let now = Resources {
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            work_bytes: vm.work_disk_bytes,
            root_bytes: None,
        };
        let new = now.update(&req.resources, Floor::Existing { root: current_root })?;
        let growth = new
            .work_bytes
            .saturating_sub(now.work_bytes)
            .saturating_add(new.root_bytes.map_or(0, |r| r.saturating_sub(current_root)));
        if growth > 0 {
            self.check_free_space(growth.saturating_add(256 << 20))?;
        }
        crate::testhold::point_blocking("vm.set:grow");
        if new.work_bytes > now.work_bytes {
            grow_ext4_file(&p.work(), new.work_bytes)?;
        }
        if let Some(size) = new.root_bytes.filter(|s| *s > current_root) {
            grow_root_disk(vm.backend, &root, size)?;
            if self.vmm(vm.backend).guest_grows_root() {
                // The guest grows the mounted filesystem at its next boot.
                self.mark_grow_root(vm)?;
                self.write_config_disk(vm)?;
            }
        }
        let id = vm.id.clone();
        self.inner.store.write(|tx| {
            tx.execute(
                "UPDATE vms SET cpus = ?2, memory_mib = ?3, work_bytes = ?4 WHERE id = ?1",
                params![id, new.cpus, new.memory_mib, new.work_bytes as i64],
            )
            .map(|_| ())
        })?;
        Ok(())
    }
}
