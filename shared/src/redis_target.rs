//! Where both binaries find Redis: `API_PROXY_REDIS_URL` names one server
//! (`redis://`, `rediss://`) or a Sentinel set that names the master
//! (`redis+sentinel://`, `rediss+sentinel://`):
//!
//! `redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/<master-name>[/<db>]`
//!
//! The userinfo authenticates to the master; the sentinels are asked
//! without a password unless `API_PROXY_REDIS_SENTINEL_PASSWORD` gives one.
//! `rediss+sentinel://` speaks TLS to the master (not to the sentinels).
//!
//! The one piece of I/O in this crate: [`RedisTarget::client`] asks the
//! sentinels for the current master each time it is called, so a caller
//! that calls it on every (re)connect follows a failover.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};

/// A sentinel's port when the URL gives none.
const SENTINEL_PORT: u16 = 26379;

/// Longest a master lookup may take (every sentinel asked, the master's
/// `ROLE` checked) before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A configuration that cannot work. The URL itself is never printed: it
/// may hold a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedisSetupError {
    #[error("API_PROXY_REDIS_URL: {0}")]
    Url(String),
    #[error("API_PROXY_CA_FILE: cannot read {0}")]
    CaFile(String),
}

fn bad_url<T>(why: impl Into<String>) -> Result<T, RedisSetupError> {
    Err(RedisSetupError::Url(why.into()))
}

/// A parsed Sentinel URL.
#[derive(Clone, PartialEq, Eq)]
struct SentinelUrl {
    /// TLS to the master (`rediss+sentinel://`).
    tls: bool,
    sentinels: Vec<(String, u16)>,
    master: String,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

/// `API_PROXY_REDIS_URL`, checked (nothing is connected).
#[derive(Clone, PartialEq, Eq)]
enum RedisUrl {
    /// `redis://` or `rediss://`: the redis crate reads it.
    Server {
        url: String,
        tls: bool,
    },
    Sentinel(SentinelUrl),
}

impl RedisUrl {
    fn parse(url: &str) -> Result<RedisUrl, RedisSetupError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return bad_url(SCHEMES);
        };
        match scheme {
            "redis" | "rediss" => {
                url.into_connection_info().or_else(|e| {
                    bad_url(format!("not a valid {scheme}:// URL ({:?})", e.kind()))
                })?;
                Ok(RedisUrl::Server {
                    url: url.to_owned(),
                    tls: scheme == "rediss",
                })
            }
            "redis+sentinel" | "rediss+sentinel" => Ok(RedisUrl::Sentinel(parse_sentinel(
                rest,
                scheme == "rediss+sentinel",
            )?)),
            _ => bad_url(SCHEMES),
        }
    }
}

/// Checks `API_PROXY_REDIS_URL` without building anything (for a
/// configuration check before start-up).
pub fn check_url(url: &str) -> Result<(), RedisSetupError> {
    RedisUrl::parse(url).map(drop)
}

const SCHEMES: &str =
    "the scheme must be redis://, rediss://, redis+sentinel:// or rediss+sentinel://";

/// What follows `redis+sentinel://`.
fn parse_sentinel(rest: &str, tls: bool) -> Result<SentinelUrl, RedisSetupError> {
    if rest.contains(['?', '#']) {
        return bad_url("a Sentinel URL takes no query or fragment");
    }
    let Some((authority, path)) = rest.split_once('/') else {
        return bad_url("a Sentinel URL names the master after the hosts: redis+sentinel://host:26379/<master-name>");
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (decoded(user)?, decoded(password)?),
            None => (decoded(info)?, None),
        },
    };
    let sentinels = hosts
        .split(',')
        .map(sentinel_addr)
        .collect::<Result<Vec<_>, _>>()?;
    let mut segments = path.trim_end_matches('/').split('/');
    let master = segments.next().unwrap_or_default();
    if master.is_empty() {
        return bad_url("a Sentinel URL names the master after the hosts: redis+sentinel://host:26379/<master-name>");
    }
    let db = match segments.next() {
        None => 0,
        Some(db) => match db.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return bad_url(
                    "the database after the master name must be a number (…/<master-name>/0)",
                )
            }
        },
    };
    if segments.next().is_some() {
        return bad_url("a Sentinel URL's path is /<master-name>[/<db>]");
    }
    Ok(SentinelUrl {
        tls,
        sentinels,
        master: master.to_owned(),
        db,
        username,
        password,
    })
}

/// A percent-encoded user name or password; empty is none.
fn decoded(text: &str) -> Result<Option<String>, RedisSetupError> {
    match percent_decode_str(text).decode_utf8() {
        Ok(s) if s.is_empty() => Ok(None),
        Ok(s) => Ok(Some(s.into_owned())),
        Err(_) => bad_url("the user name or password is not UTF-8 once percent-decoded"),
    }
}

/// `host[:port]` or `[v6]:port` of one sentinel.
fn sentinel_addr(text: &str) -> Result<(String, u16), RedisSetupError> {
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return bad_url("a sentinel is host:port"),
            },
            None => return bad_url("a sentinel's IPv6 address lacks its `]`"),
        },
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() {
        return bad_url("every sentinel needs a host (host1:26379,host2:26379)");
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad_url("a sentinel's port must be a number from 1 to 65535"),
        },
    };
    Ok((host.to_owned(), port))
}

/// The Redis both binaries talk to: one server, or whichever server a
/// Sentinel set names master now. Cheap to clone (the sentinel
/// connections are shared).
#[derive(Clone)]
pub struct RedisTarget(Target);

#[derive(Clone)]
enum Target {
    Server(Box<redis::Client>),
    Sentinel {
        sentinels: Arc<tokio::sync::Mutex<SentinelClient>>,
        db: i64,
    },
}

impl RedisTarget {
    /// Checks `url` and builds the client (nothing is connected yet).
    /// `ca_file`: the PEM roots trusted for Redis over TLS (else webpki's).
    pub fn new(
        url: &str,
        sentinel_password: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<RedisTarget, RedisSetupError> {
        let parsed = RedisUrl::parse(url)?;
        let tls = match &parsed {
            RedisUrl::Server { tls, .. } => *tls,
            RedisUrl::Sentinel(s) => s.tls,
        };
        // A private CA for Redis over TLS: API_PROXY_CA_FILE becomes the
        // trust roots of the Redis connection.
        let certs = match ca_file.filter(|_| tls) {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(
                    std::fs::read(path)
                        .map_err(|e| RedisSetupError::CaFile(format!("{}: {e}", path.display())))?,
                ),
            }),
            None => None,
        };
        let unusable =
            |e: redis::RedisError| RedisSetupError::Url(format!("unusable ({:?})", e.kind()));
        let target = match parsed {
            RedisUrl::Server { url, .. } => Target::Server(Box::new(
                match certs {
                    Some(certs) => redis::Client::build_with_tls(url, certs),
                    None => redis::Client::open(url),
                }
                .map_err(unusable)?,
            )),
            RedisUrl::Sentinel(s) => {
                let addrs = s
                    .sentinels
                    .into_iter()
                    .map(|(h, p)| ConnectionAddr::Tcp(h, p));
                let mut builder =
                    SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master)
                        .map_err(unusable)?
                        .set_client_to_redis_db(s.db);
                if let Some(user) = &s.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &s.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if s.tls {
                    builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
                }
                if let Some(certs) = certs {
                    builder = builder.set_client_to_redis_certificates(certs);
                }
                if let Some(password) = sentinel_password.filter(|p| !p.is_empty()) {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                Target::Sentinel {
                    sentinels: Arc::new(tokio::sync::Mutex::new(
                        builder.build().map_err(unusable)?,
                    )),
                    db: s.db,
                }
            }
        };
        Ok(RedisTarget(target))
    }

    /// The client of a one-server target; `None` behind Sentinel.
    pub fn server(&self) -> Option<&redis::Client> {
        match &self.0 {
            Target::Server(client) => Some(client),
            Target::Sentinel { .. } => None,
        }
    }

    /// The database the connections select.
    pub fn db(&self) -> i64 {
        match &self.0 {
            Target::Server(client) => client.get_connection_info().redis_settings().db(),
            Target::Sentinel { db, .. } => *db,
        }
    }

    /// A client for the master as of now. One server: the same client
    /// each time. A Sentinel set: the sentinels are asked (one lookup at
    /// a time; callers queue), and the server they name must answer
    /// `ROLE` as master, so a client made after a failover reaches the
    /// new master.
    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.0 {
            Target::Server(client) => Ok(redis::Client::clone(client)),
            Target::Sentinel { sentinels, .. } => {
                let lookup = async { sentinels.lock().await.async_get_client().await };
                match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(result) => result,
                    Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no sentinel named a reachable master in time",
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelUrl {
        match RedisUrl::parse(url) {
            Ok(RedisUrl::Sentinel(s)) => s,
            Ok(RedisUrl::Server { .. }) => panic!("{url}: parsed as one server"),
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn refused(url: &str) -> String {
        match RedisUrl::parse(url) {
            Ok(_) => panic!("{url}: accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_db() {
        let s = sentinel("redis+sentinel://u:p%40ss@h1:26380,h2,[::1]:26381/apiproxy/2");
        assert_eq!(
            s.sentinels,
            [
                ("h1".to_owned(), 26380),
                ("h2".to_owned(), SENTINEL_PORT),
                ("::1".to_owned(), 26381)
            ]
        );
        assert_eq!(s.master, "apiproxy");
        assert_eq!(s.db, 2);
        assert_eq!(s.username.as_deref(), Some("u"));
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert!(!s.tls);
    }

    #[test]
    fn password_only_db_default_and_tls() {
        let s = sentinel("rediss+sentinel://:pw@h:26379/apiproxy/");
        assert_eq!((s.username, s.password.as_deref()), (None, Some("pw")));
        assert_eq!(s.db, 0);
        assert!(s.tls);
        let s = sentinel("redis+sentinel://h/apiproxy");
        assert_eq!((s.username, s.password), (None, None));
    }

    #[test]
    fn server_urls_still_parse() {
        assert!(matches!(
            RedisUrl::parse("redis://127.0.0.1:6379/0"),
            Ok(RedisUrl::Server { tls: false, .. })
        ));
        assert!(matches!(
            RedisUrl::parse("rediss://:pw@h:6380/0"),
            Ok(RedisUrl::Server { tls: true, .. })
        ));
    }

    #[test]
    fn bad_urls_say_why_without_echoing_the_password() {
        for (url, why) in [
            ("http://user:secret@h", "scheme"),
            ("redis+sentinel://:secret@h:26379", "names the master"),
            ("redis+sentinel://:secret@h:26379/", "names the master"),
            ("redis+sentinel://:secret@h:x/apiproxy", "port"),
            ("redis+sentinel://:secret@h:0/apiproxy", "port"),
            ("redis+sentinel://:secret@h,,g/apiproxy", "needs a host"),
            ("redis+sentinel://:secret@h/apiproxy/x", "database"),
            ("redis+sentinel://:secret@h/apiproxy/0/more", "path"),
            ("redis+sentinel://:secret@h/apiproxy?db=1", "query"),
            ("redis+sentinel://:secret@[::1/apiproxy", "`]`"),
        ] {
            let message = refused(url);
            assert!(message.contains(why), "{url}: {message}");
            assert!(message.starts_with("API_PROXY_REDIS_URL: "), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[tokio::test]
    async fn targets_build_without_connecting() {
        let target =
            RedisTarget::new("redis+sentinel://127.0.0.1:1/apiproxy/3", Some("pw"), None).unwrap();
        assert!(target.server().is_none());
        assert_eq!(target.db(), 3);
        // Nothing listens there: the lookup fails, it does not hang.
        assert!(target.client().await.is_err());
        let target = RedisTarget::new("redis://127.0.0.1:1/4", None, None).unwrap();
        assert!(target.server().is_some());
        assert_eq!(target.db(), 4);
        assert!(target.client().await.is_ok());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let missing = Path::new("/nonexistent/ca.pem");
        let err = RedisTarget::new("rediss+sentinel://h/apiproxy", None, Some(missing))
            .err()
            .unwrap();
        assert!(matches!(err, RedisSetupError::CaFile(ref m) if m.contains("/nonexistent/ca.pem")));
        // Without TLS the file is not Redis's business.
        assert!(RedisTarget::new("redis://h/0", None, Some(missing)).is_ok());
    }
}
