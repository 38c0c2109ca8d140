//! The console's session (SPEC §5): login with the admin token sets a
//! session cookie, logout ends it. The login body is read as JSON whatever
//! its `Content-Type` (see [`ApiJson`]).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::{SESSION_COOKIE, SESSION_TTL};
use crate::error::AppError;
use crate::extract::{cookie, ApiJson, ClientAddr, Shared};
use crate::model::{ErrorBody, LoggedIn, Login, Success};

#[utoipa::path(post, path = "/api/admin/login", tag = "session", request_body = Login,
    responses((status = 200, body = LoggedIn, description = "sets the session cookie"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn login(
    State(state): State<Shared>,
    ClientAddr(ip): ClientAddr,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, AppError> {
    state
        .limiter
        .check(ip)
        .map_err(|retry_after| AppError::TooManyRequests { retry_after })?;
    if !state.admin.matches(&body.token) {
        state.limiter.failed(ip);
        tracing::warn!(%ip, "failed admin login");
        return Err(AppError::Unauthorized);
    }
    let id = state.sessions.create().await?;
    let secure = if state.cookie_secure { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut response = Json(LoggedIn {
        success: true,
        message: "Authentication successful".into(),
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ASCII cookie"),
    );
    Ok(response)
}

#[utoipa::path(post, path = "/api/admin/logout", tag = "session",
    responses((status = 200, body = Success, description = "ends the session and clears the cookie"), (status = 503, body = ErrorBody)))]
pub(crate) async fn logout(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.delete(id).await?;
    }
    let mut response = Json(Success { success: true }).into_response();
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&expired).expect("ASCII cookie"),
    );
    Ok(response)
}
