//! The stats path end to end: real data planes push batches to the real
//! control plane over one real Redis, and `/stats` must count exactly what
//! the clients saw — across a control-plane kill -9, a long outage, and
//! nodes that stop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::{stats, ControlPlane, NODE_TOKEN};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, channel_body, full, handler, Upstream};
use apiproxy_tests::{eventually, refusing_addr, DataPlane};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/ok` 200, `/missing` 404, `/fail` 503, `/slow` a head and then a body
/// that never ends (for clients that leave).
async fn mixed_upstream() -> Upstream {
    upstream::http(handler(|req: Request<Incoming>| async move {
        let status = match req.uri().path() {
            "/ok" => 200,
            "/missing" => 404,
            "/fail" => 503,
            _ => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from_static(b"first"))).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(tx);
                });
                return Response::new(body);
            }
        };
        Response::builder()
            .status(status)
            .body(full("0123456789"))
            .unwrap()
    }))
    .await
}

fn controlplane(redis: &RedisServer, port: u16) -> ControlPlane {
    ControlPlane::start_for_nodes(&redis.url(), port)
}

fn node(redis: &RedisServer, cp_port: u16, id: &str, extra: &[(&str, &str)]) -> DataPlane {
    let url = format!("http://127.0.0.1:{cp_port}");
    DataPlane::start_pushing(&redis.url(), &url, id, extra)
}

/// What the clients saw, to compare with `/stats`.
#[derive(Debug, Default)]
struct Expected {
    up: u64,
    up_errors: u64,
    up_cancelled: u64,
    down: u64,
    unmatched: u64,
}

impl Expected {
    fn total(&self) -> u64 {
        self.up + self.down
    }
    fn errors(&self) -> u64 {
        self.up_errors + self.down
    }
}

/// One round of the known mix through `dp`, each status checked.
async fn mix(dp: &DataPlane, e: &mut Expected) {
    for (path, status, n) in [
        ("/up/ok", 200, 6),
        ("/up/missing", 404, 2),
        ("/up/fail", 503, 2),
        ("/down/x", 502, 2),
        ("/nothing/here", 404, 2),
    ] {
        for _ in 0..n {
            assert_eq!(get_reply(dp.addr, path).await.status, status, "{path}");
        }
        match path {
            "/up/fail" => {
                e.up += n;
                e.up_errors += n;
            }
            "/down/x" => e.down += n,
            "/nothing/here" => e.unmatched += n,
            _ => e.up += n,
        }
    }
    // A client that takes the head and leaves mid-body.
    let mut s = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    s.write_all(b"GET /up/slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(5).any(|w| w == b"first") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    e.up += 1;
    e.up_cancelled += 1;
}

/// Requests `dp` answered without a mapping so far: the readiness waits
/// 503s (no snapshot yet) and any 404s, every status class.
async fn unmatched_so_far(dp: &DataPlane) -> u64 {
    let m = dp.metrics().await;
    ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|class| {
            m.get(&format!(
                r#"apiproxy_requests_total{{prefix="none",status_class="{class}"}}"#
            ))
            .copied()
            .unwrap_or(0.0) as u64
        })
        .sum()
}

/// Waits until `/stats` shows exactly `e` (it may only get there from
/// below), then checks every figure once more after every node listed by
/// `cp` has pushed three more batches.
async fn assert_stats_exact(cp: &ControlPlane, cp_port: u16, e: &Expected) {
    let check = |s: &Value| {
        s["total"] == e.total() && s["unmatched"] == e.unmatched && s["errors"] == e.errors()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = stats(cp_port).await.unwrap_or_default();
        assert!(
            s["total"].as_u64().unwrap_or(0) <= e.total(),
            "counted more than was sent: {s}"
        );
        if check(&s) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats incomplete after 15 s: expected {e:?} (total {}, errors {}), got {s}",
            e.total(),
            e.errors()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Three more batches from every node (pushed every 200 ms, and
    // `last_seen` is when the control plane applied one): nothing is
    // counted twice.
    cp.wait_batches_after(Duration::from_millis(3 * 200)).await;
    let s2 = stats(cp_port).await.unwrap();
    assert!(check(&s2), "changed after settling: {s} -> {s2}");
    assert_eq!(s["cancelled"], e.up_cancelled, "{s}");
    let up = &s["endpoints"]["/up"];
    assert_eq!(up["count"], e.up, "{s}");
    assert_eq!(up["error_count"], e.up_errors, "{s}");
    let down = &s["endpoints"]["/down"];
    assert_eq!(down["count"], e.down, "{s}");
    assert_eq!(down["error_count"], e.down, "{s}");
    assert!(up["last_request"].as_u64().unwrap() > 0);
    assert!(up["bytes_out"].as_u64().unwrap() >= 10 * (e.up - e.up_cancelled));
    let minute_count: u64 = s["series"]["minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(minute_count, e.total(), "{s}");
}

async fn create_mappings(cp: &ControlPlane, up: &Upstream) {
    for (prefix, target) in [
        ("/up", up.url()),
        ("/down", format!("http://{}", refusing_addr())),
    ] {
        let r = cp
            .admin(
                "POST",
                "/api/mappings",
                Some(json!({"prefix": prefix, "target": target})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

/// Runs `/up/ok` requests through `nodes`, about 500 a second, until
/// stopped; returns how many got their 200.
fn background_load(
    nodes: Vec<std::net::SocketAddr>,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0usize;
            // Paced, so the load lasts as long as the test needs it, and
            // bounded: at most 60,000 requests even if never stopped.
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            while !stop.load(Ordering::Relaxed) && i < 60_000 {
                pace.tick().await;
                let addr = nodes[i % nodes.len()];
                assert_eq!(get_reply(addr, "/up/ok").await.status, 200);
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            done.load(Ordering::Relaxed)
        })
    };
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stay_exact_across_a_controlplane_kill() {
    let redis = RedisServer::start();
    let cp = controlplane(&redis, 0);
    let port = cp.addr.port();
    let up = mixed_upstream().await;
    create_mappings(&cp, &up).await;
    let nodes = [
        node(&redis, port, "dp-1", &[]),
        node(&redis, port, "dp-2", &[]),
    ];
    for n in &nodes {
        n.wait_status("/up/ok", 200).await;
    }
    // The readiness probes above went through too.
    let mut e = Expected::default();
    for n in &nodes {
        e.up += n
            .metric(r#"apiproxy_requests_total{prefix="/up",status_class="2xx"}"#)
            .await as u64;
        e.unmatched += unmatched_so_far(n).await;
    }

    let (stop, load) = background_load(nodes.iter().map(|n| n.addr).collect());
    for n in &nodes {
        mix(n, &mut e).await;
    }
    // kill -9 in the middle of the load; traffic goes on while it is away.
    cp.kill();
    for n in &nodes {
        mix(n, &mut e).await;
    }
    eventually("a push to fail", Duration::from_secs(5), || async {
        (nodes[0].metric("apiproxy_stats_push_failures_total").await > 0.0).then_some(())
    })
    .await;
    let cp = controlplane(&redis, port);
    for n in &nodes {
        mix(n, &mut e).await;
    }
    stop.store(true, Ordering::Relaxed);
    e.up += load.await.unwrap();
    assert_stats_exact(&cp, port, &e).await;

    // Both nodes are listed with the version they applied.
    let version = cp.admin("GET", "/api/mappings", None).await.json()["version"].clone();
    let listed = cp.admin("GET", "/api/nodes", None).await.json();
    let listed = listed["nodes"].as_array().unwrap().clone();
    let ids: Vec<&str> = listed
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dp-1", "dp-2"]);
    for n in &listed {
        assert_eq!(n["state"], "up", "{n}");
        assert_eq!(n["config_version"], version, "{n}");
        assert!(n["rss_bytes"].as_u64().unwrap() > 0);
    }
    let requests: u64 = listed
        .iter()
        .map(|n| n["requests_total"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, e.total() + e.unmatched);

    // A node that stops pushing turns down; the other stays up.
    let [dp1, dp2] = nodes;
    drop(dp2);
    eventually("dp-2 down", Duration::from_secs(6), || async {
        let listed = cp.admin("GET", "/api/nodes", None).await.json();
        let state = |id: &str| {
            listed["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node_id"] == id)
                .map(|n| n["state"].clone())
        };
        (state("dp-2") == Some("down".into()) && state("dp-1") == Some("up".into())).then_some(())
    })
    .await;
    assert_eq!(
        stats(port).await.unwrap()["nodes"],
        json!({"up": 1, "stale": 0, "down": 1})
    );
    drop(dp1);
    assert!(!cp.logs().iter().any(|l| l.contains(NODE_TOKEN)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_controlplane_outage_loses_nothing() {
    let redis = RedisServer::start();
    let cp = controlplane(&redis, 0);
    let port = cp.addr.port();
    let up = mixed_upstream().await;
    create_mappings(&cp, &up).await;
    let dp = node(&redis, port, "dp-1", &[]);
    dp.wait_status("/up/ok", 200).await;
    let mut e = Expected::default();
    e.up += dp
        .metric(r#"apiproxy_requests_total{prefix="/up",status_class="2xx"}"#)
        .await as u64;
    e.unmatched += unmatched_so_far(&dp).await;
    mix(&dp, &mut e).await;

    cp.kill();
    // Under load for 10 s while the control plane is away. (Its memory
    // through a 30 s outage is a benchmark: `bench/bench.py outage`.)
    let (stop, load) = background_load(vec![dp.addr]);
    let failures_before = dp.metric("apiproxy_stats_push_failures_total").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    e.up += load.await.unwrap();
    mix(&dp, &mut e).await;
    let failures = dp.metric("apiproxy_stats_push_failures_total").await - failures_before;
    // 50 ticks of 200 ms; a loaded machine may delay some.
    assert!(failures >= 16.0, "pushes kept being tried: {failures}");

    let cp = controlplane(&redis, port);
    assert_stats_exact(&cp, port, &e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_off_records_nothing_but_the_node_is_listed() {
    let redis = RedisServer::start();
    let cp = controlplane(&redis, 0);
    let port = cp.addr.port();
    let up = mixed_upstream().await;
    create_mappings(&cp, &up).await;
    let dp = node(
        &redis,
        port,
        "quiet",
        &[("API_PROXY_ENABLE_STATS", "false")],
    );
    dp.wait_status("/up/ok", 200).await;
    for _ in 0..5 {
        assert_eq!(get_reply(dp.addr, "/up/ok").await.status, 200);
    }
    let listed = eventually("node listed", Duration::from_secs(5), || async {
        let listed = cp.admin("GET", "/api/nodes", None).await.json();
        (listed["nodes"].as_array()?.len() == 1).then_some(listed)
    })
    .await;
    assert_eq!(listed["nodes"][0]["node_id"], "quiet");
    assert_eq!(listed["nodes"][0]["requests_total"], 0);
    let s = stats(port).await.unwrap();
    assert_eq!(s["total"], 0, "{s}");
    let text = apiproxy_tests::client::get(&format!("http://{}/metrics", dp.metrics_addr))
        .await
        .1;
    assert!(!text.contains("apiproxy_requests_total"));
    assert!(text.contains("apiproxy_inflight_requests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_batch_is_flushed_on_shutdown() {
    let redis = RedisServer::start();
    let cp = controlplane(&redis, 0);
    let port = cp.addr.port();
    let up = mixed_upstream().await;
    create_mappings(&cp, &up).await;
    // A push interval far longer than the test: only the final flush can
    // deliver these counts.
    let mut dp = node(
        &redis,
        port,
        "dp-1",
        &[
            ("API_PROXY_STATS_INTERVAL", "1h"),
            ("API_PROXY_DRAIN_TIMEOUT", "1s"),
        ],
    );
    dp.wait_status("/up/ok", 200).await;
    for _ in 0..7 {
        assert_eq!(get_reply(dp.addr, "/up/ok").await.status, 200);
    }
    let served = dp
        .metric(r#"apiproxy_requests_total{prefix="/up",status_class="2xx"}"#)
        .await as u64;
    // A stream still running when the drain timeout passes: cut, and
    // counted as cancelled in the final batch.
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"GET /up/slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(stream.read(&mut buf).await.unwrap() > 0);
    assert_eq!(stats(port).await.unwrap()["total"], 0);
    dp.signal("TERM");
    assert_eq!(dp.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let s = stats(port).await.unwrap();
    assert_eq!(s["endpoints"]["/up"]["count"], served + 1, "{s}");
    assert_eq!(s["cancelled"], 1, "{s}");
    drop(stream);
    drop(cp);
}

/// Failed requests on two real nodes reach `GET /api/requests/failed`
/// with their ids, newest first, and a success never does. The request
/// ids are the ones the clients got back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_from_two_nodes_are_listed_with_their_ids() {
    let redis = RedisServer::start();
    let cp = controlplane(&redis, 0);
    let port = cp.addr.port();
    let up = mixed_upstream().await;
    create_mappings(&cp, &up).await;
    let a = node(&redis, port, "dp-a", &[]);
    // b runs without an access log: its failures keep their ids and types.
    let b = node(&redis, port, "dp-b", &[("API_PROXY_ACCESS_LOG", "off")]);
    for dp in [&a, &b] {
        dp.wait_status("/up/ok", 200).await;
    }
    // In order, each a few milliseconds after the last: a 503 of the
    // upstream's on a, a refused connect on b, no mapping on a, and a
    // client that leaves a stream on b. Successes in between.
    let mut ids = Vec::new();
    for (dp, path, status) in [
        (&a, "/up/fail", 503),
        (&b, "/down/x", 502),
        (&a, "/nowhere", 404),
    ] {
        assert_eq!(get_reply(dp.addr, "/up/ok").await.status, 200);
        let reply = get_reply(dp.addr, path).await;
        assert_eq!(reply.status, status, "{path}");
        ids.push(reply.headers["x-request-id"].to_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    stream
        .write_all(b"GET /up/slow HTTP/1.1\r\nhost: x\r\nx-request-id: gone-1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(stream.read(&mut buf).await.unwrap() > 0);
    drop(stream);
    ids.push("gone-1".into());

    // Polling a node before it was ready got 503s too: those are listed,
    // and left out here.
    let listed = eventually("four failures listed", Duration::from_secs(10), || async {
        let r = cp.admin("GET", "/api/requests/failed?limit=10", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let list: Vec<Value> = r.json()["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| ids.iter().any(|id| r["request_id"] == id.as_str()))
            .collect();
        (list.len() >= 4).then_some(list)
    })
    .await;
    assert_eq!(listed.len(), 4, "{listed:#?}");
    let newest_first: Vec<&str> = listed
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    ids.reverse();
    assert_eq!(newest_first, ids);
    let by_id = |id: &str| listed.iter().find(|r| r["request_id"] == id).unwrap();
    let gone = by_id("gone-1");
    assert_eq!(
        (
            &gone["node_id"],
            &gone["prefix"],
            &gone["status"],
            &gone["error_type"]
        ),
        (
            &json!("dp-b"),
            &json!("/up"),
            &json!(200),
            &json!("cancelled")
        )
    );
    let nowhere = by_id(&ids[1]);
    assert_eq!(
        (
            &nowhere["node_id"],
            &nowhere["prefix"],
            &nowhere["status"],
            &nowhere["error_type"]
        ),
        (
            &json!("dp-a"),
            &json!("none"),
            &json!(404),
            &json!("no_mapping")
        )
    );
    let refused = by_id(&ids[2]);
    assert_eq!(
        (
            &refused["node_id"],
            &refused["prefix"],
            &refused["status"],
            &refused["error_type"]
        ),
        (
            &json!("dp-b"),
            &json!("/down"),
            &json!(502),
            &json!("upstream_connect")
        )
    );
    let upstream_503 = by_id(&ids[3]);
    assert_eq!(
        (
            &upstream_503["node_id"],
            &upstream_503["prefix"],
            &upstream_503["status"]
        ),
        (&json!("dp-a"), &json!("/up"), &json!(503))
    );
    assert!(
        upstream_503.get("error_type").is_none_or(Value::is_null),
        "{upstream_503}"
    );
}

/// A control plane older than the batch's `failed` field refuses a batch
/// that carries it (400, as any unknown field). The node then resends the
/// same counts without the failures: nothing is lost in a rollout that
/// upgrades the data planes first. The old control plane is stood in for
/// by a server that answers as it did: 400 for a batch with `failed`,
/// 204 for one without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_control_plane_still_gets_the_counts() {
    let batches = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let old_cp = upstream::http(handler({
        let batches = batches.clone();
        move |req: Request<Incoming>| {
            let batches = batches.clone();
            async move {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let batch: Value = serde_json::from_slice(&body).unwrap();
                if batch.get("failed").is_some() {
                    return Response::builder()
                        .status(400)
                        .body(full(
                            r#"{"success":false,"error":"unknown field `failed`"}"#,
                        ))
                        .unwrap();
                }
                batches.lock().unwrap().push(batch);
                Response::builder().status(204).body(full("")).unwrap()
            }
        }
    }))
    .await;
    let up = mixed_upstream().await;
    let dp = DataPlane::start(
        &apiproxy_tests::one_mapping("/up", &up.url()),
        &[
            ("API_PROXY_CONTROLPLANE_URL", &old_cp.url()),
            ("API_PROXY_NODE_TOKEN", NODE_TOKEN),
            ("API_PROXY_STATS_INTERVAL", "200ms"),
        ],
    );
    for path in ["/up/ok", "/up/fail", "/up/ok"] {
        get_reply(dp.addr, path).await;
    }
    let requests = eventually(
        "the three requests counted",
        Duration::from_secs(10),
        || async {
            let counted: u64 = batches
                .lock()
                .unwrap()
                .iter()
                .filter_map(|b| b["endpoints"]["/up"]["requests"].as_u64())
                .sum();
            (counted >= 3).then_some(counted)
        },
    )
    .await;
    assert_eq!(requests, 3);
    // Each batch was acknowledged in the end, the failure's at its second
    // try, and the node said why.
    assert_eq!(dp.metric("apiproxy_stats_push_failures_total").await, 0.0);
    assert!(dp
        .logs()
        .iter()
        .any(|l| l.contains("resending it without them")));
}
