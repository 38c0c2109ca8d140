//! Clients: hyper over a fresh connection per call (so a test controls
//! exactly which connections exist), and raw bytes for malformed requests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request over a new HTTP/1.1 connection and returns the
/// response head with its still-streaming body. The connection closes when
/// the response is dropped.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.expect("send request")
}

/// The same over h2c (HTTP/2 with prior knowledge).
pub async fn send_h2c(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender.send_request(req).await.expect("send request")
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends a request with a complete body and collects the response.
pub async fn call(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let response = send(addr, req).await;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("response body within 30 s")
        .expect("response body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET` with no body.
pub async fn get_reply(addr: SocketAddr, path: &str) -> Reply {
    call(
        addr,
        Request::get(path)
            .header("host", "proxy.test")
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// `GET url` → (status, body text); for the metrics port.
pub async fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let reply = get_reply(
        authority.parse().expect("socket address"),
        if path.is_empty() { "/" } else { path },
    )
    .await;
    (reply.status.as_u16(), reply.text())
}

/// Writes raw bytes and reads the reply until the proxy closes the
/// connection (or 5 s pass).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
