//! TLS upstreams as production meets them: over HTTP/2 an nginx origin,
//! stream limits below the requests in flight, cold bursts, GOAWAY under
//! load and refused streams; over HTTP/1.1 the resumption of sessions;
//! over both, big bodies byte for byte.
//! Real servers on 127.0.0.1 over TLS, the real binary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_tests::client::{call, get_reply};
use apiproxy_tests::origins::Origin;
use apiproxy_tests::tls::{trusting_dataplane, TestCa};
use apiproxy_tests::upstream::{self, echo_handler, full, handler, Handler};
use apiproxy_tests::{eventually, one_mapping, DataPlane, TempDir};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;

/// A data plane mapping `/h2` to `https://localhost:{port}`, trusting `ca`.
fn proxy_to(ca: &TestCa, port: u16) -> (DataPlane, TempDir) {
    let target = format!("https://localhost:{port}");
    trusting_dataplane(ca, &one_mapping("/h2", &target), &[])
}

/// A handler that answers `ok` after `delay`, and the most requests it
/// was working on at once.
fn slow(delay: Duration) -> (Handler, Arc<AtomicUsize>) {
    let (working, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    let h = handler(move |_req: Request<Incoming>| {
        let (working, most) = (working.clone(), most.clone());
        async move {
            let now = working.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            working.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(full("ok"))
        }
    });
    (h, seen)
}

/// `n` GETs of `path` at once, each on its own client connection; the
/// statuses, in no order.
async fn burst(dp: &DataPlane, path: &'static str, n: usize) -> Vec<u16> {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        let addr = dp.addr;
        requests.spawn(async move {
            let reply = get_reply(addr, path).await;
            if reply.status != 200 {
                eprintln!("{} {}", reply.status, reply.text());
            }
            reply.status.as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = requests.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_h2_origin_answers_through_the_data_plane() {
    let ca = TestCa::new();
    let nginx = Origin::nginx(&ca);
    let target = format!("https://localhost:{}", nginx.addr.port());
    let (dp, _ca) = trusting_dataplane(
        &ca,
        &one_mapping("/h2", &target),
        &[
            ("API_PROXY_ACCESS_LOG", "access.log"),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
        ],
    );
    for path in ["/h2/v1/models", "/h2/v1/chat/completions"] {
        let reply = get_reply(dp.addr, path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), "nginx ok\n");
    }
    let body = Bytes::from(vec![b'x'; 20 * 1024]);
    let post = Request::post("/h2/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let reply = call(dp.addr, post).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // nginx took all three over HTTP/2 (ALPN), and answered them 200
    // (not 400, "client sent duplicate host header").
    let log = nginx.access_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log.iter().all(|line| line.starts_with("HTTP/2.0 200 /v1/")),
        "{log:?}"
    );
    // Our access log names the h2 connection's address beside the host.
    let ours = eventually(
        "three access-log lines",
        Duration::from_secs(10),
        || async {
            let lines = dp.access_log("access.log");
            (lines.len() >= 3).then_some(lines)
        },
    )
    .await;
    let port = format!(":{}", nginx.addr.port());
    for line in &ours {
        assert_eq!(line["upstream"], format!("localhost{port}"), "{line}");
        assert!(
            line["upstream_addr"]
                .as_str()
                .is_some_and(|a| a.ends_with(&port)),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_h2_origin_answers_through_the_data_plane() {
    let ca = TestCa::new();
    let haproxy = Origin::haproxy(&ca);
    let (dp, _ca) = proxy_to(&ca, haproxy.addr.port());
    let reply = get_reply(dp.addr, "/h2/v1/models").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "haproxy 2.0", "spoken to over HTTP/2");
    let post = Request::post("/h2/v1/chat/completions")
        .body(Full::new(Bytes::from(vec![b'x'; 20 * 1024])))
        .unwrap();
    let reply = call(dp.addr, post).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "haproxy 2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_a_connections_stream_limit_run_at_once_on_more_connections() {
    let ca = TestCa::new();
    let (h, most) = slow(Duration::from_millis(600));
    // Four streams a connection: 24 requests need six connections.
    let up = upstream::https_h2(h, &ca, 4, None).await;
    let (dp, _ca) = proxy_to(&ca, up.addr.port());
    let statuses = burst(&dp, "/h2/slow", 24).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        most.load(Ordering::SeqCst),
        24,
        "all 24 were at the origin at once"
    );
    let conns = up.counters.accepted();
    assert!(
        (6..=8).contains(&conns),
        "{conns} connections for 24 streams"
    );

    // Traffic that fits one connection's streams uses the oldest ones:
    // three at once stay within what is open.
    let statuses = burst(&dp, "/h2/slow", 3).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.counters.accepted(), conns, "no new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_waits_for_handshakes_under_way() {
    let ca = TestCa::new();
    // Answers take long enough for the whole burst to be in flight at
    // once, even on a busy machine.
    let (h, most) = slow(Duration::from_millis(1500));
    let up = upstream::https_h2(h, &ca, 50, None).await;
    let (dp, _ca) = proxy_to(&ca, up.addr.port());
    // 200 requests at a data plane that has no connection to the origin.
    let statuses = burst(&dp, "/h2/cold", 200).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let conns = up.counters.accepted();
    // ⌈200 ÷ 50⌉ + 2: a handshake per stream limit, not per request.
    assert!(conns <= 6, "{conns} TLS handshakes for a burst of 200");
    assert!(
        most.load(Ordering::SeqCst) >= 150,
        "the burst ran in parallel: {} at once",
        most.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_under_load_fails_no_request() {
    let ca = TestCa::new();
    // Every connection says GOAWAY after its tenth request, as nginx
    // does after `keepalive_requests`.
    let up = upstream::https_h2(echo_handler(), &ca, 100, Some(10)).await;
    let (dp, _ca) = proxy_to(&ca, up.addr.port());
    let failures = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, failures) = (dp.addr, failures.clone());
        clients.spawn(async move {
            for _ in 0..10 {
                let post = Request::post("/h2/echo")
                    .body(Full::new(Bytes::from(vec![b'p'; 3000])))
                    .unwrap();
                let reply = call(addr, post).await;
                if reply.status != 200 || reply.json()["body_len"] != 3000 {
                    eprintln!("failed: {} {}", reply.status, reply.text());
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let conns = up.counters.accepted();
    // Each connection takes its tenth request and those already on their
    // way, then goes away: several did, mid-load.
    assert!(
        conns >= 4,
        "200 requests, GOAWAY after 10: {conns} connections"
    );
    let refused = dp.logs().join("\n");
    assert!(!refused.contains("upstream request failed"), "{refused}");
}

/// An HTTP/2 origin on the h2 crate that refuses (`REFUSED_STREAM`) the
/// first `refuse` streams it sees and answers the others with the length
/// of the body it read; counts the streams.
async fn refusing_origin(ca: &TestCa, refuse: usize) -> (upstream::Upstream, Arc<AtomicUsize>) {
    let acceptor = ca.acceptor_offering(&[b"h2"]);
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let up = upstream::raw(move |stream| {
        let (acceptor, seen) = (acceptor.clone(), counter.clone());
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let Ok(mut conn) = h2::server::handshake(tls).await else {
                return;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut len = 0;
                    while let Some(Ok(data)) = body.data().await {
                        len += data.len();
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                    let response = http::Response::new(());
                    if let Ok(mut tx) = respond.send_response(response, false) {
                        let _ = tx.send_data(Bytes::from(len.to_string()), true);
                    }
                });
            }
        }
    })
    .await;
    (up, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_with_its_whole_body() {
    let ca = TestCa::new();
    let (up, seen) = refusing_origin(&ca, 1).await;
    let (dp, _ca) = proxy_to(&ca, up.addr.port());
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let post = Request::post("/h2/upload")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = call(dp.addr, post).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "10000",
        "the body arrived whole the second time"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2, "refused once, then served");
}

/// Serves HTTP/1.1 on `tls` until it closes, every request answered by
/// `answer`.
async fn serve_h1<F, Fut>(tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, answer: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<upstream::UpBody>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |_req| {
        let answer = answer();
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let io = hyper_util::rt::TokioIo::new(tls);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// An HTTP/1.1-only TLS origin that closes every connection after its
/// answer (`Connection: close`), counting full and resumed handshakes.
async fn closing_h1_origin(ca: &TestCa) -> (upstream::Upstream, Arc<[AtomicUsize; 2]>) {
    let acceptor = ca.acceptor_offering(&[b"http/1.1"]);
    let kinds = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counts = kinds.clone();
    let up = upstream::raw(move |stream| {
        let (acceptor, counts) = (acceptor.clone(), counts.clone());
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            counts[usize::from(resumed)].fetch_add(1, Ordering::SeqCst);
            serve_h1(tls, || async {
                http::Response::builder()
                    .header("connection", "close")
                    .body(full("ok"))
                    .unwrap()
            })
            .await;
        }
    })
    .await;
    (up, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_new_tls_connections_resumes_on_the_tickets_of_the_last() {
    let ca = TestCa::new();
    let (up, kinds) = closing_h1_origin(&ca).await;
    let (dp, _ca) = proxy_to(&ca, up.addr.port());
    // A first wave of 16 connections at once: full handshakes, each
    // leaving the server's tickets (rustls sends two a connection).
    let statuses = burst(&dp, "/h2/wave", 16).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let first_full = kinds[0].load(Ordering::SeqCst);
    assert_eq!(first_full + kinds[1].load(Ordering::SeqCst), 16);
    // The second wave of 16 resumes them all (rustls's own cache keeps 8
    // tickets a server: half of it paid full handshakes).
    let statuses = burst(&dp, "/h2/wave", 16).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        kinds[0].load(Ordering::SeqCst),
        first_full,
        "no full handshake in the second wave ({} resumed)",
        kinds[1].load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_in_any_case_reaches_an_h2_origin() {
    let ca = TestCa::new();
    let up = upstream::https_h2(echo_handler(), &ca, 100, None).await;
    let (dp, _ca) = proxy_to(&ca, up.addr.port());
    for _ in 0..3 {
        // HTTP/2 takes `TE` only as `trailers`, spelled so: h2 refused
        // the request, and the pool took that for a connection going away.
        let req = Request::get("/h2/te")
            .header("te", "Trailers")
            .body(Full::default())
            .unwrap();
        let reply = call(dp.addr, req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["headers"]["te"][0], "trailers");
    }
    assert_eq!(up.counters.accepted(), 1, "one connection kept for all");
}

/// An HTTP/1.1-only TLS origin that completes the handshake of its first
/// connection only (later ones get no answer to their ClientHello, as from
/// an origin too busy to take them), answering `ok` after `delay`; how
/// many connections it was offered, and how many of the unanswered ones
/// the proxy closed.
async fn one_connection_origin(
    ca: &TestCa,
    delay: Duration,
) -> (upstream::Upstream, Arc<[AtomicUsize; 2]>) {
    let acceptor = ca.acceptor_offering(&[b"http/1.1"]);
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let seen = counts.clone();
    let up = upstream::raw(move |mut stream| {
        let (acceptor, seen) = (acceptor.clone(), seen.clone());
        async move {
            if seen[0].fetch_add(1, Ordering::SeqCst) > 0 {
                // Unanswered until the proxy gives up on it and closes.
                let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
                seen[1].fetch_add(1, Ordering::SeqCst);
                return;
            }
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            serve_h1(tls, move || async move {
                tokio::time::sleep(delay).await;
                http::Response::new(full("ok"))
            })
            .await;
        }
    })
    .await;
    (up, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_takes_a_connection_freed_while_its_own_is_still_opening() {
    let ca = TestCa::new();
    // Answers take 1 s: the second request of the pair reaches the proxy
    // while the first holds the connection, however loaded the machine.
    let (up, counts) = one_connection_origin(&ca, Duration::from_secs(1)).await;
    let [offered, closed] = &*counts;
    let target = format!("https://localhost:{}", up.addr.port());
    let (dp, _ca) = trusting_dataplane(
        &ca,
        &one_mapping("/h1", &target),
        &[("API_PROXY_CONNECT_TIMEOUT", "4s")],
    );
    // The origin's one connection, made and left idle.
    assert_eq!(get_reply(dp.addr, "/h1/first").await.status, 200);
    assert_eq!(offered.load(Ordering::SeqCst), 1);
    // Two at once: one goes on the idle connection, the other finds none
    // and dials a second, whose handshake the origin never answers. It is
    // sent on the first connection once that one's answer has freed it
    // (about 1 s in, done at 2 s), rather than failing when its own dial
    // times out at 4 s.
    let started = std::time::Instant::now();
    let statuses = burst(&dp, "/h1/pair", 2).await;
    let took = started.elapsed();
    assert_eq!(statuses, [200, 200]);
    assert_eq!(
        offered.load(Ordering::SeqCst),
        2,
        "the second request dialled"
    );
    assert!(
        took < Duration::from_secs(4),
        "the second request waited {took:?} for a connection"
    );
    // The dial that lost went on alone, and its socket was closed when it
    // timed out.
    eventually(
        "the lost dial's socket closed",
        Duration::from_secs(6),
        || async { (closed.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
}

/// Byte `i` of a big body is `i % 251`: a byte lost, doubled or moved in
/// the TLS records' reassembly shows wherever it happens.
fn pattern(at: u64, len: usize) -> Bytes {
    (at..at + len as u64).map(|i| (i % 251) as u8).collect()
}

/// Streams `size` bytes of [`pattern`] into a channel body.
fn pattern_body(size: u64) -> upstream::UpBody {
    let (tx, body) = upstream::channel_body();
    tokio::spawn(async move {
        let mut at = 0;
        while at < size {
            let len = (size - at).min(64 * 1024) as usize;
            if tx.send(Ok(pattern(at, len))).await.is_err() {
                return;
            }
            at += len as u64;
        }
    });
    body
}

/// Reads a body to its end: its length if every byte is the pattern's,
/// `None` at the first that is not (or a failed read).
async fn pattern_length<B>(mut body: B) -> Option<u64>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut at = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            if data
                .iter()
                .enumerate()
                .any(|(k, &b)| b != ((at + k as u64) % 251) as u8)
            {
                return None;
            }
            at += data.len() as u64;
        }
    }
    Some(at)
}

/// 32 MiB down and 32 MiB up through a TLS upstream, over HTTP/1.1 and
/// over h2, every byte where it belongs: the TLS stream's partial writes,
/// records spanning reads and backpressure both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_cross_tls_upstreams_byte_for_byte() {
    const SIZE: u64 = 32 * 1024 * 1024;
    let ca = TestCa::new();
    let big = handler(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let length = pattern_length(req.into_body()).await;
            return http::Response::new(full(format!("{length:?}")));
        }
        http::Response::builder()
            .header("content-length", SIZE.to_string())
            .body(pattern_body(SIZE))
            .unwrap()
    });
    for (version, up) in [
        ("HTTP/1.1", upstream::https_h1(big.clone(), &ca).await),
        ("h2", upstream::https(big.clone(), &ca).await),
    ] {
        let (dp, _ca) = proxy_to(&ca, up.addr.port());
        let down = apiproxy_tests::client::send(
            dp.addr,
            Request::get("/h2/down")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
        assert_eq!(down.status(), 200, "{version}");
        assert_eq!(
            pattern_length(down.into_body()).await,
            Some(SIZE),
            "{version} download"
        );

        let up_req = Request::post("/h2/up")
            .header("content-length", SIZE.to_string())
            .body(pattern_body(SIZE))
            .unwrap();
        let answer = apiproxy_tests::client::send(dp.addr, up_req).await;
        assert_eq!(answer.status(), 200, "{version}");
        let text = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            &text[..],
            format!("{:?}", Some(SIZE)).as_bytes(),
            "{version} upload"
        );
    }
}
