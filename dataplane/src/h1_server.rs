//! HTTP/1.1 on the listener side: the connection's task reads each request
//! head, hands the request to the proxy and writes the response, straight
//! from and to the socket.
//!
//! Why not hyper's server: once our upstream client (`h1.rs`) replaced
//! hyper's, hyper's server side was the largest cost left on the request
//! path: its dispatcher, a header-read timer made and dropped for every
//! request, and the channel a request body crosses (docs/BENCHMARKS.md,
//! "Our own HTTP/1.1 server"). What a proxy needs of it is small: parse a
//! head with `httparse` (hyper's parser), frame the body with the decoder
//! our client uses, and write a head and a body framed by length or by
//! chunks. HTTP/2 (h2c) stays with hyper.
//!
//! The connection's read side is lent to a request body while it streams
//! up and comes back when the body was read to its end; a body left unread
//! (the upstream answered first, the client broke it off) closes the
//! connection after the response. While the task waits for the upstream,
//! or for more of the response body, it watches the client for a close: a
//! client that leaves drops its request, and the upstream request with it.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{ClientBody, ProxyBody};
use crate::deadline::Timer;
use crate::error::ProxyError;
use crate::h1::{self, Decoder, Found, Next, Upgraded};
use crate::headers::{has_token, list_tokens};
use crate::proxy::Proxy;
use crate::write_stall::WriteStallTimeout;

/// Largest request head (request line and fields); larger gets 431. API
/// requests carry a few short fields; nginx allows 32 KiB by default.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most fields in a request head (hyper's default); more gets 431.
const MAX_HEADERS: usize = 100;
/// Response bytes queued before the body is polled for more: the client's
/// pace sets the upstream's.
const HIGH_WATER: usize = 64 * 1024;
/// Frames up to this size are copied behind the head, so a head and a
/// small body leave in one write; larger ones are written from where they
/// are.
const COPY_UP_TO: usize = 16 * 1024;
/// Segments handed to one vectored write.
const MAX_IOVS: usize = 32;
/// The first read of a request takes up to this much, like nginx's
/// `client_header_buffer_size` (1 KiB): API request heads are a few
/// hundred bytes. Bodies grow the reads (doubling, as the upstream
/// client's do). Every client connection holds one such buffer.
const INIT_READ: usize = 2 * 1024;

/// Why a client connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("no request head within {0:?} (header read timeout)")]
    HeadTimeout(Duration),
    #[error("client closed the connection inside a request head")]
    ClosedInHead,
    #[error("response body failed, connection aborted: {0}")]
    Aborted(String),
}

/// Serves one HTTP/1 client connection until it closes, fails, or is idle
/// when `shutdown` fires; a request in flight then finishes first.
/// `header_timeout`: the longest wait for a request head, between requests
/// too.
pub async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    proxy: Arc<Proxy>,
    shutdown: &CancellationToken,
    header_timeout: Duration,
) -> Result<(), Error> {
    let (read, write) = stream.into_split();
    let mut inbound = Some(Inbound::new(read));
    // Where request bodies give the read side back; made for the first.
    let mut shared: Option<Arc<Shared>> = None;
    let mut out = Out::new(WriteStallTimeout::new(write, proxy.idle_timeout));
    let mut head_timer = HeadTimer::new(header_timeout);
    let mut stop = Stop {
        token: shutdown,
        cancelled: pin!(shutdown.cancelled()),
        armed: false,
    };
    loop {
        // The read side is ours, or back from the last body read whole; if
        // neither, that body was left unread and the stream is lost.
        let Some(mut reader) = inbound.take().or_else(|| shared.as_ref()?.take()) else {
            return Ok(());
        };
        reader.rest();
        let head = match read_head(&mut reader, &mut head_timer, &mut stop).await? {
            None => return Ok(()),
            Some(Ok(head)) => head,
            Some(Err(refusal)) => {
                out.refuse(refusal).await;
                return Ok(());
            }
        };
        let Head {
            mut request,
            body,
            mut keep_alive,
            http10,
            trailers,
            expects_continue,
        } = head;
        let head_request = request.method() == Method::HEAD;
        match body {
            None => inbound = Some(reader),
            Some(decoder) => {
                let shared = shared.get_or_insert_with(Arc::default).clone();
                *request.body_mut() = ClientBody::H1(RequestBody {
                    inbound: Some(reader),
                    decoder,
                    shared,
                    expects_continue,
                });
            }
        }

        // Wait for the response, writing `100 Continue` if the body asks,
        // and watching the client for a close. The request future lives in
        // this block only: its room in the connection's task is shared
        // with what the body's streaming needs, not added to it.
        let response = {
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
                // A body read whole has given the read side back: watch it too
                // (a client that posted a prompt and left must not keep its
                // generation running).
                if inbound.is_none() {
                    inbound = shared.as_ref().and_then(|s| s.take());
                }
                match inbound.as_mut().map(|r| r.poll_gone(cx, false)) {
                    Some(Poll::Ready(())) => Poll::Ready(None),
                    _ => Poll::Pending,
                }
            })
            .await
        };
        let Some(response) = response else {
            // The client left: dropping the request future drops the
            // upstream request.
            return Ok(());
        };
        let (parts, mut body) = response.into_parts();

        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let framing = Framing::None;
            out.head(&parts, framing, true, false);
            poll_fn(|cx| out.poll_flush(cx)).await?;
            // The tunnel needs the client's read side: a request with an
            // unread body has none to give.
            if let (Some((upstream, prefix)), Some(reader)) = (body.take_tunnel(), inbound.take()) {
                // Whole again, with what the client sent past its head read
                // first. (The tunnel's idle timeout covers a client that
                // stops reading; the write-stall wrapper is not needed.)
                if let Ok(stream) = reader.io.reunite(out.io.into_inner()) {
                    let client = Upgraded::new(reader.read.freeze(), stream);
                    proxy.tunnels.spawn(client, upstream, prefix);
                }
            }
            return Ok(());
        }

        if inbound.is_none() {
            inbound = shared.as_ref().and_then(|s| s.take());
        }
        // Without its read side (a body left unread, or still going up
        // beside the response), the connection cannot carry another
        // request: say so now.
        keep_alive &= inbound.is_some() && !shutdown.is_cancelled();
        let framing = Framing::of(&parts, &body, head_request, http10);
        keep_alive &= framing != Framing::UntilClose;
        out.head(&parts, framing, keep_alive, http10);
        // Written: the head is let go before the body streams. Its fields
        // share the upstream's read buffer (4 KiB), and an event stream
        // may stay open for minutes.
        drop(parts);
        let mut sending = Sending {
            framing,
            trailers_wanted: trailers,
            ended: false,
        };
        let sent = poll_fn(|cx| out.poll_body(cx, &mut body, &mut sending, inbound.as_mut())).await;
        drop(body);
        if !sent? || !keep_alive {
            let _ = out.io.shutdown().await;
            return Ok(());
        }
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
) -> Result<Option<Result<Head, ProxyError>>, Error> {
    timer.start = None;
    poll_fn(|cx| loop {
        if !reader.read.is_empty() {
            match parse_head(&mut reader.read) {
                Ok(Some(head)) => return Poll::Ready(Ok(Some(Ok(head)))),
                Ok(None) => {}
                Err(refusal) => return Poll::Ready(Ok(Some(Err(refusal)))),
            }
        } else if stop.poll_stopped(cx) {
            return Poll::Ready(Ok(None));
        }
        match reader.poll_fill(cx) {
            Poll::Ready(Ok(0)) if reader.read.is_empty() => return Poll::Ready(Ok(None)),
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::ClosedInHead)),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending if timer.poll_expired(cx) => {
                return Poll::Ready(Err(Error::HeadTimeout(timer.timeout)))
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

/// A parsed request head.
struct Head {
    request: Request<ClientBody>,
    /// How the body is framed; `None`: there is none.
    body: Option<Decoder>,
    keep_alive: bool,
    /// An HTTP/1.0 client: keep-alive must be confirmed in the response,
    /// and a body of unknown length ends with the connection.
    http10: bool,
    /// The client accepts trailer fields (`TE: trailers`).
    trailers: bool,
    expects_continue: bool,
}

/// The fields a head's handling depends on, noted while it is read (each
/// lookup afterwards would hash its name).
#[derive(Default)]
struct Present {
    content_length: bool,
    transfer_encoding: bool,
    connection: bool,
    te: bool,
    expect: bool,
}

/// Parses the request head at the front of `read` and takes it out:
/// `None` until it is all there. Refusals: 431 for a head over
/// [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`], 400 for anything malformed or
/// framed ambiguously (RFC 9112 §6.1, §6.3: both `Content-Length` and
/// `Transfer-Encoding`, a coding other than `chunked`, differing lengths).
fn parse_head(read: &mut BytesMut) -> Result<Option<Head>, ProxyError> {
    let too_large = |what: &str| ProxyError::HeadTooLarge(format!("request head {what}"));
    let bad = |what: String| ProxyError::BadRequest(what);
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, read, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if read.len() > MAX_HEAD_BYTES => {
            return Err(too_large("larger than 64 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large("with over 100 fields")),
        Err(e) => return Err(bad(format!("malformed request head: {e}"))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(too_large("larger than 64 KiB"));
    }
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("invalid method {method:?}")))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // The target and the values are slices of the head, not copies: where
    // each one lies.
    let base = read.as_ptr() as usize;
    let path = parsed.path.unwrap_or_default();
    let target = (path.as_ptr() as usize - base, path.len());
    let mut found = Found::new();
    let mut present = Present::default();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| bad(format!("invalid header name {:?}", field.name)))?;
        if name == header::CONTENT_LENGTH {
            present.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            present.transfer_encoding = true;
        } else if name == header::CONNECTION {
            present.connection = true;
        } else if name == header::TE {
            present.te = true;
        } else if name == header::EXPECT {
            present.expect = true;
        }
        let start = field.value.as_ptr() as usize - base;
        found.push((name, start, start + field.value.len()));
    }
    let head = read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|e| bad(format!("invalid request target: {e}")))?;
    // Room for the `Host` the proxy may add without the map growing.
    let mut headers = HeaderMap::with_capacity(found.len() + 1);
    for (name, start, end) in found.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| bad(format!("invalid value of {name}")))?;
        headers.append(name, value);
    }

    let body = body_framing(&headers, &present, version)?;
    let field_has = |name: HeaderName, token: &str| has_token(headers.get_all(name), token);
    let keep_alive = match version {
        Version::HTTP_11 => !(present.connection && field_has(header::CONNECTION, "close")),
        _ => present.connection && field_has(header::CONNECTION, "keep-alive"),
    };
    let trailers = present.te && field_has(header::TE, "trailers");
    let expects_continue = present.expect
        && version == Version::HTTP_11
        && body.is_some()
        && field_has(header::EXPECT, "100-continue");

    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        body,
        keep_alive,
        http10: version == Version::HTTP_10,
        trailers,
        expects_continue,
    }))
}

/// How a request's body is framed (RFC 9112 §6.3); `None`: no body.
fn body_framing(
    headers: &HeaderMap,
    present: &Present,
    version: Version,
) -> Result<Option<Decoder>, ProxyError> {
    let bad = |what: &str| Err(ProxyError::BadRequest(what.into()));
    if present.transfer_encoding {
        if present.content_length {
            return bad(
                "both Content-Length and Transfer-Encoding: the body's framing is ambiguous",
            );
        }
        if version == Version::HTTP_10 {
            return bad("Transfer-Encoding in an HTTP/1.0 request");
        }
        // Exactly one coding, `chunked`: any other has no length we could
        // trust, and we never decode content.
        let mut codings = list_tokens(headers.get_all(header::TRANSFER_ENCODING));
        return match (codings.next(), codings.next()) {
            (Some(coding), None) if coding.eq_ignore_ascii_case("chunked") => {
                Ok(Some(Decoder::chunked()))
            }
            _ => bad("unsupported Transfer-Encoding (only chunked is accepted)"),
        };
    }
    if !present.content_length {
        return Ok(None);
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        match h1::parse_length(value.as_bytes()) {
            Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
            _ => return bad("invalid or conflicting Content-Length"),
        }
    }
    Ok(length.filter(|n| *n > 0).map(Decoder::Length))
}

/// The client's read side, and what was read from it but not used yet.
#[derive(Debug)]
struct Inbound {
    io: OwnedReadHalf,
    read: BytesMut,
    read_size: usize,
}

impl Inbound {
    fn new(io: OwnedReadHalf) -> Inbound {
        Inbound {
            io,
            read: BytesMut::new(),
            read_size: INIT_READ,
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        h1::poll_fill(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// While a request is answered: `Ready` once the client closed or
    /// broke its connection. What it sends meanwhile (a pipelined request)
    /// is kept, up to a head's worth; past that it is not read. `lean`:
    /// the answer is streaming, and may for long: hold no buffer while
    /// the client is silent (see [`h1::poll_fill_lean`]).
    fn poll_gone(&mut self, cx: &mut Context<'_>, lean: bool) -> Poll<()> {
        while self.read.len() <= MAX_HEAD_BYTES {
            let filled = if lean {
                h1::poll_fill_lean(&mut self.io, &mut self.read, &mut self.read_size, cx)
            } else {
                self.poll_fill(cx)
            };
            match ready!(filled) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }

    /// Between requests: a buffer grown for a big upload is let go.
    fn rest(&mut self) {
        if self.read.is_empty() && self.read.capacity() > 2 * INIT_READ {
            self.read = BytesMut::new();
        }
        self.read_size = INIT_READ;
    }
}

/// What request bodies share with their connection: where the read side
/// goes back, and whether the client waits for `100 Continue`.
#[derive(Debug, Default)]
struct Shared {
    inbound: Mutex<Option<Inbound>>,
    wants_continue: AtomicBool,
}

impl Shared {
    fn take(&self) -> Option<Inbound> {
        self.inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A request body read from the client's connection.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` once the body ended or failed.
    inbound: Option<Inbound>,
    decoder: Decoder,
    shared: Arc<Shared>,
    /// The client sent `Expect: 100-continue` and was not answered yet.
    expects_continue: bool,
}

/// How a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection inside the request body")]
    Closed,
    #[error("invalid request body: {0}")]
    Framing(String),
}

impl RequestBody {
    /// Read whole: the read side goes back to the connection.
    fn end(&mut self) {
        if let Some(inbound) = self.inbound.take() {
            *self
                .shared
                .inbound
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(inbound);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.inbound = None;
        self.decoder = Decoder::Ended;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if std::mem::take(&mut this.expects_continue) {
            // The connection's task writes it once this poll returns.
            this.shared.wants_continue.store(true, Ordering::Relaxed);
        }
        loop {
            let Some(inbound) = this.inbound.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.next(&mut inbound.read) {
                Ok(Next::Frame(frame)) => {
                    if this.decoder.is_ended() {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Next::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Next::NeedMore) => {}
                Err(h1::Error::Protocol(what)) => return this.fail(BodyError::Framing(what)),
                Err(other) => return this.fail(BodyError::Framing(other.to_string())),
            }
            match ready!(inbound.poll_fill(cx)) {
                Ok(0) => return this.fail(BodyError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a HEAD request, 1xx, 204, 304 (its fields are sent as the
    /// upstream gave them).
    None,
    /// `Content-Length`: bytes still to write.
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and no length: the body ends with the connection.
    UntilClose,
}

impl Framing {
    fn of(parts: &Parts, body: &ProxyBody, head_request: bool, http10: bool) -> Framing {
        let status = parts.status;
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Framing::None;
        }
        // A body of known size: the upstream's `Content-Length`, already
        // checked and counted down by our client (or by hyper's HTTP/2
        // client against the DATA frames), or a body of our own.
        if let Some(n) = body.size_hint().exact() {
            return Framing::Length(n);
        }
        if let Some(n) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| h1::parse_length(v.as_bytes()))
        {
            return Framing::Length(n);
        }
        if http10 {
            Framing::UntilClose
        } else {
            Framing::Chunked
        }
    }
}

/// A response body on its way out.
struct Sending {
    framing: Framing,
    /// The client accepts trailer fields.
    trailers_wanted: bool,
    ended: bool,
}

/// The client's write side and what is queued for it, in order: whole
/// segments (large frames, not copied), then `buf` (heads, small frames).
struct Out {
    io: WriteStallTimeout<OwnedWriteHalf>,
    segments: VecDeque<Bytes>,
    buf: BytesMut,
    queued: usize,
}

impl Out {
    fn new(io: WriteStallTimeout<OwnedWriteHalf>) -> Out {
        Out {
            io,
            segments: VecDeque::new(),
            buf: BytesMut::new(),
            queued: 0,
        }
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.queued += bytes.len();
    }

    fn put(&mut self, data: Bytes) {
        if data.len() <= COPY_UP_TO {
            return self.put_slice(&data);
        }
        self.seal();
        self.queued += data.len();
        self.segments.push_back(data);
    }

    /// What is in `buf` becomes a segment, so later bytes queue behind it.
    fn seal(&mut self) {
        if !self.buf.is_empty() {
            self.segments.push_back(self.buf.split().freeze());
        }
    }

    /// The status line and fields, with the framing field and `Date` when
    /// missing, and `Connection` as `keep_alive` needs.
    fn head(&mut self, parts: &Parts, framing: Framing, keep_alive: bool, http10: bool) {
        // Room for the head and a body small enough to be copied behind
        // it, so they leave in one write without the buffer growing.
        let fields: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let body = match framing {
            Framing::Length(n) if n as usize <= COPY_UP_TO => n as usize,
            _ => 0,
        };
        self.buf.reserve(fields + body + 128);
        let before = self.buf.len();
        let buf = &mut self.buf;
        buf.extend_from_slice(b"HTTP/1.1 ");
        buf.extend_from_slice(parts.status.as_str().as_bytes());
        buf.extend_from_slice(b" ");
        let reason = parts.status.canonical_reason().unwrap_or("");
        buf.extend_from_slice(reason.as_bytes());
        buf.extend_from_slice(b"\r\n");
        let (mut has_length, mut has_date) = (false, false);
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                has_length = true;
            } else if name == header::DATE {
                has_date = true;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        match framing {
            Framing::Length(n) if !has_length => {
                use std::fmt::Write;
                let _ = write!(buf, "content-length: {n}\r\n");
            }
            Framing::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            _ => {}
        }
        if !has_date {
            buf.extend_from_slice(b"date: ");
            buf.extend_from_slice(&http_date());
            buf.extend_from_slice(b"\r\n");
        }
        if !keep_alive && parts.status != StatusCode::SWITCHING_PROTOCOLS {
            buf.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        self.queued += self.buf.len() - before;
    }

    /// Writes what is queued.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.queued > 0 {
            let n = if self.segments.is_empty() {
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?
            } else {
                self.seal();
                let mut iovs = [IoSlice::new(&[]); MAX_IOVS];
                let mut k = 0;
                for (iov, segment) in iovs.iter_mut().zip(&self.segments) {
                    *iov = IoSlice::new(segment);
                    k += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iovs[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return self.buf.advance(n);
            };
            if n < front.len() {
                return front.advance(n);
            }
            n -= front.len();
            self.segments.pop_front();
        }
    }

    /// Streams `body` out as `sending` frames it: `Ok(true)` once all of
    /// it is written, `Ok(false)` when the client went away (or broke the
    /// connection) first, `Err` when the body failed (the connection is
    /// then dropped, so the client sees the cut).
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut ProxyBody,
        sending: &mut Sending,
        mut watch: Option<&mut Inbound>,
    ) -> Poll<Result<bool, Error>> {
        loop {
            let mut waiting = sending.ended;
            while !sending.ended && self.queued < HIGH_WATER {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.put_frame(frame, sending)?,
                    Poll::Ready(None) => self.finish(sending, None)?,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Error::Aborted(e.to_string())))
                    }
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                }
            }
            match self.poll_flush(cx) {
                Poll::Ready(Ok(())) if sending.ended => return Poll::Ready(Ok(true)),
                Poll::Ready(Ok(())) if !waiting => continue,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                // The client's pace: its socket wakes us when it takes more
                // (the write-stall deadline ends a client that never does).
                Poll::Pending => return Poll::Pending,
            }
            // All written, and the body has nothing yet: the write buffer
            // is let go while the body waits (an event stream between its
            // events), so thousands of open streams hold none.
            self.buf = BytesMut::new();
            return match watch.as_mut().map(|r| r.poll_gone(cx, true)) {
                Some(Poll::Ready(())) => Poll::Ready(Ok(false)),
                _ => Poll::Pending,
            };
        }
    }

    fn put_frame(&mut self, frame: Frame<Bytes>, sending: &mut Sending) -> Result<(), Error> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return self.finish(sending, frame.into_trailers().ok()),
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut sending.framing {
            Framing::None => {}
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(Error::Aborted(
                        "response body longer than its length".into(),
                    ));
                }
                *left -= n;
                self.put(data);
            }
            Framing::Chunked => {
                use std::fmt::Write;
                let before = self.buf.len();
                let _ = write!(self.buf, "{:x}\r\n", data.len());
                self.queued += self.buf.len() - before;
                self.put(data);
                self.put_slice(b"\r\n");
            }
            Framing::UntilClose => self.put(data),
        }
        Ok(())
    }

    /// The body's end: the last chunk (with trailers the client accepts).
    fn finish(&mut self, sending: &mut Sending, trailers: Option<HeaderMap>) -> Result<(), Error> {
        sending.ended = true;
        match sending.framing {
            Framing::Length(left) if left > 0 => Err(Error::Aborted(format!(
                "response body ended {left} bytes short of its length"
            ))),
            Framing::Chunked => {
                self.put_slice(b"0\r\n");
                if let Some(fields) = trailers.filter(|_| sending.trailers_wanted) {
                    for (name, value) in &fields {
                        self.put_slice(name.as_str().as_bytes());
                        self.put_slice(b": ");
                        self.put_slice(value.as_bytes());
                        self.put_slice(b"\r\n");
                    }
                }
                self.put_slice(b"\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Answers a refused head and closes.
    async fn refuse(&mut self, refusal: ProxyError) {
        let (parts, mut body) = refusal.into_response().into_parts();
        let framing = Framing::of(&parts, &body, false, false);
        self.head(&parts, framing, false, false);
        let mut sending = Sending {
            framing,
            trailers_wanted: false,
            ended: false,
        };
        let _ = poll_fn(|cx| self.poll_body(cx, &mut body, &mut sending, None)).await;
        let _ = self.io.shutdown().await;
    }
}

/// The current time as an HTTP date, formatted once a second.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, date) = cached.get();
        if at == second {
            return date;
        }
        let mut date = [0u8; 29];
        date.copy_from_slice(&httpdate::fmt_http_date(now).as_bytes()[..29]);
        cached.set((second, date));
        date
    })
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
    /// 10 KB. With the request future's room shared with the streaming
    /// of the body it is 2,856 bytes (3,488 when both were held at once).
    #[test]
    fn the_connection_future_stays_small() {
        let size = size_of_output(
            |s: TcpStream,
             c: SocketAddr,
             p: Arc<Proxy>,
             t: &'static CancellationToken,
             d: Duration| { serve(s, c, p, t, d) },
        );
        assert!(size <= 3000, "{size} bytes");
    }

    fn parse(wire: &str) -> Result<Option<(Head, BytesMut)>, ProxyError> {
        let mut read = BytesMut::from(wire);
        Ok(parse_head(&mut read)?.map(|head| (head, read)))
    }

    fn head(wire: &str) -> Head {
        parse(wire).unwrap().expect("a whole head").0
    }

    fn refusal(wire: &str) -> u16 {
        match parse(wire) {
            Err(e) => e.status().as_u16(),
            Ok(_) => panic!("accepted: {wire:?}"),
        }
    }

    #[test]
    fn a_head_is_parsed_into_the_request_and_leaves_what_follows() {
        let (head, rest) = parse(
            "POST /v1/chat?x=%2F HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nx-two: 2\r\n\
             content-length: 3\r\n\r\nabcGET / HTTP/1.1\r\n",
        )
        .unwrap()
        .unwrap();
        let req = &head.request;
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/v1/chat");
        assert_eq!(req.uri().query(), Some("x=%2F"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "a");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert!(matches!(head.body, Some(Decoder::Length(3))));
        assert!(head.keep_alive && !head.http10 && !head.trailers && !head.expects_continue);
        assert_eq!(&rest[..], b"abcGET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nhost: a\r\n").unwrap().is_none());
        assert!(parse("GET / HT").unwrap().is_none());
    }

    #[test]
    fn bodies_are_framed_by_length_or_chunks_or_not_at_all() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").body.is_none());
        assert!(head("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            .body
            .is_none());
        assert!(matches!(
            head("POST / HTTP/1.1\r\ncontent-length: 7, 7\r\n\r\n").body,
            Some(Decoder::Length(7))
        ));
        assert!(matches!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").body,
            Some(Decoder::Chunked(_))
        ));
    }

    /// RFC 9112 §6.1 and §6.3: every ambiguous framing is refused.
    #[test]
    fn ambiguous_or_unknown_framings_are_refused() {
        let cases = [
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked,\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: , chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 4x\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ];
        for wire in cases {
            assert_eq!(refusal(wire), 400, "{wire:?}");
        }
    }

    #[test]
    fn oversized_heads_get_431() {
        let fields: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(refusal(&format!("GET / HTTP/1.1\r\n{fields}\r\n")), 431);
        // Whole but too large, and too large before it is whole.
        let big = "a".repeat(MAX_HEAD_BYTES);
        assert_eq!(refusal(&format!("GET / HTTP/1.1\r\nx: {big}\r\n\r\n")), 431);
        assert_eq!(refusal(&format!("GET / HTTP/1.1\r\nx: {big}")), 431);
        // At the limit exactly, it is accepted.
        let line = "GET / HTTP/1.1\r\nx: \r\n\r\n";
        let fill = "a".repeat(MAX_HEAD_BYTES - line.len());
        assert!(parse(&format!("GET / HTTP/1.1\r\nx: {fill}\r\n\r\n"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nconnection: foo, Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        let kept = head("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n");
        assert!(kept.keep_alive && kept.http10);
    }

    #[test]
    fn trailers_and_100_continue_are_noted() {
        assert!(head("GET / HTTP/1.1\r\nte: gzip, trailers\r\n\r\n").trailers);
        let wire = "POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 1\r\n\r\n";
        assert!(head(wire).expects_continue);
        // Without a body there is nothing to wait for.
        assert!(!head("GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n").expects_continue);
    }

    #[test]
    fn response_framing_follows_the_request_and_the_status() {
        let make = |status: u16, length: Option<&str>| {
            let mut response = http::Response::new(());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(length) = length {
                response.headers_mut().insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from_str(length).unwrap(),
                );
            }
            response.into_parts().0
        };
        let full = ProxyBody::full("four");
        // The body's own size, checked against the length it came with.
        assert_eq!(
            Framing::of(&make(200, Some("4")), &full, false, false),
            Framing::Length(4)
        );
        assert_eq!(
            Framing::of(&make(200, None), &full, false, false),
            Framing::Length(4)
        );
        assert_eq!(
            Framing::of(&make(200, Some("9")), &full, true, false),
            Framing::None
        );
        assert_eq!(
            Framing::of(&make(204, None), &full, false, false),
            Framing::None
        );
        assert_eq!(
            Framing::of(&make(304, Some("9")), &full, false, false),
            Framing::None
        );
        // Chunks and the close (for a body of unknown length):
        // tests/tests/http1.rs, through the binary.
    }
}
