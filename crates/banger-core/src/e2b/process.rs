//! envd's `process.Process` over banger's exec stream: Start runs the
//! program through the guest agent like `vm exec`, and each frame it sends
//! becomes a Connect envelope of a `ProcessEvent`. While it runs it is in
//! the sandbox's process table, so List, SendInput, CloseStdin, SendSignal
//! and Update (a PTY's size) reach it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_agent_proto::frame::{Frame, Kind};
use banger_agent_proto::msg::{Control, Reply};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::connect::{self, Code, ProcessEvent, StartRequest};
use super::E2b;

/// Envelopes queued ahead of a slow client.
const QUEUE: usize = 64;

/// What a running process can be sent.
#[derive(Debug)]
enum Input {
    Data(Vec<u8>),
    Eof,
    Signal(&'static str),
    Resize(banger_api::TermSize),
}

/// A running process, as List shows it and the control RPCs reach it.
struct Running {
    config: Value,
    tag: Option<String>,
    input: mpsc::Sender<Input>,
}

/// The running processes of every sandbox, by (VM, pid).
#[derive(Default, Clone)]
pub(super) struct Procs(Arc<Mutex<HashMap<(String, u32), Running>>>);

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Running>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `process.ProcessSelector`.
#[derive(Debug, Default, Deserialize)]
struct Selector {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ProcessInput {
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

/// The body of SendInput, SendSignal, CloseStdin and Update.
#[derive(Debug, Default, Deserialize)]
struct ControlReq {
    #[serde(default)]
    process: Selector,
    #[serde(default)]
    input: Option<ProcessInput>,
    #[serde(default)]
    signal: Option<Value>,
    #[serde(default)]
    pty: Option<connect::Pty>,
}

/// A `process.Signal` (name or number) as the agent's signal name. Pure.
fn signal_name(v: &Value) -> Option<&'static str> {
    match v {
        Value::String(s) if s == "SIGNAL_SIGKILL" => Some("KILL"),
        Value::String(s) if s == "SIGNAL_SIGTERM" => Some("TERM"),
        Value::Number(n) if n.as_u64() == Some(9) => Some("KILL"),
        Value::Number(n) if n.as_u64() == Some(15) => Some("TERM"),
        _ => None,
    }
}

impl E2b {
    /// Starts `req` in sandbox `vm` as `user`; the envelopes of its events
    /// (start, output, end, a keepalive every `keepalive`), ended by the
    /// end-of-stream envelope.
    pub fn start_process(
        &self,
        vm: &str,
        req: StartRequest,
        user: String,
        keepalive: Duration,
    ) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut env = self.env_of(vm);
        env.extend(req.process.envs.clone());
        let mut argv = vec![req.process.cmd.clone()];
        argv.extend(req.process.args.clone());
        let tty = req.pty.and_then(|p| p.size).map(|s| banger_api::TermSize {
            rows: u16::try_from(s.rows).unwrap_or(24),
            cols: u16::try_from(s.cols).unwrap_or(80),
        });
        let config = json!({
            "cmd": req.process.cmd,
            "args": req.process.args,
            "envs": req.process.envs,
            "cwd": req.process.cwd,
        });
        let ereq = banger_api::VmExecRequest {
            argv,
            env,
            cwd: req.process.cwd.clone(),
            user: Some(user),
            tty,
            ..banger_api::VmExecRequest::default()
        };
        // Old SDKs leave `stdin` out and mean "open"; a PTY's input is stdin.
        let stdin_open = req.stdin != Some(false) || tty.is_some();
        let (guests, vm, procs) = (self.guests.clone(), vm.to_string(), self.procs.clone());
        let tag = req.tag.clone();
        tokio::spawn(async move {
            let (pid, frames) = match guests.exec_stream(&vm, ereq).await {
                Ok(s) => s,
                Err(e) => {
                    let msg = crate::error::error_chain(&e);
                    let _ = tx
                        .send(connect::end_stream(Some((Code::Unavailable, &msg))))
                        .await;
                    return;
                }
            };
            let (in_tx, in_rx) = mpsc::channel(QUEUE);
            procs.lock().insert(
                (vm.clone(), pid),
                Running {
                    config,
                    tag,
                    input: in_tx,
                },
            );
            let io = Io {
                pty: tty.is_some(),
                stdin_open,
                keepalive,
            };
            relay(pid, frames, io, in_rx, tx).await;
            procs.lock().remove(&(vm, pid));
        });
        rx
    }

    /// The unary `process.Process` calls: List, SendInput, CloseStdin,
    /// SendSignal, Update. Their JSON answer.
    pub async fn process_call(
        &self,
        vm: &str,
        method: &str,
        body: &[u8],
    ) -> Result<Value, (Code, String)> {
        if method == "List" {
            let procs = self.procs.lock();
            let list: Vec<Value> = procs
                .iter()
                .filter(|((v, _), _)| v == vm)
                .map(|((_, pid), r)| {
                    let mut p = json!({ "config": r.config, "pid": pid });
                    if let Some(t) = &r.tag {
                        p["tag"] = json!(t);
                    }
                    p
                })
                .collect();
            return Ok(json!({ "processes": list }));
        }
        let c: ControlReq = serde_json::from_slice(body)
            .map_err(|e| (Code::InvalidArgument, format!("bad request: {e}")))?;
        let input = match method {
            "SendInput" => {
                let i = c.input.unwrap_or_default();
                let b64 = i.stdin.or(i.pty).unwrap_or_default();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| (Code::InvalidArgument, format!("bad input bytes: {e}")))?;
                Input::Data(data)
            }
            "CloseStdin" => Input::Eof,
            "SendSignal" => {
                let sig = c.signal.as_ref().and_then(signal_name).ok_or((
                    Code::InvalidArgument,
                    "the signal must be SIGTERM or SIGKILL".to_string(),
                ))?;
                Input::Signal(sig)
            }
            "Update" => {
                let size = c
                    .pty
                    .and_then(|p| p.size)
                    .ok_or((Code::InvalidArgument, "Update needs pty.size".to_string()))?;
                Input::Resize(banger_api::TermSize {
                    rows: u16::try_from(size.rows).unwrap_or(u16::MAX),
                    cols: u16::try_from(size.cols).unwrap_or(u16::MAX),
                })
            }
            other => {
                return Err((
                    Code::Unimplemented,
                    format!("banger's envd does not implement process.Process/{other} yet"),
                ))
            }
        };
        let sender = {
            let procs = self.procs.lock();
            procs
                .iter()
                .find(|((v, pid), r)| {
                    v == vm
                        && (c.process.pid == Some(*pid)
                            || (c.process.tag.is_some() && r.tag == c.process.tag))
                })
                .map(|(_, r)| r.input.clone())
        };
        let Some(sender) = sender else {
            return Err((Code::NotFound, "no such running process".into()));
        };
        sender
            .send(input)
            .await
            .map_err(|_| (Code::NotFound, "the process has ended".to_string()))?;
        Ok(json!({}))
    }
}

/// How a process's streams are relayed.
struct Io {
    pty: bool,
    stdin_open: bool,
    keepalive: Duration,
}

/// A control or input for the agent, as its frame.
fn input_frame(i: Input) -> Option<Frame> {
    match i {
        Input::Data(d) => Some(Frame::data(Kind::In, bytes::Bytes::from(d))),
        Input::Eof => Some(Frame::eof(Kind::In)),
        Input::Signal(s) => Frame::json(&Control::Signal { signal: s.into() }).ok(),
        Input::Resize(size) => {
            let size = banger_agent_proto::msg::TermSize {
                rows: size.rows,
                cols: size.cols,
            };
            Frame::json(&Control::Resize(size)).ok()
        }
    }
}

/// Turns the agent's frames for process `pid` into envelopes on `tx`, and
/// what `input` brings into frames for the agent.
async fn relay(
    pid: u32,
    frames: crate::guest_agent::Frames,
    io: Io,
    mut input: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let (mut sink, mut stream) = frames.split();
    if !io.stdin_open {
        let _ = sink.send(Frame::eof(Kind::In)).await;
    }
    if tx
        .send(ProcessEvent::Start { pid }.envelope())
        .await
        .is_err()
    {
        return;
    }
    let mut tick = tokio::time::interval(io.keepalive);
    tick.tick().await;
    loop {
        let fr = tokio::select! {
            f = stream.next() => f,
            Some(i) = input.recv() => {
                if let Some(fr) = input_frame(i) {
                    let _ = sink.send(fr).await;
                }
                continue;
            }
            _ = tick.tick() => {
                if tx.send(ProcessEvent::KeepAlive.envelope()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(Ok(fr)) = fr else {
            let end = connect::end_stream(Some((Code::Unavailable, "the guest closed the stream")));
            let _ = tx.send(end).await;
            return;
        };
        let ev = match fr.kind {
            Kind::Out if io.pty => ProcessEvent::Pty(fr.payload.to_vec()),
            Kind::Out => ProcessEvent::Stdout(fr.payload.to_vec()),
            Kind::Err => ProcessEvent::Stderr(fr.payload.to_vec()),
            Kind::Json => match fr.parse::<Reply>() {
                Ok(Reply::Exit { code, signal, .. }) => {
                    let (exit_code, status) = connect::end_status(code, signal);
                    let end = ProcessEvent::End {
                        exit_code,
                        exited: code.is_some(),
                        status,
                        error: None,
                    };
                    let _ = tx.send(end.envelope()).await;
                    let _ = tx.send(connect::end_stream(None)).await;
                    return;
                }
                Ok(Reply::Error { message, .. }) => {
                    let end = connect::end_stream(Some((Code::InvalidArgument, &message)));
                    let _ = tx.send(end).await;
                    return;
                }
                _ => continue,
            },
            _ => continue,
        };
        if tx.send(ev.envelope()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_read_by_name_or_number() {
        assert_eq!(signal_name(&json!("SIGNAL_SIGKILL")), Some("KILL"));
        assert_eq!(signal_name(&json!(15)), Some("TERM"));
        assert_eq!(signal_name(&json!("SIGNAL_UNSPECIFIED")), None);
    }
}
