//! Hostile request shapes against the real binary: oversized heads and
//! ambiguous body framings are refused before anything reaches the
//! upstream, and Content-Length with Transfer-Encoding is read one way
//! only.

use apiproxy_tests::client::raw;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::DataPlane;

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
    let many_headers = format!(
        "GET /up/x HTTP/1.1\r\nhost: a\r\n{}\r\n",
        (0..200)
            .map(|i| format!("x-h{i}: 1\r\n"))
            .collect::<String>()
    );
    let cases: [(&str, &[u8], &str); 5] = [
        ("a 100 KB header", big_header.as_bytes(), "431"),
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

    // Content-Length with Transfer-Encoding: hyper reads the body as
    // chunked and drops the Content-Length (RFC 9112 §6.3), so the
    // upstream gets one framing only and cannot read a smuggled request.
    let both = raw(
        dp.addr,
        b"POST /up/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 40\r\n\
          transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /up/smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert_eq!(status(&both), "200", "{both}");
    let echoed: serde_json::Value =
        serde_json::from_str(both.split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap();
    assert_eq!(echoed["body_len"], 0, "{echoed}");
    assert!(
        echoed["headers"].get("content-length").is_none(),
        "{echoed}"
    );
    assert!(!both.contains("/smuggled"), "{both}");

    // A well-formed request still goes through, and nothing stays open.
    let ok = raw(
        dp.addr,
        b"POST /up/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 4\r\n\r\nabcd",
    )
    .await;
    assert_eq!(status(&ok), "200", "{ok}");
    dp.assert_fds_return_to(baseline).await;
}
