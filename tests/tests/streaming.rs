//! Bodies stream both ways with backpressure: SSE events arrive one by
//! one, big bodies pass with flat memory, upgrades tunnel after a 101.

use std::time::{Duration, Instant};

use apiproxy_tests::client::{get_reply, send};
use apiproxy_tests::upstream::{self, channel_body, count_body, full, handler};
use apiproxy_tests::{one_mapping, DataPlane};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An SSE upstream sends its first event and holds the rest back until the
/// client has received that one: a proxy that buffered the response would
/// never deliver it (bounded at 10 s), however loaded the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    let (up, release) = upstream::sse_held(5, Duration::from_millis(200)).await;
    let dp = DataPlane::start(&one_mapping("/sse", &up.url()), &[]);
    let response = send(
        dp.addr,
        Request::get("/sse/stream")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event arrives while the upstream holds the rest")
        .expect("a frame")
        .expect("stream completes cleanly");
    let mut arrivals = vec![String::from_utf8_lossy(first.data_ref().unwrap()).into_owned()];
    release.send(true).unwrap();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("stream completes cleanly");
        if let Some(data) = frame.data_ref() {
            arrivals.push(String::from_utf8_lossy(data).into_owned());
        }
    }
    let texts: String = arrivals.concat();
    assert_eq!(texts.matches("data: event").count(), 5);
    assert!(arrivals.len() >= 5, "events were merged: {arrivals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_every_timeout_runs_to_the_end() {
    // 3 s of events 300 ms apart, with 1 s idle and 1 s header timeouts: only
    // silence ends a stream, never its total length.
    let up = upstream::sse(10, Duration::from_millis(300)).await;
    let dp = DataPlane::start(
        &one_mapping("/sse", &up.url()),
        &[
            ("API_PROXY_IDLE_TIMEOUT", "1s"),
            ("API_PROXY_RESPONSE_HEADER_TIMEOUT", "1s"),
        ],
    );
    let start = Instant::now();
    let reply = get_reply(dp.addr, "/sse/long").await;
    assert!(start.elapsed() >= Duration::from_millis(2700));
    assert_eq!(reply.text().matches("data: event").count(), 10);
}

const BIG: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_stream_both_ways_with_flat_memory() {
    let up = upstream::http(handler(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let n = count_body(req.into_body()).await;
            return Response::new(full(n.to_string()));
        }
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            for _ in 0..BIG / chunk.len() as u64 {
                if tx.send(Ok(chunk.clone())).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("content-length", BIG.to_string())
            .body(body)
            .unwrap()
    }))
    .await;
    let dp = DataPlane::start(&one_mapping("/big", &up.url()), &[]);
    let rss_before = dp.rss_bytes();

    // Download.
    let response = send(
        dp.addr,
        Request::get("/big/down")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(
        response.headers()["content-length"],
        BIG.to_string(),
        "Content-Length kept"
    );
    let received = count_body(response.into_body()).await;
    assert_eq!(received, BIG);
    let rss_after_down = dp.rss_bytes();

    // Upload, streamed from a channel so the client holds no copy either.
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
        for _ in 0..BIG / chunk.len() as u64 {
            if tx.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post("/big/up")
        .header("content-length", BIG.to_string())
        .body(body)
        .unwrap();
    let response = send(dp.addr, req).await;
    assert_eq!(response.status(), 200);
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        counted,
        BIG.to_string().as_bytes(),
        "upstream received every byte"
    );
    let rss_after_up = dp.rss_bytes();

    let growth = rss_after_down.max(rss_after_up).saturating_sub(rss_before);
    assert!(
        growth < 16 * 1024 * 1024,
        "RSS grew by {} KiB moving 2 x 256 MiB",
        growth / 1024
    );
    // Bytes out: the download plus the upload's reply (the count as text).
    let reply_len = BIG.to_string().len() as u64;
    assert_eq!(
        dp.metric(r#"apiproxy_response_bytes_total{prefix="/big"}"#)
            .await,
        (BIG + reply_len) as f64
    );
    assert_eq!(
        dp.metric(r#"apiproxy_request_bytes_total{prefix="/big"}"#)
            .await,
        BIG as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_after_101() {
    let up = upstream::websocket_echo().await;
    let dp = DataPlane::start(&one_mapping("/ws", &up.url()), &[]);
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"GET /ws/realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], b"hello through the tunnel"] {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tunnel_without_a_101() {
    // The upstream refuses the upgrade: the client gets the normal response
    // and the connection stays plain HTTP.
    let up = upstream::http(upstream::echo_handler()).await;
    let dp = DataPlane::start(&one_mapping("/ws", &up.url()), &[]);
    let req = Request::get("/ws/x")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send(dp.addr, req).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("upgrade").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_requests_are_not_tunnelled() {
    // An h2c tunnel would let the client reach any path on the upstream;
    // the proxy strips the upgrade and forwards a plain request.
    let up = upstream::http(upstream::echo_handler()).await;
    let dp = DataPlane::start(&one_mapping("/api", &up.url()), &[]);
    let req = Request::get("/api/x")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send(dp.addr, req).await;
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["uri"], "/x");
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert!(
            echo["headers"].get(hop).is_none(),
            "{hop} reached the upstream: {echo}"
        );
    }
}

/// Trailers after a chunked HTTP/1.1 body reach an HTTP/2 client (gRPC-web
/// and checksums ride on them), and a chunked body arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_of_a_chunked_upstream_body_reach_an_h2_client() {
    let up = upstream::raw(|mut stream: tokio::net::TcpStream| async move {
        let mut head = vec![0u8; 16 * 1024];
        let _ = stream.read(&mut head).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                  5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-checksum: abc123\r\n\r\n",
            )
            .await;
        let _ = stream.read(&mut head).await;
    })
    .await;
    let dp = DataPlane::start(&one_mapping("/t", &up.url()), &[]);
    let response = apiproxy_tests::client::send_h2c(
        dp.addr,
        Request::get("/t/x")
            .header("te", "trailers")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "hello, world");
}
