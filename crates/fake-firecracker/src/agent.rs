//! The stand-in guest agent on the fake's vsock device: Firecracker's
//! `CONNECT <port>` / `OK <host port>`, then banger-agent's protocol (the
//! handshake, a yamux session) answering `ping`, `rename` and `reload`
//! with `ok` (there is no guest to apply them to) and refusing the rest.
//! Each request is logged to `FAKE_FC_AGENT_LOG` as `<op> <json>`.
//!
//! A hostile guest on demand: while a file `<vsock path>.junk` exists, a
//! request is answered with junk on the connection itself (a frame header
//! announcing 4 GiB, then bytes), as a guest gone bad would.

use std::io::Write;

use banger_agent_proto::frame::{Frame, FrameCodec, Kind};
use banger_agent_proto::handshake::{self, Lines};
use banger_agent_proto::msg::{ErrorKind, Reply, Request};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// Serves the stand-in agent on the vsock device's Unix socket at `path`.
pub fn serve(path: &std::path::Path) -> Result<(), String> {
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("Cannot create the vsock device at {}: {e}", path.display()))?;
    let junk = std::path::PathBuf::from(format!("{}.junk", path.display()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, junk.clone()));
        }
    });
    Ok(())
}

async fn connection(mut s: tokio::net::UnixStream, junk: std::path::PathBuf) {
    // Firecracker's CONNECT line, byte by byte.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 64 {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return;
        }
        line.push(b[0]);
    }
    if String::from_utf8_lossy(&line).trim() != "CONNECT 1024" {
        return;
    }
    if s.write_all(b"OK 1073741824\n").await.is_err() {
        return;
    }
    let mut lines = Lines::default();
    let mut buf = [0u8; 256];
    let nonce = 'greet: loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        for b in &buf[..n] {
            if let Some(l) = lines.push(*b) {
                if let Some(n) = handshake::parse_hello(&l) {
                    break 'greet n.to_string();
                }
            }
        }
    };
    let ok = handshake::ok(&nonce, "fake");
    if s.write_all(ok.as_bytes()).await.is_err() {
        return;
    }
    // A second handle on the connection, for the junk.
    let raw = std::os::fd::AsFd::as_fd(&s)
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from);
    let mut conn =
        yamux::Connection::new(s.compat(), yamux::Config::default(), yamux::Mode::Server);
    while let Some(Ok(stream)) = futures::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await {
        if junk.exists() {
            if let Ok(mut raw) = raw.as_ref() {
                // Non-blocking (it shares the socket's flags): a partial
                // write is junk enough.
                let mut bytes = vec![0u8, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
                bytes.extend(std::iter::repeat_n(0xa5, 64 << 10));
                let _ = raw.write_all(&bytes);
            }
            drop(stream);
            continue;
        }
        tokio::spawn(request(stream));
    }
}

async fn request(stream: yamux::Stream) {
    let mut f = Framed::new(stream.compat(), FrameCodec);
    let Some(Ok(first)) = f.next().await else {
        return;
    };
    if first.kind != Kind::Json {
        return;
    }
    let reply = match first.parse::<Request>() {
        Ok(req) => {
            log(&req, &first);
            match req {
                Request::Ping | Request::Rename { .. } | Request::Reload { .. } => Reply::Ok,
                _ => Reply::Error {
                    kind: ErrorKind::Failed,
                    message: "the fake guest cannot do that".into(),
                },
            }
        }
        Err(e) => Reply::Error {
            kind: ErrorKind::Invalid,
            message: e.to_string(),
        },
    };
    if let Ok(fr) = Frame::json(&reply) {
        let _ = f.send(fr).await;
    }
    let _ = f.close().await;
}

fn log(req: &Request, frame: &Frame) {
    let Some(p) = std::env::var_os("FAKE_FC_AGENT_LOG") else {
        return;
    };
    let op = serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(String::from))
        .unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        let _ = writeln!(f, "{op} {}", String::from_utf8_lossy(&frame.payload));
    }
}
