//! The binary's command line for the secrets key: `gen-secrets-key` prints
//! one and needs nothing else; an invalid `API_PROXY_SECRETS_KEY` is a
//! configuration error (exit 64, one line naming it) before anything binds
//! or reaches Redis.

use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiproxy-controlplane"));
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .args(args)
        .envs(env.iter().copied());
    let out = cmd.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gen_secrets_key_prints_a_fresh_key_with_no_other_configuration() {
    let (code, out, err) = run(&["gen-secrets-key"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let bytes = STANDARD.decode(out.trim_end()).expect("base64");
    assert_eq!(bytes.len(), 32);
    let (_, again, _) = run(&["gen-secrets-key"], &[]);
    assert_ne!(out, again);
    // What it prints is what the control plane takes: the configuration
    // is read past it, to the (zero) node timeout checked after it.
    let (code, _, err) = run(
        &[
            "--redis-url",
            "redis://127.0.0.1:1/",
            "--node-timeout",
            "0s",
        ],
        &[
            ("ADMIN_TOKEN", "a-very-long-admin-token"),
            ("API_PROXY_SECRETS_KEY", out.trim_end()),
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("API_PROXY_NODE_TIMEOUT"), "{err}");
}

#[test]
fn an_invalid_secrets_key_exits_64_naming_it() {
    let short = STANDARD.encode([7u8; 16]);
    for bad in ["not base64!", short.as_str()] {
        let (code, out, err) = run(
            &[],
            &[
                ("API_PROXY_REDIS_URL", "redis://127.0.0.1:1/"),
                ("ADMIN_TOKEN", "a-very-long-admin-token"),
                ("API_PROXY_SECRETS_KEY", bad),
            ],
        );
        assert_eq!(code, 64, "{bad}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("API_PROXY_SECRETS_KEY must be 32 bytes in base64"),
            "{err}"
        );
        assert!(!err.contains(bad), "the value is not echoed: {err}");
    }
}
