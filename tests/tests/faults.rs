//! Upstream and client faults. Every case ends with the proxy's open file
//! descriptors back at their baseline: every error path closes what it
//! opened (the Go proxy leaked 169,000 goroutines and sockets this way).

use std::time::{Duration, Instant};

use apiproxy_tests::client::{get_reply, send};
use apiproxy_tests::upstream::{self, channel_body, full, handler};
use apiproxy_tests::{one_mapping, refusing_addr, DataPlane};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const TIMEOUTS: [(&str, &str); 2] = [
    ("API_PROXY_RESPONSE_HEADER_TIMEOUT", "1s"),
    ("API_PROXY_IDLE_TIMEOUT", "1s"),
];

/// Reads an HTTP request head from a raw stream.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// Reads until the peer closes; returns when it did.
async fn wait_closed(stream: &mut TcpStream) -> Instant {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// A raw upstream that runs `script` after reading the request head, then
/// reports when the proxy closed the connection.
async fn scripted<F, Fut>(script: F) -> (upstream::Upstream, mpsc::UnboundedReceiver<Instant>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let up = upstream::raw(move |mut stream| {
        let script = script.clone();
        let tx = tx.clone();
        async move {
            read_head(&mut stream).await;
            if let Some(mut stream) = script(stream).await {
                let _ = tx.send(wait_closed(&mut stream).await);
            }
        }
    })
    .await;
    (up, rx)
}

/// The upstream saw its connection closed less than a second after `left`.
async fn assert_closed_within_a_second(
    closed: &mut mpsc::UnboundedReceiver<Instant>,
    left: Instant,
) {
    let closed_at = tokio::time::timeout(Duration::from_secs(2), closed.recv())
        .await
        .expect("upstream saw the close")
        .unwrap();
    let took = closed_at.duration_since(left);
    assert!(
        took < Duration::from_secs(1),
        "upstream saw the close after {took:?}"
    );
}

/// Reads a response body to its end: `Ok(bytes)` if it ended cleanly.
async fn read_body(response: Response<Incoming>) -> Result<usize, String> {
    let mut body = response.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(n)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "t")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refuses() {
    let dp = DataPlane::start(
        &one_mapping("/down", &format!("http://{}", refusing_addr())),
        &[],
    );
    let baseline = dp.open_fds();
    let reply = get_reply(dp.addr, "/down/x").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["x-apiproxy-error"], "upstream_connect");
    assert_eq!(reply.json()["error"]["type"], "upstream_connect");
    assert_eq!(
        dp.metric(r#"apiproxy_upstream_errors_total{kind="connect",prefix="/down"}"#)
            .await,
        1.0
    );
    assert_eq!(
        dp.metric(r#"apiproxy_requests_total{prefix="/down",status_class="5xx"}"#)
            .await,
        1.0
    );
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resets_mid_body() {
    let (up, _closed) = scripted(|mut s: TcpStream| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        let _ = s.write_all(&[b'a'; 1000]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.set_zero_linger();
        drop(s); // RST
        None
    })
    .await;
    let dp = DataPlane::start(&one_mapping("/r", &up.url()), &[]);
    let baseline = dp.open_fds();
    let response = send(dp.addr, get("/r/x")).await;
    assert_eq!(response.status(), 200);
    let result = read_body(response).await;
    assert!(
        result.is_err(),
        "a truncated body must not end cleanly: {result:?}"
    );
    dp.wait_metric(
        r#"apiproxy_upstream_errors_total{kind="reset",prefix="/r"}"#,
        1.0,
    )
    .await;
    drop(up);
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sends_fewer_bytes_than_content_length() {
    let (up, _closed) = scripted(|mut s: TcpStream| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            .await;
        let _ = s.write_all(&[b'a'; 100]).await;
        let _ = s.shutdown().await; // clean FIN, body short
        None
    })
    .await;
    let dp = DataPlane::start(&one_mapping("/s", &up.url()), &[]);
    let baseline = dp.open_fds();
    let response = send(dp.addr, get("/s/x")).await;
    assert_eq!(response.headers()["content-length"], "5000");
    let result = read_body(response).await;
    assert!(
        result.is_err(),
        "a short body must not end cleanly: {result:?}"
    );
    drop(up);
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_accepts_and_never_answers() {
    let (up, mut closed) = scripted(|s: TcpStream| async move { Some(s) }).await;
    let dp = DataPlane::start(&one_mapping("/n", &up.url()), &TIMEOUTS);
    let baseline = dp.open_fds();
    let start = Instant::now();
    let reply = get_reply(dp.addr, "/n/x").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.headers["x-apiproxy-error"], "upstream_timeout");
    assert!(start.elapsed() < Duration::from_secs(3));
    let closed_at = tokio::time::timeout(Duration::from_secs(2), closed.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(closed_at.duration_since(start) < Duration::from_secs(2));
    assert_eq!(up.counters.accepted(), 1, "timeouts are never retried");
    assert_eq!(
        dp.metric(r#"apiproxy_upstream_errors_total{kind="timeout",prefix="/n"}"#)
            .await,
        1.0
    );
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sends_headers_then_stalls() {
    let (up, mut closed) = scripted(|mut s: TcpStream| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n").await;
        Some(s)
    })
    .await;
    let dp = DataPlane::start(&one_mapping("/st", &up.url()), &TIMEOUTS);
    let baseline = dp.open_fds();
    let start = Instant::now();
    let response = send(dp.addr, get("/st/x")).await;
    assert_eq!(response.status(), 200);
    let result = read_body(response).await;
    assert!(
        result.is_err(),
        "the idle timeout aborts the client connection: {result:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900) && start.elapsed() < Duration::from_secs(3)
    );
    tokio::time::timeout(Duration::from_secs(2), closed.recv())
        .await
        .expect("upstream closed")
        .unwrap();
    assert_eq!(
        dp.metric(r#"apiproxy_upstream_errors_total{kind="timeout",prefix="/st"}"#)
            .await,
        1.0
    );
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_and_503_pass_through_with_their_bodies() {
    let up = upstream::http(handler(|req: Request<Incoming>| async move {
        let status = if req.uri().path().ends_with("429") {
            429
        } else {
            503
        };
        Response::builder()
            .status(status)
            .header("retry-after", "7")
            .header("content-type", "application/json")
            .body(full(format!(
                r#"{{"error":{{"message":"upstream says {status}"}}}}"#
            )))
            .unwrap()
    }))
    .await;
    let dp = DataPlane::start(&one_mapping("/u", &up.url()), &[]);
    let baseline = dp.open_fds();
    for code in [429u16, 503] {
        let reply = get_reply(dp.addr, &format!("/u/{code}")).await;
        assert_eq!(reply.status, code);
        assert!(
            reply.headers.get("x-apiproxy-error").is_none(),
            "the upstream's own error is not the proxy's"
        );
        assert_eq!(reply.headers["retry-after"], "7");
        assert_eq!(
            reply.json()["error"]["message"],
            format!("upstream says {code}")
        );
    }
    assert_eq!(
        dp.metric(r#"apiproxy_requests_total{prefix="/u",status_class="4xx"}"#)
            .await,
        1.0
    );
    assert_eq!(
        dp.metric(r#"apiproxy_requests_total{prefix="/u",status_class="5xx"}"#)
            .await,
        1.0
    );
    drop(up);
    dp.assert_fds_return_to(baseline).await;
}

/// The client sends `request` to an upstream that never answers, waits
/// until the upstream has read the head and the `body_len` bytes of body
/// after it, and leaves before the response head: the upstream must see
/// its connection closed within a second, and the request be counted as
/// cancelled.
async fn client_leaves_before_the_head(request: &[u8], body_len: usize) {
    let (body_in, mut body_read) = mpsc::unbounded_channel();
    let (up, mut closed) = scripted(move |mut s: TcpStream| {
        let body_in = body_in.clone();
        async move {
            let mut body = vec![0u8; body_len];
            s.read_exact(&mut body).await.ok()?;
            let _ = body_in.send(());
            Some(s)
        }
    })
    .await;
    let dp = DataPlane::start(&one_mapping("/a", &up.url()), &[]);
    let baseline = dp.open_fds();
    let mut client = TcpStream::connect(dp.addr).await.unwrap();
    client.write_all(request).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), body_read.recv())
        .await
        .expect("the request reached the upstream within 5 s");
    let left = Instant::now();
    drop(client);
    assert_closed_within_a_second(&mut closed, left).await;
    dp.wait_metric(r#"apiproxy_client_cancelled_total{prefix="/a"}"#, 1.0)
        .await;
    assert_eq!(dp.metric("apiproxy_inflight_requests").await, 0.0);
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_aborts_before_the_head() {
    client_leaves_before_the_head(b"GET /a/x HTTP/1.1\r\nHost: t\r\n\r\n", 0).await;
}

/// The LLM case: the prompt went up whole, the generation has not begun,
/// and the client leaves. The request body gave the connection's read
/// side back, and the close is seen there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_aborts_after_its_body_before_the_head() {
    let request = b"POST /a/x HTTP/1.1\r\nHost: t\r\ncontent-length: 12\r\n\r\n{\"prompt\":1}";
    // The client leaves once the whole body has reached the upstream.
    client_leaves_before_the_head(request, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_aborts_mid_stream() {
    // The upstream sends one event, then goes quiet: the proxy must notice
    // the client leaving without anything to write.
    let (up, mut closed) = scripted(|mut s: TcpStream| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n").await;
        Some(s)
    })
    .await;
    let dp = DataPlane::start(&one_mapping("/m", &up.url()), &[]);
    let baseline = dp.open_fds();
    let response = send(dp.addr, get("/m/x")).await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"data:1");
    let left = Instant::now();
    drop(body);
    assert_closed_within_a_second(&mut closed, left).await;
    dp.wait_metric(r#"apiproxy_client_cancelled_total{prefix="/m"}"#, 1.0)
        .await;
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_aborts_mid_upload() {
    let (up, mut closed) = scripted(|s: TcpStream| async move { Some(s) }).await;
    let dp = DataPlane::start(&one_mapping("/up", &up.url()), &[]);
    let baseline = dp.open_fds();
    let mut client = TcpStream::connect(dp.addr).await.unwrap();
    client
        .write_all(b"POST /up/x HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    client.write_all(&[b'z'; 64 * 1024]).await.unwrap();
    up.wait_accepted(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = Instant::now();
    drop(client);
    assert_closed_within_a_second(&mut closed, left).await;
    assert_eq!(
        up.counters.accepted(),
        1,
        "a failed upload is never retried"
    );
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let up = upstream::http(upstream::echo_handler()).await;
    let dp = DataPlane::start(
        &one_mapping("/b", &up.url()),
        &[("API_PROXY_MAX_REQUEST_BODY", "1000")],
    );
    let baseline = dp.open_fds();
    // Declared too large: refused before anything goes upstream.
    let req = Request::post("/b/x")
        .header("content-length", "1001")
        .body(http_body_util::Full::new(Bytes::from(vec![0u8; 1001])))
        .unwrap();
    let reply = apiproxy_tests::client::call(dp.addr, req).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.headers["x-apiproxy-error"], "payload_too_large");
    assert_eq!(up.counters.accepted(), 0);
    // Chunked and too large: cut off while streaming.
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..4 {
            let _ = tx.send(Ok(Bytes::from(vec![1u8; 400]))).await;
        }
    });
    let response = send(dp.addr, Request::post("/b/y").body(body).unwrap()).await;
    assert_eq!(response.status(), 413);
    // Within the limit: fine.
    let req = Request::post("/b/z")
        .body(http_body_util::Full::new(Bytes::from(vec![0u8; 1000])))
        .unwrap();
    assert_eq!(
        apiproxy_tests::client::call(dp.addr, req).await.json()["body_len"],
        1000
    );
    drop(up);
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_that_never_completes_hits_the_connect_timeout() {
    // TCP connects, but the "TLS server" never answers the ClientHello: the
    // connect timeout covers TCP and TLS together.
    let (up, mut closed) = scripted(|s: TcpStream| async move { Some(s) }).await;
    let target = format!("https://127.0.0.1:{}", up.addr.port());
    let dp = DataPlane::start(
        &one_mapping("/tls", &target),
        &[("API_PROXY_CONNECT_TIMEOUT", "500ms")],
    );
    let baseline = dp.open_fds();
    let start = Instant::now();
    let reply = get_reply(dp.addr, "/tls/x").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.headers["x-apiproxy-error"], "upstream_timeout");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(2), closed.recv())
        .await
        .expect("upstream closed")
        .unwrap();
    assert_eq!(up.counters.accepted(), 1, "timeouts are never retried");
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_to_an_http2_upstream_still_gets_413() {
    // Over HTTP/2 the upstream connection turns a body error into a stream
    // reset; the client must still learn that its body was too large.
    let ca = apiproxy_tests::tls::TestCa::new();
    let up = upstream::https(upstream::echo_handler(), &ca).await;
    let dir = apiproxy_tests::TempDir::new("ca");
    let ca_file = dir.path("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let target = format!("https://localhost:{}", up.addr.port());
    let dp = DataPlane::start(
        &one_mapping("/h2", &target),
        &[
            ("API_PROXY_CA_FILE", ca_file.to_str().unwrap()),
            ("API_PROXY_MAX_REQUEST_BODY", "1000"),
        ],
    );
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..4 {
            let _ = tx.send(Ok(Bytes::from(vec![1u8; 400]))).await;
        }
    });
    let response = send(dp.addr, Request::post("/h2/up").body(body).unwrap()).await;
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()["x-apiproxy-error"], "payload_too_large");
    assert_eq!(
        dp.metric(r#"apiproxy_upstream_errors_total{kind="reset",prefix="/h2"}"#)
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_cut_by_the_response_header_timeout() {
    // The header timeout (1 s) runs from when the body was sent whole; the
    // upload itself takes ~2 s and is guarded by the idle timeout only.
    let up = upstream::http(upstream::echo_handler()).await;
    let dp = DataPlane::start(
        &one_mapping("/up", &up.url()),
        &[
            ("API_PROXY_RESPONSE_HEADER_TIMEOUT", "1s"),
            ("API_PROXY_IDLE_TIMEOUT", "3s"),
        ],
    );
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..4 {
            let _ = tx.send(Ok(Bytes::from(vec![7u8; 1000]))).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let start = Instant::now();
    let response = send(dp.addr, Request::post("/up/slow").body(body).unwrap()).await;
    assert_eq!(response.status(), 200);
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the upload took {:?}",
        start.elapsed()
    );
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["body_len"], 4000);

    // Sent whole, then no answer: 504 about one header timeout later.
    let (silent, _closed) = scripted(|mut s: TcpStream| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await; // the body
        Some(s)
    })
    .await;
    let dp = DataPlane::start(
        &one_mapping("/s", &silent.url()),
        &[("API_PROXY_RESPONSE_HEADER_TIMEOUT", "1s")],
    );
    let start = Instant::now();
    let req = Request::post("/s/x")
        .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let reply = apiproxy_tests::client::call(dp.addr, req).await;
    assert_eq!(reply.status, 504);
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        start.elapsed()
    );
}
