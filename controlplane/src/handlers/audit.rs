//! The audit log (SPEC §5): the newest mapping changes first.

use axum::extract::State;
use axum::Json;

use crate::error::AppError;
use crate::extract::{Limit, LimitQuery, Shared};
use crate::model::{AuditList, ErrorBody};

#[utoipa::path(get, path = "/api/audit", tag = "audit", params(LimitQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn audit(
    State(state): State<Shared>,
    Limit(limit): Limit,
) -> Result<Json<AuditList>, AppError> {
    Ok(Json(AuditList {
        entries: state.store.audit(limit).await?,
    }))
}
