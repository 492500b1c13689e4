//! How the daemon reaches a VM's agent, per backend:
//!
//! - QEMU: a virtio-serial port whose host side is a Unix socket QEMU
//!   listens on (`chardev socket,server=on,wait=off`); one client at a time,
//!   and the guest sees the port close when the daemon leaves.
//! - QEMU VMs started by banger before that: a pair of FIFOs
//!   (`agent.in`, `agent.out`) QEMU holds open.
//! - Firecracker: vsock through its Unix socket (`CONNECT <port>`, then
//!   `OK <host port>`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How the daemon reaches a VM's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLink {
    /// QEMU's chardev socket.
    Socket(PathBuf),
    /// FIFOs `<path>.in` and `<path>.out` (QEMU's `pipe` chardev).
    Pipe(PathBuf),
    /// Firecracker's vsock Unix socket and the guest port.
    Vsock { uds: PathBuf, port: u32 },
}

#[derive(Debug, Error)]
pub enum LinkError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the vsock device did not connect to the guest agent: {0:?}")]
    Vsock(String),
    #[error(transparent)]
    Io(std::io::Error),
}

/// A link's byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> LinkError + '_ {
    move |source| LinkError::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// The FIFO paths of a [`AgentLink::Pipe`]: to the guest, from it.
pub fn pipe_paths(base: &Path) -> (PathBuf, PathBuf) {
    (
        PathBuf::from(format!("{}.in", base.display())),
        PathBuf::from(format!("{}.out", base.display())),
    )
}

/// Opens the link's byte stream (for Firecracker, through its `CONNECT`).
pub async fn connect(link: &AgentLink, timeout: Duration) -> Result<Box<dyn Io>, LinkError> {
    match link {
        AgentLink::Socket(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(open_err(p))?;
            Ok(Box::new(s))
        }
        AgentLink::Pipe(base) => {
            let (to_guest, from_guest) = pipe_paths(base);
            let r = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(&from_guest)
                .map_err(open_err(&from_guest))?;
            let w = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(&to_guest)
                .map_err(open_err(&to_guest))?;
            Ok(Box::new(tokio::io::join(r, w)))
        }
        AgentLink::Vsock { uds, port } => {
            let mut s = tokio::net::UnixStream::connect(uds)
                .await
                .map_err(open_err(uds))?;
            let answer = tokio::time::timeout(timeout, vsock_connect(&mut s, *port))
                .await
                .map_err(|_| LinkError::Vsock("no answer to CONNECT".into()))??;
            if !answer.starts_with("OK ") {
                return Err(LinkError::Vsock(answer));
            }
            Ok(Box::new(s))
        }
    }
}

/// Firecracker's `CONNECT <port>`; its one-line answer, read byte by byte
/// so nothing of the guest's stream is taken with it.
async fn vsock_connect(s: &mut tokio::net::UnixStream, port: u32) -> Result<String, LinkError> {
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(LinkError::Io)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        if s.read(&mut b).await.map_err(LinkError::Io)? == 0 || line.len() > 64 {
            return Err(LinkError::Vsock(
                String::from_utf8_lossy(&line).trim().to_string(),
            ));
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim().to_string())
}
