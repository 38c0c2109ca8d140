//! The fleet's recent failed requests: what the data planes sent with
//! their stats batches, newest first, each with the request id to search
//! the node's access log with.

use axum::extract::State;
use axum::Json;

use crate::error::AppError;
use crate::extract::{Limit, LimitQuery, Shared};
use crate::model::{ErrorBody, FailedList};

#[utoipa::path(get, path = "/api/requests/failed", tag = "stats", params(LimitQuery), security(("bearer" = []), ("session" = [])),
    description = "Requests that failed on any node (status 500 or more, a proxy error, or a client that went away), newest first by the time each request arrived; the 1000 most recently received are kept.",
    responses((status = 200, body = FailedList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn failed(
    State(state): State<Shared>,
    Limit(limit): Limit,
) -> Result<Json<FailedList>, AppError> {
    Ok(Json(FailedList {
        success: true,
        requests: state.stats.failed(limit).await?,
    }))
}
