//! E2B on banger: API keys, and sandboxes that are banger VMs with a label
//! (a row in `e2b_sandboxes` next to the VM's: template, metadata, env,
//! when it ends, the envd token's digest). The HTTP side (control plane
//! and the envd adapter) is bangerd's e2b.rs; this is what it calls.

pub mod connect;
pub mod files;
pub mod keys;
pub mod model;
mod process;

use std::collections::BTreeMap;
use std::sync::Arc;

use banger_api::{VmCreateRequest, VmExecRequest, VmState};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use thiserror::Error;

use crate::access::Access;
use crate::guests::Guests;
use crate::names::NameError;
use crate::ops::Ops;
use crate::store::{Store, StoreError};
use crate::vms::{VmError, Vms};
use keys::Key;
use model::{NewSandbox, Sandbox, SandboxDetail, ENVD_VERSION};

/// A sandbox's time to live when the create gives none (E2B's default).
const DEFAULT_TIMEOUT_SECS: u64 = 15;
/// The longest time to live (E2B's Pro limit: 24 h).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// The guest user commands run as by default (E2B's convention).
pub const DEFAULT_USER: &str = "user";

#[derive(Debug, Error)]
pub enum E2bError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("No {what} {name:?}")]
    NotFound { what: &'static str, name: String },
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Guest(Box<crate::guests::GuestsError>),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Sandbox query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("Creating the sandbox failed: {0}")]
    Create(String),
}

impl From<VmError> for E2bError {
    fn from(e: VmError) -> Self {
        E2bError::Vm(Box::new(e))
    }
}

impl From<crate::guests::GuestsError> for E2bError {
    fn from(e: crate::guests::GuestsError) -> Self {
        E2bError::Guest(Box::new(e))
    }
}

impl crate::ToApiError for E2bError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode;
        match self {
            E2bError::Name(_) | E2bError::Invalid { .. } => ErrorCode::InvalidRequest,
            E2bError::NotFound { .. } => ErrorCode::NotFound,
            E2bError::Vm(e) => e.code(),
            E2bError::Guest(e) => e.code(),
            E2bError::Ops(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }
}

/// The E2B subsystem. Cheap to clone.
#[derive(Clone)]
pub struct E2b {
    store: Arc<Store>,
    vms: Vms,
    guests: Guests,
    ops: Ops,
    access: Access,
    /// Running envd processes (process.rs).
    procs: process::Procs,
}

/// A sandbox's row.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    template: String,
    metadata: BTreeMap<String, String>,
    started_at: String,
    end_at: String,
}

impl E2b {
    pub fn new(store: Arc<Store>, vms: Vms, guests: Guests, ops: Ops, access: Access) -> E2b {
        E2b {
            store,
            vms,
            guests,
            ops,
            access,
            procs: process::Procs::default(),
        }
    }

    pub fn create_key(&self, name: &str, uid: u32) -> Result<(Key, String), E2bError> {
        keys::create(&self.store, name, uid)
    }

    pub fn list_keys(&self, uid: Option<u32>) -> Result<Vec<Key>, E2bError> {
        keys::list(&self.store, uid)
    }

    pub fn remove_key(&self, id: &str, uid: Option<u32>) -> Result<(), E2bError> {
        keys::remove(&self.store, id, uid)
    }

    /// The key a request's `X-API-KEY` names.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Key>, E2bError> {
        keys::authenticate(&self.store, secret)
    }

    /// Creates a sandbox for `key`'s owner: a VM from the template (`base`:
    /// the daemon's default image; else an image, else a snapshot), booted,
    /// with E2B's default user, ending after the timeout.
    pub async fn create(&self, key: &Key, req: NewSandbox) -> Result<Sandbox, E2bError> {
        let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
            return Err(E2bError::Invalid {
                what: "timeout",
                reason: format!("{timeout} s is not in 1..={MAX_TIMEOUT_SECS}"),
            });
        }
        let name = format!("e2b-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut vreq = VmCreateRequest {
            name: name.clone(),
            ..VmCreateRequest::default()
        };
        match self.template(&req.template_id)? {
            Template::Default => {}
            Template::Image(i) => vreq.image = Some(i),
            Template::Snapshot(s) => vreq.from_snapshot = Some(s),
        }
        let op = self.vms.start_create(vreq).await?;
        let done = self.ops.wait(&op.id).await?;
        if done.state != banger_api::OpState::Succeeded {
            let why = done
                .error
                .map(|e| e.message)
                .unwrap_or_else(|| done.state.as_str().to_string());
            return Err(E2bError::Create(why));
        }
        // From here on the VM exists: a failure removes it again.
        match self.label(key, &name, req, timeout).await {
            Ok(s) => Ok(s),
            Err(e) => {
                if let Err(rm) = self.vms.remove(&name, true).await {
                    tracing::warn!(sandbox = %name, error = %rm, "cannot remove a half-made sandbox");
                }
                Err(e)
            }
        }
    }

    /// Gives the new VM `name` its owner, its sandbox row and E2B's user.
    async fn label(
        &self,
        key: &Key,
        name: &str,
        req: NewSandbox,
        timeout: u64,
    ) -> Result<Sandbox, E2bError> {
        self.access
            .record_vm_owner(name, key.owner_uid)
            .map_err(|e| E2bError::Create(e.to_string()))?;
        let vm = self.vms.get(name)?;
        let token = keys::new_secret("ea_");
        let now = Utc::now();
        let end = now + chrono::Duration::seconds(i64::try_from(timeout).unwrap_or(i64::MAX));
        let meta = req.metadata.unwrap_or_default();
        let env = req.env_vars.unwrap_or_default();
        self.store.write(|tx| {
            tx.execute(
                "INSERT INTO e2b_sandboxes (vm_id, owner_uid, key_id, template, metadata, \
                env_vars, token_sha256, started_at, end_at, auto_pause) \
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    vm.id,
                    key.owner_uid,
                    key.id,
                    req.template_id,
                    serde_json::to_string(&meta).unwrap_or_else(|_| "{}".into()),
                    serde_json::to_string(&env).unwrap_or_else(|_| "{}".into()),
                    keys::digest(&token),
                    now.to_rfc3339(),
                    end.to_rfc3339(),
                    req.auto_pause.unwrap_or(false),
                ],
            )
            .map(|_| ())
        })?;
        self.ensure_default_user(name).await?;
        tracing::info!(sandbox = %name, template = %req.template_id, timeout, "E2B sandbox created");
        Ok(Sandbox {
            template_id: req.template_id,
            sandbox_id: name.to_string(),
            client_id: "banger".into(),
            envd_version: ENVD_VERSION.into(),
            envd_access_token: token,
            domain: None,
        })
    }

    fn template(&self, id: &str) -> Result<Template, E2bError> {
        if id.is_empty() || id == "base" {
            return Ok(Template::Default);
        }
        let images: Vec<String> = self.store.read(|c| {
            let mut stmt = c.prepare("SELECT name FROM images WHERE name = ?1")?;
            let rows = stmt.query_map([id], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        })?;
        if !images.is_empty() {
            return Ok(Template::Image(id.into()));
        }
        let snap: Option<String> = self.store.read(|c| {
            c.query_row("SELECT name FROM snapshots WHERE name = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        snap.map(Template::Snapshot)
            .ok_or_else(|| E2bError::NotFound {
                what: "template",
                name: id.into(),
            })
    }

    /// E2B's default user `user` (home /home/user), made once.
    async fn ensure_default_user(&self, name: &str) -> Result<(), E2bError> {
        let script = format!(
            "id -u {DEFAULT_USER} >/dev/null 2>&1 || useradd -m -s /bin/bash {DEFAULT_USER}"
        );
        let out = self
            .guests
            .exec(
                name,
                VmExecRequest {
                    argv: vec!["sh".into(), "-c".into(), script],
                    ..VmExecRequest::default()
                },
            )
            .await?;
        if out.exit_code != Some(0) {
            return Err(E2bError::Create(format!(
                "adding the guest user {DEFAULT_USER:?} failed: {}",
                out.stderr.trim()
            )));
        }
        Ok(())
    }

    fn rows(&self, uid: u32) -> Result<Vec<Row>, E2bError> {
        Ok(self.store.read(|c| -> rusqlite::Result<Vec<Row>> {
            let mut stmt = c.prepare(
                "SELECT v.name, s.template, s.metadata, s.started_at, s.end_at \
                FROM e2b_sandboxes s JOIN vms v ON v.id = s.vm_id \
                WHERE s.owner_uid = ?1 ORDER BY s.started_at DESC",
            )?;
            let rows = stmt.query_map([uid], |r| {
                let meta: String = r.get(2)?;
                Ok(Row {
                    name: r.get(0)?,
                    template: r.get(1)?,
                    metadata: serde_json::from_str(&meta).unwrap_or_default(),
                    started_at: r.get(3)?,
                    end_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })?)
    }

    fn detail(&self, row: &Row) -> Result<SandboxDetail, E2bError> {
        let vm = self.vms.get(&row.name)?;
        Ok(SandboxDetail {
            template_id: row.template.clone(),
            sandbox_id: row.name.clone(),
            client_id: "banger".into(),
            started_at: row.started_at.clone(),
            end_at: row.end_at.clone(),
            cpu_count: vm.cpus,
            memory_mb: u64::from(vm.memory_mib),
            disk_size_mb: vm.work_disk_bytes >> 20,
            metadata: row.metadata.clone(),
            state: if vm.state == VmState::Running {
                "running"
            } else {
                "paused"
            }
            .into(),
            envd_version: ENVD_VERSION.into(),
        })
    }

    /// The sandboxes of `key`'s owner whose metadata matches `filter`.
    pub fn list(&self, key: &Key, filter: Option<&str>) -> Result<Vec<SandboxDetail>, E2bError> {
        let mut out = Vec::new();
        for row in self.rows(key.owner_uid)? {
            if filter.is_some_and(|f| !model::metadata_matches(&row.metadata, f)) {
                continue;
            }
            if let Ok(d) = self.detail(&row) {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn row(&self, key: &Key, id: &str) -> Result<Row, E2bError> {
        self.rows(key.owner_uid)?
            .into_iter()
            .find(|r| r.name == id)
            .ok_or_else(|| E2bError::NotFound {
                what: "sandbox",
                name: id.into(),
            })
    }

    pub fn get(&self, key: &Key, id: &str) -> Result<SandboxDetail, E2bError> {
        self.detail(&self.row(key, id)?)
    }

    /// Kills a sandbox: its VM is removed.
    pub async fn kill(&self, key: &Key, id: &str) -> Result<(), E2bError> {
        let row = self.row(key, id)?;
        self.vms.remove(&row.name, true).await?;
        tracing::info!(sandbox = %id, "E2B sandbox killed");
        Ok(())
    }

    /// The sandbox ends `secs` from now.
    pub fn set_timeout(&self, key: &Key, id: &str, secs: u64) -> Result<(), E2bError> {
        if secs == 0 || secs > MAX_TIMEOUT_SECS {
            return Err(E2bError::Invalid {
                what: "timeout",
                reason: format!("{secs} s is not in 1..={MAX_TIMEOUT_SECS}"),
            });
        }
        let row = self.row(key, id)?;
        let end = Utc::now() + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX));
        let vm = self.vms.get(&row.name)?;
        self.store.write(|tx| {
            tx.execute(
                "UPDATE e2b_sandboxes SET end_at = ?2 WHERE vm_id = ?1",
                params![vm.id, end.to_rfc3339()],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Kills every sandbox whose time is up; returns their names.
    pub async fn reap(&self) -> Result<Vec<String>, E2bError> {
        let now = Utc::now();
        let due: Vec<(String, String)> = self.store.read(|c| -> rusqlite::Result<_> {
            let mut stmt = c.prepare(
                "SELECT v.name, s.end_at FROM e2b_sandboxes s JOIN vms v ON v.id = s.vm_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut gone = Vec::new();
        for (name, end) in due {
            let ended = DateTime::parse_from_rfc3339(&end).map_or(true, |e| e < now);
            if ended {
                match self.vms.remove(&name, true).await {
                    Ok(()) => {
                        tracing::info!(sandbox = %name, "E2B sandbox timed out; killed");
                        gone.push(name);
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %name, error = %e, "cannot kill a timed-out sandbox")
                    }
                }
            }
        }
        Ok(gone)
    }

    /// The VM an envd request for sandbox `id` goes to, when `token` is
    /// its access token.
    pub fn envd_target(&self, id: &str, token: Option<&str>) -> Result<String, EnvdRefusal> {
        let stored: Option<String> = self
            .store
            .read(|c| {
                c.query_row(
                    "SELECT s.token_sha256 FROM e2b_sandboxes s JOIN vms v ON v.id = s.vm_id \
                    WHERE v.name = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(|_| EnvdRefusal::NotFound)?;
        let Some(stored) = stored else {
            return Err(EnvdRefusal::NotFound);
        };
        match token {
            Some(t) if keys::digest(t) == stored => Ok(id.to_string()),
            _ => Err(EnvdRefusal::Token),
        }
    }

    /// The environment a sandbox was created with.
    pub fn env_of(&self, id: &str) -> BTreeMap<String, String> {
        self.store
            .read(|c| {
                c.query_row(
                    "SELECT s.env_vars FROM e2b_sandboxes s JOIN vms v ON v.id = s.vm_id \
                    WHERE v.name = ?1",
                    [id],
                    |r| r.get::<_, String>(0),
                )
                .optional()
            })
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }
}

/// Why an envd request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvdRefusal {
    NotFound,
    Token,
}

enum Template {
    Default,
    Image(String),
    Snapshot(String),
}
