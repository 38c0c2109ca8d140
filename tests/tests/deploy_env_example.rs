//! `.env.example`: every variable either binary reads, with its default and
//! a one-line meaning, every variable `docker-compose.yml` interpolates,
//! and no secret that works (the control plane refuses the placeholder).

use std::collections::{BTreeMap, BTreeSet};

use apiproxy_tests::deploy::{accepted, assert_refused, read, PLACEHOLDER};

/// Names of every variable a YAML text interpolates (comments aside).
fn interpolated_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = text.as_str();
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let r = rest.strip_prefix('{').unwrap_or(rest);
        let len = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        if len > 0 {
            names.insert(r[..len].to_owned());
        }
        rest = r;
    }
    names
}

/// `NAME=value` and `# NAME=value` lines: name → (value, active, the
/// comment line above).
fn env_example() -> BTreeMap<String, (String, bool, String)> {
    let text = read(".env.example");
    let mut out = BTreeMap::new();
    let mut previous = String::new();
    for line in text.lines() {
        let (body, active) = match line.strip_prefix("# ") {
            Some(rest) => (rest, false),
            None => (line, true),
        };
        let is_assignment = body.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if is_assignment {
            let (k, v) = body.split_once('=').unwrap();
            assert!(
                out.insert(k.to_owned(), (v.to_owned(), active, previous.clone()))
                    .is_none(),
                ".env.example lists {k} twice"
            );
        } else {
            assert!(
                !active || line.is_empty() || line.starts_with('#'),
                "stray line in .env.example: {line}"
            );
        }
        previous = line.to_owned();
    }
    out
}

#[test]
fn env_example_lists_every_variable_with_its_default_and_no_working_secret() {
    let example = env_example();
    for bin in ["apiproxy-dataplane", "apiproxy-controlplane"] {
        let acc = accepted(bin);
        for (name, default) in &acc.vars {
            let (value, _, comment) = example
                .get(name)
                .unwrap_or_else(|| panic!(".env.example does not list {name} ({bin})"));
            assert!(
                comment.starts_with("# ") && !comment.contains('='),
                "{name}: a one-line meaning above it, got {comment:?}"
            );
            if let Some(default) = default {
                assert_eq!(
                    value, default,
                    ".env.example shows {name}={value}, the default is {default}"
                );
            }
        }
    }
    // Only the secrets are set, and none of them works.
    let active: BTreeSet<&str> = example
        .iter()
        .filter(|(_, v)| v.1)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        active,
        BTreeSet::from(["ADMIN_TOKEN", "API_PROXY_NODE_TOKEN", "REDIS_PASSWORD"])
    );
    assert_eq!(example["ADMIN_TOKEN"].0, PLACEHOLDER);
    assert_eq!(example["API_PROXY_NODE_TOKEN"].0, "");
    assert_eq!(example["REDIS_PASSWORD"].0, "");
    assert_refused(
        "apiproxy-controlplane",
        &[
            ("ADMIN_TOKEN".into(), example["ADMIN_TOKEN"].0.clone()),
            ("API_PROXY_REDIS_URL".into(), "redis://127.0.0.1:1/".into()),
        ],
        "placeholder",
    );

    // Every variable docker-compose.yml interpolates is documented, and
    // every documented one is read by a binary or by compose.
    let compose_names = interpolated_names(&read("docker-compose.yml"));
    for name in &compose_names {
        assert!(
            example.contains_key(name),
            "docker-compose.yml uses {name}: add it to .env.example"
        );
    }
    for name in example.keys() {
        let known = compose_names.contains(name)
            || accepted("apiproxy-dataplane").has(name)
            || accepted("apiproxy-controlplane").has(name);
        assert!(known, ".env.example lists {name}, which nothing reads");
    }
}
