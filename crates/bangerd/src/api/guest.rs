//! `/v1/vms/{name}/exec` and `/v1/vms/{name}/files/...`: programs and files
//! in a running VM, through its guest agent.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use banger_api::{ApiError, GuestFile, GuestFileList, GuestFileOp, VmExecRequest, VmExecResult};
use banger_core::guests;
use futures::TryStreamExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppState};

/// The `Upgrade` token of a streamed exec.
pub const EXEC_UPGRADE: &str = "banger-exec";

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_UPGRADE))
}

/// Runs a program in the VM (argv as given, no shell). Without `Upgrade`,
/// to its end: its output (16 MiB per stream at most) and exit. With
/// `Connection: Upgrade` and `Upgrade: banger-exec`, after `101` the
/// connection carries frames both ways (see docs/api.md): `started`, then
/// stdout/stderr and the `exit`; stdin, resizes and signals the other way.
#[utoipa::path(post, path = "/v1/vms/{name}/exec", tag = "guest",
    params(("name" = String, Path, description = "VM name")),
    request_body = VmExecRequest,
    responses((status = 200, body = VmExecResult), (status = 101, description = "Switched to a frame stream"),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub async fn exec(
    State(d): State<AppState>,
    Path(name): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let upgrade = wants_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body = match ApiJson::<VmExecRequest>::from_request(req, &d).await {
        Ok(ApiJson(body)) => body,
        Err(rejected) => return Ok(rejected),
    };
    let Some(on_upgrade) = on_upgrade else {
        let r = d.guests.exec(&name, body).await?;
        return Ok(axum::response::IntoResponse::into_response(Json(r)));
    };
    let (pid, frames) = d.guests.exec_stream(&name, body).await?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => guests::relay_exec(TokioIo::new(up), pid, frames).await,
            Err(e) => tracing::warn!(vm = %name, error = %e, "exec upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, EXEC_UPGRADE)
        .body(Body::empty())
        .unwrap_or_default())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// An absolute guest path.
    pub path: String,
    #[serde(default)]
    pub offset: u64,
    /// At most this many bytes.
    pub limit: Option<u64>,
}

/// A file's bytes (streamed), with `X-File-Size` and `X-File-Mode`.
#[utoipa::path(get, path = "/v1/vms/{name}/files", tag = "guest",
    params(("name" = String, Path, description = "VM name"), ReadQuery),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn read(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<Response> {
    let (st, frames) = d.guests.read(&name, &q.path, q.offset, q.limit).await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("x-file-size", st.size)
        .header("x-file-mode", format!("{:o}", st.mode))
        .body(Body::from_stream(guests::read_stream(frames)))
        .unwrap_or_default())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    pub path: String,
    /// Permission bits in octal, e.g. `644` (default: the old file's, else 644).
    pub mode: Option<String>,
    /// Create missing parent directories.
    #[serde(default)]
    pub parents: bool,
}

/// Writes a file from the body (atomically: a temporary file renamed over
/// the target once every byte is there).
#[utoipa::path(put, path = "/v1/vms/{name}/files", tag = "guest",
    params(("name" = String, Path, description = "VM name"), WriteQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = GuestFile), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn write(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WriteQuery>,
    body: Body,
) -> ApiResult<Json<GuestFile>> {
    let mode = guests::parse_mode(q.mode.as_deref())?;
    let frames = d.guests.write(&name, &q.path, mode, q.parents).await?;
    let body = body.into_data_stream().map_err(|e| e.to_string());
    Ok(Json(guests::write_stream(frames, body).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    pub path: String,
    /// Levels to list (1: the directory's own entries).
    pub depth: Option<u32>,
    /// Watch subdirectories too.
    #[serde(default)]
    pub recursive: bool,
}

/// A file's metadata (a symlink's own).
#[utoipa::path(get, path = "/v1/vms/{name}/files/stat", tag = "guest",
    params(("name" = String, Path, description = "VM name"), PathQuery),
    responses((status = 200, body = GuestFile), (status = 404, body = ApiError)))]
pub async fn stat(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<GuestFile>> {
    Ok(Json(d.guests.stat(&name, &q.path).await?))
}

/// The entries of a directory, `depth` levels down (sorted; symlinks not
/// followed; at most 100,000).
#[utoipa::path(get, path = "/v1/vms/{name}/files/list", tag = "guest",
    params(("name" = String, Path, description = "VM name"), PathQuery),
    responses((status = 200, body = GuestFileList), (status = 404, body = ApiError)))]
pub async fn list(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<GuestFileList>> {
    let entries = d.guests.list(&name, &q.path, q.depth.unwrap_or(1)).await?;
    Ok(Json(GuestFileList { entries }))
}

/// mkdir -p, remove, or move; the result's metadata (204 for a removal).
#[utoipa::path(post, path = "/v1/vms/{name}/files/op", tag = "guest",
    params(("name" = String, Path, description = "VM name")),
    request_body = GuestFileOp,
    responses((status = 200, body = GuestFile), (status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn op(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(op): ApiJson<GuestFileOp>,
) -> ApiResult<Response> {
    Ok(match d.guests.op(&name, op).await? {
        Some(f) => axum::response::IntoResponse::into_response(Json(f)),
        None => axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT),
    })
}

/// Changes under a directory as Server-Sent Events (`event: file`, data a
/// `GuestFileEvent`), until the client leaves.
#[utoipa::path(get, path = "/v1/vms/{name}/files/watch", tag = "guest",
    params(("name" = String, Path, description = "VM name"), PathQuery),
    responses((status = 200, description = "text/event-stream of GuestFileEvent", content_type = "text/event-stream"), (status = 404, body = ApiError)))]
pub async fn watch(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let frames = d.guests.watch(&name, &q.path, q.recursive).await?;
    let shutdown = d.shutdown.clone();
    let events = guests::watch_stream(frames)
        .map(|e| {
            Ok(Event::default()
                .event("file")
                .data(serde_json::to_string(&e).unwrap_or_default()))
        })
        .take_until(async move { shutdown.cancelled().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

use axum::extract::FromRequest;
