//! `/v1/version`, `/v1/defaults`, `/v1/capabilities`, `/v1/doctor`,
//! `/v1/openapi.json`.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use banger_api::{ApiError, Capabilities, DoctorReport, ErrorCode, VersionInfo};
use banger_core::access::Caller;
use banger_core::doctor::{self, HostFacts};

use super::{ApiResult, AppError, AppState};

/// The daemon's version and identity.
#[utoipa::path(get, path = "/v1/version", tag = "system",
    responses((status = 200, body = VersionInfo)))]
pub async fn version(State(d): State<AppState>) -> Json<VersionInfo> {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: banger_api::API_VERSION.into(),
        pid: std::process::id(),
        started_at: d.started_at,
        state_dir: d.layout.state_dir.display().to_string(),
    })
}

async fn probe(d: &AppState) -> ApiResult<HostFacts> {
    let dir = d.layout.state_dir.clone();
    let fc = d.config.firecracker.binary.clone();
    let dns = d.dns.status();
    let vm_problems = d
        .vms
        .list_user()?
        .into_iter()
        .filter_map(|v| Some(format!("{}: {}", v.name, v.problem?)))
        .collect();
    tokio::task::spawn_blocking(move || HostFacts {
        dns,
        vm_problems,
        ..HostFacts::probe(&dir, &fc)
    })
    .await
    .map_err(|e| {
        AppError(ApiError::new(
            ErrorCode::Internal,
            format!("Host probe failed: {e}"),
        ))
    })
}

/// What `vm create` takes for each field a request leaves out.
#[utoipa::path(get, path = "/v1/defaults", tag = "system",
    responses((status = 200, body = banger_api::VmDefaults)))]
pub async fn defaults(State(d): State<AppState>) -> Json<banger_api::VmDefaults> {
    Json(d.vms.create_defaults())
}

/// What the host can do, as data.
#[utoipa::path(get, path = "/v1/capabilities", tag = "system",
    responses((status = 200, body = Capabilities)))]
pub async fn capabilities(State(d): State<AppState>) -> ApiResult<Json<Capabilities>> {
    Ok(Json(doctor::capabilities(&probe(&d).await?)))
}

/// Every host requirement with its status and a fix hint. `ok` is false
/// when a required check failed (the response is still 200).
#[utoipa::path(get, path = "/v1/doctor", tag = "system",
    responses((status = 200, body = DoctorReport)))]
pub async fn doctor(State(d): State<AppState>) -> ApiResult<Json<DoctorReport>> {
    Ok(Json(doctor::evaluate(&probe(&d).await?)))
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
}

/// Where the web dashboard is (no way in: see `POST /v1/ui/login`).
#[utoipa::path(get, path = "/v1/ui", tag = "system",
    responses((status = 200, body = banger_api::UiInfo)))]
pub async fn ui(State(d): State<AppState>) -> Json<banger_api::UiInfo> {
    Json(banger_api::UiInfo {
        url: d.ui.url(),
        expires_in_secs: None,
        error: d.ui.error.clone(),
    })
}

/// A one-time link into the web dashboard: it works once, for a minute,
/// and gives the browser that opens it a session of 12 hours.
#[utoipa::path(post, path = "/v1/ui/login", tag = "system",
    responses((status = 200, body = banger_api::UiInfo)))]
pub async fn ui_login(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<banger_api::UiInfo>> {
    if !caller.all {
        return Err(AppError(
            ApiError::new(
                ErrorCode::Forbidden,
                "The web dashboard shows every VM, and this daemon confines users to their own \
                 (access.confine_users)",
            )
            .with_hint("Use the CLI, or ask an admin (root) to open the dashboard"),
        ));
    }
    let url = d.ui.login_url();
    Ok(Json(banger_api::UiInfo {
        expires_in_secs: url.as_ref().map(|_| crate::ui_login::CODE_TTL.as_secs()),
        url,
        error: d.ui.error.clone(),
    }))
}

/// Logs every browser out of the dashboard (and voids unused links).
#[utoipa::path(delete, path = "/v1/ui/sessions", tag = "system",
    responses((status = 200, body = banger_api::UiLogout)))]
pub async fn ui_logout(State(d): State<AppState>) -> Json<banger_api::UiLogout> {
    let sessions_ended = d.ui.logins.logout_all();
    tracing::info!(sessions_ended, "dashboard sessions ended");
    Json(banger_api::UiLogout { sessions_ended })
}
