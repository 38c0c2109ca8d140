//! The metrics port: `/healthz`, `/readyz` and `/metrics`. Never served on
//! the proxy port, so a mapping can never shadow them.

use std::convert::Infallible;
use std::sync::Arc;

use apiproxy_shared::prometheus_text::{head, sample};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::body::ProxyBody;
use crate::state::RoutingState;

pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<RoutingState>,
    shutdown: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(respond(&state, &req)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(state: &RoutingState, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    match req.uri().path() {
        "/healthz" => plain(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match state.readiness() {
            Ok(()) => plain(StatusCode::OK, "application/json", r#"{"ready":true}"#),
            Err(reason) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                serde_json::json!({"ready": false, "reason": reason}).to_string(),
            ),
        },
        "/metrics" => plain(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_text(state),
        ),
        _ => plain(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// The metrics plus the runtime's live task count: every connection,
/// pooled upstream connection, tunnel and background job is a task, so a
/// leak shows here first (the soak test checks it returns to baseline).
fn metrics_text(state: &RoutingState) -> Vec<u8> {
    let mut text = state.metrics.encode();
    let tasks = crate::stats_push::alive_tasks();
    let mut out = String::new();
    head(
        &mut out,
        "apiproxy_runtime_tasks",
        "gauge",
        "Tasks alive in the proxy's runtime.",
    );
    sample(&mut out, "apiproxy_runtime_tasks", "", tasks);
    text.extend_from_slice(out.as_bytes());
    text
}

fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
