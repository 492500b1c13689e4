//! `/v1/ops`: list, show, follow (Server-Sent Events) and cancel operations.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use axum::Json;
use banger_api::{ApiError, DebugOpRequest, ErrorCode, OpEvent, OpEventBody, OpList, Operation};
use banger_core::access::Caller;
use banger_core::ops::{Ops, StepSpec};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppError, AppState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Include finished operations (default: only running ones).
    #[serde(default)]
    pub all: bool,
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// Operations, newest first.
#[utoipa::path(get, path = "/v1/ops", tag = "ops", params(ListQuery),
    responses((status = 200, body = OpList)))]
pub async fn list(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<OpList>> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(AppError(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit {limit} is not in 1..=1000"),
        )));
    }
    let mut ops = d.ops.list(limit, q.all)?;
    // A confined caller sees the operations on VMs they reach.
    if let Some(mine) = d.access.vm_names(caller)? {
        ops.retain(|o| o.kind.starts_with("vm.") && mine.contains(&o.target));
    }
    Ok(Json(OpList { ops }))
}

/// One operation's snapshot.
#[utoipa::path(get, path = "/v1/ops/{id}", tag = "ops", params(("id" = String, Path, description = "Operation id")),
    responses((status = 200, body = Operation), (status = 404, body = ApiError)))]
pub async fn show(State(d): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Operation>> {
    Ok(Json(d.ops.get(&id)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a sequence number above this (default 0: all).
    #[serde(default)]
    pub after: u64,
}

/// The operation's events as Server-Sent Events: the backlog after `after`,
/// then live ones; the stream ends after the `finished` event. Each event has
/// `event: <type>`, `id: <seq>` and `data: <OpEvent JSON>`.
#[utoipa::path(get, path = "/v1/ops/{id}/events", tag = "ops",
    params(("id" = String, Path, description = "Operation id"), EventsQuery),
    responses((status = 200, description = "text/event-stream of OpEvent", body = OpEvent, content_type = "text/event-stream"),
              (status = 404, body = ApiError)))]
pub async fn events(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Subscribe before the first read so no wakeup is missed.
    let rx = d.ops.subscribe(&id);
    d.ops.get(&id)?;
    let state = Follow {
        ops: d.ops.clone(),
        id,
        after: q.after,
        rx,
        buf: VecDeque::new(),
        done: false,
        shutdown: d.shutdown.clone(),
    };
    Ok(Sse::new(futures::stream::unfold(state, Follow::next))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Follow {
    ops: Ops,
    id: String,
    after: u64,
    rx: Option<watch::Receiver<u64>>,
    buf: VecDeque<OpEvent>,
    done: bool,
    shutdown: CancellationToken,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                self.after = ev.seq;
                if matches!(ev.body, OpEventBody::Finished { .. }) {
                    self.done = true;
                }
                let event = Event::default()
                    .event(ev.body.type_name())
                    .id(ev.seq.to_string())
                    .json_data(&ev)
                    .unwrap_or_else(|_| Event::default().comment("unserializable event"));
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            match self.ops.events_after(&self.id, self.after, 256) {
                Ok(v) if !v.is_empty() => {
                    self.buf.extend(v);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(op = %self.id, error = %e, "cannot read operation events");
                    return None;
                }
            }
            let rx = self.rx.as_mut()?;
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The operation finished; what is left is in the store.
                        self.rx = None;
                    }
                }
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }
}

/// Asks a running operation to stop. Cancellation reaches the step that is
/// running; the operation ends `cancelled` once it has cleaned up.
#[utoipa::path(post, path = "/v1/ops/{id}/cancel", tag = "ops", params(("id" = String, Path, description = "Operation id")),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "Already finished")))]
pub async fn cancel(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, Json(d.ops.cancel(&id)?)))
}

/// Starts a synthetic operation (`debug.sleep`) with `steps` steps of
/// `step_ms` each, reporting progress every 50 ms. Only served when
/// `debug.test_endpoints = true`.
#[utoipa::path(post, path = "/v1/debug/ops", tag = "debug", request_body = DebugOpRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError)))]
pub async fn debug_start(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<DebugOpRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    if req.steps == 0 || req.steps > 20 || req.step_ms > 600_000 {
        return Err(AppError(ApiError::new(
            ErrorCode::InvalidRequest,
            "steps must be 1..=20 and step_ms at most 600000",
        )));
    }
    let steps = (1..=req.steps)
        .map(|i| StepSpec::new(format!("step{i}"), format!("Sleep step {i}")))
        .collect();
    let op = d
        .ops
        .spawn("debug.sleep", "debug", steps, move |h| async move {
            for i in 1..=req.steps {
                let name = format!("step{i}");
                h.step(&name, async {
                    let ticks = (req.step_ms / 50).max(1);
                    for t in 1..=ticks {
                        tokio::time::sleep(Duration::from_millis(req.step_ms / ticks)).await;
                        h.progress(&name, t, Some(ticks), Some("ticks"));
                    }
                    if req.fail_at == Some(i) {
                        return Err(ApiError::new(
                            ErrorCode::Internal,
                            format!("Step {i} failed as requested"),
                        ));
                    }
                    Ok(())
                })
                .await?;
            }
            Ok::<_, banger_api::ApiError>(serde_json::json!({ "steps": req.steps }))
        })?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}
