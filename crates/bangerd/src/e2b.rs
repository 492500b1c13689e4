//! The E2B-compatible listener (`e2b.listen`): E2B's control plane and its
//! in-sandbox daemon (envd) on one loopback port, so code written for the
//! E2B SDKs runs against banger with `E2B_API_URL`, `E2B_SANDBOX_URL` and
//! `E2B_API_KEY` set. Requests carrying `E2b-Sandbox-Id` are envd's, and go
//! to that sandbox's VM through banger's own exec API.
//!
//! Every control-plane request needs an API key (`X-API-KEY`), every envd
//! request the sandbox's access token (`X-Access-Token`); `Host` must be
//! the listener's own and no browser `Origin` is taken (DNS rebinding,
//! cross-site requests).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_core::e2b::connect::{self, Code, StartRequest};
use banger_core::e2b::keys::Key;
use banger_core::e2b::model::{self, NewSandbox, SetTimeout};
use banger_core::e2b::{EnvdRefusal, DEFAULT_USER};
use banger_core::ToApiError;
use serde::Deserialize;

use crate::state::AppState;

/// The largest upload taken (streamed into the guest, never held whole).
const MAX_UPLOAD: usize = 16 << 30;

/// The header that names the sandbox an envd request is for.
const SANDBOX_HEADER: &str = "e2b-sandbox-id";

/// An answer in E2B's error shape.
fn e2b_error(status: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = model::Error {
        code: status.as_u16(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

/// A core error in E2B's shape, with its status.
fn from_core(e: &banger_core::e2b::E2bError) -> Response {
    let status = e.code().http_status();
    e2b_error(status, banger_core::error::error_chain(e))
}

/// A Connect error for a unary call.
fn connect_error(code: Code, message: &str) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(connect::error_json(code, message))).into_response()
}

/// The E2B router.
pub fn router(daemon: AppState, addr: SocketAddr) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/sandboxes", get(list).post(create))
        .route("/v2/sandboxes", get(list).post(create))
        .route("/sandboxes/{id}", get(show).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/init", post(envd_init))
        .route("/process.Process/{method}", post(process))
        .route("/filesystem.Filesystem/{method}", post(filesystem))
        .route(
            "/files",
            get(download)
                .post(upload)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .fallback(unknown)
        .layer(axum::middleware::from_fn_with_state(
            (daemon.clone(), addr),
            guard,
        ))
        .with_state(daemon)
}

/// Host and Origin checks for every request.
async fn guard(
    State((_d, addr)): State<(AppState, SocketAddr)>,
    req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let port = addr.port();
    let ok_hosts = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        addr.to_string(),
    ];
    if !ok_hosts.iter().any(|h| h == host) {
        return e2b_error(403, format!("Host {host:?} is not this listener's"));
    }
    if req.headers().contains_key(header::ORIGIN) {
        return e2b_error(403, "Requests from web pages are not taken");
    }
    next.run(req).await
}

/// A control-plane request's API key (`X-API-KEY`); a missing or wrong
/// one is answered with a 401 in E2B's shape.
struct ApiKey(Key);

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, d: &AppState) -> Result<Self, Response> {
        let secret = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match d.e2b.authenticate(secret) {
            Ok(Some(k)) => Ok(ApiKey(k)),
            Ok(None) => Err(e2b_error(
                401,
                "Invalid API key: make one with `banger e2b key create NAME` and set E2B_API_KEY",
            )),
            Err(e) => Err(from_core(&e)),
        }
    }
}

async fn health(headers: HeaderMap) -> Response {
    if headers.contains_key(SANDBOX_HEADER) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "message": "Health check successful" })),
        )
            .into_response()
    }
}

async fn create(State(d): State<AppState>, ApiKey(key): ApiKey, body: Bytes) -> Response {
    let req: NewSandbox = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return e2b_error(400, format!("Invalid request body: {e}")),
    };
    match d.e2b.create(&key, req).await {
        Ok(s) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(e) => from_core(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
}

async fn list(
    State(d): State<AppState>,
    ApiKey(key): ApiKey,
    Query(q): Query<ListQuery>,
) -> Response {
    match d.e2b.list(&key, q.metadata.as_deref()) {
        Ok(mut l) => {
            if let Some(states) = q.state {
                let want: Vec<&str> = states.split(',').collect();
                l.retain(|s| want.contains(&s.state.as_str()));
            }
            Json(l).into_response()
        }
        Err(e) => from_core(&e),
    }
}

async fn show(State(d): State<AppState>, ApiKey(key): ApiKey, Path(id): Path<String>) -> Response {
    match d.e2b.get(&key, &id) {
        Ok(s) => Json(s).into_response(),
        Err(e) => from_core(&e),
    }
}

async fn kill(State(d): State<AppState>, ApiKey(key): ApiKey, Path(id): Path<String>) -> Response {
    match d.e2b.kill(&key, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_core(&e),
    }
}

async fn set_timeout(
    State(d): State<AppState>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: SetTimeout = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return e2b_error(400, format!("Invalid request body: {e}")),
    };
    match d.e2b.set_timeout(&key, &id, req.timeout) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_core(&e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PauseBody {
    #[serde(default)]
    memory: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectBody {
    #[serde(default)]
    timeout: Option<u64>,
}

/// An optional JSON body (an empty one is the default).
fn body_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new(e2b_error(400, format!("Invalid request body: {e}"))))
}

async fn pause(
    State(d): State<AppState>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: PauseBody = match body_or_default(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match d.e2b.pause(&key, &id, req.memory.unwrap_or(true)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => e2b_error(409, format!("Sandbox {id} is already paused")),
        Err(e) => from_core(&e),
    }
}

async fn connect(
    State(d): State<AppState>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: ConnectBody = match body_or_default(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match d.e2b.connect(&key, &id, req.timeout).await {
        Ok((s, true)) => (StatusCode::CREATED, Json(s)).into_response(),
        Ok((s, false)) => (StatusCode::OK, Json(s)).into_response(),
        Err(e) => from_core(&e),
    }
}

/// The older `resume`: only for a paused sandbox.
async fn resume(
    State(d): State<AppState>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    match d.e2b.get(&key, &id) {
        Ok(s) if s.state == "running" => {
            return e2b_error(409, format!("Sandbox {id} is already running"))
        }
        Ok(_) => {}
        Err(e) => return from_core(&e),
    }
    let req: ConnectBody = match body_or_default(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match d.e2b.connect(&key, &id, req.timeout).await {
        Ok((s, _)) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(e) => from_core(&e),
    }
}

async fn unknown(req: Request) -> Response {
    e2b_error(
        404,
        format!(
            "banger's E2B listener has no {} {} (see docs/e2b.md for what it serves)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The VM an envd request is for, or the Connect error to answer.
fn envd_vm(d: &AppState, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let id = headers
        .get(SANDBOX_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = headers.get("x-access-token").and_then(|v| v.to_str().ok());
    d.e2b.envd_target(id, token).map_err(|r| {
        Box::new(match r {
            EnvdRefusal::NotFound => {
                connect_error(Code::NotFound, &format!("sandbox {id:?} not found"))
            }
            EnvdRefusal::Token => connect_error(
                Code::Unauthenticated,
                "missing or wrong X-Access-Token for this sandbox",
            ),
            EnvdRefusal::Paused => connect_error(
                Code::Unavailable,
                &format!("sandbox {id:?} is paused: connect to it to resume it"),
            ),
        })
    })
}

async fn envd_init(State(d): State<AppState>, headers: HeaderMap) -> Response {
    match envd_vm(&d, &headers) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => *r,
    }
}

/// The user an envd request acts as: `Authorization: Basic` (RPCs) or
/// `?username=` (files), else E2B's default user.
fn user_of(headers: &HeaderMap, username: Option<&str>) -> String {
    username
        .map(String::from)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(connect::basic_user)
        })
        .unwrap_or_else(|| DEFAULT_USER.to_string())
}

async fn filesystem(
    State(d): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let vm = match envd_vm(&d, &headers) {
        Ok(vm) => vm,
        Err(r) => return *r,
    };
    let user = user_of(&headers, None);
    match d.e2b.filesystem(&vm, &method, &user, &body).await {
        Ok(v) => Json(v).into_response(),
        Err((code, msg)) => connect_error(code, &msg),
    }
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    path: Option<String>,
    username: Option<String>,
}

/// An envd REST error: `{code, message}` with the status.
fn envd_error(e: &banger_core::e2b::E2bError) -> Response {
    let status = e.code().http_status();
    e2b_error(status, banger_core::error::error_chain(e))
}

async fn download(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Response {
    let vm = match envd_vm(&d, &headers) {
        Ok(vm) => vm,
        Err(r) => return *r,
    };
    let user = user_of(&headers, q.username.as_deref());
    let path = q.path.unwrap_or_default();
    match d.e2b.download(&vm, &path, &user).await {
        Ok((size, stream)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, size.to_string()),
            ],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(e) => envd_error(&e),
    }
}

async fn upload(State(d): State<AppState>, Query(q): Query<FileQuery>, req: Request) -> Response {
    use futures::StreamExt as _;
    let headers = req.headers().clone();
    let vm = match envd_vm(&d, &headers) {
        Ok(vm) => vm,
        Err(r) => return *r,
    };
    let user = user_of(&headers, q.username.as_deref());
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !ctype.starts_with("multipart/form-data") {
        let Some(path) = q.path else {
            return e2b_error(400, "an octet-stream upload needs ?path=");
        };
        let body = req
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(|e| e.to_string()));
        return match d.e2b.upload(&vm, &path, &user, body).await {
            Ok(v) => Json(vec![v]).into_response(),
            Err(e) => envd_error(&e),
        };
    }
    let mut mp = match axum::extract::Multipart::from_request(req, &d).await {
        Ok(m) => m,
        Err(e) => return e2b_error(400, format!("bad multipart body: {e}")),
    };
    let mut written = Vec::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return e2b_error(400, format!("bad multipart body: {e}")),
        };
        let path = match (&q.path, field.file_name()) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => f.to_string(),
            (None, None) => return e2b_error(400, "a file part has no path"),
        };
        let body = field.map(|r| r.map_err(|e| e.to_string()));
        match d.e2b.upload(&vm, &path, &user, Box::pin(body)).await {
            Ok(v) => written.push(v),
            Err(e) => return envd_error(&e),
        }
    }
    Json(written).into_response()
}

async fn process(
    State(d): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let vm = match envd_vm(&d, &headers) {
        Ok(vm) => vm,
        Err(r) => return *r,
    };
    match method.as_str() {
        "Start" => start(d, vm, &headers, &body).await,
        other => match d.e2b.process_call(&vm, other, &body).await {
            Ok(v) => Json(v).into_response(),
            Err((code, msg)) => connect_error(code, &msg),
        },
    }
}

/// A stream answer: the envelopes `rx` yields.
fn stream_response(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Response {
    use futures::StreamExt as _;
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/connect+json")],
        body,
    )
        .into_response()
}

/// `process.Process/Start`: the program through banger's exec stream, its
/// events as Connect envelopes (e2b/process.rs in the core).
async fn start(d: AppState, vm: String, headers: &HeaderMap, body: &[u8]) -> Response {
    let req: StartRequest = match connect::first_envelope(body)
        .map_err(|e| e.to_string())
        .and_then(|(_, m)| serde_json::from_slice(m).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let end = connect::end_stream(Some((
                Code::InvalidArgument,
                &format!("bad StartRequest: {e}"),
            )));
            let _ = tx.send(end).await;
            return stream_response(rx);
        }
    };
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(connect::basic_user)
        .unwrap_or_else(|| DEFAULT_USER.to_string());
    let keepalive = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(50)
        .clamp(5, 300);
    let rx = d
        .e2b
        .start_process(&vm, req, user, std::time::Duration::from_secs(keepalive));
    stream_response(rx)
}

/// Binds the listener and serves it until `stop`.
pub async fn serve(
    daemon: AppState,
    listen: &str,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = listen.parse()?;
    // In the host's namespace, where the SDKs run, as the dashboard.
    let std_listener = banger_core::network::in_host_netns(move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))??;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let addr = listener.local_addr()?;
    let app = router(daemon, addr);
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "the E2B listener stopped");
        }
    });
    tracing::info!(%addr, "E2B listener serving (control plane and envd)");
    Ok(addr)
}

/// Kills timed-out sandboxes every second until `stop`.
pub fn reap(daemon: AppState, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = daemon.e2b.reap().await {
                tracing::warn!(error = %e, "cannot reap E2B sandboxes");
            }
        }
    });
}
