//! The workspace rows a snapshot carries: copied out of the workspaces
//! table when a snapshot is taken and into it for a VM made from the
//! snapshot, inside the snapshot code's own transactions. Apart from
//! `workspaces` (which talks to guests) so that `vms::snapshots` needs
//! only the table, not the workspace subsystem.

use rusqlite::params;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CarriedError {
    #[error("Cannot copy the snapshot's workspaces")]
    Sql(#[from] rusqlite::Error),
    #[error("The snapshot's record is damaged: {0}")]
    Record(String),
}

/// A VM's workspace rows as a snapshot carries them to the VMs made from
/// it (JSON in the snapshot's row).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CarriedWorkspace {
    name: String,
    host_path: String,
    dest: String,
    base_commit: String,
    branch: Option<String>,
    pushed_at: String,
    exported_commit: Option<String>,
    exported_at: Option<String>,
}

/// The workspaces of VM `vm_id`, as JSON for a snapshot.
pub fn carried_by_snapshot(tx: &rusqlite::Connection, vm_id: &str) -> rusqlite::Result<String> {
    let mut stmt = tx.prepare(
        "SELECT name, host_path, dest, base_commit, branch, pushed_at, \
        exported_commit, exported_at FROM workspaces WHERE vm_id = ?1 \
        ORDER BY name",
    )?;
    let rows = stmt
        .query_map([vm_id], |r| {
            Ok(CarriedWorkspace {
                name: r.get(0)?,
                host_path: r.get(1)?,
                dest: r.get(2)?,
                base_commit: r.get(3)?,
                branch: r.get(4)?,
                pushed_at: r.get(5)?,
                exported_commit: r.get(6)?,
                exported_at: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()))
}

/// Gives VM `vm_id` the workspaces a snapshot carried (`json` from
/// [`carried_by_snapshot`]).
pub fn restore_carried(
    tx: &rusqlite::Connection,
    vm_id: &str,
    json: &str,
) -> Result<(), CarriedError> {
    let rows: Vec<CarriedWorkspace> = serde_json::from_str(json)
        .map_err(|e| CarriedError::Record(format!("its recorded workspaces do not parse: {e}")))?;
    for w in rows {
        tx.execute(
            "INSERT INTO workspaces (vm_id, name, host_path, dest, \
            base_commit, branch, pushed_at, exported_commit, exported_at) \
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                vm_id,
                w.name,
                w.host_path,
                w.dest,
                w.base_commit,
                w.branch,
                w.pushed_at,
                w.exported_commit,
                w.exported_at
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// What a snapshot carries comes back whole for another VM (real
    /// SQLite with banger's schema); a bad record changes nothing.
    #[test]
    fn workspaces_carried_by_a_snapshot_restore_for_another_vm() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("banger.db")).expect("store");
        let vm = |tx: &rusqlite::Connection, id: &str, ip: &str| {
            tx.execute(
                "INSERT INTO vms (id, name, image, image_digest, backend, accel, \
                cpus, memory_mib, work_bytes, ip, mac, tap, state, created_at, \
                host_key) VALUES (?1, ?1, 'i', 'd', 'qemu', 'tcg', 1, 512, 1, \
                ?2, 'm', 't', 'running', 'now', '')",
                params![id, ip],
            )
        };
        let json = store
            .write(|tx| -> Result<String, rusqlite::Error> {
                vm(tx, "src", "172.30.0.2")?;
                vm(tx, "dst", "172.30.0.3")?;
                tx.execute(
                    "INSERT INTO workspaces (vm_id, name, host_path, dest, \
                    base_commit, branch, pushed_at, exported_commit, exported_at) \
                    VALUES ('src', 'proj', '/h/proj', '/work/proj', 'abc', 'main', \
                    't1', NULL, NULL)",
                    [],
                )?;
                carried_by_snapshot(tx, "src")
            })
            .expect("carry");
        store
            .write(|tx| restore_carried(tx, "dst", &json))
            .expect("restore");
        let rows: Vec<(String, String, Option<String>)> = store
            .read(|c| {
                let mut st =
                    c.prepare("SELECT name, dest, branch FROM workspaces WHERE vm_id = 'dst'")?;
                let r = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                r.collect::<rusqlite::Result<Vec<_>>>()
            })
            .expect("read");
        assert_eq!(
            rows,
            [("proj".into(), "/work/proj".into(), Some("main".into()))]
        );
        let bad = store.write(|tx| restore_carried(tx, "dst", "[[1, 2]]"));
        assert!(matches!(bad, Err(CarriedError::Record(_))), "{bad:?}");
    }
}
