//! README, Shutdown: "on SIGTERM or SIGINT `/readyz` turns 503, the
//! listener closes, in-flight requests and streams finish within the drain
//! timeout, and the process exits 0". The same test for each signal, and
//! the drain timeout's bound.

use std::time::{Duration, Instant};

use apiproxy_tests::client::{get, send};
use apiproxy_tests::upstream::{self, Upstream};
use apiproxy_tests::{eventually, DataPlane};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

/// A data plane routing `/s` to `up`, started with `env`, and a stream
/// through it that has delivered its first event.
async fn stream_through(up: &Upstream, env: &[(&str, &str)]) -> (DataPlane, Incoming) {
    let dp = DataPlane::start(&serde_json::json!({"/s": up.url()}).to_string(), env);
    let response = send(
        dp.addr,
        Request::get("/s/x").body(Empty::<Bytes>::new()).unwrap(),
    )
    .await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    (dp, body)
}

/// A stream is open when `signal` arrives: readiness turns 503, the
/// listener closes, the stream (held back by its upstream until then) runs
/// to its end cleanly, the exit is 0.
async fn drains_in_flight_streams_then_exits_zero(signal: &str) {
    let (up, release) = upstream::sse_held(10, Duration::from_millis(50)).await;
    let (mut dp, mut body) = stream_through(&up, &[]).await;

    dp.signal(signal);
    // The signal arrives asynchronously: readiness turns 503 within moments
    // (bounded at 5 s; the stream is held open meanwhile).
    let ready = format!("http://{}/readyz", dp.metrics_addr);
    let reason = eventually("readiness 503", Duration::from_secs(5), || async {
        let (status, reason) = get(&ready).await;
        (status == 503).then_some(reason)
    })
    .await;
    assert!(reason.contains("draining"), "{reason}");
    eventually("listener closed", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(dp.addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;

    // The stream in flight runs to its end, cleanly.
    release.send(true).unwrap();
    let mut events = 1;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("no abort while draining");
        events += frame
            .data_ref()
            .map_or(0, |d| String::from_utf8_lossy(d).matches("data:").count());
    }
    assert_eq!(events, 10);
    let status = dp.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_then_exits_zero() {
    drains_in_flight_streams_then_exits_zero("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_in_flight_streams_then_exits_zero() {
    drains_in_flight_streams_then_exits_zero("INT").await;
}

/// A stream longer than the drain timeout is cut at it: the process still
/// exits 0, soon after the timeout, and the stream does not end cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_shutdown() {
    let up = upstream::sse(1000, Duration::from_millis(100)).await;
    let (mut dp, mut body) = stream_through(&up, &[("API_PROXY_DRAIN_TIMEOUT", "500ms")]).await;
    let start = Instant::now();
    dp.signal("TERM");
    let status = dp.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    // The cut-off stream is visibly truncated, not finished cleanly.
    let mut aborted = false;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            aborted = true;
            break;
        }
    }
    assert!(
        aborted,
        "a stream cut by the drain deadline must not end cleanly"
    );
    drop(up);
}
