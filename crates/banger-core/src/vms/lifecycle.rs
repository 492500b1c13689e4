//! Stopping and removing VMs, and rolling back a failed create.

use std::time::{Duration, Instant};

use banger_api::{Backend, Vm, VmState};
use rusqlite::OptionalExtension;

use crate::network;

use super::error::VmError;
use super::procs::{kill_vmm, kill_vmms_of, pid_alive};
use super::{blocking, Vms, POLL};

impl Vms {
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
        crate::testhold::point("vm.stop:stopping").await;
        let vmm = self.vmm(vm.backend);
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
        crate::testhold::point("vm.stop:killed").await;
        let why = if force {
            "killed by user"
        } else {
            "stopped by user"
        };
        self.set_state(&vm.id, VmState::Stopped, None, Some(why))?;
        // netlink, dmsetup and file removal: off the async threads.
        let this = self.clone();
        blocking(move || {
            network::delete_tap(&this.tap_of(&vm.id));
            crate::storage::dm::teardown(&vm.id);
            this.vmm(vm.backend).cleanup(&vm.id);
            this.paths(&vm.id).remove_sockets();
            Ok(())
        })
        .await?;
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
            let this = self.clone();
            return blocking(move || this.remove_locked(&vm)).await;
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
    pub(super) fn remove_locked(&self, vm: &Vm) -> Result<(), VmError> {
        let name = vm.name.as_str();
        // Read before the row goes: the TAP may be a pool one.
        let tap = self.tap_of(&vm.id);
        // The row goes first, in one transaction: a daemon killed after it
        // leaves only files and a TAP no row claims, which reconcile removes.
        self.inner.store.write(|tx| {
            tx.execute("DELETE FROM vms WHERE id = ?1", [&vm.id])
                .map(|_| ())
        })?;
        crate::testhold::point_blocking("vm.rm:row");
        kill_vmms_of(&vm.id);
        network::delete_tap(&tap);
        crate::testhold::point_blocking("vm.rm:tap");
        crate::storage::dm::teardown(&vm.id);
        self.vmm(vm.backend).cleanup(&vm.id);
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

    /// [`Vms::rollback`] off the async threads (it kills, deletes and
    /// removes files).
    pub(super) async fn rollback_off_thread(&self, id: &str, name: &str) {
        let (this, id, name) = (self.clone(), id.to_string(), name.to_string());
        let _ = tokio::task::spawn_blocking(move || this.rollback(&id, &name)).await;
    }

    /// Removes everything a failed create left.
    pub(super) fn rollback(&self, id: &str, name: &str) {
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
        self.vmm(Backend::Firecracker).cleanup(id);
        let p = self.paths(id);
        let _ = std::fs::remove_dir_all(&p.dir);
        let _ = std::fs::remove_dir_all(&p.run);
        let _ = self.inner.store.write(|tx| {
            tx.execute("DELETE FROM vms WHERE id = ?1", [id])
                .map(|_| ())
        });
        // Its chains go now, not at the next change of some other VM.
        if self.network_active() {
            if let Err(e) = self.sync_firewall() {
                tracing::warn!(vm = name, error = %e, "cannot update the firewall after a rollback");
            }
        }
        tracing::info!(vm = name, "rolled back");
    }
}
