//! The host side of `banger-agent`: one connection per VM over the link the
//! backend gives the guest ([`link`]), the handshake, then a yamux session
//! (the daemon is its client) with one stream per request.
//!
//! The guest is untrusted. What it can make the daemon hold is bounded:
//! the handshake reads at most `MAX_SKIP` bytes in lines of at most
//! `MAX_LINE`; every frame is at most 64 KiB and announced before it is
//! read; each stream has yamux's flow-control window (so a guest can only
//! send what a reader asked for); the number of open streams is capped; a
//! stream the guest opens is refused; the connection is one task per VM, so
//! a stuck guest stalls only its own requests. Protocol errors end the
//! connection (logged), and the next request opens a new one.
//!
//! Guests still running the shell agent of older images answer the
//! handshake in their own line protocol; [`legacy`] speaks that one.

pub mod binary;
pub mod legacy;
pub mod link;
pub mod ops;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use banger_agent_proto::frame::{Frame, FrameCodec, FrameError, Kind};
use banger_agent_proto::handshake::{self, AgentHello, Lines};
use banger_agent_proto::msg::{ErrorKind, Reply, Request};
use futures::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use link::AgentLink;

/// The most streams one VM's connection may have open at once.
pub const MAX_STREAMS: usize = 128;

#[derive(Debug, Error)]
pub enum AgentConnError {
    #[error("Cannot reach the guest agent: {0}")]
    Link(#[from] link::LinkError),
    #[error("The guest agent did not answer within {0} s")]
    Timeout(u64),
    #[error("The guest runs the shell agent of an image made before banger-agent")]
    Legacy,
    #[error("The guest agent speaks protocol {0}; this daemon speaks {1}")]
    Protocol(u32, u32),
    #[error("The guest agent's answer is not the protocol's ({0})")]
    Garbled(String),
    #[error("The connection to the guest agent ended")]
    Closed,
    #[error("The guest agent sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("The guest agent's session failed: {0}")]
    Session(String),
    /// The agent answered the request with an error.
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
    #[error("The guest agent answered with something unexpected: {0}")]
    Unexpected(String),
}

impl crate::ToApiError for AgentConnError {
    fn code(&self) -> banger_api::ErrorCode {
        use banger_api::ErrorCode as C;
        match self {
            AgentConnError::Refused { kind, .. } => match kind {
                ErrorKind::NotFound => C::NotFound,
                ErrorKind::Denied => C::Forbidden,
                ErrorKind::Conflict => C::Conflict,
                ErrorKind::Invalid => C::InvalidRequest,
                ErrorKind::Failed => C::Internal,
            },
            AgentConnError::Timeout(_) | AgentConnError::Link(_) | AgentConnError::Legacy => {
                C::Unavailable
            }
            _ => C::Internal,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            AgentConnError::Legacy => {
                Some("Restart the VM (banger vm restart NAME) so that it runs banger-agent".into())
            }
            AgentConnError::Timeout(_) | AgentConnError::Link(_) => {
                Some("Is the VM running? `banger vm logs NAME` shows its console".into())
            }
            _ => None,
        }
    }
}

/// A stream as frames.
pub type Frames = Framed<tokio_util::compat::Compat<yamux::Stream>, FrameCodec>;

type Opener = oneshot::Sender<Result<yamux::Stream, AgentConnError>>;

/// A connection to one VM's agent. Cheap to clone; it ends when the last
/// clone is dropped or the guest side fails.
#[derive(Clone)]
pub struct AgentConn {
    open: mpsc::Sender<Opener>,
    closed: Arc<AtomicBool>,
    /// When a stream last opened (the session was alive then).
    last_used: Arc<std::sync::Mutex<std::time::Instant>>,
    pub hello: AgentHello,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("hello", &self.hello)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl AgentConn {
    /// Greets the agent on `io` (within `timeout`) and starts the session.
    pub async fn start<T>(
        mut io: T,
        timeout: Duration,
        label: String,
    ) -> Result<AgentConn, AgentConnError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let hello = tokio::time::timeout(timeout, greet(&mut io))
            .await
            .map_err(|_| AgentConnError::Timeout(timeout.as_secs()))??;
        if hello.protocol != banger_agent_proto::PROTOCOL {
            return Err(AgentConnError::Protocol(
                hello.protocol,
                banger_agent_proto::PROTOCOL,
            ));
        }
        let mut cfg = yamux::Config::default();
        cfg.set_max_num_streams(MAX_STREAMS);
        let conn = yamux::Connection::new(io.compat(), cfg, yamux::Mode::Client);
        let (tx, rx) = mpsc::channel(16);
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(conn, rx, closed.clone(), label));
        Ok(AgentConn {
            open: tx,
            closed,
            last_used: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            hello,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.open.is_closed()
    }

    /// How long since a stream was last opened on this connection.
    pub fn idle(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX)
    }

    /// Whether the agent answers a ping within `timeout` (an agent that
    /// died and came back leaves a session that looks alive on a port).
    pub async fn alive(&self, timeout: Duration) -> bool {
        self.call(&Request::Ping, timeout).await.is_ok()
    }

    /// A new stream carrying `req` as its first frame.
    pub async fn open(&self, req: &Request) -> Result<Frames, AgentConnError> {
        let (tx, rx) = oneshot::channel();
        self.open
            .send(tx)
            .await
            .map_err(|_| AgentConnError::Closed)?;
        let stream = rx.await.map_err(|_| AgentConnError::Closed)??;
        if let Ok(mut t) = self.last_used.lock() {
            *t = std::time::Instant::now();
        }
        let mut frames = Framed::new(stream.compat(), FrameCodec);
        frames.send(Frame::json(req)?).await?;
        Ok(frames)
    }

    /// A request answered by one reply (an error reply is an error).
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Reply, AgentConnError> {
        let work = async {
            let mut f = self.open(req).await?;
            next_reply(&mut f).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| AgentConnError::Timeout(timeout.as_secs()))?
    }
}

/// The next JSON reply on a stream (data frames before it are an error);
/// an error reply becomes [`AgentConnError::Refused`].
pub async fn next_reply(f: &mut Frames) -> Result<Reply, AgentConnError> {
    match f.next().await {
        Some(Ok(fr)) if fr.kind == Kind::Json => match fr.parse::<Reply>()? {
            Reply::Error { kind, message } => Err(AgentConnError::Refused { kind, message }),
            r => Ok(r),
        },
        Some(Ok(fr)) => Err(AgentConnError::Unexpected(format!("a {:?} frame", fr.kind))),
        Some(Err(e)) => Err(e.into()),
        None => Err(AgentConnError::Closed),
    }
}

/// The handshake: greet, then skip everything (at most `MAX_SKIP` bytes)
/// until the answer to this greeting.
async fn greet<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
) -> Result<AgentHello, AgentConnError> {
    let link_err = |e| AgentConnError::Link(link::LinkError::Io(e));
    let mut lines = Lines::default();
    let mut buf = [0u8; 1024];
    loop {
        // A greeting with a fresh nonce each second without an answer: an
        // agent still in a session of an earlier daemon (a port that never
        // closed, a restored guest) takes one as a broken frame, ends that
        // session and answers the next. Answers to older greetings are
        // skipped like any other line, so both sides start in step.
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        io.write_all(handshake::hello(&nonce).as_bytes())
            .await
            .map_err(link_err)?;
        io.flush().await.map_err(link_err)?;
        let wait = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let Ok(n) = tokio::time::timeout_at(wait, io.read(&mut buf)).await else {
                break;
            };
            let n = n.map_err(link_err)?;
            if n == 0 {
                return Err(AgentConnError::Closed);
            }
            for b in &buf[..n] {
                let Some(line) = lines.push(*b) else { continue };
                if let Some(h) = handshake::parse_ok(&line, &nonce) {
                    return Ok(h);
                }
                if handshake::is_legacy_answer(&line) {
                    return Err(AgentConnError::Legacy);
                }
            }
            if lines.seen > handshake::MAX_SKIP {
                return Err(AgentConnError::Garbled(format!(
                    "{} bytes without an answer",
                    lines.seen
                )));
            }
        }
    }
}

enum Event {
    Opened(Result<yamux::Stream, yamux::ConnectionError>),
    Want(Option<Opener>),
    Inbound(Option<Result<yamux::Stream, yamux::ConnectionError>>),
}

/// Drives one yamux connection: opens streams on request, refuses the
/// guest's, ends on the first error.
async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut want: mpsc::Receiver<Opener>,
    closed: Arc<AtomicBool>,
    label: String,
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut pending: Option<Opener> = None;
    loop {
        let ev = futures::future::poll_fn(|cx| {
            if pending.is_some() {
                if let Poll::Ready(r) = conn.poll_new_outbound(cx) {
                    return Poll::Ready(Event::Opened(r));
                }
            } else if let Poll::Ready(w) = want.poll_recv(cx) {
                return Poll::Ready(Event::Want(w));
            }
            conn.poll_next_inbound(cx).map(Event::Inbound)
        })
        .await;
        match ev {
            Event::Want(Some(tx)) => pending = Some(tx),
            Event::Want(None) => break,
            Event::Opened(r) => {
                if let Some(tx) = pending.take() {
                    let _ = tx.send(r.map_err(|e| AgentConnError::Session(e.to_string())));
                }
            }
            // The daemon opens streams, never the guest: drop its.
            Event::Inbound(Some(Ok(s))) => drop(s),
            Event::Inbound(Some(Err(e))) => {
                tracing::warn!(vm = %label, error = %e, "guest agent session ended");
                break;
            }
            Event::Inbound(None) => break,
        }
    }
    closed.store(true, Ordering::Relaxed);
    if let Some(tx) = pending.take() {
        let _ = tx.send(Err(AgentConnError::Closed));
    }
    while let Ok(tx) = want.try_recv() {
        let _ = tx.send(Err(AgentConnError::Closed));
    }
    let _ = futures::future::poll_fn(|cx| conn.poll_close(cx)).await;
}

/// A boxed future, for the callers that pick a transport at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
