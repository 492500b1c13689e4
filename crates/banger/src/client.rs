//! A small HTTP/1.1 client for bangerd's Unix socket, with Server-Sent
//! Events for operation progress. One connection per request: the socket is
//! local and connecting costs microseconds.

use std::path::{Path, PathBuf};

use banger_api::ApiError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::exit;

pub const DEFAULT_SOCKET: &str = "/run/banger/bangerd.sock";

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("Cannot reach bangerd at {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Permission denied on {socket}")]
    SocketPermission { socket: PathBuf },
    #[error("{0}")]
    Api(ApiError),
    #[error("Unexpected answer from bangerd: {0}")]
    Protocol(String),
    /// Something failed on the client's side (a local git command, a file).
    #[error("{message}")]
    Local {
        message: String,
        hint: Option<String>,
    },
    /// The command line is wrong in a way clap cannot see (exit 2).
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
}

impl ClientError {
    /// Ok for a 2xx status; otherwise the API error in `body` (or the raw
    /// text when it is not one).
    pub fn check(status: StatusCode, body: &str) -> Result<(), ClientError> {
        if status.is_success() {
            return Ok(());
        }
        Err(match serde_json::from_str::<ApiError>(body) {
            Ok(e) => ClientError::Api(e),
            Err(_) => ClientError::Protocol(format!("HTTP {status}: {body}")),
        })
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::SocketPermission { .. } => exit::PERMISSION,
            ClientError::Usage { .. } => exit::USAGE,
            ClientError::Api(e) if e.code == banger_api::ErrorCode::Forbidden => exit::PERMISSION,
            _ => exit::FAILURE,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Unreachable { .. } => Some(
                "Is bangerd running? Start it with `sudo systemctl start bangerd` (or `sudo bangerd &` where systemd \
                 does not run), or point --socket / BANGER_SOCKET at its socket"
                    .into(),
            ),
            ClientError::SocketPermission { .. } => Some(
                "Only root and members of the `banger` group may use bangerd: sudo usermod -aG banger $USER, then log in again"
                    .into(),
            ),
            ClientError::Api(e) => e.hint.clone(),
            ClientError::Protocol(_) => Some("Are the banger CLI and bangerd the same version? Check `banger version`".into()),
            ClientError::Local { hint, .. } | ClientError::Usage { hint, .. } => hint.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket connection, with the error that says why it failed.
    async fn connect_stream(&self) -> Result<NoSigPipe, ClientError> {
        tokio::net::UnixStream::connect(&self.socket)
            .await
            .map(NoSigPipe)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    ClientError::SocketPermission {
                        socket: self.socket.clone(),
                    }
                } else {
                    ClientError::Unreachable {
                        socket: self.socket.clone(),
                        source,
                    }
                }
            })
    }

    /// An HTTP/1 connection for requests with body type `B`.
    async fn handshake<B>(&self) -> Result<hyper::client::conn::http1::SendRequest<B>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect_stream().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        self.handshake().await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bangerd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    async fn read_json<T: DeserializeOwned>(
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading body: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => ClientError::Api(e),
                Err(_) => ClientError::Protocol(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("{e} in {}", String::from_utf8_lossy(&bytes)))
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::read_json(self.send(Method::GET, path, None).await?).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Self::read_json(self.send(Method::POST, path, Some(body)).await?).await
    }

    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::read_json(self.send(Method::POST, path, Some(b"{}".to_vec())).await?).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::read_json(self.send(Method::DELETE, path, None).await?).await
    }

    async fn collect_raw(
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(StatusCode, hyper::HeaderMap, String), ClientError> {
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading body: {e}")))?
            .to_bytes();
        Ok((
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// A request whose answer is returned raw: status, headers, body text
    /// (for non-JSON endpoints and callers that read headers).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, hyper::HeaderMap, String), ClientError> {
        Self::collect_raw(self.send(method, path, None).await?).await
    }

    /// A request with a JSON body whose answer is returned raw (for
    /// endpoints that answer 204 with no body).
    pub async fn raw_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, hyper::HeaderMap, String), ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Self::collect_raw(self.send(method, path, Some(body)).await?).await
    }

    /// A DELETE answered with no body (204): the status is checked.
    pub async fn delete_empty(&self, path: &str) -> Result<(), ClientError> {
        let (status, _, body) = self.raw(Method::DELETE, path).await?;
        ClientError::check(status, &body)
    }

    /// A POST with a JSON body answered with no body (204): the status is
    /// checked.
    pub async fn post_no_answer<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), ClientError> {
        let (status, _, text) = self.raw_json(Method::POST, path, body).await?;
        ClientError::check(status, &text)
    }

    /// Raw GET: status and body text.
    pub async fn get_text(&self, path: &str) -> Result<(StatusCode, String), ClientError> {
        self.raw(Method::GET, path).await.map(|(s, _, b)| (s, b))
    }

    /// A GET whose answer is bytes (e.g. a git bundle).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading body: {e}")))?
            .to_bytes();
        ClientError::check(status, &String::from_utf8_lossy(&bytes))?;
        Ok(bytes.to_vec())
    }

    /// A GET whose body is streamed into `out` (never held whole); returns
    /// the bytes written.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return Self::read_json::<serde_json::Value>(resp).await.map(|_| 0);
        }
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(format!("reading body: {e}")))?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data).await.map_err(|e| ClientError::Local {
                    message: format!("Cannot write the download: {e}"),
                    hint: None,
                })?;
                n += data.len() as u64;
            }
        }
        out.flush().await.map_err(|e| ClientError::Local {
            message: format!("Cannot write the download: {e}"),
            hint: None,
        })?;
        Ok(n)
    }

    /// POSTs a file as the body, streamed (never read whole into memory);
    /// the answer is JSON.
    pub async fn upload_file<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        file: &Path,
    ) -> Result<T, ClientError> {
        self.upload_with(Method::POST, path, content_type, file)
            .await
    }

    /// [`Client::upload_file`] with another method (`PUT`).
    pub async fn upload_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        file: &Path,
    ) -> Result<T, ClientError> {
        use futures::TryStreamExt;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| ClientError::Local {
                message: format!("Cannot open {}: {e}", file.display()),
                hint: None,
            })?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let frames = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10)
            .map_ok(hyper::body::Frame::data);
        let body = http_body_util::StreamBody::new(frames);
        let mut sender = self.handshake().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bangerd")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::CONTENT_LENGTH, len)
            .body(body)
            .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))?;
        Self::read_json(resp).await
    }

    /// Opens a raw byte stream through an HTTP upgrade (`GET path` with
    /// `Upgrade: tcp`), e.g. the VM proxy.
    pub async fn upgrade(
        &self,
        path: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        self.upgrade_with(Method::GET, path, "tcp", None).await
    }

    /// An HTTP upgrade to protocol `token` with an optional JSON body: the
    /// raw connection after `101`, or the API's error.
    pub async fn upgrade_with(
        &self,
        method: Method,
        path: &str,
        token: &str,
        json: Option<Vec<u8>>,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let stream = self.connect_stream().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Protocol(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bangerd")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, token);
        if json.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Self::read_json::<serde_json::Value>(resp)
                .await
                .and_then(|_| {
                    Err(ClientError::Protocol(
                        "the daemon did not switch protocols".into(),
                    ))
                });
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Protocol(format!("upgrade: {e}")))?;
        Ok(TokioIo::new(upgraded))
    }

    /// Follows a Server-Sent Events stream of JSON payloads, calling
    /// `on_data` for each until it returns false or the stream ends.
    pub async fn follow_sse(
        &self,
        path: &str,
        mut on_data: impl FnMut(serde_json::Value) -> bool,
    ) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return Self::read_json::<serde_json::Value>(resp).await.map(|_| ());
        }
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(format!("event stream: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for payload in parser.push(data) {
                let v: serde_json::Value = serde_json::from_str(&payload)
                    .map_err(|e| ClientError::Protocol(format!("bad event {payload:?}: {e}")))?;
                if !on_data(v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The daemon's socket, written with `MSG_NOSIGNAL`: the CLI restores the
/// default SIGPIPE (so `banger vm ls | head` ends quietly), and a daemon
/// that answers an upload early and closes must give the CLI an error it
/// can report, not kill it.
pub struct NoSigPipe(tokio::net::UnixStream);

impl tokio::io::AsyncRead for NoSigPipe {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for NoSigPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::os::fd::AsRawFd;
        use std::task::Poll;
        loop {
            if self.0.poll_write_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            let fd = self.0.as_raw_fd();
            let sent = self.0.try_io(tokio::io::Interest::WRITABLE, || {
                nix::sys::socket::send(fd, buf, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Incremental Server-Sent Events parser: feed bytes, get the `data`
/// payloads of complete events. Comments and other fields are ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_frames_and_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nevent: x\nid: 1\nda").is_empty());
        assert_eq!(p.push(b"ta: {\"a\":1}\n\n"), vec!["{\"a\":1}".to_string()]);
        assert_eq!(
            p.push(b"data: one\ndata: two\n\ndata:three\n\n"),
            vec!["one\ntwo".to_string(), "three".to_string()]
        );
    }
}
