//! README claims that no other test proves, each against the real
//! binaries: the one retry of a refused or reset connect, the HTTP/2
//! listener's header-list limit, and
//! Redis announcements read once per burst and resyncs that apply only a
//! change. (No total-duration limit: `tests/streaming.rs`.) The minute-long
//! waits (idle ping, login lockout) are in `tests/claims_slow.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::RedisKeys;
use apiproxy_tests::client::get_reply;
use apiproxy_tests::redis::{delete, hset_plain, publish, upsert, upsert_unannounced, RedisServer};
use apiproxy_tests::tls::{trusting_dataplane, TestCa};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, one_mapping, DataPlane};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// README, Failures: "A refused or reset connect is retried once". A port
/// bound but not listening refuses every connect: each request is retried
/// exactly once (the data plane's debug line before the retry, naming the
/// target), then fails with `upstream_connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_once() {
    let refusing = || {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        socket
    };
    let (closed, barrier) = (refusing(), refusing());
    let retries_to = |dp: &DataPlane, socket: &tokio::net::TcpSocket| {
        let target = format!("127.0.0.1:{}", socket.local_addr().unwrap().port());
        dp.logs()
            .iter()
            .filter(|l| {
                l.contains("connect refused or reset; retrying once") && l.contains(&target)
            })
            .count()
    };
    let dp = DataPlane::start(
        &serde_json::json!({
            "/closed": format!("http://{}", closed.local_addr().unwrap()),
            "/barrier": format!("http://{}", barrier.local_addr().unwrap()),
        })
        .to_string(),
        &[("RUST_LOG", "info,apiproxy_dataplane::connect=debug")],
    );
    for path in ["/closed/x", "/closed/y", "/barrier/x"] {
        let reply = get_reply(dp.addr, path).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
        assert_eq!(reply.headers["x-apiproxy-error"], "upstream_connect");
    }
    // The log is read by another thread, in order: once the last
    // request's line is in, so are all of the first two's.
    eventually(
        "the last request's retry logged",
        Duration::from_secs(5),
        || async { (retries_to(&dp, &barrier) > 0).then_some(()) },
    )
    .await;
    assert_eq!(
        retries_to(&dp, &closed),
        2,
        "one retry per request: {:?}",
        dp.logs()
    );
    assert_eq!(retries_to(&dp, &barrier), 1);
}

/// The same claim for a reset: an HTTPS upstream resets its first
/// connection during the TLS handshake (part of the connect) and answers
/// the second; the client should get 200 and the upstream see exactly two
/// connections, and an upstream that resets every connect exactly two
/// per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_reset_once_is_retried_once() {
    let ca = TestCa::new();
    let acceptor = ca.acceptor_offering(&[b"http/1.1"]);
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream::raw(move |tcp| {
        let (acceptor, first) = (acceptor.clone(), seen.fetch_add(1, Ordering::SeqCst) == 0);
        async move {
            if first {
                let _ = tcp.set_zero_linger();
                drop(tcp); // RST before the server's TLS hello
                return;
            }
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            let _ = tls.flush().await;
            // Held open until the proxy lets go, so a third connection
            // could only come from a third attempt.
            let _ = tls.read(&mut buf).await;
        }
    })
    .await;
    let target = format!("https://localhost:{}", up.addr.port());
    let (dp, _ca) = trusting_dataplane(&ca, &one_mapping("/tls", &target), &[]);

    let reply = get_reply(dp.addr, "/tls/x").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "ok");
    assert_eq!(up.counters.accepted(), 2, "one reset connect, one retry");

    // Once only: an upstream that resets every connect fails the request
    // after the second attempt, with the connect error.
    let always = upstream::raw(|tcp| async move {
        let _ = tcp.set_zero_linger();
    })
    .await;
    let target = format!("https://localhost:{}", always.addr.port());
    let (dp, _ca) = trusting_dataplane(&ca, &one_mapping("/tls", &target), &[]);
    let reply = get_reply(dp.addr, "/tls/x").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(always.counters.accepted(), 2, "exactly one retry");
}

/// An h2c request to the proxy carrying `header_bytes` of header values
/// in four fields; its status, or the stream error.
async fn h2c_with_headers(dp: &DataPlane, header_bytes: usize) -> Result<u16, h2::Error> {
    let tcp = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = Request::get(format!("http://{}/up/x", dp.addr));
    for i in 0..4 {
        request = request.header(format!("x-big-{i}"), "a".repeat(header_bytes / 4));
    }
    let (response, _) = client.send_request(request.body(()).unwrap(), true)?;
    Ok(response.await?.status().as_u16())
}

/// README, Slow and hostile clients: "HTTP/2 clients get ... a 64 KiB
/// header list". Just under it passes (hyper's own default is 16 KiB, so
/// this needs the configured limit), just over it gets 431 or the stream
/// refused, never the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_lists_up_to_64_kib_pass_and_larger_ones_are_refused() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&one_mapping("/up", &up.url()), &[]);

    let under = h2c_with_headers(&dp, 63 * 1024).await;
    assert_eq!(under.ok(), Some(200), "a 63 KiB header list passes");
    assert_eq!(up.counters.accepted(), 1);

    match h2c_with_headers(&dp, 66 * 1024).await {
        Ok(status) => assert_eq!(status, 431, "a 66 KiB header list is refused"),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
    }
    assert_eq!(
        dp.metric(r#"apiproxy_requests_total{prefix="/up",status_class="2xx"}"#)
            .await,
        1.0,
        "the oversized request never reached the upstream"
    );
}

/// Full reads a node has made: each is one transaction of three `HGETALL`s
/// (mappings, proxy keys, policies).
async fn full_reads(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let calls = redis_calls(conn, "hgetall").await;
    assert_eq!(
        calls % 3,
        0,
        "{calls} HGETALLs is not a whole number of full reads"
    );
    calls / 3
}

/// Calls of `command` Redis has executed, from `INFO commandstats`.
async fn redis_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let field = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&field))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A Redis holding `/a` (routed to an echo upstream) and a node following
/// it that checks the version every `resync` and reads everything every
/// `full_resync`, once the node routes `/a`.
async fn redis_node(
    resync: &str,
    full_resync: &str,
) -> (
    RedisServer,
    redis::aio::MultiplexedConnection,
    RedisKeys,
    upstream::Upstream,
    DataPlane,
) {
    let redis = RedisServer::start();
    let keys = RedisKeys::default();
    let mut conn = redis.conn().await;
    let up = upstream::http(echo_handler()).await;
    upsert(&mut conn, &keys, "/a", &up.url()).await;
    let dp = DataPlane::start_redis(
        &redis.url(),
        &[
            ("API_PROXY_RESYNC_INTERVAL", resync),
            ("API_PROXY_FULL_RESYNC_INTERVAL", full_resync),
        ],
    );
    dp.wait_status("/a/x", 200).await;
    (redis, conn, keys, up, dp)
}

/// README, Redis mode: the node "re-reads on each announcement (bursts
/// coalesced into one read ...)". Twenty announcements published in one
/// transaction cost the node one read of the hash (`HGETALL`, counted by
/// Redis itself), two at most, not twenty; a later single announcement is
/// then followed with a one-field read, and shows the burst was all
/// handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_announcements_is_one_read() {
    const BURST: usize = 20;
    let (_redis, mut conn, keys, up, dp) = redis_node("10m", "10m").await;
    let before = full_reads(&mut conn).await;

    let mut burst = redis::pipe();
    burst.atomic();
    for i in 0..BURST {
        burst
            .hset(&keys.mappings, format!("/b{i}"), up.url())
            .ignore();
    }
    burst.incr(&keys.version, 1).ignore();
    for _ in 0..BURST {
        // The Go version's payload: "re-read everything".
        burst
            .cmd("PUBLISH")
            .arg(&keys.updates)
            .arg("mapping_added")
            .ignore();
    }
    let () = burst.query_async(&mut conn).await.unwrap();
    // Announcements are handled in order: once this one is applied, the
    // burst before it was too.
    upsert(&mut conn, &keys, "/sentinel", &up.url()).await;
    dp.wait_status("/sentinel/x", 200).await;

    for i in 0..BURST {
        assert_eq!(get_reply(dp.addr, &format!("/b{i}/x")).await.status, 200);
    }
    // The node reads once for all the announcements queued when it looks;
    // its Redis client decodes them on another task, so the first may be
    // taken before the others are queued: one read, or two.
    let reads = full_reads(&mut conn).await - before;
    assert!(
        (1..=2).contains(&reads),
        "{BURST} announcements in one burst: {reads} full reads"
    );
}

/// README, Redis mode: changes announced faster than the node reads them,
/// each the version after the one before, are followed one by one: five
/// in one transaction cost five one-field reads (`HGET`) and no read of
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_changes_in_a_burst_are_followed_one_by_one() {
    let (_redis, mut conn, keys, up, dp) = redis_node("10m", "10m").await;
    let (reads, hgets) = (
        full_reads(&mut conn).await,
        redis_calls(&mut conn, "hget").await,
    );
    let mut burst = redis::pipe();
    burst.atomic();
    for i in 0..5u64 {
        let prefix = format!("/c{i}");
        burst.hset(&keys.mappings, &prefix, up.url()).ignore();
        burst.incr(&keys.version, 1).ignore();
        // Version 1 holds `/a`: these are 2 to 6.
        let message = apiproxy_shared::UpdateMessage::mapping(
            2 + i,
            apiproxy_shared::UpdateOp::Upsert,
            Some(&prefix),
        );
        burst
            .cmd("PUBLISH")
            .arg(&keys.updates)
            .arg(message.to_json())
            .ignore();
    }
    let () = burst.query_async(&mut conn).await.unwrap();
    dp.wait_status("/c4/x", 200).await;
    for i in 0..4 {
        assert_eq!(get_reply(dp.addr, &format!("/c{i}/x")).await.status, 200);
    }
    assert_eq!(dp.metric("apiproxy_config_version").await, 6.0);
    assert_eq!(
        full_reads(&mut conn).await,
        reads,
        "a full read for a burst"
    );
    assert_eq!(redis_calls(&mut conn, "hget").await, hgets + 5);
}

/// README, Redis mode: the resync every `API_PROXY_RESYNC_INTERVAL` reads
/// only the version, one `GET`, while nothing changed: five of them cost
/// Redis no read of the hashes (counted by Redis itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_reads_only_the_version_while_nothing_changed() {
    let (redis, mut conn, _keys, _up, dp) = redis_node("100ms", "10m").await;
    let (reads, gets) = (
        full_reads(&mut conn).await,
        redis_calls(&mut conn, "get").await,
    );
    eventually("five resyncs", Duration::from_secs(10), || async {
        let mut conn = redis.conn().await;
        (redis_calls(&mut conn, "get").await >= gets + 5).then_some(())
    })
    .await;
    assert_eq!(
        full_reads(&mut conn).await,
        reads,
        "a resync read the hashes"
    );
    assert_eq!(dp.metric("apiproxy_config_version").await, 1.0);
}

/// README, Redis mode: an announcement that says what changed (an upsert
/// with its target, a delete) is applied as it is: no read of Redis at
/// all (counted by Redis), as the control plane announces by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_with_its_target_needs_no_read() {
    let (_redis, mut conn, keys, up, dp) = redis_node("10m", "10m").await;
    let (reads, hgets) = (
        full_reads(&mut conn).await,
        redis_calls(&mut conn, "hget").await,
    );
    let version = upsert_unannounced(&mut conn, &keys, "/told", &up.url()).await;
    let told = apiproxy_shared::UpdateMessage::upsert(version, "/told", &up.url());
    publish(&mut conn, &keys, &told.to_json()).await;
    dp.wait_status("/told/x", 200).await;
    let deleted = delete(&mut conn, &keys, "/told").await;
    dp.wait_status("/told/x", 404).await;
    assert_eq!(dp.metric("apiproxy_config_version").await, deleted as f64);
    assert_eq!(full_reads(&mut conn).await, reads, "a full read");
    assert_eq!(
        redis_calls(&mut conn, "hget").await,
        hgets,
        "a one-field read"
    );
}

/// README, Redis mode: a change whose announcement was lost (the version
/// bumped, nothing published) is found by the resync: a newer version
/// still not applied at the next check is read in full, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_announcement_is_found_by_the_resync() {
    let (_redis, mut conn, keys, up, dp) = redis_node("150ms", "10m").await;
    let reads = full_reads(&mut conn).await;
    upsert_unannounced(&mut conn, &keys, "/lost", &up.url()).await;
    dp.wait_status("/lost/x", 200).await;
    assert_eq!(dp.metric("apiproxy_config_version").await, 2.0);
    assert_eq!(full_reads(&mut conn).await, reads + 1);
}

/// README, Redis mode: the full re-read every
/// `API_PROXY_FULL_RESYNC_INTERVAL` is "applied only when the content
/// changed". Full re-reads of the same content (counted by Redis) apply
/// nothing: no reload is counted, no "mappings applied" logged; the first
/// one after a direct `HSET` (no version bump, no announcement) applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resync_that_finds_nothing_changed_applies_nothing() {
    const OK: &str = r#"apiproxy_config_reloads_total{result="ok"}"#;
    let (redis, mut conn, keys, up, dp) = redis_node("10m", "200ms").await;
    // The log is read by another thread: what it shows may lag a moment
    // (the reload counter, read first below, does not).
    let applied = |n: usize| {
        let dp = &dp;
        eventually(
            "mappings applied, logged",
            Duration::from_secs(5),
            move || async move {
                let logged = dp
                    .logs()
                    .iter()
                    .filter(|l| l.contains("mappings applied"))
                    .count();
                (logged >= n).then_some(logged)
            },
        )
    };
    assert_eq!(applied(1).await, 1);
    assert_eq!(dp.metric(OK).await, 1.0);

    let before = full_reads(&mut conn).await;
    eventually("five full resyncs", Duration::from_secs(10), || async {
        let mut conn = redis.conn().await;
        (full_reads(&mut conn).await >= before + 5).then_some(())
    })
    .await;
    assert_eq!(
        dp.metric(OK).await,
        1.0,
        "an unchanged resync counted a reload"
    );
    assert_eq!(
        applied(1).await,
        1,
        "an unchanged resync applied a snapshot"
    );
    assert_eq!(dp.metric("apiproxy_config_version").await, 1.0);

    // A change with no version bump and no announcement: the next full
    // resync applies it, once.
    hset_plain(&mut conn, &keys, "/c", &up.url()).await;
    dp.wait_status("/c/x", 200).await;
    dp.wait_metric(OK, 2.0).await;
    assert_eq!(applied(2).await, 2);
}

/// Announcements are idempotent: a repeat of the version the node applied,
/// or an older one, costs no read of Redis at all (counted by Redis) and
/// is counted in `apiproxy_config_announcements_ignored_total`; one that
/// skips a version still makes the node read everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_older_announcements_are_ignored_and_a_gap_re_reads() {
    const IGNORED: &str = "apiproxy_config_announcements_ignored_total";
    let (_redis, mut conn, keys, up, dp) = redis_node("10m", "10m").await;
    let version = upsert(&mut conn, &keys, "/b", &up.url()).await;
    dp.wait_status("/b/x", 200).await;
    let (hgetall, hget) = (
        full_reads(&mut conn).await,
        redis_calls(&mut conn, "hget").await,
    );

    let payload = |v: u64| format!(r#"{{"version": {v}, "op": "upsert", "prefix": "/b"}}"#);
    publish(&mut conn, &keys, &payload(version)).await;
    publish(&mut conn, &keys, &payload(version)).await;
    publish(&mut conn, &keys, &payload(version - 1)).await;
    dp.wait_metric(IGNORED, 3.0).await;
    assert_eq!(full_reads(&mut conn).await, hgetall, "no full read");
    assert_eq!(
        redis_calls(&mut conn, "hget").await,
        hget,
        "no one-field read"
    );

    // A change two versions on, announced alone: a gap, so a full read.
    let _: () = redis::pipe()
        .atomic()
        .hset(&keys.mappings, "/c", up.url())
        .ignore()
        .incr(&keys.version, 2)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    publish(&mut conn, &keys, &payload(version + 2)).await;
    dp.wait_status("/c/x", 200).await;
    assert_eq!(full_reads(&mut conn).await, hgetall + 1);
    assert_eq!(dp.metric(IGNORED).await, 3.0);
}
