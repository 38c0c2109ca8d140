//! What a send through the pool gives back: the response with its body,
//! from either kind of connection, or why it failed.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};

use crate::connect::ConnectError;
use crate::error_kind::UpstreamErrorKind;
use crate::{h2, http1};

/// Why an upstream request failed before its response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    H2(#[source] h2::Error),
    #[error("{0}")]
    Exchange(#[source] http1::ExchangeError),
    #[error("the new upstream connection closed before taking the request")]
    Closed,
}

impl SendError {
    /// How the upstream failed, as the variant made where it failed says.
    pub(crate) fn kind(&self) -> UpstreamErrorKind {
        match self {
            SendError::Connect(e) => e.kind,
            SendError::H2(e) if e.is_protocol() => UpstreamErrorKind::Protocol,
            SendError::Exchange(e) if e.is_protocol() => UpstreamErrorKind::Protocol,
            _ => UpstreamErrorKind::Reset,
        }
    }

    /// The client's request body failed, not the upstream.
    pub(crate) fn is_client_body(&self) -> bool {
        match self {
            SendError::H2(e) => e.is_client_body(),
            SendError::Exchange(e) => e.is_client_body(),
            SendError::Connect(_) | SendError::Closed => false,
        }
    }
}

/// Why an upstream response body failed: its connection broke, or it broke
/// HTTP.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamBodyError {
    #[error(transparent)]
    H1(http1::ExchangeError),
    #[error(transparent)]
    H2(h2::Error),
}

impl UpstreamBodyError {
    pub(crate) fn kind(&self) -> UpstreamErrorKind {
        let protocol = match self {
            UpstreamBodyError::H1(e) => e.is_protocol(),
            UpstreamBodyError::H2(e) => e.is_protocol(),
        };
        if protocol {
            UpstreamErrorKind::Protocol
        } else {
            UpstreamErrorKind::Reset
        }
    }
}

/// What the pool can carry upstream: any streaming body hyper can write
/// on HTTP/1.1 and HTTP/2.
pub(crate) trait SendBody:
    http_body::Body<Data = Bytes, Error = Self::SendError> + Send + Unpin + 'static
{
    type SendError: Into<Box<dyn StdError + Send + Sync>>;
}

impl<B, E> SendBody for B
where
    B: http_body::Body<Data = Bytes, Error = E> + Send + Unpin + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    type SendError = E;
}

/// An upstream response body, from either kind of connection.
#[derive(Debug)]
pub(crate) enum UpstreamBody<B> {
    H1(http1::ResponseBody<B>),
    H2(h2::ResponseBody<B>),
}

impl<B> UpstreamBody<B> {
    /// The address of the upstream connection it is read from.
    pub(crate) fn peer(&self) -> Option<std::net::SocketAddr> {
        match self {
            UpstreamBody::H1(body) => body.peer(),
            UpstreamBody::H2(body) => body.peer(),
        }
    }

    /// After a 101 on HTTP/1.1: the connection, for the tunnel.
    pub(crate) fn into_upgraded(self) -> Option<http1::Upgraded> {
        match self {
            UpstreamBody::H1(body) => body.into_upgraded(),
            UpstreamBody::H2(_) => None,
        }
    }
}

impl<B: SendBody> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(UpstreamBodyError::H1),
            UpstreamBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(UpstreamBodyError::H2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::H2(body) => body.size_hint(),
        }
    }
}

/// A response head; its body reads the rest.
pub(crate) type SendResult<B> = Result<Response<UpstreamBody<B>>, SendError>;
