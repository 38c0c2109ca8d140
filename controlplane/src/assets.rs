//! The console's static files (`static/` at the repository root), compiled
//! into the binary so it serves the dashboard and admin console with no
//! files beside it and no internet.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::AppError;

/// `(name, content type, bytes)` of every file under `/static/`.
const FILES: [(&str, &str, &str); 6] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/common.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/chart.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/dashboard.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/admin.js"),
    ),
    (
        "keys.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/keys.js"),
    ),
];

const DASHBOARD: &str = include_str!("../../static/index.html");
const ADMIN: &str = include_str!("../../static/admin.html");
const KEYS: &str = include_str!("../../static/keys.html");
const FAVICON: &[u8] = include_bytes!("../../static/favicon.ico");
/// The console is no place for a search engine (the Go version's answer).
const ROBOTS: &str = "User-agent: *\nDisallow: /\n";

/// Scripts and styles from this origin only, never framed: nothing inline
/// can run even if a mapping target held markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `/` and `/index.html` (dashboard), `/admin`, `/keys`, `/static/{file}`, and
/// the Go version's `/favicon.ico` and `/robots.txt`.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { page(DASHBOARD) }))
        .route("/index.html", get(|| async { page(DASHBOARD) }))
        .route(
            "/favicon.ico",
            get(|| async { asset("image/x-icon", FAVICON) }),
        )
        .route(
            "/robots.txt",
            get(|| async { asset("text/plain; charset=utf-8", ROBOTS) }),
        )
        .route("/admin", get(|| async { page(ADMIN) }))
        .route("/keys", get(|| async { page(KEYS) }))
        .route("/static/{file}", get(file))
}

fn page(html: &'static str) -> Response {
    asset("text/html; charset=utf-8", html)
}

async fn file(Path(name): Path<String>) -> Result<Response, AppError> {
    FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, kind, body)| asset(kind, *body))
        .ok_or(AppError::NotFound(format!("no static file {name}")))
}

fn asset(kind: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Revalidate on every load so an upgraded binary's console is used at
    // once; the files are small.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}
