//! What the housekeeping tick checks besides console logs: a running VM
//! whose TAP is gone (deleted by hand, by another tool, or by a second
//! daemon before namespaces were owned) is reported on the VM (`problem`)
//! and by `banger doctor`; and per-VM locks nobody holds are dropped, so
//! the lock map does not grow with every name ever used.

use std::collections::HashMap;
use std::sync::Arc;

use banger_api::{Vm, VmState};

use crate::network;

use super::Vms;

/// What a VM whose TAP is gone is told, with what to do. Pure.
pub(super) fn lost_tap_problem(tap: &str, name: &str) -> String {
    format!(
        "its TAP {tap} is gone, so it has no network; restart it to get a new one \
         (banger vm stop {name} && banger vm start {name})"
    )
}

impl Vms {
    /// Notes running VMs whose TAP no longer exists (and forgets the note
    /// once the VM stops or the TAP is back). Blocking (netlink).
    pub(super) fn check_taps(&self) {
        let Ok(all) = self.list() else { return };
        let mut lost = HashMap::new();
        for vm in all.iter().filter(|v| v.state == VmState::Running) {
            let tap = self.tap_of(&vm.id);
            if !tap.is_empty() && !network::link_exists(&tap) {
                let problem = lost_tap_problem(&tap, &vm.name);
                lost.insert(vm.id.clone(), (vm.pid, problem));
            }
        }
        let mut cur = self
            .inner
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (id, (_, problem)) in &lost {
            if !cur.contains_key(id) {
                tracing::warn!(vm = %id, problem = %problem, "a running VM lost its network");
            }
        }
        *cur = lost;
    }

    /// Fills in what is known to be wrong with `vm` (its `problem`): only
    /// for the VMM it was found with (a restarted VM starts clean).
    pub(super) fn annotate(&self, mut vm: Vm) -> Vm {
        let cur = self
            .inner
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        vm.problem = match cur.get(&vm.id) {
            Some((pid, p)) if vm.state == VmState::Running && *pid == vm.pid => Some(p.clone()),
            _ => None,
        };
        vm
    }

    /// Drops the per-VM locks no one holds or waits for.
    pub(super) fn prune_locks(&self) {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_problem_names_the_tap_and_the_fix() {
        let p = lost_tap_problem("bg-abc", "web");
        assert!(p.contains("bg-abc"));
        assert!(p.contains("banger vm stop web && banger vm start web"));
    }
}
