//! After a daemon (re)start: stored state converges with what runs.

use banger_api::VmState;

use crate::network;

use super::error::VmError;
use super::procs::is_our_vmm;
use super::Vms;

impl Vms {
    /// Removes VM directories and `bg-` TAPs that no row claims (left by a
    /// daemon killed in the middle of `rm` or of a rollback). TAPs only when
    /// `taps_are_ours`: one daemon owns a namespace's network, and what it
    /// left is no other's to clean (netns_lock.rs).
    pub(super) fn remove_orphans(&self, taps_are_ours: bool) -> Result<(), VmError> {
        let vms = self.list()?;
        let ids: std::collections::HashSet<String> = vms.iter().map(|v| v.id.clone()).collect();
        for base in [self.inner.layout.vms_dir(), self.inner.layout.vms_run_dir()] {
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
        // VMMs of this daemon that no row owns (killed mid-rm, or a crash
        // anywhere the pid was not yet recorded): nothing else would ever
        // stop them.
        for (pid, id) in super::procs::vmms_under(&self.inner.layout.vms_run_dir()) {
            if !ids
                .iter()
                .any(|known| known.starts_with(&id) || id.starts_with(known.as_str()))
            {
                tracing::warn!(pid, vm = %id, "killing a VMM that no VM owns");
                super::procs::kill_vmm(pid, &id);
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
        // Only this daemon's: their files are under its VMs dir.
        let vms_dir = self.inner.layout.vms_dir();
        for dev in crate::storage::dm::list() {
            if let Some(id) = crate::storage::dm::vm_id_of(&dev) {
                if !running.contains(id) && crate::storage::dm::is_under(id, &vms_dir) {
                    tracing::warn!(device = %dev, "removing a stale device-mapper snapshot");
                    crate::storage::dm::teardown(id);
                }
            }
        }
        if !taps_are_ours {
            return Ok(());
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
        // A daemon with VMs must own its namespace's network (or refuse to
        // start); one without takes it only to clean up what is its own.
        let has_vms = !self.list()?.is_empty();
        let active = self.network_active();
        let owned = if has_vms {
            Some(self.own_network()?)
        } else if active {
            match self.own_network() {
                Ok(ours) => Some(ours),
                Err(e) => {
                    tracing::info!(error = %e, "leaving this namespace's network alone");
                    None
                }
            }
        } else {
            None
        };
        self.remove_orphans(owned == Some(true))?;
        // Rules for VMs that no longer exist go; missing ones come back.
        // Not those of another daemon's VMs, by one that has none.
        if owned.is_some_and(|ours| has_vms || ours) && active {
            if has_vms && network::link_exists(&self.inner.config.bridge) {
                self.inner.net_up.send_replace(true);
                self.inner.pool.refill_later();
            }
            if let Err(e) = self.sync_firewall() {
                tracing::warn!(error = %e, "cannot reconcile the firewall");
            }
        }
        if !has_vms {
            // Taken again by the first VM that needs the network.
            self.release_network();
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
