//! Our HTTP/1.1 client for upstream connections: the request's own task
//! writes the request and reads the response, straight from the socket.
//!
//! Why not hyper's connection-level client: it runs each connection in a
//! task of its own and hands every request and response across channels,
//! so each request woke two tasks and crossed four queues. On the proxy's
//! hot path that was about a third of our user-space instructions (see
//! docs/BENCHMARKS.md). What is left is small enough to own: write a head
//! and a body, parse a head with `httparse` (the parser hyper uses), and
//! decode a body framed by length, by chunks or by the close.
//!
//! A connection is lent to one request at a time ([`send`]). It goes back
//! to its pool when the response body was read to its end and the whole
//! request was written; cut short, it is dropped, which closes it.
//!
//! Once the response head is in, the rest of an upload moves when the
//! response body is polled (hyper polls it while the client can take
//! more); a response that ends first ends the upload, and its connection
//! is closed rather than reused.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::headers::{list_items, named_by_connection};
use crate::upstream::Conn;

/// A head's fields, by name, with where each value lies in the head
/// (both sides' parsers); on the stack for up to 16.
pub(crate) type Found = SmallVec<[(HeaderName, usize, usize); 16]>;

/// Largest response head read (hyper's client allows about 400 KiB).
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Most fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// The first read of a response takes up to this much (a head and a small
/// body; nginx's `proxy_buffer_size` is 4 KiB too); reads that fill the
/// buffer double it, up to `MAX_READ`: big streams move in big reads (128
/// KiB reads made a 512 MiB download 14% slower than hyper's client, whose
/// reads grow to about 400 KiB). Every request in flight holds one such
/// buffer, so its size is memory at 1000 connections.
const INIT_READ: usize = 4 * 1024;
const MAX_READ: usize = 512 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most trailer bytes read (and dropped) after the last chunk.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// The socket: TCP, or TLS over TCP, as the connector made it.
pub type Io = TokioIo<Conn>;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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

impl Error {
    /// The upstream broke the protocol (as opposed to leaving).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Protocol(_))
    }

    /// The client's request body failed, not the upstream.
    fn is_body(&self) -> bool {
        matches!(self, Error::Body(_) | Error::BodyShort(_) | Error::BodyLong)
    }

    fn protocol(what: impl Into<String>) -> Error {
        Error::Protocol(what.into())
    }
}

/// One upstream HTTP/1.1 connection and what it has read but not used.
#[derive(Debug)]
pub struct Connection {
    /// Boxed once per connection (a TLS stream is kilobytes), so that
    /// moving the connection between the pool, the send and the body, and
    /// the futures and bodies holding it, stay small.
    io: Box<Io>,
    read: BytesMut,
    read_size: usize,
}

impl Connection {
    pub fn new(io: Io) -> Connection {
        Connection {
            io: Box::new(io),
            read: BytesMut::new(),
            read_size: INIT_READ,
        }
    }

    /// Whether an idle connection is still fit for a request: nothing
    /// arrived while it idled. A close (the upstream's keep-alive ran out)
    /// or stray bytes make it unfit. Never waits.
    pub fn is_fit(&mut self) -> bool {
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
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut *self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// Reads more of a body, holding no buffer while the upstream is
    /// silent (see [`poll_fill_lean`]).
    fn poll_fill_lean(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill_lean(&mut *self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// Ready for the pool: a buffer grown for a big stream is let go.
    fn rest(&mut self) {
        if self.read.capacity() > 2 * INIT_READ {
            self.read = BytesMut::new();
        }
        self.read_size = INIT_READ;
    }
}

/// Reads more of `io` into `read`: `Ok(0)` at the peer's close. Reads
/// that fill the room they had double `read_size` (up to `MAX_READ`), so
/// big streams move in big reads and small exchanges keep small buffers.
pub(crate) fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < *read_size / 2 {
        read.reserve(*read_size);
    }
    let room = read.capacity() - read.len();
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, read))?;
    if n == room && *read_size < MAX_READ {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// [`poll_fill`] for a peer that may stay silent for long, between the
/// events of a stream: an empty `read` holds no memory while it waits.
/// Small reads into an empty buffer go through the stack and only what
/// arrived is allocated: an event is a hundred bytes, and read into a 4
/// KiB buffer it kept all of it until written, while the buffer itself
/// stayed with each open stream. At thousands of open streams that was
/// most of their memory. (Heads and whole answers keep [`poll_fill`]'s
/// reused buffer: copying them cost 2 % more instructions a request.)
pub(crate) fn poll_fill_lean<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !read.is_empty() || *read_size > INIT_READ {
        return poll_fill(io, read, read_size, cx);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); INIT_READ];
    let mut buf = ReadBuf::uninit(&mut stack[..*read_size]);
    let Poll::Ready(done) = Pin::new(io).poll_read(cx, &mut buf) else {
        *read = BytesMut::new();
        return Poll::Pending;
    };
    done?;
    let n = buf.filled().len();
    *read = BytesMut::from(buf.filled());
    if n == *read_size {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// Where a connection goes back when its exchange ended cleanly.
pub type Home = Arc<Mutex<VecDeque<Idle>>>;

/// A connection waiting in the pool.
#[derive(Debug)]
pub struct Idle {
    pub conn: Connection,
    pub since: Instant,
}

/// Sends `req` on `conn`: resolves at the response head, whose body reads
/// the rest from the same connection. `reused`: the connection served an
/// earlier request, so a request that did not reach the upstream may be
/// tried again elsewhere ([`Failed::Unsent`]): one whose first write
/// failed, and a bodiless GET, HEAD or OPTIONS whose connection closed
/// without a byte of answer (the upstream had closed it while it idled,
/// unseen, and never read the request).
pub fn send<B>(
    conn: Connection,
    req: Request<B>,
    host: &str,
    home: Home,
    reused: bool,
) -> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let head_request = req.method() == Method::HEAD;
    let (head, framing) = encode_head(&req, host);
    let resendable = reused
        && matches!(framing, Framing::None)
        && matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let (parts, body) = req.into_parts();
    Exchange {
        conn: Some(conn),
        writer: Writer {
            queue: VecDeque::from([head]),
            body: Some(body),
            ended: matches!(framing, Framing::None),
            flushed: false,
            framing,
            written: 0,
        },
        unsent: reused.then_some(parts),
        resendable,
        write_error: None,
        head_request,
        home: Some(home),
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// The request head in wire form, and the body's framing: the client's
/// `Content-Length` when it gave one, chunked when the length is unknown,
/// nothing when there is no body.
fn encode_head<B: Body>(req: &Request<B>, host: &str) -> (Bytes, Framing) {
    let headers = req.headers();
    // One pass sizes the head and finds the two fields it needs (looking
    // each up would hash its name).
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut size = req.method().as_str().len() + target.len() + 16;
    let (mut length, mut has_host) = (None, false);
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        if name == header::CONTENT_LENGTH {
            length = length.or(Some(value));
        } else if name == header::HOST {
            has_host = true;
        }
    }
    let framing = match length {
        Some(len) => Framing::Length(parse_length(len.as_bytes()).unwrap_or(0)),
        // As hyper: a GET or HEAD without a length carries no body (an
        // HTTP/2 client may end one with an empty DATA frame).
        None if req.body().is_end_stream() => Framing::None,
        None if matches!(*req.method(), Method::GET | Method::HEAD) => Framing::None,
        None => Framing::Chunked,
    };
    let mut out = BytesMut::with_capacity(size + host.len() + 32);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Framing::Chunked = framing {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out.freeze(), framing)
}

/// A `Content-Length` value (a list of equal values counts as one).
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        // Digits only (no sign, no `+`), at most 19: any such number fits.
        if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = token
            .iter()
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Writes the request: the head, then the body frame by frame, each only
/// once the last is written (the client's upload moves at the upstream's
/// pace).
struct Writer<B> {
    /// Bytes to write, in order: the head, then each frame and its framing.
    queue: VecDeque<Bytes>,
    /// Taken only to give the request back unsent.
    body: Option<B>,
    /// The body ended (or there is none): only the queue is left.
    ended: bool,
    /// Everything written was flushed (TLS holds bytes until then).
    flushed: bool,
    framing: Framing,
    /// Bytes written so far.
    written: u64,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn is_done(&self) -> bool {
        self.queue.is_empty() && self.ended && self.flushed
    }

    /// Writes nothing more (the upstream stopped taking the request).
    fn stop(&mut self) {
        self.queue.clear();
        self.ended = true;
        self.flushed = true;
    }

    /// Writes as much as can go now; ready once the whole request is out.
    fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while !self.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let mut count = 0;
                for (slot, bytes) in slices.iter_mut().zip(&self.queue) {
                    *slot = IoSlice::new(bytes);
                    count += 1;
                }
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.written += n as u64;
                self.flushed = false;
                self.consume(n);
            }
            if !self.flushed {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.flushed = true;
            }
            let body = match &mut self.body {
                Some(body) if !self.ended => body,
                _ => return Poll::Ready(Ok(())),
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers of a client's body are not passed on.
                    if let Ok(data) = frame.into_data() {
                        self.push(data)?;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::Body(e.into()))),
                None => {
                    self.ended = true;
                    match self.framing {
                        Framing::Length(0) | Framing::None => {}
                        Framing::Length(short) => return Poll::Ready(Err(Error::BodyShort(short))),
                        Framing::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                    }
                }
            }
        }
    }

    fn push(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                *left = left.checked_sub(data.len() as u64).ok_or(Error::BodyLong)?;
                self.queue.push_back(data);
            }
            Framing::Chunked => {
                self.queue
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
            Framing::None => return Err(Error::BodyLong),
        }
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }
}

/// Why a send produced no response.
pub enum Failed<B> {
    /// Nothing left on a reused connection (it had closed): the request
    /// can go on another.
    Unsent(Box<Request<B>>),
    Failed(Error),
}

/// The send: writes the request and reads the response head.
pub struct Exchange<B> {
    conn: Option<Connection>,
    writer: Writer<B>,
    /// The request's head, on a reused connection, while it may be retried.
    unsent: Option<http::request::Parts>,
    /// A bodiless GET, HEAD or OPTIONS on a reused connection.
    resendable: bool,
    /// The upstream stopped taking the request; its answer is still read.
    write_error: Option<Error>,
    head_request: bool,
    home: Option<Home>,
}

impl<B> Future for Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<Response<ResponseBody<B>>, Failed<B>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // The request goes up while the response is awaited: an upstream
        // may answer (413, say) before it read the whole body.
        let mut write_error = None;
        if !this.writer.is_done() {
            let conn = this.conn.as_mut().expect("exchange polled after it ended");
            if let Poll::Ready(Err(e)) = this.writer.poll_write(&mut conn.io, cx) {
                write_error = Some(e);
            }
        }
        if let Some(e) = write_error {
            if this.writer.written == 0 {
                if let Some(req) = this.give_back() {
                    return Poll::Ready(Err(Failed::Unsent(req)));
                }
            }
            if e.is_body() {
                // The client's body failed: no answer to wait for.
                this.conn = None;
                return Poll::Ready(Err(Failed::Failed(e)));
            }
            // The upstream may have answered and closed (a reset then fails
            // our writes while its answer waits to be read).
            this.writer.stop();
            this.write_error = Some(e);
        }
        let conn = this.conn.as_mut().expect("exchange polled after it ended");
        let head = match ready!(poll_head(conn, cx, this.head_request)) {
            Ok(head) => head,
            Err(e) => {
                let nothing_read = conn.read.is_empty();
                if matches!(e, Error::ClosedBeforeHead) && nothing_read && this.resendable {
                    if let Some(req) = this.give_back() {
                        return Poll::Ready(Err(Failed::Unsent(req)));
                    }
                }
                this.conn = None;
                let e = this.write_error.take().unwrap_or(e);
                return Poll::Ready(Err(Failed::Failed(e)));
            }
        };
        let Head {
            response,
            decoder,
            mut reusable,
        } = head;
        if this.write_error.is_some() {
            reusable = false;
        }
        let writer = std::mem::replace(
            &mut this.writer,
            Writer {
                queue: VecDeque::new(),
                body: None,
                ended: true,
                flushed: true,
                framing: Framing::None,
                written: 0,
            },
        );
        let body = ResponseBody {
            conn: this.conn.take(),
            decoder,
            writer: (!writer.is_done()).then(|| Box::new(writer)),
            reusable,
            home: this.home.take(),
            gave_data: false,
        };
        Poll::Ready(Ok(response.map(|()| body)))
    }
}

impl<B> Exchange<B> {
    /// The request, rebuilt for another connection, when it may be.
    fn give_back(&mut self) -> Option<Box<Request<B>>> {
        let parts = self.unsent.take()?;
        let body = self.writer.body.take()?;
        self.conn = None;
        Some(Box::new(Request::from_parts(parts, body)))
    }
}

/// A parsed response head and how its body is framed.
struct Head {
    response: Response<()>,
    decoder: Decoder,
    reusable: bool,
}

/// Reads until a whole final head is in (1xx interim heads other than 101
/// are skipped) and parses it.
fn poll_head(
    conn: &mut Connection,
    cx: &mut Context<'_>,
    head_request: bool,
) -> Poll<Result<Head, Error>> {
    loop {
        if !conn.read.is_empty() {
            if let Some(head) = parse_head(&mut conn.read, head_request)? {
                return Poll::Ready(Ok(head));
            }
        }
        if conn.read.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(Error::protocol(format!(
                "response head larger than {MAX_HEAD_BYTES} bytes"
            ))));
        }
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(Error::ClosedBeforeHead));
        }
    }
}

/// The head at the front of `read`, taken out of it; `None` until it is
/// all there.
fn parse_head(read: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::protocol(e.to_string())),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| Error::protocol(format!("status code {code}")))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            read.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        // Values are slices of the head, not copies: where each one lies.
        let base = read.as_ptr() as usize;
        let mut found = Found::new();
        let mut present = Present::default();
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| Error::protocol(format!("header name {:?}", field.name)))?;
            present.note(&name, field.value);
            let start = field.value.as_ptr() as usize - base;
            found.push((name, start, start + field.value.len()));
        }
        let head = read.split_to(len).freeze();
        // `Connection` and the fields it names are about this connection
        // alone (RFC 9110 §7.6.1): they are read here and go no further,
        // so the proxy's filter has nothing of theirs to find and remove
        // (about 700 instructions a response otherwise, and most HTTP/1.1
        // upstreams send `Connection: keep-alive`). A 101 keeps them: its
        // `Connection: upgrade` is the proxy's to pass on.
        let own_fields = status != StatusCode::SWITCHING_PROTOCOLS && present.connection;
        let named = if own_fields && present.names_fields {
            let tokens = found
                .iter()
                .filter(|(name, _, _)| name == header::CONNECTION)
                .flat_map(|(_, start, end)| list_items(&head[*start..*end]));
            named_by_connection(tokens, || found.iter().map(|(name, _, _)| name), false)
        } else {
            Vec::new()
        };
        let mut headers = HeaderMap::with_capacity(found.len());
        for (name, start, end) in found.drain(..) {
            if own_fields && (name == header::CONNECTION || named.contains(&name)) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| Error::protocol(format!("value of {name}")))?;
            headers.append(name, value);
        }
        let (decoder, framed) = framing(status, head_request, present)?;
        let reusable = framed
            && version == Version::HTTP_11
            && status != StatusCode::SWITCHING_PROTOCOLS
            && !present.close;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            decoder,
            reusable,
        }));
    }
}

/// What the fields that frame a response and its `Connection` say, noted
/// while its head is read: looking each up in the map afterwards would
/// hash its name.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    transfer_encoding: bool,
    /// The last `Transfer-Encoding` ends in `chunked`.
    chunked_last: bool,
    content_length: bool,
    /// What the `Content-Length` fields agree on; `None` when one is
    /// invalid or they differ.
    length: Option<u64>,
    connection: bool,
    /// `Connection: close`.
    close: bool,
    /// `Connection` has a token other than `keep-alive`: it may name a
    /// field of the message.
    names_fields: bool,
}

impl Present {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            // As hyper: the last item, empty or not (`chunked,` is not
            // chunked, and is read until the close).
            self.chunked_last = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            let length = parse_length(value);
            self.length = match self.content_length {
                false => length,
                true => length.filter(|n| self.length == Some(*n)),
            };
            self.content_length = true;
        } else if name == header::CONNECTION {
            self.connection = true;
            for token in list_items(value) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.names_fields |= !token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

/// How the response body is framed (RFC 9112 §6.3), and whether its end
/// is known without the connection closing.
fn framing(
    status: StatusCode,
    head_request: bool,
    present: Present,
) -> Result<(Decoder, bool), Error> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::Length(0), true));
    }
    if present.transfer_encoding {
        // Length and chunks both: the chunks win, and the connection is
        // not trusted with another request.
        let lone = !present.content_length;
        return Ok(if present.chunked_last {
            (Decoder::chunked(), lone)
        } else {
            (Decoder::UntilClose, false)
        });
    }
    if !present.content_length {
        return Ok((Decoder::UntilClose, false));
    }
    match present.length {
        Some(n) => Ok((Decoder::Length(n), true)),
        None => Err(Error::protocol("invalid or conflicting content-length")),
    }
}

/// A body's next frame, as its decoder found it.
pub(crate) enum Next {
    Frame(Frame<Bytes>),
    End,
    NeedMore,
}

/// Where a body is, in the message it frames (the listener's request
/// bodies use it too).
#[derive(Debug)]
pub(crate) enum Decoder {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes.
    UntilClose,
    Ended,
}

#[derive(Debug)]
pub(crate) enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    /// The trailer fields so far (boxed, and made at the first: a decoder
    /// sits in every body, and few bodies have trailers), and how many
    /// bytes they took.
    Trailers {
        seen: usize,
        fields: Option<Box<HeaderMap>>,
    },
}

/// What the buffer gave.
enum Step {
    Data(Bytes),
    /// The trailer fields after the last chunk: the body's end.
    Trailers(HeaderMap),
    NeedMore,
    End,
}

impl Decoder {
    pub(crate) fn chunked() -> Decoder {
        Decoder::Chunked(Chunked::Size)
    }

    /// The body's next frame in `read`; after a frame, [`Self::is_ended`]
    /// tells whether it was the last. Its only errors are
    /// [`Error::Protocol`].
    pub(crate) fn next(&mut self, read: &mut BytesMut) -> Result<Next, Error> {
        Ok(match self.step(read)? {
            Step::Data(data) => Next::Frame(Frame::data(data)),
            Step::Trailers(fields) => Next::Frame(Frame::trailers(fields)),
            Step::End => Next::End,
            Step::NeedMore => Next::NeedMore,
        })
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self, Decoder::Ended | Decoder::Length(0))
    }

    /// The next piece of body in `read`.
    fn step(&mut self, read: &mut BytesMut) -> Result<Step, Error> {
        match self {
            Decoder::Ended | Decoder::Length(0) => {
                *self = Decoder::Ended;
                Ok(Step::End)
            }
            Decoder::Length(left) => {
                if read.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (*left).min(read.len() as u64);
                *left -= n;
                Ok(Step::Data(read.split_to(n as usize).freeze()))
            }
            Decoder::UntilClose => Ok(if read.is_empty() {
                Step::NeedMore
            } else {
                Step::Data(read.split().freeze())
            }),
            Decoder::Chunked(state) => {
                let step = state.step(read)?;
                if let Step::End | Step::Trailers(_) = step {
                    *self = Decoder::Ended;
                }
                Ok(step)
            }
        }
    }
}

impl Chunked {
    fn step(&mut self, read: &mut BytesMut) -> Result<Step, Error> {
        loop {
            match self {
                Chunked::Size => {
                    let Some(line) = take_line(read, MAX_CHUNK_LINE, "chunk-size line")? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        Chunked::Trailers {
                            seen: 0,
                            fields: None,
                        }
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if read.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let left = *left;
                    let n = left.min(read.len() as u64);
                    *self = if n == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n)
                    };
                    return Ok(Step::Data(read.split_to(n as usize).freeze()));
                }
                Chunked::DataEnd => {
                    if read.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err(Error::protocol("chunk not followed by CRLF"));
                    }
                    read.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers { seen, fields } => {
                    let limit = MAX_TRAILER_BYTES - *seen;
                    let Some(line) = take_line(read, limit, "trailer section")? else {
                        return Ok(Step::NeedMore);
                    };
                    if line.is_empty() {
                        return Ok(match fields.take() {
                            Some(fields) => Step::Trailers(*fields),
                            None => Step::End,
                        });
                    }
                    *seen += line.len() + 2;
                    let (name, value) = trailer_field(&line)?;
                    fields.get_or_insert_default().append(name, value);
                }
            }
        }
    }
}

/// The line at the front of `read` without its CRLF, taken out of it;
/// `None` until it is all there. Longer than `limit`: an error.
fn take_line(read: &mut BytesMut, limit: usize, what: &str) -> Result<Option<BytesMut>, Error> {
    let window = &read[..read.len().min(limit)];
    match window.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && read[end - 1] == b'\r' => {
            let mut line = read.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(Error::protocol(format!("{what} not ended by CRLF"))),
        None if read.len() >= limit => Err(Error::protocol(format!("{what} too long"))),
        None => Ok(None),
    }
}

/// A `name: value` trailer line.
fn trailer_field(line: &[u8]) -> Result<(HeaderName, HeaderValue), Error> {
    let invalid = || Error::protocol("invalid trailer field");
    let colon = line.iter().position(|b| *b == b':').ok_or_else(invalid)?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| invalid())?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| invalid())?;
    Ok((name, value))
}

/// The size of a chunk from its line: hex digits, then optional
/// `;extensions` (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(Error::protocol("invalid chunk size"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| Error::protocol("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| Error::protocol("invalid chunk size"))
}

/// A response body read from its connection. Read to its end, it sends the
/// connection home; dropped before, it closes it.
pub struct ResponseBody<B> {
    conn: Option<Connection>,
    decoder: Decoder,
    /// The rest of the request, while it is still going up (boxed: it
    /// rarely is).
    writer: Option<Box<Writer<B>>>,
    reusable: bool,
    home: Option<Home>,
    /// A frame was returned since the body last said `Pending`.
    gave_data: bool,
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("decoder", &self.decoder)
            .field("reusable", &self.reusable)
            .finish()
    }
}

impl<B> ResponseBody<B> {
    /// The body ended: its connection goes home if it can carry another
    /// request, and is closed if not.
    fn end(&mut self) {
        self.decoder = Decoder::Ended;
        let conn = self.conn.take();
        if let (Some(mut conn), Some(home), true, None) =
            (conn, self.home.take(), self.reusable, &self.writer)
        {
            if conn.read.is_empty() {
                conn.rest();
                let idle = Idle {
                    conn,
                    since: Instant::now(),
                };
                home.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(idle);
            }
        }
    }

    /// After a 101: the connection, with whatever the upstream sent past
    /// its head, for the tunnel.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        let conn = self.conn.take()?;
        Some(Upgraded {
            read_ahead: conn.read.freeze(),
            io: conn.io,
        })
    }

    /// Fails the body, but not in the poll right after a frame: hyper
    /// writes a response's head and first frames together, and drops them
    /// unsent when the body fails before it flushed. One `Pending` lets
    /// them out first (the failure, a close or a reset, is found again).
    fn fail(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if std::mem::take(&mut self.gave_data) && !e.is_protocol() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.conn = None;
        self.decoder = Decoder::Ended;
        Poll::Ready(Some(Err(e)))
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(writer) = &mut this.writer {
            match writer.poll_write(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.writer = None,
                // The upstream answered; the rest of the upload is not
                // needed, and the connection not reused.
                Poll::Ready(Err(_)) => {
                    this.writer = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.decoder.next(&mut conn.read) {
                Ok(Next::Frame(frame)) => {
                    if this.decoder.is_ended() {
                        this.end();
                    }
                    this.gave_data = frame.is_data();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Next::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Next::NeedMore) => {}
                Err(e) => return this.fail(e, cx),
            }
            match conn.poll_fill_lean(cx) {
                Poll::Ready(Ok(0)) => {
                    if let Decoder::UntilClose = this.decoder {
                        this.reusable = false;
                        this.end();
                        return Poll::Ready(None);
                    }
                    let what = match this.decoder {
                        Decoder::Chunked(_) => "in a chunked body",
                        _ => "short of its content-length",
                    };
                    return this.fail(Error::Incomplete(what), cx);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e.into(), cx),
                Poll::Pending => {
                    this.gave_data = false;
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(left) => SizeHint::with_exact(left),
            Decoder::Ended => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        // hyper does not poll a body that says it ended (empty ones, HEAD).
        if self.decoder.is_ended() && self.conn.is_some() {
            self.end();
        }
    }
}

/// A connection switched to another protocol (after a 101): the bytes
/// already read past the HTTP head first, then the socket. The upstream's
/// by default; the listener makes the client's.
pub struct Upgraded<T = Box<Io>> {
    read_ahead: Bytes,
    io: T,
}

impl<T> Upgraded<T> {
    pub(crate) fn new(read_ahead: Bytes, io: T) -> Upgraded<T> {
        Upgraded { read_ahead, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Upgraded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Upgraded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};
    use proptest::prelude::*;

    #[tokio::test]
    async fn a_lean_read_holds_no_buffer_while_the_peer_is_silent() {
        use tokio::io::AsyncWriteExt;
        let (mut peer, mut io) = tokio::io::duplex(64 * 1024);
        let (mut read, mut size) = (BytesMut::with_capacity(INIT_READ), INIT_READ);
        let mut cx = Context::from_waker(Waker::noop());
        let waited = poll_fill_lean(&mut io, &mut read, &mut size, &mut cx);
        assert!(waited.is_pending());
        assert_eq!(read.capacity(), 0, "the empty buffer was let go");
        // An event arrives: only its bytes are allocated.
        peer.write_all(b"data: one\n\n").await.unwrap();
        let got = poll_fill_lean(&mut io, &mut read, &mut size, &mut cx);
        assert!(matches!(got, Poll::Ready(Ok(11))), "{got:?}");
        assert_eq!(&read[..], b"data: one\n\n");
        assert!(read.capacity() < 64, "{} bytes held", read.capacity());
        // A buffer with something in it is kept and added to.
        peer.write_all(b"more").await.unwrap();
        let got = poll_fill_lean(&mut io, &mut read, &mut size, &mut cx);
        assert!(matches!(got, Poll::Ready(Ok(4))), "{got:?}");
        assert_eq!(&read[..], b"data: one\n\nmore");
        // A read that fills its room doubles the next: big bodies leave
        // the stack path for the pooled buffer.
        read.clear();
        peer.write_all(&vec![b'x'; 3 * INIT_READ]).await.unwrap();
        let got = poll_fill_lean(&mut io, &mut read, &mut size, &mut cx);
        assert!(
            matches!(got, Poll::Ready(Ok(n)) if n == INIT_READ),
            "{got:?}"
        );
        assert_eq!(size, 2 * INIT_READ);
        let got = poll_fill_lean(&mut io, &mut read, &mut size, &mut cx);
        assert!(matches!(got, Poll::Ready(Ok(n)) if n > 0), "{got:?}");
        assert!(read.len() > INIT_READ, "read on into the pooled buffer");
    }

    /// Decodes `wire` fed in pieces of the given sizes (cycled); returns
    /// the body and what was left in the buffer after its end.
    fn decode(
        mut decoder: Decoder,
        wire: &[u8],
        pieces: &[usize],
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let mut read = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        let mut piece = pieces.iter().cycle();
        loop {
            match decoder.step(&mut read)? {
                Step::Data(data) => body.extend_from_slice(&data),
                Step::Trailers(fields) => {
                    let names: Vec<_> = fields.keys().map(|k| k.as_str().to_owned()).collect();
                    body.extend_from_slice(format!("<trailers {}>", names.join(",")).as_bytes());
                }
                Step::End => return Ok((body, read.to_vec())),
                Step::NeedMore if fed == wire.len() => {
                    return Err(Error::Incomplete("in the test"))
                }
                Step::NeedMore => {
                    let n = (*piece.next().unwrap()).clamp(1, wire.len() - fed);
                    read.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    proptest! {
        /// Any body cut into any chunks, with extensions and trailers, read
        /// in any pieces, comes out whole with its trailers, and the bytes
        /// after it stay.
        #[test]
        fn chunked_bodies_decode_whole_across_any_reads(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            pieces in proptest::collection::vec(1usize..64, 1..8),
            extension in any::<bool>(),
            trailer in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut size = sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (*size.next().unwrap()).min(rest.len());
                let ext = if extension { ";name=value" } else { "" };
                wire.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(b"0\r\n");
            if trailer {
                wire.extend_from_slice(b"x-checksum: abc\r\n");
            }
            wire.extend_from_slice(b"\r\nHTTP/1.1 200 OK\r\n");
            let (decoded, left) = decode(Decoder::chunked(), &wire, &pieces).unwrap();
            let mut expected = body.clone();
            if trailer {
                expected.extend_from_slice(b"<trailers x-checksum>");
            }
            prop_assert_eq!(decoded, expected);
            // What follows the body is read past only as far as a piece went.
            prop_assert!(b"HTTP/1.1 200 OK\r\n".starts_with(&left));
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (body, left) = decode(Decoder::Length(5), b"helloEXTRA", &[3]).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(left, b"E", "the rest of the last read stays");
        let (body, left) = decode(Decoder::Length(5), b"helloEXTRA", &[10]).unwrap();
        assert_eq!(
            (body.as_slice(), left.as_slice()),
            (&b"hello"[..], &b"EXTRA"[..])
        );
    }

    #[test]
    fn broken_chunks_are_protocol_errors() {
        for wire in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"2\r\nabX\r\n0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            let e = decode(Decoder::chunked(), wire, &[100]).unwrap_err();
            assert!(e.is_protocol(), "{:?}: {e}", String::from_utf8_lossy(wire));
        }
        let long_line = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert!(decode(Decoder::chunked(), long_line.as_bytes(), &[100])
            .unwrap_err()
            .is_protocol());
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() <= MAX_TRAILER_BYTES {
            trailers.extend_from_slice(b"x-pad: 0123456789012345678901234567890123456789\r\n");
        }
        assert!(decode(Decoder::chunked(), &trailers, &[1000])
            .unwrap_err()
            .is_protocol());
        let bad_trailer = b"0\r\nno colon here\r\n\r\n";
        assert!(decode(Decoder::chunked(), bad_trailer, &[100])
            .unwrap_err()
            .is_protocol());
    }

    #[test]
    fn a_body_cut_short_needs_more() {
        assert!(matches!(
            decode(Decoder::chunked(), b"5\r\nab", &[100]),
            Err(Error::Incomplete(_))
        ));
        assert!(matches!(
            decode(Decoder::Length(5), b"ab", &[100]),
            Err(Error::Incomplete(_))
        ));
    }

    fn head(wire: &str, head_request: bool) -> Result<Option<(Head, BytesMut)>, Error> {
        let mut read = BytesMut::from(wire);
        Ok(parse_head(&mut read, head_request)?.map(|head| (head, read)))
    }

    fn complete(wire: &str) -> Head {
        head(wire, false).unwrap().expect("a complete head").0
    }

    #[test]
    fn a_head_is_parsed_with_its_fields_and_framing() {
        let (h, rest) = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), 201, "the interim 100 is skipped");
        let values: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(matches!(h.decoder, Decoder::Length(3)));
        assert!(h.reusable);
        assert_eq!(&rest[..], b"abc");
        assert!(head("HTTP/1.1 200 OK\r\nContent-Len", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let no_body = [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        ];
        for wire in no_body {
            let h = complete(wire);
            assert!(
                matches!(h.decoder, Decoder::Length(0)) && h.reusable,
                "{wire}"
            );
        }
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(
            matches!(h.decoder, Decoder::Length(0)),
            "a HEAD response has no body"
        );

        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Chunked(_)) && h.reusable);
        let h =
            complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert!(
            matches!(h.decoder, Decoder::Chunked(_)) && !h.reusable,
            "chunks win, trust goes"
        );
        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        let h = complete("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        let h = complete("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Length(4)));
        let h = complete("HTTP/1.1 200 OK\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Length(4)));
        // The last field decides; an empty last item is not `chunked`.
        let h = complete(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        // A framing field `Connection` names leaves the map, not the framing.
        let h =
            complete("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Length(3)) && h.reusable);
        assert!(h.response.headers().is_empty());

        for not_again in [
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(!complete(not_again).reusable, "{not_again}");
        }
    }

    #[test]
    fn connection_and_the_fields_it_names_stop_here() {
        let names = |h: &Head| -> Vec<String> {
            let mut names: Vec<_> = h.response.headers().keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        let h = complete(
            "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nconnection: ,x-other ,\r\nX-Other: 3\r\nContent-Length: 0\r\n\r\n",
        );
        // `Keep-Alive` is the proxy filter's to remove, as with HTTP/2.
        assert_eq!(names(&h), ["content-length", "keep-alive", "x-end"]);
        assert!(h.reusable, "keep-alive and field names are not close");

        let h = complete("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&h), ["content-length"]);
        assert!(!h.reusable);

        let h = complete(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        assert_eq!(
            names(&h),
            ["connection", "upgrade"],
            "a 101's are the proxy's to pass on"
        );
    }

    #[test]
    fn bad_heads_are_protocol_errors() {
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            let e = head(wire, false).map(|_| ()).unwrap_err();
            assert!(e.is_protocol(), "{wire}: {e}");
        }
    }

    /// A connection whose upstream closed is unfit, even when the task
    /// asking has spent its cooperative budget (tokio's resources then
    /// answer `Pending` without looking).
    #[tokio::test]
    async fn a_closed_connection_is_unfit_even_with_the_budget_spent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut conn = Connection::new(TokioIo::new(hyper_rustls::MaybeHttpsStream::Http(
            TokioIo::new(client.unwrap()),
        )));
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

    fn encoded<B: Body>(req: &Request<B>) -> (String, Framing) {
        let (head, framing) = encode_head(req, "up.example:8080");
        (String::from_utf8(head.to_vec()).unwrap(), framing)
    }

    #[test]
    fn the_request_head_carries_the_framing_the_body_needs() {
        let get = Request::get("http://up.example:8080/v1/x?q=1")
            .header("x-a", "1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (head, framing) = encoded(&get);
        assert_eq!(
            head,
            "GET /v1/x?q=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-a: 1\r\n\r\n"
        );
        assert!(matches!(framing, Framing::None));

        let sized = Request::post("/p")
            .header("host", "api.example")
            .header("content-length", "3")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let (head, framing) = encoded(&sized);
        assert_eq!(
            head,
            "POST /p HTTP/1.1\r\nhost: api.example\r\ncontent-length: 3\r\n\r\n"
        );
        assert!(matches!(framing, Framing::Length(3)));

        let unsized_ = Request::post("/p")
            .header("host", "api.example")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let (head, framing) = encoded(&unsized_);
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        assert!(matches!(framing, Framing::Chunked));
    }
}
