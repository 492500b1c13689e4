//! `/v1/sessions`: guest sessions.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use axum::Json;
use banger_api::{
    ApiError, Session, SessionList, SessionSendRequest, SessionSignalRequest, SessionStartRequest,
    TermSize,
};
use banger_core::access::Caller;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppState};

/// Starts a command in a running VM as a session that outlives the
/// connection. Preflight (cwd exists, required commands on PATH) fails
/// with 400 and leaves nothing behind.
#[utoipa::path(post, path = "/v1/vms/{name}/sessions", tag = "sessions", params(("name" = String, Path, description = "VM name")),
    request_body = SessionStartRequest,
    responses((status = 201, body = Session), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn start(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SessionStartRequest>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    Ok((
        StatusCode::CREATED,
        Json(d.sessions.start(&name, req).await?),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only the sessions of this VM.
    pub vm: Option<String>,
}

/// Sessions with their current state (refreshed from the guests).
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(ListQuery), responses((status = 200, body = SessionList)))]
pub async fn list(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<SessionList>> {
    let mut sessions = d.sessions.list(q.vm.as_deref()).await?;
    d.access
        .retain_reachable(caller, &mut sessions, |s| &s.vm)?;
    Ok(Json(SessionList { sessions }))
}

/// One session.
#[utoipa::path(get, path = "/v1/sessions/{name}", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    responses((status = 200, body = Session), (status = 404, body = ApiError)))]
pub async fn show(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Session>> {
    Ok(Json(d.sessions.get(&name).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// `stdout` (default) or `stderr`.
    #[serde(default)]
    pub stream: Option<String>,
    /// From this byte (the previous answer's `X-Log-Offset`).
    #[serde(default)]
    pub offset: u64,
}

/// A session's output from a byte offset (text); `X-Log-Offset` is where to continue.
#[utoipa::path(get, path = "/v1/sessions/{name}/logs", tag = "sessions", params(("name" = String, Path, description = "Session name"), LogsQuery),
    responses((status = 200, description = "log text", content_type = "text/plain"), (status = 404, body = ApiError)))]
pub async fn logs(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let stderr = match q.stream.as_deref() {
        None | Some("stdout") => false,
        Some("stderr") => true,
        Some(other) => {
            return Err(super::AppError(ApiError::new(
                banger_api::ErrorCode::InvalidRequest,
                format!("stream {other:?} is not stdout or stderr"),
            )))
        }
    };
    let (text, next) = d.sessions.logs(&name, stderr, q.offset).await?;
    Ok(super::text_with_offset(text, next))
}

/// A session's output as Server-Sent Events, from `offset` on: `data:`
/// lines carry JSON, `{"type":"output","text":...,"offset":N}` for new output
/// and, last, `{"type":"end","state":...,"exit_code":...}` once the session
/// is no longer running. Reconnect with the last `offset`.
#[utoipa::path(get, path = "/v1/sessions/{name}/logs/stream", tag = "sessions", params(("name" = String, Path, description = "Session name"), LogsQuery),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"), (status = 404, body = ApiError)))]
pub async fn stream(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stderr = q.stream.as_deref() == Some("stderr");
    d.sessions.get(&name).await?;
    struct St {
        d: AppState,
        name: String,
        stderr: bool,
        offset: u64,
        done: bool,
    }
    let st = St {
        d,
        name,
        stderr,
        offset: q.offset,
        done: false,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if st.d.shutdown.is_cancelled() {
                return None;
            }
            match st.d.sessions.logs(&st.name, st.stderr, st.offset).await {
                Ok((text, next)) if !text.is_empty() => {
                    st.offset = next;
                    let ev = Event::default().event("output").data(
                        serde_json::json!({"type": "output", "text": text, "offset": next})
                            .to_string(),
                    );
                    return Some((Ok(ev), st));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(session = %st.name, error = %e, "log stream ended");
                    return None;
                }
            }
            match st.d.sessions.get(&st.name).await {
                Ok(s) if s.state != "running" => {
                    st.done = true;
                    let ev = Event::default().event("end").data(serde_json::json!({"type": "end", "state": s.state, "exit_code": s.exit_code}).to_string());
                    return Some((Ok(ev), st));
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))))
}

/// Writes to the session's stdin.
#[utoipa::path(post, path = "/v1/sessions/{name}/send", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    request_body = SessionSendRequest, responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn send(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SessionSendRequest>,
) -> ApiResult<StatusCode> {
    d.sessions.send(&name, &req.text).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a signal to the session's process group.
#[utoipa::path(post, path = "/v1/sessions/{name}/signal", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    request_body = SessionSignalRequest, responses((status = 200, body = Session), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn signal(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SessionSignalRequest>,
) -> ApiResult<Json<Session>> {
    Ok(Json(d.sessions.signal(&name, &req.signal).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Kill it first if it runs.
    #[serde(default)]
    pub force: bool,
}

/// Removes a session and its files in the guest.
#[utoipa::path(delete, path = "/v1/sessions/{name}", tag = "sessions", params(("name" = String, Path, description = "Session name"), RemoveQuery),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    d.sessions.remove(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the size of a session's terminal (sessions started with `tty`);
/// its programs get SIGWINCH.
#[utoipa::path(post, path = "/v1/sessions/{name}/resize", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    request_body = TermSize, responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn resize(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<TermSize>,
) -> ApiResult<StatusCode> {
    d.sessions.resize(&name, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
