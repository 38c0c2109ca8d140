//! The admin API (SPEC §5): mapping CRUD, audit, login and logout, health.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use apiproxy_shared::validate_mapping;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{LoginLimiter, Secret, Sessions, SESSION_COOKIE, SESSION_TTL};
use crate::error::AppError;
use crate::store::Store;

/// Request bodies over this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

pub struct AppState {
    pub store: Store,
    pub sessions: Sessions,
    pub admin: Secret,
    pub limiter: LoginLimiter,
    pub cookie_secure: bool,
}

pub type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let admin = Router::new()
        .route("/api/mappings", get(list).post(create).put(replace_all))
        .route(
            "/api/mappings/{*prefix}",
            get(get_one).put(update).delete(delete),
        )
        .route("/api/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(admin)
        .route("/api/admin/login", post(login))
        .route("/api/admin/logout", post(logout))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// JSON body whose rejections are API errors: malformed JSON, wrong types
/// and unknown fields are 400 with serde's message (it names the field),
/// an oversized body 413.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return AppError::PayloadTooLarge;
    }
    AppError::BadRequest(rejection.body_text())
}

/// The client's address, the audit log's `actor`.
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientAddr(ip))
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Bearer token or a valid session cookie; else 401.
async fn require_admin(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorised = match (bearer, cookie(headers, SESSION_COOKIE)) {
        (Some(token), _) => state.admin.matches(token.trim()),
        (None, Some(id)) => state.sessions.is_valid(id).await?,
        (None, None) => false,
    };
    if !authorised {
        return Err(AppError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// `{prefix}` in a path is the prefix without its leading slash; `%2F`
/// (decoded to `/`) addresses the prefix `/` itself.
fn prefix_from_path(raw: &str) -> String {
    if raw == "/" {
        "/".to_owned()
    } else {
        format!("/{raw}")
    }
}

fn check(prefix: &str, target: &str) -> Result<(String, String), AppError> {
    let m = validate_mapping(prefix, target).map_err(|e| AppError::BadRequest(e.to_string()))?;
    Ok((m.prefix, m.target))
}

async fn list(State(state): State<Shared>) -> Result<Json<Value>, AppError> {
    let (mappings, version) = state.store.list().await?;
    Ok(Json(
        json!({"success": true, "count": mappings.len(), "mappings": mappings, "version": version}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMapping {
    prefix: String,
    target: String,
}

async fn create(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<NewMapping>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let (prefix, target) = check(&body.prefix, &body.target)?;
    let version = state
        .store
        .create(&prefix, &target, &actor.to_string())
        .await?;
    tracing::info!(%prefix, %target, %actor, version, "mapping created");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"success": true, "message": format!("mapping {prefix} created"),
                    "mapping": {"prefix": prefix, "target": target}, "version": version}),
        ),
    ))
}

async fn get_one(
    State(state): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, AppError> {
    let prefix = prefix_from_path(&raw);
    match state.store.get(&prefix).await? {
        Some(target) => Ok(Json(
            json!({"success": true, "mapping": {"prefix": prefix, "target": target}}),
        )),
        None => Err(AppError::NotFound(format!("no mapping for {prefix}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTarget {
    target: String,
}

async fn update(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<NewTarget>,
) -> Result<Json<Value>, AppError> {
    let (prefix, target) = check(&prefix_from_path(&raw), &body.target)?;
    let version = state
        .store
        .update(&prefix, &target, &actor.to_string())
        .await?;
    tracing::info!(%prefix, %target, %actor, version, "mapping updated");
    Ok(Json(
        json!({"success": true, "message": format!("mapping {prefix} updated"),
                   "mapping": {"prefix": prefix, "target": target}, "version": version}),
    ))
}

async fn delete(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    Path(raw): Path<String>,
) -> Result<Json<Value>, AppError> {
    let prefix = prefix_from_path(&raw);
    let version = state.store.delete(&prefix, &actor.to_string()).await?;
    tracing::info!(%prefix, %actor, version, "mapping deleted");
    Ok(Json(
        json!({"success": true, "prefix": prefix, "version": version}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllMappings {
    mappings: BTreeMap<String, String>,
}

async fn replace_all(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<AllMappings>,
) -> Result<Json<Value>, AppError> {
    let mut checked = BTreeMap::new();
    for (prefix, target) in &body.mappings {
        let (prefix, target) = check(prefix, target)
            .map_err(|e| AppError::BadRequest(format!("mappings[{prefix:?}]: {e}")))?;
        checked.insert(prefix, target);
    }
    let version = state.store.replace(&checked, &actor.to_string()).await?;
    tracing::info!(count = checked.len(), %actor, version, "mappings replaced");
    Ok(Json(
        json!({"success": true, "count": checked.len(), "mappings": checked, "version": version}),
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(state): State<Shared>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, AppError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(json!({"entries": state.store.audit(limit).await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

async fn login(
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
    let mut response = Json(json!({"success": true})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ASCII cookie"),
    );
    Ok(response)
}

async fn logout(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, AppError> {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.delete(id).await?;
    }
    let mut response = Json(json!({"success": true})).into_response();
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&expired).expect("ASCII cookie"),
    );
    Ok(response)
}

async fn readyz(State(state): State<Shared>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": e.to_string()})),
        )
            .into_response(),
    }
}
