//! The control plane's HTTP application: every route and the handler it
//! runs, which of them need admin authentication, and the OpenAPI
//! document that describes them. The only module that names every handler.

use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;

use crate::auth::SESSION_COOKIE;
use crate::error::AppError;
use crate::extract::{require_admin, Shared, MAPPING_PATH, POLICY_PATH};
use crate::handlers::{
    audit, failures, health, key_usage, keys, mappings, policies, session, stats,
};

pub(crate) fn router(state: Shared) -> Router {
    // What the Go version served to anyone: public unless
    // `API_PROXY_PUBLIC_STATS=false`.
    let report = Router::new()
        .route("/stats", get(stats::stats))
        .route("/api/public/mappings", get(mappings::public_list));
    let (admin, public) = if state.public_stats {
        (Router::new(), report)
    } else {
        (report, Router::new())
    };
    let admin = admin
        .route(
            "/api/mappings",
            get(mappings::list)
                .post(mappings::create)
                .put(mappings::replace_all),
        )
        // One set of `{prefix}` handlers on three routes (see `PrefixPath`):
        // the empty prefix, the prefix `/reload` beside the reload, and the
        // rest.
        .route(
            MAPPING_PATH,
            get(mappings::get_one)
                .put(mappings::update)
                .delete(mappings::delete),
        )
        .route(
            "/api/mappings/reload",
            post(mappings::reload)
                .get(mappings::get_one)
                .put(mappings::update)
                .delete(mappings::delete),
        )
        .route(
            "/api/mappings/{*prefix}",
            get(mappings::get_one)
                .put(mappings::update)
                .delete(mappings::delete),
        )
        .route("/api/keys", get(keys::list).post(keys::create))
        .route(
            "/api/keys/{id}",
            get(keys::get_one).patch(keys::update).delete(keys::delete),
        )
        .route("/api/policies", get(policies::list))
        // A policy's `{prefix}` as a mapping's: the prefix `/`, and the rest.
        .route(
            POLICY_PATH,
            get(policies::get_one)
                .put(policies::put)
                .delete(policies::delete),
        )
        .route(
            "/api/policies/{*prefix}",
            get(policies::get_one)
                .put(policies::put)
                .delete(policies::delete),
        )
        .route("/api/audit", get(audit::audit))
        .route("/api/nodes", get(stats::nodes))
        .route("/api/requests/failed", get(failures::failed))
        .route("/api/keys/{id}/usage", get(key_usage::usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(admin)
        .merge(public)
        // The console pages are public: they sign in through the API.
        .merge(crate::assets::router())
        .route("/internal/stats", post(stats::push))
        .route("/metrics", get(stats::metrics))
        .route("/api/admin/login", post(session::login))
        .route("/api/admin/logout", post(session::logout))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/openapi.json", get(openapi))
        .fallback(|| async { AppError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "this document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The OpenAPI 3 document of every route in [`router`].
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "apiproxy control plane", description = "Admin API: mappings in Redis, audit, sessions; cluster stats and the data planes' stats pushes."),
    paths(mappings::list, mappings::create, mappings::replace_all, mappings::get_one, mappings::update, mappings::delete,
        mappings::public_list, mappings::reload,
        audit::audit, session::login, session::logout, health::healthz, health::readyz, openapi,
        stats::push, stats::stats, stats::nodes, stats::metrics, failures::failed,
        key_usage::usage,
        keys::list, keys::create, keys::get_one, keys::update, keys::delete,
        policies::list, policies::get_one, policies::put, policies::delete),
    modifiers(&SecuritySchemes, &FixedPrefixRoutes)
)]
pub(crate) struct ApiDoc;

/// The `{prefix}` operations where the path itself names the prefix:
/// `/api/mappings/` and `/api/policies/` (the prefix `/`, the Go
/// version's way) and `/api/mappings/reload` (the prefix `/reload`, beside
/// the reload). The same handlers serve them, so the document copies their
/// operations.
struct FixedPrefixRoutes;

type FixedRoute = (&'static str, &'static str, &'static str);

impl utoipa::Modify for FixedPrefixRoutes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let mappings: &[FixedRoute] = &[
            (MAPPING_PATH, "/", "root"),
            ("/api/mappings/reload", "/reload", "reload"),
        ];
        let policies: &[FixedRoute] = &[(POLICY_PATH, "/", "root")];
        for (template, fixed) in [
            ("/api/mappings/{prefix}", mappings),
            ("/api/policies/{prefix}", policies),
        ] {
            copy_operations(doc, template, fixed);
        }
    }
}

/// Copies the operations of the path `template` to each fixed route.
fn copy_operations(doc: &mut utoipa::openapi::OpenApi, template: &str, fixed: &[FixedRoute]) {
    let Some(template) = doc.paths.paths.get(template).cloned() else {
        return;
    };
    for &(path, prefix, name) in fixed {
        let item = doc.paths.paths.entry(path.to_owned()).or_default();
        for (slot, operation) in [
            (&mut item.get, &template.get),
            (&mut item.put, &template.put),
            (&mut item.delete, &template.delete),
        ] {
            let Some(mut operation) = operation.clone() else {
                continue;
            };
            operation.parameters = None;
            operation.operation_id = operation.operation_id.map(|id| format!("{id}_{name}"));
            operation.description = Some(format!("The same, for the prefix `{prefix}`."));
            *slot = Some(operation);
        }
    }
}

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
