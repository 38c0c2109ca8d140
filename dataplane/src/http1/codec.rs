//! What both sides of HTTP/1.1 share: the limits they agree on, how a body
//! is framed and decoded (by length, by chunks, or until the close), and
//! how a connection's read buffer is filled.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, ReadBuf};

/// A head's fields, by name, with where each value lies in the head
/// (both sides' parsers); on the stack for up to 16.
pub(crate) type Found = SmallVec<[(HeaderName, usize, usize); 16]>;

/// Most fields in a head, request or response (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// Reads that fill the buffer double the next, up to this: big streams
/// move in big reads (hyper's client grows its reads to about 400 KiB).
const MAX_READ: usize = 512 * 1024;
/// The largest read [`poll_fill_lean`] takes through the stack.
const STACK_READ: usize = 4 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most trailer bytes read (and dropped) after the last chunk.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// A body or head that breaks HTTP/1.1's framing rules.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FramingError(pub(crate) String);

impl FramingError {
    fn new(what: impl Into<String>) -> FramingError {
        FramingError(what.into())
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
/// reused buffer: copying them cost instructions on every request.)
pub(crate) fn poll_fill_lean<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !read.is_empty() || *read_size > STACK_READ {
        return poll_fill(io, read, read_size, cx);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
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
    /// tells whether it was the last.
    pub(crate) fn next(&mut self, read: &mut BytesMut) -> Result<Next, FramingError> {
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
    fn step(&mut self, read: &mut BytesMut) -> Result<Step, FramingError> {
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
    fn step(&mut self, read: &mut BytesMut) -> Result<Step, FramingError> {
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
                        return Err(FramingError::new("chunk not followed by CRLF"));
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
fn take_line(
    read: &mut BytesMut,
    limit: usize,
    what: &str,
) -> Result<Option<BytesMut>, FramingError> {
    let window = &read[..read.len().min(limit)];
    match window.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && read[end - 1] == b'\r' => {
            let mut line = read.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(FramingError::new(format!("{what} not ended by CRLF"))),
        None if read.len() >= limit => Err(FramingError::new(format!("{what} too long"))),
        None => Ok(None),
    }
}

/// A `name: value` trailer line.
fn trailer_field(line: &[u8]) -> Result<(HeaderName, HeaderValue), FramingError> {
    let invalid = || FramingError::new("invalid trailer field");
    let colon = line.iter().position(|b| *b == b':').ok_or_else(invalid)?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| invalid())?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| invalid())?;
    Ok((name, value))
}

/// The size of a chunk from its line: hex digits, then optional
/// `;extensions` (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(FramingError::new("invalid chunk size"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| FramingError::new("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| FramingError::new("invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::task::Waker;

    const INIT_READ: usize = STACK_READ;

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

    /// How a test decode failed.
    #[derive(Debug)]
    enum Cut {
        Framing(FramingError),
        Incomplete,
    }

    impl Cut {
        fn is_protocol(&self) -> bool {
            matches!(self, Cut::Framing(_))
        }
    }

    impl std::fmt::Display for Cut {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Cut::Framing(e) => e.fmt(f),
                Cut::Incomplete => f.write_str("incomplete"),
            }
        }
    }

    impl From<FramingError> for Cut {
        fn from(e: FramingError) -> Cut {
            Cut::Framing(e)
        }
    }

    /// Decodes `wire` fed in pieces of the given sizes (cycled); returns
    /// the body and what was left in the buffer after its end.
    fn decode(
        mut decoder: Decoder,
        wire: &[u8],
        pieces: &[usize],
    ) -> Result<(Vec<u8>, Vec<u8>), Cut> {
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
                Step::NeedMore if fed == wire.len() => return Err(Cut::Incomplete),
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
            Err(Cut::Incomplete)
        ));
        assert!(matches!(
            decode(Decoder::Length(5), b"ab", &[100]),
            Err(Cut::Incomplete)
        ));
    }
}
