//! The real data-plane binary as a child process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::TempDir;

/// Path of a workspace binary: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A started binary: the child, its log lines so far and to come, and the
/// addresses its start-up line named.
type Spawned = (Child, Arc<Mutex<Vec<String>>>, Vec<SocketAddr>);

/// Spawns a workspace binary with a clean environment plus `env`,
/// collecting its (JSON) log lines; returns the child, the logs and the
/// first log line that has all of `addr_fields`, parsed. With `etc_hosts`,
/// the binary runs in a private mount namespace where that file is
/// `/etc/hosts`: its real resolver (getaddrinfo) then answers whatever the
/// test writes there, and nothing outside the process sees it.
///
/// Listeners on port 0 report where they bound in that line. A fixed
/// address (a process restarted where its predecessor listened) may be
/// held for a moment by another process: a binary that exits because its
/// address is in use is started again, for up to 10 s.
pub(crate) fn spawn_logged(
    name: &str,
    dir: &TempDir,
    env: &[(&str, &str)],
    args: &[&str],
    addr_fields: &'static [&'static str],
    etc_hosts: Option<&std::path::Path>,
) -> Spawned {
    let command = || {
        let mut cmd = match etc_hosts {
            None => Command::new(binary(name)),
            Some(hosts) => {
                // `unshare` execs, then `sh` execs: the child's PID is the
                // binary's own.
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--", "sh", "-c"])
                    .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
                    .arg(hosts)
                    .arg(binary(name));
                cmd
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .current_dir(&dir.0)
            .args(args)
            .envs(env.iter().copied());
        cmd
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..50 {
        match spawn_once(name, command(), addr_fields) {
            Ok(spawned) => return spawned,
            Err(logs)
                if Instant::now() < deadline
                    && logs.iter().any(|l| l.contains("Address already in use")) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(logs) => panic!("{name} did not start; logs:\n{}", logs.join("\n")),
        }
    }
    panic!("{name} did not start: its address stayed in use");
}

/// One start of [`spawn_logged`]; the logs of a child that exited or did
/// not report its addresses within 20 s (killed, then).
fn spawn_once(
    name: &str,
    mut cmd: Command,
    addr_fields: &'static [&'static str],
) -> Result<Spawned, Vec<String>> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let addrs: Option<Vec<SocketAddr>> = addr_fields
                    .iter()
                    .map(|f| v[*f].as_str().and_then(|a| a.parse().ok()))
                    .collect();
                if let Some(addrs) = addrs {
                    let _ = tx.send(addrs);
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addrs) => Ok((child, logs, addrs)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let lines = logs.lock().unwrap().clone();
            Err(lines)
        }
    }
}

/// Polls every node without pause until all of them answer 200 for
/// `path`: how the benchmarks time a change reaching the fleet. Panics
/// after 5 s.
pub async fn wait_all_route(nodes: &[DataPlane], path: &str) {
    wait_all_answer(nodes, path, &[], 200).await
}

/// Polls every node without pause, each `GET path` with `headers` on a
/// fresh connection, until all of them answer `status`. Panics after 5 s.
pub async fn wait_all_answer(
    nodes: &[DataPlane],
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
) {
    let start = Instant::now();
    let mut done = vec![false; nodes.len()];
    while done.iter().any(|d| !d) {
        for (n, node) in nodes.iter().enumerate() {
            if done[n] {
                continue;
            }
            let mut req = http::Request::get(path).header("host", "proxy.test");
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let req = req.body(http_body_util::Full::default()).unwrap();
            done[n] = crate::client::call(node.addr, req).await.status == status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{path} not answered {status} by every node within 5 s"
        );
    }
}

/// A running `apiproxy-dataplane`, stopped (SIGKILL) on drop if still alive.
pub struct DataPlane {
    child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
}

impl DataPlane {
    /// Starts a data plane in standalone mode with `mappings` (JSON object
    /// text) and the extra environment, and waits until it is listening.
    pub fn start(mappings: &str, env: &[(&str, &str)]) -> DataPlane {
        DataPlane::start_file(mappings, env, None)
    }

    /// Starts a data plane in Redis mode. It listens at once; readiness
    /// follows Redis (or the snapshot cache).
    pub fn start_redis(url: &str, env: &[(&str, &str)]) -> DataPlane {
        DataPlane::spawn(
            TempDir::new("dp"),
            &[("API_PROXY_REDIS_URL", url)],
            env,
            None,
        )
    }

    /// Starts a data plane whose mapping source is in `env` alone (e.g.
    /// `API_PROXY_REDIS_URL_FILE`).
    pub fn start_env(env: &[(&str, &str)]) -> DataPlane {
        DataPlane::spawn(TempDir::new("dp"), &[], env, None)
    }

    /// A Redis-mode node whose resync does not run during a test (10
    /// minutes): only announcements (or a reload) carry changes to it.
    pub fn start_redis_without_resync(url: &str) -> DataPlane {
        DataPlane::start_redis(url, &[("API_PROXY_RESYNC_INTERVAL", "10m")])
    }

    /// Starts a data plane in Redis mode that pushes stats every 200 ms to
    /// `controlplane_url` as `node_id`, signed with
    /// [`crate::controlplane::NODE_TOKEN`]; `extra` may override any of it.
    pub fn start_pushing(
        redis_url: &str,
        controlplane_url: &str,
        node_id: &str,
        extra: &[(&str, &str)],
    ) -> DataPlane {
        let mut env = vec![
            ("API_PROXY_CONTROLPLANE_URL", controlplane_url),
            ("API_PROXY_NODE_TOKEN", crate::controlplane::NODE_TOKEN),
            ("API_PROXY_NODE_ID", node_id),
            ("API_PROXY_STATS_INTERVAL", "200ms"),
        ];
        env.extend_from_slice(extra);
        DataPlane::start_redis(redis_url, &env)
    }

    /// Starts a data plane in standalone mode whose `/etc/hosts` is the
    /// file `etc_hosts`, rewritable by the test (in place: the file is
    /// bind-mounted, so a rename would not be seen). Needs root.
    pub fn start_with_hosts(
        mappings: &str,
        env: &[(&str, &str)],
        etc_hosts: &std::path::Path,
    ) -> DataPlane {
        DataPlane::start_file(mappings, env, Some(etc_hosts))
    }

    fn start_file(
        mappings: &str,
        env: &[(&str, &str)],
        etc_hosts: Option<&std::path::Path>,
    ) -> DataPlane {
        let dir = TempDir::new("dp");
        let file = dir.path("mappings.json");
        std::fs::write(&file, mappings).expect("write mappings");
        let file = file.to_str().expect("utf-8 path").to_owned();
        DataPlane::spawn(dir, &[("API_PROXY_MAPPINGS_FILE", &file)], env, etc_hosts)
    }

    fn spawn(
        dir: TempDir,
        source: &[(&str, &str)],
        env: &[(&str, &str)],
        etc_hosts: Option<&std::path::Path>,
    ) -> DataPlane {
        let defaults = [
            ("API_PROXY_LISTEN", "127.0.0.1:0"),
            ("API_PROXY_METRICS_LISTEN", "127.0.0.1:0"),
            ("API_PROXY_LOG_FORMAT", "json"),
            ("API_PROXY_WORKERS", "2"),
            ("API_PROXY_TARGET_POLICY", "any"),
        ];
        let all: Vec<(&str, &str)> = defaults.iter().chain(source).chain(env).copied().collect();
        let (child, logs, addrs) = spawn_logged(
            "apiproxy-dataplane",
            &dir,
            &all,
            &[],
            &["proxy_addr", "metrics_addr"],
            etc_hosts,
        );
        DataPlane {
            child,
            addr: addrs[0],
            metrics_addr: addrs[1],
            logs,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Fetches the metrics page and parses its samples (`name{labels}` → value).
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) =
            crate::client::get(&format!("http://{}/metrics", self.metrics_addr)).await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
            .collect()
    }

    pub async fn metric(&self, key: &str) -> f64 {
        self.metrics().await.get(key).copied().unwrap_or(0.0)
    }

    /// `/readyz` status code.
    pub async fn readyz(&self) -> u16 {
        crate::client::get(&format!("http://{}/readyz", self.metrics_addr))
            .await
            .0
    }

    /// Waits until `path` answers `status` through the proxy.
    pub async fn wait_status(&self, path: &str, status: u16) {
        crate::eventually(
            &format!("{path} -> {status}"),
            Duration::from_secs(5),
            || async {
                (crate::client::get_reply(self.addr, path).await.status == status).then_some(())
            },
        )
        .await;
    }

    /// Waits until the sample `key` reads `value`.
    pub async fn wait_metric(&self, key: &str, value: f64) {
        crate::eventually(key, Duration::from_secs(3), || async {
            (self.metric(key).await == value).then_some(())
        })
        .await;
    }

    /// Waits until the open descriptors are back to `baseline`.
    pub async fn assert_fds_return_to(&self, baseline: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.open_fds();
            if now <= baseline {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "descriptors leaked: {now} open, baseline {baseline}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The lines of the access log the node writes to `file` (a path
    /// relative to its working directory, as `API_PROXY_ACCESS_LOG` was
    /// given), each parsed as JSON; empty before the file exists.
    pub fn access_log(&self, file: &str) -> Vec<serde_json::Value> {
        read_json_lines(&self.dir.path(file))
    }

    /// Sends a signal with the `kill` command (no unsafe code in tests).
    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_exit(&mut self.child, timeout)
    }
}

pub(crate) fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for `child` to exit, at most `timeout`; past it, kills the child
/// (a hung process is not left behind) and panics.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        crate::assert_no_secrets_logged("apiproxy-dataplane", &self.logs);
    }
}

/// Every line of a JSON-lines file, parsed (a torn or invalid line panics,
/// naming it); empty when the file does not exist.
pub fn read_json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}
