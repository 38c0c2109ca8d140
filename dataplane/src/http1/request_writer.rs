//! The request as our client writes it upstream: the head, then the body
//! frame by frame, framed by the client's length or by chunks.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::codec::parse_length;
use super::connection::ExchangeError;
use super::Io;

/// How the request body is framed.
#[derive(Debug, Clone, Copy)]
pub(super) enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

/// The request head in wire form, and the body's framing: the client's
/// `Content-Length` when it gave one, chunked when the length is unknown,
/// nothing when there is no body.
pub(super) fn encode_head<B: Body>(req: &Request<B>, host: &str) -> (Bytes, RequestFraming) {
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
        Some(len) => RequestFraming::Length(parse_length(len.as_bytes()).unwrap_or(0)),
        // As hyper: a GET or HEAD without a length carries no body (an
        // HTTP/2 client may end one with an empty DATA frame).
        None if req.body().is_end_stream() => RequestFraming::None,
        None if matches!(*req.method(), Method::GET | Method::HEAD) => RequestFraming::None,
        None => RequestFraming::Chunked,
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
    if let RequestFraming::Chunked = framing {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out.freeze(), framing)
}

/// Writes the request: the head, then the body frame by frame, each only
/// once the last is written (the client's upload moves at the upstream's
/// pace).
pub(super) struct Writer<B> {
    /// Bytes to write, in order: the head, then each frame and its framing.
    pub(super) queue: VecDeque<Bytes>,
    /// Taken only to give the request back unsent.
    pub(super) body: Option<B>,
    /// The body ended (or there is none): only the queue is left.
    pub(super) ended: bool,
    /// Everything written was flushed (TLS holds bytes until then).
    pub(super) flushed: bool,
    pub(super) framing: RequestFraming,
    /// Bytes written so far.
    pub(super) written: u64,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    pub(super) fn is_done(&self) -> bool {
        self.queue.is_empty() && self.ended && self.flushed
    }

    /// Writes nothing more (the upstream stopped taking the request).
    pub(super) fn stop(&mut self) {
        self.queue.clear();
        self.ended = true;
        self.flushed = true;
    }

    /// Writes as much as can go now; ready once the whole request is out.
    pub(super) fn poll_write(
        &mut self,
        io: &mut Io,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
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
                Some(Err(e)) => return Poll::Ready(Err(ExchangeError::Body(e.into()))),
                None => {
                    self.ended = true;
                    match self.framing {
                        RequestFraming::Length(0) | RequestFraming::None => {}
                        RequestFraming::Length(short) => {
                            return Poll::Ready(Err(ExchangeError::BodyShort(short)))
                        }
                        RequestFraming::Chunked => {
                            self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"))
                        }
                    }
                }
            }
        }
    }

    fn push(&mut self, data: Bytes) -> Result<(), ExchangeError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            RequestFraming::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(ExchangeError::BodyLong)?;
                self.queue.push_back(data);
            }
            RequestFraming::Chunked => {
                self.queue
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
            RequestFraming::None => return Err(ExchangeError::BodyLong),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};

    fn encoded<B: Body>(req: &Request<B>) -> (String, RequestFraming) {
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
        assert!(matches!(framing, RequestFraming::None));

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
        assert!(matches!(framing, RequestFraming::Length(3)));

        let unsized_ = Request::post("/p")
            .header("host", "api.example")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let (head, framing) = encoded(&unsized_);
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        assert!(matches!(framing, RequestFraming::Chunked));
    }
}
