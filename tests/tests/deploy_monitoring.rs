//! What monitoring reads, served for real: every probe, health-check and
//! scrape path that the Kubernetes manifests, `deploy/prometheus/` and the
//! image's health-check program name answers 200 on a running process at
//! the binary's default port, and every metric and label the Grafana
//! dashboard (`deploy/grafana/`) queries is exported by a running data
//! plane.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use apiproxy_tests::client::{get, get_reply};
use apiproxy_tests::controlplane::ControlPlane;
use apiproxy_tests::deploy::{
    accepted, compose, container_port, k8s_resources, read, run_healthcheck, s, yaml,
};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, refusing_addr, DataPlane};
use serde_json::{json, Value};

/// Every probe, health-check and scrape path the files name, with the port
/// they use, answers 200 on a running process; every port is the binary's
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_and_scrape_path_is_served() {
    let dp_port = accepted("apiproxy-dataplane").default_port("API_PROXY_METRICS_LISTEN");
    let cp_port = accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN");
    // (where, port, path)
    let mut wanted: Vec<(String, u16, String)> = vec![];

    let resources = k8s_resources();
    for d in resources.values().filter(|r| r["kind"] == "Deployment") {
        let name = s(&d["metadata"]["name"]);
        let pod = &d["spec"]["template"];
        for c in pod["spec"]["containers"].as_array().unwrap() {
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let get = &c[probe]["httpGet"];
                if get.is_object() {
                    wanted.push((
                        format!("{name} {probe}"),
                        container_port(c, &get["port"]),
                        s(&get["path"]).to_owned(),
                    ));
                }
            }
        }
        let a = &pod["metadata"]["annotations"];
        wanted.push((
            format!("{name} prometheus.io annotations"),
            s(&a["prometheus.io/port"]).parse().unwrap(),
            s(&a["prometheus.io/path"]).to_owned(),
        ));
    }
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        let path = job["metrics_path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_owned();
        let job_name = s(&job["job_name"]);
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            for host in sd["names"].as_array().unwrap() {
                assert!(
                    services.contains_key(s(host)),
                    "{job_name}: {host} is no compose service"
                );
            }
            assert_eq!(sd["type"], "A");
            wanted.push((
                format!("prometheus job {job_name}"),
                sd["port"].as_u64().unwrap() as u16,
                path.clone(),
            ));
        }
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for target in sc["targets"].as_array().unwrap() {
                let (host, port) = s(target).rsplit_once(':').unwrap();
                assert!(
                    services.contains_key(host),
                    "{job_name}: {host} is no compose service"
                );
                wanted.push((
                    format!("prometheus job {job_name}"),
                    port.parse().unwrap(),
                    path.clone(),
                ));
            }
        }
    }
    // Every data plane is scraped through DNS service discovery.
    assert!(prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["dns_sd_configs"][0]["names"] == json!(["dataplane"])
            && j["dns_sd_configs"][0]["port"] == dp_port));
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let prom_url = s(&datasource["datasources"][0]["url"]);
    assert!(services.contains_key(
        prom_url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap()
    ));
    assert!(read("docker-compose.yml")
        .contains("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml"));

    let redis = RedisServer::start();
    let cp = ControlPlane::start(&redis.url(), &[]);
    let dp = DataPlane::start("{}", &[]);
    for (place, port, path) in &wanted {
        let addr = if *port == dp_port {
            dp.metrics_addr
        } else {
            assert_eq!(
                *port, cp_port,
                "{place}: port {port} is neither binary's default"
            );
            cp.addr
        };
        let url = format!("http://{addr}{path}");
        eventually(
            &format!("{place}: GET {path} -> 200"),
            Duration::from_secs(10),
            || async { (get(&url).await.0 == 200).then_some(()) },
        )
        .await;
        if path == "/metrics" {
            let body = get(&url).await.1;
            assert!(
                body.contains("# TYPE process_resident_memory_bytes"),
                "{place}: not Prometheus text"
            );
        }
    }
    assert!(wanted.len() >= 8, "{wanted:?}");

    // The image's HEALTHCHECK program: each role probes its binary's
    // default port, read from the same variable; a URL works too; a dead
    // port or a non-200 answer is unhealthy.
    let dp_listen = [("API_PROXY_METRICS_LISTEN", dp.metrics_addr.to_string())];
    assert_eq!(run_healthcheck(&["dataplane"], &dp_listen), 0);
    assert_eq!(run_healthcheck(&["dataplane", "/readyz"], &dp_listen), 0);
    assert_eq!(
        run_healthcheck(
            &["controlplane"],
            &[("API_PROXY_ADMIN_LISTEN", cp.addr.to_string())]
        ),
        0
    );
    assert_eq!(
        run_healthcheck(&[&format!("http://{}/readyz", cp.addr)], &[]),
        0
    );
    assert_eq!(
        run_healthcheck(&[&format!("http://{}/nope", dp.metrics_addr)], &[]),
        1
    );
    let closed = refusing_addr().to_string();
    assert_eq!(
        run_healthcheck(&["dataplane"], &[("API_PROXY_METRICS_LISTEN", closed)]),
        1
    );
    // The role defaults are the binaries' defaults.
    let source = read("deploy/healthcheck.rs");
    assert!(source.contains(&format!(
        "(\"API_PROXY_METRICS_LISTEN\", \"0.0.0.0:{dp_port}\")"
    )));
    assert!(source.contains(&format!(
        "(\"API_PROXY_ADMIN_LISTEN\", \"0.0.0.0:{cp_port}\")"
    )));
}

/// A PromQL expression's metric selectors (name, label names) and grouping
/// labels (`by`, `without`, `on`, `ignoring`).
fn promql_refs(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut grouping) = (vec![], vec![]);
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // `{a="x", b=~"y"}` → label names; returns the index after `}`.
    let matchers = |mut i: usize, out: &mut Vec<String>| {
        i += 1;
        let mut label = String::new();
        while i < chars.len() && chars[i] != '}' {
            let c = chars[i];
            if c == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            } else if c.is_ascii_alphanumeric() || c == '_' {
                label.push(c);
            } else if !label.is_empty() {
                out.push(std::mem::take(&mut label));
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                if next < chars.len() && chars[next] == '(' {
                    let close = next + chars[next..].iter().position(|&c| c == ')').unwrap();
                    grouping.extend(
                        chars[next + 1..close]
                            .iter()
                            .collect::<String>()
                            .split(',')
                            .map(|l| l.trim().to_owned())
                            .filter(|l| !l.is_empty()),
                    );
                    i = close + 1;
                }
            } else if word.starts_with("apiproxy_") || word.starts_with("process_") {
                let mut labels = vec![];
                if next < chars.len() && chars[next] == '{' {
                    i = matchers(next, &mut labels);
                }
                metrics.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    (metrics, grouping)
}

/// Every PromQL expression of a dashboard: panel targets (rows included)
/// and template-variable queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn panels<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = vec![];
    panels(&dashboard["panels"], &mut all);
    let mut exprs: Vec<String> = all
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| s(&t["expr"]).to_owned())
        .collect();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = &var["query"];
            let q = q
                .as_str()
                .or_else(|| q["query"].as_str())
                .expect("variable query");
            // label_values(metric{…}, label): the selector is PromQL, and
            // the label is grouped on.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let (selector, label) = inner
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            exprs.push(format!("max by ({}) ({selector})", label.trim()));
        }
    }
    exprs
}

/// Samples of a scrape: name → label name → values.
fn scrape_index(body: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut index: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, _value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let entry = index.entry(name.to_owned()).or_default();
        let mut rest = labels;
        while let Some((k, v)) = rest.split_once("=\"") {
            let mut end = 0;
            let bytes = v.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            entry
                .entry(k.trim_start_matches(',').to_owned())
                .or_default()
                .insert(v[..end].to_owned());
            rest = v.get(end + 1..).unwrap_or("");
        }
    }
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_metrics_a_data_plane_exports() {
    // A data plane with one working mapping and one whose upstream is down;
    // one request each, and one unmatched, so every per-prefix series exists.
    let up = upstream::http(echo_handler()).await;
    let down = format!("http://{}", refusing_addr());
    let dp = DataPlane::start(&json!({"/svc": up.url(), "/down": down}).to_string(), &[]);
    assert_eq!(get_reply(dp.addr, "/svc/x").await.status, 200);
    assert_eq!(get_reply(dp.addr, "/down/x").await.status, 502);
    assert_eq!(get_reply(dp.addr, "/nothing").await.status, 404);
    let body = eventually("requests counted", Duration::from_secs(5), || async {
        let body = get(&format!("http://{}/metrics", dp.metrics_addr)).await.1;
        body.contains("apiproxy_requests_total{prefix=\"/svc\",status_class=\"2xx\"} 1")
            .then_some(body)
    })
    .await;
    let index = scrape_index(&body);

    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/dashboards/apiproxy.json"))
        .expect("dashboard JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let (metrics, grouping) = promql_refs(expr);
        assert!(!metrics.is_empty(), "no apiproxy metric in {expr}");
        let mut labels_here: BTreeSet<String> = ["instance", "job"]
            .iter()
            .map(|l| (*l).to_owned())
            .collect();
        for (name, labels) in &metrics {
            let series = index.get(name).unwrap_or_else(|| {
                panic!(
                    "{name} (in {expr}) is not exported by a running data plane; it exports: {:?}",
                    index.keys().collect::<Vec<_>>()
                )
            });
            for label in labels {
                assert!(
                    series.contains_key(label) || label == "instance" || label == "job",
                    "{name} has no label {label} (in {expr})"
                );
            }
            labels_here.extend(series.keys().cloned());
            used.insert(name.clone());
        }
        for label in &grouping {
            assert!(
                labels_here.contains(label),
                "grouping by {label} in {expr}: no such label"
            );
        }
        // Label values the queries match literally exist.
        for (label, value) in [("status_class", "5xx"), ("result", "error")] {
            if expr.contains(&format!("{label}=\"{value}\"")) {
                assert!(
                    index
                        .values()
                        .any(|l| l.get(label).is_some_and(|v| v.contains(value))),
                    "{label}={value}"
                );
            }
        }
    }

    // What the issue asks the dashboard to show.
    let all = exprs.join("\n");
    assert!(
        all.contains("sum by (prefix) (rate(apiproxy_requests_total"),
        "requests/s per prefix"
    );
    assert!(all.contains("status_class=\"5xx\""), "error rate");
    for histogram in [
        "apiproxy_request_duration_seconds",
        "apiproxy_time_to_first_byte_seconds",
    ] {
        for q in ["0.5", "0.99"] {
            assert!(
                all.contains(&format!(
                    "histogram_quantile({q}, sum by (le, prefix) (rate({histogram}_bucket"
                )),
                "p{q} of {histogram}"
            );
        }
    }
    for gauge in ["apiproxy_inflight_requests", "apiproxy_config_version"] {
        assert!(used.contains(gauge), "{gauge} not shown");
    }
    assert!(
        all.contains("by (instance) (apiproxy_config_version"),
        "config version per node"
    );

    // Panels use the dashboard's data-source variable; ids are unique.
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }

    // Provisioning: the provider reads where compose mounts the dashboards.
    let provider = yaml("deploy/grafana/provisioning/dashboards/apiproxy.yaml");
    let path = s(&provider["providers"][0]["options"]["path"]);
    assert!(read("docker-compose.yml").contains(&format!("./deploy/grafana/dashboards:{path}")));
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(datasource["datasources"][0]["type"], "prometheus");
}
