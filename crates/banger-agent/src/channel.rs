//! The agent's channel to the daemon: the virtio-serial port named
//! `org.banger.agent` (QEMU), vsock port 1024 (Firecracker), or a Unix
//! socket (tests). Each connection (each daemon session on a serial port)
//! starts with the handshake and then carries one yamux session.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent_proto::{PORT_NAME, VSOCK_PORT};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::fdio::FdStream;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A virtio-serial port device (`/dev/vportNpM`).
    Serial(PathBuf),
    /// A vsock port (Firecracker's device).
    Vsock(u32),
    /// A Unix socket path (tests).
    Unix(PathBuf),
}

impl Channel {
    /// `serial:DEV`, `vsock:PORT`, `unix:PATH`, or `auto`.
    pub fn parse(s: &str) -> Result<Option<Channel>, String> {
        if s == "auto" {
            return Ok(None);
        }
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not auto, serial:DEV, vsock:PORT or unix:PATH"))?;
        match kind {
            "serial" => Ok(Some(Channel::Serial(rest.into()))),
            "unix" => Ok(Some(Channel::Unix(rest.into()))),
            "vsock" => rest
                .parse()
                .map(|p| Some(Channel::Vsock(p)))
                .map_err(|_| format!("{rest:?} is not a port")),
            _ => Err(format!("unknown channel kind {kind:?}")),
        }
    }

    /// The guest's channel: its virtio-serial port, else vsock when the
    /// guest has a vsock device; `None` when neither is there (yet).
    pub fn detect(sys: &Path) -> Option<Channel> {
        if let Ok(dir) = std::fs::read_dir(sys.join("class/virtio-ports")) {
            for e in dir.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    return Some(Channel::Serial(Path::new("/dev").join(e.file_name())));
                }
            }
        }
        Path::new("/dev/vsock")
            .exists()
            .then_some(Channel::Vsock(VSOCK_PORT))
    }
}

/// A connection's byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Serves `channel` forever: `serve` is called with each connection.
pub async fn run<F, Fut>(channel: Channel, serve: F) -> std::io::Result<()>
where
    F: Fn(Box<dyn Io>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match channel {
        Channel::Serial(dev) => {
            // The port stays open for the agent's whole life (closing it
            // drops what the host sent meanwhile); each session gets a
            // duplicate of it, so ending one closes nothing.
            let port = loop {
                match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dev)
                {
                    Ok(f) => break OwnedFd::from(f),
                    Err(e) => eprintln!("banger-agent: cannot open {}: {e}", dev.display()),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            loop {
                match port.try_clone().and_then(FdStream::new) {
                    Ok(s) => serve(Box::new(s)).await,
                    Err(e) => eprintln!("banger-agent: {}: {e}", dev.display()),
                }
                // The host is away (the port reads end-of-file then) or just
                // left: look again shortly.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Channel::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            let serve = std::sync::Arc::new(serve);
            loop {
                let (s, _) = l.accept().await?;
                let serve = serve.clone();
                tokio::spawn(async move { serve(Box::new(s)).await });
            }
        }
        Channel::Vsock(port) => {
            let l = vsock_listener(port)?;
            let serve = std::sync::Arc::new(serve);
            loop {
                let fd = accept(&l).await?;
                let serve = serve.clone();
                tokio::spawn(async move { serve(Box::new(fd)).await });
            }
        }
    }
}

fn vsock_listener(port: u32) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    socket::listen(&fd, socket::Backlog::new(16).map_err(std::io::Error::from)?)?;
    crate::fdio::register(fd)
}

async fn accept(l: &tokio::io::unix::AsyncFd<OwnedFd>) -> std::io::Result<FdStream> {
    loop {
        let mut guard = l.readable().await?;
        match guard.try_io(|fd| {
            socket::accept4(
                std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()),
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(std::io::Error::from)
        }) {
            Ok(Ok(raw)) => {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                #[allow(unsafe_code)]
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                return FdStream::new(fd);
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_and_the_port_is_found_by_name() {
        assert_eq!(Channel::parse("auto"), Ok(None));
        assert_eq!(Channel::parse("vsock:1024"), Ok(Some(Channel::Vsock(1024))));
        assert!(Channel::parse("vsock:x").is_err());
        assert!(Channel::parse("tcp:1").is_err());
        let sys = tempfile_dir();
        let port = sys.join("class/virtio-ports/vport1p1");
        std::fs::create_dir_all(&port).expect("mkdir");
        std::fs::write(port.join("name"), format!("{PORT_NAME}\n")).expect("write");
        assert_eq!(
            Channel::detect(&sys),
            Some(Channel::Serial("/dev/vport1p1".into()))
        );
        let _ = std::fs::remove_dir_all(&sys);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("banger-agent-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
