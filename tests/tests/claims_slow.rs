//! README claims whose periods are fixed at a minute, so each test waits
//! the real period plus a bounded margin (about 90 s; the two run side by
//! side): the HTTP/2 listener's idle ping and the login lockout's end.

use std::time::{Duration, Instant};

use apiproxy_tests::client::call;
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{one_mapping, DataPlane};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// An HTTP/2 frame header: length, type, flags, stream 0.
fn frame(kind: u8, flags: u8) -> [u8; 9] {
    [0, 0, 0, kind, flags, 0, 0, 0, 0]
}

/// Reads one frame: its type and flags (the payload is skipped); `None`
/// when the connection ends.
async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, u8)> {
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4]))
}

/// README, Slow and hostile clients: HTTP/2 clients get "a ping after 60 s
/// of silence (closed if unanswered in 20 s)". A raw h2c client settles
/// the SETTINGS exchange, then stays silent and never answers: the PING
/// comes about 60 s later, and the connection closes about 20 s after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_h2_client_is_pinged_after_60_s_and_closed_20_s_later() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&one_mapping("/up", &up.url()), &[]);
    let mut tcp = TcpStream::connect(dp.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0)).await.unwrap();
    // The proxy's SETTINGS, and its ACK of ours, in either order.
    let (mut theirs, mut acked) = (false, false);
    while !(theirs && acked) {
        let (kind, flags) = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tcp))
            .await
            .expect("the proxy's SETTINGS within 5 s")
            .expect("connection open");
        match (kind, flags & ACK) {
            (SETTINGS, 0) => {
                theirs = true;
                tcp.write_all(&frame(SETTINGS, ACK)).await.unwrap();
            }
            (SETTINGS, _) => acked = true,
            _ => {}
        }
    }
    let silent_since = Instant::now();

    let ping = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match read_frame(&mut tcp).await {
                Some((PING, flags)) if flags & ACK == 0 => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await
    .expect("a PING within 90 s of silence");
    assert!(ping, "the connection closed before any PING");
    let pinged_after = silent_since.elapsed();
    assert!(
        (Duration::from_secs(59)..Duration::from_secs(75)).contains(&pinged_after),
        "PING after {pinged_after:?} of silence, not 60 s"
    );

    // Unanswered: closed (after a GOAWAY, or without) about 20 s later.
    let pinged = Instant::now();
    tokio::time::timeout(Duration::from_secs(40), async {
        while read_frame(&mut tcp).await.is_some() {}
    })
    .await
    .expect("closed within 40 s of an unanswered PING");
    let closed_after = pinged.elapsed();
    assert!(
        (Duration::from_secs(19)..Duration::from_secs(35)).contains(&closed_after),
        "closed {closed_after:?} after the PING, not 20 s"
    );
}

/// `GET /api/mappings` with `token` as the bearer token; the status.
async fn list_with(cp: &ControlPlane, token: &str) -> u16 {
    let reply = call(
        cp.addr,
        Request::get("/api/mappings")
            .header("host", "cp")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    reply.status.as_u16()
}

/// README, Control plane: "Ten failed logins from one address within a
/// minute lock it out for the rest of that minute (429)." After ten wrong
/// tokens even the right one gets 429, until the minute since the first
/// failure is over; then it gets 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_lockout_ends_after_its_minute() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    assert_eq!(list_with(&cp, ADMIN_TOKEN).await, 200);

    let first_failure = Instant::now();
    for _ in 0..10 {
        assert_eq!(list_with(&cp, "a-wrong-token-0123456789").await, 401);
    }
    assert_eq!(list_with(&cp, ADMIN_TOKEN).await, 429, "locked out");

    // Polled once a second, bounded at 90 s.
    let unlocked_after = loop {
        let elapsed = first_failure.elapsed();
        assert!(
            elapsed < Duration::from_secs(90),
            "still locked out after {elapsed:?}"
        );
        match list_with(&cp, ADMIN_TOKEN).await {
            200 => break first_failure.elapsed(),
            429 => tokio::time::sleep(Duration::from_secs(1)).await,
            other => panic!("unexpected status {other}"),
        }
    };
    assert!(
        unlocked_after >= Duration::from_secs(59),
        "the lockout ended after {unlocked_after:?}, before its minute"
    );
}
