//! The requests the daemon makes of an agent, on top of [`AgentConn`]:
//! a program run to its end with its output collected (bounded), files
//! read and written whole or streamed, and the one-reply requests.

use std::time::Duration;

use banger_agent_proto::frame::{Frame, Kind, MAX_PAYLOAD};
use banger_agent_proto::msg::{ExecRequest, FileStat, Reply, Request};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use super::{next_reply, AgentConn, AgentConnError, Frames};

/// A program's end and what it wrote (each stream kept up to a limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Bytes beyond the limit that were dropped (stdout, stderr).
    pub dropped: (u64, u64),
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Appends `b` to `out` up to `limit` bytes; counts what did not fit. Pure.
fn keep(out: &mut Vec<u8>, dropped: &mut u64, b: &[u8], limit: usize) {
    let room = limit.saturating_sub(out.len());
    let take = room.min(b.len());
    out.extend_from_slice(&b[..take]);
    *dropped += (b.len() - take) as u64;
}

/// Sends `data` as `In` frames, then `Eof`.
pub async fn send_all(f: &mut Frames, data: &[u8]) -> Result<(), AgentConnError> {
    for chunk in data.chunks(MAX_PAYLOAD) {
        f.send(Frame::data(Kind::In, Bytes::copy_from_slice(chunk)))
            .await?;
    }
    f.send(Frame::eof(Kind::In)).await?;
    Ok(())
}

impl AgentConn {
    /// Runs `req` to its end (at most `timeout`, then the agent kills its
    /// process group), with `stdin`; keeps at most `limit` bytes of each of
    /// stdout and stderr.
    pub async fn exec_collect(
        &self,
        req: ExecRequest,
        stdin: Option<&[u8]>,
        limit: usize,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentConnError> {
        let input: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> =
            stdin.map(|b| Box::new(std::io::Cursor::new(b.to_vec())) as _);
        self.exec_input(req, input, limit, timeout).await
    }

    /// [`AgentConn::exec_collect`] with stdin read from `input` as the
    /// program takes it (never held whole).
    pub async fn exec_input(
        &self,
        mut req: ExecRequest,
        input: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentConnError> {
        req.stdin = input.is_some();
        req.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let start = async {
            let mut f = self.open(&Request::Exec(req)).await?;
            match next_reply(&mut f).await? {
                Reply::Started { .. } => Ok(f),
                other => Err(AgentConnError::Unexpected(format!("{other:?}"))),
            }
        };
        let start_limit = Duration::from_secs(30);
        let f = tokio::time::timeout(start_limit, start)
            .await
            .map_err(|_| AgentConnError::Timeout(start_limit.as_secs()))??;
        let (mut sink, mut stream) = StreamExt::split(f);
        let pump = async {
            if let Some(mut r) = input {
                let mut buf = vec![0u8; MAX_PAYLOAD];
                loop {
                    let n = tokio::io::AsyncReadExt::read(&mut r, &mut buf)
                        .await
                        .map_err(|e| AgentConnError::Link(super::link::LinkError::Io(e)))?;
                    if n == 0 {
                        break;
                    }
                    let fr = Frame::data(Kind::In, Bytes::copy_from_slice(&buf[..n]));
                    sink.send(fr).await?;
                }
                sink.send(Frame::eof(Kind::In)).await?;
            }
            Ok::<_, AgentConnError>(())
        };
        let collect = async {
            let mut out = ExecOutput::default();
            while let Some(fr) = stream.next().await {
                let fr = fr?;
                match fr.kind {
                    Kind::Out => keep(&mut out.stdout, &mut out.dropped.0, &fr.payload, limit),
                    Kind::Err => keep(&mut out.stderr, &mut out.dropped.1, &fr.payload, limit),
                    Kind::Eof | Kind::In => {}
                    Kind::Json => match fr.parse::<Reply>()? {
                        Reply::Exit {
                            code,
                            signal,
                            timed_out,
                        } => {
                            out.code = code;
                            out.signal = signal;
                            out.timed_out = timed_out;
                            return Ok(out);
                        }
                        Reply::Error { kind, message } => {
                            return Err(AgentConnError::Refused { kind, message })
                        }
                        other => return Err(AgentConnError::Unexpected(format!("{other:?}"))),
                    },
                }
            }
            Err(AgentConnError::Closed)
        };
        // The agent ends the program within its own timeout; this one only
        // guards against an agent that stops answering. A program that
        // ends without reading all of its stdin is fine: the pump's error
        // then does not count.
        let guard = timeout + Duration::from_secs(10);
        let both = async {
            let (pumped, out) = tokio::join!(pump, collect);
            let out = out?;
            if let Err(e) = pumped {
                tracing::debug!(error = %e, "stdin not taken whole");
            }
            Ok(out)
        };
        tokio::time::timeout(guard, both)
            .await
            .map_err(|_| AgentConnError::Timeout(guard.as_secs()))?
    }

    /// A file's bytes (at most `limit`), with its stat.
    pub async fn read_file(
        &self,
        path: &str,
        limit: u64,
    ) -> Result<(FileStat, Vec<u8>), AgentConnError> {
        self.read_range(path, 0, limit).await
    }

    /// At most `limit` bytes of a file from byte `offset`, with its stat.
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(FileStat, Vec<u8>), AgentConnError> {
        let req = Request::Read {
            path: path.into(),
            offset,
            limit: Some(limit),
        };
        let mut f = self.open(&req).await?;
        let st = match next_reply(&mut f).await? {
            Reply::Stat(st) => st,
            other => return Err(AgentConnError::Unexpected(format!("{other:?}"))),
        };
        let mut data = Vec::new();
        while let Some(fr) = f.next().await {
            let fr = fr?;
            match fr.kind {
                Kind::Out => {
                    if data.len() as u64 + fr.payload.len() as u64 > limit {
                        return Err(AgentConnError::Unexpected("more bytes than asked".into()));
                    }
                    data.extend_from_slice(&fr.payload);
                }
                Kind::Eof => return Ok((st, data)),
                Kind::Json => return Err(next_error(&fr)),
                _ => {}
            }
        }
        Err(AgentConnError::Closed)
    }

    /// Writes `data` to `path` (atomically: a temporary file renamed over
    /// it), with `mode` (default: the old file's, else 0644).
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
        parents: bool,
    ) -> Result<FileStat, AgentConnError> {
        let req = Request::Write {
            path: path.into(),
            mode,
            owner: None,
            parents,
        };
        let mut f = self.open(&req).await?;
        send_all(&mut f, data).await?;
        match next_reply(&mut f).await? {
            Reply::Stat(st) => Ok(st),
            other => Err(AgentConnError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// The error a JSON frame carries where data was expected.
fn next_error(fr: &Frame) -> AgentConnError {
    match fr.parse::<Reply>() {
        Ok(Reply::Error { kind, message }) => AgentConnError::Refused { kind, message },
        Ok(other) => AgentConnError::Unexpected(format!("{other:?}")),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_kept_up_to_the_limit_and_the_rest_counted() {
        let (mut out, mut dropped) = (Vec::new(), 0u64);
        keep(&mut out, &mut dropped, b"hello", 8);
        keep(&mut out, &mut dropped, b"world", 8);
        assert_eq!(out, b"hellowor");
        assert_eq!(dropped, 2);
        keep(&mut out, &mut dropped, b"!", 8);
        assert_eq!(dropped, 3);
    }
}
