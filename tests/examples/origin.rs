//! A benchmark origin (hyper), plain or TLS with HTTP/2 and HTTP/1.1 by
//! ALPN, for `bench/bench.py h2`:
//!
//! - `/sse` (GET or POST; a POST body is read first): `text/event-stream`,
//!   `--events` events `--gap-ms` apart, each `data: {"t":<unix ns>,...}`
//!   padded to `--event-bytes`; the client measures each event's age.
//! - `/stats`: `{"connections":N,"handshakes_full":N,"handshakes_resumed":N}`.
//! - anything else: after `--delay-ms`, 200 with `--body-bytes` bytes (a
//!   request body is read first).
//!
//! With `--cert-dir DIR` it serves TLS with a fresh test CA, writing
//! `ca.pem`, `cert.pem` and `key.pem` there for the proxies and nginx.
//!
//! ```sh
//! cargo run --release -p apiproxy-tests --example origin -- --listen 127.0.0.1:18443 \
//!     --cert-dir /tmp/origin-tls --delay-ms 1000 --max-streams 128
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiproxy_tests::tls::TestCa;
use apiproxy_tests::upstream::{channel_body, count_body, full, UpBody};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The benchmark origin (see the module's comment).
#[derive(Clone, Debug, clap::Parser)]
struct Options {
    #[arg(long, default_value = "127.0.0.1:18443")]
    listen: SocketAddr,
    /// Serve TLS, with a fresh test CA written here.
    #[arg(long)]
    cert_dir: Option<String>,
    /// Serve the certificate already in `--cert-dir` (another origin of
    /// the same run made it) instead of making a new one.
    #[arg(long)]
    reuse_cert: bool,
    /// ALPN protocols offered, in order.
    #[arg(long, default_value = "h2,http/1.1", value_delimiter = ',')]
    alpn: Vec<String>,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    #[arg(long, default_value_t = 128)]
    max_streams: u32,
    #[arg(long, default_value_t = 50)]
    events: usize,
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    full: AtomicUsize,
    resumed: AtomicUsize,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One SSE event: its send time, padded to `size` bytes.
fn event(size: usize) -> Bytes {
    let head = format!("data: {{\"t\":{},\"pad\":\"", now_ns());
    let pad = size.saturating_sub(head.len() + 4);
    Bytes::from(format!("{head}{}\"}}\n\n", "x".repeat(pad)))
}

async fn answer(o: Arc<Options>, counts: Arc<Counts>, req: Request<Incoming>) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    if path == "/stats" {
        let json = serde_json::json!({
            "connections": counts.connections.load(Ordering::SeqCst),
            "handshakes_full": counts.full.load(Ordering::SeqCst),
            "handshakes_resumed": counts.resumed.load(Ordering::SeqCst),
        });
        return Response::new(full(json.to_string()));
    }
    count_body(req.into_body()).await;
    if path == "/sse" {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(o.gap_ms));
            for _ in 0..o.events {
                every.tick().await;
                if tx.send(Ok(event(o.event_bytes))).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(o.delay_ms)).await;
    Response::new(full(vec![b'x'; o.body_bytes]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let o = Arc::new(<Options as clap::Parser>::parse());
    let acceptor = o.cert_dir.as_ref().map(|dir| {
        let ca = if o.reuse_cert {
            let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
            TestCa::from_pem(&read("ca.pem"), &read("cert.pem"), &read("key.pem"))
        } else {
            let ca = TestCa::new();
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(format!("{dir}/ca.pem"), &ca.ca_pem).unwrap();
            std::fs::write(format!("{dir}/cert.pem"), &ca.server_cert_pem).unwrap();
            std::fs::write(format!("{dir}/key.pem"), &ca.server_key_pem).unwrap();
            ca
        };
        let alpn: Vec<&[u8]> = o.alpn.iter().map(|p| p.as_bytes()).collect();
        ca.acceptor_offering(&alpn)
    });
    let listener = tokio::net::TcpListener::bind(o.listen).await.unwrap();
    let counts = Arc::new(Counts::default());
    eprintln!("origin listening on {}", o.listen);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counts.connections.fetch_add(1, Ordering::SeqCst);
        let (o, counts, acceptor) = (o.clone(), counts.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let service = {
                let (o, counts) = (o.clone(), counts.clone());
                service_fn(move |req| {
                    let (o, counts) = (o.clone(), counts.clone());
                    async move { Ok::<_, Infallible>(answer(o, counts, req).await) }
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(o.max_streams);
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let resumed =
                        tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    let counter = if resumed {
                        &counts.resumed
                    } else {
                        &counts.full
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}
