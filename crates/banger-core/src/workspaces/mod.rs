//! Workspaces: a host git repository pushed into a guest, and the guest's
//! commits exported back.
//!
//! The client packs the repository as the calling user (so the daemon never
//! reads a user's files) into one tar stream: a git bundle of HEAD, the
//! staged diff, the changed and untracked files, and the deleted paths. The
//! daemon streams it over the VM's SSH connection into a guest script
//! ([`script::push_script`]) and records the base commit. An export asks the
//! guest what changed since the base (or the last export), then hands the
//! client a git bundle of those commits; the client fetches it into a branch
//! of the host repository, never touching the working tree.

pub mod script;

use std::time::Duration;

use banger_api::{Workspace, WorkspaceChanges, WorkspaceCommit};
use rusqlite::{params, OptionalExtension, Row};
use thiserror::Error;

use crate::guest_ssh::GuestInput;
use crate::names::{validate_name, NameError};
use crate::store::{Store, StoreError};
use crate::vms::{VmError, Vms};
use crate::ToApiError;

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("VM {vm:?} has no workspace named {name:?}")]
    NotFound { vm: String, name: String },
    #[error("VM {vm:?} has no workspace")]
    NoneInVm { vm: String },
    #[error("VM {vm:?} has several workspaces ({}); say which", names.join(", "))]
    Ambiguous { vm: String, names: Vec<String> },
    #[error("{dest} already exists in VM {vm:?}")]
    Exists { vm: String, dest: String },
    #[error("git is not installed in VM {0:?}")]
    NoGit(String),
    #[error("The guest's history in {dest} no longer contains the base commit {base} (head is {head}): it was rewritten or reset")]
    BaseGone {
        dest: String,
        base: String,
        head: String,
    },
    #[error("The guest's HEAD in {dest} is detached at {head}; the workspace was pushed on branch {branch:?}")]
    Detached {
        dest: String,
        head: String,
        branch: String,
    },
    #[error(
        "The workspace directory {dest} is missing in VM {vm:?}, or is no longer a git repository"
    )]
    Missing { vm: String, dest: String },
    #[error("The guest answered unexpectedly: {0}")]
    Guest(String),
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Transport(#[from] crate::vms::GuestCmdError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<VmError> for WorkspaceError {
    fn from(e: VmError) -> Self {
        WorkspaceError::Vm(Box::new(e))
    }
}

impl From<rusqlite::Error> for WorkspaceError {
    fn from(e: rusqlite::Error) -> Self {
        WorkspaceError::Store(StoreError::Sqlite(e))
    }
}

impl ToApiError for WorkspaceError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode as C;
        match self {
            WorkspaceError::Name(_)
            | WorkspaceError::Invalid { .. }
            | WorkspaceError::Ambiguous { .. } => C::InvalidRequest,
            WorkspaceError::NotFound { .. } | WorkspaceError::NoneInVm { .. } => C::NotFound,
            WorkspaceError::Exists { .. }
            | WorkspaceError::BaseGone { .. }
            | WorkspaceError::Detached { .. }
            | WorkspaceError::Missing { .. }
            | WorkspaceError::NoGit(_) => C::Conflict,
            WorkspaceError::Vm(e) => e.code(),
            WorkspaceError::Transport(e) => e.code(),
            _ => C::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            WorkspaceError::NotFound { vm, .. } | WorkspaceError::NoneInVm { vm } => {
                format!("List them with `banger workspace ls {vm}`; push one with `banger workspace push {vm} PATH`")
            }
            WorkspaceError::Ambiguous { .. } => "Pass --name NAME".into(),
            WorkspaceError::Exists { .. } => {
                "Pass --dest for another directory, or --force to replace it (commits made there and not exported are lost)".into()
            }
            WorkspaceError::NoGit(_) => {
                "Install git in the guest (apt-get install git), or use an image built by banger (git is in every one)".into()
            }
            WorkspaceError::BaseGone { .. } => {
                "Nothing was exported. Rebase the guest's work onto the base commit, or push the workspace again (banger workspace push --force)".into()
            }
            WorkspaceError::Detached { branch, .. } => format!(
                "Nothing was exported. In the guest, put the work on a branch (git switch {branch}, or git switch -c NEW) and export again"
            ),
            WorkspaceError::Missing { .. } => {
                "Push it again (banger workspace push --force), or forget it (banger workspace rm)".into()
            }
            WorkspaceError::Vm(e) => return e.hint(),
            WorkspaceError::Transport(e) => return e.hint(),
            _ => return None,
        })
    }
}

/// A push's parameters (the tar stream comes separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushParams {
    pub name: String,
    pub dest: Option<String>,
    pub host_path: String,
    pub base: String,
    pub branch: Option<String>,
    pub force: bool,
}

/// The guest directory workspaces go to by default (the work disk).
pub const DEFAULT_ROOT: &str = "/work";

/// The most of an export bundle read from the guest at once.
pub const BUNDLE_CHUNK: u64 = 4 << 20;

/// An export bundle: its size, and its bytes as they are read.
pub struct Bundle {
    pub size: u64,
    pub chunks: futures::stream::BoxStream<'static, Result<bytes::Bytes, WorkspaceError>>,
}

/// The guest file `path` (`size` bytes) read in chunks; removed once read.
fn bundle_chunks(
    cmd: crate::vms::GuestCmd,
    path: String,
    size: u64,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, WorkspaceError>> {
    use futures::StreamExt;
    let cmd = std::sync::Arc::new(cmd);
    futures::stream::try_unfold(0u64, move |offset| {
        let (cmd, path) = (cmd.clone(), path.clone());
        async move {
            if offset >= size {
                let rm = format!("rm -f -- {}", crate::shell::quote(&path));
                let _ = cmd.run(&rm, None).await;
                return Ok(None);
            }
            let want = BUNDLE_CHUNK.min(size - offset);
            let data = cmd.read_range(&path, offset, want).await?;
            if data.is_empty() || data.len() as u64 > want {
                return Err(WorkspaceError::Guest(format!(
                    "the export bundle changed while it was read ({} bytes at {offset} of {size})",
                    data.len()
                )));
            }
            let next = offset + data.len() as u64;
            Ok(Some((bytes::Bytes::from(data), next)))
        }
    })
    .boxed()
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// A branch name git accepts (a conservative subset of check-ref-format). Pure.
pub fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c))
}

/// An absolute, normalized guest path that is not `/`. Pure.
pub fn valid_dest(d: &str) -> bool {
    d.starts_with('/')
        && d.len() > 1
        && d.len() <= 1024
        && !d.contains('\0')
        && d[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

impl PushParams {
    /// Checks every value; returns the resolved destination. Pure.
    pub fn validate(&self) -> Result<String, WorkspaceError> {
        validate_name("workspace", &self.name)?;
        let dest = self
            .dest
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_ROOT}/{}", self.name));
        if !valid_dest(&dest) {
            return Err(WorkspaceError::Invalid {
                what: "destination",
                reason: format!("{dest:?} is not an absolute guest path without `..` (and not /)"),
            });
        }
        if !is_commit_id(&self.base) {
            return Err(WorkspaceError::Invalid {
                what: "base commit",
                reason: format!("{:?} is not a commit id", self.base),
            });
        }
        if let Some(b) = &self.branch {
            if !valid_branch(b) {
                return Err(WorkspaceError::Invalid {
                    what: "branch",
                    reason: format!("{b:?} is not a branch name banger accepts"),
                });
            }
        }
        if !self.host_path.starts_with('/') || self.host_path.contains('\0') {
            return Err(WorkspaceError::Invalid {
                what: "host path",
                reason: format!("{:?} is not an absolute path", self.host_path),
            });
        }
        Ok(dest)
    }
}

#[derive(Clone)]
pub struct Workspaces {
    store: std::sync::Arc<Store>,
    vms: Vms,
}

const COLUMNS: &str = "w.name, v.name, w.host_path, w.dest, w.base_commit, w.branch, w.pushed_at, w.exported_commit, w.exported_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Workspace> {
    let time = |s: String| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default()
    };
    Ok(Workspace {
        name: r.get(0)?,
        vm: r.get(1)?,
        host_path: r.get(2)?,
        dest: r.get(3)?,
        base_commit: r.get(4)?,
        branch: r.get(5)?,
        pushed_at: time(r.get(6)?),
        exported_commit: r.get(7)?,
        exported_at: r.get::<_, Option<String>>(8)?.map(time),
    })
}

impl Workspaces {
    pub fn new(store: std::sync::Arc<Store>, vms: Vms) -> Workspaces {
        Workspaces { store, vms }
    }

    /// Streams `input` (the client's tar) into the guest and records the workspace.
    pub async fn push(
        &self,
        vm_name: &str,
        p: PushParams,
        input: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    ) -> Result<Workspace, WorkspaceError> {
        let vm = self.vms.get(vm_name)?;
        let dest = p.validate()?;
        let existing = self.lookup(vm_name, &p.name)?;
        if existing.is_some() && !p.force {
            return Err(WorkspaceError::Exists {
                vm: vm.name.clone(),
                dest: format!("workspace {:?} ({})", p.name, dest),
            });
        }
        let text = script::push_script(&dest, &p.base, p.branch.as_deref(), p.force);
        let command = format!("#!/bin/bash\n{text}");
        let out = self
            .vms
            .commands(&vm)
            .await?
            .exec(
                &command,
                GuestInput::Reader(input),
                Duration::from_secs(3600),
            )
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match out.status.code() {
            Some(0) => {}
            Some(script::EXIT_EXISTS) => {
                return Err(WorkspaceError::Exists {
                    vm: vm.name.clone(),
                    dest,
                })
            }
            Some(script::EXIT_NO_GIT) => return Err(WorkspaceError::NoGit(vm.name.clone())),
            _ => {
                return Err(WorkspaceError::Guest(format!(
                    "the push failed ({}): {stderr}",
                    out.status
                )))
            }
        }
        let now = chrono::Utc::now().to_rfc3339();
        self.store.write(|tx| -> Result<(), WorkspaceError> {
            tx.execute(
                "INSERT OR REPLACE INTO workspaces (vm_id, name, host_path, \
                dest, base_commit, branch, pushed_at, exported_commit, \
                exported_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)",
                params![vm.id, p.name, p.host_path, dest, p.base, p.branch, now],
            )?;
            Ok(())
        })?;
        tracing::info!(vm = %vm.name, workspace = %p.name, %dest, base = %p.base, "workspace pushed");
        self.get(vm_name, Some(&p.name))
    }

    fn lookup(&self, vm: &str, name: &str) -> Result<Option<Workspace>, WorkspaceError> {
        Ok(self.store.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM workspaces w JOIN vms v ON v.id = w.vm_id \
                    WHERE v.name = ?1 AND w.name = ?2"
                ),
                [vm, name],
                from_row,
            )
            .optional()
        })?)
    }

    /// Workspaces of one VM, or of all.
    pub fn list(&self, vm: Option<&str>) -> Result<Vec<Workspace>, WorkspaceError> {
        if let Some(v) = vm {
            self.vms.get(v)?;
        }
        self.store
            .read(|c| -> Result<Vec<Workspace>, WorkspaceError> {
                let mut stmt = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM workspaces w JOIN vms v ON v.id = w.vm_id \
                    WHERE ?1 IS NULL OR v.name = ?1 ORDER BY v.name, w.name"
                ))?;
                let rows = stmt.query_map([vm], from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
    }

    /// One workspace of a VM; `None`: the VM's only one.
    pub fn get(&self, vm: &str, name: Option<&str>) -> Result<Workspace, WorkspaceError> {
        match name {
            Some(n) => {
                validate_name("workspace", n)?;
                self.vms.get(vm)?;
                self.lookup(vm, n)?.ok_or_else(|| WorkspaceError::NotFound {
                    vm: vm.into(),
                    name: n.into(),
                })
            }
            None => {
                let mut all = self.list(Some(vm))?;
                match all.len() {
                    0 => Err(WorkspaceError::NoneInVm { vm: vm.into() }),
                    1 => Ok(all.remove(0)),
                    _ => Err(WorkspaceError::Ambiguous {
                        vm: vm.into(),
                        names: all.into_iter().map(|w| w.name).collect(),
                    }),
                }
            }
        }
    }

    /// What an export would bring back now.
    pub async fn changes(
        &self,
        vm_name: &str,
        name: Option<&str>,
    ) -> Result<WorkspaceChanges, WorkspaceError> {
        let ws = self.get(vm_name, name)?;
        let vm = self.vms.get(vm_name)?;
        let text = script::changes_script(&ws.dest, &ws.base_commit, ws.exported_commit.as_deref());
        let out = self
            .vms
            .commands(&vm)
            .await?
            .exec(
                &format!("#!/bin/bash\n{text}"),
                GuestInput::None,
                Duration::from_secs(300),
            )
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(0) => {}
            Some(script::EXIT_MISSING) => {
                return Err(WorkspaceError::Missing {
                    vm: vm.name.clone(),
                    dest: ws.dest.clone(),
                })
            }
            Some(script::EXIT_BASE_GONE) => {
                return Err(WorkspaceError::BaseGone {
                    dest: ws.dest.clone(),
                    base: ws.base_commit.clone(),
                    head: stdout
                        .lines()
                        .find_map(|l| l.strip_prefix("head "))
                        .unwrap_or("?")
                        .to_string(),
                })
            }
            _ => {
                return Err(WorkspaceError::Guest(format!(
                    "describing the commits failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        let c = script::parse_changes(&stdout).map_err(WorkspaceError::Guest)?;
        if let (Some(branch), None) = (&ws.branch, &c.branch) {
            return Err(WorkspaceError::Detached {
                dest: ws.dest.clone(),
                head: c.head.clone(),
                branch: branch.clone(),
            });
        }
        Ok(WorkspaceChanges {
            workspace: ws,
            head: c.head,
            guest_branch: c.branch,
            from: c.from,
            commits: c
                .commits
                .into_iter()
                .map(|(id, subject)| WorkspaceCommit { id, subject })
                .collect(),
            total_commits: c.total,
            files_changed: c.files,
            insertions: c.insertions,
            deletions: c.deletions,
            dirty_files: c.dirty,
            rewritten_since_export: c.rewritten,
        })
    }

    /// A git bundle of the guest's commits from the base to `head` (which
    /// must descend from the base), under `refs/banger/export`: written to
    /// a file in the guest, then streamed from it in chunks of at most
    /// [`BUNDLE_CHUNK`] (the daemon never holds it whole).
    pub async fn bundle(
        &self,
        vm_name: &str,
        name: Option<&str>,
        head: &str,
    ) -> Result<Bundle, WorkspaceError> {
        if !is_commit_id(head) {
            return Err(WorkspaceError::Invalid {
                what: "head",
                reason: format!("{head:?} is not a commit id"),
            });
        }
        let ws = self.get(vm_name, name)?;
        let vm = self.vms.get(vm_name)?;
        if head == ws.base_commit {
            return Err(WorkspaceError::Invalid {
                what: "head",
                reason: "it is the base commit: there is nothing to export".into(),
            });
        }
        let path = script::bundle_path(&ws.name);
        let text = script::bundle_script(&ws.dest, &ws.base_commit, head, &path);
        let cmd = self.vms.commands(&vm).await?;
        let out = cmd
            .exec(
                &format!("#!/bin/bash\n{text}"),
                GuestInput::None,
                Duration::from_secs(1800),
            )
            .await?;
        if !out.status.success() {
            return Err(WorkspaceError::Guest(format!(
                "git bundle failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let size = script::parse_bundle_size(&String::from_utf8_lossy(&out.stdout))
            .map_err(WorkspaceError::Guest)?;
        Ok(Bundle {
            size,
            chunks: bundle_chunks(cmd, path, size),
        })
    }

    /// Records that the client brought `commit` back.
    pub fn exported(
        &self,
        vm_name: &str,
        name: Option<&str>,
        commit: &str,
    ) -> Result<Workspace, WorkspaceError> {
        if !is_commit_id(commit) {
            return Err(WorkspaceError::Invalid {
                what: "commit",
                reason: format!("{commit:?} is not a commit id"),
            });
        }
        let ws = self.get(vm_name, name)?;
        let vm = self.vms.get(vm_name)?;
        let now = chrono::Utc::now().to_rfc3339();
        self.store.write(|tx| {
            tx.execute(
                "UPDATE workspaces SET exported_commit = ?3, exported_at = ?4 \
                WHERE vm_id = ?1 AND name = ?2",
                params![vm.id, ws.name, commit, now],
            )
            .map(|_| ())
        })?;
        tracing::info!(vm = %vm.name, workspace = %ws.name, %commit, "workspace exported");
        self.get(vm_name, Some(&ws.name))
    }

    /// Forgets a workspace (its files stay in the guest).
    pub fn remove(&self, vm_name: &str, name: &str) -> Result<(), WorkspaceError> {
        let ws = self.get(vm_name, Some(name))?;
        let vm = self.vms.get(vm_name)?;
        self.store.write(|tx| {
            tx.execute(
                "DELETE FROM workspaces WHERE vm_id = ?1 AND name = ?2",
                params![vm.id, ws.name],
            )
            .map(|_| ())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PushParams {
        PushParams {
            name: "repo".into(),
            dest: None,
            host_path: "/home/u/repo".into(),
            base: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: Some("feature/x".into()),
            force: false,
        }
    }

    #[test]
    fn push_params_are_checked() {
        assert_eq!(params().validate().expect("valid"), "/work/repo");
        let bad = [
            PushParams {
                name: "Bad Name".into(),
                ..params()
            },
            PushParams {
                dest: Some("work/x".into()),
                ..params()
            },
            PushParams {
                dest: Some("/work/../etc".into()),
                ..params()
            },
            PushParams {
                dest: Some("/".into()),
                ..params()
            },
            PushParams {
                base: "HEAD".into(),
                ..params()
            },
            PushParams {
                branch: Some("-x".into()),
                ..params()
            },
            PushParams {
                branch: Some("a..b".into()),
                ..params()
            },
            PushParams {
                branch: Some("a b".into()),
                ..params()
            },
            PushParams {
                host_path: "rel".into(),
                ..params()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}
