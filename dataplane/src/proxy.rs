//! The request path, top to bottom: refuse what is not ours to proxy →
//! match a mapping → build the upstream request → send it (the upstream
//! call stays inside this future, so a client that leaves cancels it) →
//! rewrite the response → splice an upgrade.

use std::borrow::{BorrowMut, Cow};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::uri::InvalidUri;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::access_log::{AccessEntry, RequestLog};
use crate::body::{BodyFailure, ClientBody, FailureSlot, ProxyBody, RequestBody, Tunnel};
use crate::budget::Held;
use crate::causes::chain;
use crate::deadline::{self, Timer};
use crate::error::{classify_send_error, ProxyError, SendFailure};
use crate::error_kind::UpstreamErrorKind;
use crate::gate::usage::UsageRegistry;
use crate::gate::{Admitted, Denied, Gate, Pass};
use crate::headers;
use crate::pool::{SendError, SendResult};
use crate::record::{Outcome, RequestRecord};
use crate::request_id::{self, X_APIPROXY_REQUEST_ID, X_REQUEST_ID};
use crate::routing::{has_dot_segment, plain_spelling, Route, Snapshot};
use crate::state::RoutingState;
use crate::stats::PrefixStats;
use crate::tunnel::Tunnels;
use crate::upstream::Upstream;

/// Everything a request needs, shared by all connections.
pub(crate) struct Proxy {
    pub(crate) state: Arc<RoutingState>,
    pub(crate) upstream: Upstream<RequestBody>,
    pub(crate) tunnels: Tunnels,
    pub(crate) response_header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) forwarded_headers: bool,
    /// Where each request's end is told besides the stats.
    pub(crate) log: &'static RequestLog,
}

impl Proxy {
    /// The request future. The checks, the routing and the rewrite happen
    /// here, where hyper calls the service (for HTTP/2 that is in the
    /// connection's task), before the future is first polled; none of them
    /// waits or panics. The future then drives the send up to the response
    /// head, and dropping it (the client left) drops the send. Must be
    /// called within the Tokio runtime (the header timeout counts from
    /// here).
    ///
    /// Written by hand rather than as an `async fn` because the listener
    /// keeps one such future per client connection while it waits, sized
    /// for its largest state: an `async fn` keeps each argument twice and
    /// each awaited future beside the values it was made from, and this
    /// one holds each part once (a unit test keeps it under 1 KiB).
    ///
    /// `timer`: the one the response-header deadline and the upstream
    /// budget's hold are kept with; an HTTP/1 connection lends its own
    /// (see [`Timer`]), an HTTP/2 stream owns one.
    pub(crate) fn handle<T: BorrowMut<Timer>>(
        self: Arc<Self>,
        req: Request<ClientBody>,
        client: SocketAddr,
        timer: T,
    ) -> Forward<impl Held<Output = SendResult<RequestBody>>, T> {
        // The one clock read of the request's start: its latency, its
        // response-header timeout and its budget hold count from it.
        match self.send(req, client, Instant::now(), timer) {
            Ok((head, in_flight)) => Forward::Waiting {
                head,
                in_flight: Some(in_flight),
            },
            Err(refused) => Forward::Answered {
                response: Some(refused.into_response()),
            },
        }
    }

    /// Everything before the upstream answers: refuse what is not ours,
    /// match a mapping, rewrite the request and start its send.
    fn send<T: BorrowMut<Timer>>(
        self: Arc<Self>,
        req: Request<ClientBody>,
        client: SocketAddr,
        start: Instant,
        timer: T,
    ) -> Result<
        (
            AwaitHead<impl Held<Output = SendResult<RequestBody>>, T>,
            InFlight,
        ),
        Refused,
    > {
        let id = request_id::of_request(req.headers());
        let entry = self.log.entry(&req, id.clone(), client);
        let record = |stats: &Arc<PrefixStats>, entry| {
            RequestRecord::reported(stats.clone(), start, self.log, entry)
        };
        let unmatched = |error, entry| refuse(record(self.state.metrics.unmatched(), entry), error);
        if let Err(e) = refuse_foreign_targets(&req) {
            return Err(unmatched(e, entry));
        }
        let Some(snapshot) = self.state.snapshot() else {
            return Err(unmatched(ProxyError::NotReady, entry));
        };
        let Some((route, rest)) = snapshot.lookup(req.uri().path()) else {
            let path = req.uri().path().to_owned();
            return Err(unmatched(ProxyError::NoMapping(path), entry));
        };
        let route = route.clone();
        let in_use = route.in_use(&self.state.metrics);
        let mut record = record(&in_use.stats, entry);
        if let Some(entry) = record.entry_mut() {
            entry.upstream = Some(in_use.upstream.host.clone());
        }
        // A keyed mapping lets through only a known proxy key, and swaps
        // in the upstream credential; a node with no policy skips this.
        let pass = match self.state.gate() {
            None => None,
            Some(gate) => match self.admit(&gate, &snapshot, &req, &route, &mut record) {
                Ok(pass) => pass,
                Err(error) => return Err(refuse(record, error)),
            },
        };
        let query = match &pass {
            Some(pass) => pass.query(req.uri().query()),
            None => req.uri().query().map(Cow::Borrowed),
        };
        let upstream_target = route.upstream_target(rest, query.as_deref());
        drop(query);
        drop(snapshot);

        if let Some(limit) = self.max_request_body {
            if content_length(&req).is_some_and(|len| len > limit) {
                return Err(refuse(record, ProxyError::PayloadTooLarge(limit)));
            }
        }
        let upgrading = headers::is_upgrade_request(req.headers());
        let (parts, body) = req.into_parts();
        let (body, body_failure) = RequestBody::new(
            body,
            self.idle_timeout,
            self.max_request_body,
            &in_use.stats,
            record.key_usage(),
        );
        if let Some(entry) = record.entry_mut() {
            entry.body = body_failure.clone();
        }
        let upstream_req = match self.upstream_request(
            parts,
            body,
            &in_use.upstream.host,
            upstream_target,
            upgrading,
            client,
            id,
            pass.as_ref(),
        ) {
            Ok(r) => r,
            Err(e) => return Err(refuse(record, e)),
        };
        let pool = if upgrading {
            &self.upstream.upgrade
        } else {
            &self.upstream.main
        };
        let send = pool.send(&in_use.upstream.key, upstream_req, start);
        let timeout = self.response_header_timeout;
        let head = AwaitHead::new(send, timer, start, timeout, body_failure);
        let in_flight = InFlight {
            proxy: self,
            route,
            record,
            upgrading,
        };
        Ok((head, in_flight))
    }

    /// The gate's decision for a request routed to `route`, tied to its
    /// proxy key. Routing matches the path as written; a path whose plain
    /// spelling routes to another mapping with a policy (`/%61dmin/x` or
    /// `//admin/x` beside a keyed `/admin` under an open `/`) is refused,
    /// since its upstream may read it as that mapping's path.
    fn admit(
        &self,
        gate: &Gate,
        snapshot: &Snapshot,
        req: &Request<ClientBody>,
        route: &Arc<Route>,
        record: &mut RequestRecord,
    ) -> Result<Option<Pass>, ProxyError> {
        if let Some(plain) = plain_spelling(req.uri().path()) {
            if let Some((other, _)) = snapshot.lookup(&plain) {
                if !Arc::ptr_eq(other, route) && gate.guards(&other.prefix) {
                    return Err(ProxyError::BadRequest(format!(
                        "this path is another spelling of {plain}, under {}: send it so",
                        other.prefix
                    )));
                }
            }
        }
        let decision = gate.admit(
            &route.prefix,
            req.method(),
            req.headers(),
            req.uri().query(),
            self.key_usage(),
        );
        match decision {
            Ok(mut pass) => {
                if let Some(key) = pass.as_mut().and_then(|p| p.key.take()) {
                    count_key(record, key, route);
                }
                Ok(pass)
            }
            Err(Denied { error, key }) => {
                if let Some(key) = key {
                    count_key(record, key, route);
                }
                Err(error)
            }
        }
    }

    /// Where keyed requests count their key's use: `None` with stats off.
    fn key_usage(&self) -> Option<&Arc<UsageRegistry>> {
        self.state
            .metrics
            .stats()
            .recording()
            .then_some(&self.state.key_usage)
    }

    /// The answer to a request whose head could not be read (malformed,
    /// too large): counted, logged and kept as a failure like any request
    /// no mapping took, under an id of its own.
    pub(crate) fn refuse_unreadable(
        &self,
        error: ProxyError,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let entry = Box::new(AccessEntry::bare(request_id::make(), client));
        let stats = self.state.metrics.unmatched().clone();
        let record = RequestRecord::reported(stats, Instant::now(), self.log, entry);
        refuse(record, error).into_response()
    }

    /// Rewrites the client's request for the upstream: the target's path,
    /// hop-by-hop headers out, `Host` set to the target, the request's id
    /// in `X-Request-Id`, HTTP/1.1 (the client picks HTTP/2 by ALPN where
    /// the upstream offers it).
    #[allow(clippy::too_many_arguments)]
    fn upstream_request(
        &self,
        mut parts: Parts,
        body: RequestBody,
        host: &HeaderValue,
        uri: Result<Uri, InvalidUri>,
        upgrading: bool,
        client: SocketAddr,
        id: HeaderValue,
        pass: Option<&Pass>,
    ) -> Result<Request<RequestBody>, ProxyError> {
        parts.uri =
            uri.map_err(|e| ProxyError::BadRequest(format!("invalid request target: {e}")))?;
        parts.version = Version::HTTP_11;
        // hyper's per-connection state (upgrade handles and the like) stays here.
        parts.extensions = Extensions::new();
        headers::strip_hop_by_hop(&mut parts.headers, upgrading);
        if let Some(pass) = pass {
            pass.rewrite_headers(&mut parts.headers);
        }
        let original_host = parts.headers.insert(HOST, host.clone());
        parts.headers.insert(&X_REQUEST_ID, id);
        if self.forwarded_headers {
            headers::add_forwarded(&mut parts.headers, client.ip(), original_host);
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// A request the proxy answers by itself, and the id it answers under.
pub(crate) struct Refused {
    error: ProxyError,
    id: HeaderValue,
}

impl Refused {
    fn into_response(self) -> Response<ProxyBody> {
        self.error.into_response(&self.id)
    }
}

/// What a request keeps while its upstream answers.
pub(crate) struct InFlight {
    proxy: Arc<Proxy>,
    route: Arc<Route>,
    record: RequestRecord,
    /// The client asked to switch protocols (WebSocket).
    upgrading: bool,
}

impl InFlight {
    /// The client's response once the upstream answered (`None`: it did
    /// not within the response-header timeout). `body_failure`: how the
    /// request body failed, if it did.
    fn respond(
        self,
        sent: Option<SendResult<RequestBody>>,
        body_failure: Option<BodyFailure>,
    ) -> Response<ProxyBody> {
        match self.respond_or_fail(sent, body_failure) {
            Ok(response) => response,
            Err(refused) => refused.into_response(),
        }
    }

    fn respond_or_fail(
        self,
        sent: Option<SendResult<RequestBody>>,
        body_failure: Option<BodyFailure>,
    ) -> Result<Response<ProxyBody>, Refused> {
        let InFlight {
            proxy,
            route,
            mut record,
            upgrading,
        } = self;
        let response = match sent {
            Some(Ok(sent)) => sent,
            Some(Err(err)) => {
                return match classify_send_error(&err, body_failure) {
                    SendFailure::Respond(e) => {
                        log_upstream_failure(&route, &e, &err, record.id());
                        Err(refuse(record, e))
                    }
                    // The client's connection broke mid-body: it is gone. The
                    // record's drop counts (and logs) a cancellation; the
                    // answer made here finds no one to write to.
                    SendFailure::ClientGone => Err(Refused {
                        id: id_of(&record),
                        error: ProxyError::BadRequest("client request body failed".into()),
                    }),
                };
            }
            None => {
                let e = ProxyError::upstream(
                    UpstreamErrorKind::Timeout,
                    format!(
                        "no response head within {:?} (response header timeout)",
                        proxy.response_header_timeout
                    ),
                );
                warn!(prefix = %route.prefix, request_id = record.id(), "upstream response header timeout");
                return Err(refuse(record, e));
            }
        };

        record.head(response.status().as_u16());
        let id = id_of(&record);
        let (mut parts, body) = response.into_parts();
        if let Some(entry) = record.entry_mut() {
            entry.upstream_addr = body.peer();
        }
        // The upstream's own id, if it sent one, stays in `X-Request-Id`
        // (SDKs read it there, and it is what the provider's support asks
        // for); ours then comes back in `X-Apiproxy-Request-Id`, and the
        // log keeps both.
        match parts.headers.get(&X_REQUEST_ID) {
            None => {
                parts.headers.insert(&X_REQUEST_ID, id);
            }
            Some(theirs) if *theirs != id => {
                let theirs = request_id::bounded(theirs);
                if let Some(entry) = record.entry_mut() {
                    entry.upstream_request_id = Some(theirs);
                }
                parts.headers.insert(&X_APIPROXY_REQUEST_ID, id);
            }
            Some(_) => {}
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrading {
            // The listener joins the two connections once the client has
            // the 101.
            let body = match body.into_upgraded() {
                Some(upstream) => ProxyBody::tunnel(Tunnel {
                    upstream,
                    prefix: route.prefix.clone(),
                    request_id: id_of(&record),
                }),
                None => {
                    debug!(prefix = %route.prefix, request_id = record.id(), "a 101 without its connection");
                    ProxyBody::empty()
                }
            };
            record.finish(Outcome::Completed);
            headers::strip_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, body));
        }
        headers::rewrite_response(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, proxy.idle_timeout, record),
        ))
    }
}

pin_project! {
    /// The future [`Proxy::handle`] returns.
    #[project = ForwardProj]
    pub(crate) enum Forward<S, T> {
        /// Answered without the upstream (refused, no mapping, too large).
        Answered { response: Option<Response<ProxyBody>> },
        /// Sent; waiting for the response head.
        Waiting {
            #[pin]
            head: AwaitHead<S, T>,
            in_flight: Option<InFlight>,
        },
        /// Answered; the send, finished or timed out, dropped.
        Done,
    }
}

impl<S, T> Future for Forward<S, T>
where
    S: Held<Output = SendResult<RequestBody>>,
    T: BorrowMut<Timer>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.as_mut().project() {
            ForwardProj::Answered { response } => {
                let response = response.take();
                self.set(Forward::Done);
                response
            }
            ForwardProj::Waiting {
                mut head,
                in_flight,
            } => {
                let sent = ready!(head.as_mut().poll(cx));
                let body_failure = head.body_failure();
                let in_flight = in_flight.take();
                // The send goes first: after a timeout, the upstream request
                // is dropped before the client's 504 is made.
                self.set(Forward::Done);
                in_flight.map(|in_flight| in_flight.respond(sent, body_failure))
            }
            ForwardProj::Done => None,
        };
        Poll::Ready(Ok(response.expect("request future polled after it ended")))
    }
}

pin_project! {
    /// Drives a send until the response head: `None` when the
    /// response-header timeout passed first. The timeout counts from the
    /// last byte of the request body taken from the client (from the start
    /// when there is no body), so a long upload is never cut while it moves.
    /// It also gives up the send's upstream budget place once the hold
    /// limit passes ([`Held`]); both deadlines are kept with one `timer`.
    pub(crate) struct AwaitHead<S, T> {
        #[pin]
        send: S,
        timer: T,
        head_by: Instant,
        timeout: Duration,
        body: Option<FailureSlot>,
        // The place was given up. `Budgeted` then reports no hold anyway;
        // this keeps a `Held` that still did from making the loop below
        // spin on a passed deadline.
        left_budget: bool,
    }
}

impl<S, T> AwaitHead<S, T> {
    /// `start`: when the request began, where the timeout counts from
    /// when there is no body. `body`: the request body's state, when it
    /// has a body.
    pub(crate) fn new(
        send: S,
        timer: T,
        start: Instant,
        timeout: Duration,
        body: Option<FailureSlot>,
    ) -> Self {
        AwaitHead {
            send,
            timer,
            head_by: deadline::after(start, timeout),
            timeout,
            body,
            left_budget: false,
        }
    }

    /// How the request body failed, if it did.
    fn body_failure(&self) -> Option<BodyFailure> {
        self.body.as_ref().and_then(|b| b.failure.get().copied())
    }
}

impl<S: Held, T: BorrowMut<Timer>> Future for AwaitHead<S, T> {
    type Output = Option<S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.send.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        loop {
            let hold = this.send.hold_until().filter(|_| !*this.left_budget);
            let deadline = hold.map_or(*this.head_by, |hold| hold.min(*this.head_by));
            let now = ready!(this.timer.borrow_mut().poll_until(cx, deadline));
            if hold.is_some_and(|hold| hold <= now) {
                this.send.as_mut().leave_budget();
                *this.left_budget = true;
            }
            if *this.head_by <= now {
                match this
                    .body
                    .as_ref()
                    .map(|b| deadline::after(b.last_moved(), *this.timeout))
                {
                    Some(later) if later > now => *this.head_by = later,
                    _ => return Poll::Ready(None),
                }
            }
        }
    }
}

/// Never an open proxy: CONNECT (405), absolute-form targets and anything
/// that is not an origin-form path (400), and dot segments (400).
fn refuse_foreign_targets<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // HTTP/2 requests always carry :scheme and :authority; in HTTP/1 a
    // scheme means the absolute form `GET http://other/ HTTP/1.1`.
    if req.version() < Version::HTTP_2 && req.uri().scheme().is_some() {
        return Err(ProxyError::BadRequest(
            "absolute-form request targets are not accepted: this is not a forward proxy".into(),
        ));
    }
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "request target must be a path starting with /".into(),
        ));
    }
    if has_dot_segment(path) {
        return Err(ProxyError::BadRequest(
            "path must not contain . or .. segments".into(),
        ));
    }
    Ok(())
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Ties the request to its proxy key: in the access log by id, and in
/// the key's usage on this prefix when stats are recorded.
fn count_key(record: &mut RequestRecord, key: Admitted, route: &Route) {
    record.key(key.id, key.usage.map(|usage| usage.cell(&route.prefix)));
}

/// Answers the request of `record` with `error`.
fn refuse(record: RequestRecord, error: ProxyError) -> Refused {
    Refused {
        id: id_of(&record),
        error: finish_with(record, error),
    }
}

/// The id of a request. Every record the proxy makes carries one; only a
/// bench's bare record does not, and would be answered under a new id.
fn id_of(record: &RequestRecord) -> HeaderValue {
    record.id_value().cloned().unwrap_or_else(request_id::make)
}

/// Records a proxy-made response as the request's outcome.
fn finish_with(mut record: RequestRecord, error: ProxyError) -> ProxyError {
    record.error(error.kind());
    record.head(error.status().as_u16());
    record.finish(
        error
            .upstream_kind()
            .map_or(Outcome::Completed, Outcome::Failed),
    );
    error
}

fn log_upstream_failure(route: &Route, e: &ProxyError, err: &SendError, request_id: &str) {
    let side = e.side().as_str();
    match e {
        ProxyError::Upstream { kind, .. } => {
            warn!(prefix = %route.prefix, request_id, side, kind = kind.as_str(), error = %chain(err), "upstream request failed")
        }
        _ => {
            debug!(prefix = %route.prefix, request_id, side, error = %chain(err), "request failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<F, A, B, C, R>(_f: F) -> usize
    where
        F: Fn(A, B, C) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// hyper keeps one request future per client connection for as long
    /// as the connection is open, sized for its largest state: each byte
    /// here is a kilobyte at 1000 connections. Written by hand and
    /// borrowing its connection's timer, it is a fraction of what the same
    /// steps cost as `async fn`s.
    #[test]
    fn the_per_connection_request_future_stays_small() {
        let size = size_of_output(
            |proxy: Arc<Proxy>, req: Request<ClientBody>, timer: &'static mut Timer| {
                proxy.handle(req, SocketAddr::from(([127, 0, 0, 1], 1)), timer)
            },
        );
        assert!(size <= 1024, "request future is {size} bytes");
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// `send` within a budget of one place that it never has to give up.
    fn budgeted<F: Future>(send: F) -> impl Held<Output = F::Output> {
        let hour = Duration::from_secs(3600);
        let limits = crate::budget::BudgetLimits {
            places: 1,
            hold: hour,
            queue: hour,
        };
        crate::budget::Budget::new(limits).run(Instant::now(), send)
    }

    fn await_head<F: Future>(
        send: F,
        body: Option<FailureSlot>,
    ) -> impl Future<Output = Option<F::Output>> {
        AwaitHead::new(budgeted(send), Timer::new(), Instant::now(), TIMEOUT, body)
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_in_time_is_returned() {
        let send = async {
            tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
            7
        };
        assert_eq!(await_head(send, None).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_body_the_head_timeout_counts_from_the_start() {
        let start = Instant::now();
        let waited = await_head(std::future::pending::<()>(), None).await;
        assert_eq!(waited, None);
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    /// The body moves every 4 s, five times: the timeout counts from its
    /// last move (20 s), not from the start.
    #[tokio::test(start_paused = true)]
    async fn a_moving_body_pushes_the_head_timeout_back() {
        let body = FailureSlot::default();
        let start = Instant::now();
        let mover = tokio::spawn({
            let body = body.clone();
            async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    body.moved(0);
                }
            }
        });
        let waited = await_head(std::future::pending::<()>(), Some(body)).await;
        assert_eq!(waited, None);
        assert_eq!(start.elapsed(), Duration::from_secs(20) + TIMEOUT);
        mover.await.unwrap();
    }
}
