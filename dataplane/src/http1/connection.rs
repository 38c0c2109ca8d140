//! One upstream HTTP/1.1 connection: its stream, what was read from it but
//! not used yet, and the pool's idle list it goes back to.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::{poll_fill, poll_fill_lean, FramingError};
use super::{Dialled, Io, Transport};

/// The first read of a response takes up to this much (a head and a small
/// body; nginx's `proxy_buffer_size` is 4 KiB too); reads that fill the
/// buffer double it, up to the codec's limit: big streams move in big
/// reads (smaller caps made big downloads measurably slower than hyper's
/// client). Every request in flight holds one such buffer, so its size is
/// memory at 1000 connections.
const INIT_READ: usize = 4 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before the response head")]
    ClosedBeforeHead,
    #[error("upstream closed the connection {0} before the end of the response body")]
    Incomplete(&'static str),
    #[error("invalid upstream response: {0}")]
    Protocol(String),
    #[error("request body: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
    #[error("request body ended {0} bytes short of its content-length")]
    BodyShort(u64),
    #[error("request body longer than its content-length")]
    BodyLong,
}

impl ExchangeError {
    /// The upstream broke the protocol (as opposed to leaving).
    pub(crate) fn is_protocol(&self) -> bool {
        matches!(self, ExchangeError::Protocol(_))
    }

    /// The request body failed or broke its length: not the upstream's
    /// doing, so the exchange ends without retry.
    pub(super) fn is_body(&self) -> bool {
        matches!(
            self,
            ExchangeError::Body(_) | ExchangeError::BodyShort(_) | ExchangeError::BodyLong
        )
    }

    /// The client's request body failed while it was read (its own error,
    /// which the body records too).
    pub(crate) fn is_client_body(&self) -> bool {
        matches!(self, ExchangeError::Body(_))
    }

    pub(super) fn protocol(what: impl Into<String>) -> ExchangeError {
        ExchangeError::Protocol(what.into())
    }
}

impl From<FramingError> for ExchangeError {
    fn from(e: FramingError) -> ExchangeError {
        ExchangeError::Protocol(e.0)
    }
}

/// One upstream HTTP/1.1 connection and what it has read but not used.
pub(crate) struct Connection {
    pub(super) io: Io,
    pub(super) read: BytesMut,
    read_size: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("read", &self.read.len())
            .finish()
    }
}

impl Connection {
    pub(crate) fn new(io: impl Transport + 'static) -> Connection {
        Connection {
            io: Dialled::boxed(io, None),
            read: BytesMut::new(),
            read_size: INIT_READ,
        }
    }

    /// The same, dialled at `peer`.
    pub(crate) fn with_peer(mut self, peer: Option<SocketAddr>) -> Connection {
        self.io.peer = peer;
        self
    }

    /// The address dialled, when the connector told it.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.io.peer
    }

    /// Whether an idle connection is still fit for a request: nothing
    /// arrived while it idled. A close (the upstream's keep-alive ran out)
    /// or stray bytes make it unfit. Never waits.
    pub(crate) fn is_fit(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let io = &mut self.io;
        let probe = std::future::poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            Poll::Ready(Pin::new(&mut **io).poll_read(cx, &mut buf).is_pending())
        });
        // Outside the task's cooperative budget: with the budget spent, the
        // read would say `Pending` whatever arrived.
        let mut probe = std::pin::pin!(tokio::task::coop::unconstrained(probe));
        let mut cx = Context::from_waker(Waker::noop());
        matches!(probe.as_mut().poll(&mut cx), Poll::Ready(true))
    }

    /// Reads more into the buffer: `Ok(0)` at the upstream's close.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// Reads more of a body, holding no buffer while the upstream is
    /// silent (see [`poll_fill_lean`]).
    pub(super) fn poll_fill_lean(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill_lean(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// Ready for the pool: a buffer grown for a big stream is let go.
    pub(super) fn rest(&mut self) {
        if self.read.capacity() > 2 * INIT_READ {
            self.read = BytesMut::new();
        }
        self.read_size = INIT_READ;
    }
}

/// Where a connection goes back when its exchange ended cleanly.
pub(crate) type Home = Arc<IdleConns>;

/// A host's idle connections, most recently used last, and the word that
/// one came back, for the requests whose own connection is still being
/// opened (a request takes whichever comes first).
#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    conns: Mutex<VecDeque<Idle>>,
    /// Requests waiting for a connection to come back: with none (the
    /// common case), a return costs one load more, no notification.
    waiting: AtomicUsize,
    back: Notify,
}

impl IdleConns {
    pub(crate) fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `conn` back, and tells a waiting request.
    pub(crate) fn put(&self, conn: Connection) {
        self.lock().push_back(Idle {
            conn,
            since: Instant::now(),
        });
        // Read after the push, under no lock: a request counted before it
        // looked at the list either saw this connection or is told.
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.back.notify_one();
        }
    }

    /// Counts the caller among the waiting until the guard drops; count
    /// first, then look at the list, then wait for [`Waiting::back`].
    pub(crate) fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting { conns: self }
    }
}

/// A request waiting for a connection to come back.
pub(crate) struct Waiting<'a> {
    conns: &'a IdleConns,
}

impl Waiting<'_> {
    /// Resolves when a connection comes back (enable it before looking at
    /// the list, so that a return in between is not missed).
    pub(crate) fn back(&self) -> Notified<'_> {
        self.conns.back.notified()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // (A word this request was given but did not use, its own
        // connection having come at the same moment, goes on to another
        // waiting request: tokio passes on the notification of a dropped
        // `Notified`.)
        self.conns.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection waiting in the pool.
#[derive(Debug)]
pub(crate) struct Idle {
    pub(crate) conn: Connection,
    pub(crate) since: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose upstream closed is unfit, even when the task
    /// asking has spent its cooperative budget (tokio's resources then
    /// answer `Pending` without looking).
    #[tokio::test]
    async fn a_closed_connection_is_unfit_even_with_the_budget_spent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut conn = Connection::new(client.unwrap());
        assert!(conn.is_fit(), "open and silent");
        drop(accepted.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..1000 {
            tx.send(()).unwrap();
        }
        std::future::poll_fn(|cx| {
            while rx.poll_recv(cx).is_ready() {}
            assert!(!tokio::task::coop::has_budget_remaining());
            assert!(!conn.is_fit(), "closed by the upstream");
            Poll::Ready(())
        })
        .await;
    }
}
