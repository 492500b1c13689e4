//! The `/v1` HTTP API. Handlers only parse, call one method on the owning
//! subsystem, and map the result; all behaviour lives in banger-core.
//!
//! Every error is `{code, message, hint}` with the matching status. Every
//! request passes [`authorize`], which checks the caller's peer credentials
//! and logs the request with its uid and pid.

pub mod e2b;
pub mod guest;
pub mod images;
pub mod network;
pub mod ops;
pub mod peer;
pub mod sessions;

pub mod system;
pub mod vms;
pub mod workspaces;

use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use banger_api::{ApiError, ErrorCode};
use banger_core::access::{Caller, Target};
use banger_core::ToApiError;
use utoipa::OpenApi;

pub use crate::state::AppState;

/// An error response.
#[derive(Debug)]
pub struct AppError(pub ApiError);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

impl<E: ToApiError> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.to_api_error())
    }
}

pub type ApiResult<T> = Result<T, AppError>;

/// Runs a subsystem call that blocks (files removed, tools run) on the
/// blocking pool, so other API calls never wait behind it.
pub async fn off_thread<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> ApiResult<T>
where
    T: Send + 'static,
    E: ToApiError + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(AppError::from),
        Err(e) => Err(AppError(
            ApiError::new(
                ErrorCode::Internal,
                format!("The request's worker failed: {e}"),
            )
            .with_hint("See bangerd's log (journalctl -u bangerd)"),
        )),
    }
}

/// A plain-text answer with the byte offset to continue from in
/// `X-Log-Offset` (VM console logs, session output).
pub fn text_with_offset(text: String, next: u64) -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::HeaderName::from_static("x-log-offset"),
                next.to_string(),
            ),
        ],
        text,
    )
        .into_response()
}

/// `Json<T>` whose rejection is an API error naming what is wrong with the body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                // Its own status: 415 without a JSON content type, 413
                // past the size limit, 400/422 for what is in it.
                let status = rejection.status();
                let mut r = AppError(
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("Invalid request body: {}", rejection.body_text()),
                    )
                    .with_hint("See the API document at /v1/openapi.json for the expected fields"),
                )
                .into_response();
                *r.status_mut() = status;
                Err(r)
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "banger API",
        description = "The API of bangerd, served on its Unix socket. The CLI and the web dashboard use only this API.",
        license(name = "Apache-2.0")
    ),
    paths(
        system::version,
        system::defaults,
        e2b::info,
        e2b::keys,
        e2b::create_key,
        e2b::remove_key,
        guest::exec,
        guest::read,
        guest::write,
        guest::stat,
        guest::list,
        guest::op,
        guest::watch,
        system::capabilities,
        system::doctor,
        system::openapi,
        system::ui,
        system::ui_login,
        system::ui_logout,
        vms::stream,
        vms::pools,
        vms::pool_set,
        vms::snapshot,
        vms::fork,
        vms::snapshots,
        vms::snapshot_remove,
        ops::list,
        ops::show,
        ops::events,
        ops::cancel,
        ops::debug_start,
        images::list,
        images::show,
        images::build,
        images::import,
        images::remove,
        vms::list,
        vms::show,
        vms::create,
        vms::start,
        vms::stop,
        vms::remove,
        vms::logs,
        vms::stats,
        vms::set,
        vms::ssh,
        vms::proxy,
        vms::client_key,
        sessions::start,
        sessions::list,
        sessions::show,
        sessions::logs,
        sessions::stream,
        sessions::send,
        sessions::signal,
        sessions::resize,
        sessions::remove,
        network::ports,
        network::watch_ports,
        network::add_forward,
        network::vm_forwards,
        network::forwards,
        network::remove_forward,
        workspaces::push,
        workspaces::list_vm,
        workspaces::list,
        workspaces::show,
        workspaces::remove,
        workspaces::changes,
        workspaces::bundle,
        workspaces::exported,
        workspaces::auth_items,
        workspaces::auth_sync,
        workspaces::agents,
        workspaces::agent_run,
    ),
    tags(
        (name = "system", description = "Daemon and host"),
        (name = "ops", description = "Long-running operations"),
        (name = "images", description = "Guest images"),
        (name = "vms", description = "VM lifecycle and access"),
        (name = "guest", description = "Programs and files in a running VM, through its guest agent"),
        (name = "sessions", description = "Long-running commands in guests"),
        (name = "workspaces", description = "Repositories pushed into guests, credentials, coding agents"),
        (name = "e2b", description = "The E2B-compatible listener's address and API keys"),
        (name = "debug", description = "Test-only endpoints, served with debug.test_endpoints = true"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document, as served and as kept in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    document_errors(&mut doc);
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Adds the error answers every endpoint can give, as `ApiError`, where
/// its own annotation leaves them out: 403 (the caller may not use the
/// API), 500; 400 with parameters or a body; 404 with a name in the path;
/// 413 and 415 with a body.
fn document_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let answer = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let named = path.contains('{');
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let body = op.request_body.is_some();
            let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let mut codes = vec![
                ("403", "The caller may not use the API"),
                ("500", "Internal failure (the message has the cause)"),
            ];
            if body || params {
                codes.push(("400", "Invalid request"));
            }
            if named {
                codes.push(("404", "Not found"));
            }
            if body {
                codes.push(("413", "The body is too large"));
                codes.push(("415", "The body is not JSON"));
            }
            for (code, what) in codes {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| answer(what).into());
            }
        }
    }
}

/// The `/v1` routes, without authorization (each listener adds its own).
pub fn v1_routes(daemon: &AppState) -> Router<AppState> {
    let mut v1 = Router::new()
        .route("/version", get(system::version))
        .route("/defaults", get(system::defaults))
        .route("/capabilities", get(system::capabilities))
        .route("/doctor", get(system::doctor))
        .route("/openapi.json", get(system::openapi))
        .route("/ops", get(ops::list))
        .route("/ops/{id}", get(ops::show))
        .route("/ops/{id}/events", get(ops::events))
        .route("/ops/{id}/cancel", post(ops::cancel))
        .route("/images", get(images::list))
        .route("/images/build", post(images::build))
        .route("/images/import", post(images::import))
        .route("/images/{name}", get(images::show).delete(images::remove))
        .route("/vms", get(vms::list).post(vms::create))
        .route("/vms/{name}", get(vms::show).delete(vms::remove))
        .route("/vms/{name}/start", post(vms::start))
        .route("/vms/{name}/stop", post(vms::stop))
        .route("/vms/{name}/logs", get(vms::logs))
        .route("/vms/{name}/stats", get(vms::stats))
        .route("/vms/{name}/set", post(vms::set))
        .route("/vms/{name}/ssh", get(vms::ssh))
        .route("/vms/{name}/proxy/{port}", get(vms::proxy))
        .route("/ssh/client-key", get(vms::client_key))
        .route("/vms/{name}/sessions", post(sessions::start))
        .route("/sessions", get(sessions::list))
        .route(
            "/sessions/{name}",
            get(sessions::show).delete(sessions::remove),
        )
        .route("/sessions/{name}/logs", get(sessions::logs))
        .route("/sessions/{name}/logs/stream", get(sessions::stream))
        .route("/sessions/{name}/send", post(sessions::send))
        .route("/sessions/{name}/signal", post(sessions::signal))
        .route("/sessions/{name}/resize", post(sessions::resize))
        .route(
            "/vms/{name}/workspaces",
            get(workspaces::list_vm).post(workspaces::push),
        )
        .route("/workspaces", get(workspaces::list))
        .route(
            "/vms/{name}/workspaces/{ws}",
            get(workspaces::show).delete(workspaces::remove),
        )
        .route(
            "/vms/{name}/workspaces/{ws}/changes",
            get(workspaces::changes),
        )
        .route(
            "/vms/{name}/workspaces/{ws}/bundle",
            get(workspaces::bundle),
        )
        .route(
            "/vms/{name}/workspaces/{ws}/exported",
            post(workspaces::exported),
        )
        .route("/auth/items", get(workspaces::auth_items))
        .route("/vms/{name}/auth", post(workspaces::auth_sync))
        .route("/agents", get(workspaces::agents))
        .route("/vms/{name}/ports", get(network::ports))
        .route("/vms/{name}/ports/watch", get(network::watch_ports))
        .route(
            "/vms/{name}/forwards",
            get(network::vm_forwards)
                .post(network::add_forward)
                .delete(network::remove_forward),
        )
        .route("/forwards", get(network::forwards))
        .route("/vms/{name}/agent/run", post(workspaces::agent_run))
        .route("/vms/{name}/exec", post(guest::exec))
        .route("/vms/{name}/files", get(guest::read).put(guest::write))
        .route("/vms/{name}/files/stat", get(guest::stat))
        .route("/vms/{name}/files/list", get(guest::list))
        .route("/vms/{name}/files/op", post(guest::op))
        .route("/vms/{name}/files/watch", get(guest::watch));
    if daemon.config.debug.test_endpoints {
        v1 = v1.route("/debug/ops", post(ops::debug_start));
    }
    v1.route("/ui", get(system::ui))
        .route("/ui/login", post(system::ui_login))
        .route("/ui/sessions", delete(system::ui_logout))
        .route("/vms/stream", get(vms::stream))
        .route("/pools", get(vms::pools).post(vms::pool_set))
        .route("/vms/{name}/snapshot", post(vms::snapshot))
        .route("/vms/{name}/fork", post(vms::fork))
        .route("/snapshots", get(vms::snapshots))
        .route("/snapshots/{name}", delete(vms::snapshot_remove))
        .route("/e2b", get(e2b::info))
        .route("/e2b/keys", get(e2b::keys).post(e2b::create_key))
        .route("/e2b/keys/{id}", delete(e2b::remove_key))
}

/// Every error answer of the API is `{code, message, hint}` JSON: what
/// axum's extractors reject as text (a bad path or query) is wrapped, its
/// status kept.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut r = AppError(
        ApiError::new(error_code_of(status.as_u16()), message)
            .with_hint("See the API document at /v1/openapi.json"),
    )
    .into_response();
    *r.status_mut() = status;
    r
}

/// The error code an HTTP error status stands for. Pure.
fn error_code_of(status: u16) -> ErrorCode {
    match status {
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        499 => ErrorCode::Cancelled,
        503 => ErrorCode::Unavailable,
        400..=499 => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    }
}

/// The API on the Unix socket: every request's peer credentials checked.
pub fn router(daemon: AppState) -> Router {
    Router::new()
        .nest(
            "/v1",
            v1_routes(&daemon).layer(axum::middleware::from_fn(json_errors)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            authorize,
        ))
        .with_state(daemon)
}

pub async fn not_found(req: Request) -> AppError {
    AppError(
        ApiError::new(
            ErrorCode::NotFound,
            format!("No endpoint {} {}", req.method(), req.uri().path()),
        )
        .with_hint("The endpoints are listed in /v1/openapi.json"),
    )
}

pub async fn method_not_allowed(req: Request) -> Response {
    let mut r = AppError(ApiError::new(
        ErrorCode::InvalidRequest,
        format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    ))
    .into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Checks the caller's credentials and logs the request.
async fn authorize(
    State(daemon): State<AppState>,
    ConnectInfo(peer): ConnectInfo<peer::PeerCred>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    if !peer::is_authorized(&peer, daemon.socket_gid) {
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = peer.pid.unwrap_or(0), %method, %path, "request refused: not in the socket group");
        return AppError(
            ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "User id {} may not use bangerd: it is neither root nor in group {:?}",
                    peer.uid, daemon.config.daemon.socket_group
                ),
            )
            .with_hint(format!(
                "Add the user to the group: sudo usermod -aG {} $USER, then log in again",
                daemon.config.daemon.socket_group
            )),
        )
        .into_response();
    }
    let caller = daemon.access.caller(peer.uid);
    if let Some(refused) = confine(&daemon, caller, &path) {
        return refused.into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid.unwrap_or(0),
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "request"
    );
    resp
}

/// Under `access.confine_users`, a request about a VM, session or snapshot
/// the caller did not make is answered as if it did not exist.
fn confine(daemon: &AppState, caller: Caller, path: &str) -> Option<AppError> {
    if caller.all {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let target = Target::of_path(&decoded)?;
    match daemon.access.may(caller, &target) {
        Ok(true) => None,
        Ok(false) => {
            let what = match target {
                Target::Vm(_) => "VM",
                Target::Session(_) => "session",
                Target::Snapshot(_) => "snapshot",
            };
            Some(AppError(
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("No {what} named {:?}", target.name()),
                )
                .with_hint("`banger vm ls` lists the VMs you can use"),
            ))
        }
        Err(e) => Some(AppError::from(e)),
    }
}

#[cfg(test)]
mod tests {
    /// Every endpoint documents its error answers as ApiError.
    #[test]
    fn every_operation_documents_its_errors() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut seen = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                let r = &op["responses"];
                assert!(r.get("500").is_some(), "{method} {path}: no 500");
                if path.contains('{') {
                    assert!(r.get("404").is_some(), "{method} {path}: no 404");
                }
                if op.get("requestBody").is_some() {
                    for code in ["400", "413", "415"] {
                        assert!(r.get(code).is_some(), "{method} {path}: no {code}");
                    }
                }
                seen += 1;
            }
        }
        assert!(seen > 40, "{seen} operations");
    }

    /// The repo keeps the served OpenAPI document in docs/openapi.json. This
    /// fails when the API changed and the copy did not; regenerate with
    /// `cargo run -p bangerd -- --print-openapi > docs/openapi.json`.
    #[test]
    fn docs_copy_of_openapi_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        let live = super::openapi_json();
        assert!(
            kept.trim() == live.trim(),
            "docs/openapi.json is out of date; run: cargo run -p bangerd -- --print-openapi > docs/openapi.json"
        );
    }
}
