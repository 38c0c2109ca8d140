//! The request path, top to bottom: refuse what is not ours to proxy →
//! match a mapping → build the upstream request → send it (the upstream
//! call stays inside this future, so a client that leaves cancels it) →
//! rewrite the response → splice an upgrade.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tracing::{debug, warn};

use crate::body::{ProxyBody, RequestBody};
use crate::error::{chain, classify_send_error, ProxyError, SendFailure};
use crate::headers;
use crate::metrics::UpstreamErrorKind;
use crate::pool::SendError;
use crate::record::{Outcome, RequestRecord};
use crate::routing::{has_dot_segment, Route};
use crate::state::RoutingState;
use crate::tunnel::Tunnels;
use crate::upstream::Upstream;

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    pub state: Arc<RoutingState>,
    pub upstream: Upstream,
    pub tunnels: Tunnels,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body: Option<u64>,
    pub forwarded_headers: bool,
}

impl Proxy {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        match self.proxy(req, client, start).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    }

    async fn proxy(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        start: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if let Err(e) = refuse_foreign_targets(&req) {
            return Err(self.unmatched(e, start));
        }
        let Some(snapshot) = self.state.snapshot() else {
            return Err(self.unmatched(ProxyError::NotReady, start));
        };
        let Some((route, rest)) = snapshot.lookup(req.uri().path()) else {
            return Err(self.unmatched(ProxyError::NoMapping(req.uri().path().to_owned()), start));
        };
        let route = route.clone();
        let upstream_uri = route.upstream_uri(rest, req.uri().query());
        drop(snapshot);
        let mut record = RequestRecord::start(route.stats.clone(), start);

        if let Some(limit) = self.max_request_body {
            if content_length(&req).is_some_and(|len| len > limit) {
                return Err(finish_with(record, ProxyError::PayloadTooLarge(limit)));
            }
        }
        let upgrading = headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let (body, body_failure) =
            RequestBody::new(body, self.idle_timeout, self.max_request_body, &route.stats);
        let upstream_req =
            match self.upstream_request(parts, body, &route, upstream_uri, upgrading, client) {
                Ok(r) => r,
                Err(e) => return Err(finish_with(record, e)),
            };

        let pool = if upgrading {
            &self.upstream.upgrade
        } else {
            &self.upstream.main
        };
        let sent = self
            .await_head(|| pool.send(upstream_req), body_failure.as_deref())
            .await;
        let (mut response, lease) = match sent {
            Some(Ok(sent)) => sent,
            Some(Err(err)) => {
                let failure = body_failure
                    .as_ref()
                    .and_then(|slot| slot.failure.get().copied());
                return match classify_send_error(&err, failure) {
                    SendFailure::Respond(e) => {
                        log_upstream_failure(&route, &e, &err);
                        Err(finish_with(record, e))
                    }
                    // The client's body broke: it is gone; the record's drop
                    // counts the cancellation and nothing is written.
                    SendFailure::ClientGone => {
                        Err(ProxyError::BadRequest("client request body failed".into()))
                    }
                };
            }
            None => {
                let e = ProxyError::upstream(
                    UpstreamErrorKind::Timeout,
                    format!(
                        "no response head within {:?} (response header timeout)",
                        self.response_header_timeout
                    ),
                );
                warn!(prefix = %route.prefix, "upstream response header timeout");
                return Err(finish_with(record, e));
            }
        };

        record.head(response.status().as_u16());
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                self.tunnels
                    .spawn(client_upgrade, upstream_upgrade, route.prefix.clone());
                record.finish(Outcome::Completed);
                let (mut parts, _) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, true);
                return Ok(Response::from_parts(parts, ProxyBody::empty()));
            }
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        headers::mark_event_stream(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, self.idle_timeout, record, lease),
        ))
    }

    /// Sends (`send` makes the future) and waits for the response head:
    /// `None` when the response-header timeout passed. It counts from the
    /// last byte of the request body taken from the client (from the start
    /// when there is no body), so a long upload is never cut while it moves.
    ///
    /// The send future is made here, not passed in: passed in, it would be
    /// stored twice in this future (argument and pinned local), which hyper
    /// keeps for the life of each client connection.
    async fn await_head<F: std::future::Future>(
        &self,
        send: impl FnOnce() -> F,
        body: Option<&crate::body::BodyState>,
    ) -> Option<F::Output> {
        let timeout = self.response_header_timeout;
        let mut response = std::pin::pin!(send());
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                out = &mut response => return Some(out),
                _ = tokio::time::sleep_until(deadline) => {
                    let extended = body.map(|b| b.last_moved() + timeout);
                    match extended {
                        Some(later) if later > tokio::time::Instant::now() => deadline = later,
                        _ => return None,
                    }
                }
            }
        }
    }

    /// Rewrites the client's request for the upstream: absolute URL,
    /// hop-by-hop headers out, `Host` set to the target, HTTP/1.1 (the
    /// client picks HTTP/2 by ALPN where the upstream offers it).
    fn upstream_request(
        &self,
        mut parts: Parts,
        body: RequestBody,
        route: &Route,
        uri: Result<Uri, http::Error>,
        upgrading: bool,
        client: SocketAddr,
    ) -> Result<Request<RequestBody>, ProxyError> {
        parts.uri =
            uri.map_err(|e| ProxyError::BadRequest(format!("invalid request target: {e}")))?;
        parts.version = Version::HTTP_11;
        // hyper's per-connection state (upgrade handles and the like) stays here.
        parts.extensions = Extensions::new();
        headers::strip_hop_by_hop(&mut parts.headers, upgrading);
        let original_host = parts.headers.insert(HOST, route.host.clone());
        if self.forwarded_headers {
            headers::add_forwarded(&mut parts.headers, client.ip(), original_host);
        }
        Ok(Request::from_parts(parts, body))
    }

    /// A request answered before any mapping applied (refused, not ready,
    /// no mapping): counted under `prefix="none"`.
    fn unmatched(&self, error: ProxyError, start: Instant) -> ProxyError {
        let unmatched = self.state.metrics.unmatched().clone();
        finish_with(RequestRecord::start(unmatched, start), error)
    }
}

/// Never an open proxy: CONNECT (405), absolute-form targets and anything
/// that is not an origin-form path (400), and dot segments (400).
fn refuse_foreign_targets(req: &Request<Incoming>) -> Result<(), ProxyError> {
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

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Records a proxy-made response as the request's outcome.
fn finish_with(mut record: RequestRecord, error: ProxyError) -> ProxyError {
    record.head(error.status().as_u16());
    record.finish(
        error
            .upstream_kind()
            .map_or(Outcome::Completed, Outcome::Failed),
    );
    error
}

fn log_upstream_failure(route: &Route, e: &ProxyError, err: &SendError) {
    match e {
        ProxyError::Upstream { kind, .. } => {
            warn!(prefix = %route.prefix, kind = kind.as_str(), error = %chain(err), "upstream request failed")
        }
        _ => debug!(prefix = %route.prefix, error = %chain(err), "request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<F, A, B, R>(_f: F) -> usize
    where
        F: Fn(A, B) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// hyper keeps one request future per client connection for as long
    /// as the connection is open, sized for its largest state: each byte
    /// here is a kilobyte at 1000 connections. A future stored twice (an
    /// argument pinned again) once made it 12.9 KB; it is 3.3 KB now.
    #[test]
    fn the_per_connection_request_future_stays_small() {
        let size = size_of_output(|proxy: Arc<Proxy>, req: Request<Incoming>| {
            proxy.handle(req, SocketAddr::from(([127, 0, 0, 1], 1)))
        });
        assert!(size <= 4096, "request future is {size} bytes");
    }
}
