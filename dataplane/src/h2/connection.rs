//! One shared HTTP/2 connection to an upstream, and the leases of its
//! streams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::SETTLE_WAIT;

/// Connection settings of ours, as hyper's client had them: a 2 MiB
/// stream window and 5 MiB for the connection keep a fast download moving
/// without waiting for window updates; nothing is allocated for them
/// until data is buffered.
fn builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_header_list_size(16 * 1024)
        .enable_push(false);
    builder
}

/// A new connection: the shared handle, the future that drives it (to
/// be spawned; it marks the connection closed when it ends), and one that
/// ends once the server's SETTINGS are known.
pub(crate) struct Handshaken<D, S> {
    pub(crate) conn: Arc<Connection>,
    pub(crate) driver: D,
    pub(crate) settled: S,
}

/// Handshakes HTTP/2 on `io`.
///
/// The server's first frame is its SETTINGS, with its stream limit;
/// until it has arrived h2 puts no limit on new streams, and a server
/// that allows fewer refuses the streams beyond. So a PING goes out with the
/// preface, and its answer, which comes after the SETTINGS, settles the
/// limit: the request that opened the connection need not wait for it,
/// the requests that would share it do.
pub(crate) async fn handshake<T>(
    io: T,
    peer: Option<SocketAddr>,
) -> Result<
    Handshaken<
        impl Future<Output = Result<(), h2::Error>>,
        impl Future<Output = ()> + Send + 'static,
    >,
    h2::Error,
>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut conn) = builder().handshake::<_, Bytes>(io).await?;
    let mut ping = conn.ping_pong().expect("a new connection's ping is ours");
    let settled = async move {
        // Given up after SETTLE_WAIT: then the limit is what h2 knows.
        let _ = tokio::time::timeout(SETTLE_WAIT, ping.ping(h2::Ping::opaque())).await;
    };
    let shared = Arc::new(Connection {
        sender,
        active: AtomicUsize::new(0),
        closed: Arc::new(AtomicBool::new(false)),
        idle_since: Mutex::new(Instant::now()),
        peer,
    });
    // The driver holds the flag only: h2 closes the connection once the
    // last handle to it is dropped, and a handle here would keep it open.
    let closed = shared.closed.clone();
    let driver = async move {
        let ended = conn.await;
        closed.store(true, Ordering::Release);
        ended
    };
    Ok(Handshaken {
        conn: shared,
        driver,
        settled,
    })
}

/// One HTTP/2 connection to an upstream, shared by the streams on it.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(super) sender: SendRequest<Bytes>,
    /// Streams leased and not yet given back.
    active: AtomicUsize,
    /// Its driver ended, or it refused a new stream (GOAWAY): it takes no
    /// more.
    closed: Arc<AtomicBool>,
    /// When its last stream was given back.
    idle_since: Mutex<Instant>,
    /// The address dialled, when the connector told it.
    pub(super) peer: Option<SocketAddr>,
}

impl Connection {
    /// A stream on it, if it is open and below the server's limit.
    pub(crate) fn lease(self: &Arc<Self>) -> Option<Lease> {
        if self.is_closed() {
            return None;
        }
        let limit = self.sender.current_max_send_streams();
        // Counted before it is checked: two requests racing for the last
        // place cannot both take it.
        if self.active.fetch_add(1, Ordering::AcqRel) < limit {
            return Some(Lease { conn: self.clone() });
        }
        self.give_back();
        None
    }

    /// The server's current stream limit.
    pub(crate) fn stream_limit(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// No stream leased, since when.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn give_back(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

/// A stream's place on its connection, given back when dropped: when the
/// response body is read or dropped, or the send fails.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(super) conn: Arc<Connection>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection no one holds any more is closed: the pool lets an
    /// idle extra go by dropping its handle, and nothing else (its driver
    /// above all) may keep it open.
    #[tokio::test]
    async fn a_connection_no_one_holds_is_closed() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server).await.unwrap();
            // Ends when the client has gone away.
            while let Some(Ok(_)) = conn.accept().await {}
        });
        let made = handshake(client, None).await.unwrap();
        let driver = tokio::spawn(made.driver);
        made.settled.await;
        let closed = made.conn.closed.clone();
        let lease = made.conn.lease().expect("a stream on a new connection");
        drop(lease);
        drop(made.conn);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the server saw the connection close")
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        assert!(
            closed.load(Ordering::Acquire),
            "the driver marked it closed"
        );
    }
}
