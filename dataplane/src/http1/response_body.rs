//! The upstream's response body, read from its connection by the request's
//! own task; it also writes what is left of the request body.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::codec::{Decoder, Next};
use super::connection::{Connection, ExchangeError, Home};
use super::request_writer::Writer;
use super::Upgraded;

/// A response body read from its connection. Read to its end, it sends the
/// connection home; dropped before, it closes it.
pub(crate) struct ResponseBody<B> {
    pub(super) conn: Option<Connection>,
    pub(super) decoder: Decoder,
    /// The rest of the request, while it is still going up (boxed: it
    /// rarely is).
    pub(super) writer: Option<Box<Writer<B>>>,
    pub(super) reusable: bool,
    pub(super) home: Option<Home>,
    /// A frame was returned since the body last said `Pending`.
    pub(super) gave_data: bool,
}

impl<B> ResponseBody<B> {
    /// The address of the connection it is read from.
    pub(crate) fn peer(&self) -> Option<std::net::SocketAddr> {
        self.conn.as_ref().and_then(Connection::peer)
    }
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
                home.put(conn);
            }
        }
    }

    /// After a 101: the connection, with whatever the upstream sent past
    /// its head, for the tunnel.
    pub(crate) fn into_upgraded(mut self) -> Option<Upgraded> {
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
        e: ExchangeError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
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
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
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
                Err(e) => return this.fail(e.into(), cx),
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
                    return this.fail(ExchangeError::Incomplete(what), cx);
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
