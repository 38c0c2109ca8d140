//! One proxy key's usage: what the data planes counted for it per prefix
//! since its stats began, and its last 24 hours, from the stats batches.

use apiproxy_shared::access::is_key_id;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::AppError;
use crate::extract::Shared;
use crate::model::ErrorBody;
use crate::stats_store::{PrefixUsage, UsagePoint};
use crate::store::now_ms;

/// `GET /api/keys/{id}/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyUsageReport {
    pub(crate) success: bool,
    pub(crate) key_id: String,
    /// Per prefix the key was used on, sorted by prefix.
    pub(crate) prefixes: Vec<PrefixUsage>,
    /// The last 24 hours, one point per hour, oldest first; the last is
    /// the current hour so far. Zeros where nothing was counted.
    pub(crate) series: Vec<UsagePoint>,
}

#[utoipa::path(get, path = "/api/keys/{id}/usage", tag = "keys", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "the key's id, `key_` and 16 hex digits")),
    description = "What the data planes counted for the key, as their stats batches reported it (every few seconds). Usage reported after the key was deleted is dropped.",
    responses((status = 200, body = KeyUsageReport), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn usage(
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyUsageReport>, AppError> {
    let not_found = || AppError::NotFound("no such key".into());
    let Ok(Path(key_id)) = id else {
        return Err(not_found());
    };
    if !is_key_id(&key_id) {
        return Err(not_found());
    }
    let (prefixes, series) = state
        .stats
        .key_usage(&key_id, now_ms() / 1000)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(KeyUsageReport {
        success: true,
        key_id,
        prefixes,
        series,
    }))
}
