//! One connection: the handshake, then a yamux session in which the daemon
//! opens one stream per request. A stream's first frame is the request;
//! each is served in a task of its own, so a long exec never blocks a ping.

use std::time::Duration;

use banger_agent_proto::frame::{FrameCodec, Kind};
use banger_agent_proto::handshake::{self, Lines};
use banger_agent_proto::msg::{ErrorKind, Reply, Request};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::channel::Io;
use crate::reply::{error, reply, Frames};

/// The most streams one session may have open at once.
const MAX_STREAMS: usize = 256;

/// Serves one connection until it ends.
pub async fn connection(mut io: Box<dyn Io>) {
    // A daemon still in a session with an earlier agent on this port (one
    // that died) takes this line as a broken frame, ends that session and
    // greets again; a daemon greeting skips it.
    if io.write_all(handshake::RESET.as_bytes()).await.is_err() {
        return;
    }
    let Some(()) = greet(&mut io).await else {
        return;
    };
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(MAX_STREAMS);
    let mut conn = yamux::Connection::new(io.compat(), cfg, yamux::Mode::Server);
    loop {
        let next = futures::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await;
        match next {
            Some(Ok(stream)) => {
                tokio::spawn(stream_task(stream));
            }
            Some(Err(e)) => {
                eprintln!("banger-agent: session ended: {e}");
                return;
            }
            None => return,
        }
    }
}

/// Waits for the daemon's greeting (skipping anything else, bounded per
/// line) and answers it. `None` when the connection ends first.
async fn greet(io: &mut Box<dyn Io>) -> Option<()> {
    let mut lines = Lines::default();
    let mut buf = [0u8; 512];
    loop {
        let n = io.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        for b in &buf[..n] {
            let Some(line) = lines.push(*b) else { continue };
            if let Some(nonce) = handshake::parse_hello(&line) {
                let answer = handshake::ok(nonce, env!("CARGO_PKG_VERSION"));
                io.write_all(answer.as_bytes()).await.ok()?;
                io.flush().await.ok()?;
                return Some(());
            }
        }
    }
}

async fn stream_task(stream: yamux::Stream) {
    let mut frames = Framed::new(stream.compat(), FrameCodec);
    let first = tokio::time::timeout(Duration::from_secs(30), frames.next()).await;
    let req = match first {
        Ok(Some(Ok(f))) if f.kind == Kind::Json => f.parse::<Request>(),
        _ => return,
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            let _ = reply(&mut frames, error(ErrorKind::Invalid, e.to_string())).await;
            return;
        }
    };
    if let Err(e) = dispatch(&mut frames, req).await {
        let _ = reply(&mut frames, e).await;
    }
    let _ = frames.close().await;
}

async fn dispatch(f: &mut Frames, req: Request) -> Result<(), Reply> {
    let answer = match req {
        Request::Ping => Reply::Ok,
        Request::Rename { name } => {
            crate::system::rename(&name).await?;
            Reply::Ok
        }
        Request::Reload { epoch, seed } => {
            crate::system::reload(epoch, &seed).await?;
            Reply::Ok
        }
        Request::Ports => crate::system::ports().await?,
        Request::WatchPorts => return crate::system::watch_ports(f).await,
        Request::Metrics => crate::system::metrics().await?,
        Request::Exec(e) => return crate::exec::run(f, e).await,
        Request::Read {
            path,
            offset,
            limit,
        } => return crate::files::read(f, &path, offset, limit).await,
        Request::Write {
            path,
            mode,
            owner,
            parents,
        } => return crate::files::write(f, &path, mode, owner.as_deref(), parents).await,
        Request::Watch { path, recursive } => return crate::watch::run(f, &path, recursive).await,
        Request::List { path, depth } => return crate::files::list(f, &path, depth).await,
        other => crate::files::simple(other).await?,
    };
    reply(f, answer).await
}
