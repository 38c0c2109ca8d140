//! Proxy keys and mapping policies (issue 23) through the admin API, in
//! process against a real `redis-server`: what the API shows, what Redis
//! holds (a key's SHA-256, a credential sealed), the version, the
//! announcements and the audit entries of every change.

mod support;

use std::time::Duration;

use apiproxy_shared::access::{key_hash_hex, KeyRecord, SecretsKey, StoredPolicy};
use apiproxy_shared::{RedisKeys, UpdateMessage};
use apiproxy_tests::redis::RedisServer;
use axum::http::StatusCode;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::{json, Value};
use support::{Api, TOKEN};

const ID: &str = "key_0123456789abcdef";

/// A control plane that can seal credentials, and its secrets key.
fn api_with_secrets() -> (Api, SecretsKey) {
    let text = SecretsKey::generate();
    let api = Api::start_with(&[], &[("API_PROXY_SECRETS_KEY", &text)]);
    (api, SecretsKey::from_base64(&text).unwrap())
}

async fn create_key(api: &Api, body: Value) -> (String, String) {
    let (s, reply) = api.admin("POST", "/api/keys", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{reply}");
    (
        reply["key"]["id"].as_str().unwrap().to_owned(),
        reply["secret"].as_str().unwrap().to_owned(),
    )
}

async fn version(api: &Api) -> u64 {
    api.admin("GET", "/api/mappings", None).await.1["version"]
        .as_u64()
        .unwrap()
}

/// Every key, field and value under the namespace, as text.
async fn dump(redis: &RedisServer) -> String {
    let mut conn = redis.conn().await;
    let names: Vec<String> = conn.keys("apiproxy:*").await.unwrap();
    let mut out = String::new();
    for name in names {
        let kind: String = redis::cmd("TYPE")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => conn.get::<_, String>(&name).await.unwrap(),
            "hash" => format!(
                "{:?}",
                conn.hgetall::<_, Vec<(String, String)>>(&name)
                    .await
                    .unwrap()
            ),
            "stream" => conn
                .xrange_all::<_, redis::streams::StreamRangeReply>(&name)
                .await
                .unwrap()
                .ids
                .iter()
                .flat_map(|e| {
                    e.map
                        .keys()
                        .map(|f| format!("{f}={:?} ", e.get::<String>(f).unwrap()))
                })
                .collect(),
            other => panic!("{name}: a {other} the dump does not read"),
        };
        out.push_str(&format!("{name} = {value}\n"));
    }
    out
}

/// The audit stream's entries, each field `=` value, newest last.
async fn audit_stream(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.conn().await;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all("apiproxy:audit").await.unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            ["op", "prefix", "old_target", "new_target"]
                .iter()
                .map(|f| format!("{f}={}", e.get::<String>(f).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

#[tokio::test]
async fn key_and_policy_routes_need_auth() {
    let api = Api::start();
    for (method, uri) in [
        ("GET", "/api/keys"),
        ("POST", "/api/keys"),
        ("GET", "/api/keys/key_0123456789abcdef"),
        ("PATCH", "/api/keys/key_0123456789abcdef"),
        ("DELETE", "/api/keys/key_0123456789abcdef"),
        ("GET", "/api/policies"),
        ("GET", "/api/policies/openai"),
        ("PUT", "/api/policies/openai"),
        ("DELETE", "/api/policies/%2F"),
    ] {
        for auth in [None, Some("Bearer wrong-token-wrong-token"), Some(TOKEN)] {
            let (status, body, _) = api.call(method, uri, auth, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} {auth:?}");
            assert_eq!(
                body,
                json!({"success": false, "error": "authentication required"})
            );
        }
    }
}

#[tokio::test]
async fn a_key_is_shown_once_and_redis_holds_only_its_hash() {
    let api = Api::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = now + 3600;
    let (s, reply) = api
        .admin(
            "POST",
            "/api/keys",
            Some(
                json!({"name": "ci-bot", "prefixes": ["/openai/", "/café"], "expires_at": expires}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{reply}");
    let secret = reply["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("apx-") && secret.len() == 47, "{secret}");
    assert!(secret[4..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let key = &reply["key"];
    let id = key["id"].as_str().unwrap().to_owned();
    assert!(apiproxy_shared::access::is_key_id(&id), "{id}");
    let created_at = key["created_at"].as_u64().unwrap();
    assert!((now..now + 60).contains(&created_at), "{created_at}");
    assert_eq!(
        key,
        &json!({"id": id, "name": "ci-bot", "prefixes": ["/openai", "/caf%C3%A9"],
                "enabled": true, "expires_at": expires, "created_at": created_at,
                "last_used_at": null})
    );
    assert_eq!(reply.as_object().unwrap().len(), 3, "{reply}");

    // Redis: the record with the SHA-256 and the by-hash index; the
    // secret nowhere, not in the audit stream either.
    let keys = RedisKeys::default();
    let mut conn = api.redis.conn().await;
    let stored: String = conn.hget(&keys.keys, &id).await.unwrap();
    let record: KeyRecord = serde_json::from_str(&stored).unwrap();
    assert_eq!(record.sha256, key_hash_hex(secret.as_bytes()));
    assert_eq!(record.validate(), Ok(()));
    let by_hash: String = conn.hget(&keys.keys_by_hash, &record.sha256).await.unwrap();
    assert_eq!(by_hash, id);
    let all = dump(&api.redis).await;
    assert!(all.contains(&record.sha256), "{all}");
    assert!(!all.contains(&secret), "{all}");
    assert!(!all.contains(&secret[4..]), "{all}");

    // Reads show the key, never its secret nor its hash.
    let (s, one) = api.admin("GET", &format!("/api/keys/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one, json!({"success": true, "key": key}));
    let (_, list) = api.admin("GET", "/api/keys", None).await;
    assert_eq!(list, json!({"success": true, "keys": [key]}));
    for text in [one.to_string(), list.to_string()] {
        assert!(!text.contains(&secret) && !text.contains(&record.sha256));
    }

    // A second key: listed by creation, then id; each its own secret.
    let (second, second_secret) = create_key(&api, json!({"name": "other"})).await;
    assert_ne!(second_secret, secret);
    let (_, list) = api.admin("GET", "/api/keys", None).await;
    let ids: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![id.as_str(), second.as_str()];
    if created_at == list["keys"][1]["created_at"].as_u64().unwrap() {
        expected.sort();
    }
    assert_eq!(ids, expected);
    let (_, other) = api.admin("GET", &format!("/api/keys/{second}"), None).await;
    assert_eq!(
        (&other["key"]["prefixes"], &other["key"]["expires_at"]),
        (&Value::Null, &Value::Null),
        "absent: all prefixes, never expires"
    );
}

#[tokio::test]
async fn patch_changes_each_field_and_reads_show_the_last_use() {
    let api = Api::start();
    let (id, _) = create_key(&api, json!({"name": "ci", "prefixes": ["/a"]})).await;
    let uri = format!("/api/keys/{id}");
    let v0 = version(&api).await;
    let later = 4_000_000_000u64;
    for (patch, field, value) in [
        (json!({"name": "ci bot"}), "name", json!("ci bot")),
        (
            json!({"prefixes": ["/b/", "/a", "/b"]}),
            "prefixes",
            json!(["/b", "/a"]),
        ),
        (json!({"prefixes": null}), "prefixes", Value::Null),
        (json!({"enabled": false}), "enabled", json!(false)),
        (json!({"expires_at": later}), "expires_at", json!(later)),
        (json!({"expires_at": null}), "expires_at", Value::Null),
    ] {
        let (s, reply) = api.admin("PATCH", &uri, Some(patch.clone())).await;
        assert_eq!(s, StatusCode::OK, "{patch}: {reply}");
        assert_eq!(reply["key"][field], value, "{patch}: {reply}");
        assert_eq!(api.admin("GET", &uri, None).await.1["key"][field], value);
    }
    assert_eq!(version(&api).await, v0 + 6);
    let (_, key) = api.admin("GET", &uri, None).await;
    assert_eq!(
        (&key["key"]["name"], &key["key"]["enabled"]),
        (&json!("ci bot"), &json!(false)),
        "each patch kept the other fields"
    );
    // A patch that changes nothing writes nothing.
    for unchanged in [json!({}), json!({"enabled": false, "name": "ci bot"})] {
        let (s, reply) = api.admin("PATCH", &uri, Some(unchanged)).await;
        assert_eq!((s, &reply["key"]), (StatusCode::OK, &key["key"]));
    }
    assert_eq!(version(&api).await, v0 + 6);

    // Last use comes from `{p}:keys:last-used`, not from the record.
    let mut conn = api.redis.conn().await;
    let _: () = conn
        .hset(RedisKeys::default().keys_last_used, &id, 1_800_000_000u64)
        .await
        .unwrap();
    assert_eq!(
        api.admin("GET", &uri, None).await.1["key"]["last_used_at"],
        1_800_000_000u64
    );
    assert_eq!(
        api.admin("GET", "/api/keys", None).await.1["keys"][0]["last_used_at"],
        1_800_000_000u64
    );
    let (_, patched) = api
        .admin("PATCH", &uri, Some(json!({"enabled": true})))
        .await;
    assert_eq!(patched["key"]["last_used_at"], 1_800_000_000u64);
}

#[tokio::test]
async fn delete_removes_the_record_its_index_last_use_and_usage() {
    let api = Api::start();
    let (id, secret) = create_key(&api, json!({"name": "gone"})).await;
    let (kept, _) = create_key(&api, json!({"name": "kept"})).await;
    let keys = RedisKeys::default();
    let mut conn = api.redis.conn().await;
    for key_id in [&id, &kept] {
        let _: () = conn.hset(&keys.keys_last_used, key_id, 5u64).await.unwrap();
        let _: () = conn
            .hset(keys.stats_key(key_id), "/a|requests", 3u64)
            .await
            .unwrap();
    }
    let uri = format!("/api/keys/{id}");
    let (s, reply) = api.admin("DELETE", &uri, None).await;
    assert_eq!(
        (s, reply),
        (StatusCode::OK, json!({"success": true, "deleted": id}))
    );
    let hash = key_hash_hex(secret.as_bytes());
    assert!(!conn.hexists::<_, _, bool>(&keys.keys, &id).await.unwrap());
    assert!(!conn
        .hexists::<_, _, bool>(&keys.keys_by_hash, &hash)
        .await
        .unwrap());
    assert!(!conn
        .hexists::<_, _, bool>(&keys.keys_last_used, &id)
        .await
        .unwrap());
    assert!(!conn.exists::<_, bool>(keys.stats_key(&id)).await.unwrap());
    // The other key keeps everything.
    assert!(conn
        .hexists::<_, _, bool>(&keys.keys_last_used, &kept)
        .await
        .unwrap());
    assert!(conn.exists::<_, bool>(keys.stats_key(&kept)).await.unwrap());
    let by_hash: Vec<String> = conn.hvals(&keys.keys_by_hash).await.unwrap();
    assert_eq!(by_hash, [kept.as_str()]);
    for method in ["GET", "PATCH", "DELETE"] {
        let body = (method == "PATCH").then(|| json!({"enabled": false}));
        let (s, reply) = api.admin(method, &uri, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(
            reply,
            json!({"success": false, "error": format!("no key {id}")})
        );
    }
}

#[tokio::test]
async fn bad_key_fields_are_refused_naming_the_field() {
    let api = Api::start();
    let long_name = "n".repeat(101);
    let many: Vec<String> = (0..101).map(|i| format!("/p{i}")).collect();
    for (body, field) in [
        (json!({"name": ""}), "`name`"),
        (json!({"name": "a\nb"}), "`name`"),
        (json!({"name": long_name}), "`name`"),
        (json!({}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": "a", "prefixes": []}), "`prefixes`"),
        (json!({"name": "a", "prefixes": many}), "`prefixes`"),
        (
            json!({"name": "a", "prefixes": ["nope"]}),
            "`prefixes`: nope",
        ),
        (json!({"name": "a", "prefixes": ["/a/../b"]}), "`prefixes`"),
        (json!({"name": "a", "expires_at": 1}), "`expires_at`"),
        (json!({"name": "a", "expires_at": 0}), "`expires_at`"),
        (json!({"name": "a", "expires_at": u64::MAX}), "`expires_at`"),
        (json!({"name": "a", "expires_at": "soon"}), "expires_at"),
        (json!({"name": "a", "enabled": false}), "enabled"),
        (json!({"name": "a", "secret": "apx-mine"}), "secret"),
    ] {
        let (s, reply) = api.admin("POST", "/api/keys", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["success"], false);
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(field), "{body}: {error} should name {field}");
    }
    assert_eq!(
        api.admin("GET", "/api/keys", None).await.1["keys"],
        json!([])
    );
    assert_eq!(version(&api).await, 0, "nothing refused was written");

    let (id, _) = create_key(&api, json!({"name": "ok"})).await;
    let uri = format!("/api/keys/{id}");
    for (body, field) in [
        (json!({"name": ""}), "`name`"),
        (json!({"name": null}), "name"),
        (json!({"prefixes": []}), "`prefixes`"),
        (json!({"prefixes": ["x"]}), "`prefixes`"),
        (json!({"enabled": "no"}), "enabled"),
        (json!({"enabled": null}), "enabled"),
        (json!({"expires_at": 2}), "`expires_at`"),
        (json!({"id": "key_ffffffffffffffff"}), "id"),
        (json!({"created_at": 1}), "created_at"),
    ] {
        let (s, reply) = api.admin("PATCH", &uri, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(field), "{body}: {error} should name {field}");
    }
    assert_eq!(version(&api).await, 1);

    // Ids: anything not a key id, and an id no key has, are 404.
    for path in [
        "/api/keys/nope",
        "/api/keys/key_0123456789ABCDEF",
        "/api/keys/key_0123",
        "/api/keys/%FF",
        &format!("/api/keys/{ID}"),
    ] {
        for method in ["GET", "PATCH", "DELETE"] {
            let body = (method == "PATCH").then(|| json!({"enabled": false}));
            let (s, reply) = api.admin(method, path, body).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {reply}");
            assert_eq!(reply["success"], false);
        }
    }
}

/// The sealed value stored for `prefix`, and the policy.
async fn stored_policy(redis: &RedisServer, prefix: &str) -> Option<StoredPolicy> {
    let mut conn = redis.conn().await;
    let json: Option<String> = conn
        .hget(RedisKeys::default().policies, prefix)
        .await
        .unwrap();
    json.map(|j| serde_json::from_str(&j).unwrap())
}

#[tokio::test]
async fn a_credential_is_sealed_write_only_and_kept_when_no_secret_is_given() {
    let (api, secrets) = api_with_secrets();
    let header_secret = "sk-header-secret-0001abcd";
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/openai/",
            Some(json!({"access": "key", "upstream_credential":
                {"header": "Authorization", "template": "Bearer {secret}", "secret": header_secret}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    let header_view = json!({"prefix": "/openai", "access": "key", "upstream_credential":
        {"header": "authorization", "template": "Bearer {secret}", "secret_hint": "…abcd"}});
    assert_eq!(
        reply,
        json!({"success": true, "policy": header_view, "first_policy": true})
    );
    let stored = stored_policy(&api.redis, "/openai").await.unwrap();
    let sealed = stored.upstream_credential.unwrap().sealed;
    assert_eq!(secrets.open("/openai", &sealed).unwrap(), header_secret);

    // The same, read back; the secret in no answer.
    let (s, one) = api.admin("GET", "/api/policies/openai", None).await;
    assert_eq!(
        (s, &one),
        (
            StatusCode::OK,
            &json!({"success": true, "policy": header_view})
        )
    );
    let (_, list) = api.admin("GET", "/api/policies", None).await;
    assert_eq!(list, json!({"success": true, "policies": [header_view]}));

    // Another mapping's query credential: not the first policy.
    let query_secret = "AIza-query-secret-0002wxyz";
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/gemini",
            Some(json!({"access": "key", "upstream_credential": {"query": "key", "secret": query_secret}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(reply["first_policy"], false);
    assert_eq!(
        reply["policy"],
        json!({"prefix": "/gemini", "access": "key",
               "upstream_credential": {"query": "key", "secret_hint": "…wxyz"}})
    );
    let gemini = stored_policy(&api.redis, "/gemini").await.unwrap();
    let gemini_sealed = gemini.upstream_credential.unwrap().sealed;
    assert_eq!(
        secrets.open("/gemini", &gemini_sealed).unwrap(),
        query_secret
    );

    // Without `secret`, the stored one is kept: another place, the same
    // sealed value.
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key", "upstream_credential": {"header": "x-api-key"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["policy"]["upstream_credential"],
        json!({"header": "x-api-key", "template": "{secret}", "secret_hint": "…abcd"})
    );
    let kept = stored_policy(&api.redis, "/openai").await.unwrap();
    assert_eq!(kept.upstream_credential.unwrap().sealed, sealed);

    // Nowhere in clear: not in Redis, not in the audit stream.
    let all = dump(&api.redis).await;
    for secret in [header_secret, query_secret] {
        assert!(!all.contains(secret), "{secret} in {all}");
        assert!(!all.contains(&secret[..secret.len() - 4]), "{all}");
    }
    for entry in audit_stream(&api.redis).await {
        assert!(!entry.contains("v1."), "a sealed value in {entry}");
    }

    // A credential removed; a policy with no mapping; `/` as `%2F`.
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/gemini",
            Some(json!({"access": "open", "upstream_credential": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["policy"],
        json!({"prefix": "/gemini", "access": "open", "upstream_credential": null})
    );
    assert_eq!(
        stored_policy(&api.redis, "/gemini").await.unwrap(),
        StoredPolicy {
            access: apiproxy_shared::access::Access::Open,
            upstream_credential: None
        }
    );
    for path in ["/api/policies/%2F", "/api/policies/"] {
        let (s, reply) = api.admin("PUT", path, Some(json!({"access": "key"}))).await;
        assert_eq!(s, StatusCode::OK, "{path}: {reply}");
        assert_eq!(reply["policy"]["prefix"], "/");
    }
    assert_eq!(
        api.admin("GET", "/api/mappings", None).await.1["count"],
        0,
        "a policy needs no mapping"
    );
    let (_, list) = api.admin("GET", "/api/policies", None).await;
    let prefixes: Vec<&str> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["/", "/gemini", "/openai"]);

    // Delete, then 404.
    let (s, reply) = api.admin("DELETE", "/api/policies/openai", None).await;
    assert_eq!(
        (s, reply),
        (
            StatusCode::OK,
            json!({"success": true, "deleted": "/openai"})
        )
    );
    assert!(stored_policy(&api.redis, "/openai").await.is_none());
    for method in ["GET", "DELETE"] {
        let (s, reply) = api.admin(method, "/api/policies/openai", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(
            reply,
            json!({"success": false, "error": "no policy for /openai"})
        );
    }
    // A later PUT without a secret has nothing to keep.
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key", "upstream_credential": {"header": "x-api-key"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("`upstream_credential.secret` is required"),
        "{reply}"
    );
}

#[tokio::test]
async fn bad_policies_are_refused_naming_the_field() {
    let (api, _) = api_with_secrets();
    let cred = |c: Value| json!({"access": "key", "upstream_credential": c});
    for (body, field) in [
        (json!({}), "access"),
        (json!({"access": "maybe"}), "access"),
        (json!({"access": "key", "extra": 1}), "extra"),
        (
            cred(json!({"secret": "s"})),
            "exactly one of `header` and `query`",
        ),
        (
            cred(json!({"header": "x", "query": "k", "secret": "s"})),
            "exactly one of",
        ),
        (
            cred(json!({"header": "Host", "secret": "s"})),
            "upstream_credential.header",
        ),
        (
            cred(json!({"header": "bad header", "secret": "s"})),
            "upstream_credential.header",
        ),
        (
            cred(json!({"header": "x-a", "template": "Bearer", "secret": "s"})),
            "upstream_credential.template",
        ),
        (
            cred(json!({"header": "x-a", "template": "{secret} {secret}", "secret": "s"})),
            "upstream_credential.template",
        ),
        (
            cred(json!({"query": "key", "template": "{secret}", "secret": "s"})),
            "upstream_credential.template",
        ),
        (
            cred(json!({"query": "k y", "secret": "s"})),
            "upstream_credential.query",
        ),
        (
            cred(json!({"query": "key", "secret": ""})),
            "upstream_credential.secret",
        ),
        (
            cred(json!({"query": "key", "secret": "has space"})),
            "upstream_credential.secret",
        ),
        (cred(json!({"query": "key", "secret": 5})), "secret"),
        (cred(json!({"query": "key", "sealed": "v1.x"})), "sealed"),
        (
            cred(json!({"query": "key"})),
            "`upstream_credential.secret` is required",
        ),
    ] {
        let (s, reply) = api
            .admin("PUT", "/api/policies/openai", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(field), "{body}: {error} should name {field}");
    }
    for path in [
        "/api/policies/a/../b",
        "/api/policies/a%3Fb",
        "/api/policies/a//b",
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let body = (method == "PUT").then(|| json!({"access": "key"}));
            let (s, reply) = api.admin(method, path, body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {reply}");
            assert!(reply["error"].as_str().unwrap().starts_with("prefix: "));
        }
    }
    assert_eq!(version(&api).await, 0, "nothing refused was written");
    assert!(dump(&api.redis).await.is_empty());
}

#[tokio::test]
async fn a_secret_is_refused_without_the_secrets_key() {
    let api = Api::start();
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key", "upstream_credential": {"query": "key", "secret": "sk-1234"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("needs API_PROXY_SECRETS_KEY")
            && error.contains("upstream_credential.secret"),
        "{error}"
    );
    assert_eq!(version(&api).await, 0);
    // Keys, and policies without a secret, need no secrets key.
    let (s, reply) = api
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key"})),
        )
        .await;
    assert_eq!((s, &reply["first_policy"]), (StatusCode::OK, &json!(true)));
    create_key(&api, json!({"name": "k"})).await;
    assert_eq!(version(&api).await, 2);
}

/// A policy damaged by hand in Redis (JSON that does not parse; the data
/// planes refuse its mapping's requests) is not a dead end: a `PUT`
/// replaces it and a `DELETE` removes it.
#[tokio::test]
async fn a_damaged_policy_can_be_replaced_or_deleted() {
    let api = Api::start();
    let keys = RedisKeys::default();
    for (method, body, status) in [
        ("PUT", Some(json!({"access": "key"})), StatusCode::OK),
        ("DELETE", None, StatusCode::OK),
    ] {
        let mut conn = api.redis.conn().await;
        let () = conn
            .hset(&keys.policies, "/openai", "{damaged")
            .await
            .unwrap();
        let (s, reply) = api.admin(method, "/api/policies/openai", body).await;
        assert_eq!(s, status, "{method}: {reply}");
        let left: Option<String> = conn.hget(&keys.policies, "/openai").await.unwrap();
        match method {
            "PUT" => assert_eq!(left.as_deref(), Some(r#"{"access":"key"}"#)),
            _ => assert_eq!(left, None),
        }
    }
}

/// The next announcement, within 5 s.
async fn next_message(
    messages: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> UpdateMessage {
    let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("an announcement within 5 s")
        .unwrap();
    UpdateMessage::parse(msg.get_payload_bytes()).expect("an UpdateMessage")
}

#[tokio::test]
async fn each_change_bumps_the_version_is_announced_and_audited() {
    let (api, _) = api_with_secrets();
    let client = redis::Client::open(api.redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(RedisKeys::default().updates)
        .await
        .unwrap();
    let mut messages = pubsub.on_message();
    api.admin(
        "POST",
        "/api/mappings",
        Some(json!({"prefix": "/openai", "target": "https://api.openai.com"})),
    )
    .await;
    // A mapping's announcement carries its target: nodes need no read.
    assert_eq!(
        next_message(&mut messages).await,
        UpdateMessage::upsert(1, "/openai", "https://api.openai.com")
    );

    let key = UpdateMessage::key;
    let policy = UpdateMessage::policy;
    let (id, secret) = create_key(&api, json!({"name": "ci-bot", "prefixes": ["/openai"]})).await;
    assert_eq!(next_message(&mut messages).await, key(2, &id));
    let uri = format!("/api/keys/{id}");
    api.admin(
        "PATCH",
        &uri,
        Some(json!({"enabled": false, "expires_at": 4_000_000_000u64})),
    )
    .await;
    assert_eq!(next_message(&mut messages).await, key(3, &id));
    let (s, _) = api
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key", "upstream_credential":
                {"header": "Authorization", "template": "Bearer {secret}", "secret": "sk-live-9999abcd"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(next_message(&mut messages).await, policy(4, "/openai"));
    api.admin(
        "PUT",
        "/api/policies/openai",
        Some(json!({"access": "open", "upstream_credential": {"query": "key"}})),
    )
    .await;
    assert_eq!(next_message(&mut messages).await, policy(5, "/openai"));
    api.admin("DELETE", "/api/policies/openai", None).await;
    assert_eq!(next_message(&mut messages).await, policy(6, "/openai"));
    api.admin("DELETE", &uri, None).await;
    assert_eq!(next_message(&mut messages).await, key(7, &id));
    assert_eq!(version(&api).await, 7);

    // The audit log, newest first, through the API: one entry per change,
    // each a summary without a secret.
    let (s, audit) = api.admin("GET", "/api/audit?limit=6", None).await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let entries: Vec<(String, String, Value, Value)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["time"].as_u64().unwrap() > 1_600_000_000_000);
            assert!(e["actor"].is_string() && e["id"].is_string());
            (
                e["op"].as_str().unwrap().to_owned(),
                e["prefix"].as_str().unwrap().to_owned(),
                e["old_target"].clone(),
                e["new_target"].clone(),
            )
        })
        .collect();
    let created = "name=ci-bot enabled=true prefixes=/openai expires_at=-";
    let disabled = "name=ci-bot enabled=false prefixes=/openai expires_at=4000000000";
    let header =
        r#"access=key credential=header:authorization template="Bearer {secret}" secret=…abcd"#;
    let query = "access=open credential=query:key secret=…abcd";
    let expected = [
        ("key_delete", id.as_str(), json!(disabled), Value::Null),
        ("policy_delete", "/openai", json!(query), Value::Null),
        ("policy_set", "/openai", json!(header), json!(query)),
        ("policy_set", "/openai", Value::Null, json!(header)),
        ("key_update", id.as_str(), json!(created), json!(disabled)),
        ("key_create", id.as_str(), Value::Null, json!(created)),
    ]
    .map(|(op, prefix, old, new)| (op.to_owned(), prefix.to_owned(), old, new));
    assert_eq!(entries, expected);
    let stream = audit_stream(&api.redis).await.concat();
    for secret in [secret.as_str(), "sk-live-9999abcd", "sk-live-9999"] {
        assert!(!stream.contains(secret), "{secret} in the audit stream");
    }
    assert!(
        !stream.contains("v1."),
        "a sealed value in the audit stream"
    );
}

/// The real binary at the most verbose level: a key's secret, a
/// credential's secret and the secrets key itself reach no log line.
#[tokio::test]
async fn no_key_credential_or_secrets_key_is_logged() {
    use apiproxy_tests::controlplane::ControlPlane;
    let redis = RedisServer::start();
    let secrets_key = SecretsKey::generate();
    let cp = ControlPlane::start(
        &redis.url(),
        &[
            ("API_PROXY_SECRETS_KEY", &secrets_key),
            ("RUST_LOG", "trace"),
        ],
    );
    let created = cp
        .admin("POST", "/api/keys", Some(json!({"name": "ci"})))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let secret = created.json()["secret"].as_str().unwrap().to_owned();
    let id = created.json()["key"]["id"].as_str().unwrap().to_owned();
    let credential = "sk-upstream-logged-never-7777";
    let put = cp
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key", "upstream_credential": {"header": "x-api-key", "secret": credential}})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    // A refused one too (its secret is in the body of a 400).
    let refused = cp
        .admin(
            "PUT",
            "/api/policies/openai",
            Some(json!({"access": "key", "upstream_credential": {"header": "Host", "secret": credential}})),
        )
        .await;
    assert_eq!(refused.status, 400);
    let patched = cp
        .admin(
            "PATCH",
            &format!("/api/keys/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(patched.status, 200);
    // Every change is logged (its line read) before the logs are checked.
    apiproxy_tests::eventually("the last change logged", Duration::from_secs(5), || async {
        cp.logs()
            .iter()
            .any(|l| l.contains("proxy key updated"))
            .then_some(())
    })
    .await;
    let logs = cp.logs().join("\n");
    assert!(logs.contains(&id) && logs.contains("policy set"), "{logs}");
    for secret in [secret.as_str(), credential, secrets_key.as_str()] {
        assert!(!logs.contains(secret), "{secret} logged");
    }
}
