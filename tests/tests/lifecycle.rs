//! Health, readiness, metrics and live reload of the mappings file (the
//! drain on SIGTERM and SIGINT is in `tests/shutdown.rs`).

use std::time::{Duration, Instant};

use apiproxy_tests::client::{get, get_reply};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_live_on_their_own_port() {
    let up = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(
        &serde_json::json!({"/up": up.url(), "bad": "x"}).to_string(),
        &[],
    );
    let base = format!("http://{}", dp.metrics_addr);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    assert_eq!(get_reply(dp.addr, "/up/v1").await.status, 200);
    let m = dp.metrics().await;
    assert_eq!(
        m[r#"apiproxy_requests_total{prefix="/up",status_class="2xx"}"#],
        1.0
    );
    assert_eq!(
        m[r#"apiproxy_request_duration_seconds_count{prefix="/up"}"#],
        1.0
    );
    assert_eq!(
        m[r#"apiproxy_time_to_first_byte_seconds_count{prefix="/up"}"#],
        1.0
    );
    assert_eq!(m["apiproxy_config_version"], 1.0);
    assert_eq!(
        m["apiproxy_config_invalid_entries"], 1.0,
        "the invalid entry was skipped and counted"
    );
    assert_eq!(m["apiproxy_inflight_requests"], 0.0);
    assert!(m["process_resident_memory_bytes"] > 0.0);
    assert!(m["process_open_fds"] > 0.0);
    assert_eq!(m[r#"apiproxy_build_info{version="0.1.0"}"#], 1.0);
    // The proxy port does not serve them.
    assert_eq!(get_reply(dp.addr, "/metrics").await.status, 404);
    assert_eq!(get_reply(dp.addr, "/healthz").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_file_changes_apply_within_a_second_and_bad_files_keep_the_last_snapshot() {
    let a = upstream::http(echo_handler()).await;
    let b = upstream::http(echo_handler()).await;
    let dp = DataPlane::start(&serde_json::json!({"/a": a.url()}).to_string(), &[]);
    let file = dp.dir.path("mappings.json");
    assert_eq!(get_reply(dp.addr, "/b/x").await.status, 404);

    // In-place edit.
    std::fs::write(
        &file,
        serde_json::json!({"/a": a.url(), "/b": b.url()}).to_string(),
    )
    .unwrap();
    let start = Instant::now();
    eventually("/b routed", Duration::from_secs(2), || async {
        (get_reply(dp.addr, "/b/x").await.status == 200).then_some(())
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(dp.metric("apiproxy_config_version").await, 2.0);

    // A broken file: the previous snapshot stays, the error is counted and logged.
    std::fs::write(&file, "{ not json").unwrap();
    eventually("reload error counted", Duration::from_secs(2), || async {
        (dp.metric(r#"apiproxy_config_reloads_total{result="error"}"#)
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(get_reply(dp.addr, "/b/x").await.status, 200);
    assert_eq!(dp.metric("apiproxy_config_version").await, 2.0);
    // The log line crosses a pipe to the test's reader: it may trail the
    // counter it was written beside.
    eventually("reload error logged", Duration::from_secs(2), || async {
        dp.logs()
            .iter()
            .any(|l| l.contains("keeping the previous mappings"))
            .then_some(())
    })
    .await;

    // Atomic replace (write + rename), TOML this time is not the name: JSON.
    let tmp = dp.dir.path("new.json");
    std::fs::write(&tmp, serde_json::json!({"/b": b.url()}).to_string()).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("/a removed", Duration::from_secs(2), || async {
        (get_reply(dp.addr, "/a/x").await.status == 404).then_some(())
    })
    .await;
    assert_eq!(dp.metric("apiproxy_config_version").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_mappings_file() {
    let up = upstream::http(echo_handler()).await;
    let dir = apiproxy_tests::TempDir::new("toml");
    let file = dir.path("m.toml");
    std::fs::write(&file, format!("\"/t\" = \"{}\"\n", up.url())).unwrap();
    let dp = DataPlane::start("{}", &[("API_PROXY_MAPPINGS_FILE", file.to_str().unwrap())]);
    assert_eq!(get_reply(dp.addr, "/t/x").await.json()["uri"], "/x");
}

/// Both binaries serve until SIGTERM however quiet their log, then exit 0:
/// waiting for the signal must not hang on the log level (a disabled
/// `info!` does not evaluate its arguments, so an await among them would
/// never run and the binary would stop at once).
#[test]
fn both_binaries_wait_for_the_signal_at_any_log_level() {
    use std::process::{Command, Stdio};

    let dir = apiproxy_tests::TempDir::new("quiet");
    let mappings = dir.path("mappings.json");
    std::fs::write(&mappings, r#"{"/a": "http://127.0.0.1:9"}"#).unwrap();
    let dataplane_env = [
        ("API_PROXY_MAPPINGS_FILE", mappings.to_str().unwrap()),
        ("API_PROXY_LISTEN", "127.0.0.1:0"),
        ("API_PROXY_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    // Redis is not needed to serve: the connection is made lazily.
    let controlplane_env = [
        ("API_PROXY_REDIS_URL", "redis://127.0.0.1:1/"),
        ("API_PROXY_ADMIN_LISTEN", "127.0.0.1:0"),
        ("ADMIN_TOKEN", apiproxy_tests::controlplane::ADMIN_TOKEN),
    ];
    let binaries: [(&str, &[(&str, &str)]); 2] = [
        ("apiproxy-dataplane", &dataplane_env),
        ("apiproxy-controlplane", &controlplane_env),
    ];
    for (name, env) in binaries {
        for level in ["warn", "off"] {
            let mut child = Command::new(apiproxy_tests::dataplane::binary(name))
                .env_clear()
                .envs(env.iter().copied())
                .env("RUST_LOG", level)
                .current_dir(&dir.0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Without a signal it keeps serving (it stopped within
            // milliseconds when the wait was skipped).
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                let exited = child.try_wait().unwrap();
                assert!(
                    exited.is_none(),
                    "{name} RUST_LOG={level}: exited unsignalled: {exited:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let kill = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{name} RUST_LOG={level}: no exit 10 s after SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            assert_eq!(status.code(), Some(0), "{name} RUST_LOG={level}");
        }
    }
}
