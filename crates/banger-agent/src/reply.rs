//! What every request's handler answers with: the stream as frames, one
//! JSON reply, failures as replies. Apart from `serve` (which dispatches to
//! the handlers) so that the handlers and the dispatcher form a DAG.

use banger_agent_proto::frame::{Frame, FrameCodec};
use banger_agent_proto::msg::{ErrorKind, Reply};
use futures::SinkExt;
use tokio_util::codec::Framed;

/// A stream as frames.
pub type Frames = Framed<tokio_util::compat::Compat<yamux::Stream>, FrameCodec>;

/// Sends one JSON reply.
pub async fn reply(f: &mut Frames, r: Reply) -> Result<(), Reply> {
    let frame = Frame::json(&r).map_err(|e| error(ErrorKind::Failed, e.to_string()))?;
    f.send(frame)
        .await
        .map_err(|e| error(ErrorKind::Failed, e.to_string()))
}

/// A failure as a reply.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error {
        kind,
        message: message.into(),
    }
}

/// An I/O error as a reply, with what was being done.
pub fn io_error(what: &str, e: &std::io::Error) -> Reply {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::PermissionDenied => ErrorKind::Denied,
        K::AlreadyExists | K::DirectoryNotEmpty | K::NotADirectory | K::IsADirectory => {
            ErrorKind::Conflict
        }
        K::InvalidInput => ErrorKind::Invalid,
        _ => ErrorKind::Failed,
    };
    error(kind, format!("{what}: {e}"))
}
