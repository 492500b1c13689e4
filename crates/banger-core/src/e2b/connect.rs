//! The Connect RPC protocol as the E2B SDKs speak it to envd: JSON codec;
//! unary calls are a plain JSON body, streams are enveloped messages (one
//! flags byte, a 4-byte big-endian length, the JSON), ended by an
//! end-of-stream envelope (flag 2) carrying `{}` or `{"error": ...}`. And
//! the `process.Process` messages in proto3's JSON form. Pure.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// The flag of the envelope that ends a stream.
pub const END_STREAM: u8 = 2;
/// The most one request envelope may carry.
pub const MAX_MESSAGE: usize = 4 << 20;

/// One envelope: flags, then the big-endian length, then `msg`.
pub fn envelope(flags: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(flags);
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The first envelope of `body`: its flags and message.
pub fn first_envelope(body: &[u8]) -> Result<(u8, &[u8]), String> {
    if body.len() < 5 {
        return Err("the stream request has no envelope".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(format!("a message of {len} bytes is over the limit"));
    }
    let msg = body
        .get(5..5 + len)
        .ok_or("the envelope is shorter than its length")?;
    Ok((body[0], msg))
}

/// A Connect error code's name (`not_found`, `invalid_argument`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    Unimplemented,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status a unary error is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument => 400,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Internal => 500,
        }
    }
}

/// The JSON of a Connect error.
pub fn error_json(code: Code, message: &str) -> Value {
    json!({ "code": code.as_str(), "message": message })
}

/// The end-of-stream envelope: clean, or with an error.
pub fn end_stream(error: Option<(Code, &str)>) -> Vec<u8> {
    let body = match error {
        None => json!({}),
        Some((code, message)) => json!({ "error": error_json(code, message) }),
    };
    envelope(END_STREAM, body.to_string().as_bytes())
}

/// `process.ProcessConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

/// `process.PTY`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Pty {
    #[serde(default)]
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PtySize {
    #[serde(default)]
    pub cols: u32,
    #[serde(default)]
    pub rows: u32,
}

/// `process.StartRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    pub process: ProcessConfig,
    #[serde(default)]
    pub pty: Option<Pty>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub stdin: Option<bool>,
}

/// A `process.StartResponse` (or `ConnectResponse`) carrying one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    Start {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
    End {
        exit_code: i32,
        exited: bool,
        status: String,
        error: Option<String>,
    },
    KeepAlive,
}

impl ProcessEvent {
    /// The response message in proto3 JSON (bytes as base64).
    pub fn to_json(&self) -> Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let event = match self {
            ProcessEvent::Start { pid } => json!({ "start": { "pid": pid } }),
            ProcessEvent::Stdout(b) => json!({ "data": { "stdout": b64(b) } }),
            ProcessEvent::Stderr(b) => json!({ "data": { "stderr": b64(b) } }),
            ProcessEvent::Pty(b) => json!({ "data": { "pty": b64(b) } }),
            ProcessEvent::End {
                exit_code,
                exited,
                status,
                error,
            } => {
                let mut end = json!({ "exitCode": exit_code, "exited": exited, "status": status });
                if let Some(e) = error {
                    end["error"] = json!(e);
                }
                json!({ "end": end })
            }
            ProcessEvent::KeepAlive => json!({ "keepalive": {} }),
        };
        json!({ "event": event })
    }

    /// Its envelope on a stream.
    pub fn envelope(&self) -> Vec<u8> {
        envelope(0, self.to_json().to_string().as_bytes())
    }
}

/// The status text envd gives a process's end.
pub fn end_status(code: Option<i32>, signal: Option<i32>) -> (i32, String) {
    match (code, signal) {
        (Some(c), _) => (c, format!("exit status {c}")),
        (None, Some(s)) => (-1, format!("signal: {s}")),
        (None, None) => (-1, "exited".into()),
    }
}

/// The user the SDK asks for: `Authorization: Basic base64(user:)`.
pub fn basic_user(header: &str) -> Option<String> {
    let b64 = header.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split(':').next()?.to_string();
    (!user.is_empty()).then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_are_bounded() {
        let e = envelope(0, b"{}");
        assert_eq!(e, [0, 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(first_envelope(&e), Ok((0, &b"{}"[..])));
        assert!(first_envelope(&[0, 0, 0]).is_err());
        assert!(first_envelope(&[0, 0, 0, 0, 9, b'x']).is_err(), "short");
        assert!(first_envelope(&[0, 0xff, 0, 0, 0]).is_err(), "huge");
        let end = end_stream(Some((Code::NotFound, "no")));
        assert_eq!(end[0], END_STREAM);
        let v: Value = serde_json::from_slice(&end[5..]).expect("json");
        assert_eq!(v["error"]["code"], "not_found");
    }

    #[test]
    fn start_requests_parse_as_the_sdk_sends_them() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"}},"stdin":false}"#,
        )
        .expect("parses");
        assert_eq!(r.process.args, ["-l", "-c", "echo hi"]);
        assert_eq!(r.process.envs["A"], "1");
        assert_eq!(r.stdin, Some(false));
    }

    #[test]
    fn events_are_proto3_json() {
        let v = ProcessEvent::Stdout(b"hi\n".to_vec()).to_json();
        assert_eq!(v, json!({ "event": { "data": { "stdout": "aGkK" } } }));
        let (code, status) = end_status(Some(3), None);
        let v = ProcessEvent::End {
            exit_code: code,
            exited: true,
            status,
            error: None,
        }
        .to_json();
        assert_eq!(v["event"]["end"]["exitCode"], 3);
        assert_eq!(v["event"]["end"]["status"], "exit status 3");
    }

    #[test]
    fn the_basic_user_is_read() {
        assert_eq!(basic_user("Basic dXNlcjo="), Some("user".into()));
        assert_eq!(basic_user("Basic cm9vdDo="), Some("root".into()));
        assert_eq!(basic_user("Bearer x"), None);
        assert_eq!(basic_user("Basic !!"), None);
    }
}
