//! Upstream HTTP/2, on the h2 crate: one shared [`Connection`] per TLS
//! connection whose ALPN chose `h2`, a [`Lease`] per stream, and the send
//! of one request ([`Exchange`]) up to its response head, whose body
//! ([`ResponseBody`]) reads the rest.
//!
//! Why not hyper's HTTP/2 client: it hides the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` and queues the streams beyond it
//! inside itself, where the pool cannot see them; the pool needs the limit
//! to open another connection instead (see [`crate::pool`]). With h2 the
//! pool reads the limit and counts the streams it leased.
//!
//! The request body is sent from the request's own task, not a task of
//! its own: the send future writes it while it waits for the head, and
//! the response body goes on writing what is left (an upstream may answer
//! before it has read the whole request).
//!
//! A stream the upstream refused unprocessed (`REFUSED_STREAM`, or a
//! GOAWAY that names a lower stream) is given back with its head and its
//! body, so the pool can send it again on another connection: what of the
//! body was already sent is kept for that (shared `Bytes`, not copied), up
//! to [`REPLAY_LIMIT`].

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderValue, HOST, TE};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// The most of a request body kept to send again should its stream be
/// refused: an LLM request (a prompt with its context) is well within it;
/// a larger upload that is refused fails instead.
const REPLAY_LIMIT: usize = 64 * 1024;

/// Streams a new connection is expected to allow, for the requests that
/// wait for it, until the server's SETTINGS say (RFC 9113 recommends
/// servers allow at least 100). Until they arrive h2 itself puts no limit:
/// only the request that opened the connection uses it before then.
pub const ASSUMED_STREAMS: usize = 100;

/// The longest the requests waiting for a new connection wait for the
/// server's SETTINGS after the handshake.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why an HTTP/2 exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// The client's request body failed (the cause says how).
    #[error("request body: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
}

impl Error {
    /// The upstream broke the protocol (as opposed to resetting or going).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::H2(e) if e.reason() == Some(Reason::PROTOCOL_ERROR))
    }
}

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
pub struct Handshaken<D, S> {
    pub conn: Arc<Connection>,
    pub driver: D,
    pub settled: S,
}

/// Handshakes HTTP/2 on `io`.
///
/// The server's first frame is its SETTINGS, with its stream limit;
/// until it has arrived h2 puts no limit on new streams, and a server
/// that allows fewer refuses the streams beyond. So a PING goes out with the
/// preface, and its answer, which comes after the SETTINGS, settles the
/// limit: the request that opened the connection need not wait for it,
/// the requests that would share it do.
pub async fn handshake<T>(
    io: T,
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
pub struct Connection {
    sender: SendRequest<Bytes>,
    /// Streams leased and not yet given back.
    active: AtomicUsize,
    /// Its driver ended, or it refused a new stream (GOAWAY): it takes no
    /// more.
    closed: Arc<AtomicBool>,
    /// When its last stream was given back.
    idle_since: Mutex<Instant>,
}

impl Connection {
    /// A stream on it, if it is open and below the server's limit.
    pub fn lease(self: &Arc<Self>) -> Option<Lease> {
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
    pub fn stream_limit(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// No stream leased, since when.
    pub fn idle_since(&self) -> Option<Instant> {
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
pub struct Lease {
    conn: Arc<Connection>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.give_back();
    }
}

/// A request's head, kept until the response head arrives so that a
/// refused stream can go again.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn request(&self) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A request the upstream never processed, with what of its body was
/// already taken from the client: the pool sends it on another connection.
#[derive(Debug)]
pub struct Refused<B> {
    head: Head,
    body: B,
    /// Taken from `body` and sent on the refused stream.
    taken: VecDeque<Bytes>,
    /// `body` has no more.
    body_done: bool,
}

impl<B> Refused<B> {
    /// Nothing of the body has been taken: it can go on any connection.
    pub fn into_untouched(self: Box<Self>) -> Result<Request<B>, Box<Self>> {
        // A body at its end of which nothing was taken is empty: it goes
        // as it is.
        if !self.taken.is_empty() {
            return Err(self);
        }
        let Refused { head, body, .. } = *self;
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.headers_mut() = head.headers;
        Ok(req)
    }
}

/// How a send ended without a response head.
#[derive(Debug)]
pub enum Failed<B> {
    /// The stream was never opened (the connection was going away), or the
    /// upstream refused it unprocessed: it can go on another connection.
    Refused(Box<Refused<B>>),
    Failed(Error),
}

/// Sends `req` (absolute URI) on a leased stream. Over HTTP/2 the
/// authority travels in `:authority` only: `Host` is dropped, as Envoy
/// does (nginx answers a request with both 400, "client sent duplicate
/// host header").
pub fn send<B: Body<Data = Bytes> + Unpin>(lease: Lease, req: Request<B>) -> Exchange<B> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(HOST);
    // The hop-by-hop filter keeps `TE` only when it says `trailers` (in
    // any case); HTTP/2 wants exactly that spelling, and h2 refuses the
    // request otherwise.
    if parts.headers.contains_key(TE) {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    };
    let body_done = body.is_end_stream();
    resend(
        lease,
        Refused {
            head,
            body,
            taken: VecDeque::new(),
            body_done,
        },
    )
}

/// Sends a refused request again, on another connection's stream.
pub fn resend<B>(lease: Lease, refused: Refused<B>) -> Exchange<B> {
    Exchange {
        state: State::Ready(Some(Box::new(refused))),
        sender: lease.conn.sender.clone(),
        lease: Some(lease),
    }
}

/// The send of one request, up to its response head.
pub struct Exchange<B> {
    lease: Option<Lease>,
    sender: SendRequest<Bytes>,
    state: State<B>,
}

// The large variant is the one a send spends its time in.
#[allow(clippy::large_enum_variant)]
enum State<B> {
    /// Waiting for the connection to take a new stream.
    Ready(Option<Box<Refused<B>>>),
    /// Sent: the body goes up while the head is awaited.
    Head {
        head: Option<Head>,
        response: ResponseFuture,
        pipe: Option<Pipe<B>>,
    },
}

/// Marks the leased stream's connection closed: it took no new stream.
fn close(lease: &Option<Lease>) {
    if let Some(lease) = lease {
        lease.conn.close();
    }
}

impl<B> Future for Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<Response<ResponseBody<B>>, Failed<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Ready(refused) => {
                    if ready!(this.sender.poll_ready(cx)).is_err() {
                        // Going away, or gone: no stream was opened.
                        close(&this.lease);
                        let refused = refused.take().expect("polled after completion");
                        return Poll::Ready(Err(Failed::Refused(refused)));
                    }
                    let Refused {
                        head,
                        body,
                        taken,
                        body_done,
                    } = *refused.take().expect("polled after completion");
                    let end = body_done && taken.is_empty();
                    match this.sender.send_request(head.request(), end) {
                        Ok((response, tx)) => {
                            // A bodiless request's pipe is done at once;
                            // it holds the body for a resend.
                            let pipe = Pipe {
                                body,
                                tx,
                                queued: taken,
                                body_done,
                                kept: Some(VecDeque::new()),
                                kept_len: 0,
                                done: end,
                            };
                            this.state = State::Head {
                                head: Some(head),
                                response,
                                pipe: Some(pipe),
                            };
                        }
                        Err(e) if !(e.is_go_away() || e.is_io()) => {
                            // Not the connection's doing (a field h2
                            // refuses): this request fails, the
                            // connection stays.
                            return Poll::Ready(Err(Failed::Failed(Error::H2(e))));
                        }
                        Err(_) => {
                            close(&this.lease);
                            let refused = Refused {
                                head,
                                body,
                                taken,
                                body_done,
                            };
                            return Poll::Ready(Err(Failed::Refused(Box::new(refused))));
                        }
                    }
                }
                State::Head {
                    head,
                    response,
                    pipe,
                } => {
                    if let Some(p) = pipe {
                        match p.poll(cx) {
                            Poll::Pending => {}
                            // The client went or sent too much: nothing
                            // to wait for.
                            Poll::Ready(Err(e @ Error::Body(_))) => {
                                return Poll::Ready(Err(Failed::Failed(e)))
                            }
                            // Reset by the upstream: its answer, or its
                            // error, says why (a refusal among them: the
                            // pipe keeps what a resend needs).
                            Poll::Ready(Err(Error::H2(_))) => p.done = true,
                            // Sent whole; kept only while it may be sent
                            // again.
                            Poll::Ready(Ok(())) if p.kept.is_none() => *pipe = None,
                            Poll::Ready(Ok(())) => {}
                        }
                    }
                    let result = ready!(Pin::new(response).poll(cx));
                    let lease = this.lease.take().expect("leased until the send ends");
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let pipe = pipe.take().filter(|p| !p.done).map(|mut p| {
                                p.kept = None;
                                Box::new(p)
                            });
                            Ok(response.map(|recv| ResponseBody {
                                recv,
                                pipe,
                                data_done: false,
                                _lease: lease,
                            }))
                        }
                        Err(e)
                            if is_refused(&e)
                                || (resendable(head.as_ref(), pipe.as_ref())
                                    && went_away(&e, &mut this.sender, cx)) =>
                        {
                            if e.is_go_away() {
                                lease.conn.close();
                            }
                            match refused(head.take(), pipe.take()) {
                                Some(refused) => Err(Failed::Refused(Box::new(refused))),
                                None => Err(Failed::Failed(Error::H2(e))),
                            }
                        }
                        Err(e) => Err(Failed::Failed(Error::H2(e))),
                    });
                }
            }
        }
    }
}

/// The upstream did not process the stream: it refused it, or its GOAWAY
/// names a lower stream as the last it processes (RFC 9113, 6.8).
fn is_refused(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM))
}

/// A GET, HEAD or OPTIONS without a body, of which nothing was sent but
/// its head: what the HTTP/1.1 client also sends again when its
/// connection closed before any answer.
fn resendable<B>(head: Option<&Head>, pipe: Option<&Pipe<B>>) -> bool {
    let idempotent = head.is_some_and(|h| {
        h.method == Method::GET || h.method == Method::HEAD || h.method == Method::OPTIONS
    });
    idempotent
        && pipe.is_some_and(|p| {
            p.body_done && p.queued.is_empty() && p.kept.as_ref().is_some_and(VecDeque::is_empty)
        })
}

/// The stream was cut with its connection (`e`, an I/O error) after the
/// upstream said GOAWAY without an error, before any answer. Streams up
/// to the GOAWAY's last one may have been processed (RFC 9113, 6.8), and
/// h2 does not tell which that was: so this is taken as a refusal only
/// for requests that are safe to send twice ([`resendable`]).
fn went_away(e: &h2::Error, sender: &mut SendRequest<Bytes>, cx: &mut Context<'_>) -> bool {
    e.is_io()
        && matches!(
            sender.poll_ready(cx),
            Poll::Ready(Err(gone)) if gone.is_go_away()
                && gone.is_remote()
                && gone.reason() == Some(Reason::NO_ERROR)
        )
}

/// The request again, if all that was taken of its body was kept.
fn refused<B>(head: Option<Head>, pipe: Option<Pipe<B>>) -> Option<Refused<B>> {
    let pipe = pipe?;
    let mut taken = pipe.kept?;
    // Taken but not yet sent, then: still to be sent.
    taken.extend(pipe.queued);
    Some(Refused {
        head: head?,
        body: pipe.body,
        taken,
        body_done: pipe.body_done,
    })
}

/// The request body on its way up, sent as the stream's window allows:
/// the client is read no faster than the upstream takes.
struct Pipe<B> {
    body: B,
    tx: SendStream<Bytes>,
    /// To send before the body's own data (what a refused stream had
    /// taken).
    queued: VecDeque<Bytes>,
    /// `body` has no more.
    body_done: bool,
    /// What was sent, while it may have to be sent again; `None` once past
    /// [`REPLAY_LIMIT`] (or once the head arrived).
    kept: Option<VecDeque<Bytes>>,
    kept_len: usize,
    /// Everything was sent.
    done: bool,
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Sends until the body ends (`Ok`), fails, or waits.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Room for at least a byte before anything is taken from the
            // client: h2 buffers what is sent past the window, so waiting
            // for it is the backpressure.
            self.tx.reserve_capacity(1);
            if self.tx.capacity() == 0 {
                loop {
                    match ready!(self.tx.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(Error::H2(e))),
                        None => {
                            return Poll::Ready(Err(Error::H2(h2::Error::from(Reason::CANCEL))))
                        }
                    }
                }
            } else if let Poll::Ready(reason) = self.tx.poll_reset(cx)? {
                return Poll::Ready(Err(Error::H2(reason.into())));
            }
            let data = match self.queued.pop_front() {
                Some(data) => data,
                None if self.body_done => {
                    self.tx.send_data(Bytes::new(), true)?;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                None => match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            self.body_done = self.body.is_end_stream();
                            data
                        }
                        Err(frame) => {
                            self.kept = None;
                            self.body_done = true;
                            if let Ok(trailers) = frame.into_trailers() {
                                self.tx.send_trailers(trailers)?;
                                self.done = true;
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                    },
                    Some(Err(e)) => {
                        self.tx.send_reset(Reason::CANCEL);
                        return Poll::Ready(Err(Error::Body(e.into())));
                    }
                    None => {
                        self.body_done = true;
                        continue;
                    }
                },
            };
            let end = self.body_done && self.queued.is_empty();
            self.keep(&data);
            self.tx.send_data(data, end)?;
            if end {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn keep(&mut self, data: &Bytes) {
        if let Some(kept) = &mut self.kept {
            self.kept_len += data.len();
            if self.kept_len <= REPLAY_LIMIT {
                kept.push_back(data.clone());
            } else {
                self.kept = None;
            }
        }
    }
}

/// An HTTP/2 response body; it also sends what is left of the request
/// body, and gives the stream's place back when dropped.
pub struct ResponseBody<B> {
    recv: RecvStream,
    /// Boxed: rare (an answer before the whole request was sent), and
    /// every open stream would carry its size.
    pipe: Option<Box<Pipe<B>>>,
    data_done: bool,
    _lease: Lease,
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h2::ResponseBody")
            .field("data_done", &self.data_done)
            .finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(pipe) = &mut this.pipe {
            // The upload's own failure is the upstream's to answer: it sees
            // the stream reset.
            if pipe.poll(cx).is_ready() {
                this.pipe = None;
            }
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read: the upstream may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Error::H2(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Error::H2(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
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
        let made = handshake(client).await.unwrap();
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
