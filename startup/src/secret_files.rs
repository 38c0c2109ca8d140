//! Secrets from files: `NAME_FILE=/path` instead of `NAME=value` for the
//! variables that hold secrets, so that a Kubernetes Secret or a Docker
//! secret can be mounted as a file rather than passed in the environment
//! (where `/proc/<pid>/environ`, crash reports and `docker inspect` show
//! it).

use std::collections::HashMap;

use crate::ConfigError;

/// The variables that may hold a secret, in either binary.
pub const SECRET_VARS: [&str; 4] = [
    "ADMIN_TOKEN",
    "API_PROXY_NODE_TOKEN",
    "API_PROXY_SECRETS_KEY",
    "API_PROXY_REDIS_URL",
];

/// Reads each `NAME_FILE` of [`SECRET_VARS`] into `NAME` in `env`: the
/// file's content without its final line break. Setting both is an error,
/// as is a file that cannot be read; the error names the variable and the
/// path, never the content.
pub fn read_secret_files(env: &mut HashMap<String, String>) -> Result<(), ConfigError> {
    for name in SECRET_VARS {
        let file_var = format!("{name}_FILE");
        let Some(path) = env.get(&file_var).filter(|p| !p.is_empty()).cloned() else {
            continue;
        };
        if env.get(name).is_some_and(|v| !v.is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "{name} and {file_var} are both set: set one"
            )));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::Invalid(format!("{file_var}: cannot read {path}: {e}")))?;
        let value = text
            .strip_suffix('\n')
            .map(|v| v.strip_suffix('\r').unwrap_or(v))
            .unwrap_or(&text);
        env.insert(name.to_owned(), value.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_file_fills_its_variable_without_the_final_line_break() {
        let dir = std::env::temp_dir().join(format!("secret-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "a-very-long-admin-token\n").unwrap();
        let url = dir.join("url");
        std::fs::write(&url, "redis://:p@h:6379/0\r\n").unwrap();
        let mut e = env(&[
            ("ADMIN_TOKEN_FILE", token.to_str().unwrap()),
            ("API_PROXY_REDIS_URL_FILE", url.to_str().unwrap()),
            ("API_PROXY_NODE_TOKEN", "kept"),
        ]);
        read_secret_files(&mut e).unwrap();
        assert_eq!(e["ADMIN_TOKEN"], "a-very-long-admin-token");
        assert_eq!(e["API_PROXY_REDIS_URL"], "redis://:p@h:6379/0");
        assert_eq!(e["API_PROXY_NODE_TOKEN"], "kept");

        let mut both = env(&[
            ("ADMIN_TOKEN", "x"),
            ("ADMIN_TOKEN_FILE", token.to_str().unwrap()),
        ]);
        let err = read_secret_files(&mut both).unwrap_err().to_string();
        assert!(err.contains("both set"), "{err}");

        let missing = dir.join("missing");
        let mut gone = env(&[("API_PROXY_SECRETS_KEY_FILE", missing.to_str().unwrap())]);
        let err = read_secret_files(&mut gone).unwrap_err().to_string();
        assert!(
            err.starts_with("API_PROXY_SECRETS_KEY_FILE: cannot read"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
