//! The binary's command-line contract: configuration errors print one line
//! naming the setting and exit 64 before anything binds; --help and
//! --version exit 0.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiproxy-dataplane"));
    cmd.env_clear().current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_exit_zero() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--mappings-file",
        "--idle-timeout",
        "API_PROXY_TARGET_POLICY",
        "API_PROXY_ACCESS_LOG",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn configuration_errors_exit_64_with_one_line() {
    let mappings = std::env::temp_dir().join(format!("apiproxy-cli-{}.json", std::process::id()));
    std::fs::write(&mappings, r#"{"/a": "http://127.0.0.1:9"}"#).unwrap();
    let m = mappings.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&[], &[], "API_PROXY_MAPPINGS_FILE"),
        (
            &[],
            &[("API_PROXY_MAPPINGS_FILE", "/nonexistent/m.json")],
            "/nonexistent/m.json",
        ),
        (
            &["--mappings-file", "m.json"],
            &[("API_PROXY_CONNECT_TIMEOUT", "ten")],
            "--connect-timeout",
        ),
        (
            &["--mappings-file", "m.json"],
            &[("API_PROXY_LISTEN", "nowhere")],
            "--listen",
        ),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (
            &["--mappings-file", m, "--ca-file", "/nonexistent/ca.pem"],
            &[],
            "API_PROXY_CA_FILE",
        ),
        (&["--mappings-file", m], &[("PORT", "eighty")], "PORT"),
        (
            &["--mappings-file", m],
            &[("API_PROXY_ACCESS_LOG", "/nonexistent/dir/access.log")],
            "API_PROXY_ACCESS_LOG",
        ),
        (
            &["--mappings-file", m],
            &[("API_PROXY_ACCESS_LOG_SAMPLE", "2")],
            "--access-log-sample",
        ),
        (
            &["--mappings-file", m],
            &[("API_PROXY_ACCESS_LOG_FORMAT", "xml")],
            "--access-log-format",
        ),
    ];
    for (args, env, needle) in cases {
        let (code, _, err) = run(args, env);
        assert_eq!(code, 64, "{args:?} {env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let _ = std::fs::remove_file(mappings);
}
