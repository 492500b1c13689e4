//! The `vms` table: row mapping and the SQL on it.

use std::net::Ipv4Addr;

use banger_api::{Accel, Backend, Vm, VmState};
use rusqlite::{params, OptionalExtension, Row};

use crate::network;
use crate::store::StoreError;

use super::error::VmError;
use super::Vms;

impl Vms {
    /// The SSH host key recorded for VM `id`.
    pub(super) fn host_key(&self, id: &str) -> Result<String, VmError> {
        Ok(self
            .inner
            .store
            .read(|c| c.query_row("SELECT host_key FROM vms WHERE id = ?1", [id], |r| r.get(0)))?)
    }

    pub(super) fn list_where(&self, filter: &'static str) -> Result<Vec<Vm>, VmError> {
        self.inner.store.read(|c| -> Result<Vec<Vm>, VmError> {
            let mut stmt = c.prepare(&format!(
                "SELECT {VM_COLUMNS} FROM vms WHERE {filter} ORDER BY name"
            ))?;
            let rows = stmt.query_map([], vm_from_row)?;
            let mut v = Vec::new();
            for r in rows {
                v.push(self.annotate(r??));
            }
            Ok(v)
        })
    }

    /// A VM by id.
    pub(super) fn get_by_id(&self, id: &str) -> Result<Vm, VmError> {
        self.inner
            .store
            .read(|c| {
                c.query_row(
                    &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                    [id],
                    vm_from_row,
                )
                .optional()
            })?
            .transpose()?
            .ok_or_else(|| VmError::NotFound {
                name: id.into(),
                close: None,
            })
    }

    pub(super) fn set_state(
        &self,
        id: &str,
        state: VmState,
        pid: Option<u32>,
        reason: Option<&str>,
    ) -> Result<(), VmError> {
        let started = (state == VmState::Running).then(|| chrono::Utc::now().to_rfc3339());
        self.inner.store.write(|tx| -> Result<(), VmError> {
            tx.execute(
                "UPDATE vms SET state = ?2, pid = ?3, stop_reason = ?4, \
                started_at = COALESCE(?5, CASE WHEN ?2 = 'running' THEN \
                started_at ELSE NULL END) WHERE id = ?1",
                params![id, state.as_str(), pid, reason, started],
            )?;
            Ok(())
        })
    }

    /// Reserves name and address in one transaction: the `creating` row is
    /// what a restarted daemon rolls back.
    pub(super) fn reserve_row(&self, r: &NewRow<'_>) -> Result<Vm, VmError> {
        let subnet = self.inner.config.subnet;
        self.inner.store.write(|tx| -> Result<Vm, VmError> {
            if tx
                .query_row("SELECT 1 FROM vms WHERE name = ?1", [r.name], |_| Ok(()))
                .optional()?
                .is_some()
            {
                return Err(VmError::Exists(r.name.to_string()));
            }
            let mut stmt = tx.prepare("SELECT ip FROM vms")?;
            let used: Vec<Ipv4Addr> = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .filter_map(|r| r.ok()?.parse().ok())
                .collect();
            drop(stmt);
            let ip = subnet.allocate(&used)?;
            let now = chrono::Utc::now();
            tx.execute(
                &format!(
                    "INSERT INTO vms ({VM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                    ?7, ?8, ?9, ?10, ?11, ?12, 'creating', NULL, ?13, NULL, NULL, \
                    '', ?14, ?15, ?16, ?17)"
                ),
                params![
                    r.id,
                    r.name,
                    r.image,
                    r.digest,
                    r.backend.as_str(),
                    r.accel.as_str(),
                    r.cpus,
                    r.memory_mib,
                    r.work_bytes as i64,
                    ip.to_string(),
                    network::mac_for(r.id),
                    network::tap_name(r.id),
                    now.to_rfc3339(),
                    r.agent,
                    i64::from(r.isolated),
                    r.egress,
                    i64::from(r.pool)
                ],
            )?;
            tx.query_row(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                [r.id],
                vm_from_row,
            )?
        })
    }

    /// The TAP recorded for a VM (a pool TAP, or its own `bg-` one).
    pub(super) fn tap_of(&self, id: &str) -> String {
        self.inner
            .store
            .read(|c| {
                c.query_row("SELECT tap FROM vms WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| network::tap_name(id))
    }
}

/// A new VM row (see [`Vms::reserve_row`]).
pub(super) struct NewRow<'a> {
    pub(super) id: &'a str,
    pub(super) name: &'a str,
    pub(super) image: &'a str,
    pub(super) digest: &'a str,
    pub(super) backend: Backend,
    pub(super) accel: Accel,
    pub(super) cpus: u32,
    pub(super) memory_mib: u64,
    pub(super) work_bytes: u64,
    pub(super) agent: Option<&'a str>,
    pub(super) isolated: bool,
    pub(super) egress: Option<&'a str>,
    pub(super) pool: bool,
}

pub(super) const VM_COLUMNS: &str = "id, name, image, image_digest, backend, accel, cpus, memory_mib, work_bytes, ip, mac, tap, state, pid, created_at, started_at, stop_reason, host_key, agent, isolated, egress, pool";

pub(super) fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Vm, VmError>> {
    let state: String = r.get(12)?;
    let created: String = r.get(14)?;
    let started: Option<String> = r.get(15)?;
    let pid: Option<i64> = r.get(13)?;
    let work: i64 = r.get(8)?;
    let corrupt =
        |what: &'static str, d: String| VmError::Store(StoreError::Corrupt { what, detail: d });
    let time =
        |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&chrono::Utc));
    let mut vm = Vm {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        backend: backend_at(r, 4)?,
        accel: accel_at(r, 5)?,
        cpus: r.get(6)?,
        memory_mib: r.get(7)?,
        work_disk_bytes: u64::try_from(work).unwrap_or(0),
        ip: r.get(9)?,
        mac: r.get(10)?,
        state: VmState::Stopped,
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        created_at: chrono::Utc::now(),
        started_at: None,
        stop_reason: r.get(16)?,
        agent: r.get(18)?,
        isolated: r.get::<_, i64>(19)? != 0,
        egress_allow: r
            .get::<_, Option<String>>(20)?
            .and_then(|e| serde_json::from_str(&e).ok()),
        problem: None,
    };
    Ok((|| {
        vm.state = VmState::parse(&state).ok_or_else(|| corrupt("VM state", state.clone()))?;
        vm.created_at = time(&created).map_err(|e| corrupt("timestamp", e.to_string()))?;
        vm.started_at = started
            .as_deref()
            .map(time)
            .transpose()
            .map_err(|e| corrupt("timestamp", e.to_string()))?;
        Ok(vm)
    })())
}

/// A backend column (a value banger wrote; anything else is corruption).
pub(super) fn backend_at(r: &Row<'_>, i: usize) -> rusqlite::Result<Backend> {
    let s: String = r.get(i)?;
    Backend::parse(&s).ok_or_else(|| bad_column(i, "backend", &s))
}

/// An accelerator column.
pub(super) fn accel_at(r: &Row<'_>, i: usize) -> rusqlite::Result<Accel> {
    let s: String = r.get(i)?;
    Accel::parse(&s).ok_or_else(|| bad_column(i, "accelerator", &s))
}

fn bad_column(i: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Text,
        format!("unknown {what} {value:?}").into(),
    )
}
