//! Standalone mode: mappings from a JSON or TOML file, re-read when it
//! changes. A file that cannot be read or parsed keeps the previous
//! snapshot, logs why and counts `apiproxy_config_reloads_total{result="error"}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::state::RoutingState;

/// How often the file's metadata is checked: changes apply within 1 s.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("API_PROXY_MAPPINGS_FILE: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API_PROXY_MAPPINGS_FILE: {path} is not a JSON or TOML object of prefix -> target: {reason}")]
    Parse { path: String, reason: String },
}

/// Reads and parses the file into raw `prefix -> target` entries
/// (validation happens when the snapshot is built).
pub(crate) fn read_entries(path: &Path) -> Result<BTreeMap<String, String>, FileError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown(),
        source,
    })?;
    parse_entries(&text, path).map_err(|reason| FileError::Parse {
        path: shown(),
        reason,
    })
}

/// `.toml` files are TOML, `.json` files JSON; any other name is tried as
/// JSON first, then TOML.
fn parse_entries(text: &str, path: &Path) -> Result<BTreeMap<String, String>, String> {
    let json = || serde_json::from_str::<BTreeMap<String, String>>(text).map_err(|e| e.to_string());
    let toml = || {
        // Only the message and the line number: toml's own rendering quotes
        // the offending line, which may hold a secret in a target.
        toml::from_str::<BTreeMap<String, String>>(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml(),
        Some("json") => json(),
        _ => json().or_else(|json_err| {
            toml().map_err(|toml_err| format!("as JSON: {json_err}; as TOML: {toml_err}"))
        }),
    }
}

/// What identifies one version of the file on disk.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The file source: the first load happens before the listeners bind (an
/// unreadable file is a configuration error), then [`FileSource::watch`]
/// follows changes until cancelled.
pub(crate) struct FileSource {
    path: PathBuf,
    state: Arc<RoutingState>,
    version: u64,
    last: Option<Stamp>,
    last_entries: BTreeMap<String, String>,
}

impl FileSource {
    /// Loads the file and applies it as version 1.
    pub(crate) fn load(path: PathBuf, state: Arc<RoutingState>) -> Result<FileSource, FileError> {
        let last = stamp(&path);
        let entries = read_entries(&path)?;
        let mut source = FileSource {
            path,
            state,
            version: 0,
            last,
            last_entries: BTreeMap::new(),
        };
        source.apply(entries);
        Ok(source)
    }

    fn apply(&mut self, entries: BTreeMap<String, String>) {
        self.version += 1;
        let snapshot = self.state.current().next(&entries, self.version);
        self.state.apply(snapshot);
        self.last_entries = entries;
    }

    /// Re-reads the file whenever its size, mtime or inode changes.
    pub(crate) async fn watch(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&self.path);
            if now == self.last {
                continue;
            }
            self.last = now;
            match read_entries(&self.path) {
                Ok(entries) if entries == self.last_entries => {}
                Ok(entries) => {
                    info!(path = %self.path.display(), "mappings file changed");
                    self.apply(entries);
                }
                Err(error) => {
                    warn!(%error, "keeping the previous mappings");
                    self.state.metrics.config_reload(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_toml() {
        let json = parse_entries(
            r#"{"/openai": "https://api.openai.com"}"#,
            Path::new("m.json"),
        )
        .unwrap();
        assert_eq!(json["/openai"], "https://api.openai.com");
        let toml = parse_entries(
            "\"/openai\" = \"https://api.openai.com\"\n",
            Path::new("m.toml"),
        )
        .unwrap();
        assert_eq!(toml, json);
        let guessed = parse_entries("\"/a\" = \"http://b\"", Path::new("mappings")).unwrap();
        assert_eq!(guessed["/a"], "http://b");
    }

    #[test]
    fn toml_errors_do_not_quote_the_file() {
        let text = "\"/a\" = \"https://user:secret@h\"\n\"/b\" = oops-secret\n";
        let err = parse_entries(text, Path::new("m.toml")).unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn rejects_non_string_values_and_garbage() {
        assert!(parse_entries(r#"{"/a": 1}"#, Path::new("m.json")).is_err());
        assert!(parse_entries("[1,2]", Path::new("m.json")).is_err());
        let err = parse_entries("{nope", Path::new("m")).unwrap_err();
        assert!(err.contains("as JSON") && err.contains("as TOML"), "{err}");
    }
}
