//! What the handlers take from a request: the state every route shares,
//! the JSON body, the client's address, the `{prefix}` and key `{id}`
//! paths, the `limit`
//! of the newest-first lists, and the two authentication checks (admin:
//! bearer token or session cookie; node: the data planes' bearer token).
//! Names no handler.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::access::{is_key_id, SecretsKey};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::access_store::AccessStore;
use crate::auth::{LoginLimiter, Secret, Sessions, SESSION_COOKIE};
use crate::cluster_metrics::ClusterMetrics;
use crate::error::AppError;
use crate::stats_store::StatsStore;
use crate::store::Store;

/// Admin request bodies over this are refused with 413 (SPEC §5).
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

pub(crate) struct AppState {
    pub(crate) store: Store,
    /// Proxy keys and policies.
    pub(crate) access: AccessStore,
    /// `API_PROXY_SECRETS_KEY`; `None`: no credential secret can be stored.
    pub(crate) secrets: Option<Arc<SecretsKey>>,
    pub(crate) stats: StatsStore,
    pub(crate) sessions: Sessions,
    pub(crate) admin: Secret,
    /// `API_PROXY_NODE_TOKEN`; `None`: every stats push is refused.
    pub(crate) node: Option<Secret>,
    pub(crate) limiter: LoginLimiter,
    pub(crate) cookie_secure: bool,
    /// `false`: `/stats` needs admin auth.
    pub(crate) public_stats: bool,
    /// A node with no batch for this long is `down`.
    pub(crate) node_timeout: Duration,
    pub(crate) metrics: ClusterMetrics,
}

pub(crate) type Shared = Arc<AppState>;

/// JSON body of at most `LIMIT` bytes, whose rejections are API errors:
/// over the limit 413; malformed JSON, wrong types and unknown fields 400
/// with serde's message (it names the field). The body is read as JSON
/// whatever `Content-Type` says, as the Go version did: `curl -d '{…}'`
/// sends `application/x-www-form-urlencoded`. (A cross-site form cannot
/// use this: the session cookie is `SameSite=Strict`, and the bearer token
/// is never sent by a browser on its own.) The limit is part of the type,
/// so each route states its own; this is the API's only body extractor.
pub(crate) struct ApiJson<T, const LIMIT: usize = BODY_LIMIT>(pub T);

impl<S, T, const LIMIT: usize> FromRequest<S> for ApiJson<T, LIMIT>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
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

/// The client's address, the audit log's `actor`.
pub(crate) struct ClientAddr(pub IpAddr);

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

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Bearer token or a valid session cookie; else 401. A wrong bearer token
/// counts as a failed login, so guessing through any admin route is
/// throttled like guessing through the login.
pub(crate) async fn require_admin(
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

/// Where the `{prefix}` routes start: a mapping's, and its policy's.
pub(crate) const MAPPING_PATH: &str = "/api/mappings/";
pub(crate) const POLICY_PATH: &str = "/api/policies/";

/// `{prefix}` in a path is the prefix without its leading slash and may
/// hold slashes; `%2F` (decoded to `/`) and the empty prefix
/// (`/api/mappings/`, the Go version's way) address the prefix `/`
/// itself. Read from the path after [`MAPPING_PATH`] (or [`POLICY_PATH`]:
/// a policy is addressed as its mapping is), percent-decoded, so
/// the same handlers serve `/api/mappings/`, `/api/mappings/reload` (a
/// mapping `/reload` is read, updated and deleted there) and
/// `/api/mappings/{*prefix}`. A path that does not decode to UTF-8 is a
/// 400 in the API's JSON format.
pub(crate) struct PrefixPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PrefixPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let path = parts.uri.path();
        let raw = [MAPPING_PATH, POLICY_PATH]
            .iter()
            .find_map(|start| path.strip_prefix(start))
            .ok_or_else(|| AppError::NotFound("no such route".into()))?;
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|e| AppError::BadRequest(format!("prefix: not UTF-8 once decoded: {e}")))?;
        // `%2F` is the prefix `/`; so is the empty prefix, by the format.
        Ok(PrefixPath(match decoded.as_ref() {
            "/" => "/".to_owned(),
            rest => format!("/{rest}"),
        }))
    }
}

/// A proxy key's `{id}` in a path: 404 for anything that is not a key
/// id, as for an id no key has.
pub(crate) struct KeyId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) if is_key_id(&id) => Ok(KeyId(id)),
            Ok(Path(id)) => Err(AppError::NotFound(format!("no key {id}"))),
            Err(_) => Err(AppError::NotFound("no such key".into())),
        }
    }
}

/// `?limit=N` of the routes that list the newest entries first.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LimitQuery {
    /// How many entries, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The [`LimitQuery`] of a request: 1 to 1000, 100 when absent; anything
/// else is a 400 naming `limit`.
pub(crate) struct Limit(pub usize);

impl<S: Send + Sync> FromRequestParts<S> for Limit {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(q) = Query::<LimitQuery>::from_request_parts(parts, state).await?;
        match q.limit.unwrap_or(100) {
            n @ 1..=1000 => Ok(Limit(n as usize)),
            _ => Err(AppError::BadRequest("limit: must be from 1 to 1000".into())),
        }
    }
}

/// A data plane: `Authorization: Bearer <API_PROXY_NODE_TOKEN>`, compared
/// in constant time. Without a configured token every push is refused.
/// Checked before the body is read, so an unauthenticated client learns
/// nothing about the body rules.
pub(crate) struct NodeAuth;

impl FromRequestParts<Shared> for NodeAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, AppError> {
        match (&state.node, bearer(&parts.headers)) {
            (Some(secret), Some(token)) if secret.matches(token) => Ok(NodeAuth),
            _ => Err(AppError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn prefix_of(path: &str) -> Result<String, AppError> {
        let (mut parts, ()) = axum::http::Request::get(path)
            .body(())
            .unwrap()
            .into_parts();
        PrefixPath::from_request_parts(&mut parts, &())
            .await
            .map(|PrefixPath(p)| p)
    }

    #[tokio::test]
    async fn the_path_names_the_prefix() {
        for (path, prefix) in [
            ("/api/mappings/", "/"),
            ("/api/mappings/%2F", "/"),
            ("/api/mappings/reload", "/reload"),
            ("/api/mappings/google/v1", "/google/v1"),
            ("/api/mappings/caf%C3%A9", "/café"),
            ("/api/policies/%2F", "/"),
            ("/api/policies/google/v1", "/google/v1"),
        ] {
            assert_eq!(prefix_of(path).await.unwrap(), prefix, "{path}");
        }
        assert!(matches!(
            prefix_of("/api/mappings/%FF").await,
            Err(AppError::BadRequest(_))
        ));
    }
}
