//! The console's proxy keys and access policies in a real headless
//! Chromium, against the real control plane and a real Redis: what an
//! operator does in the Keys page and the mapping form must be what the
//! admin API then shows, and usage pushed by a node must reach the page.
//! Screenshots land in `target/ui-screenshots/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiproxy_shared::access::SecretsKey;
use apiproxy_shared::{Gauges, KeyUsage, StatsBatch};
use apiproxy_tests::browser::{rows_are, Browser, STATUS_LINE, UNLABELLED_CONTROLS};
use apiproxy_tests::client::call;
use apiproxy_tests::controlplane::{admin_call, ControlPlane};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane};
use bytes::Bytes;
use fantoccini::key::Key;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

const NODE_TOKEN: &str = "ui-keys-node-token-0123456789abcdef";
/// The upstream key typed into the mapping form: it must never come back.
const UPSTREAM_SECRET: &str = "sk-upstream-secret-abcd1234";

/// A control plane that holds `secrets` (an `API_PROXY_SECRETS_KEY`), if
/// any, and takes stats pushes signed with [`NODE_TOKEN`].
fn control_plane(redis: &RedisServer, secrets: Option<&str>) -> ControlPlane {
    let mut env = vec![("API_PROXY_NODE_TOKEN", NODE_TOKEN)];
    if let Some(secrets) = secrets {
        env.push(("API_PROXY_SECRETS_KEY", secrets));
    }
    ControlPlane::start(&redis.url(), &env)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A stats batch carrying only `key`'s usage on `prefix`, as a data
/// plane pushes it.
fn key_usage_batch(key: &str, prefix: &str) -> StatsBatch {
    StatsBatch {
        node_id: "dp-keys".into(),
        boot_id: "boot".into(),
        seq: 1,
        sent_at: now(),
        interval_s: 1.0,
        config_version: 0,
        config_hash: "h".into(),
        gauges: Gauges::default(),
        unmatched: 0,
        endpoints: Default::default(),
        keys: vec![KeyUsage {
            key_id: key.into(),
            prefix: prefix.into(),
            requests: 7,
            errors: 2,
            status: [("2xx".to_owned(), 5), ("5xx".to_owned(), 2)].into(),
            bytes_in: 1234,
            bytes_out: 56789,
        }],
        failed: Vec::new(),
    }
}

/// The cells of the keys table's row for `id`, as shown.
fn key_row(id: &str) -> String {
    format!(
        "const r = document.querySelector(`#keys tr[data-key-id='{id}']`); \
         return r ? [...r.cells].map(c => c.textContent) : null"
    )
}

/// Whether the element `id` is rendered (not hidden, nor inside hidden).
async fn shown(b: &Browser, id: &str) -> bool {
    b.js(&format!(
        "return document.getElementById('{id}').checkVisibility()"
    ))
    .await
    .as_bool()
    .unwrap()
}

/// The focused element: its id, else its aria-label, else its label's
/// text.
const FOCUSED: &str = "const e = document.activeElement; \
    return e.id || e.getAttribute('aria-label') || (e.labels && e.labels[0] ? e.labels[0].textContent.trim() : '')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_creates_copies_disables_and_deletes_a_key() {
    let redis = RedisServer::start();
    let cp = control_plane(&redis, Some(&SecretsKey::generate()));
    let base = format!("http://{}", cp.addr);
    for prefix in ["/openai", "/claude"] {
        let r = cp.create(prefix, "http://127.0.0.1:9/").await;
        assert_eq!(r.status, 201, "{}", r.text());
    }

    let b = Browser::start().await;
    // Without a session the page says where to sign in.
    b.goto(&format!("{base}/keys")).await;
    b.allow_clipboard_read().await;
    b.wait_until(
        "the sign-in invitation",
        "return document.getElementById('signin-view').checkVisibility()",
    )
    .await;
    assert_eq!(b.text("#status").await, "", "not an error");
    assert!(!shown(&b, "app-view").await);
    b.sign_in(&base).await;
    b.click("nav a[href='/keys']").await;
    b.wait_until(
        "the mappings offered as prefixes",
        "return [...document.querySelectorAll('#key-prefixes input')].map(i => i.value).join(',') \
         === '/claude,/openai'",
    )
    .await;
    assert_eq!(b.text("#keys tbody td.empty").await, "No keys yet.");

    // "Only these" with none ticked is refused before any request.
    b.fill("#key-name", "ci-bot").await;
    b.click("#scope-list").await;
    b.click("#key-form button[type=submit]").await;
    assert_eq!(
        b.text("#key-prefixes-error").await,
        "Choose at least one prefix, or allow all mappings."
    );
    // An invalid name gets the API's message beside the field, with focus.
    b.fill("#key-name", " ").await;
    b.click("#key-form input[value='/openai']").await;
    b.click("#key-form button[type=submit]").await;
    b.wait_until(
        "name error",
        "return document.getElementById('key-name-error').textContent.includes('`name`')",
    )
    .await;
    assert_eq!(b.js(FOCUSED).await, json!("key-name"));
    assert_eq!(
        b.js("return document.getElementById('key-name').getAttribute('aria-invalid')")
            .await,
        json!("true")
    );
    assert!(
        b.js("return document.querySelector(\"#key-form input[value='/openai']\").checked")
            .await
            .as_bool()
            .unwrap(),
        "what was ticked stays ticked"
    );

    // Created: the secret is shown once, focused, with the note and Copy.
    b.fill("#key-name", "ci-bot").await;
    b.click("#key-form button[type=submit]").await;
    b.wait_until(
        "the secret shown",
        "return document.getElementById('secret-view').checkVisibility()",
    )
    .await;
    let secret = b
        .js("return document.getElementById('new-secret').value")
        .await;
    let secret = secret.as_str().unwrap().to_owned();
    assert!(secret.starts_with("apx-") && secret.len() == 47, "{secret}");
    assert_eq!(b.js(FOCUSED).await, json!("new-secret"));
    assert!(b
        .js("return document.getElementById('new-secret').readOnly")
        .await
        .as_bool()
        .unwrap());
    assert_eq!(
        b.text("#secret-note").await,
        "Copy this key now: you will not see it again. The proxy keeps only its SHA-256."
    );
    assert_eq!(b.text("#secret-title").await, "New key ci-bot");
    assert_eq!(
        b.js(STATUS_LINE).await,
        json!([
            "Created key ci-bot. Copy it now: it is shown only once.",
            "polite"
        ])
    );
    assert_eq!(
        b.accessible_name("#copy-secret").await,
        "Copy the proxy key"
    );
    b.click("#copy-secret").await;
    b.wait_until(
        "copy feedback",
        "return document.getElementById('copy-secret').textContent === 'Copied'",
    )
    .await;
    assert_eq!(
        b.js("return navigator.clipboard.readText()").await,
        json!(secret),
        "the clipboard holds the secret"
    );
    b.screenshot("keys-created").await;
    b.fits_a_phone("keys-phone").await;
    b.client.set_window_size(1280, 1000).await.unwrap();

    // Listed, as the API has it; the API never shows the secret again.
    let r = cp.admin("GET", "/api/keys", None).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(&secret));
    let keys = r.json()["keys"].clone();
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["name"], "ci-bot");
    assert_eq!(keys[0]["prefixes"], json!(["/openai"]));
    assert_eq!(keys[0]["enabled"], true);
    b.find(&format!("#keys tr[data-key-id='{id}']")).await;
    let row = b.js(&key_row(&id)).await;
    assert_eq!(row[0], "ci-bot", "{row}");
    assert_eq!(row[1], json!(id));
    assert_eq!(row[2], "/openai");
    assert_eq!(row[3], "enabled");
    assert_eq!(row[4], "never", "no expiry");
    assert_eq!(row[6], "never", "not used yet");
    assert_eq!(b.text("#key-count").await, "Keys: 1");

    // "I have copied it" forgets the secret, as does a reload.
    b.click("#secret-done").await;
    assert!(!shown(&b, "secret-view").await);
    assert_eq!(b.js(FOCUSED).await, json!("key-name"));
    let holds_secret =
        format!("return document.documentElement.outerHTML.includes('{secret}') || document.getElementById('new-secret').value !== ''");
    assert_eq!(b.js(&holds_secret).await, json!(false));
    b.client.refresh().await.unwrap();
    b.find(&format!("#keys tr[data-key-id='{id}']")).await;
    assert_eq!(b.js(&holds_secret).await, json!(false));

    // Disable: the API says so and the focus stays on the button.
    b.click(&format!(
        "#keys tr[data-key-id='{id}'] button[data-action=toggle]"
    ))
    .await;
    b.wait_until(
        "disabled",
        &format!("return document.querySelector(`#keys tr[data-key-id='{id}']`).dataset.state === 'disabled'"),
    )
    .await;
    let r = cp.admin("GET", &format!("/api/keys/{id}"), None).await;
    assert_eq!(r.json()["key"]["enabled"], false, "{}", r.text());
    assert_eq!(
        b.js(STATUS_LINE).await,
        json!([
            "Disabled key ci-bot: new requests with it get 403.",
            "polite"
        ])
    );
    assert_eq!(b.js(FOCUSED).await, json!("Enable ci-bot"));
    assert_eq!(b.js(&key_row(&id)).await[3], "disabled");

    // A node reports the key's traffic: the usage table and chart show it.
    let batch = serde_json::to_value(key_usage_batch(&id, "/openai")).unwrap();
    let r = admin_call(cp.addr, NODE_TOKEN, "POST", "/internal/stats", Some(batch)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    b.click(&format!(
        "#keys tr[data-key-id='{id}'] button[data-action=usage]"
    ))
    .await;
    b.wait_until(
        "usage shown",
        "return document.querySelector(\"#usage tr[data-prefix='/openai']\") !== null",
    )
    .await;
    assert_eq!(
        b.js("return [...document.querySelector(\"#usage tr[data-prefix='/openai']\").cells].map(c => c.textContent)")
            .await,
        json!(["/openai", "7", "2", "1,234", "56,789"])
    );
    assert_eq!(b.text("#usage-title").await, "Usage of ci-bot");
    assert_eq!(b.js(FOCUSED).await, json!("usage-title"));
    b.wait_until(
        "the 24 h chart drawn",
        "return document.querySelectorAll('#chart-usage rect.bar').length > 0",
    )
    .await;
    let chart = b.accessible_name("#chart-usage svg").await;
    assert!(
        chart.starts_with("Requests per hour (last 24 h): 7"),
        "{chart}"
    );
    assert!(!chart.contains("p99"), "{chart}");
    assert_ne!(
        b.js(&key_row(&id)).await[6],
        "never",
        "the batch's time is its last use"
    );
    b.js("document.getElementById('usage-view').scrollIntoView()")
        .await;
    b.screenshot("keys-usage").await;

    // Every control is named and reached by keyboard.
    assert_eq!(b.js(UNLABELLED_CONTROLS).await, json!([]));
    b.goto(&format!("{base}/keys")).await;
    b.find(&format!("#keys tr[data-key-id='{id}']")).await;
    b.press(Key::Tab).await;
    assert_eq!(
        b.js("return document.activeElement.className").await,
        json!("skip")
    );
    let mut reached = Vec::new();
    for _ in 0..40 {
        b.press(Key::Tab).await;
        reached.push(b.js(FOCUSED).await);
    }
    for want in [
        "key-name",
        "scope-all",
        "/openai",
        "key-expiry",
        "Usage ci-bot",
        "Enable ci-bot",
        "Delete ci-bot",
    ] {
        assert!(
            reached.contains(&json!(want)),
            "{want} not reached by Tab: {reached:?}"
        );
    }
    assert_eq!(
        b.accessible_name("#key-prefixes input[value='/openai']")
            .await,
        "/openai"
    );
    assert_eq!(
        b.accessible_name(&format!(
            "#keys tr[data-key-id='{id}'] button[data-action=toggle]"
        ))
        .await,
        "Enable ci-bot"
    );

    // 简体中文.
    b.click("#lang-switch").await;
    assert_eq!(b.text("h1").await, "apiproxy 密钥");
    let row = b.js(&key_row(&id)).await;
    assert_eq!((&row[3], &row[4]), (&json!("已停用"), &json!("永不过期")));
    b.screenshot("keys-zh").await;
    b.click("#lang-switch").await;

    // Delete, with confirmation; the focus goes back to the list.
    b.click(&format!(
        "#keys tr[data-key-id='{id}'] button[data-action=delete]"
    ))
    .await;
    b.wait_until(
        "confirm dialog",
        "return document.getElementById('confirm-dialog').open",
    )
    .await;
    assert_eq!(
        b.text("#confirm-text").await,
        "Delete the key ci-bot? Clients using it get 401 at once."
    );
    b.click("#confirm-ok").await;
    b.wait_until(
        "row gone",
        "return document.querySelector('#keys tbody td.empty') !== null",
    )
    .await;
    assert_eq!(b.js(FOCUSED).await, json!("keys-title"));
    assert_eq!(
        b.js(STATUS_LINE).await,
        json!(["Deleted key ci-bot.", "polite"])
    );
    let r = cp.admin("GET", &format!("/api/keys/{id}"), None).await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Creates a key named `name` limited to `prefix` in the Keys page (open)
/// and returns its secret and id as shown.
async fn create_key(b: &Browser, name: &str, prefix: &str) -> (String, String) {
    b.fill("#key-name", name).await;
    b.click(&format!("#key-form input[value='{prefix}']")).await;
    b.click("#key-form button[type=submit]").await;
    b.wait_until(
        "the secret shown and the key listed",
        "return document.getElementById('secret-view').checkVisibility() \
         && document.querySelector('#keys tbody tr[data-key-id]') !== null",
    )
    .await;
    let shown = b
        .js("return [document.getElementById('new-secret').value, \
                    document.querySelector('#keys tbody tr[data-key-id]')?.dataset.keyId]")
        .await;
    (
        shown[0].as_str().unwrap().to_owned(),
        shown[1].as_str().expect("the key listed").to_owned(),
    )
}

/// Fills the Add dialog with a mapping that needs a proxy key and puts
/// [`UPSTREAM_SECRET`] where the credential `preset` says (not saved).
async fn fill_keyed_mapping(b: &Browser, prefix: &str, target: &str, preset: &str) {
    b.click("#add").await;
    b.fill("#prefix", prefix).await;
    b.fill("#target", target).await;
    b.click("#access-key").await;
    b.select("#cred-preset", preset).await;
    b.fill("#cred-secret", UPSTREAM_SECRET).await;
}

/// Opens the mapping form of `prefix` (listed) with its Edit button.
async fn edit(b: &Browser, prefix: &str) {
    b.click(&format!(
        "tr[data-prefix='{prefix}'] .row-actions button:first-child"
    ))
    .await;
    b.wait_until(
        "the mapping form",
        "return document.getElementById('mapping-dialog').open",
    )
    .await;
}

/// Saves the mapping form and waits for it to close.
async fn save(b: &Browser) {
    b.click("#mapping-form button[type=submit]").await;
    b.wait_until(
        "the form closed",
        "return !document.getElementById('mapping-dialog').open",
    )
    .await;
}

/// A script that is true when the badges of a mapping row's prefix cell
/// (not routed, proxy key, credential) read `want`.
fn badges_are(prefix: &str, want: &str) -> String {
    format!(
        "return [...document.querySelectorAll(\"tr[data-prefix='{prefix}'] th .badge\")]\
         .map(b => b.textContent).join(',') === '{want}'"
    )
}

/// How many audit entries of `op` the API lists.
async fn audit_count(cp: &ControlPlane, op: &str) -> usize {
    let r = cp.admin("GET", "/api/audit?limit=100", None).await;
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == op)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_a_mappings_policy_in_the_form() {
    let redis = RedisServer::start();
    let cp = control_plane(&redis, Some(&SecretsKey::generate()));
    let base = format!("http://{}", cp.addr);
    let r = cp.create("/openai", "http://127.0.0.1:9/").await;
    assert_eq!(r.status, 201, "{}", r.text());

    let b = Browser::start().await;
    b.sign_in(&base).await;
    b.wait_until("row /openai", &rows_are("/openai")).await;
    assert_eq!(b.js(&badges_are("/openai", "")).await, json!(true), "open");
    assert!(!shown(&b, "policy-warning").await);

    // Key required, with the OpenAI preset and the real key.
    edit(&b, "/openai").await;
    assert!(b
        .js("return document.getElementById('access-open').checked")
        .await
        .as_bool()
        .unwrap());
    assert!(!shown(&b, "cred-secret-fields").await);
    b.click("#access-key").await;
    b.select("#cred-preset", "openai").await;
    assert_eq!(
        b.js("const h = document.getElementById('cred-header'), v = document.getElementById('cred-template'); \
              return [h.value, v.value, h.readOnly, document.getElementById('cred-query-fields').checkVisibility()]")
            .await,
        json!(["Authorization", "Bearer {secret}", true, false])
    );
    assert_eq!(
        b.js("return document.getElementById('cred-secret').type")
            .await,
        json!("password")
    );
    // Every control of the open form is named.
    assert_eq!(b.js(UNLABELLED_CONTROLS).await, json!([]));
    assert_eq!(
        b.accessible_name("#cred-preset").await,
        "Upstream credential"
    );
    assert_eq!(b.accessible_name("#cred-secret").await, "Upstream API key");
    assert_eq!(
        b.accessible_name("#access-key").await,
        "A proxy key is required"
    );
    b.fill("#cred-secret", UPSTREAM_SECRET).await;
    b.screenshot("admin-policy-form").await;
    save(&b).await;

    // The first policy brings the warning about Go-version nodes.
    b.wait_until(
        "the first-policy warning",
        "return document.getElementById('policy-warning').checkVisibility()",
    )
    .await;
    let warning = b.text("#policy-warning p").await;
    assert!(
        warning.contains("Retire every Go-version apiproxy node"),
        "{warning}"
    );
    assert_eq!(b.role("#policy-warning").await, "alert");
    b.wait_until(
        "the row marked",
        &badges_are("/openai", "proxy key,credential …1234"),
    )
    .await;
    b.screenshot("admin-policy-warning").await;

    // The API has it, with the hint and never the secret.
    let r = cp.admin("GET", "/api/policies/openai", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains(UPSTREAM_SECRET), "{}", r.text());
    let policy = &r.json()["policy"];
    assert_eq!(policy["access"], "key", "{policy}");
    let credential = &policy["upstream_credential"];
    assert_eq!(
        credential["header"].as_str().map(str::to_ascii_lowercase),
        Some("authorization".to_owned()),
        "{policy}"
    );
    assert_eq!(credential["template"], "Bearer {secret}");
    assert_eq!(credential["secret_hint"], "…1234");

    // Reopened: the secret field is empty, the hint its placeholder.
    edit(&b, "/openai").await;
    assert_eq!(
        b.js("const s = document.getElementById('cred-secret'); \
              return [document.getElementById('access-key').checked, document.getElementById('cred-preset').value, \
                      s.value, s.placeholder, document.getElementById('cred-secret-hint').textContent]")
            .await,
        json!([
            true,
            "openai",
            "",
            "…1234",
            "Stored: …1234. Leave empty to keep it; write-only, never shown."
        ])
    );
    assert!(!b
        .js("return document.documentElement.outerHTML")
        .await
        .as_str()
        .unwrap()
        .contains(UPSTREAM_SECRET));
    // Saved unchanged: no policy write.
    save(&b).await;
    assert_eq!(audit_count(&cp, "policy_set").await, 1);
    // The warning stays through other actions, until closed.
    assert!(shown(&b, "policy-warning").await);

    // Another preset with the secret left empty keeps the stored secret.
    edit(&b, "/openai").await;
    b.select("#cred-preset", "anthropic").await;
    save(&b).await;
    assert_eq!(audit_count(&cp, "policy_set").await, 2);
    let r = cp.admin("GET", "/api/policies/openai", None).await;
    let credential = &r.json()["policy"]["upstream_credential"];
    assert_eq!(credential["header"], "x-api-key", "{}", r.text());
    assert_eq!(credential["secret_hint"], "…1234");

    // Open with no credential removes the policy.
    edit(&b, "/openai").await;
    b.click("#access-open").await;
    b.select("#cred-preset", "").await;
    save(&b).await;
    b.wait_until("the row unmarked", &badges_are("/openai", ""))
        .await;
    let r = cp.admin("GET", "/api/policies/openai", None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(b.js(STATUS_LINE).await, json!(["Saved /openai.", "polite"]));

    assert_eq!(
        b.accessible_name("#policy-warning-close").await,
        "Close this warning"
    );
    b.click("#policy-warning-close").await;
    assert!(!shown(&b, "policy-warning").await);

    // 简体中文.
    b.click("#lang-switch").await;
    edit(&b, "/openai").await;
    assert_eq!(b.text("#policy-fields legend").await, "访问策略");
    b.select("#cred-preset", "gemini_query").await;
    assert_eq!(
        b.js("return [document.getElementById('cred-query').value, document.getElementById('cred-header-fields').checkVisibility()]")
            .await,
        json!(["key", false])
    );
    assert_eq!(
        b.text("#cred-secret-hint").await,
        "只写：加密保存，之后不再显示。"
    );
}

/// A control plane without `API_PROXY_SECRETS_KEY` refuses a credential.
/// A new guarded mapping gets its policy before the mapping itself, so the
/// refusal leaves nothing written (never an open mapping that was meant
/// to be keyed): the form stays open with the API's reason beside the
/// secret, and the retry without a credential saves both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_policy_keeps_the_form_open_and_writes_nothing() {
    let redis = RedisServer::start();
    let cp = control_plane(&redis, None);
    let base = format!("http://{}", cp.addr);
    let b = Browser::start().await;
    b.sign_in(&base).await;

    fill_keyed_mapping(&b, "/gemini", "http://127.0.0.1:9/", "gemini").await;
    b.click("#mapping-form button[type=submit]").await;
    b.wait_until(
        "the policy refused",
        "return document.getElementById('cred-secret-error').textContent.includes('API_PROXY_SECRETS_KEY')",
    )
    .await;
    assert!(b
        .js("return document.getElementById('mapping-dialog').open")
        .await
        .as_bool()
        .unwrap());
    assert_eq!(b.js(FOCUSED).await, json!("cred-secret"));
    assert_eq!(
        b.js("const p = document.getElementById('prefix'); \
              return [p.readOnly, p.value, document.getElementById('cred-secret').value]")
            .await,
        json!([false, "/gemini", UPSTREAM_SECRET])
    );
    assert_eq!(
        cp.admin("GET", "/api/mappings/gemini", None).await.status,
        404
    );
    assert_eq!(
        cp.admin("GET", "/api/policies/gemini", None).await.status,
        404
    );

    // Without the credential the same form saves the policy and then the
    // mapping.
    b.select("#cred-preset", "").await;
    save(&b).await;
    let r = cp.admin("GET", "/api/policies/gemini", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["policy"]["access"], "key");
    assert_eq!(r.json()["policy"]["upstream_credential"], Value::Null);
    assert_eq!(
        cp.admin("GET", "/api/mappings/gemini", None).await.status,
        200
    );
    b.wait_until("row /gemini", &rows_are("/gemini")).await;
    assert!(shown(&b, "policy-warning").await);
    assert_eq!(b.js(STATUS_LINE).await, json!(["Saved /gemini.", "polite"]));

    // A new guarded mapping on a prefix already mapped (here in another
    // spelling), or on one without its leading `/`, is refused before
    // anything is written: the live mapping's policy stays as it is.
    let before = mappings_version(&cp).await;
    for (prefix, message) in [
        (
            "/gemini/",
            "A mapping for /gemini/ already exists: edit it instead.",
        ),
        ("penai", "The prefix must start with /."),
    ] {
        fill_keyed_mapping(&b, prefix, "http://127.0.0.1:9/", "anthropic").await;
        b.click("#mapping-form button[type=submit]").await;
        b.wait_until(
            "the prefix refused",
            &format!("return document.getElementById('prefix-error').textContent === {message:?}"),
        )
        .await;
        assert_eq!(b.js(FOCUSED).await, json!("prefix"));
        b.js("document.getElementById('mapping-dialog').close()")
            .await;
    }
    assert_eq!(mappings_version(&cp).await, before, "nothing was written");
    assert_eq!(
        cp.admin("GET", "/api/policies/penai", None).await.status,
        404
    );
    let r = cp.admin("GET", "/api/policies/gemini", None).await;
    assert_eq!(
        r.json()["policy"]["upstream_credential"],
        Value::Null,
        "{}",
        r.text()
    );
}

/// The version `GET /api/mappings` reports: every change bumps it.
async fn mappings_version(cp: &ControlPlane) -> u64 {
    let reply = cp.admin("GET", "/api/mappings", None).await;
    reply.json()["version"].as_u64().unwrap()
}

/// `GET path` through the data plane at `dp` with the proxy key `key` where
/// the OpenAI SDK puts it.
fn with_key(path: &str, key: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "proxy.test")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap()
}

/// End to end through a real data plane: the policy set in the mapping
/// form and the key made in the Keys page are what the node enforces (the
/// upstream gets the real key, never the proxy key), the node's push comes
/// back as the key's usage in the page, and disabling the key in the page
/// gets 403 at the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_in_the_console_works_through_a_data_plane_until_disabled() {
    let redis = RedisServer::start();
    let secrets = SecretsKey::generate();
    let cp = control_plane(&redis, Some(&secrets));
    let base = format!("http://{}", cp.addr);
    let dp = DataPlane::start_redis(
        &redis.url(),
        &[
            ("API_PROXY_CONTROLPLANE_URL", &base),
            ("API_PROXY_NODE_TOKEN", NODE_TOKEN),
            ("API_PROXY_NODE_ID", "dp-keys"),
            ("API_PROXY_STATS_INTERVAL", "250ms"),
            ("API_PROXY_SECRETS_KEY", &secrets),
        ],
    );
    let up = upstream::http(echo_handler()).await;
    let b = Browser::start().await;
    b.sign_in(&base).await;

    // The mapping and its policy, in one form.
    fill_keyed_mapping(&b, "/echo", &up.url(), "openai").await;
    save(&b).await;
    dp.wait_status("/echo/v1/models", 401).await;

    // The key, in the Keys page, used as the OpenAI SDK sends it.
    b.click("nav a[href='/keys']").await;
    let (secret, id) = create_key(&b, "sdk-client", "/echo").await;
    let reply = call(dp.addr, with_key("/echo/v1/models", &secret)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(
        seen["headers"]["authorization"],
        json!([format!("Bearer {UPSTREAM_SECRET}")]),
        "{seen}"
    );
    assert!(!reply.text().contains(&secret), "{seen}");

    // The node's push is the key's usage in the page.
    let usage_row = "const r = document.querySelector(\"#usage tr[data-prefix='/echo']\"); \
                     return r ? [...r.cells].map(c => c.textContent) : null";
    let cells = eventually("the key's usage shown", Duration::from_secs(10), || async {
        b.click(&format!(
            "#keys tr[data-key-id='{id}'] button[data-action=usage]"
        ))
        .await;
        let cells = b.js(usage_row).await;
        (cells[1] == "1").then_some(cells)
    })
    .await;
    assert_eq!(cells[2], "0", "{cells}");
    assert_ne!(cells[4], "0", "bytes out: {cells}");
    b.screenshot("keys-usage-end-to-end").await;

    // Disabled in the page: the node refuses it.
    b.click(&format!(
        "#keys tr[data-key-id='{id}'] button[data-action=toggle]"
    ))
    .await;
    eventually("403 once disabled", Duration::from_secs(5), || async {
        let reply = call(dp.addr, with_key("/echo/v1/models", &secret)).await;
        (reply.status == 403).then_some(())
    })
    .await;
    let reply = call(dp.addr, with_key("/echo/v1/models", &secret)).await;
    assert_eq!(
        reply.json()["error"]["type"],
        "forbidden",
        "{}",
        reply.text()
    );
}

/// The expiry is the operator's local time: a past one gets the API's
/// message beside the field; a future one is what the API stores and the
/// list shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_expiry_is_set_in_local_time() {
    let redis = RedisServer::start();
    let cp = control_plane(&redis, None);
    let base = format!("http://{}", cp.addr);
    let b = Browser::start().await;
    b.sign_in(&base).await;
    b.goto(&format!("{base}/keys")).await;
    b.find("#keys tbody td.empty").await;

    // The field's own widget is typed into by segments; its value is set
    // as a picker sets it.
    let set_expiry =
        |when: &'static str| format!("document.getElementById('key-expiry').value = '{when}'");
    b.fill("#key-name", "old").await;
    b.js(&set_expiry("2001-02-03T04:05")).await;
    b.click("#key-form button[type=submit]").await;
    b.wait_until(
        "expiry error",
        "return document.getElementById('key-expiry-error').textContent.includes('`expires_at`')",
    )
    .await;
    assert_eq!(b.js(FOCUSED).await, json!("key-expiry"));
    assert_eq!(
        cp.admin("GET", "/api/keys", None).await.json()["keys"],
        json!([])
    );

    b.js(&set_expiry("2099-01-02T03:04")).await;
    b.click("#key-form button[type=submit]").await;
    b.find("#keys tbody tr[data-key-id]").await;
    let want = b
        .js("return new Date('2099-01-02T03:04').getTime() / 1000")
        .await;
    let keys = cp.admin("GET", "/api/keys", None).await.json()["keys"].clone();
    assert_eq!(keys[0]["expires_at"], want, "{keys}");
    assert_eq!(keys[0]["prefixes"], Value::Null, "all mappings: {keys}");
    let id = keys[0]["id"].as_str().unwrap();
    let row = b.js(&key_row(id)).await;
    assert_eq!(row[2], "all", "{row}");
    assert!(
        row[4].as_str().unwrap().contains("2099"),
        "the expiry shown: {row}"
    );
}
