//! `deploy/Dockerfile`: a multi-stage build whose dependency layer is
//! cached (the manifests and stubs first, the sources after), both
//! binaries, a non-root user, the binaries' default ports exposed and the
//! health-check program, which compiles as the image compiles it. The stub
//! step runs for real on a copy of the manifests.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use apiproxy_tests::deploy::{accepted, healthcheck, read, repo, run, PROXY_PORT};
use apiproxy_tests::TempDir;

fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("members = [...]");
    line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn dockerfile_builds_both_binaries_from_a_cached_dependency_layer() {
    let dockerfile = read("deploy/Dockerfile");
    // Instructions, with continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let last_from = froms.last().unwrap();
    assert!(
        last_from.contains("distroless") || last_from.contains("slim"),
        "small final image: {last_from}"
    );

    let builds: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("cargo build"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(builds.len(), 2, "a dependency build, then the real one");
    for &i in &builds {
        let l = lines[i];
        assert!(l.contains("--release") && l.contains("--locked"), "{l}");
        assert!(
            l.contains("-p apiproxy-dataplane") && l.contains("-p apiproxy-controlplane"),
            "{l}"
        );
    }
    // Before the first build: the manifests of every member, the lock file
    // and the stubs, and none of the sources.
    let before = &lines[..builds[0]];
    for member in workspace_members() {
        assert!(
            before
                .iter()
                .any(|l| *l == format!("COPY {member}/Cargo.toml {member}/")),
            "the dependency layer needs {member}/Cargo.toml"
        );
        assert!(
            !before
                .iter()
                .any(|l| l.starts_with(&format!("COPY {member} "))),
            "{member}'s sources must come after the dependency build"
        );
    }
    assert!(before
        .iter()
        .any(|l| l.starts_with("COPY Cargo.toml Cargo.lock")));
    assert!(lines[builds[0]].contains("sh deploy/stub-workspace.sh"));
    // The real build has every source the binaries compile, static/ (the
    // console, embedded) included.
    let between = &lines[builds[0]..builds[1]];
    for dir in ["shared", "startup", "dataplane", "controlplane", "static"] {
        assert!(
            between.iter().any(|l| *l == format!("COPY {dir} {dir}")),
            "COPY {dir}"
        );
    }
    assert!(read("controlplane/src/assets.rs").contains("../../static/"));

    // Non-root, the binaries' ports, the health check program.
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(!["root", "0", "0:0"].contains(&user.trim()), "USER {user}");
    let expose: BTreeSet<u16> = lines
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let expected = BTreeSet::from([
        PROXY_PORT,
        accepted("apiproxy-dataplane").default_port("API_PROXY_METRICS_LISTEN"),
        accepted("apiproxy-controlplane").default_port("API_PROXY_ADMIN_LISTEN"),
    ]);
    assert_eq!(expose, expected);
    let check = lines
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    assert!(
        check.contains("/usr/local/bin/apiproxy-healthcheck"),
        "{check}"
    );
    assert!(joined.contains("deploy/healthcheck.rs"));
    assert!(
        lines.last().unwrap().contains("apiproxy-dataplane"),
        "default command"
    );
    let _ = healthcheck(); // it compiles, warnings denied

    // The stub step on a copy of the manifests: Cargo accepts the
    // workspace and the lock file as they are (`--locked`), so the
    // dependency layer builds; a target the stubs miss would fail here.
    let tmp = TempDir::new("docker-stubs");
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo().join(file), tmp.path(file)).unwrap();
    }
    for member in workspace_members() {
        std::fs::create_dir_all(tmp.path(&member)).unwrap();
        std::fs::copy(
            repo().join(&member).join("Cargo.toml"),
            tmp.path(&member).join("Cargo.toml"),
        )
        .unwrap();
    }
    let (status, output) = run(
        Command::new("sh")
            .arg(repo().join("deploy/stub-workspace.sh"))
            .current_dir(&tmp.0),
        Duration::from_secs(10),
    );
    assert!(status.success(), "stub-workspace.sh: {output}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let (status, output) = run(
        Command::new(cargo)
            .args(["fetch", "--locked", "--offline"])
            .current_dir(&tmp.0),
        Duration::from_secs(60),
    );
    assert!(
        status.success(),
        "cargo fetch --locked on the stub workspace: {output}"
    );
}
