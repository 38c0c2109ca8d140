//! Redis Sentinel end to end: a real primary, a real replica and three
//! real sentinels; two data planes and a control plane that find the
//! master through `redis+sentinel://`. The primary is killed (-9) under
//! load: no proxied request fails, a mapping made after the failover
//! reaches both nodes, and `/stats` counts exactly what they served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::{stats, ControlPlane};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane};

const MASTER: &str = "apiproxy";
/// Requests each load task sends at most (it stops earlier when told).
const LOAD_MAX: u64 = 20_000;

/// What one sentinel says of the master `MASTER`.
async fn master_info(sentinel: &RedisServer) -> HashMap<String, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", sentinel.port)).unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return HashMap::new();
    };
    redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER)
        .query_async(&mut conn)
        .await
        .unwrap_or_default()
}

/// What the requests the test sent came to, as `/stats` should count them.
#[derive(Default)]
struct Sent {
    /// Answered by a mapping (every one of them 200).
    matched: AtomicU64,
    /// Answered before a node routed the prefix (not in `total`).
    unmatched: AtomicU64,
}

/// Sends `path` through `node` until it answers 200 (at most 10 s),
/// counting every request.
async fn wait_routed(node: &DataPlane, path: &str, sent: &Sent) {
    eventually(
        &format!("{path} routed"),
        Duration::from_secs(10),
        || async {
            let status = get_reply(node.addr, path).await.status;
            if status == 200 {
                sent.matched.fetch_add(1, Ordering::SeqCst);
                Some(())
            } else {
                sent.unmatched.fetch_add(1, Ordering::SeqCst);
                None
            }
        },
    )
    .await;
}

/// `stats_durability` of `GET /api/nodes`.
async fn durability(cp: &ControlPlane) -> serde_json::Value {
    cp.admin("GET", "/api/nodes", None).await.json()["stats_durability"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_over_without_a_failed_request_or_a_lost_count() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_sentinel_watching(&primary, MASTER))
        .collect();
    // Every sentinel knows the replica and the two others (they meet
    // through the primary's hello channel): a failover can be agreed.
    for sentinel in &sentinels {
        eventually(
            "sentinels see the replica and each other",
            Duration::from_secs(20),
            || async {
                let info = master_info(sentinel).await;
                (info.get("num-slaves").map(String::as_str) == Some("1")
                    && info.get("num-other-sentinels").map(String::as_str) == Some("2"))
                .then_some(())
            },
        )
        .await;
    }
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/{MASTER}", hosts.join(","));

    let cp = ControlPlane::start_for_nodes(&url, 0);
    let cp_url = format!("http://{}", cp.addr);
    let nodes = Arc::new([
        DataPlane::start_pushing(&url, &cp_url, "node-a", &[]),
        DataPlane::start_pushing(&url, &cp_url, "node-b", &[]),
    ]);
    let origin = upstream::http(echo_handler()).await;
    let sent = Arc::new(Sent::default());

    assert_eq!(cp.create("/svc", &origin.url()).await.status, 201);
    for node in nodes.iter() {
        wait_routed(node, "/svc/ready", &sent).await;
    }
    // The primary has its replica: batches wait for it.
    assert_eq!(durability(&cp).await, "replicated");

    // Load: two clients per node, every answer must be 200.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (nodes, sent, stop) = (nodes.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                let node = &nodes[i % 2];
                for n in 0..LOAD_MAX {
                    if stop.load(Ordering::SeqCst) {
                        // Still sending when the test was done: the load
                        // spanned the failover.
                        return true;
                    }
                    let reply = get_reply(node.addr, &format!("/svc/load/{i}/{n}")).await;
                    assert_eq!(
                        reply.status,
                        200,
                        "request {n} of client {i}: {}",
                        reply.text()
                    );
                    sent.matched.fetch_add(1, Ordering::SeqCst);
                }
                false
            })
        })
        .collect();
    eventually("load under way", Duration::from_secs(10), || async {
        (sent.matched.load(Ordering::SeqCst) > 200).then_some(())
    })
    .await;

    primary.kill();
    let killed = Instant::now();
    eventually(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || async {
            let client =
                redis::Client::open(format!("redis://127.0.0.1:{}/", sentinels[0].port)).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER)
                .query_async(&mut conn)
                .await
                .ok()?;
            (port == replica.port).then_some(())
        },
    )
    .await;
    let failover = killed.elapsed();

    // A mapping made after the failover: the control plane writes it to
    // the new master (503 only until it has asked the sentinels again).
    let created = eventually(
        "a write after the failover",
        Duration::from_secs(20),
        || async {
            let reply = cp.create("/after", &origin.url()).await;
            (reply.status != 503).then_some(reply)
        },
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    for node in nodes.iter() {
        wait_routed(node, "/after/x", &sent).await;
    }
    // Still serving under load the whole time.
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let spanned = task.await.expect("a proxied request failed");
        assert!(
            spanned,
            "a load client ran out of requests before the failover was over"
        );
    }

    // The new master has no replica: said in /api/nodes.
    assert_eq!(durability(&cp).await, "primary_only");
    assert!(cp.logs().iter().any(|l| l.contains("has no replica")));

    // Every request the nodes served is counted once: not lost with the
    // primary, not counted twice when a node resent a batch.
    let (matched, unmatched) = (
        sent.matched.load(Ordering::SeqCst),
        sent.unmatched.load(Ordering::SeqCst),
    );
    let port = cp.addr.port();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(port).await.unwrap_or_default();
        let total = s["total"].as_u64().unwrap_or(0);
        assert!(
            total <= matched,
            "counted {total}, more than the {matched} served: {s}"
        );
        if total == matched && s["unmatched"] == unmatched {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats incomplete after 20 s: {matched} served, {unmatched} unmatched; got {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three more batches from each node change nothing.
    cp.wait_batches_after(Duration::from_millis(3 * 200)).await;
    let s = stats(port).await.unwrap();
    assert_eq!(s["total"], matched, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(
        s["endpoints"]["/svc"]["count"].as_u64().unwrap()
            + s["endpoints"]["/after"]["count"].as_u64().unwrap(),
        matched,
        "{s}"
    );
    // Both nodes followed the failover on their own subscription.
    for node in nodes.iter() {
        assert!(
            node.logs().iter().any(|l| l.contains("lost Redis")),
            "{:?}",
            node.logs()
        );
    }
    eprintln!("failover took {failover:?}; {matched} requests served, none failed");
}
