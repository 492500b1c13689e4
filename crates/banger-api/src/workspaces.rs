//! `/v1/vms/{vm}/workspaces`, `/v1/auth`, `/v1/agents`: host repositories
//! pushed into guests and their commits exported back, credentials synced
//! into guests, and coding-agent profiles.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A host git repository pushed into a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    /// Unique per VM (default: the repository's directory name).
    pub name: String,
    pub vm: String,
    /// Where it came from on the host (where `workspace export` brings commits back).
    pub host_path: String,
    /// Its directory in the guest.
    pub dest: String,
    /// The host's HEAD commit when it was pushed: exports bring back the commits after it.
    pub base_commit: String,
    /// The host's branch when it was pushed (none: a detached HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    pub pushed_at: chrono::DateTime<chrono::Utc>,
    /// The guest commit the last export brought back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

/// One guest commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceCommit {
    pub id: String,
    pub subject: String,
}

/// `GET /v1/vms/{vm}/workspaces/{name}/changes`: what an export would bring back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceChanges {
    pub workspace: Workspace,
    /// The guest's HEAD commit.
    pub head: String,
    /// The guest's current branch (none: detached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_branch: Option<String>,
    /// Where the new commits start: the last exported commit, or the base.
    pub from: String,
    /// Commits after `from` up to `head`, oldest first.
    pub commits: Vec<WorkspaceCommit>,
    /// Commits after the base in all.
    pub total_commits: u64,
    /// Of the new commits: files changed, lines inserted and deleted.
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
    /// Uncommitted changes in the guest (not exported).
    pub dirty_files: u64,
    /// The guest rewrote the commits of the last export (an export must force).
    pub rewritten_since_export: bool,
}

/// `POST /v1/vms/{vm}/workspaces/{name}/exported`: records what an export brought back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceExported {
    pub commit: String,
}

/// A credential item `banger auth sync` copies (from `auth.items` in the daemon's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthItem {
    pub name: String,
    /// `file`, `git-identity` or `env`.
    pub kind: String,
    /// `file`: the host path (`~` is the caller's home); `env`: the variable's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `file`: the guest path, relative to the guest user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthItemList {
    pub items: Vec<AuthItem>,
}

/// One credential's value, read by the client from the caller's own files
/// and environment (the daemon never reads a user's files).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthValue {
    File {
        name: String,
        /// The file's bytes, base64.
        content_base64: String,
    },
    GitIdentity {
        name: String,
        user_name: String,
        user_email: String,
    },
    Env {
        name: String,
        value: String,
    },
}

impl AuthValue {
    pub fn name(&self) -> &str {
        match self {
            AuthValue::File { name, .. }
            | AuthValue::GitIdentity { name, .. }
            | AuthValue::Env { name, .. } => name,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            AuthValue::File { .. } => "file",
            AuthValue::GitIdentity { .. } => "git-identity",
            AuthValue::Env { .. } => "env",
        }
    }
}

/// Secrets never reach a log through `{:?}`.
impl std::fmt::Debug for AuthValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthValue({} {:?}, redacted)", self.kind(), self.name())
    }
}

/// `POST /v1/vms/{vm}/auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSyncRequest {
    pub values: Vec<AuthValue>,
}

/// What was written into the guest (never the values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSynced {
    pub name: String,
    pub kind: String,
    /// The guest file written (mode 0600).
    pub guest_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSyncReport {
    pub synced: Vec<AuthSynced>,
}

/// A coding-agent profile (built in, or a file in `agents.dir`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    pub name: String,
    pub description: String,
    /// `builtin` or the profile file's path.
    pub source: String,
    /// The command a session runs; `{prompt}` stands for the prompt.
    pub command: Vec<String>,
    /// Commands that must be on the guest's PATH.
    pub require: Vec<String>,
    /// The `auth.items` synced before a run.
    pub auth: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    /// Files written into the guest user's home before a run (paths only).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentList {
    pub agents: Vec<AgentProfile>,
}

/// `POST /v1/vms/{vm}/agent/run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRunRequest {
    /// The prompt, one argument to the agent's command.
    pub prompt: String,
    /// The agent (default: the VM's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A workspace of this VM to run in (its directory becomes the cwd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The session's name (default: the agent's name and a short id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}
