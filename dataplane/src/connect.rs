//! Connecting to an upstream: TCP through the target policy's resolver,
//! TLS (rustls, offering HTTP/2 by ALPN) for `https` targets, the connect
//! timeout over both, and the one allowed retry.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::debug;

use crate::causes::{find_cause, find_cause_where};
use crate::error_kind::UpstreamErrorKind;
use crate::policy::{PolicyDenied, PolicyResolver, TargetPolicy};

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

type Inner = HttpsConnector<HttpConnector<PolicyResolver>>;
pub(crate) type Conn = MaybeHttpsStream<TokioIo<TcpStream>>;

/// TCP (+ TLS) connector with the target policy and the connect timeout.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Inner,
    policy: TargetPolicy,
    timeout: Duration,
    h2: bool,
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ConnectError::classify(&*e))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // IP literals skip the resolver, so the policy is checked here.
        if let Some(ip) = uri.host().and_then(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        }) {
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
        let mut inner = self.inner.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let attempt = async {
                match inner.call(uri.clone()).await {
                    Err(e) if is_retryable(&*e) => {
                        debug!(%uri, error = %e, "connect refused or reset; retrying once");
                        inner.call(uri).await
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
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http();
        let inner = if h2 {
            builder.enable_http1().enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        Connector {
            inner,
            policy: settings.policy,
            timeout: settings.connect_timeout,
            h2,
        }
    }

    /// It offers HTTP/2 by ALPN to TLS upstreams.
    pub(crate) fn offers_h2(&self) -> bool {
        self.h2
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
