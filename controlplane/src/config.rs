//! Control-plane configuration (SPEC §2): flags with environment
//! fallbacks; the secrets `ADMIN_TOKEN`, `API_PROXY_NODE_TOKEN` and
//! `API_PROXY_SECRETS_KEY` come from the environment only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::access::SecretsKey;

use apiproxy_startup::cli::{parse_args, parse_duration};
use apiproxy_startup::cli::{ConfigError, LogFormat};
use clap::{Parser, Subcommand};

/// The `.env.example` placeholder, refused as a real token.
pub(crate) const PLACEHOLDER_TOKEN: &str = "change-me-to-a-long-random-secret";
const MIN_TOKEN_LEN: usize = 16;

/// apiproxy control plane: mapping API over Redis, admin console and
/// cluster stats. The admin secret comes from ADMIN_TOKEN (environment only).
#[derive(Debug, Clone, Parser)]
#[command(name = "apiproxy-controlplane", version, about, long_about = None)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Console, admin API, /stats, /metrics and health.
    #[arg(
        long,
        env = "API_PROXY_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8001",
        global = true
    )]
    pub(crate) admin_listen: SocketAddr,

    /// redis://[user]:[pass]@host:port/db, rediss://, or a Sentinel set:
    /// redis+sentinel://[[user]:pass@]host:26379[,host:26379]/<master>[/db].
    #[arg(
        long,
        env = "API_PROXY_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub(crate) redis_url: Option<String>,

    /// Namespace of every Redis key and channel.
    #[arg(
        long,
        env = "API_PROXY_REDIS_PREFIX",
        value_name = "NAME",
        default_value = "apiproxy",
        global = true
    )]
    pub(crate) redis_prefix: String,

    /// A node with no stats batch for this long is `down`.
    #[arg(long, env = "API_PROXY_NODE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    pub(crate) node_timeout: Duration,

    /// How often the hashes are compared with what was last seen, to
    /// announce an edit made in Redis without a version bump.
    #[arg(long, env = "API_PROXY_RESYNC_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    pub(crate) resync_interval: Duration,

    /// false: a mapping change's announcement leaves out its target, and
    /// every node reads it from Redis (for a Redis whose pub/sub channels
    /// others may read: targets may hold credentials).
    #[arg(long, env = "API_PROXY_ANNOUNCE_TARGETS", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set, global = true)]
    pub(crate) announce_targets: bool,

    /// false: /stats and the dashboard data need admin auth too.
    #[arg(long, env = "API_PROXY_PUBLIC_STATS", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set, global = true)]
    pub(crate) public_stats: bool,

    /// Mark the session cookie Secure (set when served over TLS).
    #[arg(long, env = "API_PROXY_COOKIE_SECURE", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set, global = true)]
    pub(crate) cookie_secure: bool,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(
        long,
        env = "API_PROXY_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Write the default mappings into an empty hash (needs only API_PROXY_REDIS_URL).
    Init,
    /// Print a fresh API_PROXY_SECRETS_KEY (32 random bytes in base64) and exit.
    GenSecretsKey,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub admin_listen: SocketAddr,
    pub redis_url: String,
    /// `API_PROXY_REDIS_SENTINEL_PASSWORD` (environment only): asked by the
    /// sentinels of a `redis+sentinel://` URL.
    pub redis_sentinel_password: Option<String>,
    pub(crate) redis_prefix: String,
    pub(crate) node_timeout: Duration,
    pub(crate) resync_interval: Duration,
    pub(crate) announce_targets: bool,
    pub(crate) public_stats: bool,
    pub(crate) cookie_secure: bool,
    pub log_format: LogFormat,
    pub(crate) admin_token: String,
    pub node_token: Option<String>,
    /// `API_PROXY_SECRETS_KEY`: seals upstream credentials; `None`: a
    /// policy PUT with a credential secret is refused.
    pub(crate) secrets_key: Option<Arc<SecretsKey>>,
    pub init_only: bool,
}

impl Config {
    pub fn parse<I, T>(args: I, env: &HashMap<String, String>) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Args = parse_args(args)?;
        if let Some(Command::GenSecretsKey) = args.command {
            // Like --version: printed on stdout, exit 0, nothing else read.
            return Err(ConfigError::Info(format!("{}\n", SecretsKey::generate())));
        }
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let init_only = matches!(args.command, Some(Command::Init));
        let Some(redis_url) = args.redis_url.filter(|u| !u.is_empty()) else {
            return invalid("API_PROXY_REDIS_URL must be set (redis://host:6379/0)");
        };
        if let Err(e) = apiproxy_shared::redis_target::check_url(&redis_url) {
            return invalid(&e.to_string());
        }
        let admin_token = env.get("ADMIN_TOKEN").cloned().unwrap_or_default();
        if !init_only {
            if admin_token.is_empty() {
                return invalid("ADMIN_TOKEN must be set (environment only, at least 16 bytes)");
            }
            if admin_token == PLACEHOLDER_TOKEN {
                return invalid(
                    "ADMIN_TOKEN is still the .env.example placeholder: set a real secret",
                );
            }
            if admin_token.len() < MIN_TOKEN_LEN {
                return invalid("ADMIN_TOKEN is shorter than 16 bytes");
            }
        }
        let secrets_key = match env.get("API_PROXY_SECRETS_KEY").filter(|k| !k.is_empty()) {
            Some(text) if !init_only => match SecretsKey::from_base64(text) {
                Ok(key) => Some(Arc::new(key)),
                Err(e) => return invalid(&e.to_string()),
            },
            _ => None,
        };
        if args.node_timeout.is_zero() {
            return invalid("API_PROXY_NODE_TIMEOUT: must be greater than zero");
        }
        if args.resync_interval.is_zero() {
            return invalid("API_PROXY_RESYNC_INTERVAL: must be greater than zero");
        }
        Ok(Config {
            admin_listen: args.admin_listen,
            redis_url,
            redis_sentinel_password: env
                .get("API_PROXY_REDIS_SENTINEL_PASSWORD")
                .filter(|p| !p.is_empty())
                .cloned(),
            redis_prefix: args.redis_prefix,
            node_timeout: args.node_timeout,
            resync_interval: args.resync_interval,
            announce_targets: args.announce_targets,
            public_stats: args.public_stats,
            cookie_secure: args.cookie_secure,
            log_format: args.log_format,
            admin_token,
            node_token: env
                .get("API_PROXY_NODE_TOKEN")
                .filter(|t| !t.is_empty())
                .cloned(),
            secrets_key,
            init_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiproxy_startup::EXIT_CONFIG;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(
            std::iter::once("apiproxy-controlplane").chain(args.iter().copied()),
            &env,
        )
    }

    const URL: [&str; 2] = ["--redis-url", "redis://127.0.0.1:6379/"];

    #[test]
    fn admin_token_rules() {
        for (token, needle) in [
            ("", "ADMIN_TOKEN must be set"),
            ("short", "shorter than 16"),
            (PLACEHOLDER_TOKEN, "placeholder"),
        ] {
            let err = parse(&URL, &[("ADMIN_TOKEN", token)]).unwrap_err();
            assert_eq!(err.exit_code(), EXIT_CONFIG);
            assert!(err.to_string().contains(needle), "{err}");
        }
        let ok = parse(&URL, &[("ADMIN_TOKEN", "a-very-long-admin-token")]).unwrap();
        assert_eq!(ok.admin_listen, "0.0.0.0:8001".parse().unwrap());
        assert!(ok.public_stats && !ok.cookie_secure);
        assert_eq!(ok.node_timeout, Duration::from_secs(10));
        assert_eq!(ok.resync_interval, Duration::from_secs(10));
        assert!(ok.announce_targets);
        let quiet = parse(
            &[URL[0], URL[1], "--announce-targets", "false"],
            &[("ADMIN_TOKEN", "a-very-long-admin-token")],
        )
        .unwrap();
        assert!(!quiet.announce_targets);
    }

    #[test]
    fn init_needs_only_the_redis_url() {
        let c = parse(&["init", "--redis-url", "redis://h/"], &[]).unwrap();
        assert!(c.init_only);
        assert!(parse(&["init"], &[])
            .unwrap_err()
            .to_string()
            .contains("API_PROXY_REDIS_URL"));
    }

    #[test]
    fn secrets_key_is_optional_but_must_be_valid() {
        let token = ("ADMIN_TOKEN", "a-very-long-admin-token");
        assert!(parse(&URL, &[token]).unwrap().secrets_key.is_none());
        assert!(parse(&URL, &[token, ("API_PROXY_SECRETS_KEY", "")])
            .unwrap()
            .secrets_key
            .is_none());
        let key = SecretsKey::generate();
        let ok = parse(&URL, &[token, ("API_PROXY_SECRETS_KEY", &key)]).unwrap();
        assert!(ok.secrets_key.is_some());
        let err = parse(&URL, &[token, ("API_PROXY_SECRETS_KEY", "c2hvcnQ=")]).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_CONFIG);
        assert!(err.to_string().contains("API_PROXY_SECRETS_KEY"), "{err}");
    }

    #[test]
    fn gen_secrets_key_needs_nothing_else() {
        let err = parse(&["gen-secrets-key"], &[]).unwrap_err();
        assert_eq!(err.exit_code(), 0);
        let printed = err.to_string();
        assert!(printed.ends_with('\n'));
        assert!(SecretsKey::from_base64(printed.trim()).is_ok(), "{printed}");
        assert_ne!(
            printed,
            parse(&["gen-secrets-key"], &[]).unwrap_err().to_string()
        );
    }
}
