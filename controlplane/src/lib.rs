//! apiproxy control plane: the admin API over Redis (SPEC §5), written
//! through the shared crate's key names and validation rules, and the
//! cluster stats the data planes push (SPEC §6).

mod access_store;
mod assets;
mod auth;
mod batch_schema;
mod cluster_metrics;
mod config;
mod edit_watch;
mod error;
mod extract;
mod handlers;
mod model;
mod redis_conn;
mod router;
mod stats_report;
mod stats_store;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::RedisTarget;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use redis_conn::RedisConn;
pub use store::StoreError;

use crate::access_store::AccessStore;
use crate::auth::{LoginLimiter, Secret, Sessions};
use crate::cluster_metrics::ClusterMetrics;
use crate::extract::AppState;
use crate::stats_store::StatsStore;
use crate::store::Store;

/// Longest wait for Redis on any request: the API answers 503 rather than
/// hanging when Redis is away.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// The default mappings `init` writes into an empty hash (SPEC §2).
pub const DEFAULT_MAPPINGS: [(&str, &str); 15] = [
    ("/openai", "https://api.openai.com"),
    ("/claude", "https://api.anthropic.com"),
    ("/gemini", "https://generativelanguage.googleapis.com"),
    ("/xai", "https://api.x.ai"),
    ("/groq", "https://api.groq.com/openai"),
    ("/cohere", "https://api.cohere.ai"),
    ("/together", "https://api.together.xyz"),
    ("/fireworks", "https://api.fireworks.ai"),
    ("/openrouter", "https://openrouter.ai/api"),
    ("/cerebras", "https://api.cerebras.ai"),
    ("/huggingface", "https://api-inference.huggingface.co"),
    ("/novita", "https://api.novita.ai"),
    ("/portkey", "https://api.portkey.ai"),
    ("/telegram", "https://api.telegram.org"),
    ("/discord", "https://discord.com/api"),
];

/// A Redis connection that reconnects by itself (behind Sentinel, to
/// whichever server is master then) and is made lazily, so the control
/// plane starts (and reports not-ready) while Redis is down.
pub fn redis_connection(url: &str, sentinel_password: Option<&str>) -> Result<RedisConn, String> {
    let target = RedisTarget::new(url, sentinel_password, None).map_err(|e| e.to_string())?;
    RedisConn::new(target, REDIS_TIMEOUT).map_err(|e| {
        format!(
            "API_PROXY_REDIS_URL: cannot set up the connection ({:?})",
            e.kind()
        )
    })
}

/// `init`: [`DEFAULT_MAPPINGS`] into the mappings hash when it is empty;
/// `None` when it held anything (nothing is written then).
pub async fn init(config: &Config, conn: RedisConn) -> Result<Option<u64>, StoreError> {
    Store::new(conn, &config.redis_prefix)
        .init_defaults(&DEFAULT_MAPPINGS, "init")
        .await
}

/// The whole HTTP application for `config` over `conn`.
pub fn app(config: &Config, conn: RedisConn) -> Router {
    let state = AppState {
        store: Store::new(conn.clone(), &config.redis_prefix)
            .announcing_targets(config.announce_targets),
        access: AccessStore::new(conn.clone(), &config.redis_prefix),
        secrets: config.secrets_key.clone(),
        stats: StatsStore::new(conn.clone(), &config.redis_prefix),
        sessions: Sessions::new(conn, &config.redis_prefix, &config.admin_token),
        admin: Secret::new(&config.admin_token),
        node: config.node_token.as_deref().map(Secret::new),
        limiter: LoginLimiter::default(),
        cookie_secure: config.cookie_secure,
        public_stats: config.public_stats,
        node_timeout: config.node_timeout,
        metrics: ClusterMetrics::new(),
    };
    router::router(Arc::new(state))
}

/// Imports the Go version's saved stats once (while our totals are empty),
/// logging what it did. Tries again every 2 s while Redis cannot be
/// reached, at most 150 times (5 min), or until `shutdown`.
pub async fn import_go_stats(config: &Config, conn: RedisConn, shutdown: CancellationToken) {
    use crate::stats_store::GoImport;
    let stats = StatsStore::new(conn, &config.redis_prefix);
    for attempt in 1..=150 {
        match stats.import_go_stats(store::now_ms()).await {
            Ok(GoImport::Imported(summary, warnings)) => {
                for warning in &warnings {
                    tracing::warn!("Go stats import: {warning}");
                }
                tracing::info!(%summary, "imported the Go version's stats into the cluster totals");
                return;
            }
            Ok(GoImport::Skipped) => {
                tracing::info!("the Go version's stats are not imported: our totals are not empty");
                return;
            }
            Ok(GoImport::Done) => {
                tracing::info!(
                    "the Go version's stats were imported (or skipped) before: not again"
                );
                return;
            }
            Ok(GoImport::Nothing) => return,
            Err(e) if attempt == 150 => {
                tracing::warn!(error = %e, "Go stats import: Redis unreachable, given up until the next start");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "Go stats import: Redis unreachable, retrying")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Announces edits made in Redis without a version bump (see
/// [`edit_watch`]), until `shutdown`.
pub async fn watch_edits(config: &Config, conn: RedisConn, shutdown: CancellationToken) {
    edit_watch::watch(conn, &config.redis_prefix, config.resync_interval, shutdown).await
}

/// Serves until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
