//! Configuration: every setting is an environment variable and a flag named
//! after it (SPEC §2). Secrets and `PORT` are environment-only, read from the
//! map the caller passes, so tests never touch the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use apiproxy_startup::cli::LogFormat;
use apiproxy_startup::cli::{parse_args_and_matches, parse_duration};
pub use apiproxy_startup::cli::{ConfigError, EXIT_CONFIG};
use clap::Parser;

use apiproxy_shared::access::SecretsKey;
use apiproxy_shared::stats::MAX_ID_LEN;

use crate::access_log;
use crate::policy::TargetPolicy;

/// A fraction from 0 to 1 (`API_PROXY_ACCESS_LOG_SAMPLE`).
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// apiproxy data plane: a transparent streaming reverse proxy.
///
/// Every flag can also be set by the environment variable shown with it, or
/// in a `.env` file in the working directory (the real environment wins).
#[derive(Debug, Clone, Parser)]
#[command(name = "apiproxy-dataplane", version, about, long_about = None)]
pub(crate) struct Args {
    /// Proxy listener (HTTP/1.1 and h2c). Default 0.0.0.0:8000, or
    /// 0.0.0.0:$PORT when only PORT is set.
    #[arg(long, env = "API_PROXY_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,

    /// Runtime worker threads [default: number of CPUs].
    #[arg(long, env = "API_PROXY_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,

    /// Listener for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "API_PROXY_METRICS_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:9000"
    )]
    pub(crate) metrics_listen: SocketAddr,

    /// Standalone mode: JSON or TOML file of prefix -> target, re-read when
    /// it changes.
    #[arg(long, env = "API_PROXY_MAPPINGS_FILE", value_name = "PATH")]
    pub(crate) mappings_file: Option<PathBuf>,

    /// Redis mode: redis://[user]:[pass]@host:port/db, rediss://, or a
    /// Sentinel set: redis+sentinel://[[user]:pass@]host:26379[,host:26379]/<master>[/db].
    #[arg(
        long,
        env = "API_PROXY_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) redis_url: Option<String>,

    /// Namespace of every Redis key and channel.
    #[arg(
        long,
        env = "API_PROXY_REDIS_PREFIX",
        value_name = "NAME",
        default_value = "apiproxy"
    )]
    pub(crate) redis_prefix: String,

    /// File where the last applied snapshot is kept and read at boot when
    /// Redis is unreachable.
    #[arg(long, env = "API_PROXY_SNAPSHOT_CACHE", value_name = "PATH")]
    pub(crate) snapshot_cache: Option<PathBuf>,

    /// Check of the served version against Redis's (one GET), a safety net
    /// for lost announcements; a newer version is read in full.
    #[arg(long, env = "API_PROXY_RESYNC_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) resync_interval: Duration,

    /// Full re-read of everything, the last safety net (for direct edits
    /// in Redis when no control plane watches for them); jittered.
    #[arg(long, env = "API_PROXY_FULL_RESYNC_INTERVAL", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub(crate) full_resync_interval: Duration,

    /// Where stats batches go (http://controlplane:8001); unset: no push.
    #[arg(long, env = "API_PROXY_CONTROLPLANE_URL", value_name = "URL")]
    pub(crate) controlplane_url: Option<String>,

    /// This node's name in the console [default: host name].
    #[arg(long, env = "API_PROXY_NODE_ID", value_name = "NAME")]
    pub(crate) node_id: Option<String>,

    /// Stats batch push interval.
    #[arg(long, env = "API_PROXY_STATS_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub(crate) stats_interval: Duration,

    /// false: record no request stats at all. ENABLE_STATS, the Go
    /// version's name, is read when neither this flag nor its variable is
    /// set.
    #[arg(long, env = "API_PROXY_ENABLE_STATS", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set)]
    pub(crate) enable_stats: bool,

    /// TCP + TLS connect to the upstream.
    #[arg(long, env = "API_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,

    /// From request sent to response headers received.
    #[arg(long, env = "API_PROXY_RESPONSE_HEADER_TIMEOUT", value_name = "DURATION", default_value = "900s", value_parser = parse_duration)]
    pub(crate) response_header_timeout: Duration,

    /// Longest silence on a body in either direction, and on a tunnel.
    /// There is no total-duration limit.
    #[arg(long, env = "API_PROXY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,

    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "API_PROXY_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,

    /// Largest request body in bytes; over it: 413 [default: unlimited].
    #[arg(long, env = "API_PROXY_MAX_REQUEST_BODY", value_name = "BYTES")]
    pub(crate) max_request_body: Option<u64>,

    /// Extra PEM roots for upstream TLS, added to the system and webpki roots.
    #[arg(long, env = "API_PROXY_CA_FILE", value_name = "PATH")]
    pub(crate) ca_file: Option<PathBuf>,

    /// true: add X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host.
    #[arg(long, env = "API_PROXY_FORWARDED_HEADERS", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub(crate) forwarded_headers: bool,

    /// Which resolved upstream addresses may be dialled.
    #[arg(
        long,
        env = "API_PROXY_TARGET_POLICY",
        value_name = "POLICY",
        value_enum,
        default_value = "no-link-local"
    )]
    pub(crate) target_policy: TargetPolicy,

    /// Access log: off, stdout, or a file path (appended to, reopened on
    /// SIGHUP).
    #[arg(
        long,
        env = "API_PROXY_ACCESS_LOG",
        value_name = "SINK",
        default_value = "stdout"
    )]
    pub(crate) access_log: access_log::Sink,

    /// Access log line format.
    #[arg(
        long,
        env = "API_PROXY_ACCESS_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) access_log_format: access_log::Format,

    /// true: log the query string too, with the values of key, api_key,
    /// token, access_token and sig replaced by ***.
    #[arg(long, env = "API_PROXY_ACCESS_LOG_QUERY", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub(crate) access_log_query: bool,

    /// Fraction (0 to 1) of successful requests logged; a status of 400 or
    /// more, an error or a cancel is always logged.
    #[arg(long, env = "API_PROXY_ACCESS_LOG_SAMPLE", value_name = "FRACTION", default_value = "1", value_parser = parse_fraction)]
    pub(crate) access_log_sample: f64,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(
        long,
        env = "API_PROXY_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
}

/// Where the mappings come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    File(PathBuf),
    Redis {
        url: String,
        prefix: String,
        /// `API_PROXY_REDIS_SENTINEL_PASSWORD` (environment only): asked
        /// by the sentinels of a `redis+sentinel://` URL.
        sentinel_password: Option<String>,
    },
}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub workers: usize,
    pub(crate) source: Source,
    pub(crate) snapshot_cache: Option<PathBuf>,
    pub(crate) resync_interval: Duration,
    pub(crate) full_resync_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) forwarded_headers: bool,
    pub(crate) target_policy: TargetPolicy,
    pub log_format: LogFormat,
    pub(crate) enable_stats: bool,
    /// Where and how stats batches go; `None`: no push.
    pub(crate) stats_push: Option<StatsPush>,
    pub(crate) access_log: access_log::Settings,
    /// `API_PROXY_SECRETS_KEY` (environment only): opens the upstream
    /// credentials of keyed mappings. Without it, those mappings answer
    /// 503 (they fail closed).
    pub(crate) secrets_key: Option<Arc<SecretsKey>>,
    /// Said once at start, when logging is up: an older variable name
    /// read or overridden.
    pub notices: Vec<String>,
}

/// The Go version's name of `API_PROXY_ENABLE_STATS`.
const ENABLE_STATS_ALIAS: &str = "ENABLE_STATS";

/// `ENABLE_STATS` when it stands in for `API_PROXY_ENABLE_STATS`: its
/// value, read as the new variable's would be, when the new name (or its
/// flag) is not set, and the line that says so; the new name wins when
/// both are set, and the line says that instead.
fn enable_stats_alias(
    defaulted: bool,
    env: &HashMap<String, String>,
) -> Result<(Option<bool>, Option<String>), ConfigError> {
    let Some(value) = env.get(ENABLE_STATS_ALIAS) else {
        return Ok((None, None));
    };
    if !defaulted {
        return Ok((
            None,
            Some(format!(
                "{ENABLE_STATS_ALIAS} (the Go version's name) is ignored: API_PROXY_ENABLE_STATS is set and wins"
            )),
        ));
    }
    let enabled = match value.as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(ConfigError::Invalid(format!(
                "{ENABLE_STATS_ALIAS}: invalid value {value:?} (true or false), read as API_PROXY_ENABLE_STATS"
            )))
        }
    };
    Ok((
        Some(enabled),
        Some(format!(
            "{ENABLE_STATS_ALIAS}={enabled} (the Go version's name) read as API_PROXY_ENABLE_STATS; set API_PROXY_ENABLE_STATS instead"
        )),
    ))
}

/// The stats push settings (`API_PROXY_CONTROLPLANE_URL` and friends).
#[derive(Debug, Clone)]
pub(crate) struct StatsPush {
    /// `…/internal/stats` on the control plane.
    pub(crate) url: http::Uri,
    pub(crate) token: NodeToken,
    pub(crate) node_id: String,
    pub(crate) interval: Duration,
}

/// `API_PROXY_NODE_TOKEN`; its `Debug` never shows the value.
#[derive(Clone)]
pub(crate) struct NodeToken(pub String);

impl std::fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeToken(<redacted>)")
    }
}

/// The push endpoint under the control plane's base URL.
fn parse_controlplane_url(url: &str) -> Result<http::Uri, ConfigError> {
    let invalid = |why: &str| {
        ConfigError::Invalid(format!(
            "API_PROXY_CONTROLPLANE_URL: {why} (e.g. http://controlplane:8001)"
        ))
    };
    let base: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if !matches!(base.scheme_str(), Some("http" | "https")) || base.host().is_none() {
        return Err(invalid("must be an http:// or https:// URL with a host"));
    }
    if base.query().is_some() {
        return Err(invalid("must not have a query"));
    }
    format!(
        "{}://{}{}/internal/stats",
        base.scheme_str().unwrap_or("http"),
        base.authority().map_or("", |a| a.as_str()),
        base.path().trim_end_matches('/')
    )
    .parse()
    .map_err(|_| invalid("not a URL"))
}

/// The default node id: the host name (the pod or container name).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= MAX_ID_LEN)
        .unwrap_or_else(|| "dataplane".to_owned())
}

impl Config {
    /// Parses flags (`args`, program name first) with clap's own
    /// environment fallbacks, and the environment-only settings from `env`.
    pub fn parse<I, T>(args: I, env: &HashMap<String, String>) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (mut args, matches): (Args, _) = parse_args_and_matches(args)?;
        let defaulted =
            matches.value_source("enable_stats") == Some(clap::parser::ValueSource::DefaultValue);
        let (alias, notice) = enable_stats_alias(defaulted, env)?;
        if let Some(enabled) = alias {
            args.enable_stats = enabled;
        }
        let mut config = Config::from_args(args, env)?;
        config.notices.extend(notice);
        Ok(config)
    }

    fn from_args(args: Args, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let listen = match (args.listen, env.get("PORT")) {
            (Some(addr), _) => addr,
            (None, Some(port)) => match port.parse::<u16>() {
                Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
                Err(_) => return invalid(format!("PORT: invalid port number {port:?}")),
            },
            (None, None) => SocketAddr::from(([0, 0, 0, 0], 8000)),
        };
        let source = match (args.mappings_file, args.redis_url) {
            (Some(path), None) => Source::File(path),
            (None, Some(url)) => Source::Redis {
                url,
                prefix: args.redis_prefix,
                sentinel_password: env
                    .get("API_PROXY_REDIS_SENTINEL_PASSWORD")
                    .filter(|p| !p.is_empty())
                    .cloned(),
            },
            (Some(_), Some(_)) => {
                return invalid(
                    "API_PROXY_MAPPINGS_FILE and API_PROXY_REDIS_URL are both set: set exactly one".into(),
                )
            }
            (None, None) => {
                return invalid(
                    "API_PROXY_MAPPINGS_FILE or API_PROXY_REDIS_URL must be set (e.g. --mappings-file examples/mappings.json)"
                        .into(),
                )
            }
        };
        let node_id = match args.node_id {
            Some(id) if id.is_empty() || id.len() > MAX_ID_LEN => {
                return invalid(format!(
                    "API_PROXY_NODE_ID: must be 1 to {MAX_ID_LEN} bytes"
                ))
            }
            Some(id) => id,
            None => host_name(),
        };
        let stats_push = match args.controlplane_url {
            None => None,
            Some(url) => Some(StatsPush {
                url: parse_controlplane_url(&url)?,
                token: match env.get("API_PROXY_NODE_TOKEN") {
                    Some(t) if t.bytes().any(|b| !b.is_ascii_graphic()) => {
                        return invalid(
                            "API_PROXY_NODE_TOKEN: must be printable ASCII without spaces".into(),
                        )
                    }
                    Some(t) if !t.is_empty() => NodeToken(t.clone()),
                    _ => return invalid(
                        "API_PROXY_NODE_TOKEN must be set when API_PROXY_CONTROLPLANE_URL is set"
                            .into(),
                    ),
                },
                node_id: node_id.clone(),
                interval: args.stats_interval,
            }),
        };
        for (name, d) in [
            ("API_PROXY_CONNECT_TIMEOUT", args.connect_timeout),
            (
                "API_PROXY_RESPONSE_HEADER_TIMEOUT",
                args.response_header_timeout,
            ),
            ("API_PROXY_IDLE_TIMEOUT", args.idle_timeout),
            ("API_PROXY_RESYNC_INTERVAL", args.resync_interval),
            ("API_PROXY_FULL_RESYNC_INTERVAL", args.full_resync_interval),
            ("API_PROXY_STATS_INTERVAL", args.stats_interval),
        ] {
            if d.is_zero() {
                return invalid(format!("{name}: must be greater than zero"));
            }
        }
        let secrets_key = match env.get("API_PROXY_SECRETS_KEY").map(|k| k.trim()) {
            None | Some("") => None,
            Some(k) => Some(Arc::new(
                SecretsKey::from_base64(k).map_err(|e| ConfigError::Invalid(e.to_string()))?,
            )),
        };
        let workers = match args.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Config {
            listen,
            metrics_listen: args.metrics_listen,
            workers,
            source,
            snapshot_cache: args.snapshot_cache,
            resync_interval: args.resync_interval,
            full_resync_interval: args.full_resync_interval,
            connect_timeout: args.connect_timeout,
            response_header_timeout: args.response_header_timeout,
            idle_timeout: args.idle_timeout,
            drain_timeout: args.drain_timeout,
            max_request_body: args.max_request_body,
            ca_file: args.ca_file,
            forwarded_headers: args.forwarded_headers,
            target_policy: args.target_policy,
            log_format: args.log_format,
            enable_stats: args.enable_stats,
            stats_push,
            access_log: access_log::Settings {
                sink: args.access_log,
                format: args.access_log_format,
                query: args.access_log_query,
                sample: args.access_log_sample,
                node_id,
            },
            secrets_key,
            notices: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(
            std::iter::once("apiproxy-dataplane").chain(args.iter().copied()),
            &env,
        )
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(&["--mappings-file", "m.json"], &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.metrics_listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.response_header_timeout, Duration::from_secs(900));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.target_policy, TargetPolicy::NoLinkLocal);
        assert!(!c.forwarded_headers);
        assert!(c.max_request_body.is_none());
        assert_eq!(c.access_log.sink, access_log::Sink::Stdout);
        assert_eq!(c.access_log.format, access_log::Format::Text);
        assert!(!c.access_log.query);
        assert_eq!(c.access_log.sample, 1.0);
    }

    #[test]
    fn access_log_settings_are_checked() {
        let c = parse(&["--mappings-file", "m"], &[]).unwrap();
        assert!(!c.access_log.node_id.is_empty());
        let c = parse(
            &[
                "--mappings-file",
                "m",
                "--access-log",
                "/var/log/a.log",
                "--access-log-format",
                "json",
                "--access-log-sample",
                "0.25",
                "--node-id",
                "dp-9",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.access_log.sink,
            access_log::Sink::File("/var/log/a.log".into())
        );
        assert_eq!(c.access_log.format, access_log::Format::Json);
        assert_eq!(c.access_log.sample, 0.25);
        assert_eq!(c.access_log.node_id, "dp-9");
        for bad in [
            &["--access-log-sample", "1.5"][..],
            &["--access-log-sample", "x"],
            &["--access-log", ""],
            &["--access-log-format", "xml"],
        ] {
            let args: Vec<&str> = ["--mappings-file", "m"]
                .iter()
                .chain(bad)
                .copied()
                .collect();
            assert!(parse(&args, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_applies_only_without_listen() {
        let c = parse(&["--mappings-file", "m"], &[("PORT", "8123")]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8123".parse().unwrap());
        let c = parse(
            &["--mappings-file", "m", "--listen", "127.0.0.1:1"],
            &[("PORT", "8123")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
        let err = parse(&["--mappings-file", "m"], &[("PORT", "x")]).unwrap_err();
        assert!(err.to_string().starts_with("PORT"), "{err}");
    }

    #[test]
    fn errors_are_one_line_naming_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "API_PROXY_MAPPINGS_FILE"),
            (
                &["--mappings-file", "m", "--connect-timeout", "soon"],
                "--connect-timeout",
            ),
            (
                &["--mappings-file", "m", "--idle-timeout", "0s"],
                "API_PROXY_IDLE_TIMEOUT",
            ),
            (
                &["--mappings-file", "m", "--target-policy", "all"],
                "--target-policy",
            ),
            (&["--mappings-file", "m", "--bogus"], "--bogus"),
            (
                &["--mappings-file", "m", "--controlplane-url", "http://cp"],
                "API_PROXY_NODE_TOKEN",
            ),
            (
                &["--mappings-file", "m", "--controlplane-url", "ftp://cp"],
                "API_PROXY_CONTROLPLANE_URL",
            ),
        ];
        for (args, name) in cases {
            let err = parse(args, &[]).unwrap_err();
            assert_eq!(err.exit_code(), EXIT_CONFIG);
            let msg = err.to_string();
            assert!(msg.contains(name), "{args:?}: {msg}");
            assert!(!msg.contains('\n'), "{args:?}: {msg}");
        }
    }

    #[test]
    fn stats_push_settings() {
        let c = parse(&["--mappings-file", "m"], &[]).unwrap();
        assert!(c.stats_push.is_none());
        assert!(c.enable_stats);
        let c = parse(
            &[
                "--mappings-file",
                "m",
                "--controlplane-url",
                "http://cp:8001/",
                "--node-id",
                "dp-7",
                "--stats-interval",
                "500ms",
            ],
            &[("API_PROXY_NODE_TOKEN", "node-secret")],
        )
        .unwrap();
        let push = c.stats_push.unwrap();
        assert_eq!(push.url, "http://cp:8001/internal/stats");
        assert_eq!(push.node_id, "dp-7");
        assert_eq!(push.interval, Duration::from_millis(500));
        assert!(!format!("{push:?}").contains("node-secret"));
        let c = parse(
            &["--mappings-file", "m", "--controlplane-url", "https://cp"],
            &[("API_PROXY_NODE_TOKEN", "t")],
        )
        .unwrap();
        let push = c.stats_push.unwrap();
        assert_eq!(push.url, "https://cp/internal/stats");
        assert!(!push.node_id.is_empty());
    }

    #[test]
    fn help_and_version_exit_zero() {
        assert_eq!(parse(&["--help"], &[]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["--version"], &[]).unwrap_err().exit_code(), 0);
    }

    #[test]
    fn durations_accept_human_units() {
        let c = parse(
            &[
                "--mappings-file",
                "m",
                "--drain-timeout",
                "500ms",
                "--idle-timeout",
                "5m",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.drain_timeout, Duration::from_millis(500));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn enable_stats_reads_the_go_name_when_the_new_one_is_unset() {
        let file = ["--mappings-file", "m"];
        let c = parse(&file, &[("ENABLE_STATS", "false")]).unwrap();
        assert!(!c.enable_stats);
        assert_eq!(c.notices.len(), 1);
        assert!(
            c.notices[0].contains("ENABLE_STATS=false")
                && c.notices[0].contains("API_PROXY_ENABLE_STATS"),
            "{:?}",
            c.notices
        );
        let c = parse(&file, &[]).unwrap();
        assert!(c.enable_stats);
        assert!(c.notices.is_empty());
        let err = parse(&file, &[("ENABLE_STATS", "no")]).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_CONFIG);
        assert!(err.to_string().starts_with("ENABLE_STATS:"), "{err}");
    }

    #[test]
    fn enable_stats_the_new_name_wins_over_the_go_name() {
        // The flag stands for its variable here: clap reads the variable
        // from the process environment, which unit tests leave alone.
        let c = parse(
            &["--mappings-file", "m", "--enable-stats", "true"],
            &[("ENABLE_STATS", "false")],
        )
        .unwrap();
        assert!(c.enable_stats);
        assert_eq!(c.notices.len(), 1);
        assert!(c.notices[0].contains("ignored"), "{:?}", c.notices);
        // A bad value of the ignored name is ignored too.
        let (value, notice) = enable_stats_alias(
            false,
            &[("ENABLE_STATS".to_owned(), "bogus".to_owned())].into(),
        )
        .unwrap();
        assert_eq!(value, None);
        assert!(notice.is_some());
    }
}
