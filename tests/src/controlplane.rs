//! The real control-plane binary as a child process.

use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::client::{call, get_reply, Reply};
use crate::dataplane::spawn_logged;
use crate::TempDir;

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// The secret the data planes of the stats tests sign their pushes with.
pub const NODE_TOKEN: &str = "e2e-node-token-0123456789abcdef";

pub struct ControlPlane {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl ControlPlane {
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> ControlPlane {
        let secrets = [
            ("API_PROXY_REDIS_URL", redis_url),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ];
        let all: Vec<(&str, &str)> = secrets.iter().chain(env).copied().collect();
        ControlPlane::start_env(&all)
    }

    /// A control plane on a free port of 127.0.0.1 with `env` and no
    /// Redis URL or admin token of its own: `env` gives them (or their
    /// `NAME_FILE` forms).
    pub fn start_env(env: &[(&str, &str)]) -> ControlPlane {
        let dir = TempDir::new("cp");
        let base = [
            ("API_PROXY_ADMIN_LISTEN", "127.0.0.1:0"),
            ("API_PROXY_LOG_FORMAT", "json"),
        ];
        let all: Vec<(&str, &str)> = base.iter().chain(env).copied().collect();
        let (child, logs, addrs) = spawn_logged(
            "apiproxy-controlplane",
            &dir,
            &all,
            &[],
            &["admin_addr"],
            None,
        );
        ControlPlane {
            child,
            addr: addrs[0],
            logs,
            _dir: dir,
        }
    }

    /// A control plane that takes stats pushes signed with [`NODE_TOKEN`]
    /// and calls a node `down` after 2 s of silence. The first one listens
    /// on `port` 0 (any free port, read from `addr`); a replacement is
    /// given that port, to come back on the same address.
    pub fn start_for_nodes(redis_url: &str, port: u16) -> ControlPlane {
        let listen = format!("127.0.0.1:{port}");
        ControlPlane::start(
            redis_url,
            &[
                ("API_PROXY_ADMIN_LISTEN", &listen),
                ("API_PROXY_NODE_TOKEN", NODE_TOKEN),
                ("API_PROXY_NODE_TIMEOUT", "2s"),
            ],
        )
    }

    /// An admin API call with the bearer token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
        admin_call(self.addr, ADMIN_TOKEN, method, path, body).await
    }

    /// SIGKILL: no drain, no goodbye.
    /// `POST /api/mappings` `{"prefix", "target"}` with the bearer token.
    pub async fn create(&self, prefix: &str, target: &str) -> Reply {
        let body = serde_json::json!({"prefix": prefix, "target": target});
        self.admin("POST", "/api/mappings", Some(body)).await
    }

    /// Waits (at most 10 s) until `/api/nodes` lists `node_id` as `up`.
    pub async fn wait_node_up(&self, node_id: &str) {
        crate::eventually(
            "node listed",
            std::time::Duration::from_secs(10),
            || async {
                let listed = self.admin("GET", "/api/nodes", None).await.json();
                listed["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["node_id"] == node_id && n["state"] == "up")
                    .then_some(())
            },
        )
        .await;
    }

    /// Waits (at most 10 s) until every node `/api/nodes` lists pushed a
    /// batch that the control plane applied later than `after` from now:
    /// three push intervals, for example, is three more batches each.
    pub async fn wait_batches_after(&self, after: std::time::Duration) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let settled = unix_ms + after.as_millis() as u64;
        crate::eventually(
            "more batches",
            std::time::Duration::from_secs(10),
            || async {
                let listed = self.admin("GET", "/api/nodes", None).await.json();
                let nodes = listed["nodes"].as_array()?.clone();
                (!nodes.is_empty()
                    && nodes
                        .iter()
                        .all(|n| n["last_seen"].as_u64().is_some_and(|t| t > settled)))
                .then_some(())
            },
        )
        .await;
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        crate::dataplane::send_signal(self.pid(), sig);
    }

    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        crate::dataplane::wait_exit(&mut self.child, timeout)
    }
}

/// An admin API call to the control plane at `addr` with `token` as the
/// bearer token (a JSON body when there is one): for control planes no
/// [`ControlPlane`] started.
pub async fn admin_call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "controlplane")
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    call(addr, req.body(Full::new(body)).unwrap()).await
}

/// `GET /stats` from the control plane on `port`; `None` unless 200.
pub async fn stats(port: u16) -> Option<serde_json::Value> {
    let reply = get_reply(([127, 0, 0, 1], port).into(), "/stats").await;
    (reply.status == 200).then(|| reply.json())
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        crate::assert_no_secrets_logged("apiproxy-controlplane", &self.logs);
    }
}
