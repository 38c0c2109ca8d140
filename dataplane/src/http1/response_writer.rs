//! The response as the listener writes it to the client: the head, then
//! the body framed by length, by chunks or by the close, at the client's
//! pace.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::{Body, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use super::codec::parse_length;
use super::inbound::Inbound;
use crate::write_stall::WriteStallTimeout;

/// Response bytes queued before the body is polled for more: the client's
/// pace sets the upstream's.
const HIGH_WATER: usize = 64 * 1024;
/// Frames up to this size are copied behind the head, so a head and a
/// small body leave in one write; larger ones are written from where they
/// are.
const COPY_UP_TO: usize = 16 * 1024;
/// Segments handed to one vectored write.
const MAX_IOVS: usize = 32;

/// The response body failed or broke its framing: the connection is
/// dropped, so the client sees the cut.
#[derive(Debug, thiserror::Error)]
#[error("response body failed, connection aborted: {0}")]
pub(crate) struct BodyAborted(pub(crate) String);

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body: a HEAD request, 1xx, 204, 304 (its fields are sent as the
    /// upstream gave them).
    None,
    /// `Content-Length`: bytes still to write.
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and no length: the body ends with the connection.
    UntilClose,
}

impl ResponseFraming {
    pub(crate) fn of(
        parts: &Parts,
        body: &impl Body,
        head_request: bool,
        http10: bool,
    ) -> ResponseFraming {
        let status = parts.status;
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return ResponseFraming::None;
        }
        // A body of known size: the upstream's `Content-Length`, already
        // checked and counted down by our client (or by hyper's HTTP/2
        // client against the DATA frames), or a body of our own.
        if let Some(n) = body.size_hint().exact() {
            return ResponseFraming::Length(n);
        }
        if let Some(n) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| parse_length(v.as_bytes()))
        {
            return ResponseFraming::Length(n);
        }
        if http10 {
            ResponseFraming::UntilClose
        } else {
            ResponseFraming::Chunked
        }
    }
}

/// A response body on its way out.
pub(crate) struct Sending {
    framing: ResponseFraming,
    /// The client accepts trailer fields.
    trailers_wanted: bool,
    ended: bool,
}

impl Sending {
    pub(crate) fn new(framing: ResponseFraming, trailers_wanted: bool) -> Sending {
        Sending {
            framing,
            trailers_wanted,
            ended: false,
        }
    }
}

/// The client's write side and what is queued for it, in order: whole
/// segments (large frames, not copied), then `buf` (heads, small frames).
pub(crate) struct ResponseWriter {
    io: WriteStallTimeout<OwnedWriteHalf>,
    segments: VecDeque<Bytes>,
    buf: BytesMut,
    queued: usize,
}

impl ResponseWriter {
    pub(crate) fn new(io: WriteStallTimeout<OwnedWriteHalf>) -> ResponseWriter {
        ResponseWriter {
            io,
            segments: VecDeque::new(),
            buf: BytesMut::new(),
            queued: 0,
        }
    }

    pub(crate) fn put_slice(&mut self, bytes: &[u8]) {
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
    pub(crate) fn head(
        &mut self,
        parts: &Parts,
        framing: ResponseFraming,
        keep_alive: bool,
        http10: bool,
    ) {
        // Room for the head and a body small enough to be copied behind
        // it, so they leave in one write without the buffer growing.
        let fields: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let body = match framing {
            ResponseFraming::Length(n) if n as usize <= COPY_UP_TO => n as usize,
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
            ResponseFraming::Length(n) if !has_length => {
                use std::fmt::Write;
                let _ = write!(buf, "content-length: {n}\r\n");
            }
            ResponseFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
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
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
    pub(crate) fn poll_body<B>(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut B,
        sending: &mut Sending,
        mut watch: Option<&mut Inbound>,
    ) -> Poll<Result<bool, BodyAborted>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Display,
    {
        loop {
            let mut waiting = sending.ended;
            while !sending.ended && self.queued < HIGH_WATER {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.put_frame(frame, sending)?,
                    Poll::Ready(None) => self.finish(sending, None)?,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(BodyAborted(e.to_string())))
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

    fn put_frame(&mut self, frame: Frame<Bytes>, sending: &mut Sending) -> Result<(), BodyAborted> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return self.finish(sending, frame.into_trailers().ok()),
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut sending.framing {
            ResponseFraming::None => {}
            ResponseFraming::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(BodyAborted("response body longer than its length".into()));
                }
                *left -= n;
                self.put(data);
            }
            ResponseFraming::Chunked => {
                use std::fmt::Write;
                let before = self.buf.len();
                let _ = write!(self.buf, "{:x}\r\n", data.len());
                self.queued += self.buf.len() - before;
                self.put(data);
                self.put_slice(b"\r\n");
            }
            ResponseFraming::UntilClose => self.put(data),
        }
        Ok(())
    }

    /// The body's end: the last chunk (with trailers the client accepts).
    fn finish(
        &mut self,
        sending: &mut Sending,
        trailers: Option<HeaderMap>,
    ) -> Result<(), BodyAborted> {
        sending.ended = true;
        match sending.framing {
            ResponseFraming::Length(left) if left > 0 => Err(BodyAborted(format!(
                "response body ended {left} bytes short of its length"
            ))),
            ResponseFraming::Chunked => {
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
    pub(crate) async fn refuse<B>(&mut self, response: Response<B>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Display,
    {
        let (parts, mut body) = response.into_parts();
        let framing = ResponseFraming::of(&parts, &body, false, false);
        self.head(&parts, framing, false, false);
        let mut sending = Sending::new(framing, false);
        let _ = poll_fn(|cx| self.poll_body(cx, &mut body, &mut sending, None)).await;
        self.shutdown().await;
    }

    /// Closes the write side (the client reads the end of the stream).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }

    /// The write side, for a tunnel after a 101.
    pub(crate) fn into_inner(self) -> OwnedWriteHalf {
        self.io.into_inner()
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
    use http::HeaderValue;

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
        let full = http_body_util::Full::new(Bytes::from_static(b"four"));
        // The body's own size, checked against the length it came with.
        assert_eq!(
            ResponseFraming::of(&make(200, Some("4")), &full, false, false),
            ResponseFraming::Length(4)
        );
        assert_eq!(
            ResponseFraming::of(&make(200, None), &full, false, false),
            ResponseFraming::Length(4)
        );
        assert_eq!(
            ResponseFraming::of(&make(200, Some("9")), &full, true, false),
            ResponseFraming::None
        );
        assert_eq!(
            ResponseFraming::of(&make(204, None), &full, false, false),
            ResponseFraming::None
        );
        assert_eq!(
            ResponseFraming::of(&make(304, Some("9")), &full, false, false),
            ResponseFraming::None
        );
        // Chunks and the close (for a body of unknown length):
        // tests/tests/http1.rs, through the binary.
    }
}
