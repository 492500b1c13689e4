//! A blocking client for Firecracker's API socket, built on hyper's HTTP/1.1
//! client connection over a Unix stream.
//!
//! Firecracker's API server (micro-http) keeps every connection alive and
//! ignores a client's `Connection: close`, so a client must frame each
//! answer by its `Content-Length` (a `204` has no body) instead of reading
//! until the server closes. hyper does that framing; this module keeps one
//! connection open per [`Client`] and sends its requests over it in turn,
//! reconnecting once when the server has dropped it between two requests.
//!
//! Errors: a `4xx`/`5xx` answer becomes [`ClientError::Fault`] with
//! Firecracker's `fault_message` (or micro-http's own `{"error": ...}` for a
//! request it could not parse); a silent server is a timeout, never a hang.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::model::*;

/// The largest answer read from Firecracker (its answers are a few hundred
/// bytes; `GET /vm/config` of a large VM a few KiB).
pub const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("Cannot reach the Firecracker API at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Firecracker refused {method} {path} ({status}): {fault}")]
    Fault {
        method: String,
        path: String,
        status: u16,
        fault: String,
    },
    #[error("Firecracker did not answer {method} {path} within {secs} s")]
    Timeout {
        method: String,
        path: String,
        secs: u64,
    },
    #[error("Unexpected answer from Firecracker to {method} {path}: {detail}")]
    Protocol {
        method: String,
        path: String,
        detail: String,
    },
    #[error("Cannot start the Firecracker client's I/O runtime")]
    Runtime(#[source] std::io::Error),
}

impl ClientError {
    /// Firecracker's own words when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ClientError::Fault { fault, .. } => Some(fault),
            _ => None,
        }
    }
}

/// A client of one Firecracker API socket. Blocking, from any thread: on a
/// thread that runs async tasks, the request runs on a short-lived thread
/// of its own, so it never starts a runtime inside one. Requests through
/// one client are sent one after the other over its kept connection.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    io: Mutex<Io>,
}

/// The client's runtime (current-thread: it only drives the connection
/// while a request waits) and its kept connection.
#[derive(Default)]
struct Io {
    rt: Option<tokio::runtime::Runtime>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let io = self.io.get_mut().unwrap_or_else(|p| p.into_inner());
        io.conn = None;
        // Never blocks, so a client may be dropped on an async thread too.
        if let Some(rt) = io.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
            io: Mutex::new(Io::default()),
        }
    }

    /// How long one request may take until its whole answer is read.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; returns the status and the body (empty for a
    /// `204`). Only transport failures are errors here: a `400` is a status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), ClientError> {
        let proto = |detail: String| ClientError::Protocol {
            method: method.into(),
            path: path.into(),
            detail,
        };
        let m = Method::from_bytes(method.as_bytes()).map_err(|e| proto(e.to_string()))?;
        let payload = body.map(|b| b.to_string());
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let Io { rt, conn } = &mut *io;
        if rt.is_none() {
            *rt = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ClientError::Runtime)?,
            );
        }
        let Some(rt) = rt.as_ref() else {
            return Err(proto("no runtime".into()));
        };
        let payload = payload.as_deref();
        let mut run = move || rt.block_on(self.exchange(conn, &m, path, payload));
        if tokio::runtime::Handle::try_current().is_err() {
            return run();
        }
        // On a thread of some runtime: blocking on another one here panics.
        std::thread::scope(|s| match s.spawn(run).join() {
            Ok(r) => r,
            Err(_) => Err(proto("the request's thread panicked".into())),
        })
    }

    /// One request and its whole answer, over the kept connection (or a
    /// new one), within the timeout.
    async fn exchange(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        m: &Method,
        path: &str,
        payload: Option<&str>,
    ) -> Result<(u16, String), ClientError> {
        let method = m.as_str();
        let proto = |detail: String| ClientError::Protocol {
            method: method.into(),
            path: path.into(),
            detail,
        };
        let work = async {
            let mut sender = self.ready_sender(conn.take()).await?;
            let answer = match sender.send_request(build(m, path, payload)).await {
                Ok(a) => a,
                // The kept connection was closed under us before the
                // request went out: one fresh connection, one more try.
                Err(e) if e.is_canceled() || e.is_closed() => {
                    sender = self.ready_sender(None).await?;
                    sender
                        .send_request(build(m, path, payload))
                        .await
                        .map_err(|e| proto(e.to_string()))?
                }
                Err(e) => return Err(proto(e.to_string())),
            };
            let status = answer.status().as_u16();
            let bytes = Limited::new(answer.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| proto(format!("reading the answer: {e}")))?
                .to_bytes();
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| proto("the answer is not UTF-8".into()))?;
            Ok((sender, status, text))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok((sender, status, text))) => {
                *conn = Some(sender);
                Ok((status, text))
            }
            Ok(Err(e)) => Err(e),
            // A half-answered connection is not reused.
            Err(_) => Err(ClientError::Timeout {
                method: method.into(),
                path: path.into(),
                secs: self.timeout.as_secs().max(1),
            }),
        }
    }

    /// `kept` when it is still usable, else a new connection.
    async fn ready_sender(
        &self,
        kept: Option<SendRequest<Full<Bytes>>>,
    ) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        if let Some(mut s) = kept {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let connect = |source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect(std::io::Error::other(e)))?;
        // Drives the connection whenever this client's runtime runs; ends
        // when the sender is dropped or the server closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn call<B: Serialize>(&self, method: &str, path: &str, body: &B) -> Result<(), ClientError> {
        let v = serde_json::to_value(body).map_err(|e| ClientError::Protocol {
            method: method.into(),
            path: path.into(),
            detail: e.to_string(),
        })?;
        let (status, text) = self.request(method, path, Some(&v))?;
        check(method, path, status, &text)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, text) = self.request("GET", path, None)?;
        check("GET", path, status, &text)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
            method: "GET".into(),
            path: path.into(),
            detail: format!("{e} in {text:?}"),
        })
    }

    pub fn put_machine_config(&self, c: &MachineConfiguration) -> Result<(), ClientError> {
        self.call("PUT", "/machine-config", c)
    }
    pub fn put_boot_source(&self, b: &BootSource) -> Result<(), ClientError> {
        self.call("PUT", "/boot-source", b)
    }
    pub fn put_drive(&self, d: &Drive) -> Result<(), ClientError> {
        self.call("PUT", &format!("/drives/{}", d.drive_id), d)
    }
    pub fn put_network_interface(&self, n: &NetworkInterface) -> Result<(), ClientError> {
        self.call("PUT", &format!("/network-interfaces/{}", n.iface_id), n)
    }
    pub fn put_logger(&self, l: &Logger) -> Result<(), ClientError> {
        self.call("PUT", "/logger", l)
    }
    pub fn put_metrics(&self, m: &Metrics) -> Result<(), ClientError> {
        self.call("PUT", "/metrics", m)
    }
    pub fn action(&self, a: ActionType) -> Result<(), ClientError> {
        self.call("PUT", "/actions", &InstanceActionInfo { action_type: a })
    }
    pub fn patch_vm(&self, state: VmState) -> Result<(), ClientError> {
        self.call("PATCH", "/vm", &Vm { state })
    }
    pub fn snapshot_create(&self, p: &SnapshotCreateParams) -> Result<(), ClientError> {
        self.call("PUT", "/snapshot/create", p)
    }
    pub fn snapshot_load(&self, p: &SnapshotLoadParams) -> Result<(), ClientError> {
        self.call("PUT", "/snapshot/load", p)
    }
    pub fn describe(&self) -> Result<InstanceInfo, ClientError> {
        self.get("/")
    }
    pub fn version(&self) -> Result<FirecrackerVersion, ClientError> {
        self.get("/version")
    }
}

fn build(m: &Method, path: &str, payload: Option<&str>) -> Request<Full<Bytes>> {
    let body = Full::new(Bytes::from(payload.unwrap_or_default().to_owned()));
    let mut req = Request::new(body);
    *req.method_mut() = m.clone();
    // An unparsable path still goes out, as "/": Firecracker answers it.
    *req.uri_mut() = path
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"));
    let h = req.headers_mut();
    h.insert(hyper::header::HOST, HeaderValue::from_static("localhost"));
    h.insert(
        hyper::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    if payload.is_some() {
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    req
}

/// `Ok` for a 2xx status, else the fault Firecracker gave.
pub fn check(method: &str, path: &str, status: u16, text: &str) -> Result<(), ClientError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(ClientError::Fault {
        method: method.into(),
        path: path.into(),
        status,
        fault: fault_text(text),
    })
}

/// Firecracker's `fault_message`, micro-http's `error` (a request it could
/// not parse), or the trimmed text itself (at most 1,000 characters).
pub fn fault_text(text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Either {
        fault_message: Option<String>,
        error: Option<String>,
    }
    // micro-http writes its own errors with a raw newline inside the JSON
    // string, which no JSON parser takes: escape it first.
    let escaped = text.trim().replace('\n', "\\n");
    match serde_json::from_str::<Either>(&escaped) {
        Ok(Either {
            fault_message: Some(f),
            ..
        }) => f,
        Ok(Either { error: Some(e), .. }) => e.replace('\n', " "),
        _ => text.trim().chars().take(1000).collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn faults_come_from_either_shape() {
        assert_eq!(
            fault_text(r#"{"fault_message":"Empty PUT request."}"#),
            "Empty PUT request."
        );
        assert_eq!(
            fault_text("{ \"error\": \"Invalid HTTP Method.\nAll dropped.\" }"),
            "Invalid HTTP Method. All dropped."
        );
        assert_eq!(fault_text("  plain  "), "plain");
        assert!(check("PUT", "/x", 204, "").is_ok());
        let e = check("PUT", "/x", 400, r#"{"fault_message":"no"}"#).unwrap_err();
        assert_eq!(e.fault_message(), Some("no"));
        assert_eq!(e.to_string(), "Firecracker refused PUT /x (400): no");
    }

    /// A server that answers as micro-http does: every connection kept
    /// alive, the client's `Connection: close` ignored, a 204 without a
    /// body. Returns the socket and a counter of accepted connections.
    fn micro_http_like() -> (
        tempfile::TempDir,
        PathBuf,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::io::{BufRead, BufReader, Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut w = stream.try_clone().unwrap();
                    let mut r = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            r.read_line(&mut h).unwrap();
                            if h == "\r\n" {
                                break;
                            }
                            let lower = h.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).unwrap();
                        let head =
                            "HTTP/1.1 {} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n";
                        let answer = if line.starts_with("GET /version") {
                            let b = r#"{"firecracker_version":"1.17.0-dev"}"#;
                            format!(
                                "{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                                head.replace("{}", "200"),
                                b.len()
                            )
                        } else if body.is_empty() {
                            let b = r#"{"fault_message":"Empty PUT request."}"#;
                            format!(
                                "{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                                head.replace("{}", "400"),
                                b.len()
                            )
                        } else {
                            format!("{}\r\n", head.replace("{}", "204"))
                        };
                        w.write_all(answer.as_bytes()).unwrap();
                    }
                });
            }
        });
        (dir, sock, conns)
    }

    #[test]
    fn keeps_one_connection_to_a_server_that_never_closes() {
        let (_dir, sock, conns) = micro_http_like();
        let c = Client::new(&sock).with_timeout(Duration::from_secs(3));
        let started = std::time::Instant::now();
        c.put_metrics(&Metrics {
            metrics_path: "/m".into(),
        })
        .unwrap();
        assert_eq!(c.version().unwrap().firecracker_version, "1.17.0-dev");
        c.action(ActionType::InstanceStart).unwrap();
        let (status, body) = c.request("PUT", "/actions", None).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"fault_message":"Empty PUT request."}"#)
        );
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one kept connection"
        );
        // Four answers framed by Content-Length, none waited out.
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn works_and_drops_on_a_thread_that_runs_async_tasks() {
        let (_dir, sock, conns) = micro_http_like();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Client::new(&sock);
            c.action(ActionType::InstanceStart).unwrap();
            c.action(ActionType::SendCtrlAltDel).unwrap();
            drop(c);
        });
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_silent_server_is_a_timeout_and_a_missing_one_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let c = Client::new(&sock).with_timeout(Duration::from_millis(300));
        let e = c.request("GET", "/", None).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        let gone = Client::new(dir.path().join("none.sock"));
        assert!(matches!(gone.describe(), Err(ClientError::Connect { .. })));
    }
}
