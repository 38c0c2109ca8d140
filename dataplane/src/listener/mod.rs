//! The proxy listener: accepts connections, serves HTTP/1.1 (our own,
//! `http1`) and h2c with prior knowledge (hyper's) on the same
//! port, and drains on shutdown.

mod http1;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::body::ClientBody;
use crate::deadline::Timer;
use crate::http1::MAX_REQUEST_HEAD;
use crate::proxy::Proxy;
use crate::write_stall::WriteStallTimeout;

/// Slowest a client may be in sending its first byte, and then each
/// request head, also between keep-alive requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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
/// Wait between looks at a connection that has sent part of the HTTP/2
/// preface and not yet the rest.
const PREFACE_RETRY: Duration = Duration::from_millis(5);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// hyper's HTTP/2 server, configured once and shared by every connection.
struct Builders {
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Builders {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            // Rapid reset (CVE-2023-44487): a client that opens streams and
            // resets them before they are served gets GOAWAY after this many.
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            // And one whose streams keep failing on our side gets GOAWAY too.
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .max_header_list_size(MAX_REQUEST_HEAD as u32)
            // A peer that went away without a FIN is found and closed.
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Builders { h2 }
    }
}

/// Serves `listener` until `shutdown` fires, then stops accepting and lets
/// in-flight requests finish; returns once they have, or at `drain_timeout`
/// after closing the connections still open (their requests are then
/// counted as cancelled before the last stats batch goes out).
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let builders = Arc::new(Builders::new());
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
        let conn = connection(
            stream,
            peer,
            proxy.clone(),
            builders.clone(),
            shutdown.clone(),
        );
        connections.spawn(conn);
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    info!(timeout = ?drain_timeout, "listener closed; draining in-flight requests");
    let drained = async {
        while connections.join_next().await.is_some() {}
        proxy.tunnels.drain().await;
    };
    if tokio::time::timeout(drain_timeout, drained).await.is_ok() {
        info!("drained");
        return;
    }
    warn!(
        connections = connections.len(),
        "drain timeout passed; closing the remaining connections"
    );
    connections.abort_all();
    // Dropping a connection drops its requests, which records them.
    while connections.join_next().await.is_some() {}
}

/// One client connection, from its first byte to its close.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let h2 = tokio::select! {
        _ = shutdown.cancelled() => return,
        sniffed = sniff_h2_preface(&stream, deadline) => match sniffed {
            Ok(h2) => h2,
            Err(error) => return debug!(%peer, %error, "connection closed before a request"),
        },
    };
    if !h2 {
        let served = http1::serve(stream, peer, proxy, &shutdown, HEADER_READ_TIMEOUT).await;
        if let Err(error) = served {
            debug!(%peer, %error, "connection ended with an error");
        }
        return;
    }
    // A client that stops reading gets the same grace as a silent body.
    let io = TokioIo::new(WriteStallTimeout::new(stream, proxy.idle_timeout));
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        proxy
            .clone()
            .handle(req.map(ClientBody::H2), peer, Timer::new())
    });
    let conn = builders.h2.serve_connection(io, service);
    // Boxed: HTTP/2 state is large, and HTTP/1 connections (nearly all of
    // them) should not carry its size in their task.
    let served = Box::pin(until_closed(
        conn,
        &shutdown,
        http2::Connection::graceful_shutdown,
    ))
    .await;
    if let Err(error) = served {
        debug!(%peer, %error, "connection ended with an error");
    }
}

/// Drives an HTTP/2 connection to its end. On shutdown it sends GOAWAY
/// and finishes the streams it has.
async fn until_closed<C>(
    conn: C,
    shutdown: &CancellationToken,
    graceful_shutdown: fn(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = pin!(conn);
    tokio::select! {
        served = conn.as_mut() => return served,
        _ = shutdown.cancelled() => {}
    }
    graceful_shutdown(conn.as_mut());
    conn.await
}

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client speaks h2c: peeks (reads nothing) until its first
/// bytes differ from the HTTP/2 preface or complete it. A client that
/// sends nothing by `deadline` is given up; hyper's own header timeout
/// covers everything after this.
async fn sniff_h2_preface(stream: &TcpStream, deadline: Instant) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let too_slow = || io::Error::new(io::ErrorKind::TimedOut, "no request head in time");
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| too_slow())??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface: peek returns the same bytes until more
        // arrive, so wait a little rather than spin.
        if Instant::now() >= deadline {
            return Err(too_slow());
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + PREFACE_RETRY)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<F, A, B, C, D, E, R>(_f: F) -> usize
    where
        F: Fn(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Each client connection's task is this future, for as long as the
    /// connection is open: at 10,000 open event streams each byte is
    /// 10 KB. Over HTTP/1 it is mostly `http1::serve`'s future, whose
    /// request future lives in a block of its own, so its room is shared
    /// with the body's streaming rather than added to it; a head, request
    /// or response taken apart in `serve` itself, or a value kept across
    /// two of its awaits, grows it again (3,152 bytes before they moved
    /// into functions of their own).
    #[test]
    fn the_connection_task_stays_small() {
        let size = size_of_output(
            |s: TcpStream, p: SocketAddr, x: Arc<Proxy>, b: Arc<Builders>, t: CancellationToken| {
                connection(s, p, x, b, t)
            },
        );
        assert!(size <= 1200, "{size} bytes");
    }
}
