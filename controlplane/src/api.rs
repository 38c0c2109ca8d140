//! The admin API (SPEC §5): mapping CRUD, audit, login and logout, health;
//! the router that also serves the stats routes of [`crate::stats_api`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::validate_mapping;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::OpenApi;

use crate::auth::{LoginLimiter, Secret, Sessions, SESSION_COOKIE, SESSION_TTL};
use crate::cluster_metrics::ClusterMetrics;
use crate::error::AppError;
use crate::model::{
    AllMappings, AuditList, ErrorBody, Login, Mapping, MappingChanged, MappingDeleted,
    MappingFound, MappingList, NewMapping, NewTarget, Readiness, Success,
};
use crate::stats_api;
use crate::stats_store::StatsStore;
use crate::store::Store;

/// Admin request bodies over this are refused with 413 (SPEC §5).
pub const BODY_LIMIT: usize = 64 * 1024;

pub struct AppState {
    pub store: Store,
    pub stats: StatsStore,
    pub sessions: Sessions,
    pub admin: Secret,
    /// `API_PROXY_NODE_TOKEN`; `None`: every stats push is refused.
    pub node: Option<Secret>,
    pub limiter: LoginLimiter,
    pub cookie_secure: bool,
    /// `false`: `/stats` needs admin auth.
    pub public_stats: bool,
    /// A node with no batch for this long is `down`.
    pub node_timeout: Duration,
    pub metrics: ClusterMetrics,
}

pub type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let stats = Router::new().route("/stats", get(stats_api::stats));
    let (admin, public) = if state.public_stats {
        (Router::new(), stats)
    } else {
        (stats, Router::new())
    };
    let admin = admin
        .route("/api/mappings", get(list).post(create).put(replace_all))
        .route(
            "/api/mappings/{*prefix}",
            get(get_one).put(update).delete(delete),
        )
        .route("/api/audit", get(audit))
        .route("/api/nodes", get(stats_api::nodes))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(admin)
        .merge(public)
        // The console pages are public: they sign in through the API.
        .merge(crate::assets::router())
        .route("/internal/stats", post(stats_api::push))
        .route("/metrics", get(stats_api::metrics))
        .route("/api/admin/login", post(login))
        .route("/api/admin/logout", post(logout))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(openapi))
        .fallback(|| async { AppError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}

/// JSON body of at most `LIMIT` bytes, whose rejections are API errors:
/// over the limit 413; a missing JSON content type, malformed JSON, wrong
/// types and unknown fields 400 with serde's message (it names the field).
/// The limit is part of the type, so each route states its own; this is
/// the API's only body extractor.
pub struct ApiJson<T, const LIMIT: usize = BODY_LIMIT>(pub T);

impl<S, T, const LIMIT: usize> FromRequest<S> for ApiJson<T, LIMIT>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
        if !is_json(req.headers()) {
            return Err(AppError::BadRequest(
                "expected a request with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|e| {
                if e.into_inner().is::<http_body_util::LengthLimitError>() {
                    AppError::PayloadTooLarge { limit: LIMIT }
                } else {
                    AppError::BadRequest("the request body could not be read".into())
                }
            })?;
        let Json(value) =
            Json::<T>::from_bytes(&bytes).map_err(|e| AppError::BadRequest(e.body_text()))?;
        Ok(ApiJson(value))
    }
}

/// `application/json` or a `+json` type, parameters (`; charset=…`) aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Bearer token or a valid session cookie; else 401. A wrong bearer token
/// counts as a failed login, so guessing through any admin route is
/// throttled like guessing through the login.
async fn require_admin(
    State(state): State<Shared>,
    ClientAddr(ip): ClientAddr,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let headers = req.headers();
    let authorised = match (bearer(headers), cookie(headers, SESSION_COOKIE)) {
        (Some(token), _) => {
            state
                .limiter
                .check(ip)
                .map_err(|retry_after| AppError::TooManyRequests { retry_after })?;
            let ok = state.admin.matches(token);
            if !ok {
                state.limiter.failed(ip);
            }
            ok
        }
        (None, Some(id)) => state.sessions.is_valid(id).await?,
        (None, None) => false,
    };
    if !authorised {
        return Err(AppError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// `{prefix}` in a path is the prefix without its leading slash and may
/// hold slashes; `%2F` (decoded to `/`) addresses the prefix `/` itself. A
/// path that does not decode is a 400 in the API's JSON format.
pub struct PrefixPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PrefixPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| AppError::BadRequest(format!("prefix: {}", e.body_text())))?;
        Ok(PrefixPath(if raw == "/" { raw } else { format!("/{raw}") }))
    }
}

fn check(prefix: &str, target: &str) -> Result<(String, String), AppError> {
    let m = validate_mapping(prefix, target).map_err(|e| AppError::BadRequest(e.to_string()))?;
    Ok((m.prefix, m.target))
}

#[utoipa::path(get, path = "/api/mappings", tag = "mappings", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MappingList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list(State(state): State<Shared>) -> Result<Json<MappingList>, AppError> {
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
async fn create(
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
async fn get_one(
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
async fn update(
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
async fn delete(
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
async fn replace_all(
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// How many entries, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn audit(
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

#[utoipa::path(post, path = "/api/admin/login", tag = "session", request_body = Login,
    responses((status = 200, body = Success, description = "sets the session cookie"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
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
    let mut response = Json(Success { success: true }).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ASCII cookie"),
    );
    Ok(response)
}

#[utoipa::path(post, path = "/api/admin/logout", tag = "session",
    responses((status = 200, body = Success, description = "ends the session and clears the cookie"), (status = 503, body = ErrorBody)))]
async fn logout(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, AppError> {
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

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness, description = "Redis unreachable")))]
async fn readyz(State(state): State<Shared>) -> Response {
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

#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "this document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The OpenAPI 3 document of every route above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "apiproxy control plane", description = "Admin API: mappings in Redis, audit, sessions; cluster stats and the data planes' stats pushes."),
    paths(list, create, replace_all, get_one, update, delete, audit, login, logout, healthz, readyz, openapi,
        stats_api::push, stats_api::stats, stats_api::nodes, stats_api::metrics),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let bearer = |secret: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(secret))
                    .build(),
            )
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", bearer("ADMIN_TOKEN"));
        components.add_security_scheme(
            "node",
            bearer("API_PROXY_NODE_TOKEN: data-plane stats pushes"),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
    }
}
