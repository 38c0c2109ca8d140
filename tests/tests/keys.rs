//! Proxy keys and policies at the data plane, end to end with the real
//! binary, a real Redis and real upstreams: each SDK's key placement is
//! accepted and replaced by the real credential (the proxy key never
//! reaches the upstream), 401 and 403 for each case, a node without the
//! secrets key fails closed, and a revoked key stops at once under load
//! while a stream already running finishes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiproxy_shared::access::{
    key_hash, key_hash_hex, key_id_of, new_proxy_key, Access, CredentialPlace, KeyRecord,
    SecretsKey, StoredCredential, StoredPolicy,
};
use apiproxy_shared::{RedisKeys, UpdateOp};
use apiproxy_tests::client::{call, send};
use apiproxy_tests::controlplane::ControlPlane;
use apiproxy_tests::redis::{put_gate_entry, upsert, RedisServer};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const LOG: &str = "access.log";

/// A key made as the control plane makes one: its secret and the record
/// Redis holds.
struct Key {
    secret: String,
    record: KeyRecord,
}

impl Key {
    fn new(prefixes: Option<&[&str]>) -> Key {
        let secret = new_proxy_key();
        Key {
            record: KeyRecord {
                id: key_id_of(&key_hash(secret.as_bytes())),
                name: "test".into(),
                prefixes: prefixes.map(|p| p.iter().map(|s| s.to_string()).collect()),
                enabled: true,
                expires_at: None,
                created_at: 1,
                sha256: key_hash_hex(secret.as_bytes()),
            },
            secret,
        }
    }

    async fn store(&self, conn: &mut redis::aio::MultiplexedConnection) -> u64 {
        let json = serde_json::to_string(&self.record).unwrap();
        put_gate_entry(
            conn,
            &RedisKeys::default(),
            UpdateOp::Key,
            &self.record.id,
            Some(&json),
        )
        .await
    }
}

fn header_place(header: &str, template: &str) -> CredentialPlace {
    CredentialPlace {
        header: Some(header.into()),
        template: Some(template.into()),
        query: None,
    }
}

fn query_place(name: &str) -> CredentialPlace {
    CredentialPlace {
        header: None,
        template: None,
        query: Some(name.into()),
    }
}

async fn store_policy(
    conn: &mut redis::aio::MultiplexedConnection,
    secrets: &SecretsKey,
    prefix: &str,
    credential: Option<(CredentialPlace, &str)>,
) -> u64 {
    let policy = StoredPolicy {
        access: Access::Key,
        upstream_credential: credential.map(|(place, secret)| StoredCredential {
            place,
            sealed: secrets.seal(prefix, secret),
            secret_hint: "…".into(),
        }),
    };
    let json = serde_json::to_string(&policy).unwrap();
    put_gate_entry(
        conn,
        &RedisKeys::default(),
        UpdateOp::Policy,
        prefix,
        Some(&json),
    )
    .await
}

/// What every test here starts from: a Redis, an echo upstream and a
/// secrets key (its text, as a node's environment takes it).
struct Fixture {
    redis: RedisServer,
    conn: redis::aio::MultiplexedConnection,
    echo: upstream::Upstream,
    secrets_text: String,
    secrets: SecretsKey,
}

impl Fixture {
    /// Also maps each of `prefixes` to the echo upstream.
    async fn start(prefixes: &[&str]) -> Fixture {
        let redis = RedisServer::start();
        let mut conn = redis.conn().await;
        let echo = upstream::http(echo_handler()).await;
        for prefix in prefixes {
            upsert(&mut conn, &RedisKeys::default(), prefix, &echo.url()).await;
        }
        let secrets_text = SecretsKey::generate();
        let secrets = SecretsKey::from_base64(&secrets_text).unwrap();
        Fixture {
            redis,
            conn,
            echo,
            secrets_text,
            secrets,
        }
    }
}

fn request(path: &str, header: Option<(&str, &str)>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", "proxy.test");
    if let Some((name, value)) = header {
        builder = builder.header(name, value);
    }
    builder.body(Full::default()).unwrap()
}

/// The upstream's view of a request the echo upstream answered.
async fn echoed(dp: &DataPlane, req: Request<Full<Bytes>>) -> Value {
    let reply = call(dp.addr, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// The status and error type of a refused request, checking its shape.
async fn refused(dp: &DataPlane, req: Request<Full<Bytes>>) -> (u16, String) {
    let reply = call(dp.addr, req).await;
    let body = reply.json();
    let kind = body["error"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        reply.headers["x-apiproxy-error"].to_str().unwrap(),
        kind,
        "{body}"
    );
    assert!(body["error"]["request_id"].is_string(), "{body}");
    (reply.status.as_u16(), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_placement_is_accepted_and_replaced_upstream() {
    let prefixes = [
        "/openai",
        "/anthropic",
        "/gemini",
        "/gemini-q",
        "/bare",
        "/open",
    ];
    let Fixture {
        redis,
        mut conn,
        echo: _echo,
        secrets_text,
        secrets,
    } = Fixture::start(&prefixes).await;
    for (prefix, place, secret) in [
        (
            "/openai",
            header_place("Authorization", "Bearer {secret}"),
            "sk-openai-real",
        ),
        (
            "/anthropic",
            header_place("x-api-key", "{secret}"),
            "sk-ant-real",
        ),
        (
            "/gemini",
            header_place("x-goog-api-key", "{secret}"),
            "AIza-real",
        ),
        ("/gemini-q", query_place("key"), "AIza/q+real"),
    ] {
        store_policy(&mut conn, &secrets, prefix, Some((place, secret))).await;
    }
    // Keyed, no credential: the client's own upstream key passes.
    store_policy(&mut conn, &secrets, "/bare", None).await;
    let all = Key::new(None);
    all.store(&mut conn).await;
    let only_openai = Key::new(Some(&["/openai"]));
    only_openai.store(&mut conn).await;
    let mut disabled = Key::new(None);
    disabled.record.enabled = false;
    disabled.store(&mut conn).await;
    let mut expired = Key::new(None);
    expired.record.expires_at = Some(1);
    expired.store(&mut conn).await;

    let dp = DataPlane::start_redis(
        &redis.url(),
        &[
            ("API_PROXY_SECRETS_KEY", &secrets_text),
            ("API_PROXY_ACCESS_LOG", LOG),
            ("API_PROXY_ACCESS_LOG_FORMAT", "json"),
            ("API_PROXY_ACCESS_LOG_QUERY", "true"),
        ],
    );
    dp.wait_status("/open/x", 200).await;
    assert_eq!(dp.metric("apiproxy_proxy_keys").await, 4.0);
    assert_eq!(dp.metric("apiproxy_policies").await, 5.0);
    let bearer_key = format!("Bearer {}", all.secret);

    // Each SDK's placement, each replaced by the real credential.
    let seen = echoed(
        &dp,
        request("/openai/v1/models", Some(("authorization", &bearer_key))),
    )
    .await;
    assert_eq!(seen["headers"]["authorization"][0], "Bearer sk-openai-real");
    let seen = echoed(
        &dp,
        request("/anthropic/v1/messages", Some(("x-api-key", &all.secret))),
    )
    .await;
    assert_eq!(seen["headers"]["x-api-key"][0], "sk-ant-real");
    let seen = echoed(
        &dp,
        request("/gemini/v1/models", Some(("x-goog-api-key", &all.secret))),
    )
    .await;
    assert_eq!(seen["headers"]["x-goog-api-key"][0], "AIza-real");
    let query = format!(
        "/gemini-q/v1/models:streamGenerateContent?alt=sse&key={}",
        all.secret
    );
    let seen = echoed(&dp, request(&query, None)).await;
    assert_eq!(
        seen["uri"],
        "/v1/models:streamGenerateContent?alt=sse&key=AIza%2Fq%2Breal"
    );
    // The proxy key in one place, the client's own credential in the
    // credential's place: the client's is replaced, not kept beside it.
    let mut both = request("/openai/x", Some(("x-api-key", &all.secret)));
    both.headers_mut()
        .insert("authorization", "Bearer sk-client-own".parse().unwrap());
    let seen = echoed(&dp, both).await;
    assert_eq!(
        seen["headers"]["authorization"],
        serde_json::json!(["Bearer sk-openai-real"])
    );
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    // A client that sends its proxy key in two places: it reaches the
    // upstream from neither.
    let in_query = format!("/openai/x?alt=sse&key={}", all.secret);
    let mut twice = request(&in_query, Some(("authorization", &bearer_key)));
    twice
        .headers_mut()
        .insert("x-api-key", all.secret.parse().unwrap());
    twice
        .headers_mut()
        .insert("x-goog-api-key", all.secret.parse().unwrap());
    let seen = echoed(&dp, twice).await;
    assert_eq!(
        seen["headers"]["authorization"],
        serde_json::json!(["Bearer sk-openai-real"])
    );
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    assert!(seen["headers"].get("x-goog-api-key").is_none(), "{seen}");
    assert_eq!(seen["uri"], "/x?alt=sse");
    // A browser's CORS preflight carries no key: it reaches the upstream
    // without one and without the credential.
    let preflight = Request::options("/openai/v1/chat/completions")
        .header("host", "proxy.test")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(Full::default())
        .unwrap();
    let seen = echoed(&dp, preflight).await;
    assert_eq!(seen["method"], "OPTIONS");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // No credential configured: the key goes, the client's own stays.
    let mut own = request("/bare/x", Some(("x-goog-api-key", &all.secret)));
    own.headers_mut()
        .insert("authorization", "Bearer sk-client-own".parse().unwrap());
    let seen = echoed(&dp, own).await;
    assert_eq!(seen["headers"]["authorization"][0], "Bearer sk-client-own");
    assert!(seen["headers"].get("x-goog-api-key").is_none(), "{seen}");
    // An open mapping is untouched.
    let seen = echoed(&dp, request("/open/x", Some(("x-api-key", "anything")))).await;
    assert_eq!(seen["headers"]["x-api-key"][0], "anything");

    // 401 and 403, each case; a key allowed on /openai passes there.
    let _ = echoed(
        &dp,
        request("/openai/x", Some(("x-api-key", &only_openai.secret))),
    )
    .await;
    let unknown = new_proxy_key();
    let cases = [
        ("/openai/x", None, 401, "unauthorized"),
        ("/openai/x", Some(unknown.as_str()), 401, "unauthorized"),
        (
            "/anthropic/x",
            Some(only_openai.secret.as_str()),
            403,
            "forbidden",
        ),
        (
            "/openai/x",
            Some(disabled.secret.as_str()),
            403,
            "forbidden",
        ),
        ("/openai/x", Some(expired.secret.as_str()), 403, "forbidden"),
    ];
    for (path, key, status, kind) in cases {
        let got = refused(&dp, request(path, key.map(|k| ("x-api-key", k)))).await;
        assert_eq!(got, (status, kind.to_owned()), "{path} with {key:?}");
    }

    // The upstream never saw a proxy key; the logs never hold a secret,
    // and name the key by id.
    let lines = eventually("access log lines", Duration::from_secs(10), || async {
        let lines = dp.access_log(LOG);
        (lines.len() >= 17).then_some(lines)
    })
    .await;
    let keyed: Vec<_> = lines
        .iter()
        .filter(|l| l["key_id"] == all.record.id.as_str())
        .collect();
    assert_eq!(keyed.len(), 7, "{lines:#?}");
    let forbidden: Vec<_> = lines.iter().filter(|l| l["status"] == 403).collect();
    assert_eq!(forbidden.len(), 3);
    for line in forbidden {
        assert!(
            line["key_id"].as_str().unwrap().starts_with("key_"),
            "{line}"
        );
    }
    let logs = dp.logs().join("\n") + &std::fs::read_to_string(dp.dir.path(LOG)).unwrap();
    for secret in [
        all.secret.as_str(),
        only_openai.secret.as_str(),
        disabled.secret.as_str(),
        "sk-openai-real",
        "sk-ant-real",
        "AIza-real",
        "q+real",
        "q%2Breal",
        &secrets_text,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    assert!(logs.contains("key=***"), "the logged query masks the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secrets_key_fails_closed() {
    let Fixture {
        redis,
        mut conn,
        echo,
        secrets,
        ..
    } = Fixture::start(&["/openai", "/bare"]).await;
    let bearer = header_place("Authorization", "Bearer {secret}");
    store_policy(
        &mut conn,
        &secrets,
        "/openai",
        Some((bearer, "sk-openai-real")),
    )
    .await;
    store_policy(&mut conn, &secrets, "/bare", None).await;
    let key = Key::new(None);
    key.store(&mut conn).await;
    // One node without a secrets key, one with another one.
    let other = SecretsKey::generate();
    let nodes = [
        DataPlane::start_redis(&redis.url(), &[]),
        DataPlane::start_redis(&redis.url(), &[("API_PROXY_SECRETS_KEY", &other)]),
    ];
    let with_key = || request("/openai/x", Some(("x-api-key", &key.secret)));
    for dp in &nodes {
        dp.wait_status("/nothing", 404).await;
        eventually("the policy applied", Duration::from_secs(5), || async {
            (dp.metric("apiproxy_policies").await == 2.0).then_some(())
        })
        .await;
        for _ in 0..3 {
            assert_eq!(refused(dp, with_key()).await, (503, "not_ready".into()));
        }
        // The key is still checked first: no key is 401, not 503.
        assert_eq!(
            refused(dp, request("/openai/x", None)).await,
            (401, "unauthorized".into())
        );
        // A keyed mapping without a credential needs no secrets key.
        let _ = echoed(dp, request("/bare/x", Some(("x-api-key", &key.secret)))).await;
        // Said once, when the policy was applied, not per request.
        let said = dp
            .logs()
            .iter()
            .filter(|l| l.contains("503 not_ready") && l.contains("/openai"))
            .count();
        assert_eq!(said, 1, "{:#?}", dp.logs());
    }
    assert!(echo.counters.accepted() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_as_soon_as_the_node_applies_it() {
    let Fixture {
        redis,
        mut conn,
        echo: _echo,
        secrets_text,
        secrets,
    } = Fixture::start(&["/openai"]).await;
    let sse = upstream::sse(20, Duration::from_millis(50)).await;
    upsert(&mut conn, &RedisKeys::default(), "/stream", &sse.url()).await;
    let bearer = header_place("Authorization", "Bearer {secret}");
    store_policy(
        &mut conn,
        &secrets,
        "/openai",
        Some((bearer.clone(), "sk-real")),
    )
    .await;
    store_policy(&mut conn, &secrets, "/stream", Some((bearer, "sk-real"))).await;
    let mut key = Key::new(None);
    key.store(&mut conn).await;
    // No resync: only the announcement carries the revocation.
    let dp = DataPlane::start_redis(
        &redis.url(),
        &[
            ("API_PROXY_SECRETS_KEY", &secrets_text),
            ("API_PROXY_RESYNC_INTERVAL", "10m"),
        ],
    );
    let auth = format!("Bearer {}", key.secret);
    eventually("keyed mapping served", Duration::from_secs(5), || async {
        let reply = call(
            dp.addr,
            request("/openai/x", Some(("authorization", &auth))),
        )
        .await;
        (reply.status == 200).then_some(())
    })
    .await;

    // A stream already running when the key is revoked.
    let stream = send(
        dp.addr,
        request("/stream/x", Some(("authorization", &auth))),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let stream =
        tokio::spawn(async move { stream.into_body().collect().await.unwrap().to_bytes() });

    // Load: four clients, each request's start time and status.
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::<(Instant, u16)>::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, results, auth, addr) = (stop.clone(), results.clone(), auth.clone(), dp.addr);
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                let reply = call(addr, request("/openai/x", Some(("authorization", &auth)))).await;
                results
                    .lock()
                    .unwrap()
                    .push((started, reply.status.as_u16()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    key.record.enabled = false;
    let version = key.store(&mut conn).await;
    // The moment this test sees the node at the revoking version: every
    // request started after it must be refused.
    let applied = eventually("revocation applied", Duration::from_secs(5), || async {
        (dp.metric("apiproxy_config_version").await == version as f64).then(Instant::now)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    let before = results
        .iter()
        .filter(|(t, s)| *t < applied && *s == 200)
        .count();
    let after: Vec<_> = results.iter().filter(|(t, _)| *t >= applied).collect();
    assert!(before > 10, "load before the revocation: {before}");
    assert!(
        after.len() > 10,
        "load after the revocation: {}",
        after.len()
    );
    assert!(after.iter().all(|(_, s)| *s == 403), "{after:?}");
    // The stream that was running finished whole.
    let body = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("data: event 19"), "{text}");
    // And a new one is refused.
    let (status, kind) = refused(&dp, request("/stream/x", Some(("authorization", &auth)))).await;
    assert_eq!((status, kind.as_str()), (403, "forbidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_key_reaches_the_control_plane_exactly() {
    let Fixture {
        redis,
        mut conn,
        echo: _echo,
        secrets_text,
        secrets,
    } = Fixture::start(&["/openai", "/anthropic"]).await;
    let bearer = header_place("Authorization", "Bearer {secret}");
    store_policy(&mut conn, &secrets, "/openai", Some((bearer, "sk-real"))).await;
    store_policy(&mut conn, &secrets, "/anthropic", None).await;
    let a = Key::new(None);
    a.store(&mut conn).await;
    let b = Key::new(Some(&["/openai"]));
    b.store(&mut conn).await;
    let cp = ControlPlane::start_for_nodes(&redis.url(), 0);
    let cp_url = format!("http://{}", cp.addr);
    let dp = DataPlane::start_pushing(
        &redis.url(),
        &cp_url,
        "dp-keys",
        &[("API_PROXY_SECRETS_KEY", &secrets_text)],
    );
    dp.wait_status("/nothing", 404).await;
    let post = |path: &str, key: &str, body: &'static str| {
        Request::post(path)
            .header("host", "proxy.test")
            .header("x-api-key", key)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    // a: 3 on /openai (10 bytes each), 2 on /anthropic; b: 1 on /openai
    // and 1 refused (403) on /anthropic.
    for _ in 0..3 {
        assert_eq!(
            call(dp.addr, post("/openai/x", &a.secret, "0123456789"))
                .await
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            call(dp.addr, post("/anthropic/x", &a.secret, ""))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        call(dp.addr, post("/openai/x", &b.secret, "")).await.status,
        200
    );
    assert_eq!(
        call(dp.addr, post("/anthropic/x", &b.secret, ""))
            .await
            .status,
        403
    );

    let usage = |id: String| {
        let cp = &cp;
        async move {
            let reply = cp
                .admin("GET", &format!("/api/keys/{id}/usage"), None)
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            reply.json()
        }
    };
    let a_usage = eventually("a's usage pushed", Duration::from_secs(10), || async {
        let u = usage(a.record.id.clone()).await;
        let total: u64 = u["prefixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        (total == 5).then_some(u)
    })
    .await;
    let by_prefix = |u: &Value, prefix: &str| {
        u["prefixes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["prefix"] == prefix)
            .cloned()
            .unwrap_or_else(|| panic!("{prefix} in {u}"))
    };
    let openai = by_prefix(&a_usage, "/openai");
    assert_eq!(openai["requests"], 3);
    assert_eq!(openai["bytes_in"], 30);
    assert!(openai["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(openai["status"]["2xx"], 3);
    assert_eq!(by_prefix(&a_usage, "/anthropic")["requests"], 2);
    let b_usage = eventually("b's usage pushed", Duration::from_secs(10), || async {
        let u = usage(b.record.id.clone()).await;
        (u["prefixes"].as_array().unwrap().len() == 2).then_some(u)
    })
    .await;
    assert_eq!(by_prefix(&b_usage, "/anthropic")["status"]["4xx"], 1);
    assert_eq!(by_prefix(&b_usage, "/openai")["requests"], 1);
    // The hourly series counts them too.
    let series: u64 = a_usage["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(series, 5);
    // Pushed once: later batches add nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        by_prefix(&usage(a.record.id.clone()).await, "/openai")["requests"],
        3
    );
    // The control plane's metrics carry the key; the node's do not.
    let (_, text) = apiproxy_tests::client::get(&format!("{cp_url}/metrics")).await;
    let line = format!(
        "apiproxy_cluster_key_requests_total{{key_id=\"{}\",prefix=\"/openai\",status_class=\"2xx\"}} 3",
        a.record.id
    );
    assert!(text.contains(&line), "{line} not in:\n{text}");
    let node_metrics = dp.metrics().await;
    assert!(node_metrics.keys().all(|k| !k.contains("key_id")));
}

/// Routing matches a path as written; an upstream may read `/%61dmin` or
/// `//admin` as `/admin`. Beside a keyed `/admin` under an open `/`, such
/// a spelling would reach the admin paths through `/` without a key: it
/// is refused, and plain paths of `/` still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spelling_of_a_keyed_path_is_refused() {
    let Fixture {
        redis,
        mut conn,
        echo: _echo,
        secrets,
        ..
    } = Fixture::start(&["/", "/admin"]).await;
    store_policy(&mut conn, &secrets, "/admin", None).await;
    let dp = DataPlane::start_redis(&redis.url(), &[]);
    eventually("the policy applied", Duration::from_secs(5), || async {
        (dp.metric("apiproxy_policies").await == 1.0).then_some(())
    })
    .await;
    for path in [
        "/%61dmin/users",
        "//admin/users",
        "/%2fadmin/users",
        "/x/..%2F/admin",
    ] {
        let (status, kind) = refused(&dp, request(path, None)).await;
        assert_eq!((status, kind.as_str()), (400, "bad_request"), "{path}");
    }
    assert_eq!(refused(&dp, request("/admin/users", None)).await.0, 401);
    for path in ["/users", "/files/a%20b", "/%75sers"] {
        let seen = echoed(&dp, request(path, None)).await;
        assert_eq!(seen["uri"], path, "{path}");
    }
}
