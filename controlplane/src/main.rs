//! `apiproxy-controlplane`: parse the configuration, start logging, then
//! either `init` the default mappings or serve the admin API.

use std::process::ExitCode;

use apiproxy_controlplane::config::LogFormat;
use apiproxy_controlplane::store::Store;
use apiproxy_controlplane::{app, redis_connection, serve, Config, DEFAULT_MAPPINGS, EXIT_CONFIG};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let env = std::env::vars().collect();
    let config = match Config::parse(std::env::args_os(), &env) {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            if code == 0 {
                print!("{e}");
            } else {
                eprintln!("apiproxy-controlplane: {e}");
            }
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
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
        let conn = match redis_connection(&config.redis_url) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("apiproxy-controlplane: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        if config.init_only {
            return init(Store::new(conn, &config.redis_prefix)).await;
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
        tokio::spawn(wait_for_signal(shutdown.clone()));
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
async fn init(store: Store) -> ExitCode {
    match store.init_defaults(&DEFAULT_MAPPINGS, "init").await {
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

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
}
