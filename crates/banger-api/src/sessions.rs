//! `/v1/sessions`: long-running commands in a guest that outlive the connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// Unique name (default: the command's name and a short id).
    pub name: String,
    pub id: String,
    pub vm: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `running`, `exited` (see `exit_code`), or `lost` (its process vanished
    /// without an exit code, e.g. the VM rebooted or stopped).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// It runs on a pseudo-terminal: its output (stdout and stderr as one,
    /// with the terminal's control sequences) is the stdout log.
    #[serde(default)]
    pub tty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// `POST /v1/vms/{vm}/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStartRequest {
    /// The command and its arguments (no shell: use `["sh", "-c", "..."]` for one).
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Working directory in the guest (must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Commands that must be on the guest's PATH.
    #[serde(default)]
    pub require: Vec<String>,
    /// Run it on a pseudo-terminal of this size (the guest needs `script`,
    /// from util-linux): for shells, editors and anything that asks
    /// whether it talks to a terminal. `attach` then is a real terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<crate::TermSize>,
}

/// `POST /v1/sessions/{name}/send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSendRequest {
    /// Bytes written to the session's stdin, as is (add "\n" for a line).
    pub text: String,
}

/// `POST /v1/sessions/{name}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSignalRequest {
    /// HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP, TSTP or WINCH (with or without SIG).
    pub signal: String,
}
