//! Redis key and channel names (SPEC §4), all under one configurable prefix
//! (`API_PROXY_REDIS_PREFIX`, default `apiproxy`). The Go version used the
//! same names, so both can share one Redis.

/// Default namespace of every key and channel.
pub const DEFAULT_PREFIX: &str = "apiproxy";

/// The names of everything apiproxy keeps in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeys {
    /// Hash: prefix → target.
    pub mappings: String,
    /// String (integer): bumped by every change, in the change's transaction.
    pub version: String,
    /// Pub/sub channel: announced after every change.
    pub updates: String,
    /// Stream: one entry per change.
    pub audit: String,
}

impl RedisKeys {
    pub fn new(prefix: &str) -> RedisKeys {
        RedisKeys {
            mappings: format!("{prefix}:mappings"),
            version: format!("{prefix}:mappings:version"),
            updates: format!("{prefix}:mappings:updates"),
            audit: format!("{prefix}:audit"),
        }
    }
}

impl Default for RedisKeys {
    fn default() -> Self {
        RedisKeys::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let k = RedisKeys::default();
        assert_eq!(k.mappings, "apiproxy:mappings");
        assert_eq!(k.version, "apiproxy:mappings:version");
        assert_eq!(k.updates, "apiproxy:mappings:updates");
        assert_eq!(k.audit, "apiproxy:audit");
        assert_eq!(RedisKeys::new("team-a").mappings, "team-a:mappings");
    }
}
