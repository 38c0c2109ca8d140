//! Mapping CRUD (SPEC §5): list, create, replace all, get, update and
//! delete, each write checked by the shared crate's validation.

use std::collections::BTreeMap;

use apiproxy_shared::validate_mapping;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::error::AppError;
use crate::extract::{ApiJson, ClientAddr, PrefixPath, Shared};
use crate::model::{
    AllMappings, ErrorBody, Mapping, MappingChanged, MappingDeleted, MappingFound, MappingList,
    NewMapping, NewTarget,
};

fn check(prefix: &str, target: &str) -> Result<(String, String), AppError> {
    let m = validate_mapping(prefix, target).map_err(|e| AppError::BadRequest(e.to_string()))?;
    Ok((m.prefix, m.target))
}

#[utoipa::path(get, path = "/api/mappings", tag = "mappings", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MappingList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list(State(state): State<Shared>) -> Result<Json<MappingList>, AppError> {
    let (mappings, version) = state.store.list().await?;
    Ok(Json(MappingList {
        success: true,
        count: mappings.len(),
        mappings,
        version,
    }))
}

#[utoipa::path(post, path = "/api/mappings", tag = "mappings", request_body = NewMapping, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = MappingChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<NewMapping>,
) -> Result<(StatusCode, Json<MappingChanged>), AppError> {
    let (prefix, target) = check(&body.prefix, &body.target)?;
    let version = state
        .store
        .create(&prefix, &target, &actor.to_string())
        .await?;
    tracing::info!(%prefix, %target, %actor, version, "mapping created");
    Ok((
        StatusCode::CREATED,
        Json(changed(prefix, target, version, "created")),
    ))
}

/// The answer to a create or an update.
fn changed(prefix: String, target: String, version: u64, what: &str) -> MappingChanged {
    MappingChanged {
        success: true,
        message: format!("mapping {prefix} {what}"),
        mapping: Mapping { prefix, target },
        version,
    }
}

#[utoipa::path(get, path = "/api/mappings/{prefix}", tag = "mappings", security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the prefix without its leading slash; may hold slashes; %2F is the prefix /")),
    responses((status = 200, body = MappingFound), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<Shared>,
    PrefixPath(prefix): PrefixPath,
) -> Result<Json<MappingFound>, AppError> {
    match state.store.get(&prefix).await? {
        Some(target) => Ok(Json(MappingFound {
            success: true,
            mapping: Mapping { prefix, target },
        })),
        None => Err(AppError::NotFound(format!("no mapping for {prefix}"))),
    }
}

#[utoipa::path(put, path = "/api/mappings/{prefix}", tag = "mappings", request_body = NewTarget, security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the prefix without its leading slash")),
    responses((status = 200, body = MappingChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    PrefixPath(prefix): PrefixPath,
    ApiJson(body): ApiJson<NewTarget>,
) -> Result<Json<MappingChanged>, AppError> {
    let (prefix, target) = check(&prefix, &body.target)?;
    let version = state
        .store
        .update(&prefix, &target, &actor.to_string())
        .await?;
    tracing::info!(%prefix, %target, %actor, version, "mapping updated");
    Ok(Json(changed(prefix, target, version, "updated")))
}

#[utoipa::path(delete, path = "/api/mappings/{prefix}", tag = "mappings", security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the prefix without its leading slash")),
    responses((status = 200, body = MappingDeleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    PrefixPath(prefix): PrefixPath,
) -> Result<Json<MappingDeleted>, AppError> {
    let version = state.store.delete(&prefix, &actor.to_string()).await?;
    tracing::info!(%prefix, %actor, version, "mapping deleted");
    Ok(Json(MappingDeleted {
        success: true,
        prefix,
        version,
    }))
}

#[utoipa::path(put, path = "/api/mappings", tag = "mappings", request_body = AllMappings, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MappingList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn replace_all(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<AllMappings>,
) -> Result<Json<MappingList>, AppError> {
    let mut checked = BTreeMap::new();
    for (prefix, target) in &body.mappings {
        let (prefix, target) = check(prefix, target)
            .map_err(|e| AppError::BadRequest(format!("mappings[{prefix:?}]: {e}")))?;
        checked.insert(prefix, target);
    }
    let version = state.store.replace(&checked, &actor.to_string()).await?;
    tracing::info!(count = checked.len(), %actor, version, "mappings replaced");
    Ok(Json(MappingList {
        success: true,
        count: checked.len(),
        mappings: checked,
        version,
    }))
}
