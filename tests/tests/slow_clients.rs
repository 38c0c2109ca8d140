//! Slow and stalled clients against the real binary: a client may hold a
//! connection only while it makes progress. Slow heads meet the header
//! read timeout, stalled uploads and readers that stop reading meet the
//! idle timeout, buffering stays bounded meanwhile, and everything the
//! proxy opened for them is closed afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiproxy_tests::client::get_reply;
use apiproxy_tests::upstream::{self, channel_body, echo_handler, handler};
use apiproxy_tests::{one_mapping, DataPlane};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const IDLE: Duration = Duration::from_secs(2);

/// Reads until the peer closes (or resets); returns the bytes read, or
/// `None` if it was still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_meet_the_header_read_timeout() {
    // Slowloris: 50 connections that each send one header line a second
    // and never finish the head; one that sends nothing at all; one that
    // sends half the HTTP/2 preface and stops.
    const SLOW: usize = 50;
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&one_mapping("/up", &up.url()), &[]);
    assert_eq!(get_reply(dp.addr, "/up/warm").await.status, 200);
    let baseline = dp.open_fds();

    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..SLOW + 2 {
        let addr = dp.addr;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let opened = Instant::now();
            if i < SLOW {
                stream.write_all(b"GET /up/x HTTP/1.1\r\n").await.unwrap();
            } else if i == SLOW + 1 {
                stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
            }
            // Bounded: the test fails long before 60 lines.
            for line in 0..60 {
                let mut byte = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await {
                    Ok(Ok(0) | Err(_)) => return Some(opened.elapsed()),
                    Ok(Ok(_)) => {
                        // A 408 may come before the close: read it out.
                        return read_until_closed(&mut stream, Duration::from_secs(5))
                            .await
                            .map(|_| opened.elapsed());
                    }
                    Err(_) if i < SLOW => {
                        let _ = stream
                            .write_all(format!("x-{line}: 1\r\n").as_bytes())
                            .await;
                    }
                    Err(_) => {}
                }
            }
            None
        }));
    }
    // Meanwhile everybody else is served.
    for n in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let reply = get_reply(dp.addr, &format!("/up/meanwhile{n}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    for (i, client) in clients.into_iter().enumerate() {
        let held = client
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("slow client {i} still open after 60 s"));
        assert!(
            (Duration::from_secs(29)..Duration::from_secs(36)).contains(&held),
            "slow client {i} was closed after {held:?}, want the 30 s header timeout"
        );
    }
    println!(
        "{} slow heads closed after the header timeout; all done {:?} after the first",
        SLOW + 2,
        started.elapsed()
    );
    assert_eq!(
        up.counters.accepted(),
        1,
        "only the warm-up and the meanwhile requests may reach the upstream, on one connection"
    );
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_meets_the_idle_timeout() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(
        &one_mapping("/up", &up.url()),
        &[("API_PROXY_IDLE_TIMEOUT", "2s")],
    );
    assert_eq!(get_reply(dp.addr, "/up/warm").await.status, 200);
    let baseline = dp.open_fds();

    let mut stream = TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"POST /up/x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let stalled = Instant::now();
    let reply = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the proxy closed the stalled upload");
    let took = stalled.elapsed();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("idle timeout"), "{reply}");
    assert!(
        (IDLE..IDLE + Duration::from_secs(2)).contains(&took),
        "closed after {took:?}"
    );
    drop(stream);
    // The upstream request was abandoned with the upload: nothing of it
    // stays open on either side.
    apiproxy_tests::eventually(
        "upstream connections back to one",
        Duration::from_secs(5),
        || async { (up.counters.open() <= 1).then_some(()) },
    )
    .await;
    dp.assert_fds_return_to(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_the_idle_timeout() {
    // The upstream would send 1 GiB as fast as it is taken.
    const CHUNK: usize = 64 * 1024;
    const LIMIT: u64 = 1 << 30;
    let sent = Arc::new(AtomicU64::new(0));
    let (ended_tx, ended_rx) = oneshot::channel::<Instant>();
    let ended_tx = Arc::new(std::sync::Mutex::new(Some(ended_tx)));
    let up = {
        let (sent, ended_tx) = (sent.clone(), ended_tx.clone());
        upstream::http(handler(move |_req| {
            let (sent, ended_tx) = (sent.clone(), ended_tx.clone());
            async move {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![b'x'; CHUNK]);
                    while sent.load(Ordering::Relaxed) < LIMIT {
                        if tx.send(Ok(chunk.clone())).await.is_err() {
                            break;
                        }
                        sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
                    }
                    if let Some(ended) = ended_tx.lock().unwrap().take() {
                        let _ = ended.send(Instant::now());
                    }
                });
                http::Response::new(body)
            }
        }))
        .await
    };
    let dp = DataPlane::start(
        &one_mapping("/up", &up.url()),
        &[("API_PROXY_IDLE_TIMEOUT", "2s")],
    );
    let baseline = dp.open_fds();
    let rss_before = dp.rss_bytes();

    let mut stream = TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(b"GET /up/big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Now the client reads nothing more. Wait until the upstream stops
    // being able to send: every buffer on the way is full.
    let mut last = 0;
    let stalled = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break Instant::now();
        }
        assert!(
            now < LIMIT,
            "the upstream sent all of it: nothing pushed back"
        );
        last = now;
    };
    let rss_growth = dp.rss_bytes().saturating_sub(rss_before);
    let ended = tokio::time::timeout(Duration::from_secs(10), ended_rx)
        .await
        .expect("the proxy let go of the upstream body after the idle timeout")
        .unwrap();
    let took = ended.duration_since(stalled);
    println!(
        "stopped reader: {} KiB left the upstream before backpressure, proxy RSS +{} KiB, \
         upstream released {took:?} after the stall",
        last / 1024,
        rss_growth / 1024
    );
    assert!(rss_growth < 8 << 20, "proxy RSS grew {rss_growth} bytes");
    assert!(
        took < IDLE + Duration::from_secs(2),
        "released after {took:?}"
    );
    // The client connection is closed too, not left half-open.
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "client connection still open"
    );
    drop(stream);
    dp.assert_fds_return_to(baseline).await;
}
