//! Secrets never reach the logs: the admin token, the node token, the Redis
//! password, session cookies and the API keys clients send through the
//! proxy, at the most verbose log level, across sign-in, API calls, stats
//! pushes, proxied requests (good and failing) and a Redis outage. Each
//! secret may come from a file (`NAME_FILE`), and a bad one is refused
//! without showing what it holds.

use std::time::Duration;

use apiproxy_tests::client::{call, get_reply};
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::deploy::assert_refused;
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane, TempDir};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

const NODE_TOKEN: &str = "node-secret-9f8e7d6c5b4a39281706";
const REDIS_PASSWORD: &str = "redis-secret-0a1b2c3d4e5f6a7b";
const OPENAI_KEY: &str = "sk-proj-secret-abcdefghijklmnopqrstuvwxyz012345";
const ANTHROPIC_KEY: &str = "sk-ant-secret-zyxwvutsrqponmlkjihgfedcba98765";
const GEMINI_KEY: &str = "AIzaSy-secret-0123456789abcdefghijklmn";
const CLIENT_COOKIE: &str = "client-session-secret-55aa55aa55aa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_ever_logged() {
    let mut redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD], false);
    let url = format!("redis://:{REDIS_PASSWORD}@{}/", redis.addr());
    let debug = ("RUST_LOG", "debug");
    let cp = ControlPlane::start(&url, &[("API_PROXY_NODE_TOKEN", NODE_TOKEN), debug]);
    let cp_url = format!("http://{}", cp.addr);
    let dp = DataPlane::start_redis(
        &url,
        &[
            ("API_PROXY_CONTROLPLANE_URL", &cp_url),
            ("API_PROXY_NODE_TOKEN", NODE_TOKEN),
            ("API_PROXY_STATS_INTERVAL", "100ms"),
            // The access log too, with the query (its credentials masked).
            ("API_PROXY_ACCESS_LOG", "access.log"),
            ("API_PROXY_ACCESS_LOG_QUERY", "true"),
            debug,
        ],
    );
    let up = upstream::http(echo_handler()).await;

    // Sign in (cookie), then use both the cookie and the bearer token.
    let login = call(
        cp.addr,
        Request::post("/api/admin/login")
            .header("host", "cp")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"token": ADMIN_TOKEN}).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 200);
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();
    let session_id = session.split_once('=').unwrap().1.to_owned();
    let created = call(
        cp.addr,
        Request::post("/api/mappings")
            .header("host", "cp")
            .header("cookie", &session)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"prefix": "/openai", "target": up.url()}).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    // A wrong token and a wrong cookie are refused, and not logged either.
    let wrong = cp.admin("GET", "/api/mappings", None).await;
    assert_eq!(wrong.status, 200);
    let refused = call(
        cp.addr,
        Request::post("/api/admin/login")
            .header("host", "cp")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"token": format!("{ADMIN_TOKEN}-wrong")}).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 401);

    // Client credentials through the proxy: to a good upstream, to a dead
    // one, and to no mapping at all.
    dp.wait_status("/openai/v1/models", 200).await;
    let gemini_style = format!("/openai/v1/models?key={GEMINI_KEY}&alt=sse");
    for path in [
        "/openai/v1/chat/completions",
        "/nothing/here",
        &gemini_style,
    ] {
        let reply = call(
            dp.addr,
            Request::post(path)
                .header("host", "proxy")
                .header("authorization", format!("Bearer {OPENAI_KEY}"))
                .header("x-api-key", ANTHROPIC_KEY)
                .header("x-goog-api-key", GEMINI_KEY)
                .header("cookie", format!("sid={CLIENT_COOKIE}"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await;
        assert!(reply.status == 200 || reply.status == 404, "{path}");
    }
    drop(up);
    let failed = call(
        dp.addr,
        Request::get("/openai/v1/models")
            .header("host", "proxy")
            .header("authorization", format!("Bearer {OPENAI_KEY}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(failed.status, 502);

    // Stats reach the control plane (pushes with the node token).
    eventually("stats pushed", Duration::from_secs(5), || async {
        let s = get_reply(cp.addr, "/stats").await.json();
        (s["total"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    // Redis goes away and comes back: connection errors are logged.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = cp.admin("GET", "/api/mappings", None).await;
    redis.restart();
    eventually(
        "control plane ready again",
        Duration::from_secs(10),
        || async { (get_reply(cp.addr, "/readyz").await.status == 200).then_some(()) },
    )
    .await;

    let access_log = std::fs::read_to_string(dp.dir.path("access.log")).unwrap();
    assert!(
        access_log.lines().count() >= 4 && access_log.contains("key=***"),
        "the access log has the requests: {access_log}"
    );
    let logs: Vec<String> = cp
        .logs()
        .into_iter()
        .chain(dp.logs())
        .chain(access_log.lines().map(str::to_owned))
        .collect();
    assert!(
        logs.len() > 20,
        "too few log lines to judge: {}",
        logs.len()
    );
    // The paths that carry secrets were really taken: sign-in, the failed
    // upstream, the Redis outage.
    for needle in ["failed admin login", "upstream request failed", "Redis"] {
        assert!(
            logs.iter().any(|l| l.contains(needle)),
            "no log line with {needle:?}"
        );
    }
    for secret in [
        ADMIN_TOKEN,
        NODE_TOKEN,
        REDIS_PASSWORD,
        OPENAI_KEY,
        ANTHROPIC_KEY,
        GEMINI_KEY,
        CLIENT_COOKIE,
        &session_id,
    ] {
        if let Some(line) = logs.iter().find(|l| l.contains(secret)) {
            panic!("a secret reached the logs: {line}");
        }
    }
}

/// A binary, the environment it is refused with, what its message names.
type RefusedCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);

/// Both binaries read their secrets from `NAME_FILE` (the final line
/// break dropped): a control plane with its admin token, node token and
/// Redis URL in files serves the admin API with that token; a data plane
/// with its Redis URL and node token in files (and an empty secrets-key
/// file: no key) routes a mapping from that Redis and its pushes are
/// accepted. Both forms of one secret, a file that cannot be read, an
/// empty node token: exit 64, naming the variable, never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files() {
    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD], false);
    let url = format!("redis://:{REDIS_PASSWORD}@{}/", redis.addr());
    let dir = TempDir::new("secret-files");
    let file = |name: &str, content: &str| -> String {
        let path = dir.path(name);
        std::fs::write(&path, format!("{content}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let admin_token = file("admin-token", ADMIN_TOKEN);
    let node_token = file("node-token", NODE_TOKEN);
    let redis_url = file("redis-url", &url);
    let no_key = dir.path("secrets-key");
    std::fs::write(&no_key, "").unwrap();
    let no_key = no_key.to_str().unwrap();

    let cp = ControlPlane::start_env(&[
        ("ADMIN_TOKEN_FILE", &admin_token),
        ("API_PROXY_NODE_TOKEN_FILE", &node_token),
        ("API_PROXY_REDIS_URL_FILE", &redis_url),
    ]);
    let up = upstream::http(echo_handler()).await;
    let created = cp.create("/from-files", &up.url()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let listed = cp.admin("GET", "/api/mappings", None).await;
    assert_eq!(listed.status, 200, "the admin token is the file's");

    let cp_url = format!("http://{}", cp.addr);
    let dp = DataPlane::start_env(&[
        ("API_PROXY_REDIS_URL_FILE", &redis_url),
        ("API_PROXY_NODE_TOKEN_FILE", &node_token),
        ("API_PROXY_SECRETS_KEY_FILE", no_key),
        ("API_PROXY_CONTROLPLANE_URL", &cp_url),
        ("API_PROXY_NODE_ID", "node-from-files"),
        ("API_PROXY_STATS_INTERVAL", "100ms"),
    ]);
    dp.wait_status("/from-files/v1/models", 200).await;
    cp.wait_node_up("node-from-files").await;
    eventually("the request counted", Duration::from_secs(5), || async {
        let s = get_reply(cp.addr, "/stats").await.json();
        (s["total"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    for line in cp.logs().iter().chain(&dp.logs()) {
        assert!(
            !line.contains(REDIS_PASSWORD),
            "a secret was logged: {line}"
        );
    }

    // Refused before anything binds; the message names the variables and
    // the path, never what the variable or the file holds.
    let other = file("other-token", "file-secret-0123456789abcdef");
    let gone = dir.path("gone").to_str().unwrap().to_owned();
    let a_dir = dir.0.to_str().unwrap().to_owned();
    let empty = no_key.to_owned();
    let cases: [RefusedCase<'_>; 6] = [
        (
            "apiproxy-controlplane",
            vec![("ADMIN_TOKEN", ADMIN_TOKEN), ("ADMIN_TOKEN_FILE", &other)],
            vec!["ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set"],
        ),
        (
            "apiproxy-dataplane",
            vec![
                ("API_PROXY_REDIS_URL_FILE", &redis_url),
                ("API_PROXY_NODE_TOKEN", NODE_TOKEN),
                ("API_PROXY_NODE_TOKEN_FILE", &other),
            ],
            vec!["API_PROXY_NODE_TOKEN and API_PROXY_NODE_TOKEN_FILE are both set"],
        ),
        (
            "apiproxy-controlplane",
            vec![
                ("ADMIN_TOKEN_FILE", &admin_token),
                ("API_PROXY_REDIS_URL_FILE", &gone),
            ],
            vec!["API_PROXY_REDIS_URL_FILE: cannot read", &gone],
        ),
        (
            "apiproxy-dataplane",
            vec![
                ("API_PROXY_NODE_TOKEN_FILE", &node_token),
                ("API_PROXY_REDIS_URL_FILE", &gone),
            ],
            vec!["API_PROXY_REDIS_URL_FILE: cannot read", &gone],
        ),
        (
            "apiproxy-dataplane",
            vec![
                ("API_PROXY_NODE_TOKEN_FILE", &node_token),
                ("API_PROXY_SECRETS_KEY_FILE", &a_dir),
                ("API_PROXY_REDIS_URL_FILE", &redis_url),
            ],
            vec!["API_PROXY_SECRETS_KEY_FILE: cannot read", &a_dir],
        ),
        // An empty file is an empty value: a node token is then missing.
        (
            "apiproxy-dataplane",
            vec![
                ("API_PROXY_REDIS_URL_FILE", &redis_url),
                ("API_PROXY_CONTROLPLANE_URL", &cp_url),
                ("API_PROXY_NODE_TOKEN_FILE", &empty),
            ],
            vec!["API_PROXY_NODE_TOKEN must be set"],
        ),
    ];
    for (bin, env, needles) in cases {
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let output = assert_refused(bin, &env, needles[0]);
        for needle in &needles[1..] {
            assert!(
                output.contains(needle),
                "{bin}: {output:?} should name {needle}"
            );
        }
        assert_eq!(output.lines().count(), 1, "{bin}: one line: {output:?}");
        for secret in [
            ADMIN_TOKEN,
            NODE_TOKEN,
            REDIS_PASSWORD,
            "file-secret-0123456789abcdef",
        ] {
            assert!(!output.contains(secret), "{bin} showed a secret: {output}");
        }
    }
}
