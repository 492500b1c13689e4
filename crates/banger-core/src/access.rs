//! Who may reach which VM. Every member of the socket's group can reach
//! every VM by default; with `access.confine_users` a member who is not
//! root (nor the daemon's own user) reaches only the VMs they made, with
//! their sessions, workspaces, forwards and snapshots. Owners are recorded
//! always, so turning confinement on later applies to VMs made before
//! (those made by root, or before owners were kept, stay root's).

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::OptionalExtension;
use thiserror::Error;

use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Reading who owns what failed")]
    Sql(#[from] rusqlite::Error),
}

impl crate::ToApiError for AccessError {
    fn code(&self) -> banger_api::ErrorCode {
        banger_api::ErrorCode::Internal
    }
}

/// The user behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Reaches everything (no confinement, root, or the daemon's user).
    pub all: bool,
}

/// The access rules. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    store: Arc<Store>,
    confine: bool,
    admin_uid: u32,
}

impl Access {
    pub fn new(store: Arc<Store>, confine: bool) -> Access {
        Access {
            store,
            confine,
            admin_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    pub fn confined(&self) -> bool {
        self.confine
    }

    /// The caller with uid `uid`.
    pub fn caller(&self, uid: u32) -> Caller {
        Caller {
            uid,
            all: sees_all(self.confine, uid, self.admin_uid),
        }
    }

    /// Records that `uid` made the VM `name` (create, fork, restore).
    pub fn record_vm_owner(&self, name: &str, uid: u32) -> Result<(), AccessError> {
        self.store.write(|tx| {
            tx.execute(
                "UPDATE vms SET owner_uid = ?2 WHERE name = ?1",
                rusqlite::params![name, uid],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Names of the VMs `caller` reaches; `None`: all of them.
    pub fn vm_names(&self, caller: Caller) -> Result<Option<HashSet<String>>, AccessError> {
        self.names(caller, "SELECT name FROM vms WHERE owner_uid = ?1")
    }

    /// Keeps the items of `items` whose VM (`vm_of`) `caller` reaches.
    pub fn retain_reachable<T>(
        &self,
        caller: Caller,
        items: &mut Vec<T>,
        vm_of: impl Fn(&T) -> &str,
    ) -> Result<(), AccessError> {
        if let Some(mine) = self.vm_names(caller)? {
            items.retain(|i| mine.contains(vm_of(i)));
        }
        Ok(())
    }

    /// Names of the snapshots `caller` reaches; `None`: all of them.
    pub fn snapshot_names(&self, caller: Caller) -> Result<Option<HashSet<String>>, AccessError> {
        self.names(caller, "SELECT name FROM snapshots WHERE owner_uid = ?1")
    }

    fn names(&self, caller: Caller, sql: &str) -> Result<Option<HashSet<String>>, AccessError> {
        if caller.all {
            return Ok(None);
        }
        let names = self.store.read(|c| -> rusqlite::Result<HashSet<String>> {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map([caller.uid], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(Some(names))
    }

    /// Whether `caller` may use what `target` names. A name that exists
    /// nowhere is allowed: the handler then answers its own "not found".
    pub fn may(&self, caller: Caller, target: &Target) -> Result<bool, AccessError> {
        if caller.all {
            return Ok(true);
        }
        let sql = match target {
            Target::Vm(_) => "SELECT owner_uid FROM vms WHERE name = ?1",
            Target::Session(_) => {
                "SELECT v.owner_uid FROM sessions s JOIN vms v ON v.id = s.vm_id \
                WHERE s.name = ?1"
            }
            Target::Snapshot(_) => "SELECT owner_uid FROM snapshots WHERE name = ?1",
        };
        let owner: Option<Option<u32>> = self
            .store
            .read(|c| c.query_row(sql, [target.name()], |r| r.get(0)).optional())?;
        Ok(match owner {
            None => true,
            Some(owner) => owner == Some(caller.uid),
        })
    }
}

/// Whether a caller with `uid` reaches everything. Pure.
fn sees_all(confine: bool, uid: u32, admin_uid: u32) -> bool {
    !confine || uid == 0 || uid == admin_uid
}

/// What a request path is about, for the access check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Vm(String),
    Session(String),
    Snapshot(String),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Vm(n) | Target::Session(n) | Target::Snapshot(n) => n,
        }
    }

    /// The VM, session or snapshot an API path (`/v1/...`, decoded) names.
    /// Pure.
    pub fn of_path(path: &str) -> Option<Target> {
        let rest = path.strip_prefix("/v1/")?;
        let mut parts = rest.split('/');
        let (kind, name) = (parts.next()?, parts.next()?);
        if name.is_empty() {
            return None;
        }
        let name = name.to_string();
        match kind {
            "vms" if name != "stream" => Some(Target::Vm(name)),
            "sessions" => Some(Target::Session(name)),
            "snapshots" => Some(Target::Snapshot(name)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_target() {
        assert_eq!(
            Target::of_path("/v1/vms/web"),
            Some(Target::Vm("web".into()))
        );
        assert_eq!(
            Target::of_path("/v1/vms/web/workspaces/w/bundle"),
            Some(Target::Vm("web".into()))
        );
        assert_eq!(
            Target::of_path("/v1/sessions/s1/logs"),
            Some(Target::Session("s1".into()))
        );
        assert_eq!(
            Target::of_path("/v1/snapshots/k"),
            Some(Target::Snapshot("k".into()))
        );
        for none in [
            "/v1/vms",
            "/v1/vms/",
            "/v1/vms/stream",
            "/v1/ops/x",
            "/v2/vms/a",
            "/v1/forwards",
        ] {
            assert_eq!(Target::of_path(none), None, "{none}");
        }
    }

    #[test]
    fn only_confinement_limits_and_root_and_the_daemon_see_all() {
        assert!(sees_all(false, 1000, 0));
        assert!(!sees_all(true, 1000, 0));
        assert!(sees_all(true, 0, 0));
        assert!(sees_all(true, 990, 990));
    }

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("db")).expect("store"));
        (dir, store)
    }

    #[test]
    fn a_confined_user_reaches_only_what_they_made() {
        let (_dir, store) = store();
        store
            .write(|tx| {
                for (id, name, owner) in [("a", "mine", Some(1000)), ("b", "theirs", Some(1001)), ("c", "old", None)] {
                    tx.execute(
                        "INSERT INTO vms (id, name, image, image_digest, backend, accel, cpus, \
                        memory_mib, work_bytes, ip, mac, tap, state, created_at, host_key, owner_uid) \
                        VALUES (?1, ?2, 'i', 'd', 'qemu', 'tcg', 1, 128, 1, ?1, 'm', 't', 'stopped', \
                        'now', 'k', ?3)",
                        rusqlite::params![id, name, owner],
                    )?;
                }
                Ok::<(), rusqlite::Error>(())
            })
            .expect("rows");
        let access = Access::new(store, true);
        let me = access.caller(1000);
        assert!(!me.all);
        let names = access.vm_names(me).expect("names").expect("confined");
        assert_eq!(names, HashSet::from(["mine".to_string()]));
        assert!(access.may(me, &Target::Vm("mine".into())).expect("may"));
        assert!(!access.may(me, &Target::Vm("theirs".into())).expect("may"));
        assert!(!access.may(me, &Target::Vm("old".into())).expect("may"));
        assert!(access.may(me, &Target::Vm("nowhere".into())).expect("may"));
        access.record_vm_owner("old", 1000).expect("record");
        assert!(access.may(me, &Target::Vm("old".into())).expect("may"));
        let root = access.caller(0);
        assert!(access.may(root, &Target::Vm("theirs".into())).expect("may"));
        assert_eq!(access.vm_names(root).expect("names"), None);
    }
}
