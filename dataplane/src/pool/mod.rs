//! Our pool of upstream connections: HTTP/1.1 ones driven by our own
//! client ([`crate::http1`]), HTTP/2 ones by h2 ([`crate::h2`]).
//!
//! Per host (scheme + authority) it keeps a stack of idle HTTP/1.1
//! connections and a list of shared HTTP/2 connections. A request takes a
//! stream on the oldest HTTP/2 connection below the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`; when all are full, another is
//! opened, so requests in flight are never capped at one connection's
//! streams, and the extras, left idle when traffic falls, are closed
//! after the idle timeout. Requests that find no room while a connection
//! to the host is being opened wait for it rather than open their own
//! (as many as it is expected to take): a cold burst of N requests costs
//! about N ÷ streams handshakes, not N. Until the host's first TLS
//! handshake has told (by ALPN) whether it speaks HTTP/2, requests wait
//! for that one. A request that finds no idle HTTP/1.1 connection dials
//! one and meanwhile takes one that comes back idle, whichever is first
//! (a dial that loses goes on, and joins the stack, up to a bound). An HTTP/1.1
//! connection goes back on the stack only when its response body was read
//! to the end (the body sends it home), so a checkout finds it ready at
//! once; one whose body was cut is dropped, which closes it. Idle
//! connections older than the idle timeout, or closed by the upstream, are
//! closed by a reaper. Each host has a budget ([`crate::budget`]) of
//! requests sent at once;
//! the rest queue.
//!
//! Why not hyper-util's pool: it spawns a task per request to watch for the
//! connection's return, boxes its checkout futures and hashes its keys
//! through `Authority`'s byte-by-byte lowercasing `Hash` (see [`HostKey`]):
//! on this path that was a large share of our user-space instructions
//! (docs/BENCHMARKS.md has the figures).

use std::error::Error as StdError;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use fnv::FnvHashMap;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tokio_util::either::Either;
use tower_service::Service;
use tracing::debug;

mod host;
mod host_key;
mod send;

use crate::budget::{BudgetLimits, Held};
use crate::connect::{Conn, ConnectError, Connector};
use crate::error_kind::UpstreamErrorKind;
use crate::{h2, http1};

use host::{lock, Checkout, DialTicket, Dialed, Found, Host};
pub(crate) use host_key::HostKey;
pub(crate) use send::{SendBody, SendError, SendResult, UpstreamBody, UpstreamBodyError};

/// How often idle connections are looked at for expiry, and for a close
/// by the upstream: nothing polls an idle connection, so until the reaper
/// looks, one the upstream closed holds its descriptor (in CLOSE_WAIT).
/// A look that finds nothing makes no system call.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// The most connections one request tries (a pooled one that closed under
/// it, a refused HTTP/2 stream, a wait for another request's handshake
/// each take a turn).
const MAX_TURNS: usize = 8;

struct Inner {
    connector: Connector,
    idle_timeout: Duration,
    budget: BudgetLimits,
    /// FNV: keys are the configured upstream hosts, none a client picks.
    hosts: Mutex<FnvHashMap<HostKey, Arc<Host>>>,
}

impl Inner {
    /// `key`'s host, made when missing.
    fn host(&self, key: &HostKey) -> Arc<Host> {
        let mut hosts = lock(&self.hosts);
        if let Some(host) = hosts.get(key) {
            return host.clone();
        }
        hosts
            .entry(key.clone())
            .or_insert_with_key(|key| Arc::new(Host::new(key.clone(), self.budget)))
            .clone()
    }
}

/// A cheap handle; clones share the connections.
pub(crate) struct Pool<B> {
    inner: Arc<Inner>,
    /// The request bodies it sends (the connections are body-agnostic).
    _body: PhantomData<fn(B)>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
            _body: PhantomData,
        }
    }
}

/// A request still to be sent.
enum Pending<B> {
    Request(Box<Request<B>>),
    /// Refused unprocessed by an HTTP/2 upstream, with what of its body
    /// was already taken.
    Refused(Box<h2::Refused<B>>),
}

impl<B: SendBody> Pool<B> {
    /// Must be called inside the runtime: the pool's reaper runs there.
    pub(crate) fn new(
        connector: Connector,
        idle_timeout: Duration,
        budget: BudgetLimits,
    ) -> Pool<B> {
        let inner = Arc::new(Inner {
            connector,
            idle_timeout,
            budget,
            hosts: Mutex::default(),
        });
        tokio::spawn(reap(Arc::downgrade(&inner)));
        Pool {
            inner,
            _body: PhantomData,
        }
    }

    /// Sends `req` upstream to `host` within the host's budget: on a
    /// pooled connection when one is free, else on a new one. A request
    /// that a pooled connection gave back unsent (it closed at that moment)
    /// is sent once more on another connection. `req`'s URI may be in origin
    /// form: the host is `host`. `start`: when the request began (see
    /// [`crate::budget::Budget::run`]).
    ///
    /// A plain function returning the future, which owns a handle to the
    /// pool: the caller can keep it in a struct of its own, and `req` is
    /// stored once, in the boxed send (an `async fn` would store it twice).
    /// The caller gives the place up once its hold passes ([`Held`]).
    pub(crate) fn send(
        &self,
        host: &HostKey,
        req: Request<B>,
        start: Instant,
    ) -> impl Held<Output = SendResult<B>> + 'static {
        let host = self.inner.host(host);
        let budget = host.budget.clone();
        // The send is boxed with the request in it, and starts (looks for
        // a connection) once the request has its place. The future a
        // client connection keeps while it waits for a response head then
        // holds a pointer, not the request or the send: that connection's
        // task is sized for this wait, and lives as long as the
        // connection. The future owns a handle to the pool (one more
        // reference count change per request) so that it can outlive this
        // borrow.
        budget.run(
            start,
            Box::pin(InBudget::Start(Some((self.clone(), host, req)))),
        )
    }

    /// The send, once the request may go: on a pooled connection when one
    /// is free, else (or when the pooled one gives the request back
    /// unsent) on a new one, or one another request is opening.
    fn send_in_budget(self, host: Arc<Host>, req: Request<B>) -> InBudget<B> {
        match self.checkout(&host) {
            Found::Conn(conn) => InBudget::Pooled {
                send: send_on(conn, &host, req),
                retry: Some((self, host)),
            },
            found => {
                let pending = Pending::Request(Box::new(req));
                InBudget::Fresh(Box::pin(self.send_slow(host, pending, Some(found))))
            }
        }
    }

    /// Sends where no pooled connection took the request at once: waits
    /// for a connection being opened, or opens one (a handshake's futures
    /// are large: this one is boxed, and only the slow path pays for it).
    /// `found`: what the first checkout found, if it was made.
    async fn send_slow(
        self,
        host: Arc<Host>,
        mut pending: Pending<B>,
        mut found: Option<Found>,
    ) -> SendResult<B> {
        for _ in 0..MAX_TURNS {
            let conn = match found.take().unwrap_or_else(|| self.checkout(&host)) {
                Found::Conn(conn) => conn,
                Found::Wait(dial) => match dial.await {
                    Ok(Dialed::Failed(e)) => return Err(SendError::Connect(e)),
                    // Made (or given up by its request): look again.
                    _ => continue,
                },
                Found::Dial(None) => self.dial_h1(&host).await?,
                Found::Dial(ticket) => self.connect(&host, ticket).await?,
            };
            let attempt = match (conn, pending) {
                (Checkout::H2(lease), Pending::Refused(refused)) => {
                    SendOn::H2(h2::resend(lease, *refused))
                }
                (conn, Pending::Refused(refused)) => match refused.into_untouched() {
                    Ok(req) => send_on(conn, &host, req),
                    // Part of its body went, and HTTP/1.1 cannot replay it.
                    Err(_) => return Err(SendError::Closed),
                },
                (conn, Pending::Request(req)) => send_on(conn, &host, *req),
            };
            match attempt.await {
                Ok(sent) => return Ok(sent),
                Err(Unsent::Failed(e)) => return Err(e),
                Err(Unsent::Back(req)) => pending = Pending::Request(req),
                Err(Unsent::Refused(refused)) => pending = Pending::Refused(refused),
            }
        }
        Err(SendError::Closed)
    }

    /// A connection from the pool: a stream on an HTTP/2 one with room,
    /// else the newest idle HTTP/1.1 one that is still fit; else a dial to
    /// wait for, or one to make.
    fn checkout(&self, host: &Arc<Host>) -> Found {
        if self.inner.connector.offers_h2() && host.key.scheme == Scheme::HTTPS {
            let mut h2 = lock(&host.h2);
            if let Some(lease) = h2.lease() {
                return Found::Conn(Checkout::H2(lease));
            }
            // Known to speak HTTP/2, or not known yet: the next connection
            // is likely to take more than one request.
            if h2.speaks_h2 != Some(false) {
                return h2.wait_or_dial(host);
            }
        }
        match self.take_idle(host) {
            Some(conn) => Found::Conn(conn),
            None => Found::Dial(None),
        }
    }

    /// The newest idle HTTP/1.1 connection that is still fit; closed or
    /// expired ones found on the way are closed.
    fn take_idle(&self, host: &Host) -> Option<Checkout> {
        let mut idle = host.idle.lock();
        while let Some(mut entry) = idle.pop_back() {
            if entry.since.elapsed() < self.inner.idle_timeout && entry.conn.is_fit() {
                return Some(Checkout::H1 {
                    conn: entry.conn,
                    reused: true,
                });
            }
        }
        None
    }

    /// Opens an HTTP/1.1 connection for a request that found none idle,
    /// and meanwhile takes one that comes back idle, whichever is first
    /// (as hyper-util's pool does). At a cold start, or against an origin
    /// slow to take new connections, requests then go on as answers free
    /// connections instead of each waiting out a handshake of its own,
    /// some beyond the connect timeout. A dial that loses goes on in a task
    /// of its own and its connection joins the idle ones ([`detach`]), so
    /// the pool still grows to the requests in flight.
    async fn dial_h1(&self, host: &Arc<Host>) -> Result<Checkout, SendError> {
        let waiting = host.idle.wait();
        // Made once nothing is idle: a connection that came back since the
        // checkout then costs no handshake at all.
        let mut dial: Option<Dial> = None;
        loop {
            let back = waiting.back();
            let mut back = std::pin::pin!(back);
            // Listening before looking: a connection that comes back in
            // between is not missed.
            back.as_mut().enable();
            if let Some(conn) = self.take_idle(host) {
                if let Some(dial) = dial {
                    detach(host, dial);
                }
                return Ok(conn);
            }
            let dial = dial.get_or_insert_with(|| {
                let (pool, dialing) = (self.clone(), host.clone());
                Box::pin(async move { pool.connect(&dialing, None).await })
            });
            tokio::select! {
                biased;
                made = dial => return made,
                () = back => {}
            }
        }
    }

    /// Opens a connection (TCP, TLS, then HTTP/1.1 or HTTP/2 as ALPN chose);
    /// an HTTP/2 one gets its task and joins the host's list. Tells those
    /// waiting on `ticket` what came of it.
    async fn connect(
        &self,
        host: &Arc<Host>,
        ticket: Option<DialTicket>,
    ) -> Result<Checkout, SendError> {
        let failed = |ticket: Option<DialTicket>, e: ConnectError| {
            host.dialed(ticket, Dialed::Failed(e.clone()), None);
            SendError::Connect(e)
        };
        let key = &host.key;
        let uri = key.absolute(&Uri::from_static("/"));
        let mut connector = self.inner.connector.clone();
        if let Err(e) = std::future::poll_fn(|cx| connector.poll_ready(cx)).await {
            return Err(failed(ticket, e));
        }
        let conn = match connector.call(uri).await {
            Ok(conn) => conn,
            Err(e) => return Err(failed(ticket, e)),
        };
        let h2 = conn.negotiated_h2();
        let Conn { stream, peer } = conn;
        if !h2 {
            host.dialed(ticket, Dialed::H1, None);
            // Each stream boxed once, in the connection.
            let conn = match stream {
                Either::Left(tcp) => http1::Connection::new(tcp),
                Either::Right(tls) => http1::Connection::new(*tls),
            };
            return Ok(Checkout::H1 {
                conn: conn.with_peer(peer),
                reused: false,
            });
        }
        let made = match h2::handshake(stream, peer).await {
            Ok(made) => made,
            Err(e) => {
                let message = format!("upstream HTTP/2 handshake failed: {e}");
                return Err(failed(
                    ticket,
                    ConnectError::new(UpstreamErrorKind::Connect, message),
                ));
            }
        };
        tokio::spawn(drive("h2", key.authority.clone(), made.driver));
        // The one who opened it takes its stream at once; the others hear
        // of it, and it joins the list, once its stream limit is known.
        let lease = made.conn.lease();
        let (host, conn, settled) = (host.clone(), made.conn, made.settled);
        tokio::spawn(async move {
            settled.await;
            host.dialed(ticket, Dialed::H2, Some(conn));
        });
        lease.map(Checkout::H2).ok_or(SendError::Closed)
    }
}

/// A connection being opened for an HTTP/1.1 request (boxed: it may
/// outlive its request, see [`detach`]).
type Dial = Pin<Box<dyn Future<Output = Result<Checkout, SendError>> + Send>>;

/// Dials that lost to an idle connection going on at once, at most, a
/// host: against an origin that serves its connections but stalls new
/// ones, each request that finds none idle would otherwise leave a socket
/// open for up to the connect timeout. As many as a budget's places
/// ([`BudgetLimits::DEFAULT`]): with fewer the pool grew too slowly to
/// the requests in flight (64 halved the throughput at 1000 connections
/// over TLS; dropping every losing dial cut it to a quarter at 64).
const MAX_DETACHED_DIALS: usize = 1024;

/// Lets a dial whose request went on an idle connection finish in a task
/// of its own, its connection joining the idle ones; beyond
/// [`MAX_DETACHED_DIALS`] it is dropped, which closes its socket.
fn detach(host: &Arc<Host>, dial: Dial) {
    if host.detached.fetch_add(1, Ordering::Relaxed) >= MAX_DETACHED_DIALS {
        host.detached.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    // Counted off when the task ends, however it ends.
    struct Detached(Arc<Host>);
    impl Drop for Detached {
        fn drop(&mut self) {
            self.0.detached.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let detached = Detached(host.clone());
    tokio::spawn(async move {
        let host = &detached.0;
        match dial.await {
            Ok(Checkout::H1 { conn, .. }) => host.idle.put(conn),
            // An HTTP/2 connection joined the host's list as it was made.
            Ok(Checkout::H2(_)) => {}
            Err(error) => {
                debug!(host = %host.key.authority, %error, "a connection no request waited for failed");
            }
        }
    });
}

/// A send that did not produce a response head.
enum Unsent<B> {
    /// The connection gave the request back unsent (boxed: a rare path,
    /// and the common one should not carry its size).
    Back(Box<Request<B>>),
    /// An HTTP/2 upstream refused the stream unprocessed.
    Refused(Box<h2::Refused<B>>),
    Failed(SendError),
}

/// [`Pool::send_in_budget`]'s future, written out so that the common
/// case, a pooled HTTP/1.1 connection, is an [`http1::Exchange`] and little
/// else: it is made (and boxed, and moved) once a request, and an
/// `async fn` kept the request beside the exchange made from it, and the
/// retry's state beside both, all copied on every request.
// The large variant is the common one, kept in place on purpose.
#[allow(clippy::large_enum_variant)]
enum InBudget<B> {
    /// Waiting for its place in the budget; taken on the first poll.
    Start(Option<(Pool<B>, Arc<Host>, Request<B>)>),
    /// On a pooled connection; `retry`: what a new connection needs, taken
    /// when the pooled one gives the request back.
    Pooled {
        send: SendOn<B>,
        retry: Option<(Pool<B>, Arc<Host>)>,
    },
    Fresh(Pin<Box<dyn Future<Output = SendResult<B>> + Send>>),
}

impl<B: SendBody> Future for InBudget<B> {
    type Output = SendResult<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendResult<B>> {
        loop {
            let again = match &mut *self {
                InBudget::Start(start) => {
                    let (pool, host, req) = start.take().expect("a send starts once");
                    *self = pool.send_in_budget(host, req);
                    continue;
                }
                InBudget::Fresh(send) => return send.as_mut().poll(cx),
                InBudget::Pooled { send, retry } => {
                    let pending = match ready!(Pin::new(send).poll(cx)) {
                        Ok(sent) => return Poll::Ready(Ok(sent)),
                        Err(Unsent::Failed(e)) => return Poll::Ready(Err(e)),
                        Err(Unsent::Back(req)) => Pending::Request(req),
                        Err(Unsent::Refused(refused)) => Pending::Refused(refused),
                    };
                    match retry.take() {
                        Some((pool, host)) => Box::pin(pool.send_slow(host, pending, None)),
                        None => return Poll::Ready(Err(SendError::Closed)),
                    }
                }
            };
            *self = InBudget::Fresh(again);
        }
    }
}

/// Sends `req` on `conn`, a connection of `host`'s.
fn send_on<B: SendBody>(conn: Checkout, host: &Host, mut req: Request<B>) -> SendOn<B> {
    match conn {
        Checkout::H1 { conn, reused } => {
            let authority = host.key.authority.as_str();
            SendOn::H1(http1::send(conn, req, authority, host.idle.clone(), reused))
        }
        Checkout::H2(lease) => {
            // HTTP/2 carries scheme and authority as pseudo-headers.
            if req.uri().scheme().is_none() {
                *req.uri_mut() = host.key.absolute(req.uri());
            }
            SendOn::H2(h2::send(lease, req))
        }
    }
}

/// One attempt on one connection.
// The large variant is the common one, kept in place on purpose.
#[allow(clippy::large_enum_variant)]
enum SendOn<B> {
    H1(http1::Exchange<B>),
    H2(h2::Exchange<B>),
}

/// What one attempt on one connection gives.
type Attempt<B> = Result<Response<UpstreamBody<B>>, Unsent<B>>;

impl<B: SendBody> Future for SendOn<B> {
    type Output = Attempt<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.get_mut() {
            SendOn::H1(exchange) => match ready!(Pin::new(exchange).poll(cx)) {
                Ok(response) => Ok(response.map(UpstreamBody::H1)),
                Err(http1::Failed::Unsent(req)) => Err(Unsent::Back(req)),
                Err(http1::Failed::Failed(e)) => Err(Unsent::Failed(SendError::Exchange(e))),
            },
            SendOn::H2(send) => match ready!(Pin::new(send).poll(cx)) {
                Ok(response) => Ok(response.map(UpstreamBody::H2)),
                Err(h2::Failed::Refused(refused)) => Err(Unsent::Refused(refused)),
                Err(h2::Failed::Failed(e)) => Err(Unsent::Failed(SendError::H2(e))),
            },
        })
    }
}

/// Runs a connection's task to its end.
async fn drive<F, E>(protocol: &'static str, host: Authority, conn: F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: StdError,
{
    if let Err(error) = conn.await {
        debug!(%host, protocol, %error, "upstream connection ended with an error");
    }
}

/// Closes idle connections older than the idle timeout or closed by the
/// upstream, and forgets hosts with nothing left: no connection, and no
/// request holding the host (a request holds it from the moment it is
/// made, queued or not; a response body holds its stack of idle
/// connections while it is read); ends with the pool.
async fn reap(pool: Weak<Inner>) {
    let Some(timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
        return;
    };
    let mut every = tokio::time::interval(REAP_EVERY.min(timeout));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        lock(&pool.hosts).retain(|_, host| {
            let mut idle = host.idle.lock();
            idle.retain_mut(|idle| idle.since.elapsed() < timeout && idle.conn.is_fit());
            // HTTP/2 connections with no stream for the idle timeout
            // (extras opened for a peak, once it passed) are let go: the
            // last handle dropped, h2 closes the connection.
            let mut h2 = lock(&host.h2);
            h2.conns
                .retain(|c| !c.is_closed() && c.idle_since().is_none_or(|t| t.elapsed() < timeout));
            // The map's lock is held: nobody can take a new reference now.
            !idle.is_empty()
                || !h2.conns.is_empty()
                || !h2.dials.is_empty()
                || Arc::strong_count(host) > 1
                || Arc::strong_count(&host.idle) > 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{tls_config, UpstreamSettings};
    use crate::deadline::Timer;
    use crate::policy::TargetPolicy;
    use crate::proxy::AwaitHead;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real HTTP/1.1 upstream on 127.0.0.1: answers "ok", counts the
    /// connections it accepted and those still open.
    async fn upstream() -> (Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (uri, counts) = slow_upstream(Duration::ZERO).await;
        (uri, counts.accepted, counts.open)
    }

    struct Counts {
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
        /// Most requests it was working on at once.
        most_at_once: Arc<AtomicUsize>,
    }

    /// The same upstream, taking `delay` over each answer.
    async fn slow_upstream(delay: Duration) -> (Uri, Counts) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let counts = Counts {
            accepted: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(AtomicUsize::new(0)),
            most_at_once: Arc::new(AtomicUsize::new(0)),
        };
        let (accepted, open, most) = (
            counts.accepted.clone(),
            counts.open.clone(),
            counts.most_at_once.clone(),
        );
        let working = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (open, most, working) = (open.clone(), most.clone(), working.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let (most, working) = (most.clone(), working.clone());
                        async move {
                            let now = working.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            working.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (uri, counts)
    }

    fn pool(idle: Duration) -> Pool<Empty<Bytes>> {
        pool_with(idle, BudgetLimits::DEFAULT)
    }

    /// A pool whose hosts have `places`, each held `hold` at most; the
    /// queue limit is out of reach.
    fn budgeted_pool(places: usize, hold: Duration) -> Pool<Empty<Bytes>> {
        let budget = BudgetLimits {
            places,
            hold,
            queue: Duration::from_secs(60),
        };
        pool_with(Duration::from_secs(60), budget)
    }

    fn pool_with<B: SendBody>(idle: Duration, budget: BudgetLimits) -> Pool<B> {
        let settings = UpstreamSettings {
            policy: TargetPolicy::Any,
            connect_timeout: Duration::from_secs(2),
            ca_file: None,
        };
        let tls = tls_config(None).unwrap();
        Pool::new(Connector::new(&settings, &tls, true), idle, budget)
    }

    /// Sends `n` requests at once and reads every answer whole.
    async fn get_many(pool: &Pool<Empty<Bytes>>, uri: &Uri, n: usize) {
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (pool, uri) = (pool.clone(), uri.clone());
            requests.spawn(async move {
                let response = get(&pool, &uri).await;
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, "ok");
            });
        }
        while let Some(done) = requests.join_next().await {
            done.unwrap();
        }
    }

    #[tokio::test]
    async fn keys_spelled_alike_share_one_host_and_others_do_not() {
        let pool = pool(Duration::from_secs(60));
        let key = |s: &str| key(&s.parse().unwrap());
        // Parsed apart, so their bytes lie apart: compared, not pointed at.
        let (a, b) = (key("http://127.0.0.1:9/x"), key("http://127.0.0.1:9/y"));
        assert!(Arc::ptr_eq(&pool.inner.host(&a), &pool.inner.host(&b)));
        let others = [key("https://127.0.0.1:9/"), key("http://127.0.0.1:10/")];
        for other in others {
            assert_ne!(a, other);
            assert!(!Arc::ptr_eq(&pool.inner.host(&a), &pool.inner.host(&other)));
        }
    }

    #[tokio::test]
    async fn dials_that_lost_go_on_up_to_the_bound_and_the_rest_are_closed() {
        let pool = pool(Duration::from_secs(60));
        let host = pool
            .inner
            .host(&key(&"http://127.0.0.1:9/".parse().unwrap()));
        // Dials that never end, each saying when it is dropped.
        let dropped = Arc::new(AtomicUsize::new(0));
        struct OnDrop(Arc<AtomicUsize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        for _ in 0..MAX_DETACHED_DIALS + 3 {
            let guard = OnDrop(dropped.clone());
            detach(
                &host,
                Box::pin(async move {
                    let _guard = guard;
                    std::future::pending().await
                }),
            );
        }
        tokio::task::yield_now().await;
        assert_eq!(host.detached.load(Ordering::SeqCst), MAX_DETACHED_DIALS);
        assert_eq!(dropped.load(Ordering::SeqCst), 3, "beyond the bound");
    }

    #[tokio::test]
    async fn a_fast_upstream_gets_no_more_requests_at_once_than_the_budget() {
        let (uri, counts) = slow_upstream(Duration::from_millis(5)).await;
        let pool = budgeted_pool(8, Duration::from_secs(60));
        get_many(&pool, &uri, 200).await;
        let most = counts.most_at_once.load(Ordering::SeqCst);
        assert!(most <= 8, "{most} requests at once");
        let accepted = counts.accepted.load(Ordering::SeqCst);
        assert!(accepted <= 8, "{accepted} connections for 200 requests");
        assert!(lock(&pool.inner.hosts).values().all(|h| h.budget.is_idle()));
    }

    #[tokio::test]
    async fn a_slow_upstream_is_not_held_to_the_budget() {
        // Each answer takes 1 s; places are held 20 ms at most, so all 20
        // requests reach the upstream (two every 20 ms) while the first
        // still waits.
        let (uri, counts) = slow_upstream(Duration::from_secs(1)).await;
        let pool = budgeted_pool(2, Duration::from_millis(20));
        get_many(&pool, &uri, 20).await;
        assert_eq!(counts.most_at_once.load(Ordering::SeqCst), 20);
    }

    /// The host `uri` names.
    fn key(uri: &Uri) -> HostKey {
        HostKey::new(
            uri.scheme().unwrap().clone(),
            uri.authority().unwrap().clone(),
        )
    }

    /// A GET, sent as the proxy sends (a place held too long is given up).
    async fn get(pool: &Pool<Empty<Bytes>>, uri: &Uri) -> Response<UpstreamBody<Empty<Bytes>>> {
        let req = Request::get(uri.clone()).body(Empty::new()).unwrap();
        let now = Instant::now();
        let send = pool.send(&key(uri), req, now);
        let head = AwaitHead::new(send, Timer::new(), now, Duration::from_secs(60), None).await;
        head.expect("a head in time").unwrap()
    }

    /// An upstream that answers the first request on each connection and
    /// closes the connection, unanswered, when a second arrives: what a
    /// keep-alive timeout firing just as a pooled connection is reused
    /// looks like. Counts the connections it accepted.
    async fn closes_when_reused() -> (Uri, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    stream.write_all(answer).await.unwrap();
                    // The next request is read, then the connection closed.
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        (uri, accepted)
    }

    #[tokio::test]
    async fn a_bodiless_get_on_a_connection_closed_under_it_goes_on_a_new_one() {
        let (uri, accepted) = closes_when_reused().await;
        let pool = pool(Duration::from_secs(60));
        for round in 1..=3 {
            let response = get(&pool, &uri).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok", "round {round}");
        }
        // Rounds 2 and 3 each found the pooled connection closed under them
        // and went again on a new one.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_with_a_body_is_not_sent_twice() {
        let (uri, accepted) = closes_when_reused().await;
        let pool: Pool<http_body_util::Full<Bytes>> =
            pool_with(Duration::from_secs(60), BudgetLimits::DEFAULT);
        let post = || {
            Request::post(uri.clone())
                .header("content-length", "3")
                .body(http_body_util::Full::new(Bytes::from_static(b"abc")))
                .unwrap()
        };
        let first = pool.send(&key(&uri), post(), Instant::now()).await.unwrap();
        first.into_body().collect().await.unwrap();
        let second = pool.send(&key(&uri), post(), Instant::now()).await;
        assert!(
            matches!(
                second,
                Err(SendError::Exchange(http1::ExchangeError::ClosedBeforeHead))
            ),
            "{:?}",
            second.map(|r| r.status())
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// Polls `check` every 10 ms for up to 2 s.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn a_connection_read_whole_is_reused_and_one_cut_short_is_closed() {
        let (uri, accepted, open) = upstream().await;
        let pool = pool(Duration::from_secs(60));
        for _ in 0..3 {
            let response = get(&pool, &uri).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for three requests"
        );

        // The body is left unread and dropped: not reusable.
        let response = get(&pool, &uri).await;
        drop(response);
        closed_then_replaced("the cut connection", &pool, &uri, &accepted, &open).await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (uri, accepted, open) = upstream().await;
        let pool = pool(Duration::from_millis(100));
        let response = get(&pool, &uri).await;
        response.into_body().collect().await.unwrap();
        assert_eq!(open.load(Ordering::SeqCst), 1);
        // Nobody asks for it again: the reaper closes it.
        closed_then_replaced("the idle connection", &pool, &uri, &accepted, &open).await;
    }

    #[tokio::test]
    async fn a_host_is_forgotten_once_nothing_holds_it() {
        let (uri, _accepted, _open) = upstream().await;
        let pool = pool(Duration::from_millis(100));
        let hosts = || lock(&pool.inner.hosts).len();
        let response = get(&pool, &uri).await;
        // A response still being read holds its host past several reaps,
        // though the host has no idle connection.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(hosts(), 1);
        response.into_body().collect().await.unwrap();
        // Then its connection idles out, and the host goes with it.
        eventually("the host forgotten", || hosts() == 0).await;
    }

    /// The upstream's one connection closes, and the next request is
    /// served on a second, new one.
    async fn closed_then_replaced(
        what: &str,
        pool: &Pool<Empty<Bytes>>,
        uri: &Uri,
        accepted: &AtomicUsize,
        open: &AtomicUsize,
    ) {
        eventually(&format!("{what} closed"), || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
        let response = get(pool, uri).await;
        assert_eq!(response.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
