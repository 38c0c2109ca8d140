//! What the deployment tests share: the repository's files read and
//! parsed, what each binary accepts (from its `--help`), commands run to
//! their end, and the image's health-check program. Each artifact's tests
//! are a test target of their own (`tests/deploy_*.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::dataplane::{binary, wait_exit};
use crate::TempDir;

/// The node token the deployment tests hand the binaries.
pub const NODE_TOKEN: &str = "deploy-test-node-token-0123456789";
/// The `.env.example` placeholder the control plane refuses (SPEC §2).
pub const PLACEHOLDER: &str = "change-me-to-a-long-random-secret";
/// The secrets either binary also reads from a file named by `NAME_FILE`.
pub const SECRETS_FROM_FILES: [&str; 4] = [
    "ADMIN_TOKEN",
    "API_PROXY_NODE_TOKEN",
    "API_PROXY_SECRETS_KEY",
    "API_PROXY_REDIS_URL",
];
/// The proxy listener's default port: `API_PROXY_LISTEN` has no clap
/// default (it depends on `PORT`), so its help text states it.
pub const PROXY_PORT: u16 = 8000;

// --- files ---------------------------------------------------------------

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML stream (split on `---` lines), as JSON values,
/// with merge keys (`<<: *anchor`) applied as compose applies them.
pub fn parse_yaml_stream(text: &str, what: &str) -> Vec<Value> {
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
            let mut yaml = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(doc)
                .unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}"));
            yaml.apply_merge()
                .unwrap_or_else(|e| panic!("{what}: invalid merge key: {e}"));
            serde_yaml_ng::from_value::<Value>(yaml)
                .unwrap_or_else(|e| panic!("{what}: not JSON-like YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

pub fn yaml_docs(rel: &str) -> Vec<Value> {
    parse_yaml_stream(&read(rel), rel)
}

pub fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

pub fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

// --- what the binaries accept ----------------------------------------------

/// The environment variables a binary reads, with their defaults where
/// `--help` states one.
#[derive(Debug)]
pub struct Accepted {
    pub vars: BTreeMap<String, Option<String>>,
    pub help: String,
}

impl Accepted {
    pub fn has(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    pub fn default(&self, name: &str) -> Option<&str> {
        self.vars.get(name).and_then(|d| d.as_deref())
    }

    /// Port of a listen address's default (`0.0.0.0:9000` → 9000).
    pub fn default_port(&self, name: &str) -> u16 {
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

pub fn accepted(bin: &str) -> &'static Accepted {
    static DATAPLANE: OnceLock<Accepted> = OnceLock::new();
    static CONTROLPLANE: OnceLock<Accepted> = OnceLock::new();
    // Environment only, never flags (SPEC §2), so `--help` cannot list
    // them; RUST_LOG is the log level (SPEC §2, "Level by RUST_LOG").
    let (cell, env_only): (_, &[&str]) = match bin {
        "apiproxy-dataplane" => (
            &DATAPLANE,
            &[
                "API_PROXY_NODE_TOKEN",
                "API_PROXY_REDIS_SENTINEL_PASSWORD",
                "API_PROXY_SECRETS_KEY",
                "PORT",
                "RUST_LOG",
            ],
        ),
        "apiproxy-controlplane" => (
            &CONTROLPLANE,
            &[
                "ADMIN_TOKEN",
                "API_PROXY_NODE_TOKEN",
                "API_PROXY_REDIS_SENTINEL_PASSWORD",
                "API_PROXY_SECRETS_KEY",
                "RUST_LOG",
            ],
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
        // A secret this binary reads may come from a file instead,
        // `NAME_FILE` (README, Configuration): environment only too.
        for name in SECRETS_FROM_FILES {
            let file_var = format!("{name}_FILE");
            assert!(
                !vars.contains_key(&file_var),
                "{bin} --help lists {file_var}"
            );
            if vars.contains_key(name) {
                vars.insert(file_var, None);
            }
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
pub fn binary_of(command: &Value) -> &'static str {
    let first = s(&command[0]);
    match first.rsplit('/').next() {
        Some("apiproxy-dataplane") => "apiproxy-dataplane",
        Some("apiproxy-controlplane") => "apiproxy-controlplane",
        _ => panic!("unexpected command {command}"),
    }
}

pub fn assert_accepted(bin: &str, names: impl IntoIterator<Item = String>, place: &str) {
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
pub fn duration(text: &str) -> Duration {
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

// --- processes -------------------------------------------------------------

/// Runs a command to its end, at most `timeout`; returns its status and
/// its stdout and stderr together.
pub fn run(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String) {
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

/// Owned `(name, value)` settings as the fixtures take them.
pub fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Runs a binary with exactly `env` (plus PATH) and expects it to refuse
/// to start: exit 64 with a line naming `needle`. Returns what it printed.
pub fn assert_refused(bin: &str, env: &[(String, String)], needle: &str) -> String {
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
    output
}

/// `deploy/healthcheck.rs`, the image's HEALTHCHECK program, compiled once
/// with `rustc` exactly as the Dockerfile does (warnings denied).
pub fn healthcheck() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = target_tmpdir().join(format!("apiproxy-healthcheck-{}", test_binary_name()));
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
pub fn run_healthcheck(args: &[&str], env: &[(&str, String)]) -> i32 {
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

/// `target/tmp`, where a test may leave build products (what
/// `CARGO_TARGET_TMPDIR` names for an integration test): the test
/// executable lives in `target/<profile>/deps/`.
pub fn target_tmpdir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe.ancestors().nth(3).expect("target dir");
    let dir = target.join("tmp");
    std::fs::create_dir_all(&dir).expect("create target/tmp");
    dir
}

/// This test executable's name: each test target compiles its own copy of
/// the health check, so two targets run at once never write one file.
fn test_binary_name() -> String {
    let exe = std::env::current_exe().expect("current exe");
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 name");
    stem.to_owned()
}

// --- docker-compose.yml ------------------------------------------------------

pub fn compose() -> Value {
    yaml("docker-compose.yml")
}

// --- deploy/k8s ----------------------------------------------------------------

pub const K8S: &str = "deploy/k8s";

/// The base's resources, by `Kind/name`.
pub fn k8s_resources() -> BTreeMap<String, Value> {
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

/// The container port a probe or Service names (by name or number).
pub fn container_port(container: &Value, port: &Value) -> u16 {
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
