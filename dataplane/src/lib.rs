//! apiproxy data plane: a transparent, streaming reverse proxy.
//!
//! `main` parses the [`Config`], builds a [`DataPlane`] (which loads the
//! first snapshot: a bad mappings file is a configuration error), binds the
//! two listeners and calls [`DataPlane::run`]. Tests drive the real binary.

// The request path, in layers that only point down:
// wire (`http1`, `h2`) -> transport (`connect`, `tls_sessions`, `pool`,
// `budget`, `upstream`) -> proxy (`proxy`, `body`, `error`, `tunnel`) ->
// `listener`. Below every layer: `headers` (field and token helpers),
// `write_stall`, `deadline`, `causes`, `error_kind`, `request_id`,
// `body_state`. Beside the path: routing state and its sources, stats,
// metrics, and where a finished request is told (`record` ->
// `access_log`, `failures`).
mod access_log;
mod body;
mod body_state;
mod budget;
mod causes;
mod config;
mod connect;
mod deadline;
mod error;
mod error_kind;
mod failures;
mod file_source;
mod gate;
mod h2;
mod headers;
mod http1;
mod listener;
mod metrics;
mod ops;
mod policy;
mod pool;
mod proxy;
mod record;
mod redis_source;
mod request_id;
mod route;
mod route_trie;
mod routing;
mod snapshot_cache;
mod state;
mod stats;
mod stats_push;
mod tls_sessions;
mod tls_stream;
mod tunnel;
mod upstream;
mod write_stall;

use std::sync::Arc;

use apiproxy_shared::RedisTarget;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use config::Source;
pub use config::{Config, ConfigError, EXIT_CONFIG};
// For the benches: the routing table's lookup and a request's record.
pub use error_kind::UpstreamErrorKind;
pub use gate::usage::UsageRegistry;
pub use gate::{Admitted, Denied, Gate, Pass, ProxyKey};
pub use metrics::Metrics;
pub use record::{Outcome, RequestRecord};
pub use routing::{Route, Snapshot};
// What a start-up failure holds.
pub use apiproxy_shared::RedisSetupError;
pub use connect::TlsSetupError;
pub use file_source::FileError;
pub use stats::{PrefixStats, StatsRegistry, Totals};

use crate::access_log::{Reopener, RequestLog, WriterHandle};
use crate::connect::UpstreamSettings;
use crate::file_source::FileSource;
use crate::proxy::Proxy;
use crate::redis_source::{RedisSource, Resync};
use crate::snapshot_cache::SnapshotCache;
use crate::state::RoutingState;
use crate::stats_push::StatsPusher;
use crate::tunnel::Tunnels;
use crate::upstream::Upstream;

/// A start-up failure caused by the configuration (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Mappings(#[from] file_source::FileError),
    #[error(transparent)]
    Tls(#[from] connect::TlsSetupError),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error("API_PROXY_ACCESS_LOG: cannot open {path}: {error}")]
    AccessLog {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

/// Where snapshots come from; both feed the same [`RoutingState`].
enum MappingSource {
    File(FileSource),
    Redis(Box<RedisSource>),
}

impl MappingSource {
    async fn run(self, shutdown: CancellationToken) {
        match self {
            MappingSource::File(file) => file.watch(shutdown).await,
            MappingSource::Redis(redis) => {
                // Redis I/O, parsing and snapshot builds get a thread and a
                // runtime of their own: a reload of 10,000 mappings never
                // takes time from the workers that carry requests.
                let thread = tokio::task::spawn_blocking(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(redis.run(shutdown)),
                        Err(error) => {
                            tracing::error!(%error, "cannot start the Redis sync runtime")
                        }
                    }
                });
                if let Err(error) = thread.await {
                    tracing::error!(%error, "Redis sync thread failed");
                }
            }
        }
    }
}

/// A data plane with its first snapshot loaded, ready to bind and run.
pub struct DataPlane {
    config: Config,
    state: Arc<RoutingState>,
    source: MappingSource,
    upstream: Upstream<body::RequestBody>,
    pusher: Option<StatsPusher>,
    log: &'static RequestLog,
    log_writer: Option<WriterHandle>,
}

impl DataPlane {
    pub fn new(config: Config) -> Result<DataPlane, StartupError> {
        // One stats shard per worker thread, so workers never contend.
        let stats = StatsRegistry::new(config.workers, config.enable_stats);
        let state = Arc::new(RoutingState::new(Metrics::with_stats(stats)));
        let (log, log_writer) = RequestLog::start(
            config.access_log.clone(),
            state.metrics.access_log_dropped.clone(),
        )
        .map_err(|error| StartupError::AccessLog {
            path: match &config.access_log.sink {
                access_log::Sink::File(path) => path.display().to_string(),
                _ => "stdout".into(),
            },
            error,
        })?;
        let upstream = Upstream::new(&UpstreamSettings {
            policy: config.target_policy,
            connect_timeout: config.connect_timeout,
            ca_file: config.ca_file.as_deref(),
        })?;
        let source = match &config.source {
            Source::File(path) => {
                MappingSource::File(FileSource::load(path.clone(), state.clone())?)
            }
            Source::Redis {
                url,
                prefix,
                sentinel_password,
            } => MappingSource::Redis(Box::new(RedisSource::new(
                RedisTarget::new(url, sentinel_password.as_deref(), config.ca_file.as_deref())?,
                prefix,
                state.clone(),
                config.snapshot_cache.clone().map(SnapshotCache::new),
                Resync {
                    check: config.resync_interval,
                    full: config.full_resync_interval,
                },
                config.secrets_key.clone(),
            ))),
        };
        let pusher = match config.stats_push.clone() {
            Some(push) => Some(StatsPusher::new(
                push,
                state.clone(),
                &log.failures,
                config.ca_file.as_deref(),
            )?),
            None => None,
        };
        Ok(DataPlane {
            config,
            state,
            source,
            upstream,
            pusher,
            log,
            log_writer,
        })
    }

    /// Serves until `shutdown` fires, then drains (readiness turns 503 at
    /// once, in-flight requests get up to the drain timeout) and returns.
    pub async fn run(
        self,
        proxy_listener: TcpListener,
        ops_listener: TcpListener,
        shutdown: CancellationToken,
    ) {
        let DataPlane {
            config,
            state,
            source,
            upstream,
            pusher,
            log,
            log_writer,
        } = self;
        let background = CancellationToken::new();
        let drain_deadline = CancellationToken::new();
        let proxy = Arc::new(Proxy {
            state: state.clone(),
            upstream,
            tunnels: Tunnels::new(config.idle_timeout, drain_deadline.clone()),
            response_header_timeout: config.response_header_timeout,
            idle_timeout: config.idle_timeout,
            max_request_body: config.max_request_body,
            forwarded_headers: config.forwarded_headers,
            log,
        });
        // The bound addresses (not the configured ones) so that a `:0` port
        // can be found by whoever started us.
        let local = |l: &TcpListener| {
            l.local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        };
        info!(proxy_addr = %local(&proxy_listener), metrics_addr = %local(&ops_listener), "serving");
        let watcher = tokio::spawn(source.run(background.child_token()));
        // Cancelled only after the drain, so the final batch holds every
        // request that finished.
        let pusher = pusher.map(|p| tokio::spawn(p.run(background.child_token())));
        let reopen = log_writer
            .as_ref()
            .map(|w| tokio::spawn(reopen_on_sighup(w.reopener(), background.child_token())));
        let ops = tokio::spawn(ops::serve(
            ops_listener,
            state.clone(),
            background.child_token(),
        ));

        let draining = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                state.start_draining();
            }
        };
        let serving = listener::serve(proxy_listener, proxy, shutdown, config.drain_timeout);
        tokio::join!(draining, serving);
        drain_deadline.cancel();
        background.cancel();
        if let Some(pusher) = pusher {
            let _ = pusher.await;
        }
        let _ = tokio::join!(watcher, ops);
        if let Some(reopen) = reopen {
            let _ = reopen.await;
        }
        if let Some(writer) = log_writer {
            writer.close(WRITER_CLOSE_WAIT).await;
        }
        info!("stopped");
    }
}

/// How long the access log's last lines may take to be written at exit.
const WRITER_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGHUP reopens the access log file (after logrotate moved it).
async fn reopen_on_sighup(writer: Reopener, stop: CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            return tracing::warn!(%error, "cannot watch SIGHUP; the access log will not be reopened")
        }
    };
    loop {
        tokio::select! {
            Some(()) = hangups.recv() => {
                info!("SIGHUP received: reopening the access log");
                writer.reopen();
            }
            _ = stop.cancelled() => return,
        }
    }
}
