//! The Go version's saved stats, end to end: a real `redis-server` holding
//! the keys the Go version wrote at shutdown, the real control plane
//! started on it imports them once into the cluster totals (audited,
//! marked, never twice), real data-plane traffic adds to them, and
//! `/stats` has the Go version's fields with their names and types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiproxy_shared::RedisKeys;
use apiproxy_tests::controlplane::{stats, ControlPlane};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, full, handler};
use apiproxy_tests::{eventually, DataPlane};
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The keys as the Go version's `SaveToRedis` leaves them (no prefix):
/// counts as integer strings, endpoints and the timeline as JSON.
async fn load_go_keys(redis: &RedisServer, an_hour_ago: u64) {
    let endpoints = json!({
        "/openai": {"count": 1000, "error_count": 50, "last_request": an_hour_ago},
        "/claude": {"count": 234, "error_count": 6, "last_request": an_hour_ago - 60},
        "not-a-prefix": {"count": 1, "error_count": 0, "last_request": 0}
    });
    let timeline = json!([
        {"timestamp": an_hour_ago - 60, "endpoint": "/claude"},
        {"timestamp": an_hour_ago, "endpoint": "/openai"},
        {"timestamp": an_hour_ago, "endpoint": "/openai"},
        {"timestamp": "garbled", "endpoint": "/openai"}
    ]);
    let mut conn = redis.conn().await;
    let _: () = redis::pipe()
        .set("stats:request_count", "1234")
        .set("stats:error_count", "56")
        .set("stats:endpoints", endpoints.to_string())
        .set("stats:requests_timeline", timeline.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn stats_when(port: u16, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(15), || async {
        stats(port).await.filter(|s| ok(s))
    })
    .await
}

fn imports(audit: &Value) -> Vec<Value> {
    audit["entries"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|e| e["op"] == "import")
        .cloned()
        .collect()
}

fn logged(cp: &ControlPlane, text: &str) -> bool {
    cp.logs().iter().any(|l| l.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_stats_are_imported_once_and_traffic_adds_to_them() {
    let redis = RedisServer::start();
    let an_hour_ago = now_s() - 3600;
    load_go_keys(&redis, an_hour_ago).await;

    let cp = ControlPlane::start_for_nodes(&redis.url(), 0);
    let port = cp.addr.port();
    let s = stats_when(port, "the imported totals", |s| s["total"] == 1234).await;
    assert_eq!(s["errors"], 56, "{s}");
    let openai = &s["endpoints"]["/openai"];
    assert_eq!(
        (&openai["count"], &openai["error_count"]),
        (&json!(1000), &json!(50))
    );
    assert_eq!(
        openai["last_request"], an_hour_ago,
        "unix seconds, as Go had it"
    );
    assert_eq!(openai["last_request_ms"], an_hour_ago * 1000);
    assert_eq!(s["endpoints"]["/claude"]["count"], 234);
    assert!(s["endpoints"].get("not-a-prefix").is_none(), "{s}");
    assert_eq!(
        s["requests"],
        json!([
            {"timestamp": an_hour_ago - 60, "endpoint": "/claude"},
            {"timestamp": an_hour_ago, "endpoint": "/openai"},
            {"timestamp": an_hour_ago, "endpoint": "/openai"}
        ])
    );
    assert!(logged(&cp, "imported the Go version's stats"));
    assert!(
        logged(&cp, "not-a-prefix"),
        "the skipped endpoint is a warning"
    );
    assert!(logged(&cp, "1 of 4 entries unreadable"));
    let audit = cp.admin("GET", "/api/audit", None).await.json();
    let entries = imports(&audit);
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"], "go-stats-import");
    assert!(
        entries[0]["new_target"]
            .as_str()
            .unwrap()
            .contains("\"total\":1234"),
        "{audit}"
    );
    let mut conn = redis.conn().await;
    let marker: Option<String> = redis::cmd("GET")
        .arg(RedisKeys::default().stats_go_import)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(marker.unwrap().contains("\"endpoints\":2"));

    // A second start on the same Redis: not imported again.
    cp.kill();
    let cp = ControlPlane::start_for_nodes(&redis.url(), port);
    eventually(
        "the second start's import check",
        Duration::from_secs(15),
        || async { logged(&cp, "imported (or skipped) before").then_some(()) },
    )
    .await;
    let s = stats(port).await.unwrap();
    assert_eq!((&s["total"], &s["errors"]), (&json!(1234), &json!(56)));
    assert_eq!(s["endpoints"]["/openai"]["count"], 1000);
    assert_eq!(s["requests"].as_array().unwrap().len(), 3);
    assert!(!logged(&cp, "imported the Go version's stats"));
    assert_eq!(
        imports(&cp.admin("GET", "/api/audit", None).await.json()).len(),
        1
    );

    // Real traffic adds to the imported totals.
    // 20 ms per answer, so the mean duration is well above 1 ms.
    let up = upstream::http(handler(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Response::new(full("ok"))
    }))
    .await;
    let created = cp
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/openai", "target": up.url()})),
        )
        .await;
    assert_eq!(created.status, 201);
    let url = format!("http://127.0.0.1:{port}");
    let dp = DataPlane::start_pushing(&redis.url(), &url, "dp-go", &[]);
    dp.wait_status("/openai/v1/x", 200).await;
    for _ in 0..4 {
        assert_eq!(
            apiproxy_tests::client::get_reply(dp.addr, "/openai/v1/x")
                .await
                .status,
            200
        );
    }
    // wait_status's own 200 counts too: 5 requests in all.
    let s = stats_when(port, "the traffic on top of the import", |s| {
        s["total"] == 1239 && s["performance"]["goroutine_count"].as_u64() > Some(0)
    })
    .await;
    let openai = &s["endpoints"]["/openai"];
    assert_eq!(openai["count"], 1005, "{s}");
    assert_eq!(openai["error_count"], 50);
    let last = openai["last_request"].as_u64().unwrap();
    assert!(now_s().abs_diff(last) < 60, "seconds, about now: {last}");
    assert_eq!(openai["last_request_ms"].as_u64().unwrap() / 1000, last);
    assert_eq!(s["dropped_events"], 0);
    // Only the 5 timed requests count: the imported ones have no duration.
    let avg = s["avg_response"].as_str().unwrap();
    let ms: f64 = avg
        .strip_suffix("ms")
        .unwrap_or_else(|| panic!("a Go duration string in ms: {avg}"))
        .parse()
        .unwrap();
    assert!((20.0..1000.0).contains(&ms), "{avg}");
    let requests = s["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 8, "3 imported and 5 new: {s}");
    let newest = &requests[7];
    assert_eq!(newest["endpoint"], "/openai");
    assert!(now_s().abs_diff(newest["timestamp"].as_u64().unwrap()) < 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_stats_are_not_imported_into_totals_that_are_not_empty() {
    let redis = RedisServer::start();
    load_go_keys(&redis, now_s() - 3600).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(RedisKeys::default().stats_totals)
        .arg("total")
        .arg(7)
        .query_async(&mut conn)
        .await
        .unwrap();

    let cp = ControlPlane::start(&redis.url(), &[]);
    eventually("the skip", Duration::from_secs(15), || async {
        logged(&cp, "our totals are not empty").then_some(())
    })
    .await;
    let s = stats(cp.addr.port()).await.unwrap();
    assert_eq!(s["total"], 7);
    assert_eq!(s["endpoints"], json!({}));
    let marker: Option<String> = redis::cmd("GET")
        .arg(RedisKeys::default().stats_go_import)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(marker.unwrap().contains("skipped"));
    assert!(imports(&cp.admin("GET", "/api/audit", None).await.json()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_stats_of_unknown_shapes_are_skipped_with_warnings() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let _: () = redis::pipe()
        .set("stats:request_count", "lots")
        .rpush("stats:error_count", "3")
        .set("stats:endpoints", "{not json")
        .set("stats:requests_timeline", "{}")
        .query_async(&mut conn)
        .await
        .unwrap();

    let cp = ControlPlane::start(&redis.url(), &[]);
    eventually("the warnings", Duration::from_secs(15), || async {
        (logged(&cp, "stats:request_count: not a non-negative integer")
            && logged(&cp, "stats:error_count: a Redis list")
            && logged(&cp, "stats:endpoints: not JSON")
            && logged(&cp, "stats:requests_timeline: not a JSON array"))
        .then_some(())
    })
    .await;
    let s = stats(cp.addr.port()).await.unwrap();
    assert_eq!((&s["total"], &s["requests"]), (&json!(0), &json!([])));
    assert!(!logged(&cp, "imported the Go version's stats"));
}
