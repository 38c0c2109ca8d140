//! Our HTTP/1.1 listener against the real binary, with raw sockets:
//! pipelined requests, `Expect: 100-continue`, HTTP/1.0 keep-alive,
//! chunked uploads, and responses of unknown length framed for what the
//! client speaks (chunks for HTTP/1.1, the close for HTTP/1.0).

use std::net::SocketAddr;
use std::time::Duration;

use apiproxy_tests::client::raw;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{one_mapping, DataPlane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// The next bytes from `stream` (a few seconds at most; none is a failure).
async fn read_some(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .expect("read");
    assert!(n > 0, "closed before {what}");
    buf[..n].to_vec()
}

/// Reads one response with a Content-Length: its head and its body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        got.extend(read_some(stream, "a whole response head").await);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = got[head_end..].to_vec();
    while body.len() < length {
        body.extend(read_some(stream, "the whole body").await);
    }
    assert_eq!(body.len(), length, "bytes past the body: {head}");
    (head, String::from_utf8(body).unwrap())
}

/// Whether the proxy closes `stream` (reads end) within a few seconds.
async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

async fn echo_proxy() -> (upstream::Upstream, DataPlane, SocketAddr) {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&one_mapping("/up", &up.url()), &[]);
    let addr = dp.addr;
    (up, dp, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (_up, _dp, addr) = echo_proxy().await;
    let reply = raw(
        addr,
        b"GET /up/first HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /up/second HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
          GET /up/third HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    let first = reply.find("/first").expect("first");
    let second = reply.find("/second").expect("second");
    let third = reply.find("/third").expect("third");
    assert!(first < second && second < third, "{reply}");
    assert!(reply.contains(r#""body_len":3"#), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (_up, _dp, addr) = echo_proxy().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /up/x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    // Nothing of the body is sent until the proxy says to go on.
    let mut interim = [0u8; 25];
    tokio::time::timeout(WAIT, stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(body.contains(r#""body_len":5"#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_that_expects_100_continue_gets_no_go_ahead() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(
        &one_mapping("/up", &up.url()),
        &[("API_PROXY_MAX_REQUEST_BODY", "10")],
    );
    let mut stream = TcpStream::connect(dp.addr).await.unwrap();
    stream
        .write_all(
            b"POST /up/x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 11\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(body.contains("payload_too_large"), "{body}");
    assert_eq!(
        up.counters.accepted(),
        0,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keeps_the_connection_only_when_asked() {
    let (_up, _dp, addr) = echo_proxy().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /up/a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.contains("\r\nconnection: keep-alive\r\n"), "{head}");
    assert!(body.contains("/a"), "{body}");
    // The same connection serves a second request, and closes after it.
    stream
        .write_all(b"GET /up/b HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(body.contains("/b"), "{body}");
    assert!(
        closes(&mut stream).await,
        "HTTP/1.0 without keep-alive must close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_with_trailers_arrives_whole() {
    let (_up, _dp, addr) = echo_proxy().await;
    let reply = raw(
        addr,
        b"POST /up/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains(r#""body_len":11"#), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_unknown_length_is_chunked_for_http11_and_closed_for_http10() {
    let up = upstream::sse(3, Duration::from_millis(10)).await;
    let dp = DataPlane::start(&one_mapping("/sse", &up.url()), &[]);
    let events = "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n";

    let chunked = raw(
        dp.addr,
        b"GET /sse/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        chunked.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{chunked}"
    );
    assert!(
        chunked.ends_with("\r\n0\r\n\r\n"),
        "no last chunk: {chunked:?}"
    );
    let body = &chunked[chunked.find("\r\n\r\n").unwrap() + 4..];
    let mut decoded = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk-size line");
        let size = usize::from_str_radix(size, 16).expect("hex size");
        if size == 0 {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    assert_eq!(decoded, events);

    let until_close = raw(dp.addr, b"GET /sse/x HTTP/1.0\r\n\r\n").await;
    assert!(!until_close.contains("transfer-encoding"), "{until_close}");
    assert!(
        until_close.contains("\r\nconnection: close\r\n"),
        "{until_close}"
    );
    assert!(until_close.ends_with(events), "{until_close:?}");
}
