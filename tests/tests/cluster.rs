//! The real control plane and real data planes over one real Redis: what
//! an operator does in the console reaches the traffic.

use std::process::Command;
use std::time::{Duration, Instant};

use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::dataplane::binary;
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::DataPlane;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_made_in_the_api_is_routed_by_its_announcement() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    // No resync during the test: only the announcements can carry the
    // changes, and each gets 3 s on a loaded machine.
    let nodes = [
        DataPlane::start_redis_without_resync(&redis.url()),
        DataPlane::start_redis_without_resync(&redis.url()),
    ];
    let a = upstream::http(echo_handler()).await;
    let b = upstream::http(echo_handler()).await;

    let start = Instant::now();
    let reply = cp
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/svc", "target": a.url()})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    for node in &nodes {
        node.wait_status("/svc/x", 200).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );

    let reply = cp
        .admin(
            "PUT",
            "/api/mappings/svc",
            Some(json!({"target": format!("{}/v2", b.url())})),
        )
        .await;
    assert_eq!(reply.status, 200);
    for node in &nodes {
        apiproxy_tests::eventually("update routed", Duration::from_secs(3), || async {
            (get_reply(node.addr, "/svc/x").await.json()["uri"] == "/v2/x").then_some(())
        })
        .await;
    }

    assert_eq!(
        cp.admin("DELETE", "/api/mappings/svc", None).await.status,
        200
    );
    for node in &nodes {
        node.wait_status("/svc/x", 404).await;
        assert_eq!(node.metric("apiproxy_config_version").await, 3.0);
    }
    // The token never reaches the logs.
    assert!(!cp.logs().iter().any(|l| l.contains(ADMIN_TOKEN)));
    assert!(cp.logs().iter().any(|l| l.contains("mapping created")));

    // SIGTERM: a clean stop.
    let mut cp = cp;
    cp.signal("TERM");
    assert_eq!(cp.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

fn run_controlplane(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(binary("apiproxy-controlplane"));
    cmd.env_clear().args(args).current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_the_defaults_only_into_an_empty_hash() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (code, _) = run_controlplane(&["init"], &[("API_PROXY_REDIS_URL", &url)]);
    assert_eq!(code, 0);
    let mut conn = redis.conn().await;
    let keys = apiproxy_shared::RedisKeys::default();
    let len: u64 = redis::cmd("HLEN")
        .arg(&keys.mappings)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 15);
    let version: u64 = redis::cmd("GET")
        .arg(&keys.version)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 1);
    // Second run: the hash holds something, nothing is written.
    let (code, logs) = run_controlplane(&["init"], &[("API_PROXY_REDIS_URL", &url)]);
    assert_eq!(code, 0);
    assert!(logs.contains("nothing written"), "{logs}");
    let version: u64 = redis::cmd("GET")
        .arg(&keys.version)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 1);
}

#[test]
fn controlplane_configuration_errors_exit_64() {
    let url = ("API_PROXY_REDIS_URL", "redis://127.0.0.1:1/");
    for (env, needle) in [
        (vec![url], "ADMIN_TOKEN"),
        (vec![url, ("ADMIN_TOKEN", "short")], "ADMIN_TOKEN"),
        (
            vec![url, ("ADMIN_TOKEN", "change-me-to-a-long-random-secret")],
            "placeholder",
        ),
        (vec![("ADMIN_TOKEN", ADMIN_TOKEN)], "API_PROXY_REDIS_URL"),
        (
            vec![
                url,
                ("ADMIN_TOKEN", ADMIN_TOKEN),
                ("API_PROXY_NODE_TIMEOUT", "soon"),
            ],
            "--node-timeout",
        ),
    ] {
        let (code, err) = run_controlplane(&[], &env);
        assert_eq!(code, 64, "{env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{env:?}: {err}");
    }
    assert_eq!(run_controlplane(&["--help"], &[]).0, 0);
}
