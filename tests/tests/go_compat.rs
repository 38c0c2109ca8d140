//! What an operator of the Go version relies on, against the real control
//! plane and data planes over a real `redis-server`: the Go README's admin
//! curl flow with its JSON fields, the public mapping list, the reload
//! that makes every node re-read the hash, a JSON body whatever its
//! content type, the empty prefix as `/`, the console's extra files, and
//! `ENABLE_STATS` as the old name of `API_PROXY_ENABLE_STATS`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use apiproxy_shared::RedisKeys;
use apiproxy_tests::client::{call, get_reply, Reply};
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::redis::{hset_plain, RedisServer};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, one_mapping, DataPlane};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

/// What `curl -d BODY` sends when no `-H Content-Type` is given.
const CURL_FORM: &str = "application/x-www-form-urlencoded";

/// One request to the control plane: `headers` as given, nothing added
/// but `Host`.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "controlplane");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    call(
        addr,
        req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// The Go README's flow, as curl sends it: `curl -d` (form content type)
/// for the login and the add, the session cookie or the bearer token for
/// the rest; every field the Go version answered is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_readme_admin_flow_answers_with_the_go_fields() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);

    // curl -X POST http://host/api/admin/login -d '{"token":"…"}'
    let login = format!(r#"{{"token":"{ADMIN_TOKEN}"}}"#);
    let reply = send(
        cp.addr,
        "POST",
        "/api/admin/login",
        &[("content-type", CURL_FORM)],
        &login,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"success": true, "message": "Authentication successful"})
    );
    let set_cookie = reply.headers["set-cookie"].to_str().unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // curl http://host/api/mappings (with the session)
    let reply = send(cp.addr, "GET", "/api/mappings", &[("cookie", &cookie)], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"success": true, "count": 0, "mappings": {}, "version": 0, "invalid": {}})
    );

    // curl -X POST http://host/api/mappings -H "Authorization: Bearer …" -d '{…}'
    let reply = send(
        cp.addr,
        "POST",
        "/api/mappings",
        &[("authorization", &bearer()), ("content-type", CURL_FORM)],
        r#"{"prefix":"/openai","target":"https://api.openai.com"}"#,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"success": true, "message": "mapping /openai created",
               "mapping": {"prefix": "/openai", "target": "https://api.openai.com"},
               "version": 1})
    );
    let reply = cp
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/claude", "target": "https://api.anthropic.com"})),
        )
        .await;
    assert_eq!(reply.status, 201);

    // curl -X DELETE http://host/api/mappings/openai
    let reply = send(
        cp.addr,
        "DELETE",
        "/api/mappings/openai",
        &[("authorization", &bearer())],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"success": true, "message": "Mapping deleted successfully",
               "prefix": "/openai", "version": 3})
    );

    // curl http://host/api/public/mappings: no credentials at all.
    let reply = send(cp.addr, "GET", "/api/public/mappings", &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"success": true, "count": 1,
               "mappings": {"/claude": "https://api.anthropic.com"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_mapping_list_needs_auth_when_stats_are_private() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[("API_PROXY_PUBLIC_STATS", "false")]);
    assert_eq!(
        cp.admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/a", "target": "https://a.example"})),
        )
        .await
        .status,
        201
    );
    let reply = send(cp.addr, "GET", "/api/public/mappings", &[], "").await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.json(),
        json!({"success": false, "error": "authentication required"})
    );
    let reply = cp.admin("GET", "/api/public/mappings", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"success": true, "count": 1, "mappings": {"/a": "https://a.example"}})
    );
}

/// An entry written straight into the hash (no version bump, no
/// announcement) reaches every node right after the reload, long before
/// their resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_makes_every_node_reread_the_hash_at_once() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let nodes = [
        DataPlane::start_redis_without_resync(&redis.url()),
        DataPlane::start_redis_without_resync(&redis.url()),
    ];
    let up = upstream::http(echo_handler()).await;
    let reply = cp
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/known", "target": up.url()})),
        )
        .await;
    assert_eq!(reply.status, 201);
    for node in &nodes {
        node.wait_status("/known/x", 200).await;
    }

    let mut conn = redis.conn().await;
    hset_plain(&mut conn, &RedisKeys::default(), "/direct", &up.url()).await;
    // Nothing tells the nodes: they keep their snapshot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in &nodes {
        assert_eq!(get_reply(node.addr, "/direct/x").await.status, 404);
    }

    // Not for anyone.
    let reply = send(cp.addr, "POST", "/api/mappings/reload", &[], "").await;
    assert_eq!(reply.status, 401);

    let start = Instant::now();
    let reply = cp.admin("POST", "/api/mappings/reload", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The current version: the reload itself changes nothing.
    assert_eq!(
        reply.json(),
        json!({"message": "Mappings reloaded successfully", "version": 1})
    );
    for node in &nodes {
        eventually("/direct routed", Duration::from_secs(3), || async {
            (get_reply(node.addr, "/direct/x").await.status == 200).then_some(())
        })
        .await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        cp.admin("GET", "/api/mappings", None).await.json()["version"],
        1
    );
}

/// `curl -d` without `-H Content-Type`, or any other content type: the
/// body is read as JSON; malformed JSON and oversized bodies keep their
/// 400 and 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_is_read_whatever_its_content_type() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let login = format!(r#"{{"token":"{ADMIN_TOKEN}"}}"#);
    for headers in [
        &[][..],
        &[("content-type", CURL_FORM)],
        &[("content-type", "text/plain")],
        &[("content-type", "application/json")],
    ] {
        let reply = send(cp.addr, "POST", "/api/admin/login", headers, &login).await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.text());
        assert_eq!(reply.json()["message"], "Authentication successful");
    }
    let form = [("content-type", CURL_FORM)];
    let reply = send(
        cp.addr,
        "POST",
        "/api/admin/login",
        &form,
        r#"{"token":"wrong-token-wrong-token"}"#,
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = send(cp.addr, "POST", "/api/admin/login", &form, "token=abc").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["success"], false);
    let big = format!(r#"{{"token":"{}"}}"#, "x".repeat(70_000));
    let reply = send(cp.addr, "POST", "/api/admin/login", &form, &big).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["success"], false);

    // The other JSON routes read their bodies the same way.
    let auth = bearer();
    let reply = send(
        cp.addr,
        "PUT",
        "/api/mappings",
        &[("authorization", &auth)],
        r#"{"mappings":{"/a":"https://a.example"}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = send(
        cp.addr,
        "PUT",
        "/api/mappings/a",
        &[("authorization", &auth), ("content-type", "text/plain")],
        r#"{"target":"https://b.example"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = send(
        cp.addr,
        "POST",
        "/api/mappings",
        &[("authorization", &auth), ("content-type", CURL_FORM)],
        "{not json",
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["success"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_prefix_in_the_path_is_the_prefix_slash() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    for (prefix, target) in [
        ("/", "https://default.example"),
        ("/reload", "https://r.example"),
    ] {
        let reply = cp.create(prefix, target).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let reply = cp.admin("GET", "/api/mappings/", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["mapping"]["prefix"], "/");
    // A mapping named /reload is still read and deleted at its own path.
    let reply = cp.admin("GET", "/api/mappings/reload", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["mapping"],
        json!({"prefix": "/reload", "target": "https://r.example"})
    );

    let reply = cp.admin("DELETE", "/api/mappings/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"success": true, "message": "Mapping deleted successfully",
               "prefix": "/", "version": 3})
    );
    let reply = cp.admin("DELETE", "/api/mappings/", None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json(),
        json!({"success": false, "error": "no mapping for /"})
    );
    let reply = cp.admin("DELETE", "/api/mappings/reload", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["prefix"], "/reload");
    assert_eq!(
        send(cp.addr, "DELETE", "/api/mappings/", &[], "")
            .await
            .status,
        401
    );
}

/// Chosen on purpose, unlike the Go version: a duplicate create is a
/// conflict, an update of a missing prefix is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_creates_and_updates_of_missing_prefixes_keep_their_codes() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let body = json!({"prefix": "/a", "target": "https://a.example"});
    assert_eq!(
        cp.admin("POST", "/api/mappings", Some(body.clone()))
            .await
            .status,
        201
    );
    let reply = cp.admin("POST", "/api/mappings", Some(body)).await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.json(),
        json!({"success": false, "error": "a mapping for /a already exists"})
    );
    let reply = cp
        .admin(
            "PUT",
            "/api/mappings/missing",
            Some(json!({"target": "https://b.example"})),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json(),
        json!({"success": false, "error": "no mapping for /missing"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_index_html_favicon_and_robots_txt() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let root = get_reply(cp.addr, "/").await;
    let index = get_reply(cp.addr, "/index.html").await;
    assert_eq!(index.status, 200);
    assert!(index.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(index.body, root.body);
    assert!(index.text().contains("dashboard.js"));

    let icon = get_reply(cp.addr, "/favicon.ico").await;
    assert_eq!(icon.status, 200);
    assert!(icon.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("image/"));
    // An ICO file: reserved 0, type 1 (icon), at least one image.
    assert_eq!(&icon.body[..4], b"\x00\x00\x01\x00");
    assert!(icon.body.len() > 22);

    let robots = get_reply(cp.addr, "/robots.txt").await;
    assert_eq!(robots.status, 200);
    assert!(robots.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(robots.text(), "User-agent: *\nDisallow: /\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_go_routes_and_fields() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let doc = get_reply(cp.addr, "/api/openapi.json").await.json();
    for (path, method) in [
        ("/api/public/mappings", "get"),
        ("/api/mappings/reload", "post"),
        ("/api/mappings/", "get"),
        ("/api/mappings/", "put"),
        ("/api/mappings/", "delete"),
        ("/api/mappings/reload", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the document"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for (schema, fields) in [
        ("LoggedIn", &["success", "message"][..]),
        (
            "MappingDeleted",
            &["success", "message", "prefix", "version"],
        ),
        ("PublicMappingList", &["success", "count", "mappings"]),
        ("Reloaded", &["message", "version"]),
    ] {
        for field in fields {
            assert!(
                schemas[schema]["properties"][field].is_object(),
                "{schema}.{field} missing: {}",
                schemas[schema]
            );
        }
    }
    let login_ok = &doc["paths"]["/api/admin/login"]["post"]["responses"]["200"];
    assert!(login_ok.to_string().contains("LoggedIn"), "{login_ok}");
}

/// Whether the node counted a request in its request stats.
async fn counts_requests(dp: &DataPlane) -> bool {
    assert_eq!(get_reply(dp.addr, "/up/x").await.status, 200);
    let (_, text) =
        apiproxy_tests::client::get(&format!("http://{}/metrics", dp.metrics_addr)).await;
    text.contains("apiproxy_requests_total")
}

/// The log lines that name the old variable.
fn alias_lines(dp: &DataPlane) -> Vec<String> {
    dp.logs()
        .into_iter()
        .filter(|l| l.contains("ENABLE_STATS") && l.contains("the Go version's name"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_stats_is_the_go_name_of_api_proxy_enable_stats() {
    let up = upstream::http(echo_handler()).await;
    let mappings = one_mapping("/up", &up.url());

    let old_name = DataPlane::start(&mappings, &[("ENABLE_STATS", "false")]);
    assert!(
        !counts_requests(&old_name).await,
        "ENABLE_STATS=false ignored"
    );
    let lines = alias_lines(&old_name);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("ENABLE_STATS=false") && lines[0].contains("API_PROXY_ENABLE_STATS"),
        "{}",
        lines[0]
    );

    // Both set: the new name wins, and the log says the old one is ignored.
    let both = DataPlane::start(
        &mappings,
        &[
            ("ENABLE_STATS", "false"),
            ("API_PROXY_ENABLE_STATS", "true"),
        ],
    );
    assert!(counts_requests(&both).await, "the new name must win");
    let lines = alias_lines(&both);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ignored"), "{}", lines[0]);

    let new_name = DataPlane::start(
        &mappings,
        &[
            ("ENABLE_STATS", "true"),
            ("API_PROXY_ENABLE_STATS", "false"),
        ],
    );
    assert!(!counts_requests(&new_name).await, "the new name must win");

    let neither = DataPlane::start(&mappings, &[]);
    assert!(counts_requests(&neither).await);
    assert_eq!(alias_lines(&neither), Vec::<String>::new());
}
