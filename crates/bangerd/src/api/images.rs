//! `/v1/images`: build, import, list, show, remove.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use banger_api::{
    ApiError, ErrorCode, Image, ImageBuildRequest, ImageImportRequest, ImageList, ImageRemoved,
    Operation,
};
use banger_core::images::recipe::{Agent, Distro, InitMode};
use banger_core::images::{Recipe, RecipeFile};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiResult, AppError, AppState};

/// All images, by name.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = ImageList)))]
pub async fn list(State(d): State<AppState>) -> ApiResult<Json<ImageList>> {
    Ok(Json(ImageList {
        images: d.images.list()?,
    }))
}

/// One image with its artifacts, packages and recipe.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = Image), (status = 404, body = ApiError)))]
pub async fn show(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Image>> {
    let mut image = d.images.get(&name)?;
    image.used_by = d.vms.users_of_image(&name)?;
    Ok(Json(image))
}

fn invalid(msg: String) -> AppError {
    AppError(ApiError::new(ErrorCode::InvalidRequest, msg))
}

/// Merges the request's fields over its recipe file. Pure.
fn recipe_file(req: &ImageBuildRequest) -> Result<RecipeFile, AppError> {
    let mut f = match &req.recipe_toml {
        Some(text) => Recipe::parse_file(text)?,
        None => RecipeFile::default(),
    };
    if let Some(d) = &req.distro {
        f.distro = Some(match d.as_str() {
            "debian" => Distro::Debian,
            "ubuntu" => Distro::Ubuntu,
            other => {
                return Err(invalid(format!(
                    "Unknown distro {other:?} (debian, or ubuntu: experimental)"
                )))
            }
        });
    }
    if let Some(i) = &req.init {
        f.init = Some(match i.as_str() {
            "light" => InitMode::Light,
            "systemd" => InitMode::Systemd,
            other => {
                return Err(invalid(format!(
                    "Unknown init {other:?} (light or systemd)"
                )))
            }
        });
    }
    if let Some(a) = &req.agent {
        f.agent = Some(Agent::parse(a).ok_or_else(|| {
            invalid(format!(
                "Unknown agent {a:?} (opencode, claude-code or codex)"
            ))
        })?);
    }
    if req.suite.is_some() {
        f.suite = req.suite.clone();
    }
    if req.mirror.is_some() {
        f.mirror = req.mirror.clone();
    }
    if req.size.is_some() {
        f.size = req.size.clone();
    }
    if let Some(p) = &req.packages {
        let mut all = f.packages.take().unwrap_or_default();
        all.extend(p.iter().cloned());
        f.packages = Some(all);
    }
    if req.build_essential.is_some() {
        f.build_essential = req.build_essential;
    }
    Ok(f)
}

/// Builds an image from a recipe (an operation, `image.build`). The same
/// recipe is never built twice: a second name reuses the artifacts.
#[utoipa::path(post, path = "/v1/images/build", tag = "images", request_body = ImageBuildRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn build(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<ImageBuildRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let recipe = Recipe::resolve(&recipe_file(&req)?, d.images.default_mirror())?;
    Ok((
        StatusCode::ACCEPTED,
        Json(d.images.start_build(&req.name, recipe)?),
    ))
}

/// Imports a rootfs (ext4 file, directory or tarball) as an image (an operation, `image.import`).
#[utoipa::path(post, path = "/v1/images/import", tag = "images", request_body = ImageImportRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn import(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<ImageImportRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, Json(d.images.start_import(req)?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Remove even while VMs use it.
    #[serde(default)]
    pub force: bool,
}

/// Removes an image name; its artifacts go when no other name uses them.
/// Refused while VMs use it, unless `force`.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name"), RemoveQuery),
    responses((status = 200, body = ImageRemoved), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Json<ImageRemoved>> {
    let users = d.vms.users_of_image(&name)?;
    let images = d.images.clone();
    Ok(Json(
        super::off_thread(move || {
            images
                .remove(&name, q.force, users)
                .map_err(|e| banger_core::ToApiError::to_api_error(&e))
        })
        .await?,
    ))
}
