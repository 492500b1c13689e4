//! The fake's HTTP/1.1 server, on the wire as Firecracker's micro-http
//! answers (measured against the real v1.17.0-dev binary):
//!
//! - every connection is kept alive, whatever the client asks: a
//!   `Connection: close` is ignored, and the server never closes first;
//! - answers are `HTTP/1.1 <code> ` (no reason phrase), `Server: Firecracker
//!   API`, `Connection: keep-alive`, and only with a body `Content-Type:
//!   application/json` and `Content-Length`; a `204` has neither;
//! - a request it cannot take (an unsupported method, HTTP/1.0, a malformed
//!   header, a body over 51,200 bytes) is a `400` with micro-http's own
//!   `{ "error": "...\nAll previous unanswered requests will be dropped." }`.
//!   The real server then goes on parsing whatever bytes follow; the fake
//!   closes that connection instead, as no client can resynchronize anyway.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// micro-http's default `--http-api-max-payload-size`.
pub const MAX_PAYLOAD: usize = 51_200;
/// The most header bytes the fake reads before giving up on a request.
const MAX_HEAD: usize = 16 * 1024;

pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

pub struct Reply {
    pub status: u16,
    /// A JSON text, or none (a `204`).
    pub body: Option<String>,
}

/// Serves `handler` on every connection until the listener fails.
pub async fn serve<F, Fut>(listener: UnixListener, handler: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Reply> + Send,
{
    loop {
        let (stream, _) = listener.accept().await?;
        let h = handler.clone();
        tokio::spawn(async move {
            let _ = connection(stream, h).await;
        });
    }
}

async fn connection<F, Fut>(mut s: UnixStream, handler: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match next_request(&mut s, &mut buf).await? {
            None => return Ok(()),
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                write_reply(&mut s, &micro_http_error(&e)).await?;
                return Ok(());
            }
        };
        let reply = handler(req).await;
        write_reply(&mut s, &reply).await?;
    }
}

/// The next request on the connection: `None` at a clean end of stream,
/// `Some(Err)` for one micro-http would refuse.
async fn next_request(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<Request, String>>> {
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                if req.version != Some(1) {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    let first = line.lines().next().unwrap_or_default().to_string();
                    return Ok(Some(Err(format!(
                        "Invalid header. Reason: Header is incorrectly formatted. Key: {first}"
                    ))));
                }
                let method = req.method.unwrap_or_default().to_string();
                if !["GET", "PUT", "PATCH"].contains(&method.as_str()) {
                    return Ok(Some(Err(
                        "Invalid HTTP Method: Unsupported HTTP method.".into()
                    )));
                }
                let mut length = 0usize;
                for h in req.headers.iter() {
                    let value = String::from_utf8_lossy(h.value).trim().to_string();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        match value.parse::<usize>() {
                            Ok(v) => length = v,
                            Err(_) => {
                                return Ok(Some(Err(format!(
                                "Invalid header. Reason: Invalid content length. Header: {value}"
                            ))))
                            }
                        }
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Ok(Some(Err(format!(
                            "Invalid header. Reason: Invalid value. Key:Transfer-Encoding; Value:{value}"
                        ))));
                    }
                }
                if length > MAX_PAYLOAD {
                    return Ok(Some(Err(format!(
                        "Request payload with size {length} is larger than the limit of {MAX_PAYLOAD} allowed by server."
                    ))));
                }
                let path = req.path.unwrap_or("/").to_string();
                break (n, method, path, length);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Ok(Some(Err("Invalid header. Reason: Header too long.".into())))
            }
            Err(_) => {
                let line = String::from_utf8_lossy(buf);
                let first = line.lines().next().unwrap_or_default().to_string();
                return Ok(Some(Err(format!(
                    "Invalid header. Reason: Header is incorrectly formatted. Key: {first}"
                ))));
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < head_len + length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    Ok(Some(Ok(Request { method, path, body })))
}

fn micro_http_error(e: &str) -> Reply {
    // micro-http writes this body by hand: spaces inside the braces, and
    // the newline raw inside the string (so it is not valid JSON).
    Reply {
        status: 400,
        body: Some(format!(
            "{{ \"error\": \"{e}\nAll previous unanswered requests will be dropped.\" }}"
        )),
    }
}

async fn write_reply(s: &mut UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n",
        r.status
    );
    if let Some(b) = &r.body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    s.write_all(out.as_bytes()).await?;
    s.flush().await
}
