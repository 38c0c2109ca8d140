//! Redis-sync benchmarks (issue 3), against the release binary:
//!
//! 1. propagation: a change written the control plane's way (`HSET` +
//!    `INCR` in one transaction, then `PUBLISH` of its prefix, but without
//!    the target the control plane also announces by default: the nodes
//!    take the one-field read) until both nodes route it, over 100 changes;
//! 2. reload disturbance: request latency on a node holding 10,000
//!    mappings, with and without a change every 100 ms (wrk). Each change
//!    is announced with its prefix and applied from a one-field read;
//!    `FULL_RELOAD=1` announces it the Go way (`mapping_added`), so each
//!    change is a full re-read of all 10,000. `RELOAD_EVERY_MS` sets the
//!    interval.
//!
//! ```sh
//! cargo build --release -p apiproxy-dataplane
//! cargo run --release -p apiproxy-tests --example redis_sync_bench
//! ```
//! Needs `redis-server` and `wrk` (bench/install.sh).

use std::process::Command;
use std::time::{Duration, Instant};

use apiproxy_shared::RedisKeys;
use apiproxy_tests::redis::{publish, upsert, upsert_unannounced, RedisServer};
use apiproxy_tests::upstream::{self, full, handler};
use apiproxy_tests::DataPlane;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// wrk's p99 latency in ms from `--latency` output.
fn wrk_p99(path: &str, addr: std::net::SocketAddr, seconds: u32) -> (f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c64",
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .expect("wrk (bench/install.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |line: &str| -> f64 {
        let v = line.split_whitespace().nth(1).unwrap_or("0");
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(value)
        .unwrap_or(f64::NAN);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN);
    (p99, rps)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let up = upstream::http(handler(|_req| async { http::Response::new(full("ok")) })).await;
    upsert(&mut conn, &keys, "/warm", &up.url()).await;
    let env = [("API_PROXY_WORKERS", "1")];
    let nodes = [
        DataPlane::start_redis(&redis.url(), &env),
        DataPlane::start_redis(&redis.url(), &env),
    ];
    for node in &nodes {
        node.wait_status("/warm/x", 200).await;
    }

    // 1. Propagation.
    let mut times = Vec::new();
    for i in 0..100 {
        let path = format!("/prop{i}/x");
        let start = Instant::now();
        upsert(&mut conn, &keys, &format!("/prop{i}"), &up.url()).await;
        apiproxy_tests::dataplane::wait_all_route(&nodes, &path).await;
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "propagation to both nodes over {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
    );

    // 2. Reload disturbance with 10,000 mappings.
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.hset(&keys.mappings, format!("/svc{i}/v1"), up.url())
            .ignore();
    }
    pipe.incr(&keys.version, 1).ignore();
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    // A bulk load is announced without a prefix: nodes re-read everything.
    publish(&mut conn, &keys, "bulk-load").await;
    let node = &nodes[0];
    node.wait_status("/svc9999/v1/x", 200).await;
    let addr = node.addr;
    let quiet = tokio::task::spawn_blocking(move || wrk_p99("/svc5000/v1/x", addr, 10))
        .await
        .unwrap();
    let version_before = node.metric("apiproxy_config_version").await;
    let reload_every = Duration::from_millis(
        std::env::var("RELOAD_EVERY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let full_reload = std::env::var("FULL_RELOAD").is_ok_and(|v| v == "1");
    let writer = {
        let mut conn = redis.conn().await;
        let keys = keys.clone();
        let target = up.url();
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                if full_reload {
                    // The Go version's way: no prefix in the announcement,
                    // so every node re-reads all 10,000 entries.
                    let target = format!("{target}/r{i}");
                    upsert_unannounced(&mut conn, &keys, "/svc1/v1", &target).await;
                    publish(&mut conn, &keys, "mapping_added").await;
                } else {
                    upsert(&mut conn, &keys, "/svc1/v1", &format!("{target}/r{i}")).await;
                }
                i += 1;
                tokio::time::sleep(reload_every).await;
            }
        })
    };
    let busy = tokio::task::spawn_blocking(move || wrk_p99("/svc5000/v1/x", addr, 10))
        .await
        .unwrap();
    writer.abort();
    let reloads = node.metric("apiproxy_config_version").await - version_before;
    println!("10,000 mappings, wrk -t1 -c64 10 s on one node:");
    println!(
        "  without reloads: p99 {:.2} ms, {:.0} req/s",
        quiet.0, quiet.1
    );
    println!(
        "  with a change every {reload_every:?}{} ({reloads} applied): p99 {:.2} ms, {:.0} req/s",
        if full_reload {
            ", each a full re-read"
        } else {
            ""
        },
        busy.0,
        busy.1
    );
    println!("  p99 ratio: {:.2}", busy.0 / quiet.0);
}
