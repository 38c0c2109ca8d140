//! Redis key and channel names (SPEC §4), all under one configurable prefix
//! (`API_PROXY_REDIS_PREFIX`, default `apiproxy`). The Go version used the
//! same names, so both can share one Redis.
//!
//! The `stats` and `node` keys are where the control plane aggregates the
//! data planes' pushes (SPEC §5, §6); every control-plane replica reads and
//! writes the same ones, so they are part of the contract too.

/// Default namespace of every key and channel.
pub const DEFAULT_PREFIX: &str = "apiproxy";

/// Runs kept in [`RedisKeys::stats_requests`]: each holds at least one
/// request, so they always cover the newest 10,000 requests.
pub const REQUEST_RUNS: usize = 10_000;

/// Failed requests kept in [`RedisKeys::stats_failed`] for the fleet.
pub const FAILED_KEPT: usize = 1_000;

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
    /// Hash: cluster-wide counters (total, errors, cancelled, unmatched,
    /// bytes_in, bytes_out).
    pub stats_totals: String,
    /// Set: every prefix that has a [`RedisKeys::stats_endpoint`] hash.
    pub stats_endpoints: String,
    /// List: the newest proxied requests as runs `"{unix s} {count}
    /// {prefix}"`, oldest first, at most [`REQUEST_RUNS`] of them.
    pub stats_requests: String,
    /// List: the fleet's newest failed requests, newest first, each a
    /// [`crate::FailedRequest`] JSON with the `node_id` that saw it; at
    /// most [`FAILED_KEPT`].
    pub stats_failed: String,
    /// String: set once the Go version's stats were imported (or found
    /// not to be importable); JSON saying what was done and when.
    pub stats_go_import: String,
    /// Set: node ids that have pushed; a member whose
    /// [`RedisKeys::node`] hash expired is gone.
    pub nodes: String,
    /// Hash: proxy key id → [`crate::access::KeyRecord`] JSON. Changed
    /// under the mappings' version and announced like a mapping.
    pub keys: String,
    /// Hash: SHA-256 hex of a proxy key's secret → its id.
    pub keys_by_hash: String,
    /// Hash: proxy key id → unix seconds of its last use the stats
    /// batches reported (coarse: a batch's `sent_at`). Kept apart from the
    /// records so that usage never looks like a key change to the nodes.
    pub keys_last_used: String,
    /// Hash: mapping prefix → [`crate::access::StoredPolicy`] JSON, the
    /// credential sealed. Changed under the mappings' version.
    pub policies: String,
    namespace: String,
}

impl RedisKeys {
    pub fn new(prefix: &str) -> RedisKeys {
        RedisKeys {
            mappings: format!("{prefix}:mappings"),
            version: format!("{prefix}:mappings:version"),
            updates: format!("{prefix}:mappings:updates"),
            audit: format!("{prefix}:audit"),
            stats_totals: format!("{prefix}:stats:totals"),
            stats_endpoints: format!("{prefix}:stats:endpoints"),
            stats_requests: format!("{prefix}:stats:requests"),
            stats_failed: format!("{prefix}:stats:failed"),
            stats_go_import: format!("{prefix}:stats:go_import"),
            nodes: format!("{prefix}:nodes"),
            keys: format!("{prefix}:keys"),
            keys_by_hash: format!("{prefix}:keys:by-hash"),
            keys_last_used: format!("{prefix}:keys:last-used"),
            policies: format!("{prefix}:policies"),
            namespace: prefix.to_owned(),
        }
    }

    /// Hash: one mapping prefix's counters and histograms.
    pub fn stats_endpoint(&self, prefix: &str) -> String {
        format!("{}:stats:endpoint:{prefix}", self.namespace)
    }

    /// String: the last `seq` applied from one boot of one node. A boot id
    /// never holds `:`, so the boot id is what follows the last `:`.
    pub fn stats_seq(&self, node_id: &str, boot_id: &str) -> String {
        format!("{}:stats:seq:{node_id}:{boot_id}", self.namespace)
    }

    /// Hash: the per-minute series bucket starting at `t` (unix seconds,
    /// a multiple of 60).
    pub fn stats_minute(&self, t: u64) -> String {
        format!("{}:stats:minute:{t}", self.namespace)
    }

    /// Hash: the per-hour series bucket starting at `t` (a multiple of 3600).
    pub fn stats_hour(&self, t: u64) -> String {
        format!("{}:stats:hour:{t}", self.namespace)
    }

    /// Hash: one proxy key's usage counters, fields `{prefix}|{counter}`
    /// (`requests`, `errors`, `bytes_in`, `bytes_out`, `1xx`…`5xx`).
    pub fn stats_key(&self, key_id: &str) -> String {
        format!("{}:stats:key:{key_id}", self.namespace)
    }

    /// Hash: what one node last reported.
    pub fn node(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.namespace)
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
        assert_eq!(k.keys, "apiproxy:keys");
        assert_eq!(k.keys_by_hash, "apiproxy:keys:by-hash");
        assert_eq!(k.keys_last_used, "apiproxy:keys:last-used");
        assert_eq!(k.policies, "apiproxy:policies");
        assert_eq!(k.stats_key("key_1"), "apiproxy:stats:key:key_1");
    }

    #[test]
    fn stats_names_follow_the_contract() {
        let k = RedisKeys::new("p");
        assert_eq!(k.stats_totals, "p:stats:totals");
        assert_eq!(k.stats_endpoints, "p:stats:endpoints");
        assert_eq!(k.stats_requests, "p:stats:requests");
        assert_eq!(k.stats_go_import, "p:stats:go_import");
        assert_eq!(k.nodes, "p:nodes");
        assert_eq!(k.stats_endpoint("/openai"), "p:stats:endpoint:/openai");
        assert_eq!(k.stats_seq("dp-1", "b-1"), "p:stats:seq:dp-1:b-1");
        assert_eq!(k.stats_minute(1_700_000_040), "p:stats:minute:1700000040");
        assert_eq!(k.stats_hour(1_699_999_200), "p:stats:hour:1699999200");
        assert_eq!(k.node("dp-1"), "p:node:dp-1");
    }
}
