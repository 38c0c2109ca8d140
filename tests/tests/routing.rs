//! Routing, URL join and header rules, end to end through the real binary.

use apiproxy_tests::client::{call, get_reply, raw, send_h2c};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::DataPlane;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

fn mappings(pairs: &[(&str, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(p, t)| (p.to_string(), serde_json::Value::String(t.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_default_route_and_raw_paths() {
    let a = upstream::http(echo_handler()).await;
    let b = upstream::http(echo_handler()).await;
    let d = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(
        &mappings(&[
            ("/openai", a.url()),
            ("/openai/v2", format!("{}/base", b.url())),
            ("/", d.url()),
        ]),
        &[],
    );

    let cases = [
        ("/openai/v1/chat?x=1", &a, "/v1/chat?x=1"),
        ("/openai", &a, "/"),
        ("/openai/v2/models", &b, "/base/models"),
        ("/openai/v2", &b, "/base"),
        ("/openaiX/y", &d, "/openaiX/y"),
        ("/a%2Fb/%3F?q=%20&r", &d, "/a%2Fb/%3F?q=%20&r"),
        ("/", &d, "/"),
    ];
    for (path, upstream, expected) in cases {
        let reply = get_reply(dp.addr, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let echo = reply.json();
        assert_eq!(echo["uri"], expected, "{path}");
        assert_eq!(
            echo["headers"]["host"][0],
            upstream.addr.to_string(),
            "{path}: Host rewritten to the target"
        );
    }
    // Keep-alive pooling: each upstream saw one connection for all its requests.
    assert_eq!(
        (
            a.counters.accepted(),
            b.counters.accepted(),
            d.counters.accepted()
        ),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mapping_and_refused_targets_get_json_errors() {
    let a = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&mappings(&[("/openai", a.url())]), &[]);

    let reply = get_reply(dp.addr, "/nothing/here").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["x-apiproxy-error"], "no_mapping");
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.json()["error"]["type"], "no_mapping");
    assert_eq!(
        reply.json()["error"]["message"],
        "no mapping for /nothing/here"
    );

    // Raw requests: an HTTP client would normalise these before sending.
    for (request, status, kind) in [
        (
            "GET /openai/v1/../../admin HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "GET /openai/%2e%2E/x HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "GET /openai/./x HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
        // Dot segments an upstream may find behind %2F, \ or ;params.
        (
            "GET /openai/..%2F..%2Fadmin HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "GET /openai/..;/x HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "GET http://evil.example/openai/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            "405",
            "method_not_allowed",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
    ] {
        let request = request.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
        let response = raw(dp.addr, request.as_bytes()).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?} -> {response}"
        );
        assert!(
            response.contains(&format!("x-apiproxy-error: {kind}")),
            "{request:?} -> {response}"
        );
    }
    assert_eq!(
        a.counters.accepted(),
        0,
        "nothing refused may reach the upstream"
    );
    assert_eq!(
        dp.metric(r#"apiproxy_requests_total{prefix="none",status_class="4xx"}"#)
            .await,
        9.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways_and_the_rest_kept() {
    let up = upstream::http(upstream::handler(|req: Request<hyper::body::Incoming>| async move {
        let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        let cl = req.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned());
        let te = req.headers().get("transfer-encoding").is_some();
        let ae = req.headers().get("accept-encoding").map(|v| v.to_str().unwrap().to_owned());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::json!({"seen": seen, "content_length": cl, "chunked": te, "accept_encoding": ae, "body": String::from_utf8_lossy(&body)});
        http::Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("content-encoding", "gzip")
            .header("x-end-to-end", "kept")
            .body(upstream::full(json.to_string()))
            .unwrap()
    }))
    .await;
    let dp = DataPlane::start(&mappings(&[("/up", up.url())]), &[]);

    let request = Request::post("/up/x")
        .header("host", "proxy.test")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic abc")
        .header("te", "gzip")
        .header("trailer", "x-sum")
        .header("upgrade", "h2c")
        .header("authorization", "Bearer sk-test")
        .header("accept-encoding", "gzip, br")
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let reply = call(dp.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    let seen: Vec<&str> = echo["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!seen.contains(&hop), "{hop} reached the upstream: {seen:?}");
    }
    for kept in ["authorization", "accept-encoding", "content-length", "host"] {
        assert!(seen.contains(&kept), "{kept} was dropped: {seen:?}");
    }
    assert_eq!(echo["content_length"], "5", "a sized body stays sized");
    assert_eq!(echo["chunked"], false);
    assert_eq!(echo["accept_encoding"], "gzip, br");
    assert_eq!(echo["body"], "hello");

    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!reply.headers.contains_key(hop), "{hop} reached the client");
    }
    assert_eq!(
        reply.headers["content-encoding"], "gzip",
        "encodings untouched"
    );
    assert_eq!(reply.headers["x-end-to-end"], "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_when_enabled() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(
        &mappings(&[("/up", up.url())]),
        &[("API_PROXY_FORWARDED_HEADERS", "true")],
    );
    let echo = get_reply(dp.addr, "/up/x").await.json();
    assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "http");
    assert_eq!(echo["headers"]["x-forwarded-host"][0], "proxy.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_the_proxy_port() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&mappings(&[("/up", up.url())]), &[]);
    let req = Request::post(format!("http://{}/up/h2?x=1", dp.addr))
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let response = send_h2c(dp.addr, req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["uri"], "/h2?x=1");
    assert_eq!(echo["body_len"], 3);
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "the upstream is spoken to in HTTP/1.1 over plain TCP"
    );
}

/// A data plane mapping `/tls` to `up` over HTTPS, with `ca` as its
/// extra root (the directory holding the CA file comes with it).
fn trusting(
    ca: &apiproxy_tests::tls::TestCa,
    up: &upstream::Upstream,
) -> (DataPlane, apiproxy_tests::TempDir) {
    let target = format!("https://localhost:{}", up.addr.port());
    apiproxy_tests::tls::trusting_dataplane(ca, &mappings(&[("/tls", target)]), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_negotiates_h2_with_the_extra_ca() {
    let ca = apiproxy_tests::tls::TestCa::new();
    let up = upstream::https(echo_handler(), &ca).await;
    let (dp, _ca_dir) = trusting(&ca, &up);
    let echo = get_reply(dp.addr, "/tls/v1/models").await.json();
    assert_eq!(echo["version"], "HTTP/2.0", "ALPN picked HTTP/2");
    // Over HTTP/2 the authority travels in `:authority` alone.
    assert!(echo["headers"].get("host").is_none(), "{echo}");
    assert_eq!(
        echo["uri"],
        format!("https://localhost:{}/v1/models", up.addr.port())
    );

    // Without the CA the certificate is refused: 502 upstream_connect.
    let dp2 = DataPlane::start(
        &mappings(&[("/tls", format!("https://localhost:{}", up.addr.port()))]),
        &[],
    );
    let reply = get_reply(dp2.addr, "/tls/x").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.headers["x-apiproxy-error"], "upstream_connect");
    assert_eq!(
        dp2.metric(r#"apiproxy_upstream_errors_total{kind="tls",prefix="/tls"}"#)
            .await,
        1.0
    );
}

/// An HTTPS upstream without h2 is spoken to by our HTTP/1.1 client over
/// TLS: an upload of unknown length goes up chunked and whole, and the
/// connection is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_without_h2_gets_http11_over_tls() {
    let ca = apiproxy_tests::tls::TestCa::new();
    let up = upstream::https_h1(echo_handler(), &ca).await;
    let (dp, _ca_dir) = trusting(&ca, &up);
    const PIECES: usize = 64;
    const PIECE: usize = 64 * 1024;
    let (tx, body) = upstream::channel_body();
    tokio::spawn(async move {
        for _ in 0..PIECES {
            let _ = tx.send(Ok(Bytes::from(vec![7u8; PIECE]))).await;
        }
    });
    let response =
        apiproxy_tests::client::send(dp.addr, Request::post("/tls/up").body(body).unwrap()).await;
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "ALPN offered no h2");
    assert_eq!(echo["headers"]["transfer-encoding"][0], "chunked");
    assert_eq!(echo["body_len"], (PIECES * PIECE) as u64);
    let echo = get_reply(dp.addr, "/tls/v1/models").await.json();
    assert_eq!(echo["uri"], "/v1/models");
    assert_eq!(up.counters.accepted(), 1, "one TLS connection, reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_policy_is_checked_on_the_resolved_address() {
    let up = upstream::http(echo_handler()).await;
    let port = up.addr.port();
    let dp = DataPlane::start(
        &mappings(&[
            ("/literal", format!("http://127.0.0.1:{port}")),
            ("/named", format!("http://localhost:{port}")),
            ("/metadata", "http://169.254.169.254".to_owned()),
        ]),
        &[("API_PROXY_TARGET_POLICY", "public-only")],
    );
    for path in ["/literal/x", "/named/x", "/metadata/latest"] {
        let reply = get_reply(dp.addr, path).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        assert_eq!(
            reply.headers["x-apiproxy-error"], "upstream_connect",
            "{path}"
        );
        assert!(reply.text().contains("policy"), "{path}: {}", reply.text());
    }
    assert_eq!(up.counters.accepted(), 0);
    assert_eq!(
        dp.metric(r#"apiproxy_upstream_errors_total{kind="policy",prefix="/named"}"#)
            .await,
        1.0
    );

    // The default policy refuses only link-local and metadata addresses.
    let dp = DataPlane::start(
        &mappings(&[
            ("/literal", format!("http://127.0.0.1:{port}")),
            ("/metadata", "http://169.254.169.254".into()),
        ]),
        &[("API_PROXY_TARGET_POLICY", "no-link-local")],
    );
    assert_eq!(get_reply(dp.addr, "/literal/x").await.status, 200);
    assert_eq!(get_reply(dp.addr, "/metadata/x").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_policy_holds_when_dns_answers_change() {
    // DNS rebinding: a name that first resolves somewhere allowed and then
    // to the metadata address. The node's real resolver reads a hosts file
    // the test rewrites between requests; the upstream closes every
    // connection, so each request resolves and connects afresh.
    let up = upstream::http(upstream::handler(|_req| async {
        http::Response::builder()
            .header("connection", "close")
            .body(upstream::full("ok"))
            .unwrap()
    }))
    .await;
    let dir = apiproxy_tests::TempDir::new("hosts");
    let hosts = dir.path("hosts");
    let answer = |ips: &[&str]| {
        let lines: String = ips.iter().map(|ip| format!("{ip} rebind.test\n")).collect();
        std::fs::write(&hosts, lines).unwrap();
    };
    answer(&["127.0.0.1"]);
    let dp = DataPlane::start_with_hosts(
        &mappings(&[("/r", format!("http://rebind.test:{}", up.addr.port()))]),
        &[("API_PROXY_TARGET_POLICY", "no-link-local")],
        &hosts,
    );
    let refused = r#"apiproxy_upstream_errors_total{kind="policy",prefix="/r"}"#;

    assert_eq!(get_reply(dp.addr, "/r/1").await.status, 200);
    answer(&["169.254.169.254"]);
    let reply = get_reply(dp.addr, "/r/2").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.headers["x-apiproxy-error"], "upstream_connect");
    assert!(reply.text().contains("policy"), "{}", reply.text());
    assert_eq!(dp.metric(refused).await, 1.0);
    // A mixed answer dials only the allowed address.
    answer(&["169.254.169.254", "127.0.0.1"]);
    assert_eq!(get_reply(dp.addr, "/r/3").await.status, 200);
    // And the refusal was not cached: allowed again, served again.
    answer(&["127.0.0.1"]);
    assert_eq!(get_reply(dp.addr, "/r/4").await.status, 200);
    assert_eq!(
        up.counters.accepted(),
        3,
        "one connection per allowed request"
    );
    assert_eq!(dp.metric(refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_tricks_and_encoded_slashes_never_choose_the_upstream() {
    // Only the path picks the upstream: no Host, :authority or forwarding
    // header can send a request anywhere else, and a prefix is matched on
    // whole raw segments, so encoded slashes and userinfo-like spellings
    // are not the prefix.
    let (a, fallback) = (
        upstream::http(echo_handler()).await,
        upstream::http(echo_handler()).await,
    );
    let only_a = DataPlane::start(&mappings(&[("/openai", a.url())]), &[]);
    let with_default = DataPlane::start(
        &mappings(&[("/openai", a.url()), ("/", fallback.url())]),
        &[],
    );
    let host_of = |up: &upstream::Upstream| format!("127.0.0.1:{}", up.addr.port());

    let tricked = raw(
        only_a.addr,
        b"GET /openai/x HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\n\
          Forwarded: host=evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(tricked.starts_with("HTTP/1.1 200"), "{tricked}");
    let echo: serde_json::Value =
        serde_json::from_str(tricked.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(echo["uri"], "/x");
    assert_eq!(echo["headers"]["host"][0], host_of(&a).as_str());

    // HTTP/2 carries the authority in the request target itself.
    let req = Request::get("http://evil.example/openai/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send_h2c(only_a.addr, req).await;
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["uri"], "/h2");
    assert_eq!(echo["headers"]["host"][0], host_of(&a).as_str());

    for path in [
        "/openai%2fx",
        "/openai%2Fv1/models",
        "/openai@evil.example/x",
        "/openai.evil.example/x",
        "//evil.example/openai/x",
        "/%6fpenai/x",
    ] {
        let reply = get_reply(only_a.addr, path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text());
        assert_eq!(reply.headers["x-apiproxy-error"], "no_mapping", "{path}");
        // With a default route they go there, verbatim, on its own host.
        let reply = get_reply(with_default.addr, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.json()["uri"], path);
        assert_eq!(
            reply.json()["headers"]["host"][0],
            host_of(&fallback).as_str()
        );
    }
    let to_a = r#"apiproxy_requests_total{prefix="/openai",status_class="2xx"}"#;
    assert_eq!(
        only_a.metric(to_a).await,
        2.0,
        "only the two real /openai requests"
    );
    assert_eq!(with_default.metric(to_a).await, 0.0);
}
