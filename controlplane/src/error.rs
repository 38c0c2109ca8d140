//! The API's error type: every error body is `{"success": false, "error":
//! "…"}`; 5xx are logged once and never show internals to the client.

use axum::extract::rejection::QueryRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::access_store::AccessError;
use crate::stats_store::ApplyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body is over the route's limit (bytes).
    #[error("request body larger than {} KiB", .limit / 1024)]
    PayloadTooLarge { limit: usize },
    #[error("too many failed logins; try again later")]
    TooManyRequests { retry_after: u64 },
    #[error("Redis is unavailable")]
    Unavailable(#[source] redis::RedisError),
    /// The write is on the Redis primary but on no replica yet.
    #[error("{0}")]
    NotReplicated(String),
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) | AppError::NotReplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(_) => AppError::Conflict(e.to_string()),
            StoreError::Missing(_) => AppError::NotFound(e.to_string()),
            StoreError::Redis(e) => AppError::Unavailable(e),
        }
    }
}

impl From<AccessError> for AppError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NoKey(_) | AccessError::NoPolicy(_) => AppError::NotFound(e.to_string()),
            AccessError::Refused(_) => AppError::BadRequest(e.to_string()),
            AccessError::Busy => AppError::Conflict(e.to_string()),
            AccessError::Redis(e) => AppError::Unavailable(e),
        }
    }
}

impl From<ApplyError> for AppError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::TooLarge(_) => AppError::BadRequest(e.to_string()),
            ApplyError::NotReplicated => AppError::NotReplicated(e.to_string()),
            ApplyError::Redis(e) => AppError::Unavailable(e),
        }
    }
}

/// A query string that does not parse: 400 naming the parameter.
impl From<QueryRejection> for AppError {
    fn from(e: QueryRejection) -> Self {
        AppError::BadRequest(e.body_text())
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        AppError::Unavailable(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Unavailable(source) => {
                tracing::error!(error = %source, "Redis request failed")
            }
            AppError::NotReplicated(why) => tracing::warn!("{why}"),
            _ => {}
        }
        let status = self.status();
        let body = Json(crate::model::ErrorBody {
            success: false,
            error: self.to_string(),
        });
        let mut response = (status, body).into_response();
        if let AppError::TooManyRequests { retry_after } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}
