//! The client's side of a connection as the listener reads it: the read
//! half and its buffer, and a request body streamed from it. The read side
//! is lent to the body while it streams up and comes back when the body
//! was read to its end.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::codec::{self, Decoder, Next};
use super::request_head::MAX_REQUEST_HEAD;
use super::Upgraded;

/// The first read of a request takes up to this much, like nginx's
/// `client_header_buffer_size` (1 KiB): API request heads are a few
/// hundred bytes. Bodies grow the reads (doubling, as the upstream
/// client's do). Every client connection holds one such buffer.
const INIT_READ: usize = 2 * 1024;

/// The client's read side, and what was read from it but not used yet.
#[derive(Debug)]
pub(crate) struct Inbound {
    io: OwnedReadHalf,
    pub(crate) read: BytesMut,
    read_size: usize,
}

impl Inbound {
    pub(crate) fn new(io: OwnedReadHalf) -> Inbound {
        Inbound {
            io,
            read: BytesMut::new(),
            read_size: INIT_READ,
        }
    }

    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        codec::poll_fill(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// While a request is answered: `Ready` once the client closed or
    /// broke its connection. What it sends meanwhile (a pipelined request)
    /// is kept, up to a head's worth; past that it is not read. `lean`:
    /// the answer is streaming, and may for long: hold no buffer while
    /// the client is silent (see [`codec::poll_fill_lean`]).
    pub(crate) fn poll_gone(&mut self, cx: &mut Context<'_>, lean: bool) -> Poll<()> {
        while self.read.len() <= MAX_REQUEST_HEAD {
            let filled = if lean {
                codec::poll_fill_lean(&mut self.io, &mut self.read, &mut self.read_size, cx)
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

    /// The connection whole again, for a tunnel after a 101: what the
    /// client sent past its head is read first.
    pub(crate) fn upgrade(self, write: OwnedWriteHalf) -> Option<Upgraded<TcpStream>> {
        let stream = self.io.reunite(write).ok()?;
        Some(Upgraded::new(self.read.freeze(), stream))
    }

    /// Between requests: a buffer grown for a big upload is let go.
    pub(crate) fn rest(&mut self) {
        if self.read.is_empty() && self.read.capacity() > 2 * INIT_READ {
            self.read = BytesMut::new();
        }
        self.read_size = INIT_READ;
    }
}

/// What request bodies share with their connection: where the read side
/// goes back, and whether the client waits for `100 Continue`.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    inbound: Mutex<Option<Inbound>>,
    pub(crate) wants_continue: AtomicBool,
}

impl Shared {
    pub(crate) fn take(&self) -> Option<Inbound> {
        self.inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A request body read from the client's connection.
#[derive(Debug)]
pub(crate) struct InboundBody {
    /// `None` once the body ended or failed.
    inbound: Option<Inbound>,
    decoder: Decoder,
    shared: Arc<Shared>,
    /// The client sent `Expect: 100-continue` and was not answered yet.
    expects_continue: bool,
}

/// How a request body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InboundBodyError {
    #[error("client connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection inside the request body")]
    Closed,
    #[error("invalid request body: {0}")]
    Framing(String),
}

impl InboundBodyError {
    /// The body itself is malformed (the client is still there to be
    /// told so).
    pub(crate) fn is_framing(&self) -> bool {
        matches!(self, InboundBodyError::Framing(_))
    }
}

impl InboundBody {
    pub(crate) fn new(
        inbound: Inbound,
        decoder: Decoder,
        shared: Arc<Shared>,
        expects_continue: bool,
    ) -> InboundBody {
        InboundBody {
            inbound: Some(inbound),
            decoder,
            shared,
            expects_continue,
        }
    }

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

    fn fail(
        &mut self,
        e: InboundBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundBodyError>>> {
        self.inbound = None;
        self.decoder = Decoder::Ended;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for InboundBody {
    type Data = Bytes;
    type Error = InboundBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundBodyError>>> {
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
                Err(e) => return this.fail(InboundBodyError::Framing(e.0)),
            }
            match ready!(inbound.poll_fill(cx)) {
                Ok(0) => return this.fail(InboundBodyError::Closed),
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
