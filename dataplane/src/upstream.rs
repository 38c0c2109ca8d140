//! The upstream clients the proxy sends through: pooled keep-alive
//! connections (HTTP/1.1, and HTTP/2 where TLS ALPN offers it; see
//! [`crate::pool`]) over the [`crate::connect`] connector.

use std::time::Duration;

use crate::budget::BudgetLimits;
use crate::connect::{tls_config, Connector, TlsSetupError, UpstreamSettings};
use crate::pool::{Pool, SendBody};

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The clients the proxy sends through: `main` negotiates HTTP/2 or
/// HTTP/1.1 by ALPN; `upgrade` speaks HTTP/1.1 only, since an `Upgrade`
/// (WebSocket) handshake cannot travel over HTTP/2.
#[derive(Clone)]
pub(crate) struct Upstream<B> {
    pub(crate) main: Pool<B>,
    pub(crate) upgrade: Pool<B>,
}

impl<B: SendBody> Upstream<B> {
    pub(crate) fn new(settings: &UpstreamSettings<'_>) -> Result<Upstream<B>, TlsSetupError> {
        let tls = tls_config(settings.ca_file)?;
        Ok(Upstream {
            main: Pool::new(
                Connector::new(settings, &tls, true),
                POOL_IDLE_TIMEOUT,
                BudgetLimits::DEFAULT,
            ),
            upgrade: Pool::new(
                Connector::new(settings, &tls, false),
                POOL_IDLE_TIMEOUT,
                BudgetLimits::DEFAULT,
            ),
        })
    }
}
