//! `API_PROXY_SNAPSHOT_CACHE`: the last snapshot applied from Redis, kept on
//! disk so a node that boots while Redis is down can still serve. Written
//! atomically (temp file + rename, mode 0600) with its version and a
//! checksum; a file whose checksum does not match is refused whole.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use apiproxy_shared::content_hash;
use serde::{Deserialize, Serialize};

/// What the cache file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CachedSnapshot {
    pub(crate) version: u64,
    /// [`content_hash`] of `mappings`: the checksum.
    pub(crate) hash: String,
    pub(crate) mappings: BTreeMap<String, String>,
    /// Proxy keys (id → record JSON) and policies (prefix → JSON): without
    /// them a node booting from the cache would serve keyed mappings
    /// openly. Absent from a cache an older node wrote (it had none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) keys: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) policies: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("snapshot cache {path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot cache {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("snapshot cache {path}: cannot write: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct SnapshotCache {
    path: PathBuf,
}

impl SnapshotCache {
    pub(crate) fn new(path: PathBuf) -> Self {
        SnapshotCache { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Reads and verifies the cache.
    pub(crate) fn load(&self) -> Result<CachedSnapshot, CacheError> {
        let bytes = std::fs::read(&self.path).map_err(|source| CacheError::Read {
            path: self.shown(),
            source,
        })?;
        let corrupt = |reason: String| CacheError::Corrupt {
            path: self.shown(),
            reason,
        };
        let cached: CachedSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let actual = content_hash(
            cached
                .mappings
                .iter()
                .map(|(p, t)| (p.as_str(), t.as_str())),
        );
        if actual != cached.hash {
            return Err(corrupt(format!(
                "checksum {} does not match its content ({actual})",
                cached.hash
            )));
        }
        Ok(cached)
    }

    /// Writes the cache atomically: a reader sees the old file or the new
    /// one, never a mix; only the owner can read it.
    pub(crate) fn store(&self, snapshot: &CachedSnapshot) -> Result<(), CacheError> {
        let err = |source| CacheError::Write {
            path: self.shown(),
            source,
        };
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let json = serde_json::to_vec(snapshot).expect("serialisable");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename itself is durable only once the directory is synced.
            match self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> CachedSnapshot {
        let mappings: BTreeMap<String, String> = [("/a".to_owned(), "http://x".to_owned())].into();
        let hash = content_hash(mappings.iter().map(|(p, t)| (p.as_str(), t.as_str())));
        CachedSnapshot {
            version: 7,
            hash,
            mappings,
            keys: Vec::new(),
            policies: Vec::new(),
        }
    }

    #[test]
    fn round_trip_with_owner_only_mode() {
        let dir = std::env::temp_dir().join(format!("apiproxy-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = SnapshotCache::new(dir.join("snap.json"));
        cache.store(&sample()).unwrap();
        assert_eq!(cache.load().unwrap(), sample());
        let mode = std::fs::metadata(cache.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        // A changed mapping without a matching checksum is refused.
        let text = std::fs::read_to_string(cache.path())
            .unwrap()
            .replace("http://x", "http://evil");
        std::fs::write(cache.path(), text).unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Corrupt { .. })));
        std::fs::write(cache.path(), "{trunc").unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
