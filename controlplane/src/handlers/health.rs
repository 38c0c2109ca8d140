//! Liveness and readiness (SPEC §5): alive while the process serves,
//! ready while Redis answers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::extract::Shared;
use crate::model::Readiness;

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness, description = "Redis unreachable")))]
pub(crate) async fn readyz(State(state): State<Shared>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(Readiness {
            ready: true,
            reason: None,
        })
        .into_response(),
        Err(e) => {
            let body = Readiness {
                ready: false,
                reason: Some(e.to_string()),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
