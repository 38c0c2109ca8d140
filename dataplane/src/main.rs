//! `apiproxy-dataplane`: parse the configuration, start logging, bind, run.

use std::process::ExitCode;

use apiproxy_dataplane::{telemetry, Config, DataPlane, EXIT_CONFIG};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

fn main() -> ExitCode {
    // A .env file fills in what the real environment does not set.
    let _ = dotenvy::dotenv();
    let env = std::env::vars().collect();
    let config = match Config::parse(std::env::args_os(), &env) {
        Ok(config) => config,
        Err(e) => {
            let code = e.exit_code();
            if code == 0 {
                print!("{e}");
            } else {
                eprintln!("apiproxy-dataplane: {e}");
            }
            return exit(code);
        }
    };
    telemetry::init(config.log_format);

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
        let (listen, metrics_listen) = (config.listen, config.metrics_listen);
        let dataplane = match DataPlane::new(config) {
            Ok(dp) => dp,
            Err(e) => {
                eprintln!("apiproxy-dataplane: {e}");
                return exit(EXIT_CONFIG);
            }
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
        tokio::spawn(wait_for_signal(shutdown.clone()));
        dataplane.run(proxy, ops, shutdown).await;
        ExitCode::SUCCESS
    })
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn bind_failed(name: &str, addr: std::net::SocketAddr, e: std::io::Error) -> ExitCode {
    error!("{name}: cannot listen on {addr}: {e}");
    ExitCode::FAILURE
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

// jemalloc: fewer instructions per allocation than glibc malloc on the
// request path, and far less memory held after connection bursts. Its
// built-in options are set at build time in .cargo/config.toml.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
