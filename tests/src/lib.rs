//! Fixtures for the end-to-end tests: the real `apiproxy-dataplane` binary
//! started on `127.0.0.1:0`, real upstream servers on `127.0.0.1:0`, and
//! clients that can misbehave on purpose.

pub mod browser;
pub mod client;
pub mod controlplane;
pub mod dataplane;
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

/// A port that was free a moment ago, for a server that must come back on
/// the same address after a restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
