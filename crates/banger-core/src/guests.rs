//! Programs and files in running VMs, through each VM's banger-agent (SSH
//! for a one-shot exec in a guest without one). What the daemon's exec and
//! files endpoints call; requests are checked here before they reach a
//! guest.

use std::time::Duration;

use banger_agent_proto::frame::MAX_PAYLOAD;
use banger_agent_proto::msg::{self, ExecRequest, FileStat, Reply, Request};
use banger_api::{GuestFile, GuestFileOp, VmExecRequest, VmExecResult};
use base64::Engine;
use thiserror::Error;

use crate::guest_agent::{next_reply, AgentConn, AgentConnError, Frames};
use crate::vms::{VmError, Vms};

/// Output kept per stream by a one-shot exec.
pub const EXEC_OUTPUT_LIMIT: usize = 16 << 20;
/// A one-shot exec's default and largest timeout.
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A streamed exec's default timeout.
const STREAM_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a program may take to start (the agent forks it).
const START: Duration = Duration::from_secs(30);
/// The largest timeout anyone may ask for (a day).
const MAX_TIMEOUT: u64 = 86_400;

#[derive(Debug, Error)]
pub enum GuestsError {
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Agent(#[from] AgentConnError),
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("VM {0:?} has no banger-agent (an image made before it, or the daemon has none)")]
    NoAgent(String),
}

impl crate::ToApiError for GuestsError {
    fn code(&self) -> banger_api::ErrorCode {
        match self {
            GuestsError::Vm(e) => e.code(),
            GuestsError::Agent(e) => e.code(),
            GuestsError::Invalid { .. } => banger_api::ErrorCode::InvalidRequest,
            GuestsError::NoAgent(_) => banger_api::ErrorCode::Unavailable,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            GuestsError::Vm(e) => e.hint(),
            GuestsError::Agent(e) => e.hint(),
            GuestsError::NoAgent(_) => Some(
                "Restart the VM (banger vm restart NAME) to move it onto banger-agent; \
                 `banger doctor` says whether the daemon has one"
                    .into(),
            ),
            GuestsError::Invalid { .. } => None,
        }
    }
}

impl From<VmError> for GuestsError {
    fn from(e: VmError) -> Self {
        GuestsError::Vm(Box::new(e))
    }
}

fn invalid(what: &'static str, reason: impl Into<String>) -> GuestsError {
    GuestsError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// A guest path: absolute, no NUL byte. Pure.
pub fn check_path(p: &str) -> Result<(), GuestsError> {
    if !p.starts_with('/') || p.contains('\0') || p.len() > 4096 {
        return Err(invalid(
            "path",
            format!("{p:?} is not an absolute guest path"),
        ));
    }
    Ok(())
}

/// An exec request as the agent takes it; refused whole when any field is
/// wrong. `stream`: the streamed form (stdin and a PTY are its own). Pure.
pub fn agent_exec(req: &VmExecRequest, stream: bool) -> Result<ExecRequest, GuestsError> {
    if req.argv.first().is_none_or(|p| p.is_empty()) {
        return Err(invalid("command", "argv is empty"));
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("command", "an argument holds a NUL byte"));
    }
    for (k, v) in &req.env {
        let name_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok || v.contains('\0') {
            return Err(invalid("environment", format!("{k:?} is not a variable")));
        }
    }
    if let Some(c) = &req.cwd {
        check_path(c)?;
    }
    if let Some(t) = req.tty {
        if !stream {
            return Err(invalid(
                "tty",
                "a terminal needs the streamed form (Upgrade)",
            ));
        }
        if t.rows == 0 || t.cols == 0 {
            return Err(invalid("tty", "rows and cols must be above 0"));
        }
    }
    if stream && req.stdin.is_some() {
        return Err(invalid("stdin", "the streamed form streams stdin"));
    }
    let default = if stream {
        STREAM_TIMEOUT
    } else {
        ONE_SHOT_TIMEOUT
    };
    let secs = req.timeout_secs.unwrap_or(default.as_secs());
    if secs == 0 || secs > MAX_TIMEOUT || (!stream && secs > ONE_SHOT_TIMEOUT.as_secs()) {
        return Err(invalid("timeout", format!("{secs} s is out of range")));
    }
    let out = ExecRequest {
        argv: req.argv.clone(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        user: req.user.clone(),
        stdin: stream || req.stdin.is_some(),
        pty: req.tty.map(|t| msg::TermSize {
            rows: t.rows,
            cols: t.cols,
        }),
        timeout_ms: Some(secs * 1000),
    };
    // The request travels as one frame.
    let size = serde_json::to_vec(&Request::Exec(out.clone()))
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD {
        return Err(invalid(
            "command",
            format!("argv and environment take {size} bytes; at most {MAX_PAYLOAD} (pass data on stdin)"),
        ));
    }
    Ok(out)
}

/// Output bytes as the API gives them: UTF-8 text, and base64 when the
/// text lost bytes. Pure.
fn text(b: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(b).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    }
}

/// A mode as written in octal (`644`, `0755`). Pure.
pub fn parse_mode(s: Option<&str>) -> Result<Option<u32>, GuestsError> {
    let Some(s) = s else { return Ok(None) };
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(Some(m)),
        _ => Err(invalid(
            "mode",
            format!("{s:?} is not an octal mode like 644"),
        )),
    }
}

/// The API's view of an agent's stat.
pub fn guest_file(st: FileStat) -> GuestFile {
    GuestFile {
        path: st.path,
        kind: st.kind,
        size: st.size,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        mtime: st.mtime,
        target: st.target,
    }
}

/// Programs and files in running VMs. Cheap to clone.
#[derive(Clone)]
pub struct Guests {
    vms: Vms,
}

impl Guests {
    pub fn new(vms: Vms) -> Guests {
        Guests { vms }
    }

    async fn agent(&self, name: &str) -> Result<AgentConn, GuestsError> {
        let vm = self.vms.get(name)?;
        match self.vms.agent(&vm).await {
            Ok(c) => Ok(c),
            Err(VmError::AgentConn(e)) => {
                tracing::info!(vm = %name, error = %e, "no banger-agent answers");
                Err(GuestsError::NoAgent(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a program to its end: through banger-agent, else over SSH.
    pub async fn exec(&self, name: &str, req: VmExecRequest) -> Result<VmExecResult, GuestsError> {
        let areq = agent_exec(&req, false)?;
        let timeout = Duration::from_millis(areq.timeout_ms.unwrap_or(0));
        let stdin = req.stdin.as_ref().map(|s| s.as_bytes());
        match self.agent(name).await {
            Ok(c) => {
                let out = c
                    .exec_collect(areq, stdin, EXEC_OUTPUT_LIMIT, timeout)
                    .await?;
                let (stdout, stdout_base64) = text(&out.stdout);
                let (stderr, stderr_base64) = text(&out.stderr);
                Ok(VmExecResult {
                    stdout,
                    stderr,
                    stdout_base64,
                    stderr_base64,
                    exit_code: out.code,
                    signal: out.signal,
                    timed_out: out.timed_out,
                    stdout_dropped_bytes: out.dropped.0,
                    stderr_dropped_bytes: out.dropped.1,
                    via: "agent".into(),
                })
            }
            Err(GuestsError::NoAgent(_)) => self.exec_ssh(name, &req, stdin, timeout).await,
            Err(e) => Err(e),
        }
    }

    /// [`Guests::exec`] over SSH: the same argv, quoted word by word.
    async fn exec_ssh(
        &self,
        name: &str,
        req: &VmExecRequest,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<VmExecResult, GuestsError> {
        use std::os::unix::process::ExitStatusExt;
        let vm = self.vms.get(name)?;
        let mut line = String::new();
        if let Some(c) = &req.cwd {
            line.push_str(&format!("cd {} && ", crate::shell::quote(c)));
        }
        if !req.env.is_empty() {
            line.push_str("env ");
            for (k, v) in &req.env {
                line.push_str(&crate::shell::quote(&format!("{k}={v}")));
                line.push(' ');
            }
        }
        let argv: Vec<String> = req.argv.iter().map(|a| crate::shell::quote(a)).collect();
        line.push_str(&argv.join(" "));
        if let Some(u) = &req.user {
            line = format!(
                "su -s /bin/sh {} -c {}",
                crate::shell::quote(u),
                crate::shell::quote(&line)
            );
        }
        let input = stdin.map_or(crate::guest_ssh::GuestInput::None, |b| {
            crate::guest_ssh::GuestInput::Bytes(b.to_vec())
        });
        let out = self
            .vms
            .guest(&vm)?
            .exec(&line, input, timeout)
            .await
            .map_err(VmError::from)?;
        let cut = |b: &[u8]| {
            (
                b[..b.len().min(EXEC_OUTPUT_LIMIT)].to_vec(),
                b.len().saturating_sub(EXEC_OUTPUT_LIMIT) as u64,
            )
        };
        let (so, sd) = cut(&out.stdout);
        let (se, ed) = cut(&out.stderr);
        let (stdout, stdout_base64) = text(&so);
        let (stderr, stderr_base64) = text(&se);
        Ok(VmExecResult {
            stdout,
            stderr,
            stdout_base64,
            stderr_base64,
            exit_code: out.status.code(),
            signal: out.status.signal(),
            timed_out: false,
            stdout_dropped_bytes: sd,
            stderr_dropped_bytes: ed,
            via: "ssh".into(),
        })
    }

    /// Starts a program on a stream (banger-agent only): the frames after
    /// its `started` reply, for the caller to carry both ways.
    pub async fn exec_stream(
        &self,
        name: &str,
        req: VmExecRequest,
    ) -> Result<(u32, Frames), GuestsError> {
        let areq = agent_exec(&req, true)?;
        let c = self.agent(name).await?;
        let start = async {
            let mut f = c.open(&Request::Exec(areq)).await?;
            match next_reply(&mut f).await? {
                Reply::Started { pid } => Ok((pid, f)),
                other => Err(AgentConnError::Unexpected(format!("{other:?}"))),
            }
        };
        Ok(tokio::time::timeout(START, start)
            .await
            .map_err(|_| AgentConnError::Timeout(START.as_secs()))??)
    }

    /// A file's stat and a stream of its bytes from `offset` (at most
    /// `limit`): `Out` frames, then `Eof`.
    pub async fn read(
        &self,
        name: &str,
        path: &str,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<(GuestFile, Frames), GuestsError> {
        check_path(path)?;
        let c = self.agent(name).await?;
        let req = Request::Read {
            path: path.into(),
            offset,
            limit,
        };
        let mut f = c.open(&req).await?;
        match next_reply(&mut f).await? {
            Reply::Stat(st) => Ok((guest_file(st), f)),
            other => Err(AgentConnError::Unexpected(format!("{other:?}")).into()),
        }
    }

    /// A stream to write `path` with: send `In` frames, then `Eof`, then
    /// read the `stat` reply ([`finish_write`]).
    pub async fn write(
        &self,
        name: &str,
        path: &str,
        mode: Option<u32>,
        parents: bool,
    ) -> Result<Frames, GuestsError> {
        self.write_as(name, path, mode, parents, None).await
    }

    /// [`Guests::write`], the file (and parents it makes) owned by `owner`.
    pub async fn write_as(
        &self,
        name: &str,
        path: &str,
        mode: Option<u32>,
        parents: bool,
        owner: Option<String>,
    ) -> Result<Frames, GuestsError> {
        check_path(path)?;
        if mode.is_some_and(|m| m > 0o7777) {
            return Err(invalid("mode", "it is above 07777"));
        }
        let c = self.agent(name).await?;
        let req = Request::Write {
            path: path.into(),
            mode,
            owner,
            parents,
        };
        Ok(c.open(&req).await?)
    }

    pub async fn stat(&self, name: &str, path: &str) -> Result<GuestFile, GuestsError> {
        check_path(path)?;
        self.one(name, Request::Stat { path: path.into() }).await
    }

    /// The entries under a directory, `depth` levels down (at most 100,000).
    pub async fn list(
        &self,
        name: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<GuestFile>, GuestsError> {
        check_path(path)?;
        let c = self.agent(name).await?;
        let req = Request::List {
            path: path.into(),
            depth: depth.clamp(1, 64),
        };
        let mut f = c.open(&req).await?;
        let mut out = Vec::new();
        loop {
            match next_reply(&mut f).await? {
                Reply::Entries { entries } => out.extend(entries.into_iter().map(guest_file)),
                Reply::Ok => return Ok(out),
                other => return Err(AgentConnError::Unexpected(format!("{other:?}")).into()),
            }
        }
    }

    /// mkdir -p, remove, move; the resulting stat (none for a removal).
    pub async fn op(&self, name: &str, op: GuestFileOp) -> Result<Option<GuestFile>, GuestsError> {
        let req = match op {
            GuestFileOp::Mkdir { path, mode } => {
                check_path(&path)?;
                Request::Mkdir { path, mode }
            }
            GuestFileOp::Remove { path, recursive } => {
                check_path(&path)?;
                Request::Remove { path, recursive }
            }
            GuestFileOp::Move { from, to } => {
                check_path(&from)?;
                check_path(&to)?;
                Request::Move { from, to }
            }
        };
        let c = self.agent(name).await?;
        match c.call(&req, Duration::from_secs(60)).await? {
            Reply::Ok => Ok(None),
            Reply::Stat(st) => Ok(Some(guest_file(st))),
            other => Err(AgentConnError::Unexpected(format!("{other:?}")).into()),
        }
    }

    /// The events under a directory, as frames (`event` replies after the
    /// first `ok`), until the caller drops the stream.
    pub async fn watch(
        &self,
        name: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Frames, GuestsError> {
        check_path(path)?;
        let c = self.agent(name).await?;
        let req = Request::Watch {
            path: path.into(),
            recursive,
        };
        let mut f = c.open(&req).await?;
        match next_reply(&mut f).await? {
            Reply::Ok => Ok(f),
            other => Err(AgentConnError::Unexpected(format!("{other:?}")).into()),
        }
    }

    async fn one(&self, name: &str, req: Request) -> Result<GuestFile, GuestsError> {
        let c = self.agent(name).await?;
        match c.call(&req, Duration::from_secs(60)).await? {
            Reply::Stat(st) => Ok(guest_file(st)),
            other => Err(AgentConnError::Unexpected(format!("{other:?}")).into()),
        }
    }
}

/// Carries a streamed exec between a client's connection and the agent
/// until the program's end: the agent's frames (output, then its exit) go
/// to the client as they are; the client may send only stdin (`In`, `Eof`)
/// and controls (resize, signal), anything else ends the relay. A client
/// that leaves ends the stream, and the agent kills the program.
pub async fn relay_exec<T>(client: T, pid: u32, agent: Frames)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use banger_agent_proto::frame::{Frame, FrameCodec, Kind};
    use futures::{SinkExt, StreamExt};
    let mut c = tokio_util::codec::Framed::new(client, FrameCodec);
    let Ok(started) = Frame::json(&Reply::Started { pid }) else {
        return;
    };
    if c.send(started).await.is_err() {
        return;
    }
    let (mut csink, mut cstream) = c.split();
    let (mut asink, mut astream) = agent.split();
    loop {
        tokio::select! {
            f = astream.next() => {
                let Some(Ok(fr)) = f else { break };
                let end = fr.kind == Kind::Json
                    && matches!(fr.parse::<Reply>(), Ok(Reply::Exit { .. } | Reply::Error { .. }));
                if csink.send(fr).await.is_err() || end {
                    break;
                }
            }
            f = cstream.next() => {
                let Some(Ok(fr)) = f else { break };
                let allowed = match fr.kind {
                    Kind::In => true,
                    Kind::Eof => fr.eof_of().is_ok_and(|k| k == Kind::In),
                    Kind::Json => fr.parse::<msg::Control>().is_ok(),
                    _ => false,
                };
                if !allowed || asink.send(fr).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = csink.close().await;
}

/// A read's `Out` frames as a byte stream that ends at `Eof` (an error
/// reply or a broken stream end it with an error).
pub fn read_stream(
    f: Frames,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    use banger_agent_proto::frame::Kind;
    futures::stream::unfold(Some(f), |state| async move {
        use futures::StreamExt;
        let mut f = state?;
        loop {
            match f.next().await {
                Some(Ok(fr)) if fr.kind == Kind::Out => return Some((Ok(fr.payload), Some(f))),
                Some(Ok(fr)) if fr.kind == Kind::Eof => return None,
                Some(Ok(fr)) if fr.kind == Kind::Json => {
                    let why = match fr.parse::<Reply>() {
                        Ok(Reply::Error { message, .. }) => message,
                        _ => "an unexpected reply".into(),
                    };
                    return Some((Err(std::io::Error::other(why)), None));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some((Err(std::io::Error::other(e.to_string())), None)),
                None => {
                    let e = std::io::Error::other("the guest agent's stream ended early");
                    return Some((Err(e), None));
                }
            }
        }
    })
}

/// Sends `body` into a write stream in frames, then its end, and returns
/// the written file's stat.
pub async fn write_stream<S, E>(mut f: Frames, body: S) -> Result<GuestFile, GuestsError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use banger_agent_proto::frame::{Frame, Kind};
    use futures::{SinkExt, StreamExt};
    let mut body = body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| invalid("upload", format!("the body broke off: {e}")))?;
        let mut rest = chunk;
        while !rest.is_empty() {
            let part = rest.split_to(rest.len().min(MAX_PAYLOAD));
            f.send(Frame::data(Kind::In, part))
                .await
                .map_err(AgentConnError::from)?;
        }
    }
    f.send(Frame::eof(Kind::In))
        .await
        .map_err(AgentConnError::from)?;
    finish_write(&mut f).await
}

/// A watch's `event` replies as API events, until the stream ends.
pub fn watch_stream(f: Frames) -> impl futures::Stream<Item = banger_api::GuestFileEvent> + Send {
    futures::stream::unfold(f, |mut f| async move {
        loop {
            match next_reply(&mut f).await {
                Ok(Reply::Event(e)) => {
                    let ev = banger_api::GuestFileEvent {
                        event: e.event,
                        path: e.path,
                        dir: e.dir,
                    };
                    return Some((ev, f));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
}

/// The stat reply that ends a write.
pub async fn finish_write(f: &mut Frames) -> Result<GuestFile, GuestsError> {
    match next_reply(f).await? {
        Reply::Stat(st) => Ok(guest_file(st)),
        other => Err(AgentConnError::Unexpected(format!("{other:?}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> VmExecRequest {
        VmExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..VmExecRequest::default()
        }
    }

    #[test]
    fn exec_requests_are_checked_whole() {
        let ok = agent_exec(&req(&["true"]), false).expect("valid");
        assert_eq!(ok.timeout_ms, Some(600_000));
        assert!(!ok.stdin);
        assert!(agent_exec(&req(&[]), false).is_err());
        assert!(agent_exec(&req(&["a\0b"]), false).is_err());
        let mut r = req(&["true"]);
        r.env.insert("1X".into(), "v".into());
        assert!(agent_exec(&r, false).is_err());
        let mut r = req(&["true"]);
        r.cwd = Some("relative".into());
        assert!(agent_exec(&r, false).is_err());
        let mut r = req(&["true"]);
        r.tty = Some(banger_api::TermSize { rows: 24, cols: 80 });
        assert!(agent_exec(&r, false).is_err(), "a tty needs the stream");
        assert!(agent_exec(&r, true).is_ok_and(|a| a.pty.is_some() && a.stdin));
        let mut r = req(&["true"]);
        r.timeout_secs = Some(601);
        assert!(agent_exec(&r, false).is_err());
        assert!(agent_exec(&r, true).is_ok());
        let big = "x".repeat(MAX_PAYLOAD);
        assert!(agent_exec(&req(&["echo", &big]), false).is_err());
    }

    #[test]
    fn output_is_text_with_exact_bytes_when_needed() {
        assert_eq!(text(b"hi\n"), ("hi\n".into(), None));
        let (t, b) = text(&[0xff, b'a']);
        assert_eq!(t, "\u{fffd}a");
        assert_eq!(b.as_deref(), Some("/2E="));
        assert!(check_path("/ok/x").is_ok());
        assert!(check_path("x").is_err());
        assert_eq!(parse_mode(Some("0755")).ok(), Some(Some(0o755)));
        assert!(parse_mode(Some("999")).is_err());
        assert!(parse_mode(Some("17777")).is_err());
    }
}
