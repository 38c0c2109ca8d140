//! Our pool of upstream connections, over hyper's connection-level client.
//!
//! Per host (scheme + authority) it keeps a stack of idle HTTP/1.1
//! connections and at most one shared HTTP/2 connection. An HTTP/1.1
//! connection goes back on the stack only when its response body was read
//! to the end (a [`Lease`] dropped with the body), so a checkout finds it
//! ready at once; one whose body was cut is dropped, which closes it. Idle
//! connections older than the idle timeout are closed by a reaper.
//!
//! Why not hyper-util's pool: it spawns a task per request to watch for the
//! connection's return, boxes its checkout futures and keys its maps with
//! SipHash on every request; on this path that was a fifth of our
//! user-space instructions.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use crate::upstream::{ConnectError, Connector};

/// How often idle connections are looked at for expiry.
const REAP_EVERY: Duration = Duration::from_secs(10);

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
    #[error("the new upstream connection closed before taking the request")]
    Closed,
    #[error("invalid upstream URI {0}: no scheme or authority")]
    Uri(Uri),
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

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct HostKey {
    scheme: Scheme,
    authority: Authority,
}

impl HostKey {
    /// `uri` (either form) in absolute form on this host.
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query(uri));
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }
}

fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

fn origin_form(uri: &Uri) -> Uri {
    Uri::from(path_and_query(uri))
}

struct Host<B> {
    /// Most recently used last: the warmest connection is taken first, and
    /// the coldest ones are left to expire when traffic falls.
    idle: Vec<Idle<B>>,
    h2: Option<http2::SendRequest<B>>,
}

impl<B> Default for Host<B> {
    fn default() -> Self {
        Host {
            idle: Vec::new(),
            h2: None,
        }
    }
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

struct Inner<B> {
    connector: Connector,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    idle_timeout: Duration,
    hosts: Mutex<HashMap<HostKey, Host<B>>>,
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

/// An HTTP/1.1 connection lent to one request: dropped with the response
/// body. [`Lease::release`] puts it back when the body was read whole.
pub struct Lease<B> {
    pool: Arc<Inner<B>>,
    key: HostKey,
    sender: http1::SendRequest<B>,
}

impl<B> std::fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("host", &self.key.authority)
            .finish()
    }
}

impl<B> Lease<B> {
    /// The response was read to its end: the connection can serve another.
    pub fn release(self) {
        let mut hosts = self.pool.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.entry(self.key).or_default().idle.push(Idle {
            sender: self.sender,
            since: Instant::now(),
        });
    }
}

/// A connection taken for one request.
enum Checkout<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
}

impl<B: SendBody> Pool<B> {
    /// Must be called inside the runtime: the pool's reaper runs there.
    pub fn new(connector: Connector, idle_timeout: Duration) -> Pool<B> {
        let mut h1 = http1::Builder::new();
        // One write per message is cheaper than writev for the small bodies
        // that dominate API traffic.
        h1.writev(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        let inner = Arc::new(Inner {
            connector,
            h1,
            h2,
            idle_timeout,
            hosts: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&inner)));
        Pool { inner }
    }

    /// Sends `req` upstream: on a pooled connection when one is free, else
    /// on a new one. A request that a pooled connection gave back unsent
    /// (it closed at that moment) is sent once more on a new connection.
    /// The [`Lease`] comes with HTTP/1.1 responses.
    pub async fn send(
        &self,
        req: Request<B>,
    ) -> Result<(Response<Incoming>, Option<Lease<B>>), SendError> {
        let key = match (req.uri().scheme(), req.uri().authority()) {
            (Some(scheme), Some(authority)) => HostKey {
                scheme: scheme.clone(),
                authority: authority.clone(),
            },
            _ => return Err(SendError::Uri(req.uri().clone())),
        };
        let req = match self.checkout(&key) {
            Some(conn) => match self.send_on(conn, &key, req).await {
                Ok(sent) => return Ok(sent),
                Err(Unsent::Failed(e)) => return Err(SendError::Request(e)),
                Err(Unsent::Back(req)) => *req,
            },
            None => req,
        };
        // Boxed: the handshake futures are large, and this future lives in
        // every client connection's state; only a connect pays for them.
        let conn = Box::pin(self.connect(&key)).await?;
        match self.send_on(conn, &key, req).await {
            Ok(sent) => Ok(sent),
            Err(Unsent::Failed(e)) => Err(SendError::Request(e)),
            Err(Unsent::Back(_)) => Err(SendError::Closed),
        }
    }

    /// A connection from the pool: the shared HTTP/2 one if it is open,
    /// else the newest idle HTTP/1.1 one that is still open.
    fn checkout(&self, key: &HostKey) -> Option<Checkout<B>> {
        let mut hosts = self.inner.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let host = hosts.get_mut(key)?;
        if let Some(h2) = &host.h2 {
            if !h2.is_closed() {
                return Some(Checkout::H2(h2.clone()));
            }
            host.h2 = None;
        }
        // Newest first. Closed or expired ones found on the way go; one
        // still busy (its response ended before the upstream took the whole
        // request body) stays until it is ready, and is not waited for.
        let mut i = host.idle.len();
        while i > 0 {
            i -= 1;
            let idle = &host.idle[i];
            if idle.sender.is_closed() || idle.since.elapsed() >= self.inner.idle_timeout {
                host.idle.remove(i);
            } else if idle.sender.is_ready() {
                return Some(Checkout::H1(host.idle.remove(i).sender));
            }
        }
        None
    }

    async fn send_on(
        &self,
        conn: Checkout<B>,
        key: &HostKey,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Option<Lease<B>>), Unsent<B>> {
        match conn {
            Checkout::H2(mut sender) => {
                if sender.ready().await.is_err() {
                    return Err(Unsent::Back(Box::new(req)));
                }
                // HTTP/2 carries scheme and authority as pseudo-headers.
                if req.uri().scheme().is_none() {
                    *req.uri_mut() = key.absolute(req.uri());
                }
                let response = sender.try_send_request(req).await.map_err(Unsent::from)?;
                Ok((response, None))
            }
            Checkout::H1(mut sender) => {
                // A returned connection turns ready as soon as its task has
                // seen the end of the last response; if it closed instead,
                // the request goes elsewhere.
                if sender.ready().await.is_err() {
                    return Err(Unsent::Back(Box::new(req)));
                }
                // HTTP/1.1 to an origin: the request line has the path only.
                *req.uri_mut() = origin_form(req.uri());
                let response = sender.try_send_request(req).await.map_err(Unsent::from)?;
                let lease = Lease {
                    pool: self.inner.clone(),
                    key: key.clone(),
                    sender,
                };
                Ok((response, Some(lease)))
            }
        }
    }

    /// Opens a connection (TCP, TLS, then HTTP/1.1 or HTTP/2 as ALPN chose)
    /// and spawns its task. An HTTP/2 one is shared from then on.
    async fn connect(&self, key: &HostKey) -> Result<Checkout<B>, SendError> {
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
            let mut hosts = self.inner.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts.entry(key.clone()).or_default().h2 = Some(sender.clone());
            return Ok(Checkout::H2(sender));
        }
        let (sender, conn) = self
            .inner
            .h1
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        // With upgrades: a 101 hands the socket to the tunnel.
        tokio::spawn(drive(
            "http/1.1",
            key.authority.clone(),
            conn.with_upgrades(),
        ));
        Ok(Checkout::H1(sender))
    }
}

/// A send that did not produce a response head.
enum Unsent<B> {
    /// The connection gave the request back unsent (boxed: a rare path,
    /// and the common one should not carry its size).
    Back(Box<Request<B>>),
    Failed(hyper::Error),
}

impl<B> From<hyper::client::conn::TrySendError<Request<B>>> for Unsent<B> {
    fn from(mut e: hyper::client::conn::TrySendError<Request<B>>) -> Self {
        match e.take_message() {
            Some(req) => Unsent::Back(Box::new(req)),
            None => Unsent::Failed(e.into_error()),
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

/// Closes idle connections older than the idle timeout, and forgets hosts
/// with nothing left; ends with the pool.
async fn reap<B: Send + 'static>(pool: Weak<Inner<B>>) {
    let Some(timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
        return;
    };
    let mut every = tokio::time::interval(REAP_EVERY.min(timeout));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut hosts = pool.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.retain(|_, host| {
            host.idle
                .retain(|idle| !idle.sender.is_closed() && idle.since.elapsed() < timeout);
            if host.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
                host.h2 = None;
            }
            !host.idle.is_empty() || host.h2.is_some()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TargetPolicy;
    use crate::upstream::{tls_config, UpstreamSettings};
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real HTTP/1.1 upstream on 127.0.0.1: answers "ok", counts the
    /// connections it accepted and those still open.
    async fn upstream() -> (Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counts = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counts.0.fetch_add(1, Ordering::SeqCst);
                counts.1.fetch_add(1, Ordering::SeqCst);
                let open = counts.1.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (uri, accepted, open)
    }

    fn pool(idle: Duration) -> Pool<Empty<Bytes>> {
        let settings = UpstreamSettings {
            policy: TargetPolicy::Any,
            connect_timeout: Duration::from_secs(2),
            ca_file: None,
        };
        let tls = tls_config(None).unwrap();
        Pool::new(Connector::new(&settings, &tls, true), idle)
    }

    async fn get(
        pool: &Pool<Empty<Bytes>>,
        uri: &Uri,
    ) -> (Response<Incoming>, Option<Lease<Empty<Bytes>>>) {
        let req = Request::get(uri.clone()).body(Empty::new()).unwrap();
        pool.send(req).await.unwrap()
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
            let (response, lease) = get(&pool, &uri).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            lease.expect("an HTTP/1.1 lease").release();
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for three requests"
        );

        // The body is left unread and the lease dropped: not reusable.
        let (response, lease) = get(&pool, &uri).await;
        drop((response, lease));
        eventually("the cut connection closed", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
        let (response, _lease) = get(&pool, &uri).await;
        assert_eq!(response.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (uri, accepted, open) = upstream().await;
        let pool = pool(Duration::from_millis(100));
        let (response, lease) = get(&pool, &uri).await;
        response.into_body().collect().await.unwrap();
        lease.unwrap().release();
        assert_eq!(open.load(Ordering::SeqCst), 1);
        // Nobody asks for it again: the reaper closes it.
        eventually("the idle connection closed", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
        let (response, _lease) = get(&pool, &uri).await;
        assert_eq!(response.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
