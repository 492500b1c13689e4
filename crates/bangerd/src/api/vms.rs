//! `/v1/vms`: VM lifecycle, console log, SSH details and the TCP proxy.

use std::time::Duration;

use super::AppError;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Extension;
use axum::Json;
use banger_api::ErrorCode;
use banger_api::{ApiError, Operation, Vm, VmCreateRequest, VmList, VmSshInfo, VmStopRequest};
use banger_core::access::{Caller, Target};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppState};

/// All VMs, by name.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = VmList)))]
pub async fn list(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<VmList>> {
    let mut vms = d.vms.list_user()?;
    d.access.retain_reachable(caller, &mut vms, |v| &v.name)?;
    Ok(Json(VmList { vms }))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Vm), (status = 404, body = ApiError)))]
pub async fn show(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(d.vms.get(&name)?))
}

/// Creates (and by default boots) a VM: an operation (`vm.create`) with the
/// steps disks, config, network, spawn, boot. Preflight errors (bad name,
/// unknown image, unusable backend, bad sizes) come back at once and change
/// nothing.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = VmCreateRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub async fn create(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<VmCreateRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    if let Some(snap) = &req.from_snapshot {
        let target = Target::Snapshot(snap.clone());
        if !d.access.may(caller, &target)? {
            return Err(AppError(
                ApiError::new(ErrorCode::NotFound, format!("No snapshot named {snap:?}"))
                    .with_hint("`banger snapshot ls` lists the snapshots you can use"),
            ));
        }
    }
    let name = req.name.clone();
    let op = d.vms.start_create(req).await?;
    d.access.record_vm_owner(&name, caller.uid)?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Boots a stopped VM (an operation, `vm.start`).
#[utoipa::path(post, path = "/v1/vms/{name}/start", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn start(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, Json(d.vms.start_start(&name)?)))
}

/// Stops a running VM: the guest is asked to power off (Ctrl-Alt-Del), and
/// killed after `timeout_secs` (default 30); at once with `force`.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = VmStopRequest,
    responses((status = 200, body = Vm), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn stop(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<VmStopRequest>,
) -> ApiResult<Json<Vm>> {
    let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(30).min(3600));
    Ok(Json(d.vms.stop(&name, req.force, timeout).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Kill it first if it runs.
    #[serde(default)]
    pub force: bool,
}

/// Removes a VM with its disks, address and TAP.
#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name"), RemoveQuery),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    d.vms.remove(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Start at this byte (the `X-Log-Offset` of the previous answer) to follow the log.
    #[serde(default)]
    pub offset: u64,
}

/// Resources and figures of a VM: VMM CPU and RSS and disk use on the host;
/// load, memory and disk inside the guest (over SSH, running VMs only).
#[utoipa::path(get, path = "/v1/vms/{name}/stats", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = banger_api::VmStats), (status = 404, body = ApiError)))]
pub async fn stats(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<banger_api::VmStats>> {
    Ok(Json(d.vms.stats(&name).await?))
}

/// Changes cpus, memory, or grows the root or work disk. Only while stopped.
#[utoipa::path(post, path = "/v1/vms/{name}/set", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = banger_api::VmSetRequest,
    responses((status = 200, body = Vm), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn set(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<banger_api::VmSetRequest>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(d.vms.set(&name, req).await?))
}

/// The serial console log (text).
#[utoipa::path(get, path = "/v1/vms/{name}/logs", tag = "vms", params(("name" = String, Path, description = "VM name"), LogsQuery),
    responses((status = 200, description = "console log", content_type = "text/plain"), (status = 404, body = ApiError)))]
pub async fn logs(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let (text, next) = d.vms.console_log_from(&name, q.offset)?;
    Ok(super::text_with_offset(text, next))
}

/// The key, user and pinned host key for `ssh` to the VM through the proxy.
/// Holds a private key: only root and the socket group can ask.
#[utoipa::path(get, path = "/v1/vms/{name}/ssh", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmSshInfo), (status = 404, body = ApiError)))]
pub async fn ssh(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VmSshInfo>> {
    Ok(Json(d.vms.ssh_info(&name)?))
}

/// The key every VM authorizes (root and the socket group only).
#[utoipa::path(get, path = "/v1/ssh/client-key", tag = "vms", responses((status = 200, body = banger_api::SshClientKey)))]
pub async fn client_key(State(d): State<AppState>) -> ApiResult<Json<banger_api::SshClientKey>> {
    Ok(Json(d.vms.client_key_info()?))
}

/// A raw TCP connection to a port of the VM, spliced onto this HTTP
/// connection after `101 Switching Protocols` (send `Connection: Upgrade`,
/// `Upgrade: tcp`). The daemon connects from the VM network, so this works
/// from any namespace. `banger vm proxy NAME PORT` is an ssh ProxyCommand.
#[utoipa::path(get, path = "/v1/vms/{name}/proxy/{port}", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ("port" = u16, Path, description = "Guest TCP port")),
    responses((status = 101, description = "Switching to a raw TCP stream"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn proxy(
    State(d): State<AppState>,
    Path((name, port)): Path<(String, u16)>,
    mut req: Request,
) -> ApiResult<Response> {
    let mut tcp = d.vms.connect(&name, port).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut io = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut tcp).await {
                    tracing::debug!(vm = %name, port, error = %e, "proxy connection ended");
                }
            }
            Err(e) => tracing::warn!(vm = %name, error = %e, "proxy upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "tcp")
        .body(axum::body::Body::empty())
        .unwrap_or_default())
}

/// Every VM with live VMM CPU and memory, as Server-Sent Events: a
/// `FleetSnapshot` (`event: vms`) at once and then every second.
#[utoipa::path(get, path = "/v1/vms/stream", tag = "vms",
    responses((status = 200, description = "text/event-stream of FleetSnapshot", content_type = "text/event-stream")))]
pub async fn stream(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use banger_core::vms::stats::{clock_ticks_per_second, CpuMeter};
    let meter = CpuMeter::new(clock_ticks_per_second());
    let events =
        futures::stream::unfold((d, meter, true), move |(d, mut meter, first)| async move {
            if !first {
                tokio::select! {
                    _ = d.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            let mut snap = d.vms.fleet(&mut meter);
            if let Ok(Some(mine)) = d.access.vm_names(caller) {
                snap.vms.retain(|v| mine.contains(&v.vm.name));
            }
            let ev = Event::default()
                .event("vms")
                .data(serde_json::to_string(&snap).unwrap_or_default());
            Some((Ok(ev), (d, meter, false)))
        });
    Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

/// Takes a snapshot of a VM (an operation, `vm.snapshot`): a running VM is
/// paused while its device and memory state is saved and its disks copied,
/// then resumed; of a stopped VM only the disks are kept.
#[utoipa::path(post, path = "/v1/vms/{name}/snapshot", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = banger_api::VmSnapshotRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn snapshot(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<banger_api::VmSnapshotRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, Json(d.snapshots.take(&name, req)?)))
}

/// Forks a running VM (an operation, `vm.fork`): a snapshot restored as a
/// new VM with its own name, address, MAC, SSH host key and machine-id;
/// both keep running.
#[utoipa::path(post, path = "/v1/vms/{name}/fork", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = banger_api::VmForkRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn fork(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<banger_api::VmForkRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let new = req.name.clone();
    let op = d.snapshots.fork(&name, req)?;
    d.access.record_vm_owner(&new, caller.uid)?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Snapshots, by name.
#[utoipa::path(get, path = "/v1/snapshots", tag = "vms", responses((status = 200, body = banger_api::SnapshotList)))]
pub async fn snapshots(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<banger_api::SnapshotList>> {
    let mut list = d.snapshots.list()?;
    if let Some(mine) = d.access.snapshot_names(caller)? {
        list.snapshots.retain(|s| mine.contains(&s.name));
    }
    Ok(Json(list))
}

/// Removes a snapshot and its files.
#[utoipa::path(delete, path = "/v1/snapshots/{name}", tag = "vms", params(("name" = String, Path, description = "snapshot name")),
    responses((status = 204), (status = 404, body = ApiError), (status = 400, body = ApiError)))]
pub async fn snapshot_remove(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let snapshots = d.snapshots.clone();
    super::off_thread(move || {
        snapshots
            .remove(&name)
            .map_err(|e| banger_core::ToApiError::to_api_error(&e))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The warm pool: sizes per image and size, with ready and booting counts.
#[utoipa::path(get, path = "/v1/pools", tag = "vms", responses((status = 200, body = banger_api::PoolList)))]
pub async fn pools(State(d): State<AppState>) -> ApiResult<Json<banger_api::PoolList>> {
    Ok(Json(d.pool.list()?))
}

/// Keeps `size` VMs of an image and size booted for `vm create` (0: none);
/// refills in the background within `pool.memory_budget`.
#[utoipa::path(post, path = "/v1/pools", tag = "vms", request_body = banger_api::PoolSetRequest,
    responses((status = 200, body = banger_api::PoolStatus), (status = 400, body = ApiError)))]
pub async fn pool_set(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<banger_api::PoolSetRequest>,
) -> ApiResult<Json<banger_api::PoolStatus>> {
    Ok(Json(d.pool.set(&req)?))
}
