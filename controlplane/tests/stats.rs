//! The stats path in-process against a real `redis-server`: pushes in
//! (`POST /internal/stats`), applied exactly once; `/stats`,
//! `/api/nodes` and `/metrics` out (SPEC §5, §6).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiproxy_shared::access::{key_hash_hex, KeyRecord};
use apiproxy_shared::stats::BUCKETS;
use apiproxy_shared::{EndpointDelta, FailedRequest, Gauges, KeyUsage, RedisKeys, StatsBatch};
use axum::http::{header, StatusCode};
use serde_json::{json, Value};
use support::{Api, Client, NODE_TOKEN, TOKEN};

const MIB: u64 = 1024 * 1024;

/// `requests` requests, `errors` of them 5xx, all in latency bucket
/// `bucket`; 100 bytes in and 1000 out each, 40 ms each on average.
fn delta(requests: u64, errors: u64, bucket: usize) -> EndpointDelta {
    let mut latency_buckets = vec![0; BUCKETS];
    latency_buckets[bucket] = requests;
    EndpointDelta {
        requests,
        errors,
        status: BTreeMap::from([
            ("2xx".to_owned(), requests - errors),
            ("5xx".to_owned(), errors),
        ]),
        cancelled: 0,
        bytes_in: requests * 100,
        bytes_out: requests * 1000,
        latency_sum_ms: requests * 40,
        ttfb_buckets: latency_buckets.clone(),
        latency_buckets,
    }
}

fn batch(
    node_id: &str,
    boot_id: &str,
    seq: u64,
    endpoints: &[(&str, EndpointDelta)],
) -> StatsBatch {
    StatsBatch {
        node_id: node_id.into(),
        boot_id: boot_id.into(),
        seq,
        sent_at: 1_700_000_000,
        interval_s: 2.0,
        config_version: 0,
        config_hash: "cbf29ce484222325".into(),
        gauges: Gauges {
            inflight: 1,
            rss_bytes: 10 * MIB,
            uptime_s: 60,
            tasks: 3,
        },
        unmatched: 0,
        endpoints: endpoints
            .iter()
            .map(|(p, d)| (p.to_string(), d.clone()))
            .collect(),
        failed: Vec::new(),
        keys: Vec::new(),
    }
}

async fn push_raw(api: &Client, body: String) -> (StatusCode, Value) {
    let auth = format!("Bearer {NODE_TOKEN}");
    let (s, v, _) = api
        .call("POST", "/internal/stats", Some(&auth), Some(body))
        .await;
    (s, v)
}

async fn push(api: &Client, b: &StatsBatch) -> StatusCode {
    let (s, body) = push_raw(api, serde_json::to_string(b).unwrap()).await;
    if s == StatusCode::NO_CONTENT {
        assert_eq!(body, json!(""), "204 has no body");
    }
    s
}

async fn stats(api: &Client, query: &str) -> Value {
    let (s, v, _) = api.call("GET", &format!("/stats{query}"), None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn sum(series: &Value, field: &str) -> u64 {
    series
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[field].as_u64().unwrap())
        .sum()
}

async fn node(api: &Client, id: &str) -> Value {
    let (s, v) = api.admin("GET", "/api/nodes", None).await;
    assert_eq!(s, StatusCode::OK);
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_batch_is_applied_once_per_node_boot_and_seq() {
    let mut api = Api::start();
    let mut first = batch("dp-1", "boot-a", 1, &[("/openai", delta(10, 1, 3))]);
    first.unmatched = 2;
    assert_eq!(push(&api, &first).await, StatusCode::NO_CONTENT);
    assert_eq!(stats(&api, "").await["total"], 10);

    // A resend (the ack was lost), even with a new sent_at: not applied again.
    first.sent_at += 5;
    assert_eq!(push(&api, &first).await, StatusCode::NO_CONTENT);
    let s = stats(&api, "").await;
    assert_eq!((&s["total"], &s["unmatched"]), (&json!(10), &json!(2)));

    let mut second = first.clone();
    second.seq = 2;
    assert_eq!(push(&api, &second).await, StatusCode::NO_CONTENT);
    assert_eq!(stats(&api, "").await["total"], 20);
    assert_eq!(node(&api, "dp-1").await["requests_total"], 24);

    // An older seq of the same boot is a duplicate too.
    assert_eq!(push(&api, &first).await, StatusCode::NO_CONTENT);
    assert_eq!(stats(&api, "").await["total"], 20);

    // The node restarted: a new boot starts again at seq 1.
    let mut rebooted = first.clone();
    rebooted.boot_id = "boot-b".into();
    assert_eq!(push(&api, &rebooted).await, StatusCode::NO_CONTENT);
    let s = stats(&api, "").await;
    assert_eq!((&s["total"], &s["unmatched"]), (&json!(30), &json!(6)));
    let n = node(&api, "dp-1").await;
    assert_eq!(n["boot_id"], "boot-b");
    assert_eq!(n["requests_total"], 12, "counted since the new boot");

    // Redis away: 503, so the node keeps the batch and resends it.
    api.redis.kill();
    second.boot_id = "boot-b".into();
    assert_eq!(push(&api, &second).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn pushes_need_the_node_token() {
    let api = Api::start();
    let body = serde_json::to_string(&batch("dp-1", "b", 1, &[("/a", delta(1, 0, 0))])).unwrap();
    for auth in [
        None,
        Some("Bearer wrong-node-token-0000000".to_owned()),
        Some(format!("Bearer {TOKEN}")),
        Some(NODE_TOKEN.to_owned()),
        Some("Basic abc".to_owned()),
    ] {
        let (s, v, _) = api
            .call(
                "POST",
                "/internal/stats",
                auth.as_deref(),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            v,
            json!({"success": false, "error": "authentication required"})
        );
    }
    // The token is checked before the body is looked at.
    let (s, _, _) = api
        .call("POST", "/internal/stats", None, Some("{not json".into()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(stats(&api, "").await["total"], 0);

    // No API_PROXY_NODE_TOKEN: every push is refused, the right one too.
    let closed = Api::start_with(&[], &[("API_PROXY_NODE_TOKEN", "")]);
    assert_eq!(push_raw(&closed, body).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn push_bodies_are_checked() {
    let api = Api::start();
    let valid = batch("dp-1", "b", 1, &[("/a", delta(1, 0, 0))]);
    let as_json = |b: &StatsBatch| serde_json::to_value(b).unwrap();
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut v = as_json(&valid);
    v["seq"] = json!("one");
    cases.push((v, "seq"));
    let mut v = as_json(&valid);
    v["bogus"] = json!(1);
    cases.push((v, "bogus"));
    let mut v = as_json(&valid);
    v["endpoints"]["/a"]["bytes_in"] = json!(-1);
    cases.push((v, "bytes_in"));
    let mut v = as_json(&valid);
    v.as_object_mut().unwrap().remove("gauges");
    cases.push((v, "gauges"));
    let mut v = as_json(&valid);
    v["endpoints"]["/a"]["latency_buckets"] = json!([1, 2]);
    cases.push((v, "latency_buckets"));
    let mut v = as_json(&valid);
    v["seq"] = json!(0);
    cases.push((v, "seq"));
    let mut v = as_json(&valid);
    v["boot_id"] = json!("a:b");
    cases.push((v, "boot_id"));
    let mut v = as_json(&valid);
    v["endpoints"]["/a"]["bytes_out"] = json!((1u64 << 50) + 1);
    cases.push((v, "bytes_out"));
    for (body, field) in cases {
        let (s, reply) = push_raw(&api, body.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply["success"], false);
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(field), "{field}: {error}");
    }
    assert_eq!(
        push_raw(&api, "{not json".into()).await.0,
        StatusCode::BAD_REQUEST
    );

    // Over the admin API's 64 KiB but within the push limit of 1 MiB.
    let many: Vec<(String, EndpointDelta)> = (0..400)
        .map(|i| (format!("/endpoint-{i}"), delta(1, 0, 0)))
        .collect();
    let many: Vec<(&str, EndpointDelta)> =
        many.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let big = batch("dp-1", "b", 1, &many);
    assert!(serde_json::to_string(&big).unwrap().len() > 64 * 1024);
    assert_eq!(push(&api, &big).await, StatusCode::NO_CONTENT);

    let mut over = as_json(&valid);
    over["config_hash"] = json!("x".repeat(1024 * 1024));
    let (s, reply) = push_raw(&api, over.to_string()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply["error"].as_str().unwrap().contains("1024 KiB"),
        "{reply}"
    );

    let s = stats(&api, "").await;
    assert_eq!(s["total"], 400, "only the valid batch was applied");
}

#[tokio::test]
async fn stats_add_up_batches_from_several_nodes() {
    let api = Api::start();
    let mut openai = delta(10, 2, 3); // (25, 50] ms
    openai.cancelled = 1;
    let mut a1 = batch("dp-1", "a", 1, &[("/openai", openai)]);
    a1.unmatched = 3;
    let a2 = batch("dp-1", "a", 2, &[("/claude", delta(5, 0, 5))]); // (100, 250] ms
    let mut b1 = batch("dp-2", "b", 1, &[("/openai", delta(20, 1, 4))]); // (50, 100] ms
    b1.unmatched = 1;
    b1.gauges.rss_bytes = 20 * MIB;
    for b in [&a1, &a2, &b1] {
        assert_eq!(push(&api, b).await, StatusCode::NO_CONTENT);
    }
    let s = stats(&api, "").await;
    assert_eq!(s["total"], 35);
    assert_eq!(s["errors"], 3);
    assert_eq!(s["unmatched"], 4);
    assert_eq!(s["cancelled"], 1);
    let o = &s["endpoints"]["/openai"];
    assert_eq!(o["count"], 30);
    assert_eq!(o["error_count"], 3);
    assert_eq!(o["bytes_in"], 3000);
    assert_eq!(o["bytes_out"], 30_000);
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let last_ms = o["last_request_ms"].as_u64().unwrap();
    assert!(last_ms > 1_600_000_000_000);
    assert_eq!(
        o["last_request"],
        last_ms / 1000,
        "seconds, as the Go version"
    );
    assert!(now_s.abs_diff(last_ms / 1000) < 60);
    let (p50, p99) = (o["p50_ms"].as_f64().unwrap(), o["p99_ms"].as_f64().unwrap());
    assert!(
        25.0 < p50 && p50 <= 100.0 && p50 <= p99 && p99 <= 100.0,
        "{o}"
    );
    let c = &s["endpoints"]["/claude"];
    assert_eq!(c["count"], 5);
    assert!(
        (100.0..=250.0).contains(&c["p50_ms"].as_f64().unwrap()),
        "{c}"
    );

    let perf = &s["performance"];
    assert_eq!(perf["avg_response_time_ms"], 40.0);
    assert_eq!(s["avg_response"], "40ms");
    assert_eq!(s["dropped_events"], 0);
    assert_eq!(
        perf["goroutine_count"], 6,
        "3 tasks on each of the two nodes"
    );
    let requests = s["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 35, "one entry per proxied request");
    let to = |e: &str| requests.iter().filter(|r| r["endpoint"] == e).count();
    assert_eq!((to("/openai"), to("/claude")), (30, 5));
    for r in requests {
        assert!(now_s.abs_diff(r["timestamp"].as_u64().unwrap()) < 60, "{r}");
    }
    let times: Vec<u64> = requests
        .iter()
        .map(|r| r["timestamp"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "newest last");
    assert_eq!(perf["error_rate"], 8.571, "3 / 35 in percent");
    assert_eq!(perf["memory_usage_mb"], 30.0);
    let p99 = perf["p99_response_time_ms"].as_f64().unwrap();
    assert!((100.0..=250.0).contains(&p99), "{perf}");
    assert!(perf["requests_per_sec"].as_f64().unwrap() > 0.0, "{perf}");
    assert_eq!(s["nodes"], json!({"up": 2, "stale": 0, "down": 0}));

    for series in ["minute", "hour"] {
        let buckets = &s["series"][series];
        assert_eq!(sum(buckets, "count"), 35, "{series}: {buckets}");
        assert_eq!(sum(buckets, "errors"), 3);
        let t = buckets[0]["t"].as_u64().unwrap();
        assert_eq!(t % if series == "minute" { 60 } else { 3600 }, 0);
        assert!(buckets[0]["p99_ms"].as_f64().unwrap() > 0.0);
    }
    let claude = stats(&api, "?endpoint=/claude").await;
    assert_eq!(sum(&claude["series"]["minute"], "count"), 5);
    assert_eq!(sum(&claude["series"]["hour"], "errors"), 0);
    assert_eq!(claude["total"], 35, "the filter is for the series only");
    let none = stats(&api, "?endpoint=/nothing").await;
    assert_eq!(none["series"], json!({"minute": [], "hour": []}));
    let (status, body, _) = api.call("GET", "/stats?endpoint=nothing", None, None).await;
    assert_eq!(
        (status, &body["success"]),
        (StatusCode::BAD_REQUEST, &json!(false))
    );

    // Another control-plane replica on the same Redis reports the same.
    assert_eq!(stats(&api.replica(), "").await["endpoints"], s["endpoints"]);
}

#[tokio::test]
async fn nodes_are_up_stale_or_down() {
    let api = Api::start_with(&["--node-timeout", "1s"], &[]);
    let (s, created) = api
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/a", "target": "https://a.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(created["version"], 1);
    let mut down = batch("c-down", "b", 1, &[]);
    down.config_version = 1;
    assert_eq!(push(&api, &down).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut up = batch("a-up", "b", 1, &[("/a", delta(3, 0, 0))]);
    up.config_version = 1;
    up.gauges = Gauges {
        inflight: 4,
        rss_bytes: 5 * MIB,
        uptime_s: 99,
        tasks: 6,
    };
    let stale = batch("b-stale", "b", 1, &[]);
    assert_eq!(push(&api, &up).await, StatusCode::NO_CONTENT);
    assert_eq!(push(&api, &stale).await, StatusCode::NO_CONTENT);

    let (s, list) = api.admin("GET", "/api/nodes", None).await;
    assert_eq!(s, StatusCode::OK);
    let nodes = list["nodes"].as_array().unwrap();
    let states: Vec<(&str, &str)> = nodes
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("a-up", "up"), ("b-stale", "stale"), ("c-down", "down")]
    );
    let a = &nodes[0];
    assert_eq!(a["boot_id"], "b");
    assert_eq!(a["config_version"], 1);
    assert_eq!(a["config_hash"], "cbf29ce484222325");
    assert_eq!(a["inflight"], 4);
    assert_eq!(a["rss_bytes"], 5 * MIB);
    assert_eq!(a["uptime_s"], 99);
    assert_eq!(a["tasks"], 6);
    assert_eq!(a["requests_total"], 3);
    assert!(a["last_seen"].as_u64().unwrap() > 1_600_000_000_000);

    let s = stats(&api, "").await;
    assert_eq!(s["nodes"], json!({"up": 1, "stale": 1, "down": 1}));
    assert_eq!(
        s["performance"]["goroutine_count"], 9,
        "the up and stale nodes' tasks; the down node is left out"
    );
    assert_eq!(
        s["performance"]["memory_usage_mb"], 15.0,
        "the down node is left out"
    );

    // A node whose record expired is gone from the list and the set.
    let keys = RedisKeys::default();
    let mut conn = api.redis.conn().await;
    let _: () = redis::cmd("DEL")
        .arg(keys.node("c-down"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        api.admin("GET", "/api/nodes", None).await.1["nodes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let member: bool = redis::cmd("SISMEMBER")
        .arg(&keys.nodes)
        .arg("c-down")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!member);
}

#[tokio::test]
async fn metrics_export_the_cluster_totals() {
    let api = Api::start();
    let mut a = batch("dp-1", "a", 1, &[("/openai", delta(10, 2, 3))]);
    a.unmatched = 7;
    a.endpoints.get_mut("/openai").unwrap().cancelled = 1;
    let b = batch("dp-2", "b", 1, &[("/openai", delta(5, 0, 0))]);
    assert_eq!(push(&api, &a).await, StatusCode::NO_CONTENT);
    assert_eq!(push(&api, &b).await, StatusCode::NO_CONTENT);
    let (s, text, headers) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = text.as_str().unwrap();
    for line in [
        r#"apiproxy_cluster_requests_total{prefix="/openai"} 15"#,
        r#"apiproxy_cluster_errors_total{prefix="/openai"} 2"#,
        r#"apiproxy_cluster_cancelled_total{prefix="/openai"} 1"#,
        r#"apiproxy_cluster_request_bytes_total{prefix="/openai"} 1500"#,
        r#"apiproxy_cluster_response_bytes_total{prefix="/openai"} 15000"#,
        r#"apiproxy_cluster_request_duration_seconds_bucket{prefix="/openai",le="0.005"} 5"#,
        r#"apiproxy_cluster_request_duration_seconds_bucket{prefix="/openai",le="0.05"} 15"#,
        r#"apiproxy_cluster_request_duration_seconds_sum{prefix="/openai"} 0.6"#,
        r#"apiproxy_cluster_request_duration_seconds_count{prefix="/openai"} 15"#,
        "apiproxy_cluster_unmatched_requests_total 7",
        r#"apiproxy_cluster_nodes{state="up"} 2"#,
        r#"apiproxy_cluster_nodes{state="down"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(
        !text.contains("apiproxy_requests_total"),
        "the data plane's names stay theirs"
    );
}

#[tokio::test]
async fn private_stats_need_admin_auth() {
    let api = Api::start_with(&["--public-stats", "false"], &[]);
    let (s, body, _) = api.call("GET", "/stats", None, None).await;
    assert_eq!(
        (s, &body["success"]),
        (StatusCode::UNAUTHORIZED, &json!(false))
    );
    let (s, body) = api.admin("GET", "/stats", None).await;
    assert_eq!((s, &body["total"]), (StatusCode::OK, &json!(0)));
    // Public by default.
    assert_eq!(
        Api::start().call("GET", "/stats", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn concurrent_copies_of_a_batch_apply_once() {
    let api = Api::start();
    // Two replicas on one Redis, ten copies each, all at once.
    let replica = api.replica();
    let b = batch("dp-1", "boot", 1, &[("/openai", delta(7, 1, 2))]);
    let pushes = (0..20).map(|i| push(if i % 2 == 0 { &api } else { &replica }, &b));
    let statuses = futures_util::future::join_all(pushes).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "{statuses:?}"
    );
    let s = stats(&api, "").await;
    assert_eq!((&s["total"], &s["errors"]), (&json!(7), &json!(1)));
    assert_eq!(s["endpoints"]["/openai"]["bytes_in"], 700);
    assert_eq!(sum(&s["series"]["minute"], "count"), 7);
    assert_eq!(node(&api, "dp-1").await["requests_total"], 7);
}

fn failed(time: u64, prefix: &str) -> FailedRequest {
    FailedRequest {
        time,
        request_id: format!("req-{time}"),
        prefix: prefix.into(),
        status: 502,
        error_type: Some("upstream_connect".into()),
        duration_ms: 7,
    }
}

async fn failed_list(api: &Client, query: &str) -> Vec<Value> {
    let (s, v) = api
        .admin("GET", &format!("/api/requests/failed{query}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    v["requests"].as_array().unwrap().clone()
}

fn times(list: &[Value]) -> Vec<u64> {
    list.iter().map(|r| r["time"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn failed_requests_are_listed_newest_first_across_the_fleet() {
    let api = Api::start();
    assert_eq!(failed_list(&api, "").await, Vec::<Value>::new());

    // Two nodes whose batches interleave in time: the list is by request
    // time, not by which batch arrived last.
    let mut east = batch("dp-east", "boot", 1, &[]);
    east.failed = vec![failed(1_000, "/openai"), failed(3_000, "/openai")];
    let mut west = batch("dp-west", "boot", 1, &[]);
    west.failed = vec![failed(2_000, "/claude"), failed(4_000, "none")];
    west.failed[1].error_type = None;
    west.failed[1].status = 503;
    assert_eq!(push(&api, &east).await, StatusCode::NO_CONTENT);
    assert_eq!(push(&api, &west).await, StatusCode::NO_CONTENT);

    let list = failed_list(&api, "").await;
    assert_eq!(times(&list), [4_000, 3_000, 2_000, 1_000]);
    assert_eq!(
        list[0],
        json!({"node_id": "dp-west", "time": 4_000, "request_id": "req-4000",
               "prefix": "none", "status": 503, "duration_ms": 7})
    );
    assert_eq!(
        list[1],
        json!({"node_id": "dp-east", "time": 3_000, "request_id": "req-3000",
               "prefix": "/openai", "status": 502, "error_type": "upstream_connect",
               "duration_ms": 7})
    );
    assert_eq!(times(&failed_list(&api, "?limit=1").await), [4_000]);
    // A limit takes the newest by time, not the last arrived: west's batch
    // (2000, 4000) came last, yet 3000 is the second newest.
    assert_eq!(times(&failed_list(&api, "?limit=2").await), [4_000, 3_000]);

    // A resent batch (its ack was lost) adds nothing twice.
    assert_eq!(push(&api, &east).await, StatusCode::NO_CONTENT);
    assert_eq!(failed_list(&api, "?limit=1000").await.len(), 4);
}

#[tokio::test]
async fn the_failed_list_needs_auth_and_a_sane_limit() {
    // `/stats` is public by default; the failures never are.
    let api = Api::start();
    assert_eq!(
        api.call("GET", "/stats", None, None).await.0,
        StatusCode::OK
    );
    let (s, v, _) = api.call("GET", "/api/requests/failed", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    for limit in ["0", "1001", "-1", "x", "99999999999"] {
        let (s, v) = api
            .admin("GET", &format!("/api/requests/failed?limit={limit}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "limit={limit}");
        assert_eq!(v["success"], false);
        assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
    }
}

#[tokio::test]
async fn the_fleet_keeps_its_newest_thousand_failed_requests() {
    let api = Api::start();
    // 11 batches of 100: 1,100 failures, of which the newest 1,000 stay.
    for seq in 1..=11u64 {
        let mut b = batch("dp-1", "boot", seq, &[]);
        b.failed = (0..100)
            .map(|i| failed(seq * 1_000 + i, "/openai"))
            .collect();
        assert_eq!(push(&api, &b).await, StatusCode::NO_CONTENT);
    }
    let list = failed_list(&api, "?limit=1000").await;
    assert_eq!(list.len(), 1_000);
    assert_eq!(list[0]["time"], 11_099);
    assert_eq!(list[999]["time"], 2_000, "the first batch is gone");
    let mut conn = api.redis.conn().await;
    let len: usize = redis::cmd("LLEN")
        .arg(&RedisKeys::default().stats_failed)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, apiproxy_shared::FAILED_KEPT);
}

const KEY_A: &str = "key_00000000000000aa";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
const KEY_B: &str = "key_00000000000000bb";

/// Makes `id` a key, as the key API stores one.
async fn add_key(api: &Api, id: &str) {
    let record = KeyRecord {
        id: id.into(),
        name: format!("bot-{id}"),
        prefixes: None,
        enabled: true,
        expires_at: None,
        created_at: 1_700_000_000,
        sha256: key_hash_hex(id.as_bytes()),
    };
    let _: () = redis::cmd("HSET")
        .arg(RedisKeys::default().keys)
        .arg(id)
        .arg(serde_json::to_string(&record).unwrap())
        .query_async(&mut api.redis.conn().await)
        .await
        .unwrap();
}

/// Deletes key `id`, as far as `{p}:keys` goes.
async fn remove_key(api: &Api, id: &str) {
    let _: () = redis::cmd("HDEL")
        .arg(RedisKeys::default().keys)
        .arg(id)
        .query_async(&mut api.redis.conn().await)
        .await
        .unwrap();
}

/// `requests` requests of key `key_id` on `prefix`, `errors` of them 5xx,
/// the rest 2xx; 100 bytes in and 1000 out each.
fn key_usage(key_id: &str, prefix: &str, requests: u64, errors: u64) -> KeyUsage {
    KeyUsage {
        key_id: key_id.into(),
        prefix: prefix.into(),
        requests,
        errors,
        status: BTreeMap::from([
            ("2xx".to_owned(), requests - errors),
            ("5xx".to_owned(), errors),
        ]),
        bytes_in: requests * 100,
        bytes_out: requests * 1000,
    }
}

async fn key_hash(api: &Api, key: &str) -> BTreeMap<String, u64> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut api.redis.conn().await)
        .await
        .unwrap()
}

/// A key's requests in the hour buckets from `since` (unix s) to now,
/// and whether each bucket holding some expires.
async fn key_series(api: &Api, since: u64, id: &str) -> (u64, bool) {
    let mut conn = api.redis.conn().await;
    let (mut requests, mut expires) = (0, true);
    for hour in since / 3600..=unix_now() / 3600 {
        let bucket = RedisKeys::default().stats_hour(hour * 3600);
        let (n, ttl): (Option<u64>, i64) = redis::pipe()
            .hget(&bucket, format!("key:{id}:requests"))
            .ttl(&bucket)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(n) = n {
            requests += n;
            expires &= ttl > 0;
        }
    }
    (requests, expires)
}

async fn usage(api: &Client, id: &str) -> (StatusCode, Value) {
    api.admin("GET", &format!("/api/keys/{id}/usage"), None)
        .await
}

#[tokio::test]
async fn key_usage_is_applied_once_summed_across_nodes_and_only_for_keys() {
    let api = Api::start();
    add_key(&api, KEY_A).await;
    let keys = RedisKeys::default();
    let mut a = batch("dp-1", "a", 1, &[]);
    a.sent_at = 1_700_000_500;
    // KEY_B is no key (deleted since the node counted it): dropped.
    a.keys = vec![
        key_usage(KEY_A, "/openai", 3, 1),
        key_usage(KEY_B, "/openai", 7, 0),
    ];
    let first_push = unix_now();
    assert_eq!(push(&api, &a).await, StatusCode::NO_CONTENT);
    // A batch of key usage alone made the hour bucket: it expires.
    let (requests, expires) = key_series(&api, first_push, KEY_A).await;
    assert_eq!((requests, expires), (3, true));
    // A resend (same seq, later sent_at): not applied again.
    a.sent_at += 10;
    assert_eq!(push(&api, &a).await, StatusCode::NO_CONTENT);
    let mut b = batch("dp-2", "b", 1, &[("/openai", delta(3, 1, 0))]);
    b.sent_at = 1_700_000_100; // an older clock: the last use stays

    b.keys = vec![
        key_usage(KEY_A, "/openai", 2, 0),
        key_usage(KEY_A, "/other", 1, 0),
    ];
    assert_eq!(push(&api, &b).await, StatusCode::NO_CONTENT);

    let expected: BTreeMap<String, u64> = [
        ("/openai|requests", 5),
        ("/openai|errors", 1),
        ("/openai|bytes_in", 500),
        ("/openai|bytes_out", 5000),
        ("/openai|2xx", 4),
        ("/openai|5xx", 1),
        ("/other|requests", 1),
        ("/other|bytes_in", 100),
        ("/other|bytes_out", 1000),
        ("/other|2xx", 1),
    ]
    .map(|(f, n)| (f.to_owned(), n))
    .into();
    assert_eq!(key_hash(&api, &keys.stats_key(KEY_A)).await, expected);
    assert_eq!(
        key_hash(&api, &keys.keys_last_used).await,
        BTreeMap::from([(KEY_A.to_owned(), 1_700_000_500)]),
        "the newest sent_at of the first send, and nothing for KEY_B"
    );
    assert!(key_hash(&api, &keys.stats_key(KEY_B)).await.is_empty());
    // The endpoints count as before.
    assert_eq!(stats(&api, "").await["total"], 3);

    // In the hour buckets (two, should an hour end between the pushes).
    assert_eq!(key_series(&api, first_push, KEY_A).await.0, 6);
}

#[tokio::test]
async fn key_usage_is_served_per_prefix_with_a_day_of_hours() {
    let api = Api::start();
    add_key(&api, KEY_A).await;
    add_key(&api, KEY_B).await;
    // KEY_B exists but was never used: zeros.
    let (s, v) = usage(&api, KEY_B).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["prefixes"], json!([]));
    assert_eq!(sum(&v["series"], "requests"), 0);

    let mut a = batch("dp-1", "a", 1, &[]);
    a.keys = vec![
        key_usage(KEY_A, "/openai", 4, 1),
        key_usage(KEY_A, "/anthropic", 2, 0),
    ];
    let before = unix_now();
    assert_eq!(push(&api, &a).await, StatusCode::NO_CONTENT);
    let (s, v) = usage(&api, KEY_A).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let after = unix_now();
    assert_eq!(v["success"], true);
    assert_eq!(v["key_id"], KEY_A);
    assert_eq!(
        v["prefixes"],
        json!([
            {"prefix": "/anthropic", "requests": 2, "errors": 0, "bytes_in": 200, "bytes_out": 2000,
             "status": {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 0}},
            {"prefix": "/openai", "requests": 4, "errors": 1, "bytes_in": 400, "bytes_out": 4000,
             "status": {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 1}},
        ])
    );
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 24);
    let starts: Vec<u64> = series.iter().map(|p| p["t"].as_u64().unwrap()).collect();
    let newest = *starts.last().unwrap();
    assert!(
        (before / 3600 * 3600..=after / 3600 * 3600).contains(&newest),
        "the newest point is the current hour"
    );
    for (i, t) in starts.iter().enumerate() {
        assert_eq!(*t, newest - (23 - i as u64) * 3600, "hourly, oldest first");
    }
    assert_eq!(
        (sum(&v["series"], "requests"), sum(&v["series"], "errors")),
        (6, 1)
    );
    // All in one hour (the hour the batch was applied), zeros elsewhere.
    let used: Vec<&Value> = series.iter().filter(|p| p["requests"] != 0).collect();
    assert_eq!(used.len(), 1);
    assert!(series.iter().all(|p| p["errors"].is_u64()));

    // Not a key: 404, in the API's error shape; and admin auth is needed.
    for id in [
        KEY_A.replace("aa", "cc"),
        "nope".into(),
        KEY_A.to_uppercase(),
    ] {
        let (s, v) = usage(&api, &id).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(v["success"], false);
    }
    let (s, _, _) = api
        .call("GET", &format!("/api/keys/{KEY_A}/usage"), None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Deleted: its usage is no longer served.
    remove_key(&api, KEY_A).await;
    assert_eq!(usage(&api, KEY_A).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_export_each_keys_requests() {
    let api = Api::start();
    add_key(&api, KEY_A).await;
    add_key(&api, KEY_B).await;
    let mut a = batch("dp-1", "a", 1, &[]);
    a.keys = vec![
        key_usage(KEY_A, "/openai", 4, 1),
        key_usage(KEY_B, "/openai", 2, 0),
    ];
    let mut b = batch("dp-2", "b", 1, &[]);
    b.keys = vec![key_usage(KEY_A, "/openai", 1, 0)];
    assert_eq!(push(&api, &a).await, StatusCode::NO_CONTENT);
    assert_eq!(push(&api, &b).await, StatusCode::NO_CONTENT);
    let metrics = || async {
        let (s, text, _) = api.call("GET", "/metrics", None, None).await;
        assert_eq!(s, StatusCode::OK);
        text.as_str().unwrap().to_owned()
    };
    let text = metrics().await;
    for line in [
        "# TYPE apiproxy_cluster_key_requests_total counter",
        &format!(
            r#"apiproxy_cluster_key_requests_total{{key_id="{KEY_A}",prefix="/openai",status_class="2xx"}} 4"#
        ),
        &format!(
            r#"apiproxy_cluster_key_requests_total{{key_id="{KEY_A}",prefix="/openai",status_class="5xx"}} 1"#
        ),
        &format!(
            r#"apiproxy_cluster_key_requests_total{{key_id="{KEY_B}",prefix="/openai",status_class="2xx"}} 2"#
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    // A deleted key's counters (should they outlive it) are not exported.
    remove_key(&api, KEY_B).await;
    let text = metrics().await;
    assert!(!text.contains(KEY_B), "{text}");
    assert!(text.contains(KEY_A));
}

#[tokio::test]
async fn key_usage_in_a_push_is_checked() {
    let api = Api::start();
    add_key(&api, KEY_A).await;
    let mut cases: Vec<(KeyUsage, &str)> = Vec::new();
    cases.push((key_usage("key_XYZ", "/a", 1, 0), "key_id"));
    cases.push((key_usage(KEY_A, "a", 1, 0), "prefix"));
    let mut wrong_sum = key_usage(KEY_A, "/a", 2, 0);
    wrong_sum.requests = 3;
    cases.push((wrong_sum, "add up"));
    let mut wrong_errors = key_usage(KEY_A, "/a", 2, 0);
    wrong_errors.errors = 3;
    cases.push((wrong_errors, "errors"));
    let mut odd_class = key_usage(KEY_A, "/a", 1, 0);
    odd_class.status = BTreeMap::from([("6xx".to_owned(), 1)]);
    cases.push((odd_class, "status class"));
    let mut huge = key_usage(KEY_A, "/a", 1, 0);
    huge.bytes_out = (1 << 50) + 1;
    cases.push((huge, "/a|bytes_out"));
    for (seq, (usage, says)) in (1..).zip(cases) {
        let mut b = batch("dp-1", "b", seq, &[("/a", delta(1, 0, 0))]);
        b.keys = vec![key_usage(KEY_A, "/a", 1, 0), usage];
        let (s, reply) = push_raw(&api, serde_json::to_string(&b).unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{says}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(says), "{says}: {error}");
    }
    let mut v = serde_json::to_value(batch("dp-1", "b", 1, &[])).unwrap();
    v["keys"] = json!([{"key_id": KEY_A, "prefix": "/a", "requests": 1}]);
    let (s, reply) = push_raw(&api, v.to_string()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(reply["error"].as_str().unwrap().contains("keys"), "{reply}");
    // Nothing of the refused batches was applied.
    assert_eq!(stats(&api, "").await["total"], 0);
    assert!(key_hash(&api, &RedisKeys::default().stats_key(KEY_A))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_a_batch_is_acknowledged_only_once_a_replica_holds_it() {
    let api = Api::start();
    let durability =
        || async { api.admin("GET", "/api/nodes", None).await.1["stats_durability"].clone() };
    assert_eq!(durability().await, "primary_only");
    let replica = apiproxy_tests::redis::RedisServer::start_replica_of(&api.redis);
    apiproxy_tests::eventually(
        "the primary lists its replica",
        Duration::from_secs(10),
        || async { (durability().await == "replicated").then_some(()) },
    )
    .await;
    let keys = RedisKeys::default();
    let mut on_replica = replica.conn().await;
    let replica_total = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let totals = keys.stats_totals.clone();
        async move {
            redis::cmd("HGET")
                .arg(totals)
                .arg("total")
                .query_async::<Option<u64>>(&mut conn)
                .await
                .unwrap()
        }
    };

    // Acknowledged: the replica holds it already.
    let first = batch("dp-1", "boot-a", 1, &[("/openai", delta(10, 1, 3))]);
    assert_eq!(push(&api, &first).await, StatusCode::NO_CONTENT);
    assert_eq!(replica_total(&mut on_replica).await, Some(10));

    // A replica that does not answer: applied on the primary, not
    // acknowledged, so the node keeps the batch.
    replica.pause();
    let second = batch("dp-1", "boot-a", 2, &[("/openai", delta(5, 0, 3))]);
    let (status, body) = push_raw(&api, serde_json::to_string(&second).unwrap()).await;
    replica.resume();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("replica"),
        "{body}"
    );
    // The resend is acknowledged once the replica holds it, and counted once.
    assert_eq!(push(&api, &second).await, StatusCode::NO_CONTENT);
    assert_eq!(replica_total(&mut on_replica).await, Some(15));
    assert_eq!(stats(&api, "").await["total"], 15);
}
