//! Proxy-key revocation reaching the fleet (issue 23), against the release
//! binaries: a keyed mapping with an upstream credential on two data
//! planes, then 100 times `PATCH /api/keys/{id}` `{"enabled": false}` until
//! both nodes answer 403 to the key, and `{"enabled": true}` until both
//! answer 200 again.
//!
//! ```sh
//! cargo build --release -p apiproxy-dataplane -p apiproxy-controlplane
//! cargo run --release -p apiproxy-tests --example keys_bench
//! ```

use std::time::{Duration, Instant};

use apiproxy_shared::access::SecretsKey;
use apiproxy_tests::client::call;
use apiproxy_tests::controlplane::ControlPlane;
use apiproxy_tests::dataplane::wait_all_answer;
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::DataPlane;
use bytes::Bytes;
use http_body_util::Full;

const CHANGES: usize = 100;
const PATH: &str = "/keyed/v1/models";
const CREDENTIAL: &str = "sk-bench-real-credential";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let redis = RedisServer::start();
    let secrets_key = SecretsKey::generate();
    let secrets = [("API_PROXY_SECRETS_KEY", secrets_key.as_str())];
    let cp = ControlPlane::start(&redis.url(), &secrets);
    let up = upstream::http(echo_handler()).await;

    // The policy first, as the console makes it: the mapping never routes openly.
    let policy = serde_json::json!({"access": "key", "upstream_credential": {
        "header": "Authorization", "template": "Bearer {secret}", "secret": CREDENTIAL}});
    let reply = cp.admin("PUT", "/api/policies/keyed", Some(policy)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(cp.create("/keyed", &up.url()).await.status, 201);
    let reply = cp
        .admin(
            "POST",
            "/api/keys",
            Some(serde_json::json!({"name": "bench"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let created = reply.json();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {}", created["secret"].as_str().unwrap());
    let with_key = [("authorization", bearer.as_str())];

    let env = [("API_PROXY_WORKERS", "1"), secrets[0]];
    let nodes = [
        DataPlane::start_redis(&redis.url(), &env),
        DataPlane::start_redis(&redis.url(), &env),
    ];
    wait_all_answer(&nodes, PATH, &with_key, 200).await;
    wait_all_answer(&nodes, PATH, &[], 401).await;
    // What the upstream gets: the real credential, never the proxy key.
    for node in &nodes {
        let req = http::Request::get(PATH)
            .header("host", "proxy.test")
            .header("authorization", &bearer)
            .body(Full::<Bytes>::default())
            .unwrap();
        let seen = call(node.addr, req).await.json();
        assert_eq!(
            seen["headers"]["authorization"],
            serde_json::json!([format!("Bearer {CREDENTIAL}")]),
            "{seen}"
        );
    }

    let path = format!("/api/keys/{id}");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..CHANGES {
        for (enabled, status, times) in [(false, 403, &mut off), (true, 200, &mut on)] {
            let t = Instant::now();
            let body = serde_json::json!({ "enabled": enabled });
            let reply = cp.admin("PATCH", &path, Some(body)).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            wait_all_answer(&nodes, PATH, &with_key, status).await;
            times.push(t.elapsed());
        }
    }
    for (what, times) in [("disabled -> 403", &mut off), ("enabled -> 200", &mut on)] {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "key {what} on both nodes, {CHANGES} changes through the API: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(times[CHANGES / 2 - 1]),
            ms(times[CHANGES * 99 / 100 - 1]),
            ms(times[CHANGES - 1])
        );
    }
}
