//! `/v1/e2b`: the E2B listener's address and its API keys. A key is its
//! maker's; root (and the daemon's user) see and remove every key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use banger_api::{ApiError, E2bInfo, E2bKey, E2bKeyCreate, E2bKeyCreated, E2bKeyList};
use banger_core::access::Caller;

use super::{ApiJson, ApiResult, AppState};

fn wire(k: banger_core::e2b::keys::Key) -> E2bKey {
    E2bKey {
        id: k.id,
        name: k.name,
        prefix: k.prefix,
        owner_uid: k.owner_uid,
        created_at: k.created_at,
    }
}

/// Whose keys a caller sees: their own, or all for root.
fn scope(caller: Caller) -> Option<u32> {
    (caller.uid != 0).then_some(caller.uid)
}

/// Where the E2B listener is (absent when `e2b.listen` is empty).
#[utoipa::path(get, path = "/v1/e2b", tag = "e2b",
    responses((status = 200, body = E2bInfo)))]
pub async fn info(State(d): State<AppState>) -> Json<E2bInfo> {
    Json(E2bInfo {
        url: d.e2b_addr.get().map(|a| format!("http://{a}")),
    })
}

/// The caller's API keys (every key for root).
#[utoipa::path(get, path = "/v1/e2b/keys", tag = "e2b",
    responses((status = 200, body = E2bKeyList)))]
pub async fn keys(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<E2bKeyList>> {
    let keys = d.e2b.list_keys(scope(caller))?;
    Ok(Json(E2bKeyList {
        keys: keys.into_iter().map(wire).collect(),
    }))
}

/// Makes an API key for the caller; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/e2b/keys", tag = "e2b", request_body = E2bKeyCreate,
    responses((status = 201, body = E2bKeyCreated), (status = 400, body = ApiError)))]
pub async fn create_key(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<E2bKeyCreate>,
) -> ApiResult<(StatusCode, Json<E2bKeyCreated>)> {
    let (key, secret) = d.e2b.create_key(&req.name, caller.uid)?;
    tracing::info!(key = %key.id, uid = caller.uid, "E2B API key created");
    Ok((
        StatusCode::CREATED,
        Json(E2bKeyCreated {
            key: wire(key),
            secret,
        }),
    ))
}

/// Removes one of the caller's keys (any key for root), by id or name.
#[utoipa::path(delete, path = "/v1/e2b/keys/{id}", tag = "e2b",
    params(("id" = String, Path, description = "Key id or name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn remove_key(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    d.e2b.remove_key(&id, scope(caller))?;
    Ok(StatusCode::NO_CONTENT)
}
