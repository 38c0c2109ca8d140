//! `deploy/k8s/`, the kustomize base and its optional ServiceMonitor
//! component, against the real binaries: every resource the base needs,
//! every setting a container gets is one its binary reads, ports and
//! probes are the binaries' defaults, and the settings boot the real
//! binaries (the Secret's placeholders are refused). Kubernetes cannot run
//! here; `kubectl kustomize` renders the base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use apiproxy_tests::client::get;
use apiproxy_tests::controlplane::{ControlPlane, ADMIN_TOKEN};
use apiproxy_tests::dataplane::binary;
use apiproxy_tests::deploy::{
    accepted, as_refs, assert_accepted, assert_refused, binary_of, container_port, duration,
    k8s_resources, parse_yaml_stream, read, repo, run, s, yaml, yaml_docs, K8S, NODE_TOKEN,
    PLACEHOLDER, PROXY_PORT, SECRETS_FROM_FILES,
};
use apiproxy_tests::redis::RedisServer;
use apiproxy_tests::{eventually, DataPlane, TempDir};
use serde_json::{json, Value};

/// `128Mi`, `1Gi`, `250M` → bytes.
fn quantity(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let n: f64 = text[..split]
        .parse()
        .unwrap_or_else(|_| panic!("quantity {text:?}"));
    n * match &text[split..] {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        other => panic!("quantity unit {other:?}"),
    }
}

/// Where a container's environment variable gets its value.
#[derive(Debug)]
enum Setting {
    /// A literal value, or a ConfigMap's.
    Literal(String),
    /// A `NAME_FILE` naming a file of a `secret` volume: what the file
    /// holds, the Secret key's value.
    SecretFile(String),
    /// Filled in by Kubernetes (`fieldRef`).
    Field,
}

/// A container's environment: `env`, and every key of the ConfigMaps and
/// Secrets it takes with `envFrom`, each with where its value comes from.
fn container_env(
    container: &Value,
    pod: &Value,
    resources: &BTreeMap<String, Value>,
) -> BTreeMap<String, Setting> {
    let mut out = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let (kind, name, field) = if from["configMapRef"].is_object() {
            ("ConfigMap", &from["configMapRef"]["name"], "data")
        } else {
            ("Secret", &from["secretRef"]["name"], "stringData")
        };
        let res = resources
            .get(&format!("{kind}/{}", s(name)))
            .unwrap_or_else(|| panic!("envFrom {kind} {name} is not in the base"));
        for (k, v) in res[field].as_object().expect("data") {
            out.insert(k.clone(), Setting::Literal(s(v).to_owned()));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = s(&var["name"]).to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            match secret_file(v, container, pod, resources) {
                Some(content) => {
                    assert!(name.ends_with("_FILE"), "{name} names a secret file");
                    Setting::SecretFile(content)
                }
                None => Setting::Literal(v.to_owned()),
            }
        } else {
            assert!(
                var["valueFrom"]["fieldRef"].is_object(),
                "{name}: unexpected env source (the Secret's keys are files)"
            );
            Setting::Field
        };
        out.insert(name, value);
    }
    out
}

/// What the file at `path` holds when it lies in a `secret` volume the
/// container mounts (read-only): the value of the Secret's key the
/// volume puts there. `None` for a path on no secret volume.
fn secret_file(
    path: &str,
    container: &Value,
    pod: &Value,
    resources: &BTreeMap<String, Value>,
) -> Option<String> {
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let Ok(file) = Path::new(path).strip_prefix(s(&mount["mountPath"])) else {
            continue;
        };
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {} for the mount", mount["name"]));
        let source = &volume["secret"];
        if !source.is_object() {
            continue;
        }
        assert_eq!(mount["readOnly"], true, "secret volume {}", volume["name"]);
        let file = file.to_str().unwrap();
        let key = match source["items"].as_array() {
            Some(items) => items
                .iter()
                .find(|i| i["path"] == file)
                .map(|i| s(&i["key"]))
                .unwrap_or_else(|| panic!("{path}: volume {} has no such item", volume["name"])),
            None => file,
        };
        let secret = resources
            .get(&format!("Secret/{}", s(&source["secretName"])))
            .unwrap_or_else(|| panic!("secret {} missing", source["secretName"]));
        let value = &secret["stringData"][key];
        assert!(value.is_string(), "secret key {key} missing");
        return Some(s(value).to_owned());
    }
    None
}

/// A file mode as a manifest spells it: a number, or `0440` (octal to
/// Kubernetes' YAML 1.1 reader, a string to a YAML 1.2 one).
fn file_mode(mode: &Value) -> u64 {
    mode.as_u64().unwrap_or_else(|| {
        let text = s(mode);
        assert!(text.starts_with('0'), "mode {text}");
        u64::from_str_radix(text, 8).unwrap_or_else(|_| panic!("mode {text}"))
    })
}

fn containers(deployment: &Value) -> Vec<&Value> {
    let spec = &deployment["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().expect("containers"))
        .collect()
}

#[test]
fn k8s_base_is_complete_and_matches_the_binaries() {
    let resources = k8s_resources();
    for key in [
        "Secret/apiproxy",
        "ConfigMap/apiproxy-dataplane",
        "ConfigMap/apiproxy-controlplane",
        "Deployment/apiproxy-controlplane",
        "Service/apiproxy-controlplane",
        "Deployment/apiproxy-dataplane",
        "Service/apiproxy-dataplane",
        "HorizontalPodAutoscaler/apiproxy-dataplane",
        "PodDisruptionBudget/apiproxy-dataplane",
    ] {
        assert!(resources.contains_key(key), "{key} missing from the base");
    }
    assert_eq!(
        resources["HorizontalPodAutoscaler/apiproxy-dataplane"]["apiVersion"],
        "autoscaling/v2"
    );
    assert_eq!(
        resources["PodDisruptionBudget/apiproxy-dataplane"]["apiVersion"],
        "policy/v1"
    );
    assert!(
        !resources.keys().any(|k| k.starts_with("ServiceMonitor/")),
        "ServiceMonitor is optional"
    );

    // No working secret: the placeholders are refused (checked for real in
    // k8s_settings_boot_the_real_binaries).
    let secret = &resources["Secret/apiproxy"]["stringData"];
    assert_eq!(secret["ADMIN_TOKEN"], PLACEHOLDER);
    assert_eq!(secret["API_PROXY_NODE_TOKEN"], "");
    assert!(
        s(&secret["API_PROXY_REDIS_URL"]).contains(".invalid:"),
        "{}",
        secret["API_PROXY_REDIS_URL"]
    );

    let dp_acc = accepted("apiproxy-dataplane");
    let cp_acc = accepted("apiproxy-controlplane");
    let metrics_port = dp_acc.default_port("API_PROXY_METRICS_LISTEN");
    let admin_port = cp_acc.default_port("API_PROXY_ADMIN_LISTEN");

    for (deployment, main_port, probe_port) in [
        ("Deployment/apiproxy-dataplane", PROXY_PORT, metrics_port),
        ("Deployment/apiproxy-controlplane", admin_port, admin_port),
    ] {
        let d = &resources[deployment];
        let pod = &d["spec"]["template"];
        let spec = &pod["spec"];
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"], true,
            "{deployment}"
        );
        assert_eq!(spec["automountServiceAccountToken"], false, "{deployment}");
        // The Secret's files: read by the pod's group only, which the
        // user is in.
        let pod_sc = &spec["securityContext"];
        assert_eq!(pod_sc["runAsUser"], 65532, "{deployment}");
        assert_eq!(pod_sc["fsGroup"], 65532, "{deployment}");
        assert_eq!(pod_sc["fsGroup"], pod_sc["runAsGroup"], "{deployment}");
        let secret_volumes: Vec<&Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["secret"].is_object())
            .collect();
        assert_eq!(secret_volumes.len(), 1, "{deployment}: one secret volume");
        for v in secret_volumes {
            let mode = file_mode(&v["secret"]["defaultMode"]);
            assert!(
                mode & 0o040 != 0 && mode & 0o007 == 0,
                "{deployment}: mode {mode:o}"
            );
        }
        for c in containers(d) {
            let bin = binary_of(&c["command"]);
            let env = container_env(c, spec, &resources);
            assert_accepted(
                bin,
                env.keys().cloned(),
                &format!("{deployment} container {}", c["name"]),
            );
            // Each secret the binary reads is a file of the Secret's
            // volume, never an environment variable.
            let wanted: &[&str] = match (bin, s(&c["name"])) {
                ("apiproxy-controlplane", "init") => &["API_PROXY_REDIS_URL"],
                ("apiproxy-controlplane", _) => &SECRETS_FROM_FILES,
                _ => &SECRETS_FROM_FILES[1..],
            };
            for name in SECRETS_FROM_FILES {
                assert!(
                    !env.contains_key(name),
                    "{deployment}: {name} in the environment"
                );
                let file = env.get(&format!("{name}_FILE"));
                assert_eq!(
                    matches!(file, Some(Setting::SecretFile(_))),
                    wanted.contains(&name),
                    "{deployment} {}: {name}_FILE {file:?}",
                    c["name"]
                );
            }
            let sc = &c["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{deployment} {}",
                c["name"]
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{deployment} {}",
                c["name"]
            );
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            let r = &c["resources"];
            for q in [
                &r["requests"]["cpu"],
                &r["requests"]["memory"],
                &r["limits"]["memory"],
            ] {
                assert!(q.is_string(), "{deployment} {}: resources {r}", c["name"]);
            }
            assert!(quantity(s(&r["requests"]["memory"])) <= quantity(s(&r["limits"]["memory"])));
        }
        let main = spec["containers"].as_array().unwrap().first().unwrap();
        let ports: BTreeSet<u16> = main["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        assert!(
            ports.contains(&main_port) && ports.contains(&probe_port),
            "{deployment} ports {ports:?}"
        );
        assert_eq!(
            main["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{deployment}"
        );
        assert_eq!(
            main["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{deployment}"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container_port(main, &main[probe]["httpGet"]["port"]),
                probe_port,
                "{deployment} {probe}"
            );
        }
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], probe_port.to_string());
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }

    // Services select the pods and reach the named container ports.
    for (service, deployment) in [
        (
            "Service/apiproxy-dataplane",
            "Deployment/apiproxy-dataplane",
        ),
        (
            "Service/apiproxy-controlplane",
            "Deployment/apiproxy-controlplane",
        ),
    ] {
        let svc = &resources[service];
        let d = &resources[deployment];
        let pod_labels = d["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "{service} selector {k}");
        }
        assert_eq!(
            d["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
            "{deployment}"
        );
        let main = d["spec"]["template"]["spec"]["containers"][0].clone();
        for port in svc["spec"]["ports"].as_array().unwrap() {
            assert_eq!(
                port["port"].as_u64().unwrap() as u16,
                container_port(&main, &port["targetPort"]),
                "{service} port {}",
                port["name"]
            );
        }
    }
    let dp_pod_labels =
        &resources["Deployment/apiproxy-dataplane"]["spec"]["template"]["metadata"]["labels"];
    for (k, v) in resources["PodDisruptionBudget/apiproxy-dataplane"]["spec"]["selector"]
        ["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&dp_pod_labels[k], v, "PDB selector {k}");
    }
    let hpa = &resources["HorizontalPodAutoscaler/apiproxy-dataplane"]["spec"];
    assert_eq!(hpa["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["scaleTargetRef"]["name"], "apiproxy-dataplane");
    assert!(hpa["minReplicas"].as_u64().unwrap() >= 2);
    assert!(
        resources["Deployment/apiproxy-dataplane"]["spec"]["replicas"].is_null(),
        "the HPA owns the data plane's replica count"
    );

    // The control plane URL of the data planes is the control plane's Service.
    let dp_config = &resources["ConfigMap/apiproxy-dataplane"]["data"];
    assert_eq!(
        dp_config["API_PROXY_CONTROLPLANE_URL"],
        format!("http://apiproxy-controlplane:{admin_port}")
    );
    assert_eq!(
        dp_config["API_PROXY_REDIS_PREFIX"],
        resources["ConfigMap/apiproxy-controlplane"]["data"]["API_PROXY_REDIS_PREFIX"],
        "both planes use the same key namespace"
    );

    // Graceful termination outlasts the pause and the drain.
    let dp = &resources["Deployment/apiproxy-dataplane"]["spec"]["template"]["spec"];
    let main = &dp["containers"][0];
    let pause = Duration::from_secs(
        main["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep"),
    );
    let drain = duration(
        dp_config["API_PROXY_DRAIN_TIMEOUT"]
            .as_str()
            .or(dp_acc.default("API_PROXY_DRAIN_TIMEOUT"))
            .unwrap(),
    );
    let grace = Duration::from_secs(dp["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace > pause + drain,
        "terminationGracePeriodSeconds {grace:?} <= preStop {pause:?} + drain {drain:?}"
    );
    assert_eq!(
        resources["Deployment/apiproxy-dataplane"]["spec"]["strategy"]["rollingUpdate"]
            ["maxUnavailable"],
        0
    );

    // The snapshot cache is on a writable volume.
    let cache = s(&dp_config["API_PROXY_SNAPSHOT_CACHE"]);
    let mount = main["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(cache).starts_with(s(&m["mountPath"])));
    assert!(mount.is_some(), "{cache} is not on a mounted volume");

    // Memory sized from the measured figures: the request covers the
    // 1000-connection peak that docs/BENCHMARKS.md reports, and the
    // manifest cites figures that are in that file.
    let benchmarks = read("docs/BENCHMARKS.md");
    let manifest = read(&format!("{K8S}/dataplane-deployment.yaml"));
    for figure in [
        "26.3 MiB", "7.7 MiB", "11.9 MiB", "26.9 MiB", "+2.1 MiB", "+0.1 MiB",
    ] {
        assert!(
            manifest.contains(figure),
            "dataplane-deployment.yaml should cite {figure}"
        );
        assert!(
            benchmarks.contains(figure),
            "{figure} is not in docs/BENCHMARKS.md any more: update the resources"
        );
    }
    let request = quantity(s(&main["resources"]["requests"]["memory"]));
    assert!(
        request >= 27.8 * 1024.0 * 1024.0,
        "memory request below the measured peak"
    );

    // The optional ServiceMonitor component.
    let component = yaml(&format!(
        "{K8S}/components/servicemonitor/kustomization.yaml"
    ));
    assert_eq!(component["kind"], "Component");
    for file in component["resources"].as_array().unwrap() {
        for sm in yaml_docs(&format!("{K8S}/components/servicemonitor/{}", s(file))) {
            assert_eq!(sm["kind"], "ServiceMonitor");
            let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
            let svc = resources
                .values()
                .find(|r| {
                    r["kind"] == "Service" && r["spec"]["selector"].as_object() == Some(selector)
                })
                .unwrap_or_else(|| {
                    panic!("no Service for ServiceMonitor {}", sm["metadata"]["name"])
                });
            for endpoint in sm["spec"]["endpoints"].as_array().unwrap() {
                assert_eq!(endpoint["path"], "/metrics");
                let port = svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == endpoint["port"])
                    .expect("ServiceMonitor port is a Service port name");
                let n = port["port"].as_u64().unwrap() as u16;
                assert!(n == metrics_port || n == admin_port, "scrapes port {n}");
            }
        }
    }
}

/// `kubectl kustomize <dir>`, parsed.
fn kustomize(dir: &Path) -> Vec<Value> {
    let (status, output) = run(
        Command::new("kubectl").arg("kustomize").arg(dir),
        Duration::from_secs(60),
    );
    assert!(
        status.success(),
        "kubectl kustomize {}: {output}",
        dir.display()
    );
    parse_yaml_stream(&output, "kubectl kustomize output")
}

/// `kubectl kustomize` renders the base, and an overlay with the
/// ServiceMonitor component. kubectl is no Cargo dependency: `scripts/test`
/// installs it where it is missing, and without it this test fails.
#[test]
fn k8s_kustomize_renders_the_base_and_the_component() {
    let version = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .expect("kubectl not found: scripts/test installs it (or put a kubectl with Kustomize v4+ on PATH)");
    assert!(
        version.status.success(),
        "kubectl version --client: {}",
        String::from_utf8_lossy(&version.stderr)
    );
    let render = kustomize;
    let base = render(&repo().join(K8S));
    let names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| format!("{}/{}", s(&d["kind"]), s(&d["metadata"]["name"])))
            .collect()
    };
    assert_eq!(names(&base), k8s_resources().keys().cloned().collect());
    for d in base.iter().filter(|d| d["kind"] == "Deployment") {
        for c in containers(d) {
            assert!(
                s(&c["image"]).starts_with("apiproxy:"),
                "image {}",
                c["image"]
            );
        }
        // kubectl reads the file mode `0440` as octal.
        let mut secret_volumes = 0;
        for v in d["spec"]["template"]["spec"]["volumes"].as_array().unwrap() {
            if v["secret"].is_object() {
                assert_eq!(v["secret"]["defaultMode"], 0o440, "{}", v["name"]);
                secret_volumes += 1;
            }
        }
        assert_eq!(secret_volumes, 1, "the rendered overlay mounts its Secret");
    }

    // Kustomize wants relative paths: the overlay lives under target/.
    let overlay =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("k8s-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    let up = overlay.canonicalize().unwrap();
    let root = repo().canonicalize().unwrap();
    let common = up.ancestors().find(|a| root.starts_with(a)).unwrap();
    let back = "../".repeat(up.strip_prefix(common).unwrap().components().count());
    let to_repo = format!("{back}{}", root.strip_prefix(common).unwrap().display());
    let to_repo = to_repo.trim_end_matches('/');
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{to_repo}/{K8S}]\ncomponents: [{to_repo}/{K8S}/components/servicemonitor]\n"
        ),
    )
    .unwrap();
    let with_monitor = render(&overlay);
    let _ = std::fs::remove_dir_all(&overlay);
    let extra: Vec<String> = names(&with_monitor)
        .difference(&names(&base))
        .cloned()
        .collect();
    assert_eq!(
        extra,
        [
            "ServiceMonitor/apiproxy-controlplane",
            "ServiceMonitor/apiproxy-dataplane"
        ]
    );
}

/// The Kubernetes settings boot the real binaries (the Secret's values
/// replaced by working ones), and the Secret's placeholders are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_settings_boot_the_real_binaries_and_the_placeholders_are_refused() {
    let resources = k8s_resources();
    let redis = RedisServer::start();
    let dp_deployment = &resources["Deployment/apiproxy-dataplane"];
    let cp_deployment = &resources["Deployment/apiproxy-controlplane"];
    let dp_pod = &dp_deployment["spec"]["template"]["spec"];
    let cp_pod = &cp_deployment["spec"]["template"]["spec"];
    let dp_env = container_env(&dp_pod["containers"][0], dp_pod, &resources);
    let cp_env = container_env(&cp_pod["containers"][0], cp_pod, &resources);

    // The settings as the binaries get them here: `overrides` (and Redis
    // here, listeners on free ports) by variable name, and a `NAME_FILE`
    // of the Secret's volume a file in `dir`, named `{tag}-NAME`, holding
    // NAME's value.
    let dir = TempDir::new("k8s-env");
    let literal = |env: &BTreeMap<String, Setting>,
                   tag: &str,
                   overrides: &[(&str, String)]|
     -> Vec<(String, String)> {
        let here = [
            ("API_PROXY_REDIS_URL", redis.url()),
            ("API_PROXY_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("API_PROXY_LISTEN", "127.0.0.1:0".into()),
            ("API_PROXY_METRICS_LISTEN", "127.0.0.1:0".into()),
        ];
        env.iter()
            .filter_map(|(k, setting)| {
                let (name, value) = match setting {
                    Setting::Literal(v) => (k.as_str(), v),
                    Setting::SecretFile(v) => (k.strip_suffix("_FILE").unwrap(), v),
                    Setting::Field => return None,
                };
                let value = here
                    .iter()
                    .chain(overrides)
                    .rev()
                    .find(|(o, _)| *o == name)
                    .map_or(value, |(_, v)| v)
                    .clone();
                Some(match setting {
                    Setting::SecretFile(_) => {
                        let path = dir.path(&format!("{tag}-{name}"));
                        std::fs::write(&path, value).unwrap();
                        (k.clone(), path.to_str().unwrap().to_owned())
                    }
                    _ => (k.clone(), value),
                })
            })
            .collect()
    };

    // As applied, unedited: refused before anything binds.
    let mut cp_literal = literal(&cp_env, "cp-unedited", &[]);
    cp_literal.push(("API_PROXY_ADMIN_LISTEN".into(), "127.0.0.1:0".into()));
    assert_refused("apiproxy-controlplane", &cp_literal, "ADMIN_TOKEN");
    let mut dp_literal = literal(&dp_env, "dp-unedited", &[]);
    dp_literal.push(("API_PROXY_LISTEN".into(), "127.0.0.1:0".into()));
    dp_literal.push(("API_PROXY_METRICS_LISTEN".into(), "127.0.0.1:0".into()));
    assert_refused("apiproxy-dataplane", &dp_literal, "API_PROXY_NODE_TOKEN");

    // With working secrets, Redis here and the Service names resolved.
    let init = containers(cp_deployment)
        .into_iter()
        .find(|c| c["name"] == "init")
        .expect("init container");
    let mut cmd = Command::new(binary(binary_of(&init["command"])));
    cmd.env_clear()
        .current_dir(&dir.0)
        .args(init["command"].as_array().unwrap()[1..].iter().map(s));
    for (k, v) in literal(&container_env(init, cp_pod, &resources), "init", &[]) {
        cmd.env(k, v);
    }
    let (status, output) = run(&mut cmd, Duration::from_secs(20));
    assert!(status.success(), "init container: {output}");

    let cp_pairs = literal(
        &cp_env,
        "cp",
        &[
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("API_PROXY_NODE_TOKEN", NODE_TOKEN.to_owned()),
        ],
    );
    let refs = as_refs(&cp_pairs);
    let cp = ControlPlane::start_env(&refs);
    eventually("control plane ready", Duration::from_secs(10), || async {
        (get(&format!("http://{}/readyz", cp.addr)).await.0 == 200).then_some(())
    })
    .await;

    let cache = dir.path("snapshot");
    let mut dp_pairs = literal(
        &dp_env,
        "dp",
        &[
            ("API_PROXY_NODE_TOKEN", NODE_TOKEN.to_owned()),
            ("API_PROXY_CONTROLPLANE_URL", format!("http://{}", cp.addr)),
            (
                "API_PROXY_SNAPSHOT_CACHE",
                cache.to_str().unwrap().to_owned(),
            ),
        ],
    );
    dp_pairs.push(("API_PROXY_NODE_ID".to_owned(), "k8s-pod-1".to_owned()));
    let refs = as_refs(&dp_pairs);
    let node = DataPlane::start_env(&refs);
    eventually("data plane ready", Duration::from_secs(10), || async {
        (node.readyz().await == 200).then_some(())
    })
    .await;
    eventually("snapshot cache written", Duration::from_secs(5), || async {
        cache.exists().then_some(())
    })
    .await;
    cp.wait_node_up("k8s-pod-1").await;
}

/// The hardening checkov asks for: everything in the namespace apiproxy,
/// NetworkPolicies (ingress denied but for the planes' own ports, Redis
/// only from the planes), the image pinned by tag in the base and by
/// digest in the example overlay, which also names a Sentinel set; each
/// check skipped has its reason in the manifest and in the README, and CI
/// runs checkov.
#[test]
fn k8s_base_is_hardened_and_the_example_overlay_pins_by_digest() {
    let resources = k8s_resources();
    let kustomization = yaml(&format!("{K8S}/kustomization.yaml"));
    assert_eq!(kustomization["namespace"], "apiproxy");
    assert!(resources.contains_key("Namespace/apiproxy"));
    for (key, r) in &resources {
        if r["kind"] != "Namespace" {
            assert_eq!(r["metadata"]["namespace"], "apiproxy", "{key}");
        }
    }

    // NetworkPolicies: ingress denied to every pod of the namespace but
    // what the policies below allow.
    let policy = |name: &str| &resources[&format!("NetworkPolicy/{name}")]["spec"];
    let deny = policy("apiproxy-default-deny");
    assert_eq!(deny["podSelector"], json!({}));
    assert_eq!(deny["policyTypes"], json!(["Ingress"]));
    assert!(deny["ingress"].is_null(), "default deny allows nothing");
    let pod_labels = |deployment: &str| {
        resources[&format!("Deployment/{deployment}")]["spec"]["template"]["metadata"]["labels"]
            .clone()
    };
    let (dp, cp) = (
        pod_labels("apiproxy-dataplane"),
        pod_labels("apiproxy-controlplane"),
    );
    let redis = json!({"app.kubernetes.io/name": "redis"});
    let ports = |rule: &Value| -> Vec<Value> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].clone())
            .collect()
    };
    let sources = |rule: &Value| -> Vec<Value> {
        rule["from"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["podSelector"]["matchLabels"].clone())
            .collect()
    };
    // Data plane: the proxy port from anywhere, metrics from the cluster.
    let rules = policy("apiproxy-dataplane")["ingress"].as_array().unwrap();
    assert_eq!(
        policy("apiproxy-dataplane")["podSelector"]["matchLabels"],
        dp
    );
    assert_eq!(rules.len(), 2);
    assert!(rules[0]["from"].is_null() && ports(&rules[0]) == [json!("http")]);
    assert_eq!(rules[1]["from"], json!([{"namespaceSelector": {}}]));
    assert_eq!(ports(&rules[1]), [json!("metrics")]);
    // Control plane: the data planes, and the console only from pods the
    // operator labels.
    let rules = policy("apiproxy-controlplane")["ingress"]
        .as_array()
        .unwrap();
    assert_eq!(
        policy("apiproxy-controlplane")["podSelector"]["matchLabels"],
        cp
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(sources(&rules[0]), std::slice::from_ref(&dp));
    assert_eq!(
        rules[1]["from"],
        json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"apiproxy.io/console": "allow"}}}])
    );
    for rule in rules {
        assert_eq!(ports(rule), [json!("http")]);
    }
    // Redis: only from the two planes and itself, on Redis's and
    // Sentinel's ports.
    let redis_policy = policy("apiproxy-redis");
    assert_eq!(redis_policy["podSelector"]["matchLabels"], redis);
    let rules = redis_policy["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(sources(&rules[0]), [dp, cp, redis]);
    assert_eq!(ports(&rules[0]), [json!(6379), json!(26379)]);
    for r in resources.values().filter(|r| r["kind"] == "NetworkPolicy") {
        for rule in r["spec"]["ingress"].as_array().into_iter().flatten() {
            for from in rule["from"].as_array().into_iter().flatten() {
                assert!(from["ipBlock"].is_null(), "no address ranges");
            }
        }
    }

    // The image: pinned by tag, the kustomization's tag, pulled at each
    // start; the checks skipped are skipped with a reason that the README
    // gives too.
    let tag = s(&kustomization["images"][0]["newTag"]);
    let readme = read("README.md");
    for deployment in ["apiproxy-dataplane", "apiproxy-controlplane"] {
        let d = &resources[&format!("Deployment/{deployment}")];
        for c in containers(d) {
            assert_eq!(c["image"], format!("apiproxy:{tag}"), "{deployment}");
            assert_eq!(c["imagePullPolicy"], "Always", "{deployment}");
        }
        let skips: BTreeMap<&str, &str> = d["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("checkov.io/skip"))
            .map(|(_, v)| s(v).split_once('=').expect("CHECK=reason"))
            .collect();
        assert_eq!(
            skips.keys().copied().collect::<Vec<_>>(),
            ["CKV_K8S_11", "CKV_K8S_43"],
            "{deployment}"
        );
        for (check, reason) in skips {
            assert!(reason.len() > 20, "{deployment}: {check} needs a reason");
            assert!(
                readme.contains(check),
                "README must say why {check} is skipped"
            );
        }
    }
    assert!(
        resources["Deployment/apiproxy-dataplane"]["spec"]["template"]["spec"]["containers"][0]
            ["resources"]["limits"]["cpu"]
            .is_null(),
        "CKV_K8S_11 is skipped because there is no CPU limit"
    );

    // The example overlay: the base, by digest, on a Sentinel set.
    let overlay = kustomize(&repo().join("deploy/k8s-overlays/example"));
    let names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| format!("{}/{}", s(&d["kind"]), s(&d["metadata"]["name"])))
            .collect()
    };
    assert_eq!(names(&overlay), resources.keys().cloned().collect());
    for d in overlay.iter().filter(|d| d["kind"] == "Deployment") {
        for c in containers(d) {
            let image = s(&c["image"]);
            let digest = image.split_once("@sha256:").map(|(_, d)| d);
            assert!(
                digest.is_some_and(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit())),
                "not pinned by digest: {image}"
            );
        }
    }
    let secret = overlay.iter().find(|d| d["kind"] == "Secret").unwrap();
    let url = s(&secret["stringData"]["API_PROXY_REDIS_URL"]);
    let (hosts, master) = url
        .strip_prefix("redis+sentinel://")
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or_else(|| panic!("not a Sentinel URL: {url}"));
    assert_eq!(master, "apiproxy");
    assert_eq!(hosts.split(',').count(), 3, "{hosts}");
    assert!(hosts.split(',').all(|h| h.ends_with(":26379")), "{hosts}");

    // CI runs checkov, pinned, bounded, with this configuration.
    let ci = read(".ci/run");
    assert!(ci.contains("\"checkov=="), "checkov pinned in .ci/run");
    assert!(
        ci.contains("timeout 300 target/ci-checkov/bin/checkov --config-file deploy/.checkov.yaml"),
        ".ci/run runs checkov"
    );
    let config = yaml("deploy/.checkov.yaml");
    assert_eq!(config["directory"], json!(["deploy"]));
    assert!(config["soft-fail"].is_null() && config["skip-check"].is_null());
}
