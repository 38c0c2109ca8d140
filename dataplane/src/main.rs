//! `apiproxy-dataplane`: parse the configuration, start logging, bind, run.

use std::process::ExitCode;

use apiproxy_dataplane::{Config, DataPlane};
use apiproxy_startup::{config_failed, configure, init_logging, StopSignals};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

const PROGRAM: &str = "apiproxy-dataplane";

fn main() -> ExitCode {
    let config = match configure(PROGRAM, Config::parse) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(config.log_format);
    for notice in &config.notices {
        warn!("{notice}");
    }

    let runtime = if config.workers == 1 {
        // One worker: the current-thread runtime has no cross-thread wakeups.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = StopSignals::install();
        let (listen, metrics_listen) = (config.listen, config.metrics_listen);
        let dataplane = match DataPlane::new(config) {
            Ok(dp) => dp,
            Err(e) => return config_failed(PROGRAM, e),
        };
        let (proxy, ops) = match (
            TcpListener::bind(listen).await,
            TcpListener::bind(metrics_listen).await,
        ) {
            (Ok(p), Ok(o)) => (p, o),
            (Err(e), _) => return bind_failed("API_PROXY_LISTEN", listen, e),
            (_, Err(e)) => return bind_failed("API_PROXY_METRICS_LISTEN", metrics_listen, e),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(signals, shutdown.clone()));
        dataplane.run(proxy, ops, shutdown).await;
        ExitCode::SUCCESS
    })
}

fn bind_failed(name: &str, addr: std::net::SocketAddr, e: std::io::Error) -> ExitCode {
    error!("{name}: cannot listen on {addr}: {e}");
    ExitCode::FAILURE
}

/// The stop signal, logged under this binary's name, cancels `shutdown`.
/// (Awaited outside `info!`: a disabled level skips the macro's arguments.)
async fn wait_for_signal(signals: StopSignals, shutdown: CancellationToken) {
    let signal = signals.recv().await;
    info!("{signal} received");
    shutdown.cancel();
}

// jemalloc: fewer instructions per allocation than glibc malloc on the
// request path, and far less memory held after connection bursts. Its
// built-in options are set at build time in .cargo/config.toml.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
