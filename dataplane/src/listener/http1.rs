//! HTTP/1.1 on the listener side: the connection's task reads each request
//! head, hands the request to the proxy and writes the response, straight
//! from and to the socket, with the wire pieces of [`crate::http1`].
//!
//! Why not hyper's server: once our upstream client replaced hyper's,
//! hyper's server side was the largest cost left on the request path: its
//! dispatcher, a header-read timer made and dropped for every request, and
//! the channel a request body crosses (docs/BENCHMARKS.md). What a proxy
//! needs of it is small: parse a head with `httparse` (hyper's parser),
//! frame the body with the decoder our client uses, and write a head and a
//! body framed by length or by chunks. HTTP/2 (h2c) stays with hyper.
//!
//! The connection's read side is lent to a request body while it streams
//! up and comes back when the body was read to its end; a body left unread
//! (the upstream answered first, the client broke it off) closes the
//! connection after the response. While the task waits for the upstream,
//! or for more of the response body, it watches the client for a close: a
//! client that leaves drops its request, and the upstream request with it.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{ClientBody, ProxyBody};
use crate::deadline::Timer;
use crate::error::ProxyError;
use crate::http1::{
    self, BodyAborted, Inbound, InboundBody, RequestHead, ResponseFraming, ResponseWriter, Sending,
    Shared,
};
use crate::proxy::Proxy;
use crate::write_stall::WriteStallTimeout;

/// Why a client connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("client connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("no request head within {0:?} (header read timeout)")]
    HeadTimeout(Duration),
    #[error("client closed the connection inside a request head")]
    ClosedInHead,
    #[error(transparent)]
    Aborted(#[from] BodyAborted),
}

/// Serves one HTTP/1 client connection until it closes, fails, or is idle
/// when `shutdown` fires; a request in flight then finishes first.
/// `header_timeout`: the longest wait for a request head, between requests
/// too.
///
/// The connection's task is this future, sized for its largest state, and
/// a local that was ever borrowed keeps its room in it until its scope
/// ends, moved out or not. So the steps between the awaits that take a
/// request head or a response apart are functions of their own, and each
/// await's values live in a block that ends with it: neither the head,
/// the request nor the response's parts take room beside the upstream
/// request or the streaming body
/// (`listener::tests::the_connection_task_stays_small`).
pub(crate) async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    proxy: Arc<Proxy>,
    shutdown: &CancellationToken,
    header_timeout: Duration,
) -> Result<(), ServeError> {
    let (read, write) = stream.into_split();
    let mut inbound = Some(Inbound::new(read));
    // Where request bodies give the read side back; made for the first.
    let mut shared: Option<Arc<Shared>> = None;
    let mut out = ResponseWriter::new(WriteStallTimeout::new(write, proxy.idle_timeout));
    let mut head_timer = HeadTimer::new(header_timeout);
    let mut stop = Stop {
        token: shutdown,
        cancelled: pin!(shutdown.cancelled()),
        armed: false,
    };
    loop {
        let (request, asked) = 'read: {
            // The read side is ours, or back from the last body read
            // whole; if neither, that body was left unread and the stream
            // is lost.
            let Some(mut reader) = inbound.take().or_else(|| shared.as_ref()?.take()) else {
                return Ok(());
            };
            reader.rest();
            let refusal = match read_head(&mut reader, &mut head_timer, &mut stop).await? {
                None => return Ok(()),
                Some(Ok(head)) => break 'read request_of(head, reader, &mut inbound, &mut shared),
                Some(Err(refusal)) => proxy.refuse_unreadable(refused(refusal), client),
            };
            // Boxed: a rare path, kept out of the connection's task.
            Box::pin(out.refuse(refusal)).await;
            return Ok(());
        };

        // Wait for the response, writing `100 Continue` if the body asks,
        // and watching the client for a close. The request future lives in
        // this block only: its room in the connection's task is shared
        // with what the body's streaming needs, not added to it.
        let Some(response) = ({
            let mut forward = pin!(proxy.clone().handle(request, client, &mut head_timer.timer));
            poll_fn(|cx| {
                if let Poll::Ready(Ok(response)) = forward.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                if shared
                    .as_ref()
                    .is_some_and(|s| s.wants_continue.swap(false, Ordering::Relaxed))
                {
                    out.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                if let Poll::Ready(Err(_)) = out.poll_flush(cx) {
                    return Poll::Ready(None);
                }
                // A body read whole has given the read side back: watch it
                // too (a client that posted a prompt and left must not keep
                // its generation running).
                if inbound.is_none() {
                    inbound = shared.as_ref().and_then(|s| s.take());
                }
                match inbound.as_mut().map(|r| r.poll_gone(cx, false)) {
                    Some(Poll::Ready(())) => Poll::Ready(None),
                    _ => Poll::Pending,
                }
            })
            .await
        }) else {
            // The client left: dropping the request future drops the
            // upstream request.
            return Ok(());
        };

        if inbound.is_none() {
            inbound = shared.as_ref().and_then(|s| s.take());
        }
        let keep_alive = {
            let reusable = inbound.is_some() && !shutdown.is_cancelled();
            let mut answer = write_head(&mut out, response, asked, reusable);
            // One wait for both kinds of answer: the task keeps room for
            // `answer` at this one await only.
            let sent = poll_fn(|cx| {
                if answer.switched {
                    out.poll_flush(cx)
                        .map_ok(|()| true)
                        .map_err(ServeError::from)
                } else {
                    out.poll_body(cx, &mut answer.body, &mut answer.sending, inbound.as_mut())
                        .map_err(ServeError::from)
                }
            })
            .await?;
            if answer.switched {
                // The tunnel needs the client's read side: a request with
                // an unread body has none to give.
                if let (Some(tunnel), Some(reader)) = (answer.body.take_tunnel(), inbound.take()) {
                    // Whole again, with what the client sent past its head
                    // read first. (The tunnel's idle timeout covers a
                    // client that stops reading; the write-stall wrapper is
                    // not needed.)
                    if let Some(client) = reader.upgrade(out.into_inner()) {
                        proxy.tunnels.spawn(client, tunnel);
                    }
                }
                return Ok(());
            }
            sent && answer.keep_alive
        };
        if !keep_alive {
            out.shutdown().await;
            return Ok(());
        }
    }
}

/// What the connection keeps of a request while its response is awaited
/// and written.
#[derive(Clone, Copy)]
struct Asked {
    keep_alive: bool,
    http10: bool,
    /// The client accepts trailer fields.
    trailers: bool,
    head_request: bool,
}

/// The request to forward, from its head. A body takes the read side
/// with it, and gives it back through `shared` when it was read whole;
/// without one, the read side goes back to `inbound`.
fn request_of(
    head: RequestHead,
    reader: Inbound,
    inbound: &mut Option<Inbound>,
    shared: &mut Option<Arc<Shared>>,
) -> (http::Request<ClientBody>, Asked) {
    let RequestHead {
        request,
        body,
        keep_alive,
        http10,
        trailers,
        expects_continue,
    } = head;
    let asked = Asked {
        keep_alive,
        http10,
        trailers,
        head_request: request.method() == Method::HEAD,
    };
    let body = match body {
        None => {
            *inbound = Some(reader);
            ClientBody::Empty
        }
        Some(decoder) => {
            let shared = shared.get_or_insert_with(Arc::default).clone();
            ClientBody::H1(InboundBody::new(reader, decoder, shared, expects_continue))
        }
    };
    (request.map(|()| body), asked)
}

/// A response whose head is queued, and what its body needs.
struct Answer {
    /// A 101: the body holds the upstream's switched connection.
    switched: bool,
    body: ProxyBody,
    sending: Sending,
    /// The connection can carry another request after this one.
    keep_alive: bool,
}

/// Queues the response's head and lets it go: its fields share the
/// upstream's read buffer (4 KiB), and an event stream may stay open for
/// minutes. `reusable`: the connection could carry another request after
/// this one (it is not shutting down, and has its read side: no request
/// body left unread, or still going up beside the response); if not, the
/// head says so now.
fn write_head(
    out: &mut ResponseWriter,
    response: http::Response<ProxyBody>,
    asked: Asked,
    reusable: bool,
) -> Answer {
    let (parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let framing = ResponseFraming::None;
        out.head(&parts, framing, true, false);
        return Answer {
            switched: true,
            body,
            sending: Sending::new(framing, false),
            keep_alive: false,
        };
    }
    let framing = ResponseFraming::of(&parts, &body, asked.head_request, asked.http10);
    let keep_alive = asked.keep_alive && reusable && framing != ResponseFraming::UntilClose;
    out.head(&parts, framing, keep_alive, asked.http10);
    Answer {
        switched: false,
        body,
        sending: Sending::new(framing, asked.trailers),
        keep_alive,
    }
}

/// The proxy's error for a refused head: the same status, typed for the
/// error body (SPEC §3).
fn refused(refusal: http1::Refusal) -> ProxyError {
    match refusal {
        http1::Refusal::TooLarge(what) => ProxyError::HeadTooLarge(what),
        http1::Refusal::Malformed(what) => ProxyError::BadRequest(what),
    }
}

/// Shutdown, as an idle connection watches for it.
struct Stop<'a, F> {
    token: &'a CancellationToken,
    cancelled: Pin<&'a mut F>,
    /// `cancelled` was polled once: the task's waker is registered, and
    /// the token's flag is all later looks need (a poll of a registered
    /// waiter takes the token's lock to compare wakers, once a request).
    armed: bool,
}

impl<F: Future<Output = ()>> Stop<'_, F> {
    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> bool {
        if self.token.is_cancelled() {
            return true;
        }
        if !self.armed {
            self.armed = true;
            return self.cancelled.as_mut().poll(cx).is_ready();
        }
        false
    }
}

/// The next request head: `None` when the client closed between requests
/// or `stop` fired while it was idle; `Some(Err)` for a head to refuse.
async fn read_head<F: Future<Output = ()>>(
    reader: &mut Inbound,
    timer: &mut HeadTimer,
    stop: &mut Stop<'_, F>,
) -> Result<Option<Result<RequestHead, http1::Refusal>>, ServeError> {
    timer.start = None;
    poll_fn(|cx| loop {
        if !reader.read.is_empty() {
            match http1::parse_request_head(&mut reader.read) {
                Ok(Some(head)) => return Poll::Ready(Ok(Some(Ok(head)))),
                Ok(None) => {}
                Err(refusal) => return Poll::Ready(Ok(Some(Err(refusal)))),
            }
        } else if stop.poll_stopped(cx) {
            return Poll::Ready(Ok(None));
        }
        match reader.poll_fill(cx) {
            Poll::Ready(Ok(0)) if reader.read.is_empty() => return Poll::Ready(Ok(None)),
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(ServeError::ClosedInHead)),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending if timer.poll_expired(cx) => {
                return Poll::Ready(Err(ServeError::HeadTimeout(timer.timeout)))
            }
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// The header-read deadline, kept with the connection's one [`Timer`]
/// (which each request borrows for its own deadlines while the
/// connection waits for its response): a connection that serves a
/// request every few milliseconds costs a clock read per request, not a
/// timer set and cancelled (as hyper's did).
struct HeadTimer {
    timeout: Duration,
    /// When the wait for the current head began.
    start: Option<Instant>,
    timer: Timer,
}

impl HeadTimer {
    fn new(timeout: Duration) -> HeadTimer {
        HeadTimer {
            timeout,
            start: None,
            timer: Timer::new(),
        }
    }

    /// Whether the current head is overdue; if not, the task is woken by
    /// the deadline.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = *self.start.get_or_insert_with(Instant::now) + self.timeout;
        self.timer.poll_until(cx, deadline).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use crate::connect::UpstreamSettings;
    use crate::metrics::Metrics;
    use crate::policy::TargetPolicy;
    use crate::routing::Snapshot;
    use crate::state::RoutingState;
    use crate::tunnel::Tunnels;
    use crate::upstream::Upstream;

    /// A refused head is answered with the status and type SPEC §3 gives
    /// it: 431 (typed `bad_request`) for a head too large, 400 for one
    /// malformed.
    #[test]
    fn refused_heads_keep_their_status_and_type() {
        let large = refused(http1::Refusal::TooLarge(
            "request head larger than 64 KiB".into(),
        ));
        assert_eq!(large.status().as_u16(), 431);
        assert_eq!(large.kind(), "bad_request");
        assert_eq!(large.to_string(), "request head larger than 64 KiB");
        let bad = refused(http1::Refusal::Malformed("malformed request head".into()));
        assert_eq!(bad.status().as_u16(), 400);
        assert_eq!(bad.kind(), "bad_request");
    }

    // The connection loop on socket pairs: the test writes the client's
    // bytes and reads the raw responses, `serve` runs on the accepted
    // side, and a real `Proxy` forwards to an origin written by hand
    // below, which reports what it saw.

    /// The longest any single wait of these tests may take.
    const WAIT: Duration = Duration::from_secs(5);

    /// Awaits `f`, failing the test if it takes longer than [`WAIT`].
    async fn within<F: Future>(what: &str, f: F) -> F::Output {
        timeout(WAIT, f)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// What the origin saw, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        /// A request head (its request line).
        Head(String),
        /// A request read whole: its request line and body.
        Request(String, Vec<u8>),
        /// The connection closed inside a body, after these bytes of it.
        Truncated(Vec<u8>),
        /// The connection closed (between requests, or while the origin
        /// streamed its response).
        Closed,
    }

    /// How the origin answers.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200` with a body that names the request: its request line
        /// and its body.
        Echo,
        /// A chunked `200` with one chunk, then nothing more until the
        /// connection closes.
        Stalled,
    }

    /// An origin on 127.0.0.1:0; what it sees comes out of the receiver.
    async fn origin(answer: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(origin_connection(stream, answer, seen.clone()));
            }
        });
        (addr, events)
    }

    async fn origin_connection(
        mut stream: TcpStream,
        answer: Answer,
        seen: mpsc::UnboundedSender<Seen>,
    ) {
        let mut buf = Vec::new();
        loop {
            // The head: up to its blank line.
            let end = loop {
                if let Some(at) = find(&buf, b"\r\n\r\n") {
                    break at + 4;
                }
                if !fill(&mut stream, &mut buf).await {
                    let _ = seen.send(Seen::Closed);
                    return;
                }
            };
            let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
            let line = head.lines().next().unwrap().to_owned();
            let _ = seen.send(Seen::Head(line.clone()));
            // The body, framed by its length (the only framing these
            // tests send).
            let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
            while buf.len() < length {
                if !fill(&mut stream, &mut buf).await {
                    let _ = seen.send(Seen::Truncated(buf));
                    return;
                }
            }
            let body: Vec<u8> = buf.drain(..length).collect();
            let _ = seen.send(Seen::Request(line.clone(), body.clone()));
            match answer {
                Answer::Echo => {
                    let mut content = line.into_bytes();
                    content.push(b' ');
                    content.extend_from_slice(&body);
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        content.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(&content);
                    if stream.write_all(&response).await.is_err() {
                        let _ = seen.send(Seen::Closed);
                        return;
                    }
                }
                Answer::Stalled => {
                    let response =
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                    if stream.write_all(response.as_bytes()).await.is_ok() {
                        // Nothing more: wait for the proxy to close.
                        while fill(&mut stream, &mut buf).await {}
                    }
                    let _ = seen.send(Seen::Closed);
                    return;
                }
            }
        }
    }

    /// Reads more into `buf`; false when the peer closed (or reset).
    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// The value of the first field `name` (lower case) of a head.
    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// A proxy that maps `/up` to `origin`.
    fn proxy(origin: SocketAddr) -> Arc<Proxy> {
        let state = Arc::new(RoutingState::new(Metrics::new()));
        let target = format!("http://{origin}");
        state.apply(Snapshot::build([("/up", target)], 1));
        let upstream = Upstream::new(&UpstreamSettings {
            policy: TargetPolicy::Any,
            connect_timeout: WAIT,
            ca_file: None,
        })
        .unwrap();
        Arc::new(Proxy {
            state,
            upstream,
            tunnels: Tunnels::new(WAIT, CancellationToken::new()),
            response_header_timeout: WAIT,
            idle_timeout: WAIT,
            max_request_body: None,
            forwarded_headers: false,
            log: crate::access_log::RequestLog::off(),
        })
    }

    /// The test's side of a client connection, and what it has read but
    /// not consumed yet.
    struct Client {
        stream: TcpStream,
        read: Vec<u8>,
    }

    impl Client {
        async fn send(&mut self, bytes: &[u8]) {
            within("a client write", self.stream.write_all(bytes))
                .await
                .unwrap();
        }

        /// The next `n` bytes from the proxy.
        async fn bytes(&mut self, n: usize) -> Vec<u8> {
            while self.read.len() < n {
                let more = within("a response", fill(&mut self.stream, &mut self.read)).await;
                assert!(
                    more,
                    "closed after {:?}",
                    String::from_utf8_lossy(&self.read)
                );
            }
            self.read.drain(..n).collect()
        }

        /// The next head from the proxy, up to its blank line.
        async fn head(&mut self) -> String {
            loop {
                if let Some(at) = find(&self.read, b"\r\n\r\n") {
                    let head = self.read.drain(..at + 4).collect();
                    return String::from_utf8(head).unwrap();
                }
                let more = within("a response head", fill(&mut self.stream, &mut self.read)).await;
                assert!(
                    more,
                    "closed after {:?}",
                    String::from_utf8_lossy(&self.read)
                );
            }
        }

        /// The next response, framed by its length: its head and body.
        async fn response(&mut self) -> (String, String) {
            let head = self.head().await;
            let length = header(&head, "content-length").expect("a length");
            let body = self.bytes(length.parse().unwrap()).await;
            (head, String::from_utf8(body).unwrap())
        }

        /// Reads until the proxy closes: nothing may come before that.
        async fn closed(&mut self) {
            while within("the close", fill(&mut self.stream, &mut self.read)).await {}
            assert!(
                self.read.is_empty(),
                "unexpected {:?}",
                String::from_utf8_lossy(&self.read)
            );
        }
    }

    /// A client connected to a listener whose accepted side `serve` runs
    /// on, with `proxy`.
    async fn connect(proxy: Arc<Proxy>) -> (Client, JoinHandle<Result<(), ServeError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let served = tokio::spawn(async move {
            let shutdown = CancellationToken::new();
            serve(accepted, peer, proxy, &shutdown, WAIT).await
        });
        let client = Client {
            stream,
            read: Vec::new(),
        };
        (client, served)
    }

    async fn next(events: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        within("the origin", events.recv())
            .await
            .expect("the origin is running")
    }

    /// The origin's events up to and including a request read whole.
    async fn next_request(events: &mut mpsc::UnboundedReceiver<Seen>) -> (String, Vec<u8>) {
        loop {
            match next(events).await {
                Seen::Head(_) => {}
                Seen::Request(line, body) => return (line, body),
                other => panic!("{other:?}"),
            }
        }
    }

    /// `serve`'s result, once it returns.
    async fn ended(served: JoinHandle<Result<(), ServeError>>) -> Result<(), ServeError> {
        within("serve to return", served).await.unwrap()
    }

    #[tokio::test]
    async fn keep_alive_serves_requests_one_after_the_other() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client
            .send(b"GET /up/one HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        let (head, body) = client.response().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(&head, "connection"), None, "{head}");
        assert_eq!(body, "GET /one HTTP/1.1 ");
        assert_eq!(next_request(&mut origin).await.0, "GET /one HTTP/1.1");

        client
            .send(b"POST /up/two HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
            .await;
        let (head, body) = client.response().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(&head, "connection"), None, "{head}");
        assert_eq!(body, "POST /two HTTP/1.1 abc");
        let request = next_request(&mut origin).await;
        assert_eq!(request, ("POST /two HTTP/1.1".into(), b"abc".to_vec()));

        // Still open after both: the client's close is what ends it, and
        // nothing came before it.
        assert!(!served.is_finished());
        client.stream.shutdown().await.unwrap();
        client.closed().await;
        ended(served).await.unwrap();
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client
            .send(
                b"POST /up/first HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
                  GET /up/second HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await;
        let (head, body) = client.response().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, "POST /first HTTP/1.1 hello");
        let (head, body) = client.response().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, "GET /second HTTP/1.1 ");
        let first = next_request(&mut origin).await;
        assert_eq!(first, ("POST /first HTTP/1.1".into(), b"hello".to_vec()));
        let second = next_request(&mut origin).await;
        assert_eq!(second, ("GET /second HTTP/1.1".into(), Vec::new()));

        client.stream.shutdown().await.unwrap();
        client.closed().await;
        ended(served).await.unwrap();
    }

    #[tokio::test]
    async fn expect_continue_gets_100_before_the_body_is_sent() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client
            .send(
                b"POST /up/upload HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\
                  content-length: 4\r\n\r\n",
            )
            .await;
        // The body is sent only once the proxy asked for it.
        assert_eq!(client.head().await, "HTTP/1.1 100 Continue\r\n\r\n");
        client.send(b"data").await;
        let (head, body) = client.response().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, "POST /upload HTTP/1.1 data");
        let request = next_request(&mut origin).await;
        assert_eq!(request, ("POST /upload HTTP/1.1".into(), b"data".to_vec()));

        client.stream.shutdown().await.unwrap();
        client.closed().await;
        ended(served).await.unwrap();
    }

    #[tokio::test]
    async fn http10_without_keep_alive_is_closed_after_its_response() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client
            .send(b"GET /up/old HTTP/1.0\r\nhost: a\r\n\r\n")
            .await;
        let (head, body) = client.response().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        assert_eq!(body, "GET /old HTTP/1.1 ");
        assert_eq!(next_request(&mut origin).await.0, "GET /old HTTP/1.1");
        // Closed by the proxy: the client's side is still open.
        client.closed().await;
        ended(served).await.unwrap();
    }

    #[tokio::test]
    async fn http10_with_keep_alive_stays_open() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        for path in ["a", "b"] {
            let request = format!("GET /up/{path} HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
            client.send(request.as_bytes()).await;
            let (head, body) = client.response().await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(header(&head, "connection"), Some("keep-alive"), "{head}");
            assert_eq!(body, format!("GET /{path} HTTP/1.1 "));
            assert_eq!(
                next_request(&mut origin).await.0,
                format!("GET /{path} HTTP/1.1")
            );
        }

        assert!(!served.is_finished());
        client.stream.shutdown().await.unwrap();
        client.closed().await;
        ended(served).await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_closes_inside_a_head_is_an_error() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client.send(b"GET /up/cut HTTP/1.1\r\nhost: a\r\n").await;
        drop(client);
        let result = ended(served).await;
        assert!(
            matches!(result, Err(ServeError::ClosedInHead)),
            "{result:?}"
        );
        // Nothing went upstream.
        assert!(origin.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_client_that_closes_inside_a_body_drops_the_upstream_request() {
        let (addr, mut origin) = origin(Answer::Echo).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client
            .send(b"POST /up/cut HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        assert_eq!(
            next(&mut origin).await,
            Seen::Head("POST /cut HTTP/1.1".into())
        );
        drop(client);
        ended(served).await.unwrap();
        // The origin's connection closes with the body incomplete.
        match next(&mut origin).await {
            Seen::Truncated(body) => assert!(body.len() <= 10, "{body:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_that_closes_inside_a_response_closes_the_upstream() {
        let (addr, mut origin) = origin(Answer::Stalled).await;
        let (mut client, served) = connect(proxy(addr)).await;

        client
            .send(b"GET /up/stream HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        let head = client.head().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{head}"
        );
        assert_eq!(client.bytes(10).await, b"5\r\nfirst\r\n");
        assert_eq!(next_request(&mut origin).await.0, "GET /stream HTTP/1.1");
        drop(client);
        ended(served).await.unwrap();
        assert_eq!(next(&mut origin).await, Seen::Closed);
    }
}
