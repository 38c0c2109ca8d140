//! The audit log (SPEC §5): the newest mapping changes first.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use crate::error::AppError;
use crate::extract::Shared;
use crate::model::{AuditList, ErrorBody};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// How many entries, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn audit(
    State(state): State<Shared>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, AppError> {
    let Query(q) = query?;
    let limit = match q.limit.unwrap_or(100) {
        n @ 1..=1000 => n as usize,
        _ => return Err(AppError::BadRequest("limit: must be from 1 to 1000".into())),
    };
    Ok(Json(AuditList {
        entries: state.store.audit(limit).await?,
    }))
}
