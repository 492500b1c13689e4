//! The JSON messages on a stream: the [`Request`] that opens it, then
//! [`Reply`]s from the agent and [`Control`]s from the daemon. Every
//! request names its operation in `op`; unknown fields are refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The first frame of every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Answered with [`Reply::Ok`].
    Ping,
    /// Take on a new name (hostname, /etc/hosts, `BANGER_VM`): a warm-pool
    /// VM being claimed.
    Rename { name: String },
    /// Re-read the config disk (swapped under a guest restored from a
    /// snapshot) and apply it live; set the clock to `epoch` and mix `seed`
    /// (hex) into the kernel's random pool.
    Reload { epoch: i64, seed: String },
    /// Run a program: [`Reply::Started`], output in `Out`/`Err` frames (or
    /// `Out` alone with a PTY), then [`Reply::Exit`].
    Exec(ExecRequest),
    /// A file's bytes from `offset` (at most `limit`): [`Reply::Stat`], then
    /// `Out` frames and an `Eof`.
    Read {
        path: String,
        #[serde(default)]
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Write a file from the `In` frames that follow (until `Eof`): into a
    /// temporary file beside it, renamed over it once complete; then
    /// [`Reply::Stat`].
    Write {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// Create missing parent directories.
        #[serde(default)]
        parents: bool,
    },
    /// [`Reply::Stat`] (no follow of a last symlink).
    Stat { path: String },
    /// [`Reply::Entries`] of a directory, `depth` levels deep (1: its own).
    List {
        path: String,
        #[serde(default = "one")]
        depth: u32,
    },
    /// `mkdir -p`.
    Mkdir {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Remove a file, or a directory (`recursive` for one not empty).
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Rename `from` to `to`.
    Move { from: String, to: String },
    /// [`Reply::Event`]s of changes under `path` until the stream closes.
    Watch {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// [`Reply::Ports`]: the listening sockets, from /proc/net.
    Ports,
    /// [`Reply::PortEvent`]s: `open` for each socket listening now, then
    /// one per socket opened or closed, until the stream closes.
    WatchPorts,
    /// [`Reply::Metrics`].
    Metrics,
}

fn one() -> u32 {
    1
}

/// A program to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments, as they are (no shell).
    pub argv: Vec<String>,
    /// Added to (and overriding) the agent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// A user name or uid (default: root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether `In` frames follow (else stdin is /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (stdout and stderr merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<TermSize>,
    /// Kill the process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// What the daemon may send on an exec stream after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    Resize(TermSize),
    /// A signal name (`INT`, `TERM`, ...) for the process group.
    Signal {
        signal: String,
    },
}

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Ok,
    /// The request failed; `kind` says how (for the daemon's error codes).
    Error {
        kind: ErrorKind,
        message: String,
    },
    Started {
        pid: u32,
    },
    /// The program ended: its exit code, or the signal that ended it.
    Exit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default)]
        timed_out: bool,
    },
    Stat(FileStat),
    Entries {
        entries: Vec<FileStat>,
    },
    Event(WatchEvent),
    Ports {
        ports: Vec<ListenPort>,
    },
    /// A socket opened (`open`) or closed (`close`).
    PortEvent {
        event: String,
        port: ListenPort,
    },
    Metrics(GuestMetrics),
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such file, directory, user or program.
    NotFound,
    /// Permission denied.
    Denied,
    /// Already exists, not empty, not a directory, ...
    Conflict,
    /// The request itself is wrong (bad argv, bad path).
    Invalid,
    /// Anything else.
    Failed,
}

/// A file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStat {
    /// The path asked for (entries: the path of each).
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A change under a watched path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchEvent {
    /// `create`, `modify`, `delete`, `move_from`, `move_to`, or `overflow`.
    pub event: String,
    pub path: String,
    #[serde(default)]
    pub dir: bool,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenPort {
    /// `tcp` or `udp`.
    pub proto: String,
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The guest's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestMetrics {
    pub load: [f64; 3],
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub root_used_bytes: u64,
    pub root_total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_total_bytes: Option<u64>,
    pub uptime_secs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_and_strict() {
        let r = Request::Exec(ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        });
        let j = serde_json::to_value(&r).expect("encode");
        assert_eq!(j["op"], "exec");
        assert_eq!(serde_json::from_value::<Request>(j).expect("decode"), r);
        let bad = serde_json::json!({"op": "exec", "argv": ["x"], "shell": true});
        assert!(serde_json::from_value::<Request>(bad).is_err());
        let list: Request = serde_json::from_str(r#"{"op":"list","path":"/"}"#).expect("list");
        assert_eq!(
            list,
            Request::List {
                path: "/".into(),
                depth: 1
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        let exit = Reply::Exit {
            code: Some(7),
            signal: None,
            timed_out: false,
        };
        let j = serde_json::to_string(&exit).expect("encode");
        assert_eq!(j, r#"{"reply":"exit","code":7,"timed_out":false}"#);
    }
}
