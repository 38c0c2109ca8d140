//! Fixtures for the end-to-end tests: the real `apiproxy-dataplane` binary
//! started on `127.0.0.1:0`, real upstream servers on `127.0.0.1:0`, and
//! clients that can misbehave on purpose.

pub mod browser;
pub mod client;
pub mod controlplane;
pub mod dataplane;
pub mod deploy;
pub mod origins;
pub mod redis;
pub mod tls;
pub mod upstream;

pub use dataplane::DataPlane;

use std::time::{Duration, Instant};

/// A mappings file with one entry, `{prefix: target}`.
pub fn one_mapping(prefix: &str, target: &str) -> String {
    serde_json::json!({ prefix: target }).to_string()
}

/// Polls `check` until it returns `Some`, or panics with `what` after
/// `timeout`. Tests wait for conditions, never for fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago, for a child process that cannot
/// listen on port 0 and tell where it bound (`redis-server`, nginx,
/// haproxy): its start must detect a failed bind and retry with another
/// port, since another process may take this one first. Servers in the
/// test process bind `127.0.0.1:0` and hand the listener over; the
/// workspace binaries listen on `127.0.0.1:0` and log their address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address on 127.0.0.1 that refuses every connection for as long as
/// the test process runs, for a target that is down: a socket bound there
/// that never listens holds the port, so no other process can take it (a
/// port that was merely free a moment ago could be).
pub fn refusing_addr() -> std::net::SocketAddr {
    static HELD: std::sync::OnceLock<(tokio::net::TcpSocket, std::net::SocketAddr)> =
        std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("bound address");
        (socket, addr)
    })
    .1
}

/// Whether process `pid` itself holds a socket listening on TCP `port` of
/// 127.0.0.1 (`/proc/net/tcp` lists the listening sockets, the process's
/// `fd` directory names the sockets it holds). A connection to the port
/// would not tell: it may reach another process that took the port first.
pub(crate) fn listens_on(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
}

/// Every binary a fixture started is checked, when the fixture is
/// dropped, for the secrets the fixtures hand out: so a whole test run,
/// not only `tests/secrets.rs`, shows that no log line carries one.
pub(crate) fn assert_no_secrets_logged(binary: &str, logs: &std::sync::Mutex<Vec<String>>) {
    if std::thread::panicking() {
        return; // the test failed already; a second panic would abort
    }
    let logs = logs.lock().unwrap();
    for secret in [controlplane::ADMIN_TOKEN, controlplane::NODE_TOKEN] {
        if let Some(line) = logs.iter().find(|line| line.contains(secret)) {
            panic!("{binary} logged a secret: {line}");
        }
    }
}

/// Directory for one test's files, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "apiproxy-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
