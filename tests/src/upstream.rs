//! Upstream servers on 127.0.0.1:0: a hyper server with a handler, a raw
//! TCP server for protocol faults, and TLS with ALPN.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpBody = BoxBody<Bytes, BoxError>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

pub fn full(data: impl Into<Bytes>) -> UpBody {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body fed frame by frame from a channel; dropping the sender ends it,
/// sending an error aborts it.
pub fn channel_body() -> (mpsc::Sender<Result<Bytes, BoxError>>, UpBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// Counts of what an upstream saw.
#[derive(Default, Debug)]
pub struct Counters {
    pub accepted: AtomicUsize,
    pub open: AtomicUsize,
}

impl Counters {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// A running upstream; its accept loop and connections stop on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `n` connections have been accepted.
    pub async fn wait_accepted(&self, n: usize) {
        crate::eventually(
            "upstream connections",
            std::time::Duration::from_secs(3),
            || async { (self.counters.accepted() >= n).then_some(()) },
        )
        .await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct OpenGuard(Arc<Counters>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, counters: Arc<Counters>, on_conn: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(counters.clone());
        let fut = on_conn(stream);
        // Connections live in the JoinSet, so aborting the accept loop
        // closes them all.
        conns.spawn(async move {
            fut.await;
            drop(guard);
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one connection with `handler`.
async fn serve_http<I>(io: I, handler: Handler)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

/// An HTTP/1.1 + h2c upstream running `handler` for every request.
pub async fn http(handler: Handler) -> Upstream {
    raw(move |stream| serve_http(stream, handler.clone())).await
}

/// A raw TCP upstream: `on_conn` gets each accepted stream.
pub async fn raw<F, Fut>(on_conn: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(accept_loop(listener, counters.clone(), on_conn));
    Upstream {
        addr,
        counters,
        task,
    }
}

/// An HTTPS upstream offering h2 and http/1.1 by ALPN, with a certificate
/// for 127.0.0.1 and `localhost` signed by `ca`.
pub async fn https(handler: Handler, ca: &crate::tls::TestCa) -> Upstream {
    https_with(handler, ca.acceptor()).await
}

/// An HTTPS upstream offering http/1.1 only by ALPN.
pub async fn https_h1(handler: Handler, ca: &crate::tls::TestCa) -> Upstream {
    https_with(handler, ca.acceptor_offering(&[b"http/1.1"])).await
}

/// An HTTPS upstream speaking HTTP/2 only (hyper's server), allowing
/// `max_streams` concurrent streams a connection. With `goaway_after`,
/// each connection shuts down gracefully (GOAWAY, then its streams run to
/// their end) once it has taken that many requests, as nginx does after
/// `keepalive_requests`.
pub async fn https_h2(
    handler: Handler,
    ca: &crate::tls::TestCa,
    max_streams: u32,
    goaway_after: Option<usize>,
) -> Upstream {
    let acceptor = ca.acceptor_offering(&[b"h2"]);
    raw(move |stream| {
        let (handler, acceptor) = (handler.clone(), acceptor.clone());
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let taken = Arc::new(AtomicUsize::new(0));
            let enough = Arc::new(tokio::sync::Notify::new());
            let service = service_fn({
                let enough = enough.clone();
                move |req| {
                    let handler = handler.clone();
                    if goaway_after == Some(taken.fetch_add(1, Ordering::SeqCst) + 1) {
                        enough.notify_one();
                    }
                    async move { Ok::<_, Infallible>(handler(req).await) }
                }
            });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.max_concurrent_streams(max_streams);
            {
                let conn = builder.serve_connection(TokioIo::new(&mut tls), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = enough.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            }
            // A lingering close, as nginx's: what the client sent after the
            // last GOAWAY is read and dropped for a moment, so the close
            // does not reset the connection before the client has read
            // that GOAWAY (a reset would discard it unread).
            let mut sink = [0u8; 4096];
            let linger = async { while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), linger).await;
        }
    })
    .await
}

async fn https_with(handler: Handler, acceptor: tokio_rustls::TlsAcceptor) -> Upstream {
    raw(move |stream| {
        let (handler, acceptor) = (handler.clone(), acceptor.clone());
        async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                serve_http(tls, handler).await;
            }
        }
    })
    .await
}

/// A `text/event-stream` upstream sending `events` events (`data: event i`)
/// `gap` apart.
pub async fn sse(events: usize, gap: std::time::Duration) -> Upstream {
    http(handler(move |_req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..events {
                let event = Bytes::from(format!("data: event {i}\n\n"));
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    }))
    .await
}

/// A `text/event-stream` upstream that sends the first of `events` events
/// at once and the others `gap` apart only once the returned sender says
/// `true`: a test can hold a stream open for as long as it needs, and a
/// client that gets the first event knows nothing buffered it.
pub async fn sse_held(
    events: usize,
    gap: std::time::Duration,
) -> (Upstream, tokio::sync::watch::Sender<bool>) {
    let (release, released) = tokio::sync::watch::channel(false);
    let up = http(handler(move |_req: Request<Incoming>| {
        let mut released = released.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let event = |i| Ok(Bytes::from(format!("data: event {i}\n\n")));
                if tx.send(event(0)).await.is_err() || released.wait_for(|r| *r).await.is_err() {
                    return;
                }
                for i in 1..events {
                    tokio::time::sleep(gap).await;
                    if tx.send(event(i)).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    }))
    .await;
    (up, release)
}

/// Handler that answers with what it received: method, URI, version,
/// headers and the body's length, as JSON.
pub fn echo_handler() -> Handler {
    handler(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            headers
                .entry(k.as_str().to_owned())
                .or_insert_with(|| serde_json::Value::Array(vec![]))
                .as_array_mut()
                .unwrap()
                .push(v.to_str().unwrap_or("<binary>").into());
        }
        let len = count_body(body).await;
        let json = serde_json::json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": len,
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(full(json.to_string()))
            .unwrap()
    })
}

/// Reads a body to its end, returning its length (or `u64::MAX` on error).
pub async fn count_body<B>(mut body: B) -> u64
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return u64::MAX,
        }
    }
    n
}

/// An upstream that answers an upgrade with 101 and then echoes bytes.
pub async fn websocket_echo() -> Upstream {
    use tokio::io::AsyncWriteExt;
    http(handler(|mut req: Request<Incoming>| async move {
        if req.headers().get("upgrade").is_none() {
            return Response::builder()
                .status(400)
                .body(full("upgrade required"))
                .unwrap();
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "test")
            .body(full(""))
            .unwrap()
    }))
    .await
}
