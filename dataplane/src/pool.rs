//! Our pool of upstream connections: HTTP/1.1 ones driven by our own
//! client ([`crate::h1`]), HTTP/2 ones by hyper's connection-level client.
//!
//! Per host (scheme + authority) it keeps a stack of idle HTTP/1.1
//! connections and at most one shared HTTP/2 connection. An HTTP/1.1
//! connection goes back on the stack only when its response body was read
//! to the end (the body sends it home), so a checkout finds it ready at
//! once; one whose body was cut is dropped, which closes it. Idle
//! connections older than the idle timeout, or closed by the upstream, are
//! closed by a reaper. Each host has a [`Budget`] of requests sent at once;
//! the rest queue.
//!
//! Why not hyper-util's pool: it spawns a task per request to watch for the
//! connection's return, boxes its checkout futures and hashes its keys
//! through `Authority`'s byte-by-byte lowercasing `Hash` (see [`HostKey`]);
//! on this path that was a fifth of our user-space instructions.

use std::error::Error as StdError;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fnv::FnvHashMap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use crate::budget::{Budget, BudgetLimits, Held};
use crate::h1;
use crate::upstream::{ConnectError, Connector};

/// How often idle connections are looked at for expiry, and for a close
/// by the upstream: nothing polls an idle connection, so until the reaper
/// looks, one the upstream closed holds its descriptor (in CLOSE_WAIT).
/// A look that finds nothing makes no system call.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Why an upstream request failed before its response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    // Not transparent: the classifier finds the `ConnectError` among the
    // sources.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("upstream handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Request(#[source] hyper::Error),
    #[error("{0}")]
    Exchange(#[source] h1::Error),
    #[error("the new upstream connection closed before taking the request")]
    Closed,
}

/// What the pool can carry upstream: any streaming body hyper can write
/// on HTTP/1.1 and HTTP/2.
pub trait SendBody:
    http_body::Body<Data = Bytes, Error = Self::SendError> + Send + Unpin + 'static
{
    type SendError: Into<Box<dyn StdError + Send + Sync>>;
}

impl<B, E> SendBody for B
where
    B: http_body::Body<Data = Bytes, Error = E> + Send + Unpin + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    type SendError = E;
}

/// An upstream host as the pool knows it: scheme and authority. A route
/// makes its key once, when the snapshot is built, and hands it to every
/// send, so a request neither builds nor hashes one: the key is hashed
/// when made, and compared as the bytes it was spelled with (`Authority`'s
/// own `Hash` lowercases byte by byte, about a thousand instructions a
/// lookup). A mapping spells its host one way; two spellings would only
/// mean two pools.
#[derive(Clone, Debug)]
pub struct HostKey {
    scheme: Scheme,
    authority: Authority,
    hash: u64,
}

impl HostKey {
    pub fn new(scheme: Scheme, authority: Authority) -> HostKey {
        let mut hasher = fnv::FnvHasher::default();
        scheme.as_str().hash(&mut hasher);
        authority.as_str().hash(&mut hasher);
        HostKey {
            scheme,
            authority,
            hash: hasher.finish(),
        }
    }
}

impl PartialEq for HostKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.authority.as_str(), other.authority.as_str());
        // The pool's key is a clone of the route's, sharing its bytes: the
        // same pointer spares the comparison.
        let same_bytes = (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b;
        self.hash == other.hash && same_bytes && self.scheme == other.scheme
    }
}

impl Eq for HostKey {}

impl Hash for HostKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `scheme://authority`, as in a URL.
impl std::fmt::Display for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl HostKey {
    /// `uri` (either form) in absolute form on this host.
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }
}

/// One upstream host. A request finds it by key once, when the request is
/// made, and holds it from then on: the checkout, and the release of the
/// connection after the response, lock only this host's connections.
struct Host<B> {
    key: HostKey,
    budget: Budget,
    /// Idle HTTP/1.1 connections, most recently used last: the warmest is
    /// taken first, and the coldest are left to expire when traffic falls.
    /// Shared with the response bodies that send their connection back.
    idle: h1::Home,
    h2: Mutex<Option<http2::SendRequest<B>>>,
}

impl<B> Host<B> {
    fn new(key: HostKey, limits: BudgetLimits) -> Self {
        Host {
            key,
            budget: Budget::new(limits),
            idle: h1::Home::default(),
            h2: Mutex::new(None),
        }
    }
}

/// A lock whose holder panicked still guards consistent data here (each
/// critical section is a push, a pop or a retain).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner<B> {
    connector: Connector,
    h2: http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    budget: BudgetLimits,
    /// FNV: keys are the configured upstream hosts, none a client picks.
    hosts: Mutex<FnvHashMap<HostKey, Arc<Host<B>>>>,
}

impl<B> Inner<B> {
    /// `key`'s host, made when missing.
    fn host(&self, key: &HostKey) -> Arc<Host<B>> {
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
pub struct Pool<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

/// An upstream response body, from either kind of connection.
#[derive(Debug)]
pub enum UpstreamBody<B> {
    H1(h1::ResponseBody<B>),
    H2(Incoming),
}

impl<B> UpstreamBody<B> {
    /// After a 101 on HTTP/1.1: the connection, for the tunnel.
    pub fn into_upgraded(self) -> Option<h1::Upgraded> {
        match self {
            UpstreamBody::H1(body) => body.into_upgraded(),
            UpstreamBody::H2(_) => None,
        }
    }
}

impl<B: SendBody> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::H2(body) => body.size_hint(),
        }
    }
}

/// A response head; its body reads the rest.
pub type SendResult<B> = Result<Response<UpstreamBody<B>>, SendError>;

/// A connection taken for one request.
enum Checkout<B> {
    /// `reused`: it served a request before.
    H1 {
        conn: h1::Connection,
        reused: bool,
    },
    H2(http2::SendRequest<B>),
}

impl<B: SendBody> Pool<B> {
    /// Must be called inside the runtime: the pool's reaper runs there.
    pub fn new(connector: Connector, idle_timeout: Duration, budget: BudgetLimits) -> Pool<B> {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        let inner = Arc::new(Inner {
            connector,
            h2,
            idle_timeout,
            budget,
            hosts: Mutex::default(),
        });
        tokio::spawn(reap(Arc::downgrade(&inner)));
        Pool { inner }
    }

    /// Sends `req` upstream to `host` within the host's budget: on a
    /// pooled connection when one is free, else on a new one. A request
    /// that a pooled connection gave back unsent (it closed at that moment)
    /// is sent once more on a new connection. `req`'s URI may be in origin
    /// form: the host is `host`. `start`: when the request began (see
    /// [`Budget::run`]).
    ///
    /// A plain function returning the future, which owns a handle to the
    /// pool: the caller can keep it in a struct of its own, and `req` is
    /// stored once, in the closure (an `async fn` would store it twice).
    /// The caller gives the place up once its hold passes ([`Held`]).
    pub fn send(
        &self,
        host: &HostKey,
        req: Request<B>,
        start: Instant,
    ) -> impl Held<Output = SendResult<B>> + 'static {
        let host = self.inner.host(host);
        let budget = host.budget.clone();
        // The send is boxed, and made only once the request has its place:
        // a request waiting in the queue then holds just its own few
        // hundred bytes, not the send's as well, and the send's size
        // (about 540 bytes) is not part of every client connection's state
        // (its request future lives as long as the connection).
        // The future owns a handle to the pool (one more reference count
        // change per request) so that it can outlive this borrow.
        let pool = self.clone();
        budget.run(start, move || Box::pin(pool.send_in_budget(host, req)))
    }

    /// The send, once the request may go: on a pooled connection when one
    /// is free, else (or when the pooled one gives the request back
    /// unsent) on a new one.
    fn send_in_budget(self, host: Arc<Host<B>>, req: Request<B>) -> InBudget<B> {
        match self.checkout(&host) {
            Some(conn) => InBudget::Pooled {
                send: send_on(conn, &host, req),
                retry: Some((self, host)),
            },
            None => InBudget::Fresh(Box::pin(self.send_fresh(host, Box::new(req)))),
        }
    }

    /// Sends on a new connection (a handshake's futures are large: this
    /// one is boxed, and only a connect pays for it).
    async fn send_fresh(self, host: Arc<Host<B>>, req: Box<Request<B>>) -> SendResult<B> {
        let conn = self.connect(&host).await?;
        match send_on(conn, &host, *req).await {
            Ok(sent) => Ok(sent),
            Err(Unsent::Failed(e)) => Err(e),
            Err(Unsent::Back(_)) => Err(SendError::Closed),
        }
    }

    /// A connection from the pool: the shared HTTP/2 one if it is open,
    /// else the newest idle HTTP/1.1 one that is still fit.
    fn checkout(&self, host: &Host<B>) -> Option<Checkout<B>> {
        {
            let mut h2 = lock(&host.h2);
            if let Some(sender) = &*h2 {
                if !sender.is_closed() {
                    return Some(Checkout::H2(sender.clone()));
                }
                *h2 = None;
            }
        }
        // Newest first; closed or expired ones found on the way are closed.
        let mut idle = lock(&host.idle);
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

    /// Opens a connection (TCP, TLS, then HTTP/1.1 or HTTP/2 as ALPN chose)
    /// and spawns its task. An HTTP/2 one is shared from then on.
    async fn connect(&self, host: &Host<B>) -> Result<Checkout<B>, SendError> {
        let key = &host.key;
        let uri = key.absolute(&Uri::from_static("/"));
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(uri).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = self
                .inner
                .h2
                .handshake(io)
                .await
                .map_err(SendError::Handshake)?;
            tokio::spawn(drive("h2", key.authority.clone(), conn));
            *lock(&host.h2) = Some(sender.clone());
            return Ok(Checkout::H2(sender));
        }
        Ok(Checkout::H1 {
            conn: h1::Connection::new(TokioIo::new(io)),
            reused: false,
        })
    }
}

/// A send that did not produce a response head.
enum Unsent<B> {
    /// The connection gave the request back unsent (boxed: a rare path,
    /// and the common one should not carry its size).
    Back(Box<Request<B>>),
    Failed(SendError),
}

impl<B> From<hyper::client::conn::TrySendError<Request<B>>> for Unsent<B> {
    fn from(mut e: hyper::client::conn::TrySendError<Request<B>>) -> Self {
        match e.take_message() {
            Some(req) => Unsent::Back(Box::new(req)),
            None => Unsent::Failed(SendError::Request(e.into_error())),
        }
    }
}

/// [`Pool::send_in_budget`]'s future, written out so that the common
/// case, a pooled HTTP/1.1 connection, is an [`h1::Exchange`] and little
/// else: it is made (and boxed, and moved) once a request, and an
/// `async fn` kept the request beside the exchange made from it, and the
/// retry's state beside both (1.9 KB, copied on every request).
// The large variant is the common one, kept in place on purpose.
#[allow(clippy::large_enum_variant)]
enum InBudget<B> {
    /// On a pooled connection; `retry`: what a new connection needs, taken
    /// when the pooled one gives the request back.
    Pooled {
        send: SendOn<B>,
        retry: Option<(Pool<B>, Arc<Host<B>>)>,
    },
    Fresh(Pin<Box<dyn Future<Output = SendResult<B>> + Send>>),
}

impl<B: SendBody> Future for InBudget<B> {
    type Output = SendResult<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendResult<B>> {
        loop {
            let req = match &mut *self {
                InBudget::Fresh(send) => return send.as_mut().poll(cx),
                InBudget::Pooled { send, retry } => match ready!(Pin::new(send).poll(cx)) {
                    Ok(sent) => return Poll::Ready(Ok(sent)),
                    Err(Unsent::Failed(e)) => return Poll::Ready(Err(e)),
                    Err(Unsent::Back(req)) => match retry.take() {
                        Some((pool, host)) => Box::pin(pool.send_fresh(host, req)),
                        None => return Poll::Ready(Err(SendError::Closed)),
                    },
                },
            };
            *self = InBudget::Fresh(req);
        }
    }
}

/// Sends `req` on `conn`, a connection of `host`'s.
fn send_on<B: SendBody>(conn: Checkout<B>, host: &Host<B>, mut req: Request<B>) -> SendOn<B> {
    match conn {
        Checkout::H1 { conn, reused } => {
            let authority = host.key.authority.as_str();
            SendOn::H1(h1::send(conn, req, authority, host.idle.clone(), reused))
        }
        Checkout::H2(mut sender) => {
            // HTTP/2 carries scheme and authority as pseudo-headers.
            if req.uri().scheme().is_none() {
                *req.uri_mut() = host.key.absolute(req.uri());
            }
            SendOn::H2(Box::pin(async move {
                if sender.ready().await.is_err() {
                    return Err(Unsent::Back(Box::new(req)));
                }
                let response = sender.try_send_request(req).await.map_err(Unsent::from)?;
                Ok(response.map(UpstreamBody::H2))
            }))
        }
    }
}

/// One attempt on one connection: an HTTP/1.1 exchange in place, an
/// HTTP/2 send boxed.
// The large variant is the common one, kept in place on purpose.
#[allow(clippy::large_enum_variant)]
enum SendOn<B> {
    H1(h1::Exchange<B>),
    H2(Pin<Box<dyn Future<Output = Attempt<B>> + Send>>),
}

/// What one attempt on one connection gives.
type Attempt<B> = Result<Response<UpstreamBody<B>>, Unsent<B>>;

impl<B: SendBody> Future for SendOn<B> {
    type Output = Attempt<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            SendOn::H1(exchange) => Poll::Ready(match ready!(Pin::new(exchange).poll(cx)) {
                Ok(response) => Ok(response.map(UpstreamBody::H1)),
                Err(h1::Failed::Unsent(req)) => Err(Unsent::Back(req)),
                Err(h1::Failed::Failed(e)) => Err(Unsent::Failed(SendError::Exchange(e))),
            }),
            SendOn::H2(send) => send.as_mut().poll(cx),
        }
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
async fn reap<B: Send + 'static>(pool: Weak<Inner<B>>) {
    let Some(timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
        return;
    };
    let mut every = tokio::time::interval(REAP_EVERY.min(timeout));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        lock(&pool.hosts).retain(|_, host| {
            let mut idle = lock(&host.idle);
            idle.retain_mut(|idle| idle.since.elapsed() < timeout && idle.conn.is_fit());
            let mut h2 = lock(&host.h2);
            if h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
                *h2 = None;
            }
            // The map's lock is held: nobody can take a new reference now.
            !idle.is_empty()
                || h2.is_some()
                || Arc::strong_count(host) > 1
                || Arc::strong_count(&host.idle) > 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::Timer;
    use crate::policy::TargetPolicy;
    use crate::proxy::AwaitHead;
    use crate::upstream::{tls_config, UpstreamSettings};
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
                Err(SendError::Exchange(h1::Error::ClosedBeforeHead))
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
