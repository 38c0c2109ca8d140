//! Control-plane benchmarks (issue 4), against the release binaries:
//!
//! 1. mapping writes per second through the API (`POST /api/mappings`,
//!    32 concurrent keep-alive clients, 5 s) against a local Redis;
//! 2. change-to-routed latency: `POST` through the API until both of two
//!    data planes route the new prefix, over 100 changes.
//!
//! ```sh
//! cargo build --release -p apiproxy-dataplane -p apiproxy-controlplane
//! cargo run --release -p apiproxy-tests --example controlplane_bench
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, full, handler};
use apiproxy_tests::DataPlane;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const CLIENTS: usize = 32;
const DURATION: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (ok, failed, addr) = (ok.clone(), failed.clone(), cp.addr);
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut i = 0u64;
            while start.elapsed() < DURATION {
                let body = serde_json::json!({"prefix": format!("/c{c}/m{i}"), "target": "https://upstream.example"});
                let req = http::Request::post("/api/mappings")
                    .header("host", "cp")
                    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(req).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status == 201 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let writes = ok.load(Ordering::Relaxed);
    println!(
        "API writes: {writes} created in {elapsed:.1} s = {:.0} writes/s ({} failed), {CLIENTS} clients",
        writes as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );

    // Change to routed, two data planes, starting from a small set.
    let up = upstream::http(handler(|_req| async { http::Response::new(full("ok")) })).await;
    let reset = serde_json::json!({"mappings": {"/warm": up.url()}});
    assert_eq!(
        cp.admin("PUT", "/api/mappings", Some(reset)).await.status,
        200
    );
    let env = [("API_PROXY_WORKERS", "1")];
    let nodes = [
        DataPlane::start_redis(&redis.url(), &env),
        DataPlane::start_redis(&redis.url(), &env),
    ];
    for node in &nodes {
        node.wait_status("/warm/x", 200).await;
    }
    let mut times = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        let reply = cp
            .admin(
                "POST",
                "/api/mappings",
                Some(serde_json::json!({"prefix": format!("/routed{i}"), "target": up.url()})),
            )
            .await;
        assert_eq!(reply.status, 201);
        let path = format!("/routed{i}/x");
        apiproxy_tests::dataplane::wait_all_route(&nodes, &path).await;
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "API change to routed by both nodes, 100 changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(times[49]),
        ms(times[98]),
        ms(times[99])
    );
}
