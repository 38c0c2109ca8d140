//! `deploy/local/apiproxy-local.sh`, the compose topology as plain
//! processes, run for real: it starts Redis, a control plane and two data
//! planes on free ports, a mapping made through the control plane is
//! routed by both data planes, and it stops every process cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::admin_call;
use apiproxy_tests::dataplane::binary;
use apiproxy_tests::deploy::{repo, run};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, TempDir};
use serde_json::json;

/// The local topology's run directory; on drop, stops whatever is still
/// running (the script first, then SIGKILL by recorded pid).
struct LocalTopology {
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl LocalTopology {
    fn script(&self, action: &str, timeout: Duration) -> (ExitStatus, String) {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("deploy/local/apiproxy-local.sh"))
            .arg(action)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        run(&mut cmd, timeout)
    }

    fn pids(&self) -> BTreeMap<String, u32> {
        std::fs::read_dir(&self.dir.0)
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let component = name.strip_suffix(".pid")?.to_owned();
                let pid = std::fs::read_to_string(self.dir.path(&name))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((component, pid))
            })
            .collect()
    }

    fn endpoints(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.dir.path("endpoints.env"))
            .expect("endpoints.env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.dir.path(&format!("{component}.log"))).unwrap_or_default()
    }
}

/// Running, and not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

impl Drop for LocalTopology {
    fn drop(&mut self) {
        if self.pids().is_empty() {
            return;
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.script("stop", Duration::from_secs(60))
        }));
        for (_, pid) in self.pids() {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if alive(pid) && (name.starts_with("apiproxy-") || name.starts_with("redis")) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("http://IP:PORT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_topology_script_routes_through_both_data_planes_and_stops_cleanly() {
    let upstream = upstream::http(echo_handler()).await;
    let token = "local-topology-admin-token-0123456789";
    let dir = TempDir::new("local-topology");
    let bin_dir = binary("apiproxy-dataplane").parent().unwrap().to_path_buf();
    assert!(
        bin_dir.join("apiproxy-controlplane").exists(),
        "build both binaries first"
    );
    let topology = LocalTopology {
        env: vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("LOCAL_RUN_DIR".into(), dir.0.to_str().unwrap().to_owned()),
            ("LOCAL_BIN_DIR".into(), bin_dir.to_str().unwrap().to_owned()),
            ("LOCAL_ADMIN_PORT".into(), "0".into()),
            ("LOCAL_PROXY_PORTS".into(), "0 0".into()),
            ("LOCAL_METRICS_PORTS".into(), "0 0".into()),
            ("LOCAL_STOP_TIMEOUT".into(), "20".into()),
            ("ADMIN_TOKEN".into(), token.into()),
            ("API_PROXY_STATS_INTERVAL".into(), "250ms".into()),
            ("API_PROXY_DRAIN_TIMEOUT".into(), "5s".into()),
            ("API_PROXY_LOG_FORMAT".into(), "json".into()),
        ],
        dir,
    };

    let (status, output) = topology.script("start", Duration::from_secs(90));
    assert!(status.success(), "start: {output}");
    let pids = topology.pids();
    let names: BTreeSet<&str> = pids.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["controlplane", "dataplane-1", "dataplane-2", "redis"])
    );
    assert!(pids.values().all(|&pid| alive(pid)), "{pids:?}");
    let endpoints = topology.endpoints();
    let cp = addr_of(&endpoints["CONTROLPLANE_URL"]);
    let nodes = [
        addr_of(&endpoints["DATAPLANE_1_URL"]),
        addr_of(&endpoints["DATAPLANE_2_URL"]),
    ];
    for addr in [cp, nodes[0], nodes[1]] {
        assert!(addr.ip().is_loopback(), "{addr}: 127.0.0.1 only");
    }

    // A second start is refused while it runs.
    let (status, output) = topology.script("start", Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("already running"), "{output}");

    // A mapping made through the control plane is routed by both.
    let reply = admin_call(
        cp,
        token,
        "POST",
        "/api/mappings",
        Some(json!({"prefix": "/e2e", "target": upstream.url()})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    for node in nodes {
        let reply = eventually("routed by the node", Duration::from_secs(5), || async {
            let reply = get_reply(node, "/e2e/hello?x=1").await;
            (reply.status == 200).then_some(reply)
        })
        .await;
        assert_eq!(reply.json()["uri"], "/hello?x=1");
    }

    // Both nodes are in the console, up, with the request counted.
    let listed = eventually(
        "both nodes in /api/nodes",
        Duration::from_secs(10),
        || async {
            let reply = admin_call(cp, token, "GET", "/api/nodes", None).await;
            if reply.status != 200 {
                return None;
            }
            let nodes = reply.json()["nodes"].as_array()?.clone();
            let ok = ["dataplane-1", "dataplane-2"].iter().all(|id| {
                nodes.iter().any(|n| {
                    n["node_id"] == *id
                        && n["state"] == "up"
                        && n["requests_total"].as_u64() >= Some(1)
                })
            });
            ok.then_some(nodes)
        },
    )
    .await;
    assert_eq!(listed.len(), 2, "{listed:?}");

    let (status, output) = topology.script("status", Duration::from_secs(30));
    assert!(status.success(), "status: {output}");
    assert_eq!(output.matches("/readyz 200").count(), 3, "{output}");

    // A clean stop: every process gone, each after its own clean shutdown.
    let (status, output) = topology.script("stop", Duration::from_secs(90));
    assert!(status.success(), "stop: {output}");
    for (component, pid) in &pids {
        assert!(
            !alive(*pid),
            "{component} (pid {pid}) still running after stop"
        );
        assert!(
            output.contains(&format!("{component}: stopped (pid {pid})")),
            "{output}"
        );
    }
    assert!(topology.pids().is_empty(), "pid files left behind");
    for dp in ["dataplane-1", "dataplane-2"] {
        let log = topology.log(dp);
        assert!(
            log.contains("SIGTERM received") && log.contains("\"stopped\""),
            "{dp} log:\n{log}"
        );
    }
    assert!(topology.log("controlplane").contains("\"stopped\""));
    assert!(topology.log("redis").contains("ready to exit"));
    assert!(
        !topology.log("controlplane").contains(token),
        "the admin token is never logged"
    );

    let (status, output) = topology.script("status", Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "status after stop: {output}");
}
