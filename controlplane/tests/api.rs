//! The admin API in-process (tower `oneshot`) against a real `redis-server`:
//! every route, status code and validation rule of SPEC §5.

mod support;

use apiproxy_tests::redis::{hdel_plain, hset_plain};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::json;
use support::{Api, TOKEN};
use tower::ServiceExt;

#[tokio::test]
async fn every_admin_route_needs_auth() {
    let api = Api::start();
    for (method, uri) in [
        ("GET", "/api/mappings"),
        ("POST", "/api/mappings"),
        ("PUT", "/api/mappings"),
        ("GET", "/api/mappings/openai"),
        ("PUT", "/api/mappings/openai"),
        ("DELETE", "/api/mappings/openai"),
        ("GET", "/api/audit"),
        ("GET", "/api/nodes"),
        ("GET", "/api/requests/failed"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token"),
            Some(TOKEN),
            Some("Basic abc"),
        ] {
            let (status, body, _) = api.call(method, uri, auth, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} {auth:?}");
            assert_eq!(
                body,
                json!({"success": false, "error": "authentication required"})
            );
        }
    }
    assert_eq!(
        api.admin("GET", "/api/mappings", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn crud_follows_the_spec_table() {
    let api = Api::start();
    let (s, body) = api
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/openai", "target": "https://api.openai.com/"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body["success"], true);
    assert_eq!(
        body["mapping"],
        json!({"prefix": "/openai", "target": "https://api.openai.com"})
    );
    assert_eq!(body["version"], 1);
    assert!(body["message"].is_string());

    let (s, body) = api
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/openai", "target": "https://x.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["success"], false);

    let (s, body) = api.admin("GET", "/api/mappings/openai", None).await;
    assert_eq!(
        (s, &body["mapping"]["target"]),
        (StatusCode::OK, &json!("https://api.openai.com"))
    );
    assert_eq!(
        api.admin("GET", "/api/mappings/nothing", None).await.0,
        StatusCode::NOT_FOUND
    );

    let (s, body) = api
        .admin(
            "PUT",
            "/api/mappings/openai",
            Some(json!({"target": "https://proxy.example/v1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body["mapping"],
        json!({"prefix": "/openai", "target": "https://proxy.example/v1"})
    );
    assert_eq!(body["version"], 2);
    assert_eq!(
        api.admin(
            "PUT",
            "/api/mappings/nothing",
            Some(json!({"target": "https://a.b"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // Multi-segment prefixes and the prefix "/" itself.
    assert_eq!(
        api.admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/google/v1", "target": "https://g.example"}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    assert_eq!(
        api.admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/", "target": "http://default.example"}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (s, body) = api.admin("GET", "/api/mappings/google/v1", None).await;
    assert_eq!(
        (s, &body["mapping"]["prefix"]),
        (StatusCode::OK, &json!("/google/v1"))
    );
    let (s, body) = api.admin("GET", "/api/mappings/%2F", None).await;
    assert_eq!(
        (s, &body["mapping"]["prefix"]),
        (StatusCode::OK, &json!("/"))
    );

    let (s, body) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["count"], 3);
    assert_eq!(body["version"], 4);
    assert_eq!(body["mappings"]["/google/v1"], "https://g.example");

    let (s, body) = api.admin("DELETE", "/api/mappings/google/v1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        json!({"success": true, "message": "Mapping deleted successfully",
               "prefix": "/google/v1", "version": 5})
    );
    assert_eq!(
        api.admin("DELETE", "/api/mappings/google/v1", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.admin("DELETE", "/api/mappings/%2F", None).await.0,
        StatusCode::OK
    );
}

/// The Go version's shapes are stored in the prefix's one spelling, so a
/// second spelling of a route is a duplicate (409), also of an entry the Go
/// version wrote; a target keeps its query.
#[tokio::test]
async fn go_era_shapes_are_stored_in_one_spelling() {
    let api = Api::start();
    for (prefix, target, stored, stored_target) in [
        (
            "/trail/",
            "http://t.test/base/",
            "/trail",
            "http://t.test/base",
        ),
        ("/café", "http://c.test", "/caf%C3%A9", "http://c.test"),
        (
            "/g",
            "https://G.test/v1beta/?key=K",
            "/g",
            "https://g.test/v1beta?key=K",
        ),
    ] {
        let (s, reply) = api
            .admin(
                "POST",
                "/api/mappings",
                Some(json!({"prefix": prefix, "target": target})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{prefix}: {reply}");
        assert_eq!(
            reply["mapping"],
            json!({"prefix": stored, "target": stored_target})
        );
    }
    for (second, first) in [
        ("/trail", "/trail"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/café/", "/caf%C3%A9"),
    ] {
        let (s, reply) = api
            .admin(
                "POST",
                "/api/mappings",
                Some(json!({"prefix": second, "target": "http://x"})),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{second}: {reply}");
        assert_eq!(
            reply["error"],
            format!("a mapping for {first} already exists"),
            "{second}"
        );
    }
    let (_, list) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(
        list["mappings"],
        json!({"/caf%C3%A9": "http://c.test", "/g": "https://g.test/v1beta?key=K",
               "/trail": "http://t.test/base"})
    );
    // The path names either spelling.
    for path in ["/api/mappings/caf%C3%A9", "/api/mappings/caf%25C3%25A9"] {
        let (s, reply) = api.admin("GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(reply["mapping"]["prefix"], "/caf%C3%A9", "{path}");
    }
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/mappings/trail/",
            Some(json!({"target": "http://u.test"})),
        )
        .await;
    assert_eq!(
        (s, &reply["mapping"]["prefix"]),
        (StatusCode::OK, &json!("/trail"))
    );

    // An entry the Go version wrote in another spelling: a create of its
    // one spelling is a duplicate; its path deletes it as written.
    let mut conn = api.redis.conn().await;
    let keys = apiproxy_shared::RedisKeys::default();
    hset_plain(&mut conn, &keys, "/go/", "http://go.test").await;
    let (s, reply) = api
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/go", "target": "http://x"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{reply}");
    assert_eq!(
        reply["error"],
        "a mapping for /go already exists, written /go/"
    );
    // The same for a non-ASCII prefix the Go version wrote raw.
    hset_plain(&mut conn, &keys, "/café/", "http://go.test").await;
    let (s, reply) = api
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/caf%C3%A9", "target": "http://x"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{reply}");
    assert_eq!(
        reply["error"],
        "a mapping for /caf%C3%A9 already exists, written /café/"
    );
    hdel_plain(&mut conn, &keys, "/café/").await;
    let (s, reply) = api.admin("DELETE", "/api/mappings/go/", None).await;
    assert_eq!((s, &reply["prefix"]), (StatusCode::OK, &json!("/go/")));
    let (s, _) = api
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/go", "target": "http://x"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Two spellings of one prefix in a replace-all: refused, nothing written.
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/mappings",
            Some(json!({"mappings": {"/a": "http://a", "/a/": "http://b"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(
        reply["error"],
        "mappings[\"/a/\"]: the same prefix as \"/a\" (/a)"
    );
    let (_, after) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(after["count"], 4);
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let api = Api::start();
    let cases = [
        (
            json!({"prefix": "openai", "target": "https://a.b"}),
            "prefix",
        ),
        (json!({"prefix": "/a//", "target": "https://a.b"}), "prefix"),
        (
            json!({"prefix": "/a%c3%a9", "target": "https://a.b"}),
            "prefix",
        ),
        (json!({"prefix": "/a b", "target": "https://a.b"}), "prefix"),
        (json!({"prefix": "/a?x", "target": "https://a.b"}), "prefix"),
        (
            json!({"prefix": "/a/../b", "target": "https://a.b"}),
            "prefix",
        ),
        (
            json!({"prefix": "/a%2F", "target": "https://a.b"}),
            "prefix",
        ),
        (
            json!({"prefix": format!("/{}", "a".repeat(300)), "target": "https://a.b"}),
            "prefix",
        ),
        (json!({"prefix": "/a", "target": "ftp://a.b"}), "target"),
        (
            json!({"prefix": "/a", "target": "https://user:pw@a.b"}),
            "target",
        ),
        (
            json!({"prefix": "/a", "target": "https://a.b/?q=é"}),
            "target",
        ),
        (
            json!({"prefix": "/a", "target": "https://a.b/#f"}),
            "target",
        ),
        (
            json!({"prefix": "/a", "target": "api.openai.com"}),
            "target",
        ),
        (json!({"prefix": "/a", "target": 5}), "target"),
        (json!({"prefix": "/a"}), "target"),
        (
            json!({"prefix": "/a", "target": "https://a.b", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (s, reply) = api.admin("POST", "/api/mappings", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply["success"], false);
        assert!(
            reply["error"].as_str().unwrap().contains(field),
            "{body}: {reply}"
        );
    }
    let (s, reply, _) = api
        .call(
            "POST",
            "/api/mappings",
            Some(&format!("Bearer {TOKEN}")),
            Some("{not json".into()),
        )
        .await;
    assert_eq!(
        (s, &reply["success"]),
        (StatusCode::BAD_REQUEST, &json!(false))
    );
    let big = json!({"prefix": "/a", "target": format!("https://a.b/{}", "x".repeat(70_000))})
        .to_string();
    let (s, reply, _) = api
        .call(
            "POST",
            "/api/mappings",
            Some(&format!("Bearer {TOKEN}")),
            Some(big),
        )
        .await;
    assert_eq!(
        (s, &reply["success"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!(false))
    );
    // Nothing was written by any of them.
    assert_eq!(api.admin("GET", "/api/mappings", None).await.1["count"], 0);
}

#[tokio::test]
async fn replace_all_is_one_version_and_audits_each_change() {
    let api = Api::start();
    api.admin(
        "POST",
        "/api/mappings",
        Some(json!({"prefix": "/keep", "target": "https://k.example"})),
    )
    .await;
    api.admin(
        "POST",
        "/api/mappings",
        Some(json!({"prefix": "/drop", "target": "https://d.example"})),
    )
    .await;
    api.admin(
        "POST",
        "/api/mappings",
        Some(json!({"prefix": "/edit", "target": "https://e.example"})),
    )
    .await;
    let (s, body) = api
        .admin("PUT", "/api/mappings", Some(json!({"mappings": {"/keep": "https://k.example", "/edit": "https://e2.example", "/new": "https://n.example"}})))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 4);
    let (_, list) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(
        list["mappings"],
        json!({"/keep": "https://k.example", "/edit": "https://e2.example", "/new": "https://n.example"})
    );

    let (_, audit) = api.admin("GET", "/api/audit?limit=10", None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        6,
        "3 creates + delete /drop, update /edit, create /new: {audit}"
    );
    let ops: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["prefix"].as_str().unwrap()))
        .collect();
    assert!(
        ops[..3].contains(&("delete", "/drop"))
            && ops[..3].contains(&("update", "/edit"))
            && ops[..3].contains(&("create", "/new"))
    );
    assert_eq!(
        &ops[3..],
        &[
            ("create", "/edit"),
            ("create", "/drop"),
            ("create", "/keep")
        ],
        "newest first"
    );
    let update = entries.iter().find(|e| e["op"] == "update").unwrap();
    assert_eq!(update["old_target"], "https://e.example");
    assert_eq!(update["new_target"], "https://e2.example");
    assert!(update["time"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(update["actor"].is_string() && update["id"].is_string());

    // An invalid entry refuses the whole replacement.
    let (s, body) = api
        .admin(
            "PUT",
            "/api/mappings",
            Some(json!({"mappings": {"/ok": "https://a.b", "bad": "https://a.b"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("prefix"));
    assert_eq!(
        api.admin("GET", "/api/mappings", None).await.1["version"],
        4
    );
}

#[tokio::test]
async fn login_sessions_logout_and_lockout() {
    let api = Api::start();
    let (s, body, headers) = api
        .call(
            "POST",
            "/api/admin/login",
            None,
            Some(json!({"token": TOKEN}).to_string()),
        )
        .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::OK,
            json!({"success": true, "message": "Authentication successful"})
        )
    );
    let cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && !cookie.contains("Secure")
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie must not hold the token"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    let with_cookie = |method: &'static str, uri: &'static str| {
        let session = session.clone();
        let router = api.router.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::COOKIE, session)
                .body(Body::empty())
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(with_cookie("GET", "/api/mappings").await, StatusCode::OK);
    assert_eq!(
        with_cookie("POST", "/api/admin/logout").await,
        StatusCode::OK
    );
    assert_eq!(
        with_cookie("GET", "/api/mappings").await,
        StatusCode::UNAUTHORIZED,
        "logout ends the session"
    );

    // Ten failures within a minute lock the address out, even for the right token.
    for _ in 0..10 {
        let (s, _, _) = api
            .call(
                "POST",
                "/api/admin/login",
                None,
                Some(json!({"token": "wrong"}).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, body, headers) = api
        .call(
            "POST",
            "/api/admin/login",
            None,
            Some(json!({"token": TOKEN}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["success"], false);
    assert!(headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn concurrent_writes_lose_nothing() {
    let api = Api::start();
    // Two POSTs of one prefix: exactly one 201 and one 409.
    let body = Some(json!({"prefix": "/race", "target": "https://a.b"}));
    let (a, b) = tokio::join!(
        api.admin("POST", "/api/mappings", body.clone()),
        api.admin("POST", "/api/mappings", body)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    // 50 concurrent edits: 50 version bumps.
    let edits = (0..50).map(|i| {
        api.admin(
            "PUT",
            "/api/mappings/race",
            Some(json!({"target": format!("https://t{i}.example")})),
        )
    });
    let results = futures_util::future::join_all(edits).await;
    assert!(results.iter().all(|(s, _)| *s == StatusCode::OK));
    assert_eq!(
        api.admin("GET", "/api/mappings", None).await.1["version"],
        51
    );
}

#[tokio::test]
async fn go_version_data_is_listed_and_editable() {
    let api = Api::start();
    let mut conn = api.redis.conn().await;
    let keys = apiproxy_shared::RedisKeys::default();
    hset_plain(&mut conn, &keys, "/newapi", "https://new.example").await;
    let (s, body) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(
        (s, &body["mappings"]["/newapi"], &body["version"]),
        (StatusCode::OK, &json!("https://new.example"), &json!(0))
    );
    // The Go README's curl examples.
    assert_eq!(
        api.admin(
            "PUT",
            "/api/mappings/newapi",
            Some(json!({"target": "https://newer.example"}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        api.admin("DELETE", "/api/mappings/newapi", None).await.0,
        StatusCode::OK
    );
    assert_eq!(api.admin("GET", "/api/mappings", None).await.1["count"], 0);
}

/// Entries written straight into the hash (by the Go version, by hand)
/// that the data plane skips are listed as they are, and marked: the list's
/// `invalid` names each with the reason, the single GET says `valid` and
/// the reason. A reason never holds the target (its query may be a key).
#[tokio::test]
async fn entries_the_data_plane_skips_are_marked_invalid() {
    let api = Api::start();
    let mut conn = api.redis.conn().await;
    let keys = apiproxy_shared::RedisKeys::default();
    for (prefix, target) in [
        ("/ok", "https://ok.test/v1?key=K"),
        ("/go/", "http://go.test"),
        ("/a?b", "http://x.test"),
        ("/ftp", "ftp://x.test/p?key=SECRET"),
        ("/trail", "http://t.test"),
        ("/trail/", "http://u.test"),
    ] {
        hset_plain(&mut conn, &keys, prefix, target).await;
    }
    let (s, list) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["count"], 6);
    assert_eq!(list["mappings"]["/ftp"], "ftp://x.test/p?key=SECRET");
    assert_eq!(
        list["invalid"],
        json!({
            "/a?b": "prefix: must not contain ?",
            "/ftp": "target: must be an absolute http:// or https:// URL",
            "/trail/": "prefix: another spelling of /trail; the entry /trail routes",
        })
    );
    assert!(!list["invalid"].to_string().contains("SECRET"), "{list}");

    for (path, valid, reason) in [
        ("/api/mappings/ok", true, None),
        ("/api/mappings/go/", true, None),
        ("/api/mappings/trail", true, None),
        (
            "/api/mappings/a%3Fb",
            false,
            Some("prefix: must not contain ?"),
        ),
        (
            "/api/mappings/ftp",
            false,
            Some("target: must be an absolute http:// or https:// URL"),
        ),
        (
            "/api/mappings/trail/",
            false,
            Some("prefix: another spelling of /trail; the entry /trail routes"),
        ),
    ] {
        let (s, found) = api.admin("GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {found}");
        assert_eq!(found["valid"], valid, "{path}: {found}");
        assert_eq!(
            found.get("reason").and_then(|r| r.as_str()),
            reason,
            "{path}"
        );
    }

    // Once every entry routes, `invalid` is empty, not absent.
    for prefix in ["/a?b", "/ftp", "/trail/"] {
        hdel_plain(&mut conn, &keys, prefix).await;
    }
    let (_, list) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!((&list["count"], &list["invalid"]), (&json!(3), &json!({})));
}

#[tokio::test]
async fn health_and_readiness_follow_redis() {
    let mut api = Api::start();
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    api.redis.kill();
    let (s, body, _) = api.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (s, &body["ready"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!(false))
    );
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (s, body) = api.admin("GET", "/api/mappings", None).await;
    assert_eq!(
        (s, &body["success"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!(false))
    );
}

#[tokio::test]
async fn openapi_document_covers_every_route() {
    let api = Api::start();
    let (s, doc, _) = api.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/mappings", &["get", "post", "put"][..]),
        ("/api/mappings/{prefix}", &["get", "put", "delete"]),
        ("/api/mappings/", &["delete"]),
        ("/api/mappings/reload", &["post"]),
        ("/api/public/mappings", &["get"]),
        ("/api/audit", &["get"]),
        ("/api/admin/login", &["post"]),
        ("/api/admin/logout", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/api/openapi.json", &["get"]),
        ("/internal/stats", &["post"]),
        ("/stats", &["get"]),
        ("/api/nodes", &["get"]),
        ("/api/requests/failed", &["get"]),
        ("/api/keys/{id}/usage", &["get"]),
        ("/metrics", &["get"]),
        ("/api/keys", &["get", "post"]),
        ("/api/keys/{id}", &["get", "patch", "delete"]),
        ("/api/policies", &["get"]),
        ("/api/policies/{prefix}", &["get", "put", "delete"]),
        ("/api/policies/", &["get", "put", "delete"]),
    ] {
        for m in methods {
            assert!(
                paths[path].get(*m).is_some(),
                "{m} {path} missing from the document"
            );
        }
    }
    // And every documented operation is really routed (no 404/405).
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let uri = path
                .replace("{prefix}", "some/prefix")
                .replace("{id}", "key_0123456789abcdef");
            let (status, body, _) = api
                .call(
                    &method.to_uppercase(),
                    &uri,
                    Some(&format!("Bearer {TOKEN}")),
                    None,
                )
                .await;
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {status}"
            );
            // A `{prefix}` route (`/api/mappings/` is the prefix `/`) may
            // answer 404 for a missing mapping (or policy), a `{id}` route
            // for a missing key; never as an unknown route.
            let addresses_a_record = ["/api/mappings/", "/api/policies/", "/api/keys/"]
                .iter()
                .any(|start| path.starts_with(start));
            assert!(
                status != StatusCode::NOT_FOUND || addresses_a_record,
                "{method} {path}: {status}"
            );
            assert_ne!(body["error"], "no such route", "{method} {path}");
        }
    }
}

#[tokio::test]
async fn cookie_secure_flag_marks_the_session_cookie() {
    let api = Api::start_with(&["--cookie-secure", "true"], &[]);
    let (s, _, headers) = api
        .call(
            "POST",
            "/api/admin/login",
            None,
            Some(json!({"token": TOKEN}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn sessions_end_when_the_admin_token_changes() {
    let api = Api::start();
    let (_, _, headers) = api
        .call(
            "POST",
            "/api/admin/login",
            None,
            Some(json!({"token": TOKEN}).to_string()),
        )
        .await;
    let session = headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The same Redis, a control plane restarted with another token.
    let rotated = Api::router_on(
        &api.redis,
        &[],
        &[("ADMIN_TOKEN", "another-admin-token-987654321")],
    );
    let status = |router: Router| {
        let session = session.clone();
        async move {
            let req = Request::get("/api/mappings")
                .header(header::COOKIE, session)
                .body(Body::empty())
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(status(api.router.clone()).await, StatusCode::OK);
    assert_eq!(status(rotated).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn guessing_the_bearer_token_is_throttled_too() {
    let api = Api::start();
    for _ in 0..10 {
        assert_eq!(
            api.call(
                "GET",
                "/api/mappings",
                Some("Bearer guess-guess-guess-guess"),
                None
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (s, body, headers) = api
        .call(
            "GET",
            "/api/mappings",
            Some(&format!("Bearer {TOKEN}")),
            None,
        )
        .await;
    assert_eq!(
        (s, &body["success"]),
        (StatusCode::TOO_MANY_REQUESTS, &json!(false))
    );
    assert!(headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_format() {
    let api = Api::start();
    let (s, body, _) = api.call("GET", "/api/nothing", None, None).await;
    assert_eq!(
        (s, &body["success"]),
        (StatusCode::NOT_FOUND, &json!(false))
    );
    let (s, body, _) = api
        .call(
            "PATCH",
            "/api/mappings",
            Some(&format!("Bearer {TOKEN}")),
            None,
        )
        .await;
    assert_eq!(
        (s, &body["success"]),
        (StatusCode::METHOD_NOT_ALLOWED, &json!(false))
    );
    let (s, body) = api.admin("GET", "/api/mappings/%FF", None).await;
    assert_eq!(
        (s, &body["success"]),
        (StatusCode::BAD_REQUEST, &json!(false))
    );
}

#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let api = Api::start();
    for (path, kind, needle) in [
        ("/", "text/html", "dashboard.js"),
        ("/admin", "text/html", "admin.js"),
        ("/static/app.css", "text/css", ".topbar"),
        ("/static/common.js", "text/javascript", "function api("),
        ("/static/chart.js", "text/javascript", "function drawChart("),
    ] {
        let (status, body, headers) = api.call("GET", path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert!(body.as_str().unwrap().contains(needle), "{path}");
        // No inline script can run, and no other origin is trusted.
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let (status, body, _) = api.call("GET", "/static/../Cargo.toml", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false);
    let (status, _, _) = api.call("GET", "/static/secret.js", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
