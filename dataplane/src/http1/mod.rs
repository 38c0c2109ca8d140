//! HTTP/1.1 on the wire, both sides: the upstream client (`client` over a
//! `connection`: the request writer, the response head and body) and the listener's pieces (the request head, the
//! request body read from the client, the response writer). What both
//! sides share (limits, body framing and decoding, buffer fills) is in
//! `codec`. Nothing here knows the proxy or how a connection was made: the
//! client speaks over any [`Io`], and the listener's loop
//! (`crate::listener::http1`) drives the server-side pieces.

mod client;
mod codec;
mod connection;
mod inbound;
mod request_head;
mod request_writer;
mod response_body;
mod response_head;
mod response_writer;
mod upgraded;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use client::{send, Exchange, Failed};
pub(crate) use connection::{Connection, ExchangeError, Home};
pub(crate) use inbound::{Inbound, InboundBody, InboundBodyError, Shared};
pub(crate) use request_head::{parse_request_head, Refusal, RequestHead, MAX_REQUEST_HEAD};
pub(crate) use response_body::ResponseBody;
pub(crate) use response_writer::{BodyAborted, ResponseFraming, ResponseWriter, Sending};
pub(crate) use upgraded::Upgraded;

/// A connection's byte stream, whatever carries it (TCP, TLS over TCP):
/// the transport makes it, HTTP/1 only reads and writes it.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// A connection's stream, boxed once per connection (a TLS stream is
/// kilobytes), so that moving the connection between the pool, the send
/// and the body, and the futures and bodies holding it, stay small; the
/// address it was dialled at sits in the same box.
pub(crate) type Io = Box<Dialled<dyn Transport>>;

/// A stream and the address it was dialled at (for the access log).
pub(crate) struct Dialled<T: ?Sized> {
    pub(crate) peer: Option<SocketAddr>,
    stream: T,
}

impl<T: Transport + 'static> Dialled<T> {
    pub(crate) fn boxed(stream: T, peer: Option<SocketAddr>) -> Io {
        Box::new(Dialled { peer, stream })
    }
}

impl<T: ?Sized + AsyncRead + Unpin> AsyncRead for Dialled<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<T: ?Sized + AsyncWrite + Unpin> AsyncWrite for Dialled<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
