//! A rolling restart of both data planes behind a simple load balancer
//! while clients stream: readiness turns 503 on SIGTERM, the balancer
//! stops sending new connections, in-flight streams finish in the drain,
//! and not one request fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_tests::upstream::{self, Upstream};
use apiproxy_tests::{eventually, DataPlane};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// An L4 balancer like a cloud one: health-checks each backend's
/// `/readyz` every 25 ms, sends each new connection to the next ready
/// backend, and tries the next one when a connect is refused (what
/// haproxy's `redispatch` does).
struct Balancer {
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn balancer(backends: Vec<(SocketAddr, SocketAddr)>) -> Balancer {
    let ready: Arc<Vec<AtomicBool>> =
        Arc::new(backends.iter().map(|_| AtomicBool::new(false)).collect());
    let checker = {
        let (ready, backends) = (ready.clone(), backends.clone());
        tokio::spawn(async move {
            loop {
                for (i, (_, metrics)) in backends.iter().enumerate() {
                    let ok = tokio::time::timeout(Duration::from_millis(200), is_ready(*metrics))
                        .await
                        .unwrap_or(false);
                    ready[i].store(ok, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        let next = AtomicUsize::new(0);
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let start = next.fetch_add(1, Ordering::Relaxed);
            let mut upstream = None;
            for k in 0..backends.len() {
                let i = (start + k) % backends.len();
                if !ready[i].load(Ordering::SeqCst) {
                    continue;
                }
                if let Ok(s) = TcpStream::connect(backends[i].0).await {
                    upstream = Some(s);
                    break;
                }
            }
            if let Some(mut upstream) = upstream {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        }
    });
    Balancer {
        addr,
        tasks: vec![checker, acceptor],
    }
}

/// `GET /readyz` answered 200; any failure (refused, reset) is "not ready".
async fn is_ready(metrics: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(metrics).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = Request::get("/readyz")
        .header("host", "lb")
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender
        .send_request(req)
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// One streamed request through `lb`: `Ok` when all ten events arrived.
async fn stream_once(lb: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(lb).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/s/events")
        .header("host", "lb")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .map_err(|_| "body not finished within 10 s".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if body.windows(13).any(|w| w == b"data: event 9") {
        Ok(())
    } else {
        Err(format!("stream cut: {}", String::from_utf8_lossy(&body)))
    }
}

fn node(mappings: &str, listen: &str, metrics: &str) -> DataPlane {
    DataPlane::start(
        mappings,
        &[
            ("API_PROXY_LISTEN", listen),
            ("API_PROXY_METRICS_LISTEN", metrics),
            ("API_PROXY_DRAIN_TIMEOUT", "10s"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_streaming_load_fails_no_request() {
    let up: Upstream = upstream::sse(10, Duration::from_millis(40)).await;
    let mappings = serde_json::json!({"/s": up.url()}).to_string();
    let mut nodes: Vec<DataPlane> = (0..2)
        .map(|_| node(&mappings, "127.0.0.1:0", "127.0.0.1:0"))
        .collect();
    // A restarted node comes back on its predecessor's addresses.
    let addrs: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.addr.to_string(), n.metrics_addr.to_string()))
        .collect();
    let lb = balancer(nodes.iter().map(|n| (n.addr, n.metrics_addr)).collect()).await;
    eventually(
        "balancer sees both ready",
        Duration::from_secs(5),
        || async { stream_once(lb.addr).await.ok() },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            let lb = lb.addr;
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                // Bounded: 500 streams per client at most.
                while !stop.load(Ordering::Relaxed) && ok + failed.len() < 500 {
                    match stream_once(lb).await {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (listen, metrics)) in addrs.iter().enumerate() {
        nodes[i].signal("TERM");
        assert_eq!(
            nodes[i].wait_exit(Duration::from_secs(15)).code(),
            Some(0),
            "node {i} did not drain and exit cleanly"
        );
        nodes[i] = node(&mappings, listen, metrics);
        eventually("restarted node ready", Duration::from_secs(5), || async {
            (nodes[i].readyz().await == 200).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!(
        "rolling restart: {ok} streams completed, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed streams: {failed:?}");
    assert!(ok >= 40, "too little traffic to judge: {ok}");
}
