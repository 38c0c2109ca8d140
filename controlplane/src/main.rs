//! `apiproxy-controlplane`: parse the configuration, start logging, then
//! either `init` the default mappings or serve the admin API.

use std::process::ExitCode;

use apiproxy_controlplane::{
    app, import_go_stats, init, redis_connection, serve, watch_edits, Config, RedisConn,
    DEFAULT_MAPPINGS,
};
use apiproxy_startup::{config_failed, configure, init_logging, StopSignals};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

const PROGRAM: &str = "apiproxy-controlplane";

fn main() -> ExitCode {
    let config = match configure(PROGRAM, Config::parse) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = StopSignals::install();
        let conn = match redis_connection(&config.redis_url, config.redis_sentinel_password.as_deref()) {
            Ok(c) => c,
            Err(e) => return config_failed(PROGRAM, e),
        };
        if config.init_only {
            return write_defaults(&config, conn).await;
        }
        if config.node_token.is_none() {
            warn!("API_PROXY_NODE_TOKEN is not set: every stats push from data planes will be refused (401)");
        }
        let listener = match TcpListener::bind(config.admin_listen).await {
            Ok(l) => l,
            Err(e) => {
                error!("API_PROXY_ADMIN_LISTEN: cannot listen on {}: {e}", config.admin_listen);
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
        info!(admin_addr = %local, "serving");
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(signals, shutdown.clone()));
        // Before the first push can make our totals non-empty, when Redis
        // answers at once; else in the background.
        let import = tokio::spawn({
            let (config, conn, shutdown) = (config.clone(), conn.clone(), shutdown.clone());
            async move { import_go_stats(&config, conn, shutdown).await }
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), import).await;
        tokio::spawn({
            let (config, conn, shutdown) = (config.clone(), conn.clone(), shutdown.clone());
            async move { watch_edits(&config, conn, shutdown).await }
        });
        match serve(listener, app(&config, conn), shutdown).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// `init`: the default mappings into an empty hash, else nothing. Exit 0
/// either way; 1 when Redis cannot be reached.
async fn write_defaults(config: &Config, conn: RedisConn) -> ExitCode {
    match init(config, conn).await {
        Ok(Some(version)) => {
            info!(
                count = DEFAULT_MAPPINGS.len(),
                version, "wrote the default mappings"
            );
            ExitCode::SUCCESS
        }
        Ok(None) => {
            info!("the mappings hash is not empty: nothing written");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "init failed");
            ExitCode::FAILURE
        }
    }
}

/// The stop signal, logged under this binary's name, cancels `shutdown`.
/// (Awaited outside `info!`: a disabled level skips the macro's arguments.)
async fn wait_for_signal(signals: StopSignals, shutdown: CancellationToken) {
    let signal = signals.recv().await;
    info!("{signal} received");
    shutdown.cancel();
}
