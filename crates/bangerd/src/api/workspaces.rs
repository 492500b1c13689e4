//! `/v1/vms/{name}/workspaces`, `/v1/auth`, `/v1/agents`: workspaces,
//! credential sync and coding agents.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use banger_api::{
    AgentList, AgentRunRequest, ApiError, AuthItemList, AuthSyncReport, AuthSyncRequest, Session,
    Workspace, WorkspaceChanges, WorkspaceExported, WorkspaceList,
};
use banger_core::access::Caller;
use banger_core::workspaces::PushParams;
use futures::TryStreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    /// The workspace's name (unique per VM).
    pub name: String,
    /// Its guest directory (default `/work/NAME`).
    pub dest: Option<String>,
    /// The repository's path on the host (where exports go back to).
    pub host_path: String,
    /// The host's HEAD commit; the bundle's HEAD must be it.
    pub base: String,
    /// The host's branch (none: detached HEAD).
    pub branch: Option<String>,
    /// Replace an existing workspace or directory.
    #[serde(default)]
    pub force: bool,
}

/// Pushes a repository into the VM. The body is a tar stream (see
/// banger-core's workspaces::script): `bundle`, `staged.patch`, `tree/...`,
/// `deleted`. Nothing is left in the guest when it fails.
#[utoipa::path(post, path = "/v1/vms/{name}/workspaces", tag = "workspaces", params(("name" = String, Path, description = "VM name"), PushQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = Workspace), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn push(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PushQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Workspace>)> {
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream);
    let params = PushParams {
        name: q.name,
        dest: q.dest,
        host_path: q.host_path,
        base: q.base,
        branch: q.branch,
        force: q.force,
    };
    let ws = d.workspaces.push(&name, params, Box::new(reader)).await?;
    Ok((StatusCode::CREATED, Json(ws)))
}

/// A VM's workspaces.
#[utoipa::path(get, path = "/v1/vms/{name}/workspaces", tag = "workspaces", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = WorkspaceList), (status = 404, body = ApiError)))]
pub async fn list_vm(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkspaceList>> {
    Ok(Json(WorkspaceList {
        workspaces: d.workspaces.list(Some(&name))?,
    }))
}

/// Every workspace.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces", responses((status = 200, body = WorkspaceList)))]
pub async fn list(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<WorkspaceList>> {
    let mut workspaces = d.workspaces.list(None)?;
    d.access
        .retain_reachable(caller, &mut workspaces, |w| &w.vm)?;
    Ok(Json(WorkspaceList { workspaces }))
}

/// One workspace.
#[utoipa::path(get, path = "/v1/vms/{name}/workspaces/{ws}", tag = "workspaces", params(("name" = String, Path, description = "VM name"), ("ws" = String, Path, description = "Workspace name")),
    responses((status = 200, body = Workspace), (status = 404, body = ApiError)))]
pub async fn show(
    State(d): State<AppState>,
    Path((name, ws)): Path<(String, String)>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(d.workspaces.get(&name, Some(&ws))?))
}

/// Forgets a workspace; its files stay in the guest.
#[utoipa::path(delete, path = "/v1/vms/{name}/workspaces/{ws}", tag = "workspaces", params(("name" = String, Path, description = "VM name"), ("ws" = String, Path, description = "Workspace name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn remove(
    State(d): State<AppState>,
    Path((name, ws)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    d.workspaces.remove(&name, &ws)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The guest's commits an export would bring back (since the last export,
/// or the base). 409 when the guest's history lost the base commit or its
/// HEAD is detached.
#[utoipa::path(get, path = "/v1/vms/{name}/workspaces/{ws}/changes", tag = "workspaces", params(("name" = String, Path, description = "VM name"), ("ws" = String, Path, description = "Workspace name")),
    responses((status = 200, body = WorkspaceChanges), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn changes(
    State(d): State<AppState>,
    Path((name, ws)): Path<(String, String)>,
) -> ApiResult<Json<WorkspaceChanges>> {
    Ok(Json(d.workspaces.changes(&name, Some(&ws)).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    /// The guest commit to bundle up to (from `changes`).
    pub head: String,
}

/// A git bundle of the base commit..`head`, its tip at `refs/banger/export`.
#[utoipa::path(get, path = "/v1/vms/{name}/workspaces/{ws}/bundle", tag = "workspaces", params(("name" = String, Path, description = "VM name"), ("ws" = String, Path, description = "Workspace name"), BundleQuery),
    responses((status = 200, description = "a git bundle", content_type = "application/octet-stream"), (status = 404, body = ApiError)))]
pub async fn bundle(
    State(d): State<AppState>,
    Path((name, ws)): Path<(String, String)>,
    Query(q): Query<BundleQuery>,
) -> ApiResult<Response> {
    use futures::StreamExt;
    let bundle = d.workspaces.bundle(&name, Some(&ws), &q.head).await?;
    // Streamed as read from the guest; a failure mid-way cuts the body
    // short of its Content-Length, which the client reports.
    let body = axum::body::Body::from_stream(bundle.chunks.map(|r| {
        r.map_err(|e| {
            let chain = banger_core::error::error_chain(&e);
            tracing::warn!(error = %chain, "export bundle stream failed");
            std::io::Error::other(chain)
        })
    }));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, bundle.size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Records the commit an export brought back (the next export starts after it).
#[utoipa::path(post, path = "/v1/vms/{name}/workspaces/{ws}/exported", tag = "workspaces", params(("name" = String, Path, description = "VM name"), ("ws" = String, Path, description = "Workspace name")),
    request_body = WorkspaceExported, responses((status = 200, body = Workspace), (status = 404, body = ApiError)))]
pub async fn exported(
    State(d): State<AppState>,
    Path((name, ws)): Path<(String, String)>,
    ApiJson(req): ApiJson<WorkspaceExported>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(d.workspaces.exported(
        &name,
        Some(&ws),
        &req.commit,
    )?))
}

/// The credential items `auth sync` copies (the daemon's `auth.items`).
#[utoipa::path(get, path = "/v1/auth/items", tag = "workspaces", responses((status = 200, body = AuthItemList)))]
pub async fn auth_items(State(d): State<AppState>) -> Json<AuthItemList> {
    Json(AuthItemList {
        items: d.credentials.items(),
    })
}

/// Writes credential values into the guest user's home (files 0600). The
/// answer names items and paths, never values.
#[utoipa::path(post, path = "/v1/vms/{name}/auth", tag = "workspaces", params(("name" = String, Path, description = "VM name")),
    request_body = AuthSyncRequest, responses((status = 200, body = AuthSyncReport), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn auth_sync(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AuthSyncRequest>,
) -> ApiResult<Json<AuthSyncReport>> {
    Ok(Json(d.credentials.sync(&name, &req.values).await?))
}

/// The agent profiles (built in, and files in `agents.dir`).
#[utoipa::path(get, path = "/v1/agents", tag = "workspaces", responses((status = 200, body = AgentList)))]
pub async fn agents(State(d): State<AppState>) -> ApiResult<Json<AgentList>> {
    Ok(Json(d.agent_runs.agents().api_list()?))
}

/// Starts the VM's agent (or `agent`) on a prompt as a session, in a
/// workspace's directory when one is named.
#[utoipa::path(post, path = "/v1/vms/{name}/agent/run", tag = "workspaces", params(("name" = String, Path, description = "VM name")),
    request_body = AgentRunRequest, responses((status = 201, body = Session), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn agent_run(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AgentRunRequest>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    Ok((
        StatusCode::CREATED,
        Json(d.agent_runs.run(&name, req).await?),
    ))
}
