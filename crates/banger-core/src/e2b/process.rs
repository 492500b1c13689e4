//! envd's `process.Process/Start` over banger's exec stream: the program
//! runs through the guest agent like `vm exec`, and each frame it sends
//! becomes a Connect envelope of a `ProcessEvent`.

use std::time::Duration;

use banger_agent_proto::frame::{Frame, Kind};
use banger_agent_proto::msg::Reply;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::connect::{self, Code, ProcessEvent, StartRequest};
use super::E2b;

/// Envelopes queued ahead of a slow client.
const QUEUE: usize = 64;

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
        let ereq = banger_api::VmExecRequest {
            argv,
            env,
            cwd: req.process.cwd.clone(),
            user: Some(user),
            tty,
            ..banger_api::VmExecRequest::default()
        };
        let stdin_open = req.stdin == Some(true);
        let (guests, vm) = (self.guests.clone(), vm.to_string());
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
            relay(pid, frames, tty.is_some(), stdin_open, keepalive, tx).await;
        });
        rx
    }
}

/// Turns the agent's frames for process `pid` into envelopes on `tx`.
async fn relay(
    pid: u32,
    frames: crate::guest_agent::Frames,
    pty: bool,
    stdin_open: bool,
    keepalive: Duration,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let (mut sink, mut stream) = frames.split();
    if !stdin_open {
        let _ = sink.send(Frame::eof(Kind::In)).await;
    }
    if tx
        .send(ProcessEvent::Start { pid }.envelope())
        .await
        .is_err()
    {
        return;
    }
    let mut tick = tokio::time::interval(keepalive);
    tick.tick().await;
    loop {
        let fr = tokio::select! {
            f = stream.next() => f,
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
            Kind::Out if pty => ProcessEvent::Pty(fr.payload.to_vec()),
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
