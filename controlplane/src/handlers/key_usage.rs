//! One proxy key's usage: what the data planes counted for it per prefix
//! since its stats began, and its last 24 hours, from the stats batches.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::access_store::AccessError;
use crate::error::AppError;
use crate::extract::{KeyId, Shared};
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
    KeyId(key_id): KeyId,
) -> Result<Json<KeyUsageReport>, AppError> {
    let (prefixes, series) = state
        .stats
        .key_usage(&key_id, now_ms() / 1000)
        .await?
        .ok_or_else(|| AccessError::NoKey(key_id.clone()))?;
    Ok(Json(KeyUsageReport {
        success: true,
        key_id,
        prefixes,
        series,
    }))
}
