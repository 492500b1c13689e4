//! `vm set`: network policy, and resources of a stopped VM (disks only grow).

use banger_api::{Vm, VmState};
use rusqlite::params;

use crate::units::parse_size;

use super::disks::{grow_ext4_file, grow_root_disk, root_disk_size};
use super::error::VmError;
use super::resolve::{check_cpus, opt_size, parse_egress};
use super::Vms;

impl Vms {
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
                    .map_err(|e| VmError::Internal {
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
            let root = p.root(vm.backend);
            let current = root_disk_size(vm.backend, &root)?;
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
                grow_root_disk(vm.backend, &root, size)?;
                if self.vmm(vm.backend).guest_grows_root() {
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
}
