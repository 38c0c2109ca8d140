//! The two body types on the proxy path. Both stream frame by frame and
//! never collect: [`RequestBody`] carries the client's body upstream (idle
//! timeout, size limit, byte count); [`ProxyBody`] carries the upstream's
//! body, or a small proxy-made one, to the client and finishes the
//! request's [`RequestRecord`] when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub(crate) use crate::body_state::{BodyFailure, FailureSlot};
use crate::error_kind::UpstreamErrorKind;
use crate::gate::usage::UsageCell;
use crate::http1::{self, Upgraded};
use crate::pool::{UpstreamBody, UpstreamBodyError};
use crate::record::{Outcome, RequestRecord};
use crate::stats::PrefixStats;

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("no data for {0:?} (idle timeout)")]
    Idle(Duration),
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("client body failed: {0}")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("upstream body failed: {0}")]
    Upstream(#[source] UpstreamBodyError),
}

/// Fires when a body has been silent for the whole timeout. The timer is
/// created on the first wait, so bodies that never wait cost no timer.
#[derive(Debug)]
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
        }
    }

    fn on_frame(&mut self) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(Instant::now() + self.timeout);
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }

    /// Polls `body` for its next frame; a body silent for the whole timeout
    /// ends in [`BodyError::Idle`], a failing one in `on_error(e)`.
    fn poll_frame<B: Body<Data = Bytes> + Unpin>(
        &mut self,
        body: &mut B,
        cx: &mut Context<'_>,
        on_error: fn(B::Error) -> BodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.on_frame();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(on_error(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if self.poll_expired(cx) => {
                Poll::Ready(Some(Err(BodyError::Idle(self.timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl BodyFailure {
    pub(crate) fn of(error: &BodyError) -> BodyFailure {
        match error {
            BodyError::TooLarge(limit) => BodyFailure::TooLarge(*limit),
            BodyError::Idle(d) => BodyFailure::Idle(*d),
            BodyError::Client(e)
                if e.downcast_ref::<crate::http1::InboundBodyError>()
                    .is_some_and(crate::http1::InboundBodyError::is_framing) =>
            {
                BodyFailure::Malformed
            }
            BodyError::Client(_) | BodyError::Upstream(_) => BodyFailure::Client,
        }
    }
}

/// A request body as the client sends it: over our HTTP/1.1 listener or
/// hyper's HTTP/2 one.
#[derive(Debug)]
pub(crate) enum ClientBody {
    Empty,
    H1(http1::InboundBody),
    H2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
        }
    }
}

/// The client's request body on its way upstream.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: ClientBody,
    idle: IdleTimer,
    limit: Option<u64>,
    received: u64,
    /// Counts the bytes taken; `None` when there is no body to take.
    stats: Option<Arc<PrefixStats>>,
    /// The proxy key's usage, on a keyed mapping.
    key: Option<Arc<UsageCell>>,
    failure: Option<FailureSlot>,
}

impl RequestBody {
    /// The body and, when there is a body to stream at all, the slot it
    /// records a failure in.
    pub(crate) fn new(
        inner: ClientBody,
        idle: Duration,
        limit: Option<u64>,
        stats: &Arc<PrefixStats>,
        key: Option<&Arc<UsageCell>>,
    ) -> (Self, Option<FailureSlot>) {
        // A request without a body (most GETs) takes no reference: every
        // clone of a shared Arc is a write other workers contend on.
        let has_body = !inner.is_end_stream();
        let failure = has_body.then(FailureSlot::default);
        let stats = has_body.then(|| stats.clone());
        let body = RequestBody {
            inner,
            idle: IdleTimer::new(idle),
            limit,
            received: 0,
            stats,
            key: key.filter(|_| has_body).cloned(),
            failure: failure.clone(),
        };
        (body, failure)
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
        let mut polled = this.idle.poll_frame(&mut this.inner, cx, BodyError::Client);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                this.received += n;
                if let Some(stats) = &this.stats {
                    stats.bytes_in(n);
                }
                if let Some(key) = &this.key {
                    key.bytes_in(n);
                }
                if let Some(limit) = this.limit.filter(|limit| this.received > *limit) {
                    polled = Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                }
            }
        }
        if let Some(slot) = &this.failure {
            match &polled {
                Poll::Ready(Some(Err(e))) => {
                    let _ = slot.failure.set(BodyFailure::of(e));
                }
                Poll::Ready(Some(Ok(_))) | Poll::Ready(None) => {
                    slot.moved(this.received);
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's side of a switched connection, and what names the
/// tunnel in logs.
pub(crate) struct Tunnel {
    pub(crate) upstream: Upgraded,
    pub(crate) prefix: Arc<str>,
    pub(crate) request_id: http::HeaderValue,
}

/// A response body on its way to the client.
pub(crate) struct ProxyBody {
    kind: Kind,
    record: Option<RequestRecord>,
}

enum Kind {
    Full(Option<Bytes>),
    /// A 101: the upstream's switched connection, for the listener to join
    /// to the client's.
    Tunnel(Option<Tunnel>),
    /// An HTTP/1.1 body sends its connection back to the pool itself when
    /// it is read to the end.
    Upstream {
        body: UpstreamBody<RequestBody>,
        idle: IdleTimer,
    },
}

impl ProxyBody {
    /// A proxy-made body (errors, health, metrics).
    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            record: None,
        }
    }

    pub(crate) fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            record: None,
        }
    }

    /// The body of a 101: no bytes, but the upstream connection to tunnel
    /// to.
    pub(crate) fn tunnel(tunnel: Tunnel) -> Self {
        ProxyBody {
            kind: Kind::Tunnel(Some(tunnel)),
            record: None,
        }
    }

    /// The upstream connection of a 101 body, once.
    pub(crate) fn take_tunnel(&mut self) -> Option<Tunnel> {
        match &mut self.kind {
            Kind::Tunnel(tunnel) => tunnel.take(),
            _ => None,
        }
    }

    /// The upstream's body, watched for silence longer than `idle`.
    pub(crate) fn upstream(
        body: UpstreamBody<RequestBody>,
        idle: Duration,
        record: RequestRecord,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                body,
                idle: IdleTimer::new(idle),
            },
            record: Some(record),
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(mut record) = self.record.take() {
            record.finish(outcome);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Tunnel(_) => Poll::Ready(None),
            Kind::Upstream { body, idle } => idle.poll_frame(body, cx, BodyError::Upstream),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), &mut this.record) {
                    record.bytes_out(data.len() as u64);
                }
            }
            Poll::Ready(Some(Err(e))) => this.finish(Outcome::Failed(upstream_body_error_kind(e))),
            Poll::Ready(None) => this.finish(Outcome::Completed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Tunnel(_) => true,
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Tunnel(_) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Tunnel(_) => "tunnel",
            Kind::Upstream { .. } => "upstream",
        };
        f.debug_struct("ProxyBody").field("kind", &kind).finish()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper never polls a body that says it is at its end (empty bodies,
        // HEAD): that is a completed response, not a cancelled one.
        let outcome = if self.is_end_stream() {
            Outcome::Completed
        } else {
            Outcome::Cancelled
        };
        self.finish(outcome);
    }
}

fn upstream_body_error_kind(e: &BodyError) -> UpstreamErrorKind {
    match e {
        BodyError::Idle(_) => UpstreamErrorKind::Timeout,
        BodyError::Upstream(e) => e.kind(),
        _ => UpstreamErrorKind::Reset,
    }
}
