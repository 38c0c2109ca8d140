//! The proxy listener: accepts connections, serves HTTP/1.1 and h2c (prior
//! knowledge) on the same port, and drains on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client_io::ClientIo;
use crate::proxy::Proxy;

/// Slowest a client may be in sending its first byte, and then each
/// request head (hyper keeps the latter, also between keep-alive requests).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP/1 request head (request line and headers); larger gets 431.
/// API requests carry a few short headers; nginx allows 32 KiB by default.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 streams one client connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;
/// Streams a client may reset before they are served, at any one time.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams we may reset for protocol errors before the connection goes.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// An HTTP/2 connection is pinged after this long without frames, and
/// closed when the ping is not answered within the timeout.
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        // One write per response is cheaper than writev for small bodies.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): a client that opens streams and
        // resets them before they are served gets GOAWAY after this many.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // And one whose streams keep failing on our side gets GOAWAY too.
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // A peer that went away without a FIN is found and closed.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Serves `listener` until `shutdown` fires, then stops accepting and lets
/// in-flight requests finish; returns once they have, or at `drain_timeout`
/// after closing the connections still open (their requests are then
/// counted as cancelled before the last stats batch goes out).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let builder = connection_builder();
    // A client that stops reading gets the same grace as a silent body.
    let idle = proxy.idle_timeout;
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "set_nodelay failed");
        }
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(ClientIo::new(stream, HEADER_READ_TIMEOUT, idle)),
                service,
            )
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(error) = conn.await {
                debug!(%peer, %error, "connection ended with an error");
            }
        });
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    info!(timeout = ?drain_timeout, "listener closed; draining in-flight requests");
    let drained = async {
        graceful.shutdown().await;
        proxy.tunnels.drain().await;
    };
    match tokio::time::timeout(drain_timeout, drained).await {
        Ok(()) => info!("drained"),
        Err(_) => {
            warn!(
                connections = connections.len(),
                "drain timeout passed; closing the remaining connections"
            );
            connections.abort_all();
        }
    }
    // Dropping a connection drops its requests, which records them.
    while connections.join_next().await.is_some() {}
}
