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

use tokio::io::{AsyncRead, AsyncWrite};

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
/// and the body, and the futures and bodies holding it, stay small.
pub(crate) type Io = Box<dyn Transport>;
