//! `docker-compose.yml` against the real binaries: its topology, every
//! setting it gives an apiproxy service is one the binary reads, and those
//! settings boot the real binaries against a Redis configured as compose
//! configures it. Docker cannot run here, so what it would run is checked
//! piece by piece (see `apiproxy_tests::deploy`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use apiproxy_tests::client::get;
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::dataplane::binary;
use apiproxy_tests::deploy::{
    accepted, as_refs, assert_accepted, binary_of, compose, duration, read, repo, run,
    run_healthcheck, s, NODE_TOKEN, PROXY_PORT,
};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::upstream::{self, echo_handler};
use apiproxy_tests::{eventually, DataPlane, TempDir};
use serde_json::{json, Value};

/// Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`. Unset variables with
/// no default resolve to "" (compose warns); a `?` form fails.
fn interpolate(text: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or("unclosed ${")?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let name_len = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_len);
            let value = vars.get(name).map(String::as_str);
            let set = value.is_some_and(|v| !v.is_empty());
            let resolved = match op {
                "" => value.unwrap_or("").to_owned(),
                _ if op.starts_with(":-") => if set { value.unwrap() } else { &op[2..] }.to_owned(),
                _ if op.starts_with('-') => value.unwrap_or(&op[1..]).to_owned(),
                _ if op.starts_with(":?") => match value {
                    Some(v) if set => v.to_owned(),
                    _ => return Err(format!("{name}: {}", &op[2..])),
                },
                _ if op.starts_with('?') => match value {
                    Some(v) => v.to_owned(),
                    None => return Err(format!("{name}: {}", &op[1..])),
                },
                _ => return Err(format!("unsupported interpolation ${{{expr}}}")),
            };
            out.push_str(&resolved);
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push_str(vars.get(&rest[..len]).map_or("", String::as_str));
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A service's environment after interpolation with `vars`; `None` for a
/// variable listed without a value (passed through only when set).
fn compose_env(
    service: &Value,
    vars: &HashMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let env = &service["environment"];
    let mut out = BTreeMap::new();
    match env {
        Value::Object(map) => {
            for (k, v) in map {
                let v = match v {
                    Value::Null => None,
                    Value::String(s) => {
                        Some(interpolate(s, vars).unwrap_or_else(|e| panic!("{k}: {e}")))
                    }
                    other => Some(other.to_string()),
                };
                out.insert(k.clone(), v);
            }
        }
        Value::Array(items) => {
            for item in items {
                let item = s(item);
                match item.split_once('=') {
                    Some((k, v)) => out.insert(k.to_owned(), Some(interpolate(v, vars).unwrap())),
                    None => out.insert(item.to_owned(), None),
                };
            }
        }
        Value::Null => {}
        other => panic!("environment must be a mapping or a list: {other}"),
    }
    out
}

/// Secrets a test supplies where `.env` would.
fn compose_vars(redis_password: &str) -> HashMap<String, String> {
    HashMap::from([
        ("REDIS_PASSWORD".to_owned(), redis_password.to_owned()),
        ("ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ("API_PROXY_NODE_TOKEN".to_owned(), NODE_TOKEN.to_owned()),
    ])
}

/// The services of the `sentinel` profile: the Sentinel set, then the
/// planes of the default stack on it (`<default name>-sentinel`).
const SENTINEL_PROFILE: [&str; 8] = [
    "redis-primary",
    "redis-replica",
    "sentinel-1",
    "sentinel-2",
    "sentinel-3",
    "controlplane-init-sentinel",
    "controlplane-sentinel",
    "dataplane-sentinel",
];

/// The apiproxy services of the compose file, with the binary each runs.
fn compose_apiproxy_services(compose: &Value) -> Vec<(String, &'static str)> {
    compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, svc)| svc["build"]["dockerfile"] == "deploy/Dockerfile")
        .map(|(name, svc)| (name.clone(), binary_of(&svc["command"])))
        .collect()
}

#[test]
fn compose_file_has_the_topology_and_only_settings_the_binaries_read() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for name in [
        "redis",
        "controlplane-init",
        "controlplane",
        "dataplane",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let ours = compose_apiproxy_services(&compose);
    assert_eq!(ours.len(), 6, "{ours:?}");

    // Every setting on an apiproxy service is read by its binary, and the
    // pass-through ones (no value) too.
    let vars = compose_vars("pw");
    for (name, bin) in &ours {
        let env = compose_env(&services[name], &vars);
        assert_accepted(
            bin,
            env.keys().cloned(),
            &format!("docker-compose.yml service {name}"),
        );
        assert!(
            repo()
                .join(s(&services[name]["build"]["dockerfile"]))
                .exists(),
            "{name}: Dockerfile missing"
        );
    }

    // Secrets are required: without them compose refuses to start.
    let text = read("docker-compose.yml");
    for secret in ["REDIS_PASSWORD", "ADMIN_TOKEN", "API_PROXY_NODE_TOKEN"] {
        assert!(
            text.contains(&format!("${{{secret}:?")),
            "{secret} must be required (${{{secret}:?…}})"
        );
    }
    let admin_token = s(&services["controlplane"]["environment"]["ADMIN_TOKEN"]);
    assert!(interpolate(admin_token, &HashMap::new()).is_err());

    // Redis: password and append-only persistence on a named volume.
    let redis_conf = interpolate(s(&compose["configs"]["redis-conf"]["content"]), &vars).unwrap();
    assert!(redis_conf.contains("requirepass pw"), "{redis_conf}");
    assert!(redis_conf.contains("appendonly yes"), "{redis_conf}");
    let redis = &services["redis"];
    let data_volume = redis["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .find(|v| v.ends_with(":/data"));
    let volume_name = data_volume
        .expect("redis /data volume")
        .split(':')
        .next()
        .unwrap();
    assert!(
        compose["volumes"].get(volume_name).is_some(),
        "volume {volume_name} not declared"
    );

    // Two data-plane replicas, health checks, restart policies, ordering.
    assert_eq!(services["dataplane"]["deploy"]["replicas"], 2);
    for (name, svc) in services {
        let restart = if name.starts_with("controlplane-init") {
            "no"
        } else {
            "unless-stopped"
        };
        assert_eq!(svc["restart"], restart, "{name} restart policy");
    }
    for name in ["redis", "controlplane", "dataplane", "prometheus"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has no health check"
        );
    }
    assert_eq!(
        services["controlplane"]["healthcheck"]["test"],
        json!(["CMD", "/usr/local/bin/apiproxy-healthcheck", "controlplane"])
    );
    assert_eq!(
        services["dataplane"]["healthcheck"]["test"],
        json!(["CMD", "/usr/local/bin/apiproxy-healthcheck", "dataplane"])
    );
    for name in ["controlplane", "dataplane"] {
        let deps = &services[name]["depends_on"];
        assert_eq!(deps["redis"]["condition"], "service_healthy", "{name}");
        assert_eq!(
            deps["controlplane-init"]["condition"], "service_completed_successfully",
            "{name}"
        );
    }
    assert_eq!(
        services["controlplane-init"]["depends_on"]["redis"]["condition"],
        "service_healthy"
    );
    assert_eq!(
        services["grafana"]["depends_on"]["prometheus"]["condition"],
        "service_healthy"
    );

    // Monitoring and the Sentinel set only with their profiles.
    for (name, svc) in services {
        let profiles = match name.as_str() {
            "prometheus" | "grafana" => json!(["monitoring"]),
            _ if SENTINEL_PROFILE.contains(&name.as_str()) => json!(["sentinel"]),
            _ => Value::Null,
        };
        assert_eq!(svc["profiles"], profiles, "{name}: profiles");
    }

    // Docker must not SIGKILL a draining data plane.
    let dp_env = compose_env(&services["dataplane"], &vars);
    let drain = duration(dp_env["API_PROXY_DRAIN_TIMEOUT"].as_deref().unwrap());
    assert_eq!(
        Some(drain),
        accepted("apiproxy-dataplane")
            .default("API_PROXY_DRAIN_TIMEOUT")
            .map(duration),
        "compose's default drain timeout is the binary's"
    );
    let grace =
        duration(&interpolate(s(&services["dataplane"]["stop_grace_period"]), &vars).unwrap());
    assert!(
        grace > drain,
        "stop_grace_period {grace:?} must exceed the drain timeout {drain:?}"
    );

    // The snapshot cache directory is a volume (the root file system is read-only).
    let cache = dp_env["API_PROXY_SNAPSHOT_CACHE"].as_deref().unwrap();
    let cache_dir = Path::new(cache).parent().unwrap().to_str().unwrap();
    assert_eq!(services["dataplane"]["read_only"], true);
    assert!(
        services["dataplane"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| s(v) == cache_dir),
        "{cache_dir} must be a volume"
    );
    assert_eq!(
        dp_env["API_PROXY_CONTROLPLANE_URL"].as_deref(),
        Some(
            format!(
                "http://controlplane:{}",
                accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN")
            )
            .as_str()
        )
    );

    // Published ports go to the binaries' default container ports.
    let published = |svc: &str| -> u16 {
        let spec = interpolate(s(&services[svc]["ports"][0]), &vars).unwrap();
        spec.rsplit(':').next().unwrap().parse().unwrap()
    };
    assert_eq!(published("dataplane"), PROXY_PORT);
    assert_eq!(
        published("controlplane"),
        accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN")
    );

    // Files mounted into Prometheus and Grafana exist.
    for svc in ["prometheus", "grafana"] {
        for volume in services[svc]["volumes"].as_array().unwrap() {
            let source = s(volume).split(':').next().unwrap();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(repo().join(rel).exists(), "{svc}: {source} missing");
            }
        }
    }
}

/// The compose services' settings boot the real binaries against a Redis
/// configured like compose's: password required, append-only on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_settings_boot_the_real_binaries() {
    let password = "compose-test-redis-password";
    // The file as compose mounts it; only the address and the directory
    // differ (no container here).
    let conf = interpolate(
        s(&compose()["configs"]["redis-conf"]["content"]),
        &compose_vars(password),
    )
    .unwrap();
    let redis = RedisServer::start_with_config(&conf);
    let vars = compose_vars(password);
    let compose = compose();
    let services = &compose["services"];

    // Redis refuses clients without the password, and persists.
    let open = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
    let mut conn = open.get_multiplexed_async_connection().await.unwrap();
    let err = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let url_for = |url: &str| url.replace("@redis:6379", &format!("@127.0.0.1:{}", redis.port));
    let authed =
        redis::Client::open(url_for(&format!("redis://:{password}@redis:6379/0"))).unwrap();
    let mut conn = authed.get_multiplexed_async_connection().await.unwrap();
    let (_, appendonly): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(appendonly, "yes");

    // controlplane-init: the default mappings into the empty hash, exit 0.
    let init_env = compose_env(&services["controlplane-init"], &vars);
    let dir = TempDir::new("compose-init");
    let mut cmd = Command::new(binary("apiproxy-controlplane"));
    cmd.env_clear().current_dir(&dir.0).arg("init");
    for (k, v) in init_env.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
        cmd.env(k, url_for(v));
    }
    let (status, output) = run(&mut cmd, Duration::from_secs(20));
    assert!(status.success(), "controlplane-init: {output}");

    // The control plane with compose's settings. The fixture listens on
    // 127.0.0.1:0 and logs JSON, which it needs to find the address.
    let to_pairs = |env: BTreeMap<String, Option<String>>, extra: &[(&str, String)]| {
        let mut pairs: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k != "API_PROXY_LOG_FORMAT")
            .filter_map(|(k, v)| Some((k, url_for(&v?))))
            .collect();
        pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        pairs
    };
    for (svc, bin) in [
        ("controlplane", "apiproxy-controlplane"),
        ("dataplane", "apiproxy-dataplane"),
    ] {
        let format = compose_env(&services[svc], &vars)["API_PROXY_LOG_FORMAT"]
            .clone()
            .unwrap();
        assert!(accepted(bin).help.contains("[possible values: text, json]"));
        assert!(
            ["text", "json"].contains(&format.as_str()),
            "{svc}: log format {format}"
        );
    }
    let cp_env = compose_env(&services["controlplane"], &vars);
    let cp_pairs = to_pairs(cp_env, &[]);
    let cp_refs = as_refs(&cp_pairs);
    let redis_url = cp_pairs
        .iter()
        .find(|(k, _)| k == "API_PROXY_REDIS_URL")
        .unwrap()
        .1
        .clone();
    let cp = ControlPlane::start(&redis_url, &cp_refs);
    eventually("control plane ready", Duration::from_secs(10), || async {
        (get(&format!("http://{}/readyz", cp.addr)).await.0 == 200).then_some(())
    })
    .await;
    let listed = cp.admin("GET", "/api/mappings", None).await.json();
    assert_eq!(
        listed["count"], 15,
        "init wrote the default mappings: {listed}"
    );

    // Two data planes with compose's settings; the control plane's address
    // replaces the service name, each gets its own cache file and node id
    // (in compose: the container's host name).
    let dp_env = compose_env(&services["dataplane"], &vars);
    let mut nodes = vec![];
    for id in ["compose-dp-1", "compose-dp-2"] {
        let cache = dir.path(&format!("{id}.snapshot"));
        let mut pairs = to_pairs(dp_env.clone(), &[("API_PROXY_NODE_ID", id.to_owned())]);
        for (k, v) in &mut pairs {
            match k.as_str() {
                "API_PROXY_CONTROLPLANE_URL" => {
                    *v = v.replace("controlplane:8001", &cp.addr.to_string())
                }
                "API_PROXY_SNAPSHOT_CACHE" => *v = cache.to_str().unwrap().to_owned(),
                _ => {}
            }
        }
        let refs = as_refs(&pairs);
        nodes.push(DataPlane::start_redis(&redis_url, &refs));
    }
    let up = upstream::http(echo_handler()).await;
    let reply = cp
        .admin(
            "POST",
            "/api/mappings",
            Some(json!({"prefix": "/svc", "target": up.url()})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    for node in &nodes {
        eventually("data plane ready", Duration::from_secs(10), || async {
            (node.readyz().await == 200).then_some(())
        })
        .await;
        node.wait_status("/svc/x", 200).await;
    }

    // The image's health checks, with the roles compose gives them.
    assert_eq!(
        run_healthcheck(
            &["controlplane"],
            &[("API_PROXY_ADMIN_LISTEN", cp.addr.to_string())]
        ),
        0
    );
    for node in &nodes {
        let env = [("API_PROXY_METRICS_LISTEN", node.metrics_addr.to_string())];
        assert_eq!(run_healthcheck(&["dataplane"], &env), 0);
        assert_eq!(
            run_healthcheck(&[], &env),
            0,
            "auto: this process's PID 1 is no control plane"
        );
    }

    // Both push their stats with compose's node token.
    eventually("both nodes listed", Duration::from_secs(10), || async {
        let listed = cp.admin("GET", "/api/nodes", None).await;
        let ids: BTreeSet<String> = listed.json()["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "up")
            .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
            .collect();
        (ids.contains("compose-dp-1") && ids.contains("compose-dp-2")).then_some(())
    })
    .await;
}

/// The `configs` file a Redis service of the sentinel profile starts from:
/// its command copies the mounted file into its volume (once) and runs the
/// copy. Returns the file's text after interpolation.
fn sentinel_profile_config(
    compose: &Value,
    service: &str,
    vars: &HashMap<String, String>,
) -> String {
    let svc = &compose["services"][service];
    let mount = &svc["configs"][0];
    let (source, target) = (s(&mount["source"]), s(&mount["target"]));
    let script = s(&svc["command"][2]);
    let copy = format!("/data/{}", target.rsplit('/').next().unwrap());
    assert_eq!(
        (&svc["command"][0], &svc["command"][1]),
        (&json!("sh"), &json!("-c")),
        "{service}"
    );
    assert!(
        script.starts_with(&format!(
            "[ -f {copy} ] || cp {target} {copy}; exec docker-entrypoint.sh redis-server {copy}"
        )),
        "{service}: {script}"
    );
    interpolate(s(&compose["configs"][source]["content"]), vars).unwrap()
}

/// The `sentinel` profile is the default stack's planes on a Sentinel set:
/// the same services but for the Redis URL, which names the three
/// sentinels and the master the sentinels monitor, with a quorum of 2.
#[test]
fn compose_sentinel_profile_is_the_default_planes_on_a_sentinel_set() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let vars = compose_vars("pw");
    let admin_port = accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN");

    // The sentinels: one file, quorum 2 of 3, the primary by its service
    // name (resolved, so resolve-hostnames comes first), its password.
    let sentinels = ["sentinel-1", "sentinel-2", "sentinel-3"];
    let conf = sentinel_profile_config(&compose, "sentinel-1", &vars);
    let lines: Vec<&str> = conf.lines().collect();
    let monitor = lines
        .iter()
        .position(|l| l.starts_with("sentinel monitor "))
        .expect("sentinel monitor line");
    let resolve = lines
        .iter()
        .position(|l| *l == "sentinel resolve-hostnames yes")
        .expect("resolve-hostnames");
    assert!(resolve < monitor, "{conf}");
    assert_eq!(
        lines[monitor],
        "sentinel monitor apiproxy redis-primary 6379 2"
    );
    assert!(lines.contains(&"sentinel auth-pass apiproxy pw"), "{conf}");
    assert!(lines.contains(&"sentinel announce-hostnames yes"), "{conf}");
    let sentinel_port = lines
        .iter()
        .find_map(|l| l.strip_prefix("port "))
        .expect("port line");
    for name in sentinels {
        let svc = &services[name];
        assert_eq!(
            sentinel_profile_config(&compose, name, &vars),
            conf,
            "{name}"
        );
        assert!(
            s(&svc["command"][2]).ends_with(&format!(" --sentinel --sentinel announce-ip {name}")),
            "{name} announces its own name: {}",
            svc["command"]
        );
        assert_eq!(
            svc["depends_on"]["redis-primary"]["condition"], "service_healthy",
            "{name} resolves redis-primary when it starts"
        );
        assert!(svc["healthcheck"]["test"][1]
            .as_str()
            .unwrap()
            .contains(&format!("-p {sentinel_port} ping")));
    }

    // The primary and the replica: password, persistence on their own
    // named volumes, announced by service name; the replica follows the
    // primary, and each authenticates to the other after a failover.
    for (name, replicaof) in [
        ("redis-primary", None),
        ("redis-replica", Some("redis-primary 6379")),
    ] {
        let conf = sentinel_profile_config(&compose, name, &vars);
        let lines: Vec<&str> = conf.lines().collect();
        for line in [
            "requirepass pw",
            "masterauth pw",
            "appendonly yes",
            &format!("replica-announce-ip {name}"),
        ] {
            assert!(lines.contains(&line), "{name}: {line} missing from {conf}");
        }
        assert_eq!(
            lines.iter().find_map(|l| l.strip_prefix("replicaof ")),
            replicaof,
            "{name}"
        );
        let volume = s(&services[name]["volumes"][0]);
        let (volume, path) = volume.split_once(':').unwrap();
        assert_eq!(path, "/data", "{name}");
        assert!(
            compose["volumes"].get(volume).is_some(),
            "{name}: volume {volume}"
        );
        assert!(services[name]["healthcheck"]["test"].is_array(), "{name}");
    }
    assert_eq!(
        services["redis-replica"]["depends_on"]["redis-primary"]["condition"],
        "service_healthy"
    );

    // The planes: the default services but for the URL, the control plane's
    // address and what they wait for.
    let url = interpolate(
        s(&services["controlplane-sentinel"]["environment"]["API_PROXY_REDIS_URL"]),
        &vars,
    )
    .unwrap();
    let hosts = sentinels.map(|n| format!("{n}:{sentinel_port}")).join(",");
    assert_eq!(url, format!("redis+sentinel://:pw@{hosts}/apiproxy"));
    for name in ["controlplane-init", "controlplane", "dataplane"] {
        let default = &services[name];
        let sentinel = &services[&format!("{name}-sentinel")];
        let env = compose_env(sentinel, &vars);
        assert_eq!(
            env["API_PROXY_REDIS_URL"].as_deref(),
            Some(url.as_str()),
            "{name}"
        );
        let mut expected = compose_env(default, &vars);
        expected.insert("API_PROXY_REDIS_URL".into(), Some(url.clone()));
        if name == "dataplane" {
            expected.insert(
                "API_PROXY_CONTROLPLANE_URL".into(),
                Some(format!("http://controlplane-sentinel:{admin_port}")),
            );
        }
        assert_eq!(env, expected, "{name}-sentinel's settings");
        let mut rest = sentinel.clone();
        let mut default_rest = default.clone();
        for key in ["environment", "depends_on", "profiles"] {
            rest.as_object_mut().unwrap().remove(key);
            default_rest.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(rest, default_rest, "{name}-sentinel differs from {name}");
        let deps = sentinel["depends_on"].as_object().unwrap();
        for dep in sentinels.iter().chain(&["redis-replica"]) {
            assert_eq!(
                deps[*dep]["condition"], "service_healthy",
                "{name}-sentinel on {dep}"
            );
        }
        if name != "controlplane-init" {
            assert_eq!(
                deps["controlplane-init-sentinel"]["condition"],
                "service_completed_successfully"
            );
        }
        assert!(
            !deps.contains_key("redis"),
            "{name}-sentinel needs no standalone Redis"
        );
    }
}

/// The Sentinel set runs as compose configures it: primary, replica and
/// three sentinels from the compose files (only the addresses differ: no
/// container here), the sentinels find each other and reach the quorum,
/// and a SIGKILLed primary is replaced by the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_sentinel_set_fails_over_as_compose_configures_it() {
    let password = "compose-test-sentinel-password";
    let vars = compose_vars(password);
    let compose = compose();
    let primary_conf = sentinel_profile_config(&compose, "redis-primary", &vars).replace(
        "replica-announce-ip redis-primary",
        "replica-announce-ip 127.0.0.1",
    );
    let mut primary = RedisServer::start_with_config(&primary_conf);
    let replica_conf = sentinel_profile_config(&compose, "redis-replica", &vars)
        .replace(
            "replicaof redis-primary 6379",
            &format!("replicaof 127.0.0.1 {}", primary.port),
        )
        .replace(
            "replica-announce-ip redis-replica",
            "replica-announce-ip 127.0.0.1",
        );
    let replica = RedisServer::start_with_config(&replica_conf);
    let sentinel_conf = sentinel_profile_config(&compose, "sentinel-1", &vars)
        .replace("redis-primary 6379", &format!("127.0.0.1 {}", primary.port));
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_sentinel(&sentinel_conf, &["--sentinel", "announce-ip", "127.0.0.1"])
        })
        .collect();

    let conn = |port: u16, auth: bool| async move {
        let url = if auth {
            format!("redis://:{password}@127.0.0.1:{port}/")
        } else {
            format!("redis://127.0.0.1:{port}/")
        };
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let info = |port: u16| async move {
        let mut c = conn(port, true).await;
        redis::cmd("INFO")
            .arg("replication")
            .query_async::<String>(&mut c)
            .await
            .unwrap()
    };
    let master_of = |port: u16| async move {
        let mut c = conn(port, false).await;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("apiproxy")
            .query_async::<(String, u16)>(&mut c)
            .await
            .unwrap()
    };

    // The replica follows the primary with the password.
    eventually("replica in sync", Duration::from_secs(10), || async {
        info(replica.port)
            .await
            .contains("master_link_status:up")
            .then_some(())
    })
    .await;
    // Each sentinel finds the two others and the replica: quorum 2 and a
    // majority for the failover are reachable.
    for sentinel in &sentinels {
        assert_eq!(
            master_of(sentinel.port).await,
            ("127.0.0.1".to_owned(), primary.port)
        );
        eventually("sentinel quorum", Duration::from_secs(20), || async {
            let mut c = conn(sentinel.port, false).await;
            let reply = redis::cmd("SENTINEL")
                .arg("ckquorum")
                .arg("apiproxy")
                .query_async::<String>(&mut c)
                .await
                .ok()?;
            reply.starts_with("OK 3 usable Sentinels").then_some(())
        })
        .await;
    }

    // SIGKILL the primary: after down-after-milliseconds the sentinels
    // agree, promote the replica, and every one of them names it.
    primary.kill();
    for sentinel in &sentinels {
        eventually(
            "failover to the replica",
            Duration::from_secs(30),
            || async {
                (master_of(sentinel.port).await == ("127.0.0.1".to_owned(), replica.port))
                    .then_some(())
            },
        )
        .await;
    }
    assert!(info(replica.port).await.contains("role:master"));
}
