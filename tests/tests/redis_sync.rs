//! Redis mode against real `redis-server` processes: nodes follow changes,
//! survive Redis crashes and cut links on their last snapshot, catch up,
//! boot from the snapshot cache, and read the Go version's data.

use std::time::{Duration, Instant};

use apiproxy_shared::RedisKeys;
use apiproxy_tests::client::get_reply;
use apiproxy_tests::redis::{
    delete, hdel_plain, hset_plain, publish, upsert, ChaosProxy, RedisServer,
};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{DataPlane, TempDir};

const FAST_RESYNC: (&str, &str) = ("API_PROXY_RESYNC_INTERVAL", "300ms");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_follow_adds_changes_and_deletes() {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let a = upstream::http(echo_handler()).await;
    let b = upstream::http(echo_handler()).await;
    upsert(&mut conn, &keys, "/a", &a.url()).await;
    let nodes = [
        DataPlane::start_redis(&redis.url(), &[]),
        DataPlane::start_redis(&redis.url(), &[]),
    ];
    for node in &nodes {
        node.wait_status("/a/x", 200).await;
        assert_eq!(node.readyz().await, 200);
        assert_eq!(node.metric("apiproxy_config_version").await, 1.0);
        assert_eq!(node.metric("apiproxy_config_stale").await, 0.0);
    }

    // Add.
    let start = Instant::now();
    upsert(&mut conn, &keys, "/b", &b.url()).await;
    for node in &nodes {
        node.wait_status("/b/x", 200).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "propagation took {:?}",
        start.elapsed()
    );
    // Change: /a now goes to b.
    upsert(&mut conn, &keys, "/a", &format!("{}/moved", b.url())).await;
    for node in &nodes {
        apiproxy_tests::eventually("/a moved", Duration::from_secs(2), || async {
            (get_reply(node.addr, "/a/x").await.json()["uri"] == "/moved/x").then_some(())
        })
        .await;
    }
    // Delete.
    let version = delete(&mut conn, &keys, "/b").await;
    for node in &nodes {
        node.wait_status("/b/x", 404).await;
        assert_eq!(node.metric("apiproxy_config_version").await, version as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_then_later_changes_still_arrive() {
    let mut redis = RedisServer::start();
    let keys = RedisKeys::default();
    let up = upstream::http(echo_handler()).await;
    upsert(&mut redis.conn().await, &keys, "/a", &up.url()).await;
    // With a cache configured: losing Redis later must not roll the node
    // back to the cached snapshot.
    let dir = TempDir::new("cache");
    let cache = dir.path("snapshot.json");
    let node = DataPlane::start_redis(
        &redis.url(),
        &[("API_PROXY_SNAPSHOT_CACHE", cache.to_str().unwrap())],
    );
    node.wait_status("/a/x", 200).await;
    // Applied from a one-field read: the cache lags until the next resync.
    upsert(&mut redis.conn().await, &keys, "/late", &up.url()).await;
    node.wait_status("/late/x", 200).await;

    redis.kill();
    node.wait_metric("apiproxy_config_stale", 1.0).await;
    // Traffic never waits on Redis: the last snapshot keeps serving.
    for _ in 0..20 {
        assert_eq!(get_reply(node.addr, "/a/x").await.status, 200);
    }
    assert_eq!(node.readyz().await, 200);
    assert_eq!(
        get_reply(node.addr, "/late/x").await.status,
        200,
        "no rollback to the cache"
    );

    redis.restart(); // empty: the node must apply what the new Redis holds
    let mut conn = redis.conn().await;
    upsert(&mut conn, &keys, "/b", &up.url()).await;
    node.wait_status("/b/x", 200).await;
    node.wait_status("/a/x", 404).await;
    node.wait_metric("apiproxy_config_stale", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_keeps_the_snapshot_and_catches_up_when_restored() {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let up = upstream::http(echo_handler()).await;
    upsert(&mut conn, &keys, "/a", &up.url()).await;
    let chaos = ChaosProxy::start(redis.addr()).await;
    // Each failed reconnect is logged at debug level.
    const RETRY_FAILED: &str = "Redis still unreachable";
    let node = DataPlane::start_redis(
        &chaos.url(),
        &[
            FAST_RESYNC,
            ("RUST_LOG", "info,apiproxy_dataplane::redis_source=debug"),
        ],
    );
    node.wait_status("/a/x", 200).await;

    chaos.cut();
    node.wait_metric("apiproxy_config_stale", 1.0).await;
    // Changes while the node cannot hear them.
    upsert(&mut conn, &keys, "/b", &up.url()).await;
    delete(&mut conn, &keys, "/a").await;
    // The node has tried to reach Redis since, and failed: twice, so that
    // the second attempt surely began after the changes were made.
    let failed = |node: &DataPlane| {
        node.logs()
            .iter()
            .filter(|l| l.contains(RETRY_FAILED))
            .count()
    };
    let before = failed(&node);
    apiproxy_tests::eventually("two failed reconnects", Duration::from_secs(20), || async {
        (failed(&node) >= before + 2).then_some(())
    })
    .await;
    assert_eq!(
        get_reply(node.addr, "/a/x").await.status,
        200,
        "still the last snapshot"
    );
    assert_eq!(get_reply(node.addr, "/b/x").await.status, 404);

    chaos.restore();
    node.wait_status("/b/x", 200).await;
    node.wait_status("/a/x", 404).await;
    node.wait_metric("apiproxy_config_stale", 0.0).await;
    assert_eq!(node.metric("apiproxy_config_version").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_with_redis_down_serves_a_valid_cache_and_refuses_a_corrupt_one() {
    let mut redis = RedisServer::start();
    let keys = RedisKeys::default();
    let up = upstream::http(echo_handler()).await;
    upsert(&mut redis.conn().await, &keys, "/cached", &up.url()).await;
    let dir = TempDir::new("cache");
    let cache = dir.path("snapshot.json");
    let cache_env = ("API_PROXY_SNAPSHOT_CACHE", cache.to_str().unwrap());

    // A first node writes the cache.
    let node = DataPlane::start_redis(&redis.url(), &[cache_env]);
    node.wait_status("/cached/x", 200).await;
    // The cache is written right after the snapshot is applied.
    apiproxy_tests::eventually("cache written", Duration::from_secs(3), || async {
        cache.exists().then_some(())
    })
    .await;
    drop(node);

    // Redis down: a new node boots from the cache, ready but stale.
    redis.kill();
    let node = DataPlane::start_redis(&redis.url(), &[cache_env, FAST_RESYNC]);
    node.wait_status("/cached/x", 200).await;
    assert_eq!(node.readyz().await, 200);
    assert_eq!(node.metric("apiproxy_config_stale").await, 1.0);
    assert_eq!(node.metric("apiproxy_config_version").await, 1.0);
    drop(node);

    // A corrupt cache is refused: not ready, and says why.
    let text = std::fs::read_to_string(&cache).unwrap();
    std::fs::write(&cache, text.replace("127.0.0.1", "10.9.9.9")).unwrap();
    let node = DataPlane::start_redis(&redis.url(), &[cache_env, FAST_RESYNC]);
    apiproxy_tests::eventually("corrupt cache logged", Duration::from_secs(10), || async {
        node.logs()
            .iter()
            .any(|l| l.contains("corrupt"))
            .then_some(())
    })
    .await;
    assert_eq!(node.readyz().await, 503);
    assert_eq!(get_reply(node.addr, "/cached/x").await.status, 503);

    // Redis returns: ready, and the cache is rewritten from it.
    redis.restart();
    upsert(&mut redis.conn().await, &keys, "/fresh", &up.url()).await;
    node.wait_status("/fresh/x", 200).await;
    assert_eq!(node.readyz().await, 200);
    // Incremental changes reach the cache within a resync interval.
    apiproxy_tests::eventually("cache rewritten", Duration::from_secs(3), || async {
        std::fs::read_to_string(&cache)
            .unwrap_or_default()
            .contains("/fresh")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_the_go_way_and_direct_edits_are_picked_up() {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let up = upstream::http(echo_handler()).await;
    // The Go version: a plain hash, no version key, "mapping_added" announcements.
    hset_plain(&mut conn, &keys, "/go", &up.url()).await;
    // No control plane watches here: the node's own full re-read finds
    // direct edits.
    let node = DataPlane::start_redis(
        &redis.url(),
        &[FAST_RESYNC, ("API_PROXY_FULL_RESYNC_INTERVAL", "300ms")],
    );
    node.wait_status("/go/x", 200).await;
    assert_eq!(node.metric("apiproxy_config_version").await, 0.0);

    hset_plain(&mut conn, &keys, "/added", &up.url()).await;
    publish(&mut conn, &keys, "mapping_added").await;
    node.wait_status("/added/x", 200).await;

    // An edit straight in Redis, no version bump, no announcement: the
    // periodic full re-read finds it.
    hdel_plain(&mut conn, &keys, "/go").await;
    node.wait_status("/go/x", 404).await;

    // Invalid entries are skipped and counted; the rest applies.
    hset_plain(&mut conn, &keys, "no-slash", "http://x").await;
    hset_plain(&mut conn, &keys, "/ftp", "ftp://x").await;
    node.wait_metric("apiproxy_config_invalid_entries", 2.0)
        .await;
    assert_eq!(get_reply(node.addr, "/added/x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mappings() {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let up = upstream::http(echo_handler()).await;
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.hset(
            &keys.mappings,
            format!("/svc{i}/v1"),
            format!("{}/n{i}", up.url()),
        )
        .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    let start = Instant::now();
    let node = DataPlane::start_redis(&redis.url(), &[]);
    node.wait_status("/svc9999/v1/x", 200).await;
    let loaded = start.elapsed();
    assert_eq!(
        get_reply(node.addr, "/svc4242/v1/models").await.json()["uri"],
        "/n4242/models"
    );
    assert_eq!(get_reply(node.addr, "/svc4242/v2").await.status, 404);
    // A change among 10,000 still propagates quickly.
    let t = Instant::now();
    upsert(
        &mut conn,
        &keys,
        "/svc0/v1",
        &format!("{}/changed", up.url()),
    )
    .await;
    apiproxy_tests::eventually("change applied", Duration::from_secs(3), || async {
        (get_reply(node.addr, "/svc0/v1/x").await.json()["uri"] == "/changed/x").then_some(())
    })
    .await;
    eprintln!(
        "10,000 mappings: first load and route {loaded:?}; one change applied in {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_are_honoured() {
    let keys = RedisKeys::default();
    let up = upstream::http(echo_handler()).await;
    // The Go version's style: one password for the default user.
    let with_password = RedisServer::start_with(&["--requirepass", "s3cret-default"], false);
    // An ACL user with its own password.
    let with_user = RedisServer::start_with(
        &["--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"],
        false,
    );
    let urls = [
        format!("redis://:s3cret-default@127.0.0.1:{}/", with_password.port),
        format!("redis://alice:alice-pw@127.0.0.1:{}/", with_user.port),
    ];
    let mut nodes = Vec::new();
    for (server, url) in [(&with_password, &urls[0]), (&with_user, &urls[1])] {
        upsert(&mut server.conn_to(url).await, &keys, "/auth", &up.url()).await;
        let node = DataPlane::start_redis(url, &[]);
        node.wait_status("/auth/x", 200).await;
        nodes.push(node);
    }

    // A wrong password: never ready, and no password is ever logged.
    let wrong = DataPlane::start_redis(
        &format!("redis://alice:wrong-pw@127.0.0.1:{}/", with_user.port),
        &[],
    );
    apiproxy_tests::eventually("auth failure logged", Duration::from_secs(5), || async {
        wrong
            .logs()
            .iter()
            .any(|l| l.contains("Redis unreachable"))
            .then_some(())
    })
    .await;
    assert_eq!(wrong.readyz().await, 503);
    nodes.push(wrong);
    for node in &nodes {
        assert!(
            !node
                .logs()
                .iter()
                .any(|l| l.contains("-pw") || l.contains("s3cret")),
            "a password reached the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let ca = apiproxy_tests::tls::TestCa::new();
    let redis = RedisServer::start_tls(&ca);
    let keys = RedisKeys::default();
    let up = upstream::http(echo_handler()).await;
    upsert(&mut redis.conn().await, &keys, "/tls", &up.url()).await;
    let ca_file = redis.ca_file().unwrap();
    let node = DataPlane::start_redis(
        &redis.url(),
        &[("API_PROXY_CA_FILE", ca_file.to_str().unwrap())],
    );
    node.wait_status("/tls/x", 200).await;
    // Changes follow over TLS too.
    upsert(&mut redis.conn().await, &keys, "/tls2", &up.url()).await;
    node.wait_status("/tls2/x", 200).await;
}

/// README, Redis mode: the control plane compares the hashes every
/// `API_PROXY_RESYNC_INTERVAL` and announces an edit made straight in
/// Redis (no version bump, no announcement) with a bumped version and a
/// `replace`: nodes whose own full re-read is minutes away route it at
/// once, and a change made through the API is not announced twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_announces_direct_edits_for_the_fleet() {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let up = upstream::http(echo_handler()).await;
    let version = upsert(&mut conn, &keys, "/a", &up.url()).await;
    let cp = apiproxy_tests::controlplane::ControlPlane::start(
        &redis.url(),
        &[("API_PROXY_RESYNC_INTERVAL", "200ms")],
    );
    let node = DataPlane::start_redis(
        &redis.url(),
        &[
            ("API_PROXY_RESYNC_INTERVAL", "10m"),
            ("API_PROXY_FULL_RESYNC_INTERVAL", "10m"),
        ],
    );
    node.wait_status("/a/x", 200).await;

    // A change through the API bumps the version itself: the watcher has
    // nothing to add.
    assert_eq!(cp.create("/api", &up.url()).await.status, 201);
    node.wait_status("/api/x", 200).await;
    let announced = |cp: &apiproxy_tests::controlplane::ControlPlane| {
        cp.logs()
            .iter()
            .filter(|l| l.contains("without a version bump"))
            .count()
    };
    // Two watcher intervals at least, to see it stay quiet.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(announced(&cp), 0, "an API change was announced again");
    assert_eq!(
        node.metric("apiproxy_config_version").await,
        (version + 1) as f64
    );

    // Straight into the hash: routed once the control plane has seen it.
    hset_plain(&mut conn, &keys, "/direct", &up.url()).await;
    node.wait_status("/direct/x", 200).await;
    hdel_plain(&mut conn, &keys, "/a").await;
    node.wait_status("/a/x", 404).await;
    assert_eq!(announced(&cp), 2);
    assert_eq!(
        node.metric("apiproxy_config_version").await,
        (version + 3) as f64
    );
}
