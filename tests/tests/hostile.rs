//! Hostile request shapes against the real binary: oversized heads and
//! ambiguous body framings are refused before anything reaches the
//! upstream (Content-Length with Transfer-Encoding among them), and
//! HTTP/2 clients meet stream and reset limits.

use apiproxy_tests::client::raw;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::DataPlane;
use std::time::Duration;

/// The status code of a raw HTTP/1.1 exchange.
fn status(reply: &str) -> &str {
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .unwrap_or(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_smuggling_shapes_never_reach_the_upstream() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&serde_json::json!({"/up": up.url()}).to_string(), &[]);
    // One good request first: its pooled upstream connection is part of
    // the baseline, not a leak.
    let warm = raw(
        dp.addr,
        b"GET /up/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&warm), "200", "{warm}");
    let baseline = dp.open_fds();
    let proxied = r#"apiproxy_requests_total{prefix="/up",status_class="2xx"}"#;
    let before = dp.metric(proxied).await;

    let big_header = format!(
        "GET /up/x HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    // Just over the 64 KiB limit, sent at once: the limit is exact, not
    // whatever one read happens to take in.
    let just_over = format!(
        "GET /up/x HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many_headers = format!(
        "GET /up/x HTTP/1.1\r\nhost: a\r\n{}\r\n",
        (0..200)
            .map(|i| format!("x-h{i}: 1\r\n"))
            .collect::<String>()
    );
    let cases: [(&str, &[u8], &str); 6] = [
        ("a 100 KB header", big_header.as_bytes(), "431"),
        ("a head just over 64 KiB", just_over.as_bytes(), "431"),
        ("200 headers", many_headers.as_bytes(), "431"),
        (
            "two different Content-Lengths",
            b"POST /up/x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd",
            "400",
        ),
        (
            "chunked not last",
            b"POST /up/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "an unknown transfer coding",
            b"POST /up/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
    ];
    for (what, request, want) in cases {
        let reply = raw(dp.addr, request).await;
        assert_eq!(
            status(&reply),
            want,
            "{what}: {}",
            &reply[..reply.len().min(200)]
        );
    }
    assert_eq!(
        dp.metric(proxied).await,
        before,
        "a refused request was proxied"
    );

    // Content-Length with Transfer-Encoding: refused (RFC 9112 §6.1
    // allows it), so no reading of the body's framing can differ from the
    // upstream's, and the connection closes: the bytes after the chunked
    // body are never read as a request.
    let both = raw(
        dp.addr,
        b"POST /up/x HTTP/1.1\r\nhost: a\r\ncontent-length: 40\r\n\
          transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /up/smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert_eq!(status(&both), "400", "{both}");
    assert!(both.contains("bad_request"), "{both}");
    assert_eq!(
        both.matches("HTTP/1.1 ").count(),
        1,
        "the connection must close after one response: {both}"
    );
    assert_eq!(
        dp.metric(proxied).await,
        before,
        "the smuggling shape or what follows it was proxied"
    );

    // A well-formed request still goes through, and nothing stays open.
    let ok = raw(
        dp.addr,
        b"POST /up/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 4\r\n\r\nabcd",
    )
    .await;
    assert_eq!(status(&ok), "200", "{ok}");
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_limit_and_reset_flood() {
    // The upstream answers slowly, so streams a client opens pile up in
    // the proxy unless something caps them.
    let up = upstream::http(upstream::handler(|_req| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        http::Response::new(upstream::full("ok"))
    }))
    .await;
    let dp = DataPlane::start(&serde_json::json!({"/up": up.url()}).to_string(), &[]);
    let warm = apiproxy_tests::client::get_reply(dp.addr, "/up/warm").await;
    assert_eq!(warm.status, 200);
    let fds = dp.open_fds();
    let tasks = dp.metric("apiproxy_runtime_tasks").await;

    let tcp = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let get = || {
        http::Request::get(format!("http://{}/up/flood", dp.addr))
            .body(())
            .unwrap()
    };
    // The SETTINGS the proxy sent: at most 256 streams at once.
    let (first, _) = client.send_request(get(), true).unwrap();
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 256);

    // Rapid reset (CVE-2023-44487): open a stream and cancel it at once,
    // again and again. Bounded: 10,000 streams or 10 s.
    let started = std::time::Instant::now();
    let mut opened = 0u32;
    let refused = loop {
        assert!(
            opened < 10_000 && started.elapsed() < Duration::from_secs(10),
            "{opened} streams opened and reset, and the proxy never objected"
        );
        client = match client.ready().await {
            Ok(c) => c,
            Err(e) => break e,
        };
        match client.send_request(get(), true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(e) => break e,
        }
        opened += 1;
    };
    // The proxy sends GOAWAY(ENHANCE_YOUR_CALM) and closes; the client,
    // still writing, may see only the broken pipe, so the proxy's log is
    // the witness of why.
    let closed = connection.await.unwrap();
    assert!(closed.is_err(), "the flooding connection ended cleanly");
    let why = "remotely-reset pending-accept streams reached limit";
    apiproxy_tests::eventually(
        "the reset limit in the log",
        Duration::from_secs(5),
        || async { dp.logs().iter().any(|l| l.contains(why)).then_some(()) },
    )
    .await;
    let reached = up.counters.accepted();
    println!(
        "h2 reset flood: cut off after {opened} streams ({refused}); \
         {reached} upstream connections were opened for them"
    );

    // Everyone else is still served, and what the flood opened is closed.
    let reply = apiproxy_tests::client::call(
        dp.addr,
        http::Request::get("/up/after")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    dp.assert_fds_return_to(fds).await;
    apiproxy_tests::eventually(
        "runtime tasks back to baseline",
        Duration::from_secs(10),
        || async { (dp.metric("apiproxy_runtime_tasks").await <= tasks).then_some(()) },
    )
    .await;
}
