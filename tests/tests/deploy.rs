//! The deployment files — `docker-compose.yml`, `deploy/Dockerfile`,
//! `deploy/k8s/`, `deploy/prometheus/`, `deploy/grafana/`, `.env.example`
//! and `deploy/local/apiproxy-local.sh` — against the real binaries.
//!
//! Docker and Kubernetes cannot run here, so what they would run is checked
//! piece by piece: every environment variable a file sets is one the binary
//! accepts (its `--help` lists them, plus the environment-only secrets of
//! SPEC §2), the settings boot the real binaries, every port is the
//! binary's default, every probe and scrape path answers 200 on a running
//! process, the image's health-check program works against one, and every
//! metric the Grafana dashboard queries is exported by a running data
//! plane. The local topology script runs for real.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use apiproxy_tests::client::{call, get, get_reply};
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::dataplane::binary;
use apiproxy_tests::redis::{wait_until_listening, RedisServer};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane, TempDir};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

const NODE_TOKEN: &str = "deploy-test-node-token-0123456789";
/// The `.env.example` placeholder the control plane refuses (SPEC §2).
const PLACEHOLDER: &str = "change-me-to-a-long-random-secret";
/// The proxy listener's default port: `API_PROXY_LISTEN` has no clap
/// default (it depends on `PORT`), so its help text states it.
const PROXY_PORT: u16 = 8000;

// --- files ---------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML stream (split on `---` lines), as JSON values.
fn parse_yaml_stream(text: &str, what: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| {
            serde_yaml_ng::from_str::<Value>(doc)
                .unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    parse_yaml_stream(&read(rel), rel)
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

// --- what the binaries accept ----------------------------------------------

/// The environment variables a binary reads, with their defaults where
/// `--help` states one.
#[derive(Debug)]
struct Accepted {
    vars: BTreeMap<String, Option<String>>,
    help: String,
}

impl Accepted {
    fn has(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    fn default(&self, name: &str) -> Option<&str> {
        self.vars.get(name).and_then(|d| d.as_deref())
    }

    /// Port of a listen address's default (`0.0.0.0:9000` → 9000).
    fn default_port(&self, name: &str) -> u16 {
        let addr = self
            .default(name)
            .unwrap_or_else(|| panic!("{name} has no default"));
        addr.parse::<SocketAddr>()
            .unwrap_or_else(|_| panic!("{name} default {addr:?} is not an address"))
            .port()
    }
}

/// Parses `[env: NAME=…]` and the `[default: …]` of the same option from
/// clap's help, long or short form.
fn parse_help(help: &str) -> BTreeMap<String, Option<String>> {
    let mut vars = BTreeMap::new();
    let mut rest = help;
    while let Some(at) = rest.find("[env: ") {
        rest = &rest[at + 6..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // This option's text ends where the next option's line starts.
        let end = rest
            .match_indices('\n')
            .map(|(i, _)| i)
            .find(|&i| rest[i + 1..].trim_start().starts_with('-'))
            .unwrap_or(rest.len());
        let own = &rest[..end.min(rest.find("[env: ").unwrap_or(rest.len()))];
        let default = own.find("[default: ").map(|d| {
            let v = &own[d + 10..];
            v[..v.find(']').expect("closing ]")].to_owned()
        });
        vars.insert(name, default);
    }
    vars
}

fn accepted(bin: &str) -> &'static Accepted {
    static DATAPLANE: OnceLock<Accepted> = OnceLock::new();
    static CONTROLPLANE: OnceLock<Accepted> = OnceLock::new();
    // Environment only, never flags (SPEC §2), so `--help` cannot list
    // them; RUST_LOG is the log level (SPEC §2, "Level by RUST_LOG").
    let (cell, env_only): (_, &[&str]) = match bin {
        "apiproxy-dataplane" => (&DATAPLANE, &["API_PROXY_NODE_TOKEN", "PORT", "RUST_LOG"]),
        "apiproxy-controlplane" => (
            &CONTROLPLANE,
            &["ADMIN_TOKEN", "API_PROXY_NODE_TOKEN", "RUST_LOG"],
        ),
        other => panic!("unknown binary {other}"),
    };
    cell.get_or_init(|| {
        let out = Command::new(binary(bin))
            .arg("--help")
            .env_clear()
            .output()
            .expect("run --help");
        assert!(out.status.success(), "{bin} --help failed");
        let help = String::from_utf8(out.stdout).expect("utf-8 help");
        let mut vars = parse_help(&help);
        assert!(
            vars.len() >= 5,
            "{bin} --help lists too few [env: …]: {help}"
        );
        for name in env_only {
            assert!(
                !vars.contains_key(*name),
                "{name} must stay environment-only (SPEC §2), but {bin} --help lists it"
            );
            vars.insert((*name).to_owned(), None);
        }
        if bin == "apiproxy-dataplane" {
            assert!(
                help.contains(&format!("0.0.0.0:{PROXY_PORT}")),
                "the proxy listener's default port changed: {help}"
            );
        }
        Accepted { vars, help }
    })
}

/// Which binary a container or service runs, from its command.
fn binary_of(command: &Value) -> &'static str {
    let first = s(&command[0]);
    match first.rsplit('/').next() {
        Some("apiproxy-dataplane") => "apiproxy-dataplane",
        Some("apiproxy-controlplane") => "apiproxy-controlplane",
        _ => panic!("unexpected command {command}"),
    }
}

fn assert_accepted(bin: &str, names: impl IntoIterator<Item = String>, place: &str) {
    let acc = accepted(bin);
    for name in names {
        assert!(
            acc.has(&name),
            "{place} sets {name}, which {bin} does not read (accepted: {:?})",
            acc.vars.keys().collect::<Vec<_>>()
        );
    }
}

/// `10s`, `500ms`, `5m` → duration.
fn duration(text: &str) -> Duration {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {text:?}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        other => panic!("duration unit {other:?} in {text:?}"),
    }
}

/// `128Mi`, `1Gi`, `250M` → bytes.
fn quantity(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let n: f64 = text[..split]
        .parse()
        .unwrap_or_else(|_| panic!("quantity {text:?}"));
    n * match &text[split..] {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        other => panic!("quantity unit {other:?}"),
    }
}

// --- processes -------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
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

/// Runs a command to its end, at most `timeout`; returns its status and
/// its stdout and stderr together.
fn run(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut pipes = vec![];
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            let _ = tx.send(out);
        });
        pipes.push(rx);
    }
    let status = wait_exit(&mut child, timeout);
    // A child that kept our pipes open would hang the reader: bounded too.
    let output = pipes
        .iter()
        .map(|rx| {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("output pipe closed within 5 s of the exit")
        })
        .collect::<Vec<_>>()
        .join("");
    (status, output)
}

/// Runs a binary with exactly `env` (plus PATH) and expects it to refuse
/// to start: exit 64 with a line naming `needle`.
fn assert_refused(bin: &str, env: &[(String, String)], needle: &str) {
    let dir = TempDir::new("refused");
    let mut cmd = Command::new(binary(bin));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(&dir.0)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let (status, output) = run(&mut cmd, Duration::from_secs(10));
    assert_eq!(status.code(), Some(64), "{bin} should refuse: {output}");
    assert!(
        output.contains(needle),
        "{bin}: {output:?} should name {needle}"
    );
}

/// `deploy/healthcheck.rs`, the image's HEALTHCHECK program, compiled once
/// with `rustc` exactly as the Dockerfile does (warnings denied).
fn healthcheck() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apiproxy-healthcheck");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        let (status, output) = run(
            Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "-D",
                    "warnings",
                    "-C",
                    "opt-level=1",
                    "-o",
                ])
                .arg(&out)
                .arg(repo().join("deploy/healthcheck.rs")),
            Duration::from_secs(120),
        );
        assert!(status.success(), "deploy/healthcheck.rs: {output}");
        out
    })
}

/// Runs the health check with `args` and the listen variable; exit code.
fn run_healthcheck(args: &[&str], env: &[(&str, String)]) -> i32 {
    let mut cmd = Command::new(healthcheck());
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (status, output) = run(&mut cmd, Duration::from_secs(10));
    let code = status.code().expect("exit code");
    assert!(code == 0 || !output.is_empty(), "a failing check says why");
    code
}

// --- docker-compose.yml ------------------------------------------------------

/// Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`. Unset variables with
/// no default resolve to "" (compose warns); a `?` form fails.
fn interpolate(text: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or("unclosed ${")?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let name_len = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_len);
            let value = vars.get(name).map(String::as_str);
            let set = value.is_some_and(|v| !v.is_empty());
            let resolved = match op {
                "" => value.unwrap_or("").to_owned(),
                _ if op.starts_with(":-") => if set { value.unwrap() } else { &op[2..] }.to_owned(),
                _ if op.starts_with('-') => value.unwrap_or(&op[1..]).to_owned(),
                _ if op.starts_with(":?") => match value {
                    Some(v) if set => v.to_owned(),
                    _ => return Err(format!("{name}: {}", &op[2..])),
                },
                _ if op.starts_with('?') => match value {
                    Some(v) => v.to_owned(),
                    None => return Err(format!("{name}: {}", &op[1..])),
                },
                _ => return Err(format!("unsupported interpolation ${{{expr}}}")),
            };
            out.push_str(&resolved);
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push_str(vars.get(&rest[..len]).map_or("", String::as_str));
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Names of every variable a YAML text interpolates (comments aside).
fn interpolated_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = text.as_str();
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let r = rest.strip_prefix('{').unwrap_or(rest);
        let len = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        if len > 0 {
            names.insert(r[..len].to_owned());
        }
        rest = r;
    }
    names
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// A service's environment after interpolation with `vars`; `None` for a
/// variable listed without a value (passed through only when set).
fn compose_env(
    service: &Value,
    vars: &HashMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let env = &service["environment"];
    let mut out = BTreeMap::new();
    match env {
        Value::Object(map) => {
            for (k, v) in map {
                let v = match v {
                    Value::Null => None,
                    Value::String(s) => {
                        Some(interpolate(s, vars).unwrap_or_else(|e| panic!("{k}: {e}")))
                    }
                    other => Some(other.to_string()),
                };
                out.insert(k.clone(), v);
            }
        }
        Value::Array(items) => {
            for item in items {
                let item = s(item);
                match item.split_once('=') {
                    Some((k, v)) => out.insert(k.to_owned(), Some(interpolate(v, vars).unwrap())),
                    None => out.insert(item.to_owned(), None),
                };
            }
        }
        Value::Null => {}
        other => panic!("environment must be a mapping or a list: {other}"),
    }
    out
}

/// Secrets a test supplies where `.env` would.
fn compose_vars(redis_password: &str) -> HashMap<String, String> {
    HashMap::from([
        ("REDIS_PASSWORD".to_owned(), redis_password.to_owned()),
        ("ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ("API_PROXY_NODE_TOKEN".to_owned(), NODE_TOKEN.to_owned()),
    ])
}

/// The apiproxy services of the compose file, with the binary each runs.
fn compose_apiproxy_services(compose: &Value) -> Vec<(String, &'static str)> {
    compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, svc)| svc["build"]["dockerfile"] == "deploy/Dockerfile")
        .map(|(name, svc)| (name.clone(), binary_of(&svc["command"])))
        .collect()
}

#[test]
fn compose_file_has_the_topology_and_only_settings_the_binaries_read() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for name in [
        "redis",
        "controlplane-init",
        "controlplane",
        "dataplane",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let ours = compose_apiproxy_services(&compose);
    assert_eq!(ours.len(), 3, "{ours:?}");

    // Every setting on an apiproxy service is read by its binary, and the
    // pass-through ones (no value) too.
    let vars = compose_vars("pw");
    for (name, bin) in &ours {
        let env = compose_env(&services[name], &vars);
        assert_accepted(
            bin,
            env.keys().cloned(),
            &format!("docker-compose.yml service {name}"),
        );
        assert!(
            repo()
                .join(s(&services[name]["build"]["dockerfile"]))
                .exists(),
            "{name}: Dockerfile missing"
        );
    }

    // Secrets are required: without them compose refuses to start.
    let text = read("docker-compose.yml");
    for secret in ["REDIS_PASSWORD", "ADMIN_TOKEN", "API_PROXY_NODE_TOKEN"] {
        assert!(
            text.contains(&format!("${{{secret}:?")),
            "{secret} must be required (${{{secret}:?…}})"
        );
    }
    let admin_token = s(&services["controlplane"]["environment"]["ADMIN_TOKEN"]);
    assert!(interpolate(admin_token, &HashMap::new()).is_err());

    // Redis: password and append-only persistence on a named volume.
    let redis_conf = interpolate(s(&compose["configs"]["redis-conf"]["content"]), &vars).unwrap();
    assert!(redis_conf.contains("requirepass pw"), "{redis_conf}");
    assert!(redis_conf.contains("appendonly yes"), "{redis_conf}");
    let redis = &services["redis"];
    let data_volume = redis["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .find(|v| v.ends_with(":/data"));
    let volume_name = data_volume
        .expect("redis /data volume")
        .split(':')
        .next()
        .unwrap();
    assert!(
        compose["volumes"].get(volume_name).is_some(),
        "volume {volume_name} not declared"
    );

    // Two data-plane replicas, health checks, restart policies, ordering.
    assert_eq!(services["dataplane"]["deploy"]["replicas"], 2);
    for name in [
        "redis",
        "controlplane",
        "dataplane",
        "prometheus",
        "grafana",
    ] {
        assert_eq!(
            services[name]["restart"], "unless-stopped",
            "{name} restart policy"
        );
    }
    assert_eq!(services["controlplane-init"]["restart"], "no");
    for name in ["redis", "controlplane", "dataplane", "prometheus"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has no health check"
        );
    }
    assert_eq!(
        services["controlplane"]["healthcheck"]["test"],
        json!(["CMD", "/usr/local/bin/apiproxy-healthcheck", "controlplane"])
    );
    assert_eq!(
        services["dataplane"]["healthcheck"]["test"],
        json!(["CMD", "/usr/local/bin/apiproxy-healthcheck", "dataplane"])
    );
    for name in ["controlplane", "dataplane"] {
        let deps = &services[name]["depends_on"];
        assert_eq!(deps["redis"]["condition"], "service_healthy", "{name}");
        assert_eq!(
            deps["controlplane-init"]["condition"], "service_completed_successfully",
            "{name}"
        );
    }
    assert_eq!(
        services["controlplane-init"]["depends_on"]["redis"]["condition"],
        "service_healthy"
    );
    assert_eq!(
        services["grafana"]["depends_on"]["prometheus"]["condition"],
        "service_healthy"
    );

    // Monitoring only with its profile.
    for (name, svc) in services {
        let monitoring = matches!(name.as_str(), "prometheus" | "grafana");
        assert_eq!(
            svc["profiles"] == json!(["monitoring"]),
            monitoring,
            "{name}: profiles {}",
            svc["profiles"]
        );
    }

    // Docker must not SIGKILL a draining data plane.
    let dp_env = compose_env(&services["dataplane"], &vars);
    let drain = duration(dp_env["API_PROXY_DRAIN_TIMEOUT"].as_deref().unwrap());
    assert_eq!(
        Some(drain),
        accepted("apiproxy-dataplane")
            .default("API_PROXY_DRAIN_TIMEOUT")
            .map(duration),
        "compose's default drain timeout is the binary's"
    );
    let grace =
        duration(&interpolate(s(&services["dataplane"]["stop_grace_period"]), &vars).unwrap());
    assert!(
        grace > drain,
        "stop_grace_period {grace:?} must exceed the drain timeout {drain:?}"
    );

    // The snapshot cache directory is a volume (the root file system is read-only).
    let cache = dp_env["API_PROXY_SNAPSHOT_CACHE"].as_deref().unwrap();
    let cache_dir = Path::new(cache).parent().unwrap().to_str().unwrap();
    assert_eq!(services["dataplane"]["read_only"], true);
    assert!(
        services["dataplane"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| s(v) == cache_dir),
        "{cache_dir} must be a volume"
    );
    assert_eq!(
        dp_env["API_PROXY_CONTROLPLANE_URL"].as_deref(),
        Some(
            format!(
                "http://controlplane:{}",
                accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN")
            )
            .as_str()
        )
    );

    // Published ports go to the binaries' default container ports.
    let published = |svc: &str| -> u16 {
        let spec = interpolate(s(&services[svc]["ports"][0]), &vars).unwrap();
        spec.rsplit(':').next().unwrap().parse().unwrap()
    };
    assert_eq!(published("dataplane"), PROXY_PORT);
    assert_eq!(
        published("controlplane"),
        accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN")
    );

    // Files mounted into Prometheus and Grafana exist.
    for svc in ["prometheus", "grafana"] {
        for volume in services[svc]["volumes"].as_array().unwrap() {
            let source = s(volume).split(':').next().unwrap();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(repo().join(rel).exists(), "{svc}: {source} missing");
            }
        }
    }
}

/// A `redis-server` started from compose's Redis configuration.
struct ComposeRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for ComposeRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_compose_redis(password: &str) -> ComposeRedis {
    let conf = interpolate(
        s(&compose()["configs"]["redis-conf"]["content"]),
        &compose_vars(password),
    )
    .unwrap();
    let dir = TempDir::new("compose-redis");
    std::fs::write(dir.path("redis.conf"), conf).unwrap();
    for _ in 0..5 {
        let port = free_port();
        // The file as compose mounts it; only the address and directory
        // differ (no container here).
        let log = dir.path(&format!("redis-{port}.log"));
        let mut child = Command::new("redis-server")
            .arg(dir.path("redis.conf"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir.0)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        if wait_until_listening(&mut child, &log) {
            return ComposeRedis {
                child,
                port,
                _dir: dir,
            };
        }
    }
    panic!("redis-server did not start with compose's configuration");
}

/// The compose services' settings boot the real binaries against a Redis
/// configured like compose's: password required, append-only on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_settings_boot_the_real_binaries() {
    let password = "compose-test-redis-password";
    let redis = start_compose_redis(password);
    let vars = compose_vars(password);
    let compose = compose();
    let services = &compose["services"];

    // Redis refuses clients without the password, and persists.
    let open = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
    let mut conn = open.get_multiplexed_async_connection().await.unwrap();
    let err = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let url_for = |url: &str| url.replace("@redis:6379", &format!("@127.0.0.1:{}", redis.port));
    let authed =
        redis::Client::open(url_for(&format!("redis://:{password}@redis:6379/0"))).unwrap();
    let mut conn = authed.get_multiplexed_async_connection().await.unwrap();
    let (_, appendonly): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(appendonly, "yes");

    // controlplane-init: the default mappings into the empty hash, exit 0.
    let init_env = compose_env(&services["controlplane-init"], &vars);
    let dir = TempDir::new("compose-init");
    let mut cmd = Command::new(binary("apiproxy-controlplane"));
    cmd.env_clear().current_dir(&dir.0).arg("init");
    for (k, v) in init_env.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
        cmd.env(k, url_for(v));
    }
    let (status, output) = run(&mut cmd, Duration::from_secs(20));
    assert!(status.success(), "controlplane-init: {output}");

    // The control plane with compose's settings. The fixture listens on
    // 127.0.0.1:0 and logs JSON, which it needs to find the address.
    let to_pairs = |env: BTreeMap<String, Option<String>>, extra: &[(&str, String)]| {
        let mut pairs: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k != "API_PROXY_LOG_FORMAT")
            .filter_map(|(k, v)| Some((k, url_for(&v?))))
            .collect();
        pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        pairs
    };
    for (svc, bin) in [
        ("controlplane", "apiproxy-controlplane"),
        ("dataplane", "apiproxy-dataplane"),
    ] {
        let format = compose_env(&services[svc], &vars)["API_PROXY_LOG_FORMAT"]
            .clone()
            .unwrap();
        assert!(accepted(bin).help.contains("[possible values: text, json]"));
        assert!(
            ["text", "json"].contains(&format.as_str()),
            "{svc}: log format {format}"
        );
    }
    let cp_env = compose_env(&services["controlplane"], &vars);
    let cp_pairs = to_pairs(cp_env, &[]);
    let cp_refs: Vec<(&str, &str)> = cp_pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let redis_url = cp_pairs
        .iter()
        .find(|(k, _)| k == "API_PROXY_REDIS_URL")
        .unwrap()
        .1
        .clone();
    let cp = ControlPlane::start(&redis_url, &cp_refs);
    eventually("control plane ready", Duration::from_secs(10), || async {
        (get(&format!("http://{}/readyz", cp.addr)).await.0 == 200).then_some(())
    })
    .await;
    let listed = cp.admin("GET", "/api/mappings", None).await.json();
    assert_eq!(
        listed["count"], 15,
        "init wrote the default mappings: {listed}"
    );

    // Two data planes with compose's settings; the control plane's address
    // replaces the service name, each gets its own cache file and node id
    // (in compose: the container's host name).
    let dp_env = compose_env(&services["dataplane"], &vars);
    let mut nodes = vec![];
    for id in ["compose-dp-1", "compose-dp-2"] {
        let cache = dir.path(&format!("{id}.snapshot"));
        let mut pairs = to_pairs(dp_env.clone(), &[("API_PROXY_NODE_ID", id.to_owned())]);
        for (k, v) in &mut pairs {
            match k.as_str() {
                "API_PROXY_CONTROLPLANE_URL" => {
                    *v = v.replace("controlplane:8001", &cp.addr.to_string())
                }
                "API_PROXY_SNAPSHOT_CACHE" => *v = cache.to_str().unwrap().to_owned(),
                _ => {}
            }
        }
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        nodes.push(DataPlane::start_redis(&redis_url, &refs));
    }
    let up = upstream::http(echo_handler()).await;
    let reply = cp
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/svc", "target": up.url()})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    for node in &nodes {
        eventually("data plane ready", Duration::from_secs(10), || async {
            (node.readyz().await == 200).then_some(())
        })
        .await;
        node.wait_status("/svc/x", 200).await;
    }

    // The image's health checks, with the roles compose gives them.
    assert_eq!(
        run_healthcheck(
            &["controlplane"],
            &[("API_PROXY_ADMIN_LISTEN", cp.addr.to_string())]
        ),
        0
    );
    for node in &nodes {
        let env = [("API_PROXY_METRICS_LISTEN", node.metrics_addr.to_string())];
        assert_eq!(run_healthcheck(&["dataplane"], &env), 0);
        assert_eq!(
            run_healthcheck(&[], &env),
            0,
            "auto: this process's PID 1 is no control plane"
        );
    }

    // Both push their stats with compose's node token.
    eventually("both nodes listed", Duration::from_secs(10), || async {
        let listed = cp.admin("GET", "/api/nodes", None).await;
        let ids: BTreeSet<String> = listed.json()["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "up")
            .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
            .collect();
        (ids.contains("compose-dp-1") && ids.contains("compose-dp-2")).then_some(())
    })
    .await;
}

// --- deploy/Dockerfile -------------------------------------------------------

fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("members = [...]");
    line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn dockerfile_builds_both_binaries_from_a_cached_dependency_layer() {
    let dockerfile = read("deploy/Dockerfile");
    // Instructions, with continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let last_from = froms.last().unwrap();
    assert!(
        last_from.contains("distroless") || last_from.contains("slim"),
        "small final image: {last_from}"
    );

    let builds: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("cargo build"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(builds.len(), 2, "a dependency build, then the real one");
    for &i in &builds {
        let l = lines[i];
        assert!(l.contains("--release") && l.contains("--locked"), "{l}");
        assert!(
            l.contains("-p apiproxy-dataplane") && l.contains("-p apiproxy-controlplane"),
            "{l}"
        );
    }
    // Before the first build: the manifests of every member, the lock file
    // and the stubs, and none of the sources.
    let before = &lines[..builds[0]];
    for member in workspace_members() {
        assert!(
            before
                .iter()
                .any(|l| *l == format!("COPY {member}/Cargo.toml {member}/")),
            "the dependency layer needs {member}/Cargo.toml"
        );
        assert!(
            !before
                .iter()
                .any(|l| l.starts_with(&format!("COPY {member} "))),
            "{member}'s sources must come after the dependency build"
        );
    }
    assert!(before
        .iter()
        .any(|l| l.starts_with("COPY Cargo.toml Cargo.lock")));
    assert!(lines[builds[0]].contains("sh deploy/stub-workspace.sh"));
    // The real build has every source the binaries compile, static/ (the
    // console, embedded) included.
    let between = &lines[builds[0]..builds[1]];
    for dir in ["shared", "dataplane", "controlplane", "static"] {
        assert!(
            between.iter().any(|l| *l == format!("COPY {dir} {dir}")),
            "COPY {dir}"
        );
    }
    assert!(read("controlplane/src/assets.rs").contains("../../static/"));

    // Non-root, the binaries' ports, the health check program.
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(!["root", "0", "0:0"].contains(&user.trim()), "USER {user}");
    let expose: BTreeSet<u16> = lines
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let expected = BTreeSet::from([
        PROXY_PORT,
        accepted("apiproxy-dataplane").default_port("API_PROXY_METRICS_LISTEN"),
        accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN"),
    ]);
    assert_eq!(expose, expected);
    let check = lines
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    assert!(
        check.contains("/usr/local/bin/apiproxy-healthcheck"),
        "{check}"
    );
    assert!(joined.contains("deploy/healthcheck.rs"));
    assert!(
        lines.last().unwrap().contains("apiproxy-dataplane"),
        "default command"
    );
    let _ = healthcheck(); // it compiles, warnings denied

    // The stub step on a copy of the manifests: Cargo accepts the
    // workspace and the lock file as they are (`--locked`), so the
    // dependency layer builds; a target the stubs miss would fail here.
    let tmp = TempDir::new("docker-stubs");
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo().join(file), tmp.path(file)).unwrap();
    }
    for member in workspace_members() {
        std::fs::create_dir_all(tmp.path(&member)).unwrap();
        std::fs::copy(
            repo().join(&member).join("Cargo.toml"),
            tmp.path(&member).join("Cargo.toml"),
        )
        .unwrap();
    }
    let (status, output) = run(
        Command::new("sh")
            .arg(repo().join("deploy/stub-workspace.sh"))
            .current_dir(&tmp.0),
        Duration::from_secs(10),
    );
    assert!(status.success(), "stub-workspace.sh: {output}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let (status, output) = run(
        Command::new(cargo)
            .args(["fetch", "--locked", "--offline"])
            .current_dir(&tmp.0),
        Duration::from_secs(60),
    );
    assert!(
        status.success(),
        "cargo fetch --locked on the stub workspace: {output}"
    );
}

// --- deploy/k8s ----------------------------------------------------------------

const K8S: &str = "deploy/k8s";

/// The base's resources, by `Kind/name`.
fn k8s_resources() -> BTreeMap<String, Value> {
    let kustomization = yaml(&format!("{K8S}/kustomization.yaml"));
    assert_eq!(kustomization["kind"], "Kustomization");
    let files: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(s)
        .collect();
    // Every manifest in the folder is in the base; the optional ones live
    // in components/.
    let mut on_disk: Vec<String> = std::fs::read_dir(repo().join(K8S))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs files in {K8S}"
    );
    let mut out = BTreeMap::new();
    for file in files {
        for doc in yaml_docs(&format!("{K8S}/{file}")) {
            let key = format!("{}/{}", s(&doc["kind"]), s(&doc["metadata"]["name"]));
            assert!(doc["apiVersion"].is_string(), "{key}: apiVersion");
            assert!(out.insert(key.clone(), doc).is_none(), "{key} twice");
        }
    }
    out
}

/// A container's environment variable names and literal values: `env`,
/// and every key of the ConfigMaps and Secrets it takes with `envFrom`.
fn container_env(
    container: &Value,
    resources: &BTreeMap<String, Value>,
) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let (kind, name, field) = if from["configMapRef"].is_object() {
            ("ConfigMap", &from["configMapRef"]["name"], "data")
        } else {
            ("Secret", &from["secretRef"]["name"], "stringData")
        };
        let res = resources
            .get(&format!("{kind}/{}", s(name)))
            .unwrap_or_else(|| panic!("envFrom {kind} {name} is not in the base"));
        for (k, v) in res[field].as_object().expect("data") {
            out.insert(k.clone(), Some(s(v).to_owned()));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = s(&var["name"]).to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            Some(v.to_owned())
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            let r = &var["valueFrom"]["secretKeyRef"];
            let secret = resources
                .get(&format!("Secret/{}", s(&r["name"])))
                .unwrap_or_else(|| panic!("secret {} missing", r["name"]));
            let value = &secret["stringData"][s(&r["key"])];
            assert!(value.is_string(), "secret key {} missing", r["key"]);
            Some(s(value).to_owned())
        } else {
            assert!(
                var["valueFrom"]["fieldRef"].is_object(),
                "{name}: unexpected env source"
            );
            None
        };
        out.insert(name, value);
    }
    out
}

fn containers(deployment: &Value) -> Vec<&Value> {
    let spec = &deployment["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().expect("containers"))
        .collect()
}

/// The container port a probe or Service names (by name or number).
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port}")) as u16
}

#[test]
fn k8s_base_is_complete_and_matches_the_binaries() {
    let resources = k8s_resources();
    for key in [
        "Secret/apiproxy",
        "ConfigMap/apiproxy-dataplane",
        "ConfigMap/apiproxy-controlplane",
        "Deployment/apiproxy-controlplane",
        "Service/apiproxy-controlplane",
        "Deployment/apiproxy-dataplane",
        "Service/apiproxy-dataplane",
        "HorizontalPodAutoscaler/apiproxy-dataplane",
        "PodDisruptionBudget/apiproxy-dataplane",
    ] {
        assert!(resources.contains_key(key), "{key} missing from the base");
    }
    assert_eq!(
        resources["HorizontalPodAutoscaler/apiproxy-dataplane"]["apiVersion"],
        "autoscaling/v2"
    );
    assert_eq!(
        resources["PodDisruptionBudget/apiproxy-dataplane"]["apiVersion"],
        "policy/v1"
    );
    assert!(
        !resources.keys().any(|k| k.starts_with("ServiceMonitor/")),
        "ServiceMonitor is optional"
    );

    // No working secret: the placeholders are refused (checked for real in
    // k8s_settings_boot_the_real_binaries).
    let secret = &resources["Secret/apiproxy"]["stringData"];
    assert_eq!(secret["ADMIN_TOKEN"], PLACEHOLDER);
    assert_eq!(secret["API_PROXY_NODE_TOKEN"], "");
    assert!(
        s(&secret["API_PROXY_REDIS_URL"]).contains(".invalid:"),
        "{}",
        secret["API_PROXY_REDIS_URL"]
    );

    let dp_acc = accepted("apiproxy-dataplane");
    let cp_acc = accepted("apiproxy-controlplane");
    let metrics_port = dp_acc.default_port("API_PROXY_METRICS_LISTEN");
    let admin_port = cp_acc.default_port("API_PROXY_ADMIN_LISTEN");

    for (deployment, main_port, probe_port) in [
        ("Deployment/apiproxy-dataplane", PROXY_PORT, metrics_port),
        ("Deployment/apiproxy-controlplane", admin_port, admin_port),
    ] {
        let d = &resources[deployment];
        let pod = &d["spec"]["template"];
        let spec = &pod["spec"];
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"], true,
            "{deployment}"
        );
        assert_eq!(spec["automountServiceAccountToken"], false, "{deployment}");
        for c in containers(d) {
            let bin = binary_of(&c["command"]);
            let env = container_env(c, &resources);
            assert_accepted(
                bin,
                env.keys().cloned(),
                &format!("{deployment} container {}", c["name"]),
            );
            let sc = &c["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{deployment} {}",
                c["name"]
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{deployment} {}",
                c["name"]
            );
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            let r = &c["resources"];
            for q in [
                &r["requests"]["cpu"],
                &r["requests"]["memory"],
                &r["limits"]["memory"],
            ] {
                assert!(q.is_string(), "{deployment} {}: resources {r}", c["name"]);
            }
            assert!(quantity(s(&r["requests"]["memory"])) <= quantity(s(&r["limits"]["memory"])));
        }
        let main = spec["containers"].as_array().unwrap().first().unwrap();
        let ports: BTreeSet<u16> = main["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        assert!(
            ports.contains(&main_port) && ports.contains(&probe_port),
            "{deployment} ports {ports:?}"
        );
        assert_eq!(
            main["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{deployment}"
        );
        assert_eq!(
            main["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{deployment}"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container_port(main, &main[probe]["httpGet"]["port"]),
                probe_port,
                "{deployment} {probe}"
            );
        }
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], probe_port.to_string());
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }

    // Services select the pods and reach the named container ports.
    for (service, deployment) in [
        (
            "Service/apiproxy-dataplane",
            "Deployment/apiproxy-dataplane",
        ),
        (
            "Service/apiproxy-controlplane",
            "Deployment/apiproxy-controlplane",
        ),
    ] {
        let svc = &resources[service];
        let d = &resources[deployment];
        let pod_labels = d["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "{service} selector {k}");
        }
        assert_eq!(
            d["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
            "{deployment}"
        );
        let main = d["spec"]["template"]["spec"]["containers"][0].clone();
        for port in svc["spec"]["ports"].as_array().unwrap() {
            assert_eq!(
                port["port"].as_u64().unwrap() as u16,
                container_port(&main, &port["targetPort"]),
                "{service} port {}",
                port["name"]
            );
        }
    }
    let dp_pod_labels =
        &resources["Deployment/apiproxy-dataplane"]["spec"]["template"]["metadata"]["labels"];
    for (k, v) in resources["PodDisruptionBudget/apiproxy-dataplane"]["spec"]["selector"]
        ["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&dp_pod_labels[k], v, "PDB selector {k}");
    }
    let hpa = &resources["HorizontalPodAutoscaler/apiproxy-dataplane"]["spec"];
    assert_eq!(hpa["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["scaleTargetRef"]["name"], "apiproxy-dataplane");
    assert!(hpa["minReplicas"].as_u64().unwrap() >= 2);
    assert!(
        resources["Deployment/apiproxy-dataplane"]["spec"]["replicas"].is_null(),
        "the HPA owns the data plane's replica count"
    );

    // The control plane URL of the data planes is the control plane's Service.
    let dp_config = &resources["ConfigMap/apiproxy-dataplane"]["data"];
    assert_eq!(
        dp_config["API_PROXY_CONTROLPLANE_URL"],
        format!("http://apiproxy-controlplane:{admin_port}")
    );
    assert_eq!(
        dp_config["API_PROXY_REDIS_PREFIX"],
        resources["ConfigMap/apiproxy-controlplane"]["data"]["API_PROXY_REDIS_PREFIX"],
        "both planes use the same key namespace"
    );

    // Graceful termination outlasts the pause and the drain.
    let dp = &resources["Deployment/apiproxy-dataplane"]["spec"]["template"]["spec"];
    let main = &dp["containers"][0];
    let pause = Duration::from_secs(
        main["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep"),
    );
    let drain = duration(
        dp_config["API_PROXY_DRAIN_TIMEOUT"]
            .as_str()
            .or(dp_acc.default("API_PROXY_DRAIN_TIMEOUT"))
            .unwrap(),
    );
    let grace = Duration::from_secs(dp["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace > pause + drain,
        "terminationGracePeriodSeconds {grace:?} <= preStop {pause:?} + drain {drain:?}"
    );
    assert_eq!(
        resources["Deployment/apiproxy-dataplane"]["spec"]["strategy"]["rollingUpdate"]
            ["maxUnavailable"],
        0
    );

    // The snapshot cache is on a writable volume.
    let cache = s(&dp_config["API_PROXY_SNAPSHOT_CACHE"]);
    let mount = main["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(cache).starts_with(s(&m["mountPath"])));
    assert!(mount.is_some(), "{cache} is not on a mounted volume");

    // Memory sized from the measured figures: the request covers the
    // 1000-connection peak that docs/BENCHMARKS.md reports, and the
    // manifest cites figures that are in that file.
    let benchmarks = read("docs/BENCHMARKS.md");
    let manifest = read(&format!("{K8S}/dataplane-deployment.yaml"));
    for figure in [
        "26.3 MiB", "7.7 MiB", "11.9 MiB", "26.9 MiB", "+2.1 MiB", "+0.1 MiB",
    ] {
        assert!(
            manifest.contains(figure),
            "dataplane-deployment.yaml should cite {figure}"
        );
        assert!(
            benchmarks.contains(figure),
            "{figure} is not in docs/BENCHMARKS.md any more: update the resources"
        );
    }
    let request = quantity(s(&main["resources"]["requests"]["memory"]));
    assert!(
        request >= 27.8 * 1024.0 * 1024.0,
        "memory request below the measured peak"
    );

    // The optional ServiceMonitor component.
    let component = yaml(&format!(
        "{K8S}/components/servicemonitor/kustomization.yaml"
    ));
    assert_eq!(component["kind"], "Component");
    for file in component["resources"].as_array().unwrap() {
        for sm in yaml_docs(&format!("{K8S}/components/servicemonitor/{}", s(file))) {
            assert_eq!(sm["kind"], "ServiceMonitor");
            let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
            let svc = resources
                .values()
                .find(|r| {
                    r["kind"] == "Service" && r["spec"]["selector"].as_object() == Some(selector)
                })
                .unwrap_or_else(|| {
                    panic!("no Service for ServiceMonitor {}", sm["metadata"]["name"])
                });
            for endpoint in sm["spec"]["endpoints"].as_array().unwrap() {
                assert_eq!(endpoint["path"], "/metrics");
                let port = svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == endpoint["port"])
                    .expect("ServiceMonitor port is a Service port name");
                let n = port["port"].as_u64().unwrap() as u16;
                assert!(n == metrics_port || n == admin_port, "scrapes port {n}");
            }
        }
    }
}

/// `kubectl kustomize` renders the base, and an overlay with the
/// ServiceMonitor component. kubectl comes with this project's machine
/// image (it is no Cargo dependency); without it this test says so and
/// checks nothing more than the other tests do.
#[test]
fn k8s_kustomize_renders_the_base_and_the_component() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl not found: kustomize rendering not checked");
        return;
    }
    let render = |dir: &Path| -> Vec<Value> {
        let (status, output) = run(
            Command::new("kubectl").arg("kustomize").arg(dir),
            Duration::from_secs(60),
        );
        assert!(
            status.success(),
            "kubectl kustomize {}: {output}",
            dir.display()
        );
        parse_yaml_stream(&output, "kubectl kustomize output")
    };
    let base = render(&repo().join(K8S));
    let names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| format!("{}/{}", s(&d["kind"]), s(&d["metadata"]["name"])))
            .collect()
    };
    assert_eq!(names(&base), k8s_resources().keys().cloned().collect());
    for d in base.iter().filter(|d| d["kind"] == "Deployment") {
        for c in containers(d) {
            assert!(
                s(&c["image"]).starts_with("apiproxy:"),
                "image {}",
                c["image"]
            );
        }
    }

    // Kustomize wants relative paths: the overlay lives under target/.
    let overlay =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("k8s-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    let up = overlay.canonicalize().unwrap();
    let root = repo().canonicalize().unwrap();
    let common = up.ancestors().find(|a| root.starts_with(a)).unwrap();
    let back = "../".repeat(up.strip_prefix(common).unwrap().components().count());
    let to_repo = format!("{back}{}", root.strip_prefix(common).unwrap().display());
    let to_repo = to_repo.trim_end_matches('/');
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{to_repo}/{K8S}]\ncomponents: [{to_repo}/{K8S}/components/servicemonitor]\n"
        ),
    )
    .unwrap();
    let with_monitor = render(&overlay);
    let _ = std::fs::remove_dir_all(&overlay);
    let extra: Vec<String> = names(&with_monitor)
        .difference(&names(&base))
        .cloned()
        .collect();
    assert_eq!(
        extra,
        [
            "ServiceMonitor/apiproxy-controlplane",
            "ServiceMonitor/apiproxy-dataplane"
        ]
    );
}

/// The Kubernetes settings boot the real binaries (the Secret's values
/// replaced by working ones), and the Secret's placeholders are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_settings_boot_the_real_binaries_and_the_placeholders_are_refused() {
    let resources = k8s_resources();
    let redis = RedisServer::start();
    let dp_deployment = &resources["Deployment/apiproxy-dataplane"];
    let cp_deployment = &resources["Deployment/apiproxy-controlplane"];
    let dp_env = container_env(
        &dp_deployment["spec"]["template"]["spec"]["containers"][0],
        &resources,
    );
    let cp_env = container_env(
        &cp_deployment["spec"]["template"]["spec"]["containers"][0],
        &resources,
    );

    // As applied, unedited: refused before anything binds.
    let literal = |env: &BTreeMap<String, Option<String>>| -> Vec<(String, String)> {
        env.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .map(|(k, v)| match k.as_str() {
                "API_PROXY_REDIS_URL" => (k, redis.url()),
                "API_PROXY_ADMIN_LISTEN" | "API_PROXY_LISTEN" | "API_PROXY_METRICS_LISTEN" => {
                    (k, "127.0.0.1:0".into())
                }
                _ => (k, v),
            })
            .collect()
    };
    let mut cp_literal = literal(&cp_env);
    cp_literal.push(("API_PROXY_ADMIN_LISTEN".into(), "127.0.0.1:0".into()));
    assert_refused("apiproxy-controlplane", &cp_literal, "ADMIN_TOKEN");
    let mut dp_literal = literal(&dp_env);
    dp_literal.push(("API_PROXY_LISTEN".into(), "127.0.0.1:0".into()));
    dp_literal.push(("API_PROXY_METRICS_LISTEN".into(), "127.0.0.1:0".into()));
    assert_refused("apiproxy-dataplane", &dp_literal, "API_PROXY_NODE_TOKEN");

    // With working secrets, Redis here and the Service names resolved.
    let dir = TempDir::new("k8s-env");
    let init = containers(cp_deployment)
        .into_iter()
        .find(|c| c["name"] == "init")
        .expect("init container");
    let mut cmd = Command::new(binary(binary_of(&init["command"])));
    cmd.env_clear()
        .current_dir(&dir.0)
        .args(init["command"].as_array().unwrap()[1..].iter().map(s));
    for (k, v) in literal(&container_env(init, &resources)) {
        cmd.env(k, v);
    }
    let (status, output) = run(&mut cmd, Duration::from_secs(20));
    assert!(status.success(), "init container: {output}");

    let cp_pairs: Vec<(String, String)> = literal(&cp_env)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "ADMIN_TOKEN" => (k, ADMIN_TOKEN.to_owned()),
            "API_PROXY_NODE_TOKEN" => (k, NODE_TOKEN.to_owned()),
            _ => (k, v),
        })
        .collect();
    let refs: Vec<(&str, &str)> = cp_pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cp = ControlPlane::start(&redis.url(), &refs);
    eventually("control plane ready", Duration::from_secs(10), || async {
        (get(&format!("http://{}/readyz", cp.addr)).await.0 == 200).then_some(())
    })
    .await;

    let cache = dir.path("snapshot");
    let dp_pairs: Vec<(String, String)> = literal(&dp_env)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "API_PROXY_NODE_TOKEN" => (k, NODE_TOKEN.to_owned()),
            "API_PROXY_CONTROLPLANE_URL" => (k, format!("http://{}", cp.addr)),
            "API_PROXY_SNAPSHOT_CACHE" => (k, cache.to_str().unwrap().to_owned()),
            _ => (k, v),
        })
        .chain([("API_PROXY_NODE_ID".to_owned(), "k8s-pod-1".to_owned())])
        .collect();
    let refs: Vec<(&str, &str)> = dp_pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = DataPlane::start_redis(&redis.url(), &refs);
    eventually("data plane ready", Duration::from_secs(10), || async {
        (node.readyz().await == 200).then_some(())
    })
    .await;
    eventually("snapshot cache written", Duration::from_secs(5), || async {
        cache.exists().then_some(())
    })
    .await;
    eventually("node listed", Duration::from_secs(10), || async {
        let listed = cp.admin("GET", "/api/nodes", None).await.json();
        listed["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node_id"] == "k8s-pod-1" && n["state"] == "up")
            .then_some(())
    })
    .await;
}

// --- probes and scrapes, served for real -----------------------------------

/// Every probe, health-check and scrape path the files name, with the port
/// they use, answers 200 on a running process; every port is the binary's
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_and_scrape_path_is_served() {
    let dp_port = accepted("apiproxy-dataplane").default_port("API_PROXY_METRICS_LISTEN");
    let cp_port = accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN");
    // (where, port, path)
    let mut wanted: Vec<(String, u16, String)> = vec![];

    let resources = k8s_resources();
    for d in resources.values().filter(|r| r["kind"] == "Deployment") {
        let name = s(&d["metadata"]["name"]);
        let pod = &d["spec"]["template"];
        for c in pod["spec"]["containers"].as_array().unwrap() {
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let get = &c[probe]["httpGet"];
                if get.is_object() {
                    wanted.push((
                        format!("{name} {probe}"),
                        container_port(c, &get["port"]),
                        s(&get["path"]).to_owned(),
                    ));
                }
            }
        }
        let a = &pod["metadata"]["annotations"];
        wanted.push((
            format!("{name} prometheus.io annotations"),
            s(&a["prometheus.io/port"]).parse().unwrap(),
            s(&a["prometheus.io/path"]).to_owned(),
        ));
    }
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        let path = job["metrics_path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_owned();
        let job_name = s(&job["job_name"]);
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            for host in sd["names"].as_array().unwrap() {
                assert!(
                    services.contains_key(s(host)),
                    "{job_name}: {host} is no compose service"
                );
            }
            assert_eq!(sd["type"], "A");
            wanted.push((
                format!("prometheus job {job_name}"),
                sd["port"].as_u64().unwrap() as u16,
                path.clone(),
            ));
        }
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for target in sc["targets"].as_array().unwrap() {
                let (host, port) = s(target).rsplit_once(':').unwrap();
                assert!(
                    services.contains_key(host),
                    "{job_name}: {host} is no compose service"
                );
                wanted.push((
                    format!("prometheus job {job_name}"),
                    port.parse().unwrap(),
                    path.clone(),
                ));
            }
        }
    }
    // Every data plane is scraped through DNS service discovery.
    assert!(prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["dns_sd_configs"][0]["names"] == json!(["dataplane"])
            && j["dns_sd_configs"][0]["port"] == dp_port));
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let prom_url = s(&datasource["datasources"][0]["url"]);
    assert!(services.contains_key(
        prom_url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap()
    ));
    assert!(read("docker-compose.yml")
        .contains("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml"));

    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let dp = DataPlane::start("{}", &[]);
    for (place, port, path) in &wanted {
        let addr = if *port == dp_port {
            dp.metrics_addr
        } else {
            assert_eq!(
                *port, cp_port,
                "{place}: port {port} is neither binary's default"
            );
            cp.addr
        };
        let url = format!("http://{addr}{path}");
        eventually(
            &format!("{place}: GET {path} -> 200"),
            Duration::from_secs(10),
            || async { (get(&url).await.0 == 200).then_some(()) },
        )
        .await;
        if path == "/metrics" {
            let body = get(&url).await.1;
            assert!(
                body.contains("# TYPE process_resident_memory_bytes"),
                "{place}: not Prometheus text"
            );
        }
    }
    assert!(wanted.len() >= 8, "{wanted:?}");

    // The image's HEALTHCHECK program: each role probes its binary's
    // default port, read from the same variable; a URL works too; a dead
    // port or a non-200 answer is unhealthy.
    let dp_listen = [("API_PROXY_METRICS_LISTEN", dp.metrics_addr.to_string())];
    assert_eq!(run_healthcheck(&["dataplane"], &dp_listen), 0);
    assert_eq!(run_healthcheck(&["dataplane", "/readyz"], &dp_listen), 0);
    assert_eq!(
        run_healthcheck(
            &["controlplane"],
            &[("API_PROXY_ADMIN_LISTEN", cp.addr.to_string())]
        ),
        0
    );
    assert_eq!(
        run_healthcheck(&[&format!("http://{}/readyz", cp.addr)], &[]),
        0
    );
    assert_eq!(
        run_healthcheck(&[&format!("http://{}/nope", dp.metrics_addr)], &[]),
        1
    );
    let closed = format!("127.0.0.1:{}", free_port());
    assert_eq!(
        run_healthcheck(&["dataplane"], &[("API_PROXY_METRICS_LISTEN", closed)]),
        1
    );
    // The role defaults are the binaries' defaults.
    let source = read("deploy/healthcheck.rs");
    assert!(source.contains(&format!(
        "(\"API_PROXY_METRICS_LISTEN\", \"0.0.0.0:{dp_port}\")"
    )));
    assert!(source.contains(&format!(
        "(\"API_PROXY_ADMIN_LISTEN\", \"0.0.0.0:{cp_port}\")"
    )));
}

// --- deploy/grafana ------------------------------------------------------------

/// A PromQL expression's metric selectors (name, label names) and grouping
/// labels (`by`, `without`, `on`, `ignoring`).
fn promql_refs(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut grouping) = (vec![], vec![]);
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // `{a="x", b=~"y"}` → label names; returns the index after `}`.
    let matchers = |mut i: usize, out: &mut Vec<String>| {
        i += 1;
        let mut label = String::new();
        while i < chars.len() && chars[i] != '}' {
            let c = chars[i];
            if c == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            } else if c.is_ascii_alphanumeric() || c == '_' {
                label.push(c);
            } else if !label.is_empty() {
                out.push(std::mem::take(&mut label));
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                if next < chars.len() && chars[next] == '(' {
                    let close = next + chars[next..].iter().position(|&c| c == ')').unwrap();
                    grouping.extend(
                        chars[next + 1..close]
                            .iter()
                            .collect::<String>()
                            .split(',')
                            .map(|l| l.trim().to_owned())
                            .filter(|l| !l.is_empty()),
                    );
                    i = close + 1;
                }
            } else if word.starts_with("apiproxy_") || word.starts_with("process_") {
                let mut labels = vec![];
                if next < chars.len() && chars[next] == '{' {
                    i = matchers(next, &mut labels);
                }
                metrics.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    (metrics, grouping)
}

/// Every PromQL expression of a dashboard: panel targets (rows included)
/// and template-variable queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn panels<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = vec![];
    panels(&dashboard["panels"], &mut all);
    let mut exprs: Vec<String> = all
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| s(&t["expr"]).to_owned())
        .collect();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = &var["query"];
            let q = q
                .as_str()
                .or_else(|| q["query"].as_str())
                .expect("variable query");
            // label_values(metric{…}, label): the selector is PromQL, and
            // the label is grouped on.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let (selector, label) = inner
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            exprs.push(format!("max by ({}) ({selector})", label.trim()));
        }
    }
    exprs
}

/// Samples of a scrape: name → label name → values.
fn scrape_index(body: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut index: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, _value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let entry = index.entry(name.to_owned()).or_default();
        let mut rest = labels;
        while let Some((k, v)) = rest.split_once("=\"") {
            let mut end = 0;
            let bytes = v.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            entry
                .entry(k.trim_start_matches(',').to_owned())
                .or_default()
                .insert(v[..end].to_owned());
            rest = v.get(end + 1..).unwrap_or("");
        }
    }
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_metrics_a_data_plane_exports() {
    // A data plane with one working mapping and one whose upstream is down;
    // one request each, and one unmatched, so every per-prefix series exists.
    let up = upstream::http(echo_handler()).await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let dp = DataPlane::start(&json!({"/svc": up.url(), "/down": down}).to_string(), &[]);
    assert_eq!(get_reply(dp.addr, "/svc/x").await.status, 200);
    assert_eq!(get_reply(dp.addr, "/down/x").await.status, 502);
    assert_eq!(get_reply(dp.addr, "/nothing").await.status, 404);
    let body = eventually("requests counted", Duration::from_secs(5), || async {
        let body = get(&format!("http://{}/metrics", dp.metrics_addr)).await.1;
        body.contains("apiproxy_requests_total{prefix=\"/svc\",status_class=\"2xx\"} 1")
            .then_some(body)
    })
    .await;
    let index = scrape_index(&body);

    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/dashboards/apiproxy.json"))
        .expect("dashboard JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let (metrics, grouping) = promql_refs(expr);
        assert!(!metrics.is_empty(), "no apiproxy metric in {expr}");
        let mut labels_here: BTreeSet<String> = ["instance", "job"]
            .iter()
            .map(|l| (*l).to_owned())
            .collect();
        for (name, labels) in &metrics {
            let series = index.get(name).unwrap_or_else(|| {
                panic!(
                    "{name} (in {expr}) is not exported by a running data plane; it exports: {:?}",
                    index.keys().collect::<Vec<_>>()
                )
            });
            for label in labels {
                assert!(
                    series.contains_key(label) || label == "instance" || label == "job",
                    "{name} has no label {label} (in {expr})"
                );
            }
            labels_here.extend(series.keys().cloned());
            used.insert(name.clone());
        }
        for label in &grouping {
            assert!(
                labels_here.contains(label),
                "grouping by {label} in {expr}: no such label"
            );
        }
        // Label values the queries match literally exist.
        for (label, value) in [("status_class", "5xx"), ("result", "error")] {
            if expr.contains(&format!("{label}=\"{value}\"")) {
                assert!(
                    index
                        .values()
                        .any(|l| l.get(label).is_some_and(|v| v.contains(value))),
                    "{label}={value}"
                );
            }
        }
    }

    // What the issue asks the dashboard to show.
    let all = exprs.join("\n");
    assert!(
        all.contains("sum by (prefix) (rate(apiproxy_requests_total"),
        "requests/s per prefix"
    );
    assert!(all.contains("status_class=\"5xx\""), "error rate");
    for histogram in [
        "apiproxy_request_duration_seconds",
        "apiproxy_time_to_first_byte_seconds",
    ] {
        for q in ["0.5", "0.99"] {
            assert!(
                all.contains(&format!(
                    "histogram_quantile({q}, sum by (le, prefix) (rate({histogram}_bucket"
                )),
                "p{q} of {histogram}"
            );
        }
    }
    for gauge in ["apiproxy_inflight_requests", "apiproxy_config_version"] {
        assert!(used.contains(gauge), "{gauge} not shown");
    }
    assert!(
        all.contains("by (instance) (apiproxy_config_version"),
        "config version per node"
    );

    // Panels use the dashboard's data-source variable; ids are unique.
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }

    // Provisioning: the provider reads where compose mounts the dashboards.
    let provider = yaml("deploy/grafana/provisioning/dashboards/apiproxy.yaml");
    let path = s(&provider["providers"][0]["options"]["path"]);
    assert!(read("docker-compose.yml").contains(&format!("./deploy/grafana/dashboards:{path}")));
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(datasource["datasources"][0]["type"], "prometheus");
}

// --- .env.example ----------------------------------------------------------------

/// `NAME=value` and `# NAME=value` lines: name → (value, active, the
/// comment line above).
fn env_example() -> BTreeMap<String, (String, bool, String)> {
    let text = read(".env.example");
    let mut out = BTreeMap::new();
    let mut previous = String::new();
    for line in text.lines() {
        let (body, active) = match line.strip_prefix("# ") {
            Some(rest) => (rest, false),
            None => (line, true),
        };
        let is_assignment = body.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if is_assignment {
            let (k, v) = body.split_once('=').unwrap();
            assert!(
                out.insert(k.to_owned(), (v.to_owned(), active, previous.clone()))
                    .is_none(),
                ".env.example lists {k} twice"
            );
        } else {
            assert!(
                !active || line.is_empty() || line.starts_with('#'),
                "stray line in .env.example: {line}"
            );
        }
        previous = line.to_owned();
    }
    out
}

#[test]
fn env_example_lists_every_variable_with_its_default_and_no_working_secret() {
    let example = env_example();
    for bin in ["apiproxy-dataplane", "apiproxy-controlplane"] {
        let acc = accepted(bin);
        for (name, default) in &acc.vars {
            let (value, _, comment) = example
                .get(name)
                .unwrap_or_else(|| panic!(".env.example does not list {name} ({bin})"));
            assert!(
                comment.starts_with("# ") && !comment.contains('='),
                "{name}: a one-line meaning above it, got {comment:?}"
            );
            if let Some(default) = default {
                assert_eq!(
                    value, default,
                    ".env.example shows {name}={value}, the default is {default}"
                );
            }
        }
    }
    // Only the secrets are set, and none of them works.
    let active: BTreeSet<&str> = example
        .iter()
        .filter(|(_, v)| v.1)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        active,
        BTreeSet::from(["ADMIN_TOKEN", "API_PROXY_NODE_TOKEN", "REDIS_PASSWORD"])
    );
    assert_eq!(example["ADMIN_TOKEN"].0, PLACEHOLDER);
    assert_eq!(example["API_PROXY_NODE_TOKEN"].0, "");
    assert_eq!(example["REDIS_PASSWORD"].0, "");
    assert_refused(
        "apiproxy-controlplane",
        &[
            ("ADMIN_TOKEN".into(), example["ADMIN_TOKEN"].0.clone()),
            ("API_PROXY_REDIS_URL".into(), "redis://127.0.0.1:1/".into()),
        ],
        "placeholder",
    );

    // Every variable docker-compose.yml interpolates is documented, and
    // every documented one is read by a binary or by compose.
    let compose_names = interpolated_names(&read("docker-compose.yml"));
    for name in &compose_names {
        assert!(
            example.contains_key(name),
            "docker-compose.yml uses {name}: add it to .env.example"
        );
    }
    for name in example.keys() {
        let known = compose_names.contains(name)
            || accepted("apiproxy-dataplane").has(name)
            || accepted("apiproxy-controlplane").has(name);
        assert!(known, ".env.example lists {name}, which nothing reads");
    }
}

// --- deploy/local ----------------------------------------------------------------

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

async fn bearer(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> apiproxy_tests::client::Reply {
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
            ("LOCAL_REDIS_PORT".into(), free_port().to_string()),
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
    let reply = bearer(
        cp,
        "POST",
        "/api/mappings",
        token,
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
            let reply = bearer(cp, "GET", "/api/nodes", token, None).await;
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
