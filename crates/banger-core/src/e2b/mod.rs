//! E2B on banger: API keys, and sandboxes that are banger VMs with a label
//! (a row in `e2b_sandboxes` next to the VM's: template, metadata, env,
//! when it ends, the envd token's digest). The HTTP side (control plane
//! and the envd adapter) is bangerd's e2b.rs; this is what it calls.

pub mod connect;
pub mod files;
pub mod keys;
pub mod model;
mod process;
mod rows;
mod sandboxes;
pub mod tokens;

use std::sync::Arc;

use banger_api::{VmCreateRequest, VmExecRequest};
use chrono::Utc;
use rusqlite::OptionalExtension;
use thiserror::Error;

use crate::access::Access;
use crate::guests::Guests;
use crate::names::NameError;
use crate::ops::Ops;
use crate::store::{Store, StoreError};
use crate::vms::{Snapshots, VmError, Vms};
use keys::Key;
use model::{NewSandbox, Sandbox, ENVD_VERSION};

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
    #[error("Cannot read or write {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Sandbox {id:?} is {state}: {what}")]
    WrongState {
        id: String,
        state: &'static str,
        what: &'static str,
    },
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
            E2bError::WrongState { .. } => ErrorCode::Conflict,
            E2bError::Vm(e) => e.code(),
            E2bError::Guest(e) => e.code(),
            E2bError::Ops(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }
}

/// The subsystems E2B is made of.
pub struct E2bParts {
    pub store: Arc<Store>,
    pub vms: Vms,
    pub guests: Guests,
    pub snapshots: Snapshots,
    pub ops: Ops,
    pub access: Access,
}

/// The E2B subsystem. Cheap to clone.
#[derive(Clone)]
pub struct E2b {
    store: Arc<Store>,
    vms: Vms,
    guests: Guests,
    ops: Ops,
    access: Access,
    snapshots: Snapshots,
    tokens: tokens::Tokens,
    /// Running envd processes (process.rs).
    procs: process::Procs,
}

impl E2b {
    /// The subsystem; `key_file` holds the access tokens' secret (made
    /// when missing).
    pub fn new(parts: E2bParts, key_file: &std::path::Path) -> Result<E2b, E2bError> {
        Ok(E2b {
            store: parts.store,
            vms: parts.vms,
            guests: parts.guests,
            ops: parts.ops,
            access: parts.access,
            snapshots: parts.snapshots,
            tokens: tokens::Tokens::load(key_file)?,
            procs: process::Procs::default(),
        })
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
        let now = Utc::now();
        let row = rows::Row {
            id: name.to_string(),
            owner_uid: key.owner_uid,
            template: req.template_id.clone(),
            metadata: req.metadata.unwrap_or_default(),
            env: req.env_vars.unwrap_or_default(),
            started_at: now.to_rfc3339(),
            end_at: rows::end_after(now, timeout),
            timeout_secs: timeout,
            auto_pause: req.auto_pause.unwrap_or(false),
            paused: None,
        };
        self.insert_row(&row, &key.id)?;
        self.ensure_default_user(name).await?;
        tracing::info!(sandbox = %name, template = %req.template_id, timeout, "E2B sandbox created");
        Ok(Sandbox {
            template_id: req.template_id,
            sandbox_id: name.to_string(),
            client_id: "banger".into(),
            envd_version: ENVD_VERSION.into(),
            envd_access_token: self.tokens.token(name),
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
}

/// Why an envd request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvdRefusal {
    NotFound,
    Token,
    /// It is paused: `connect` resumes it.
    Paused,
}

enum Template {
    Default,
    Image(String),
    Snapshot(String),
}
