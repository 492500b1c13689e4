//! A non-blocking file descriptor (a virtio-serial port, a vsock or Unix
//! socket, a PTY master) as tokio's `AsyncRead`/`AsyncWrite`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Registers a descriptor-owning value with the reactor.
pub fn register<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every `T` used here (OwnedFd, Inotify) owns its descriptor:
    // it stays open, and is the same descriptor, until the value is dropped,
    // which happens only with the AsyncFd that now holds it.
    #[allow(unsafe_code)]
    let r = unsafe { AsyncFd::register(inner) };
    r.map_err(|e| e.into_parts().1)
}

/// A descriptor as a byte stream.
///
/// A virtio-serial port reports a hangup (EPOLLHUP) while the host is not
/// connected, and tokio keeps a registration's "closed" readiness for good:
/// once the host came back, every poll would be ready and every read would
/// block, a busy loop. So a read or write that would block after a hangup
/// registers the descriptor afresh (its readiness then is the port's real
/// state).
pub struct FdStream {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl FdStream {
    /// Makes `fd` non-blocking and registers it with the reactor.
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        let raw: RawFd = fd.as_raw_fd();
        let flags = fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(raw, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        Ok(FdStream {
            fd: Some(register(fd)?),
        })
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_ref().map_or(-1, |f| f.get_ref().as_raw_fd())
    }

    fn registered(&self) -> io::Result<&AsyncFd<OwnedFd>> {
        self.fd
            .as_ref()
            .ok_or_else(|| io::Error::other("the descriptor could not be registered again"))
    }

    /// Drops the registration (and its stale readiness) and makes a new one.
    fn register_again(&mut self) -> io::Result<()> {
        if let Some(afd) = self.fd.take() {
            self.fd = Some(register(afd.into_inner())?);
        }
        Ok(())
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.registered()?.poll_read_ready(cx))?;
            let hangup = guard.ready().is_read_closed();
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A PTY master whose slave side is closed reads EIO: its end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) if hangup => this.register_again()?,
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.registered()?.poll_write_ready(cx))?;
            let hangup = guard.ready().is_write_closed();
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) if hangup => this.register_again()?,
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
