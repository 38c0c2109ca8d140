//! Mappings the Go version accepted and routed, against a real
//! `redis-server` holding its hash as the Go version leaves it, the real
//! data plane (Redis mode), the real control plane and a real upstream on
//! 127.0.0.1 that echoes the request line: a prefix with a trailing `/`, a
//! non-ASCII prefix (matched on the raw path as `/caf%C3%A9`), a target
//! with a query (sent before the client's), a target with a trailing `/`;
//! what is still refused is counted invalid, and refused by the API too.

use std::time::Duration;

use apiproxy_shared::{content_hash, RedisKeys};
use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::ControlPlane;
use apiproxy_tests::redis::{hset_plain, RedisServer};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The upstream's view of a request through the proxy: status, and the
/// path and query the upstream received.
async fn upstream_uri(dp: &DataPlane, path: &str) -> (u16, String) {
    let reply = get_reply(dp.addr, path).await;
    let status = reply.status.as_u16();
    if status != 200 {
        return (status, reply.text());
    }
    (status, reply.json()["uri"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_era_entries_route_as_specified() {
    let redis = RedisServer::start();
    let up = upstream::http(echo_handler()).await;
    let u = up.url();
    let routed = [
        ("/trail/", format!("{u}/t")),
        ("/café", format!("{u}/c")),
        ("/gem", format!("{u}/q?key=K")),
        ("/slash", format!("{u}/s/")),
    ];
    let refused = [
        ("/a?b", format!("{u}/never")),
        ("/ftp", "ftp://127.0.0.1/x".to_owned()),
    ];
    let mut conn = redis.conn().await;
    let keys = RedisKeys::default();
    for (prefix, target) in routed.iter().chain(&refused) {
        hset_plain(&mut conn, &keys, prefix, target).await;
    }
    let cp = ControlPlane::start_for_nodes(&redis.url(), 0);
    let dp = DataPlane::start_pushing(&redis.url(), &format!("http://{}", cp.addr), "go-1", &[]);
    dp.wait_status("/slash", 200).await;

    for (path, status, uri) in [
        ("/trail/x?a=1", 200, "/t/x?a=1"),
        ("/trail/", 200, "/t/"),
        ("/trail", 200, "/t"),
        ("/caf%C3%A9/x?a=1", 200, "/c/x?a=1"),
        ("/caf%C3%A9", 200, "/c"),
        ("/gem/v1/models?a=1", 200, "/q/v1/models?key=K&a=1"),
        ("/gem/v1/models", 200, "/q/v1/models?key=K"),
        ("/gem", 200, "/q?key=K"),
        ("/slash/x?a=1", 200, "/s/x?a=1"),
        ("/slash", 200, "/s"),
    ] {
        assert_eq!(
            upstream_uri(&dp, path).await,
            (status, uri.to_owned()),
            "{path}"
        );
    }
    // Another spelling of the path is another path (the raw-path rule).
    for path in ["/caf%c3%a9/x", "/trailer", "/a", "/ftp/x"] {
        assert_eq!(get_reply(dp.addr, path).await.status, 404, "{path}");
    }
    // Raw UTF-8 bytes on the request line are not the percent-encoded
    // spelling either.
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all("GET /café/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert_eq!(
        dp.metric("apiproxy_config_invalid_entries").await,
        refused.len() as f64
    );
    // The console's list marks exactly the entries the node skips.
    let list = cp.admin("GET", "/api/mappings", None).await.json();
    let marked: Vec<&String> = list["invalid"].as_object().unwrap().keys().collect();
    assert_eq!(marked, ["/a?b", "/ftp"], "{list}");

    // The node reports the hash of the routed entries as the hash holds
    // them, which the console can compute from the hash.
    let expected = content_hash(routed.iter().map(|(p, t)| (*p, t.as_str())));
    let reported = eventually("the node reports", Duration::from_secs(5), || async {
        let nodes = cp.admin("GET", "/api/nodes", None).await.json();
        let node = nodes["nodes"].as_array()?.first()?.clone();
        Some(node["config_hash"].as_str()?.to_owned())
    })
    .await;
    assert_eq!(reported, expected);

    // Stats under the one spelling.
    let stats = eventually("stats for /caf%C3%A9", Duration::from_secs(5), || async {
        let stats = get_reply(cp.addr, "/stats").await.json();
        let count = stats["endpoints"]["/caf%C3%A9"]["count"].as_u64()?;
        (count >= 2).then_some(stats)
    })
    .await;
    assert!(stats["endpoints"].get("/café").is_none(), "{stats}");
    assert!(stats["endpoints"]["/trail"]["count"].as_u64() >= Some(3));

    // A target's query is never logged.
    for line in dp.logs().iter().chain(&cp.logs()) {
        assert!(!line.contains("key=K"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_stores_one_spelling_and_refuses_what_does_not_route() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let dp = DataPlane::start_redis(&redis.url(), &[]);
    let up = upstream::http(echo_handler()).await;
    let u = up.url();
    for (prefix, target, stored, stored_target) in [
        ("/trail/", format!("{u}/t/"), "/trail", format!("{u}/t")),
        ("/café", format!("{u}/c"), "/caf%C3%A9", format!("{u}/c")),
        (
            "/gem/",
            format!("{u}/q/?key=K"),
            "/gem",
            format!("{u}/q?key=K"),
        ),
    ] {
        let reply = cp.create(prefix, &target).await;
        assert_eq!(reply.status, 201, "{prefix}: {}", reply.text());
        assert_eq!(
            reply.json()["mapping"],
            json!({"prefix": stored, "target": stored_target})
        );
    }
    for second in ["/trail", "/caf%C3%A9", "/café/", "/gem"] {
        let reply = cp.create(second, &u).await;
        assert_eq!(reply.status, 409, "{second}: {}", reply.text());
    }
    for (prefix, target) in [
        ("/a?b", u.clone()),
        ("/a//", u.clone()),
        ("/caf%c3%a9", u.clone()),
        ("/ftp", "ftp://127.0.0.1/x".to_owned()),
        ("/frag", format!("{u}/q?key=K#f")),
    ] {
        let reply = cp.create(prefix, &target).await;
        assert_eq!(reply.status, 400, "{prefix} {target}: {}", reply.text());
    }

    // The public list (no credentials) never shows a target's query.
    let public = get_reply(cp.addr, "/api/public/mappings").await;
    assert_eq!(public.status, 200);
    assert_eq!(
        public.json()["mappings"],
        json!({"/trail": format!("{u}/t"), "/caf%C3%A9": format!("{u}/c"),
               "/gem": format!("{u}/q?…")})
    );

    // What the API stored routes, with nothing counted invalid.
    dp.wait_status("/gem/x", 200).await;
    for (path, uri) in [
        ("/trail/x", "/t/x"),
        ("/caf%C3%A9/x", "/c/x"),
        ("/gem/x?a=1", "/q/x?key=K&a=1"),
    ] {
        assert_eq!(
            upstream_uri(&dp, path).await,
            (200, uri.to_owned()),
            "{path}"
        );
    }
    assert_eq!(dp.metric("apiproxy_config_invalid_entries").await, 0.0);
    for line in dp.logs().iter().chain(&cp.logs()) {
        assert!(!line.contains("key=K"), "{line}");
    }
}
