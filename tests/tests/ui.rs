//! The console in a real headless Chromium, against the real control plane,
//! two real data planes and a real Redis: what an operator clicks must
//! reach the traffic, and what the traffic does must reach the dashboard.
//! Screenshots land in `target/ui-screenshots/`.

use std::time::Duration;

use apiproxy_shared::{FailedRequest, Gauges, StatsBatch};
use apiproxy_tests::browser::{rows_are, Browser, STATUS_LINE, UNLABELLED_CONTROLS};
use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::{admin_call, ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::redis::{hset_plain, RedisServer};
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane};
use fantoccini::key::Key;
use serde_json::json;

const NODE_TOKEN: &str = "ui-node-token-0123456789abcdef";

struct Fleet {
    _redis: RedisServer,
    cp: ControlPlane,
    nodes: [DataPlane; 2],
}

fn fleet() -> Fleet {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[("API_PROXY_NODE_TOKEN", NODE_TOKEN)]);
    let url = format!("http://{}", cp.addr);
    let node = |id: &str| {
        DataPlane::start_redis(
            &redis.url(),
            &[
                ("API_PROXY_CONTROLPLANE_URL", &url),
                ("API_PROXY_NODE_TOKEN", NODE_TOKEN),
                ("API_PROXY_NODE_ID", id),
                ("API_PROXY_STATS_INTERVAL", "250ms"),
            ],
        )
    };
    let nodes = [node("dp-east"), node("dp-west")];
    Fleet {
        _redis: redis,
        cp,
        nodes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_mappings_in_the_browser() {
    let f = fleet();
    let up = upstream::http(echo_handler()).await;
    let b = Browser::start().await;
    let base = format!("http://{}", f.cp.addr);

    // Sign-in: a wrong token is refused with a visible error.
    b.goto(&format!("{base}/admin")).await;
    b.fill("#token", "not-the-admin-token").await;
    b.click("#login-form button[type=submit]").await;
    b.wait_until(
        "wrong-token error",
        "return document.getElementById('login-error').textContent === 'Wrong token.'",
    )
    .await;
    assert!(
        b.js("return document.getElementById('app-view').hidden")
            .await
            == true
    );
    b.screenshot("admin-login-error").await;

    b.submit_admin_token().await;
    assert_eq!(b.text("#mappings tbody td.empty").await, "No mappings yet.");

    // The session survives a reload.
    b.client.refresh().await.unwrap();
    b.wait_until(
        "still signed in",
        "return !document.getElementById('app-view').hidden",
    )
    .await;

    // Add: an invalid prefix shows the API's message next to the field and
    // keeps what was typed.
    b.click("#add").await;
    b.fill("#prefix", "echo").await;
    b.fill("#target", &up.url()).await;
    b.click("#mapping-form button[type=submit]").await;
    b.wait_until(
        "prefix error",
        "return document.getElementById('prefix-error').textContent.startsWith('prefix')",
    )
    .await;
    assert!(
        b.js("return document.getElementById('mapping-dialog').open")
            .await
            == true
    );
    assert_eq!(
        b.find("#target")
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap(),
        up.url()
    );
    // Fixed, it saves and both data planes route it.
    b.fill("#prefix", "/echo").await;
    b.click("#mapping-form button[type=submit]").await;
    b.wait_until("row /echo", &rows_are("/echo")).await;
    for n in &f.nodes {
        n.wait_status("/echo/x", 200).await;
    }

    // Edit the target; the data planes follow.
    b.click("tr[data-prefix='/echo'] .row-actions button:first-child")
        .await;
    b.fill("#target", &format!("{}/v2", up.url())).await;
    b.click("#mapping-form button[type=submit]").await;
    for n in &f.nodes {
        eventually("edit routed", Duration::from_secs(3), || async {
            (get_reply(n.addr, "/echo/x").await.json()["uri"] == "/v2/x").then_some(())
        })
        .await;
    }

    // Import replaces the whole set, after showing the diff.
    b.click("#import").await;
    let import = format!(
        r#"{{"mappings": {{"/echo": "{0}", "/other": "{0}", "/third": "{0}"}}}}"#,
        up.url()
    );
    b.fill("#import-text", &import).await;
    b.click("#import-preview").await;
    b.wait_until(
        "diff shown",
        "return document.querySelector('#import-diff .added') !== null \
         && document.querySelector('#import-diff .changed') !== null",
    )
    .await;
    let diff = b.text("#import-diff").await;
    assert!(diff.contains("/other") && diff.contains("/third"), "{diff}");
    b.screenshot("admin-import-diff").await;
    b.click("#import-apply").await;
    b.wait_until("imported rows", &rows_are("/echo,/other,/third"))
        .await;
    for n in &f.nodes {
        n.wait_status("/third/x", 200).await;
    }

    // Delete one, with confirmation.
    b.click("tr[data-prefix='/other'] button.danger").await;
    b.wait_until(
        "confirm dialog",
        "return document.getElementById('confirm-dialog').open",
    )
    .await;
    b.click("#confirm-ok").await;
    b.wait_until("row gone", &rows_are("/echo,/third")).await;
    for n in &f.nodes {
        n.wait_status("/other/x", 404).await;
    }

    // Bulk delete of a selection.
    b.click("tr[data-prefix='/third'] input[type=checkbox]")
        .await;
    assert_eq!(b.text("#bulk-delete").await, "Delete selected (1)");
    b.click("#bulk-delete").await;
    b.click("#confirm-ok").await;
    b.wait_until("bulk deleted", &rows_are("/echo")).await;

    // The audit log tells who changed what.
    let audit = b.text("#audit tbody").await;
    for op in ["create", "update", "delete"] {
        assert!(audit.contains(op), "{audit}");
    }
    assert!(audit.contains("127.0.0.1"), "{audit}");
    b.screenshot("admin").await;

    // Sign out ends the session.
    b.click("#logout").await;
    b.wait_until(
        "signed out",
        "return !document.getElementById('login-view').hidden",
    )
    .await;
    b.client.refresh().await.unwrap();
    b.wait_until(
        "login after reload",
        "return !document.getElementById('login-view').hidden",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_traffic_and_the_fleet() {
    let f = fleet();
    let up = upstream::http(echo_handler()).await;
    let r =
        f.cp.admin(
            "POST",
            "/api/mappings",
            Some(serde_json::json!({"prefix": "/openai", "target": up.url()})),
        )
        .await;
    assert_eq!(r.status, 201);
    for n in &f.nodes {
        n.wait_status("/openai/v1/models", 200).await;
    }
    // Known traffic: 40 through each node (the waits above add a few).
    for n in &f.nodes {
        for _ in 0..40 {
            assert_eq!(get_reply(n.addr, "/openai/v1/models").await.status, 200);
        }
    }
    let served: f64 = {
        let mut sum = 0.0;
        for n in &f.nodes {
            sum += n
                .metric(r#"apiproxy_requests_total{prefix="/openai",status_class="2xx"}"#)
                .await;
        }
        sum
    };
    assert!(served >= 80.0);

    let b = Browser::start().await;
    let base = format!("http://{}", f.cp.addr);
    // Sign in first: the node table needs a session.
    b.sign_in(&base).await;

    b.goto(&format!("{base}/")).await;
    // The dashboard refreshes itself until every request is counted.
    let want = served as u64;
    b.wait_until(
        "total counted",
        &format!(
            "return document.getElementById('card-total').textContent.replace(/[^0-9]/g, '') === '{want}'"
        ),
    )
    .await;
    b.wait_until(
        "both nodes listed",
        "return document.querySelectorAll('#nodes tbody tr[data-node]').length === 2",
    )
    .await;
    for node in ["dp-east", "dp-west"] {
        let state = b
            .text(&format!("#nodes tr[data-node='{node}'] .badge"))
            .await;
        assert_eq!(state, "up", "{node}");
    }
    let endpoints = b.text("#endpoints tbody").await;
    assert!(endpoints.contains("/openai"), "{endpoints}");
    assert!(b
        .text("#examples")
        .await
        .contains("/openai/v1/chat/completions"));
    b.wait_until(
        "chart drawn",
        "return document.querySelectorAll('#chart-minute rect.bar').length > 0",
    )
    .await;
    assert!(
        b.js("return document.getElementById('banner').hidden")
            .await
            == true,
        "the fleet is converged"
    );
    b.screenshot("dashboard").await;

    // 简体中文.
    b.click("#lang-switch").await;
    assert_eq!(b.text("h1").await, "apiproxy 仪表盘");
    assert_eq!(
        b.js("return document.documentElement.lang").await,
        serde_json::json!("zh-CN")
    );
    b.screenshot("dashboard-zh").await;
    b.click("#lang-switch").await;

    // Phone width: nothing overflows the viewport sideways.
    b.fits_a_phone("dashboard-phone").await;

    // Keyboard: a real Tab press from the top of the page lands on the
    // skip link, and every control has an accessible name.
    b.goto(&format!("{base}/")).await;
    b.press(Key::Tab).await;
    assert_eq!(
        b.js("return document.activeElement.className").await,
        serde_json::json!("skip")
    );
    // On each page once its content is drawn (signed in, so the admin
    // page shows the mapping table).
    for (page, drawn) in [
        ("/", "#endpoints tbody button"),
        ("/admin", "#mappings tbody tr[data-prefix] button"),
    ] {
        b.goto(&format!("{base}{page}")).await;
        b.find(drawn).await;
        assert_eq!(
            b.js(UNLABELLED_CONTROLS).await,
            serde_json::json!([]),
            "{page}: controls without an accessible name"
        );
    }
}

/// An entry written straight into Redis that the data plane skips (the Go
/// version accepted `/a?b` and `ftp://`) is listed with a "not routed"
/// badge whose tooltip gives the reason, also shown under its target, in
/// both languages; an entry that routes has neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_marks_entries_that_do_not_route() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let keys = apiproxy_shared::RedisKeys::default();
    for (prefix, target) in [
        ("/ok", "http://ok.test"),
        ("/a?b", "http://x.test"),
        ("/ftp", "ftp://x.test/p?key=SECRET"),
    ] {
        hset_plain(&mut conn, &keys, prefix, target).await;
    }
    let cp = ControlPlane::start(&redis.url(), &[]);
    let b = Browser::start().await;
    b.goto(&format!("http://{}/admin", cp.addr)).await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.click("#login-form button[type=submit]").await;
    b.wait_until("the hash's entries listed", &rows_are("/a?b,/ftp,/ok"))
        .await;
    // Per row: the badge's text and tooltip, and the reason shown.
    let marks = || {
        b.js("return Object.fromEntries([...document.querySelectorAll('#mappings tbody tr[data-prefix]')]\
              .map(r => { const badge = r.querySelector('.badge.not-routed'); const why = r.querySelector('.reason');\
                return [r.dataset.prefix, [badge && badge.textContent, badge && badge.title, why && why.textContent]]; }))")
    };
    assert_eq!(
        marks().await,
        json!({
            "/a?b": ["not routed", "The proxy skips this entry: prefix: must not contain ?",
                     "prefix: must not contain ?"],
            "/ftp": ["not routed",
                     "The proxy skips this entry: target: must be an absolute http:// or https:// URL",
                     "target: must be an absolute http:// or https:// URL"],
            "/ok": [null, null, null],
        })
    );
    b.screenshot("admin-not-routed").await;

    b.click("#lang-switch").await;
    assert_eq!(
        marks().await["/a?b"],
        json!([
            "未路由",
            "代理跳过此条目：prefix: must not contain ?",
            "prefix: must not contain ?"
        ])
    );
    assert_eq!(marks().await["/ok"], json!([null, null, null]));
    b.screenshot("admin-not-routed-zh").await;

    // The dashboard lists endpoints with their proxy URL: only the entry
    // that routes (the session is the admin page's).
    b.goto(&format!("http://{}/", cp.addr)).await;
    b.wait_until(
        "the dashboard's endpoints listed",
        "return [...document.querySelectorAll('#endpoints tbody th')]\
         .map(h => h.textContent).join(',') === '/ok'",
    )
    .await;
}

/// Adds `prefix` (the only mapping) with the Add dialog.
async fn add_through_the_form(b: &Browser, prefix: &str) {
    b.click("#add").await;
    b.fill("#prefix", prefix).await;
    b.fill("#target", "http://127.0.0.1:9/").await;
    b.click("#mapping-form button[type=submit]").await;
    b.wait_until(&format!("row {prefix}"), &rows_are(prefix))
        .await;
}

/// After Save and after Delete the console says so, and keeps saying it
/// (well past the reload of the table that used to wipe it), in a region
/// a screen reader announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_and_deletes_are_confirmed_until_the_next_action() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let base = format!("http://{}", cp.addr);
    let b = Browser::start().await;
    b.sign_in(&base).await;

    add_through_the_form(&b, "/x").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.js(STATUS_LINE).await, json!(["Saved /x.", "polite"]));
    b.screenshot("admin-saved").await;

    b.click("tr[data-prefix='/x'] button.danger").await;
    b.click("#confirm-ok").await;
    b.wait_until("row gone", &rows_are("")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.js(STATUS_LINE).await, json!(["Deleted /x.", "polite"]));

    // 中文 too.
    b.click("#lang-switch").await;
    add_through_the_form(&b, "/y").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.js(STATUS_LINE).await, json!(["已保存 /y。", "polite"]));
}

/// The language button's accessible name holds the text it shows (a
/// voice-control user says what they see); the dashboard's cards pair each
/// label with its value for a screen reader; both pages link an icon that
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_name_their_controls_and_link_their_icon() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let base = format!("http://{}", cp.addr);
    let b = Browser::start().await;
    for page in ["/", "/admin"] {
        b.goto(&format!("{base}{page}")).await;
        for _ in 0..2 {
            let visible = b.text("#lang-switch").await;
            let name = b.accessible_name("#lang-switch").await;
            assert!(!visible.is_empty(), "{page}");
            assert!(
                name.contains(&visible),
                "{page}: {name:?} lacks {visible:?}"
            );
            assert!(
                name.len() > visible.len(),
                "{page}: {name:?} says where it goes"
            );
            b.click("#lang-switch").await;
        }
        let icon = b
            .js("const link = document.querySelector('link[rel~=icon]'); \
                 if (!link) return null; \
                 return fetch(link.href).then(r => [r.status, r.headers.get('content-type')])")
            .await;
        assert_eq!(icon, json!([200, "image/x-icon"]), "{page}");
    }

    b.goto(&format!("{base}/")).await;
    let cards = b
        .js("return [...document.querySelectorAll('.card-value')].map(v => v.id)")
        .await;
    assert_eq!(cards.as_array().unwrap().len(), 6, "{cards}");
    for id in cards.as_array().unwrap() {
        let id = id.as_str().unwrap();
        assert_eq!(b.role(&format!("#{id}")).await, "definition", "{id}");
        let label = b
            .js(&format!(
                "const v = document.getElementById('{id}'); \
                 const dt = v.previousElementSibling; \
                 return dt && dt.tagName === 'DT' && v.closest('dl') !== null ? dt.textContent : null"
            ))
            .await;
        assert!(
            label.as_str().is_some_and(|l| !l.is_empty()),
            "{id}: {label}"
        );
    }
    assert_eq!(b.role("#card-total").await, "definition");
}

/// A stats batch from `node` carrying only failed requests, as a data
/// plane pushes them: `(ms after t0, prefix, status, error type)`.
fn failures_batch(node: &str, t0: u64, failed: &[(u64, &str, u16, Option<&str>)]) -> StatsBatch {
    StatsBatch {
        node_id: node.into(),
        boot_id: "boot".into(),
        seq: 1,
        sent_at: t0 / 1000,
        interval_s: 1.0,
        config_version: 0,
        config_hash: "h".into(),
        gauges: Gauges::default(),
        unmatched: 0,
        endpoints: Default::default(),
        keys: Vec::new(),
        failed: failed
            .iter()
            .map(|&(after, prefix, status, error_type)| FailedRequest {
                time: t0 + after,
                request_id: format!("{node}-{after}"),
                prefix: prefix.into(),
                status,
                error_type: error_type.map(str::to_owned),
                duration_ms: after / 10,
            })
            .collect(),
    }
}

/// Request ids of the failure table's rows, top to bottom.
const FAILURE_ROWS: &str =
    "return [...document.querySelectorAll('#failures tbody tr[data-request-id]')]\
    .map(r => r.dataset.requestId).join(',')";

/// Failures pushed by two nodes show in the dashboard's Recent failures,
/// newest first across both, each with its request id to copy; the
/// endpoint filter narrows them. Without a session (the stats being
/// public) the table asks to sign in instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_the_fleets_recent_failures() {
    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[("API_PROXY_NODE_TOKEN", NODE_TOKEN)]);
    let base = format!("http://{}", cp.addr);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 60_000;
    // Pushed east first, then west: the table interleaves them by time.
    for batch in [
        failures_batch(
            "dp-east",
            t0,
            &[
                (1_000, "/openai", 502, Some("upstream_connect")),
                (3_000, "/claude", 504, Some("upstream_timeout")),
            ],
        ),
        failures_batch(
            "dp-west",
            t0,
            &[
                (2_000, "/openai", 500, None),
                (4_000, "/openai", 499, Some("cancelled")),
            ],
        ),
    ] {
        let r = admin_call(
            cp.addr,
            NODE_TOKEN,
            "POST",
            "/internal/stats",
            Some(serde_json::to_value(&batch).unwrap()),
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }

    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    b.wait_until(
        "the sign-in hint",
        "return document.querySelector('#failures tbody').textContent \
         === 'Sign in to the admin console to see the recent failures.'",
    )
    .await;
    assert_eq!(b.text("#status").await, "", "not an error");

    b.sign_in(&base).await;
    b.goto(&format!("{base}/")).await;
    let all = "dp-west-4000,dp-east-3000,dp-west-2000,dp-east-1000";
    b.wait_until(
        "all four failures, newest first",
        &format!("{FAILURE_ROWS} === '{all}'"),
    )
    .await;
    let cells = b
        .js(
            "return [...document.querySelectorAll('#failures tbody tr')]\
             .map(r => [...r.cells].map(c => c.textContent))",
        )
        .await;
    let first = &cells[0];
    assert_eq!(first[1], "dp-west", "{cells}");
    assert_eq!(first[2], "/openai");
    assert_eq!(first[3], "499");
    assert_eq!(first[4], "cancelled");
    assert_eq!(first[5], "400 ms");
    assert_eq!(first[6], "dp-west-4000 Copy");
    assert_eq!(cells[2][4], "–", "an upstream's own 500 has no error type");
    assert_eq!(
        b.accessible_name("#failures tr[data-request-id='dp-west-4000'] button")
            .await,
        "Copy dp-west-4000"
    );
    b.js("document.getElementById('failures-title').scrollIntoView()")
        .await;
    b.screenshot("dashboard-failures").await;

    b.select("#failure-filter", "/openai").await;
    let openai = "dp-west-4000,dp-west-2000,dp-east-1000";
    b.wait_until("filtered", &format!("{FAILURE_ROWS} === '{openai}'"))
        .await;
    // The next refreshes keep the filter, and the focus of a keyboard
    // user on a Copy button (the rows are not rebuilt when nothing changed).
    b.js("document.querySelector(\"#failures tr[data-request-id='dp-west-2000'] button\").focus()")
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(b.js(FAILURE_ROWS).await, json!(openai));
    assert_eq!(
        b.js("return document.activeElement.closest('tr')?.dataset.requestId ?? null")
            .await,
        json!("dp-west-2000"),
        "the focus stayed on the Copy button across refreshes"
    );
    // Its filter is named apart from the charts' endpoint filter.
    assert_ne!(
        b.accessible_name("#failure-filter").await,
        b.accessible_name("#endpoint-filter").await
    );
    b.select("#failure-filter", "/claude").await;
    b.wait_until(
        "other filter",
        &format!("{FAILURE_ROWS} === 'dp-east-3000'"),
    )
    .await;

    b.click("#lang-switch").await;
    assert_eq!(b.text("#failures-title").await, "最近的失败请求");
}

/// The same end to end: requests that really fail on the two real nodes
/// (no mapping on one, a dead upstream on the other) show in the table
/// under the ids their clients got back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_failures_on_two_nodes_reach_the_table() {
    let f = fleet();
    let base = format!("http://{}", f.cp.addr);
    let dead = format!("http://{}", apiproxy_tests::refusing_addr());
    let r =
        f.cp.admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/dead", "target": dead})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let [east, west] = &f.nodes;
    east.wait_status("/nowhere", 404).await;
    west.wait_status("/dead/x", 502).await;
    let id = |reply: apiproxy_tests::client::Reply| {
        reply.headers["x-request-id"].to_str().unwrap().to_owned()
    };
    let east_id = id(get_reply(east.addr, "/nowhere").await);
    let west_id = id(get_reply(west.addr, "/dead/x").await);

    let b = Browser::start().await;
    b.sign_in(&base).await;
    b.goto(&format!("{base}/")).await;
    let row = |id: &str| {
        format!(
            "const r = document.querySelector(`#failures tr[data-request-id='{id}']`); \
             return r ? [...r.cells].map(c => c.textContent).slice(1, 5) : null"
        )
    };
    for (id, expected) in [
        (
            &east_id,
            json!(["dp-east", "no mapping", "404", "no_mapping"]),
        ),
        (
            &west_id,
            json!(["dp-west", "/dead", "502", "upstream_connect"]),
        ),
    ] {
        b.wait_until(
            &format!("row {id}"),
            &format!(
                "const got = (() => {{ {} }})(); return got !== null",
                row(id)
            ),
        )
        .await;
        assert_eq!(b.js(&row(id)).await, expected, "{id}");
    }
}
