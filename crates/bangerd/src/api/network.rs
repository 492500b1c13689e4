//! `/v1/vms/{name}/ports` and forwards: a guest's listening sockets, and
//! host ports forwarded to guest ports.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use banger_api::{ApiError, Forward, ForwardList, ForwardRequest, VmPortList};
use banger_core::access::Caller;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppState};

/// The guest's listening TCP and UDP sockets, with processes and URLs.
#[utoipa::path(get, path = "/v1/vms/{name}/ports", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmPortList), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn ports(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VmPortList>> {
    Ok(Json(d.forwards.ports(&name).await?))
}

/// Sockets opening and closing in the guest as Server-Sent Events (`event:
/// port`, data a `VmPortEvent`): `open` for each one listening at the
/// start, then each change (seen within a quarter of a second), until the
/// client leaves. Needs banger-agent in the guest.
#[utoipa::path(get, path = "/v1/vms/{name}/ports/watch", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, description = "text/event-stream of VmPortEvent", content_type = "text/event-stream"), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn watch_ports(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let events = d.forwards.watch_ports(&name).await?;
    let shutdown = d.shutdown.clone();
    let events = events
        .map(|e| {
            Ok(Event::default()
                .event("port")
                .data(serde_json::to_string(&e).unwrap_or_default()))
        })
        .take_until(async move { shutdown.cancelled().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Forwards a host port (on 127.0.0.1 by default, in the host's own network
/// namespace) to a guest port; kept across daemon restarts.
#[utoipa::path(post, path = "/v1/vms/{name}/forwards", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = ForwardRequest,
    responses((status = 201, body = Forward), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn add_forward(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ForwardRequest>,
) -> ApiResult<(StatusCode, Json<Forward>)> {
    Ok((StatusCode::CREATED, Json(d.forwards.add(&name, &req)?)))
}

/// A VM's forwards.
#[utoipa::path(get, path = "/v1/vms/{name}/forwards", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = ForwardList), (status = 404, body = ApiError)))]
pub async fn vm_forwards(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ForwardList>> {
    Ok(Json(ForwardList {
        forwards: d.forwards.list(Some(&name))?,
    }))
}

/// Every forward.
#[utoipa::path(get, path = "/v1/forwards", tag = "vms", responses((status = 200, body = ForwardList)))]
pub async fn forwards(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<ForwardList>> {
    let mut forwards = d.forwards.list(None)?;
    d.access
        .retain_reachable(caller, &mut forwards, |f| &f.vm)?;
    Ok(Json(ForwardList { forwards }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveForwardQuery {
    /// Default 127.0.0.1.
    pub host_addr: Option<String>,
    pub host_port: u16,
}

/// Removes a forward.
#[utoipa::path(delete, path = "/v1/vms/{name}/forwards", tag = "vms", params(("name" = String, Path, description = "VM name"), RemoveForwardQuery),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn remove_forward(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveForwardQuery>,
) -> ApiResult<StatusCode> {
    d.forwards
        .remove(&name, q.host_addr.as_deref(), q.host_port)?;
    Ok(StatusCode::NO_CONTENT)
}
