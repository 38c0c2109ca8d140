//! The access log and request ids, end to end with the real binary: one
//! line a request with its fields for a success, each error type, a
//! cancel and a WebSocket; ids kept, made, sent upstream and echoed; the
//! text format and sampling; a stalled sink that drops lines (counted)
//! without holding requests up; SIGHUP reopening the file under load
//! with no line lost or torn.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use apiproxy_tests::client::{call, raw, send, send_h2c};
use apiproxy_tests::dataplane::read_json_lines;
use apiproxy_tests::upstream::{self, echo_handler, full, handler};
use apiproxy_tests::{eventually, refusing_addr, DataPlane, TempDir};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOG: &str = "access.log";

fn get(path: &str, id: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "proxy.test")
        .header("x-request-id", id)
        .body(Full::default())
        .unwrap()
}

/// Waits until the node's access log holds `n` lines and returns them by
/// request id.
async fn lines_by_id(dp: &DataPlane, n: usize) -> HashMap<String, Value> {
    let lines = eventually("access log lines", Duration::from_secs(10), || async {
        let lines = dp.access_log(LOG);
        (lines.len() >= n).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), n, "{lines:#?}");
    lines
        .into_iter()
        .map(|l| (l["request_id"].as_str().unwrap().to_owned(), l))
        .collect()
}

/// Reads `stream` until the end of a response head.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_one_line_with_its_fields() {
    let echo = upstream::http(echo_handler()).await;
    let slow = upstream::http(handler(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("late"))
    }))
    .await;
    // Takes the connection and closes it without a word.
    let reset = upstream::raw(|stream| async move { drop(stream) }).await;
    let ws = upstream::websocket_echo().await;
    let (sse, _release) = upstream::sse_held(5, Duration::from_millis(50)).await;
    let mappings = json!({
        "/ok": echo.url(),
        "/slow": slow.url(),
        "/reset": reset.url(),
        "/dead": format!("http://{}", refusing_addr()),
        "/ws": ws.url(),
        "/sse": sse.url(),
    });
    let dp = DataPlane::start(
        &mappings.to_string(),
        &[
            ("API_PROXY_ACCESS_LOG", LOG),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
            ("API_PROXY_NODE_ID", "node-a"),
            ("API_PROXY_MAX_REQUEST_BODY", "10"),
            ("API_PROXY_RESPONSE_HEADER_TIMEOUT", "300ms"),
        ],
    );
    let before = SystemTime::now();

    // A success with a body, a client credential and a query.
    let ok_reply = call(
        dp.addr,
        Request::post("/ok/v1/chat?key=K-secret&alt=sse")
            .header("host", "proxy.test")
            .header("x-request-id", "t-ok")
            .header("user-agent", "test-agent/1")
            .header("authorization", "Bearer sk-client-secret")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap(),
    )
    .await;
    assert_eq!(ok_reply.status, 200);
    for (path, id, status) in [
        ("/missing", "t-404", 404),
        ("/dead/x", "t-dead", 502),
        ("/reset/x", "t-reset", 502),
        ("/slow/x", "t-slow", 504),
    ] {
        assert_eq!(call(dp.addr, get(path, id)).await.status, status, "{path}");
    }
    let too_large = call(
        dp.addr,
        Request::post("/ok/upload")
            .header("host", "proxy.test")
            .header("x-request-id", "t-413")
            .body(Full::new(Bytes::from_static(b"more than ten bytes")))
            .unwrap(),
    )
    .await;
    assert_eq!(too_large.status, 413);
    let dots = raw(
        dp.addr,
        b"GET /ok/../etc HTTP/1.1\r\nHost: x\r\nX-Request-Id: t-400\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(dots.starts_with("HTTP/1.1 400"), "{dots}");
    let connect = raw(
        dp.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nX-Request-Id: t-405\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    let garbage = raw(dp.addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    // A chunked body that breaks its framing: the client is still there
    // and told 400, which is what the line says (not a cancel).
    let bad_chunk = raw(
        dp.addr,
        b"POST /ok/up HTTP/1.1\r\nHost: x\r\nX-Request-Id: t-chunk\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    )
    .await;
    assert!(bad_chunk.starts_with("HTTP/1.1 400"), "{bad_chunk}");

    // A WebSocket: the line is written at the 101.
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"GET /ws/rt HTTP/1.1\r\nHost: x\r\nX-Request-Id: t-ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    drop(stream);

    // A stream the client leaves after its first event.
    let mut response = send(dp.addr, get("/sse/stream", "t-cancel")).await;
    assert_eq!(response.status(), 200);
    let first = response.body_mut().frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(response);

    let lines = lines_by_id(&dp, 12).await;
    let text = std::fs::read_to_string(dp.dir.path(LOG)).unwrap();
    for secret in ["sk-client-secret", "K-secret"] {
        assert!(
            !text.contains(secret),
            "{secret} in the access log:\n{text}"
        );
    }

    let ok = &lines["t-ok"];
    let time = humantime::parse_rfc3339(ok["time"].as_str().unwrap()).unwrap();
    assert!(time >= before - Duration::from_secs(1) && time <= SystemTime::now());
    assert_eq!(ok["node_id"], "node-a");
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["prefix"], "/ok");
    assert_eq!(ok["path"], "/ok/v1/chat");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"].as_u64(), Some(ok_reply.body.len() as u64));
    let (duration, ttfb) = (
        ok["duration_ms"].as_f64().unwrap(),
        ok["ttfb_ms"].as_f64().unwrap(),
    );
    assert!(ttfb > 0.0 && ttfb <= duration, "{ttfb} {duration}");
    assert_eq!(ok["upstream"], echo.addr.to_string());
    assert_eq!(ok["upstream_addr"], echo.addr.to_string());
    assert_eq!(ok["cancelled"], false);
    assert_eq!(ok["user_agent"], "test-agent/1");

    for (id, status, error, prefix) in [
        ("t-404", 404, "no_mapping", "none"),
        ("t-dead", 502, "upstream_connect", "/dead"),
        ("t-reset", 502, "upstream_error", "/reset"),
        ("t-slow", 504, "upstream_timeout", "/slow"),
        ("t-413", 413, "payload_too_large", "/ok"),
        ("t-400", 400, "bad_request", "none"),
        ("t-405", 405, "method_not_allowed", "none"),
        ("t-chunk", 400, "bad_request", "/ok"),
    ] {
        let line = &lines[id];
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["error"], error, "{line}");
        assert_eq!(line["prefix"], prefix, "{line}");
        assert_eq!(line["cancelled"], false, "{line}");
        // No upstream connection answered these.
        assert_eq!(line["upstream_addr"], Value::Null, "{line}");
    }
    assert!(lines["t-slow"]["duration_ms"].as_f64().unwrap() >= 300.0);
    assert_eq!(lines["t-405"]["method"], "CONNECT");
    assert_eq!(lines["t-405"]["path"], "example.com:443");
    let unreadable: Vec<_> = lines.values().filter(|l| l["method"] == "-").collect();
    assert_eq!(unreadable.len(), 1, "{unreadable:#?}");
    let unreadable = unreadable[0];
    assert_eq!(unreadable["status"], 400);
    assert_eq!(unreadable["error"], "bad_request");
    assert_eq!(unreadable["path"], "-");

    let ws = &lines["t-ws"];
    assert_eq!(ws["status"], 101);
    assert_eq!(ws["prefix"], "/ws");
    assert_eq!(ws["error"], Value::Null);

    let cancelled = &lines["t-cancel"];
    assert_eq!(cancelled["status"], 200);
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["error"], Value::Null);
    assert!(cancelled["bytes_out"].as_u64().unwrap() >= first.into_data().unwrap().len() as u64);

    // A node that never got a snapshot answers 503 not_ready, logged too.
    let not_ready = DataPlane::start_redis(
        &format!("redis://{}/", refusing_addr()),
        &[
            ("API_PROXY_ACCESS_LOG", LOG),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
        ],
    );
    assert_eq!(call(not_ready.addr, get("/x", "t-503")).await.status, 503);
    let lines = lines_by_id(&not_ready, 1).await;
    assert_eq!(lines["t-503"]["error"], "not_ready");
    assert_eq!(lines["t-503"]["status"], 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_sent_upstream_and_echoed() {
    let echo = upstream::http(echo_handler()).await;
    // An upstream with ids of its own, as OpenAI's `x-request-id`.
    let own = upstream::http(handler(|_req: Request<Incoming>| async {
        Response::builder()
            .header("x-request-id", "req_upstream_1")
            .body(full("{}"))
            .unwrap()
    }))
    .await;
    let mappings = json!({"/echo": echo.url(), "/own": own.url()});
    let dp = DataPlane::start(
        &mappings.to_string(),
        &[
            ("API_PROXY_ACCESS_LOG", LOG),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
        ],
    );
    let seen_upstream = |reply: &apiproxy_tests::client::Reply| {
        let ids = reply.json()["headers"]["x-request-id"].clone();
        assert_eq!(ids.as_array().map(Vec::len), Some(1), "{ids}");
        ids[0].as_str().unwrap().to_owned()
    };

    // Kept: the client's sane id goes upstream and comes back.
    let kept = call(dp.addr, get("/echo/a", "client-id-1")).await;
    assert_eq!(kept.headers["x-request-id"], "client-id-1");
    assert_eq!(seen_upstream(&kept), "client-id-1");

    // Made: without one, or with one that is not sane (too long, spaces).
    let mut made = Vec::new();
    for id in [None, Some("x".repeat(129)), Some("has space".to_owned())] {
        let mut req = Request::get("/echo/b").header("host", "proxy.test");
        if let Some(id) = &id {
            req = req.header("x-request-id", id.as_str());
        }
        let reply = call(dp.addr, req.body(Full::default()).unwrap()).await;
        let echoed = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(seen_upstream(&reply), echoed);
        assert_ne!(Some(&echoed), id.as_ref());
        assert!(echoed.len() <= 128 && echoed.bytes().all(|b| b.is_ascii_graphic()));
        made.push(echoed);
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 3, "made ids are unique: {made:?}");

    // Over h2c the same.
    let h2 = send_h2c(dp.addr, get("/echo/c", "h2-id")).await;
    assert_eq!(h2.headers()["x-request-id"], "h2-id");
    let body = h2.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["headers"]["x-request-id"][0], "h2-id");

    // An error the proxy makes carries the id in its header and its JSON.
    let missing = call(dp.addr, get("/nothing", "err-id")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.headers["x-request-id"], "err-id");
    assert_eq!(missing.json()["error"]["request_id"], "err-id");
    let made_error = call(
        dp.addr,
        Request::get("/nothing")
            .header("host", "p")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let id = made_error.headers["x-request-id"].to_str().unwrap();
    assert_eq!(made_error.json()["error"]["request_id"], id);

    // The upstream's own id stays in X-Request-Id (SDKs read it there);
    // ours comes back beside it, and the log keeps both.
    let theirs = call(dp.addr, get("/own/x", "ours-1")).await;
    assert_eq!(theirs.headers["x-request-id"], "req_upstream_1");
    assert_eq!(theirs.headers["x-apiproxy-request-id"], "ours-1");
    assert!(kept.headers.get("x-apiproxy-request-id").is_none());

    let lines = lines_by_id(&dp, 8).await;
    assert_eq!(lines["client-id-1"]["status"], 200);
    for id in &made {
        assert_eq!(lines[id]["path"], "/echo/b");
    }
    assert_eq!(lines["h2-id"]["protocol"], "HTTP/2.0");
    assert_eq!(lines["err-id"]["error"], "no_mapping");
    assert_eq!(lines[id]["error"], "no_mapping");
    assert_eq!(lines["ours-1"]["upstream_request_id"], "req_upstream_1");
    assert!(lines["client-id-1"].get("upstream_request_id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_and_sampling_keep_every_failure() {
    let echo = upstream::http(echo_handler()).await;
    let mappings = json!({"/ok": echo.url(), "/dead": format!("http://{}", refusing_addr())});
    let dp = DataPlane::start(
        &mappings.to_string(),
        &[
            ("API_PROXY_ACCESS_LOG", LOG),
            ("API_PROXY_ACCESS_LOG_SAMPLE", "0"),
            ("API_PROXY_NODE_ID", "node-t"),
            ("API_PROXY_ACCESS_LOG_QUERY", "true"),
        ],
    );
    for i in 0..20 {
        assert_eq!(
            call(dp.addr, get("/ok/x", &format!("s-{i}"))).await.status,
            200
        );
    }
    assert_eq!(
        call(dp.addr, get("/missing?token=T-secret&q=1", "f-404"))
            .await
            .status,
        404
    );
    assert_eq!(call(dp.addr, get("/dead/y", "f-502")).await.status, 502);
    let text = eventually("two lines", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(dp.dir.path(LOG)).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    })
    .await;
    // Sampled at 0: none of the successes, both failures.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let missing = lines[0];
    assert!(missing.starts_with("127.0.0.1 - - ["), "{missing}");
    assert!(
        missing.contains("] \"GET /missing?token=***&q=1 HTTP/1.1\" 404 0 \"-\" \"-\" request_id=f-404 node_id=node-t prefix=none error=no_mapping bytes_in=0 duration_ms="),
        "{missing}"
    );
    assert!(lines[1].contains("\" 502 0 ") && lines[1].contains("error=upstream_connect"));
    assert!(!text.contains("T-secret"));
}

/// A sink that takes nothing (a pipe nobody reads): the queue fills, lines
/// are dropped and counted, and every request is still answered. Once the
/// pipe is read, what was queued arrives whole: lines read plus lines
/// dropped is every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_drops_lines_and_never_holds_a_request() {
    let echo = upstream::http(handler(|_req: Request<Incoming>| async {
        Response::new(full("ok"))
    }))
    .await;
    let dir = TempDir::new("fifo");
    let fifo = dir.path("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The reader opens the pipe (the node's open waits for it) and reads
    // nothing until told to.
    let (start_reading, read_now) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let mut pipe = std::fs::File::open(&fifo).unwrap();
            read_now.recv().unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
            text
        }
    });
    let mut dp = DataPlane::start(
        &apiproxy_tests::one_mapping("/ok", &echo.url()),
        &[
            ("API_PROXY_ACCESS_LOG", fifo.to_str().unwrap()),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
        ],
    );
    // More lines than the pipe, the writer's batch in hand and the two
    // workers' buffers (2 MiB each, about 6,000 of these lines) hold
    // together: about 19,000.
    const CLIENTS: usize = 16;
    const EACH: usize = 2_500;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = dp.addr;
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut ok = 0;
                for _ in 0..EACH {
                    let response = sender.send_request(get("/ok/x", "load")).await.unwrap();
                    if response.status() == 200 {
                        ok += 1;
                    }
                    response.into_body().collect().await.unwrap();
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    let total = CLIENTS * EACH;
    assert_eq!(ok, total, "every request answered while the sink stalled");
    let dropped = dp.metric("apiproxy_access_log_dropped_total").await as usize;
    assert!(dropped > 0, "the full buffer dropped lines");

    // Read the pipe; the node flushes what it queued and exits.
    start_reading.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    dp.signal("TERM");
    assert!(dp.wait_exit(Duration::from_secs(20)).success());
    let text = reader.join().unwrap();
    let mut read = 0;
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line ({e}): {line:?}"));
        assert_eq!(v["status"], 200);
        read += 1;
    }
    assert_eq!(read + dropped, total, "read {read}, dropped {dropped}");
}

/// logrotate's way: the file is moved away, SIGHUP, and the node writes a
/// new one. Under load, no line is lost or torn across the two files, and
/// the last lines are written at exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_file_under_load_without_losing_a_line() {
    let echo = upstream::http(handler(|_req: Request<Incoming>| async {
        Response::new(full("ok"))
    }))
    .await;
    let mut dp = DataPlane::start(
        &apiproxy_tests::one_mapping("/ok", &echo.url()),
        &[
            ("API_PROXY_ACCESS_LOG", LOG),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
        ],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|c| {
            let (addr, stop) = (dp.addr, stop.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                // Bounded: at most 20,000 requests a client.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 20_000 {
                    let reply = call(addr, get("/ok/x", &format!("c{c}-{sent}"))).await;
                    assert_eq!(reply.status, 200);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rotated = dp.dir.path("access.log.1");
    std::fs::rename(dp.dir.path(LOG), &rotated).unwrap();
    dp.signal("HUP");
    eventually("a new file", Duration::from_secs(10), || async {
        dp.dir.path(LOG).exists().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    dp.signal("TERM");
    assert!(dp.wait_exit(Duration::from_secs(20)).success());

    let old = read_json_lines(&rotated);
    let new = dp.access_log(LOG);
    assert!(
        !old.is_empty() && !new.is_empty(),
        "{} {}",
        old.len(),
        new.len()
    );
    let mut ids: Vec<String> = old
        .iter()
        .chain(&new)
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), total, "every request has its line");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "and only one");
}
