//! What happens to a sandbox after its create: it is listed, looked up,
//! given a new end, paused (a snapshot holds it, its VM goes), resumed
//! (the snapshot restored under the same id), killed, and reaped when its
//! time is up (paused instead, with `autoPause`).

use std::collections::BTreeMap;

use banger_api::{OpState, VmCreateRequest, VmSnapshotRequest, VmState};
use chrono::Utc;

use super::keys::Key;
use super::model::{self, Sandbox, SandboxDetail, ENVD_VERSION};
use super::rows::{self, Row};
use super::{E2b, E2bError, EnvdRefusal, MAX_TIMEOUT_SECS};
use crate::ToApiError;

/// The snapshot name a paused sandbox is kept under. Pure.
fn pause_snapshot(id: &str) -> String {
    format!("{id}-paused")
}

fn check_timeout(secs: u64) -> Result<(), E2bError> {
    if secs == 0 || secs > MAX_TIMEOUT_SECS {
        return Err(E2bError::Invalid {
            what: "timeout",
            reason: format!("{secs} s is not in 1..={MAX_TIMEOUT_SECS}"),
        });
    }
    Ok(())
}

impl E2b {
    fn detail(&self, row: &Row) -> Result<SandboxDetail, E2bError> {
        let (cpus, memory_mib, work, state) = match &row.paused {
            None => {
                let vm = self.vms.get(&row.id)?;
                let running = if vm.state == VmState::Running {
                    "running"
                } else {
                    "paused"
                };
                (
                    vm.cpus,
                    u64::from(vm.memory_mib),
                    vm.work_disk_bytes,
                    running,
                )
            }
            Some(snap) => {
                let list = self.snapshots.list()?;
                let s = list.snapshots.iter().find(|s| &s.name == snap);
                let (c, m, w) = s.map_or((0, 0, 0), |s| {
                    (s.cpus, u64::from(s.memory_mib), s.work_disk_bytes)
                });
                (c, m, w, "paused")
            }
        };
        Ok(SandboxDetail {
            template_id: row.template.clone(),
            sandbox_id: row.id.clone(),
            client_id: "banger".into(),
            started_at: row.started_at.clone(),
            end_at: row.end_at.clone(),
            cpu_count: cpus,
            memory_mb: memory_mib,
            disk_size_mb: work >> 20,
            metadata: row.metadata.clone(),
            state: state.into(),
            envd_version: ENVD_VERSION.into(),
        })
    }

    /// The sandboxes of `key`'s owner whose metadata matches `filter`.
    pub fn list(&self, key: &Key, filter: Option<&str>) -> Result<Vec<SandboxDetail>, E2bError> {
        let mut out = Vec::new();
        for row in self.rows(Some(key.owner_uid))? {
            if filter.is_some_and(|f| !model::metadata_matches(&row.metadata, f)) {
                continue;
            }
            // A VM removed by hand has taken its sandbox with it.
            if let Ok(d) = self.detail(&row) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// `key`'s owner's sandbox `id`.
    fn row(&self, key: &Key, id: &str) -> Result<Row, E2bError> {
        self.row_of(id)?
            .filter(|r| r.owner_uid == key.owner_uid)
            .ok_or_else(|| E2bError::NotFound {
                what: "sandbox",
                name: id.into(),
            })
    }

    pub fn get(&self, key: &Key, id: &str) -> Result<SandboxDetail, E2bError> {
        self.detail(&self.row(key, id)?)
    }

    /// Kills a sandbox: its VM (or the snapshot of a paused one) and its
    /// row go.
    pub async fn kill(&self, key: &Key, id: &str) -> Result<(), E2bError> {
        let row = self.row(key, id)?;
        self.destroy(&row).await?;
        tracing::info!(sandbox = %id, "E2B sandbox killed");
        Ok(())
    }

    async fn destroy(&self, row: &Row) -> Result<(), E2bError> {
        match &row.paused {
            None => match self.vms.remove(&row.id, true).await {
                Ok(()) => {}
                Err(e) if e.code() == banger_api::ErrorCode::NotFound => {}
                Err(e) => return Err(e.into()),
            },
            Some(snap) => {
                let _ = self.snapshots.remove(snap);
            }
        }
        self.delete_row(&row.id)
    }

    /// The sandbox ends `secs` from now.
    pub fn set_timeout(&self, key: &Key, id: &str, secs: u64) -> Result<(), E2bError> {
        check_timeout(secs)?;
        let row = self.row(key, id)?;
        self.set_end(&row.id, &rows::end_after(Utc::now(), secs))
    }

    /// Pauses a running sandbox: a snapshot (with memory unless `memory`
    /// is false) holds it and its VM goes. False when it already was.
    pub async fn pause(&self, key: &Key, id: &str, memory: bool) -> Result<bool, E2bError> {
        let row = self.row(key, id)?;
        if row.paused.is_some() {
            return Ok(false);
        }
        self.pause_row(&row, memory).await?;
        Ok(true)
    }

    async fn pause_row(&self, row: &Row, memory: bool) -> Result<(), E2bError> {
        if !memory {
            self.vms
                .stop(&row.id, false, std::time::Duration::from_secs(10))
                .await?;
        }
        let snap = pause_snapshot(&row.id);
        let op = self.snapshots.take(
            &row.id,
            VmSnapshotRequest {
                name: Some(snap.clone()),
            },
        )?;
        let done = self.ops.wait(&op.id).await?;
        if done.state != OpState::Succeeded {
            let why = done.error.map(|e| e.message).unwrap_or_default();
            return Err(E2bError::Create(format!("pausing failed: {why}")));
        }
        self.set_paused(&row.id, Some(&snap))?;
        self.vms.remove(&row.id, true).await?;
        tracing::info!(sandbox = %row.id, memory, "E2B sandbox paused");
        Ok(())
    }

    /// `connect`/`resume`: a paused sandbox is restored under its id; a
    /// running one gets the new end. Its create answer, and whether it was
    /// resumed.
    pub async fn connect(
        &self,
        key: &Key,
        id: &str,
        timeout: Option<u64>,
    ) -> Result<(Sandbox, bool), E2bError> {
        let row = self.row(key, id)?;
        let secs = timeout.unwrap_or(row.timeout_secs);
        check_timeout(secs)?;
        let resumed = match &row.paused {
            None => false,
            Some(snap) => {
                self.resume_row(&row, snap).await?;
                true
            }
        };
        // A running sandbox's end only moves later (as E2B's connect).
        let now = Utc::now();
        if resumed || rows::ended(&row.end_at, rows::after(now, secs)) {
            self.set_end(id, &rows::end_after(now, secs))?;
        }
        Ok((
            Sandbox {
                template_id: row.template.clone(),
                sandbox_id: row.id.clone(),
                client_id: "banger".into(),
                envd_version: ENVD_VERSION.into(),
                envd_access_token: self.tokens.token(&row.id),
                domain: None,
            },
            resumed,
        ))
    }

    async fn resume_row(&self, row: &Row, snap: &str) -> Result<(), E2bError> {
        let req = VmCreateRequest {
            name: row.id.clone(),
            from_snapshot: Some(snap.to_string()),
            ..VmCreateRequest::default()
        };
        let op = self.vms.start_create(req).await?;
        let done = self.ops.wait(&op.id).await?;
        if done.state != OpState::Succeeded {
            let why = done.error.map(|e| e.message).unwrap_or_default();
            return Err(E2bError::Create(format!("resuming failed: {why}")));
        }
        self.access
            .record_vm_owner(&row.id, row.owner_uid)
            .map_err(|e| E2bError::Create(e.to_string()))?;
        self.set_paused(&row.id, None)?;
        let _ = self.snapshots.remove(snap);
        tracing::info!(sandbox = %row.id, "E2B sandbox resumed");
        Ok(())
    }

    /// Kills (or, with `autoPause`, pauses) every running sandbox whose
    /// time is up, and forgets those whose VM was removed by hand.
    pub async fn reap(&self) -> Result<Vec<String>, E2bError> {
        let now = Utc::now();
        let mut gone = Vec::new();
        for row in self.rows(None)? {
            if row.paused.is_some() {
                continue;
            }
            if self.vms.get(&row.id).is_err() {
                self.delete_row(&row.id)?;
                continue;
            }
            if !rows::ended(&row.end_at, now) {
                continue;
            }
            let r = if row.auto_pause {
                self.pause_row(&row, true).await
            } else {
                self.destroy(&row).await
            };
            match r {
                Ok(()) => {
                    tracing::info!(sandbox = %row.id, paused = row.auto_pause, "E2B sandbox timed out");
                    gone.push(row.id);
                }
                Err(e) => {
                    tracing::warn!(sandbox = %row.id, error = %e, "cannot end a timed-out sandbox")
                }
            }
        }
        Ok(gone)
    }

    /// The VM an envd request for sandbox `id` goes to, when `token` is
    /// its access token and it runs.
    pub fn envd_target(&self, id: &str, token: Option<&str>) -> Result<String, EnvdRefusal> {
        let row = self
            .row_of(id)
            .ok()
            .flatten()
            .ok_or(EnvdRefusal::NotFound)?;
        if !token.is_some_and(|t| self.tokens.check(id, t)) {
            return Err(EnvdRefusal::Token);
        }
        if row.paused.is_some() {
            return Err(EnvdRefusal::Paused);
        }
        Ok(row.id)
    }

    /// The environment a sandbox was created with.
    pub fn env_of(&self, id: &str) -> BTreeMap<String, String> {
        self.row_of(id)
            .ok()
            .flatten()
            .map(|r| r.env)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_snapshots_are_named_after_their_sandbox() {
        assert_eq!(
            pause_snapshot("e2b-0123456789ab"),
            "e2b-0123456789ab-paused"
        );
        assert!(check_timeout(0).is_err());
        assert!(check_timeout(MAX_TIMEOUT_SECS + 1).is_err());
        assert!(check_timeout(60).is_ok());
    }
}
