//! Connecting to an upstream: TCP through the target policy's resolver,
//! TLS (rustls, offering HTTP/2 by ALPN; see [`crate::tls_stream`]) for
//! `https` targets, the connect timeout over both, and the one allowed
//! retry.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Scheme;
use http::Uri;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector, HttpInfo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tower_service::Service;
use tracing::debug;

use crate::causes::{find_cause, find_cause_where};
use crate::error_kind::UpstreamErrorKind;
use crate::policy::{PolicyDenied, PolicyResolver, TargetPolicy};
use crate::tls_stream::{self, TlsStream};

/// Connecting to the upstream failed; `kind` says how.
#[derive(Clone, Debug, thiserror::Error)]
#[error("connect to upstream failed ({}): {message}", kind.as_str())]
pub(crate) struct ConnectError {
    pub(crate) kind: UpstreamErrorKind,
    message: String,
}

impl ConnectError {
    pub(crate) fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        ConnectError {
            kind,
            message: message.into(),
        }
    }

    fn classify(err: &(dyn StdError + 'static)) -> Self {
        let kind = if find_cause::<PolicyDenied>(err).is_some() {
            UpstreamErrorKind::Policy
        } else if find_cause::<rustls::Error>(err).is_some() {
            UpstreamErrorKind::Tls
        } else if io_kind(err) == Some(io::ErrorKind::TimedOut) {
            UpstreamErrorKind::Timeout
        } else {
            UpstreamErrorKind::Connect
        };
        ConnectError::new(kind, crate::causes::chain(err))
    }
}

fn io_kind(err: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    find_cause::<io::Error>(err).map(io::Error::kind)
}

/// Refused or reset while connecting (TCP, or the TLS handshake): nothing
/// of the request has left, so one retry is safe.
fn is_retryable(err: &(dyn StdError + 'static)) -> bool {
    find_cause_where(err, |io: &io::Error| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
        )
    })
    .is_some()
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A connection to an upstream, and the address it was dialled at.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) peer: Option<SocketAddr>,
}

/// TCP (`Left`), or TLS over it (`Right`).
pub(crate) type Stream = Either<TcpStream, Box<TlsStream>>;

impl Conn {
    /// The server chose HTTP/2 by ALPN.
    pub(crate) fn negotiated_h2(&self) -> bool {
        matches!(&self.stream, Either::Right(tls) if tls.alpn_protocol() == Some(b"h2"))
    }
}

/// The host of `uri` without the brackets of an IPv6 literal.
fn bare_host(uri: &Uri) -> &str {
    uri.host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// TCP (+ TLS) connector with the target policy and the connect timeout.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector<PolicyResolver>,
    /// With the ALPN protocols this connector offers.
    tls: Arc<rustls::ClientConfig>,
    policy: TargetPolicy,
    timeout: Duration,
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.tcp
            .poll_ready(cx)
            .map_err(|e| ConnectError::classify(&e))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // IP literals skip the resolver, so the policy is checked here.
        if let Ok(ip) = bare_host(&uri).parse::<IpAddr>() {
            if !self.policy.allows(ip) {
                let err = PolicyDenied {
                    host: ip.to_string(),
                    addr: ip,
                };
                return Box::pin(std::future::ready(Err(ConnectError::new(
                    UpstreamErrorKind::Policy,
                    err.to_string(),
                ))));
            }
        }
        let this = self.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let attempt = async {
                match this.dial(&uri).await {
                    Err(e) if is_retryable(&*e) => {
                        debug!(%uri, error = %e, "connect refused or reset; retrying once");
                        this.dial(&uri).await
                    }
                    result => result,
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(ConnectError::classify(&*e)),
                Err(_) => Err(ConnectError::new(
                    UpstreamErrorKind::Timeout,
                    format!("no connection within {timeout:?} (connect timeout)"),
                )),
            }
        })
    }
}

impl Connector {
    /// One try: TCP, then TLS for an `https` target.
    async fn dial(&self, uri: &Uri) -> Result<Conn, BoxError> {
        let tcp = self.tcp.clone().call(uri.clone()).await?;
        let peer = {
            let mut extras = http::Extensions::new();
            tcp.connected().get_extras(&mut extras);
            extras.get::<HttpInfo>().map(HttpInfo::remote_addr)
        };
        let tcp = tcp.into_inner();
        if uri.scheme() != Some(&Scheme::HTTPS) {
            return Ok(Conn {
                stream: Either::Left(tcp),
                peer,
            });
        }
        let name = ServerName::try_from(bare_host(uri))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .to_owned();
        let tls = tls_stream::connect(tcp, self.tls.clone(), name).await?;
        Ok(Conn {
            stream: Either::Right(Box::new(tls)),
            peer,
        })
    }
}

/// Settings of the upstream clients.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSettings<'a> {
    pub(crate) policy: TargetPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) ca_file: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("API_PROXY_CA_FILE: cannot read {path}: {source}")]
    CaFile {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("API_PROXY_CA_FILE: {path} holds no certificate")]
    CaFileEmpty { path: String },
    #[error("API_PROXY_CA_FILE: {path}: {source}")]
    CaCert { path: String, source: rustls::Error },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

impl Connector {
    /// TCP through the policy resolver, then TLS for `https` targets,
    /// offering HTTP/2 by ALPN when `h2`.
    pub(crate) fn new(
        settings: &UpstreamSettings<'_>,
        tls: &rustls::ClientConfig,
        h2: bool,
    ) -> Connector {
        let mut http = HttpConnector::new_with_resolver(PolicyResolver::new(settings.policy));
        http.enforce_http(false);
        http.set_nodelay(true);
        // Our own timeout covers TCP and TLS together; this one is a backstop.
        http.set_connect_timeout(Some(settings.connect_timeout));
        // Without h2 no ALPN at all, as hyper-rustls did: a server set up
        // for h2 only that enforces ALPN would refuse an offer of
        // http/1.1 alone.
        let mut tls = tls.clone();
        tls.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            Vec::new()
        };
        Connector {
            tcp: http,
            tls: Arc::new(tls),
            policy: settings.policy,
            timeout: settings.connect_timeout,
        }
    }

    /// It offers HTTP/2 by ALPN to TLS upstreams.
    pub(crate) fn offers_h2(&self) -> bool {
        !self.tls.alpn_protocols.is_empty()
    }
}

/// rustls with webpki roots, the system roots and `API_PROXY_CA_FILE`.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|source| TlsSetupError::CaFile {
                path: shown.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFileEmpty { path: shown });
        }
        for cert in certs {
            roots.add(cert).map_err(|source| TlsSetupError::CaCert {
                path: shown.clone(),
                source,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::store(crate::tls_sessions::store());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> Box<dyn StdError + Send + Sync> {
        Box::new(io::Error::new(kind, "test"))
    }

    #[test]
    fn only_refused_or_reset_connects_are_retried() {
        assert!(is_retryable(&*io(io::ErrorKind::ConnectionRefused)));
        assert!(is_retryable(&*io(io::ErrorKind::ConnectionReset)));
        assert!(!is_retryable(&*io(io::ErrorKind::TimedOut)));
        assert!(!is_retryable(&*io(io::ErrorKind::InvalidData)));
        let tls: Box<dyn StdError + Send + Sync> = Box::new(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("bad cert".into()),
        ));
        assert!(!is_retryable(&*tls));
        // A reset inside the TLS handshake, as hyper-rustls hands it back.
        let wrapped: Box<dyn StdError + Send + Sync> = Box::new(io::Error::other(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )));
        assert!(is_retryable(&*wrapped));
    }

    #[test]
    fn connect_errors_are_classified_by_cause() {
        let policy = io::Error::other(PolicyDenied {
            host: "h".into(),
            addr: "127.0.0.1".parse().unwrap(),
        });
        assert_eq!(
            ConnectError::classify(&policy).kind,
            UpstreamErrorKind::Policy
        );
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("x".into()),
        );
        assert_eq!(ConnectError::classify(&tls).kind, UpstreamErrorKind::Tls);
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "connect timeout");
        assert_eq!(
            ConnectError::classify(&timeout).kind,
            UpstreamErrorKind::Timeout
        );
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            ConnectError::classify(&refused).kind,
            UpstreamErrorKind::Connect
        );
    }
}
