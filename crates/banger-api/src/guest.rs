//! Programs and files in a running VM (through its guest agent):
//! `POST /v1/vms/{name}/exec` and `/v1/vms/{name}/files`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/vms/{name}/exec`: run a program in the VM.
///
/// With `Upgrade: banger-exec` the connection becomes a bidirectional
/// stream of frames (see docs/api.md: stdin in; stdout, stderr and the exit
/// out; resizes and signals in); without it, the program runs to its end
/// and the answer is a [`VmExecResult`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmExecRequest {
    /// The program and its arguments, exactly as they reach it (no shell:
    /// use `["sh", "-c", "..."]` for one).
    pub argv: Vec<String>,
    /// Added to the guest's login environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// A user name or uid in the guest (default: root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Stdin (one-shot form only; the stream form streams it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Run on a pseudo-terminal of this size (stream form only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TermSize>,
    /// Kill the program (its whole process group) after this many seconds
    /// (default: one hour; the one-shot form: 10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// The end of a one-shot exec. Output beyond 16 MiB per stream is dropped
/// and counted in `*_dropped_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmExecResult {
    /// Stdout as UTF-8 (invalid bytes replaced; see `stdout_base64`).
    pub stdout: String,
    pub stderr: String,
    /// The exact bytes, base64, only when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// The exit code; absent when a signal ended the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub stdout_dropped_bytes: u64,
    #[serde(default)]
    pub stderr_dropped_bytes: u64,
    /// `agent` or `ssh` (a guest without banger-agent).
    pub via: String,
}

/// A file or directory in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFile {
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Permission bits (e.g. 420 for 0644).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `GET /v1/vms/{name}/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileList {
    pub entries: Vec<GuestFile>,
}

/// `POST /v1/vms/{name}/files/mkdir`, `.../rm`, `.../mv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestFileOp {
    /// `mkdir -p`.
    Mkdir {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Remove a file or a directory (`recursive` for one not empty).
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    Move {
        from: String,
        to: String,
    },
}

/// A change under a watched directory (`GET .../files/watch`, SSE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestFileEvent {
    /// `create`, `modify`, `delete`, `move_from`, `move_to`, `overflow`.
    pub event: String,
    pub path: String,
    #[serde(default)]
    pub dir: bool,
}
