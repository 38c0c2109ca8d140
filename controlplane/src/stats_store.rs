//! Cluster stats in Redis (SPEC §5, §6): each data-plane batch applied
//! exactly once, and the reads behind `/stats`, `/api/nodes` and `/metrics`.
//!
//! A batch is applied by one Lua script, so the dedup check and every write
//! it implies happen atomically: two control-plane replicas (or one
//! replica racing with itself) can never both apply the same `(node_id,
//! boot_id, seq)`. Which writes a batch implies is decided in Rust
//! ([`writes`]), where it is unit-tested; the script only checks the
//! sequence number and then runs the writes.
//!
//! Layout (`{p}` is the Redis prefix):
//! - `{p}:stats:seq:{node_id}:{boot_id}` string: last applied seq (7 days).
//! - `{p}:stats:totals` hash: total, errors, cancelled, unmatched,
//!   bytes_in, bytes_out.
//! - `{p}:stats:endpoint:{prefix}` hash (+ set `{p}:stats:endpoints`):
//!   count, error_count, cancelled, bytes_in, bytes_out, latency_sum_ms,
//!   last_request (unix ms), `1xx`…`5xx`, latency buckets `l0`…`l18`,
//!   TTFB buckets `t0`…`t18`.
//! - `{p}:stats:minute:{t}` (25 h) and `{p}:stats:hour:{t}` (31 days)
//!   hashes: `c`, `e`, `b0`…`b18` over all endpoints, and the same with
//!   the prefix appended (`c/openai`) per endpoint.
//! - `{p}:stats:requests` list: the newest requests as runs
//!   `"{unix s} {count} {prefix}"`, one per endpoint per batch, oldest
//!   first, the newest 10,000 runs kept.
//! - `{p}:stats:failed` list: the fleet's newest failed requests, newest
//!   first, each a [`FailedRecord`] JSON; the newest 1,000 kept.
//! - `{p}:stats:key:{id}` hash: one proxy key's usage, `{prefix}|requests`,
//!   `{prefix}|errors`, `{prefix}|bytes_in`, `{prefix}|bytes_out`,
//!   `{prefix}|1xx`…`{prefix}|5xx`; `{p}:keys:last-used` hash: id → the
//!   newest `sent_at` of a batch that carried its usage; and the key's
//!   `key:{id}:requests`, `key:{id}:errors` in the hour buckets. Written
//!   only while `{p}:keys` holds the key.
//! - `{p}:stats:go_import` string: the Go version's stats were imported.
//! - `{p}:node:{node_id}` hash (1 h, refreshed by each batch) and the set
//!   `{p}:nodes`.

mod go_import;
mod key_usage;
mod writes;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::stats::{BUCKETS, STATUS_CLASSES};
use apiproxy_shared::{FailedRequest, RedisKeys, StatsBatch};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::redis_conn::RedisConn;

pub(crate) use key_usage::{PrefixUsage, UsagePoint};
pub(crate) use writes::{parse_request_run, MAX_DELTA};

/// Series buckets `/stats` returns: 24 h of minutes, 30 days of hours.
pub(crate) const MINUTE_BUCKETS: u64 = 1440;
pub(crate) const HOUR_BUCKETS: u64 = 720;

/// Longest a stats batch waits for a replica to confirm it holds it.
pub(crate) const REPLICA_WAIT: Duration = Duration::from_secs(1);

/// Field names shared by the writes and the reads.
mod field {
    pub(super) const LAST_REQUEST: &str = "last_request";
    pub(super) const REQUESTS_TOTAL: &str = "requests_total";

    pub(super) fn latency(i: usize) -> String {
        format!("l{i}")
    }

    pub(super) fn ttfb(i: usize) -> String {
        format!("t{i}")
    }

    pub(super) fn series_bucket(i: usize) -> String {
        format!("b{i}")
    }

    /// A counter of a key's usage hash: `{prefix}|{counter}`.
    pub(super) fn key_counter(prefix: &str, counter: &str) -> String {
        format!("{prefix}|{counter}")
    }

    /// A key's requests or errors in an hour bucket.
    pub(super) fn key_series(key_id: &str, counter: &str) -> String {
        format!("key:{key_id}:{counter}")
    }
}

/// Whether an acknowledged stats batch survives the loss of the Redis
/// primary (`GET /api/nodes`, `stats_durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Durability {
    /// The primary has a connected replica: a batch is acknowledged only
    /// once `WAIT` confirmed a replica holds it.
    Replicated,
    /// No replica: a batch is acknowledged once the primary holds it, and
    /// a failover (or losing the primary) can lose the newest ones.
    PrimaryOnly,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    New,
    /// Its seq was already applied for this node and boot: nothing written.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// The batch would add more than [`MAX_DELTA`] to a counter (400).
    #[error("`{0}` adds more than 2^50 in one batch")]
    TooLarge(String),
    /// Applied on the primary, but no replica confirmed it within
    /// [`REPLICA_WAIT`] (503: the node keeps the batch and sends it again,
    /// a repeat the primary recognises).
    #[error("the stats batch is not yet confirmed by a Redis replica; send it again")]
    NotReplicated,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One failed request as kept in `{p}:stats:failed`: what the node sent
/// (a [`FailedRequest`]) and which node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct FailedRecord {
    pub(crate) node_id: String,
    /// When the request started, unix milliseconds.
    pub(crate) time: u64,
    /// The data plane's request id (`X-Request-Id`), to search its logs with.
    pub(crate) request_id: String,
    /// The mapping prefix, or `none` for a request no mapping took.
    pub(crate) prefix: String,
    pub(crate) status: u16,
    /// The proxy's error type (SPEC §3 `type`, or `cancelled`); absent for
    /// an upstream's own 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error_type: Option<String>,
    pub(crate) duration_ms: u64,
}

impl FailedRecord {
    pub(crate) fn new(node_id: &str, r: &FailedRequest) -> FailedRecord {
        FailedRecord {
            node_id: node_id.to_owned(),
            time: r.time,
            request_id: r.request_id.clone(),
            prefix: r.prefix.clone(),
            status: r.status,
            error_type: r.error_type.clone(),
            duration_ms: r.duration_ms,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a FailedRecord always serializes")
    }
}

/// A hash as read back: field → value.
pub(crate) type Counters = HashMap<String, String>;

/// One number of a hash read back; missing or unreadable counts as 0
/// (a hand-edited value should not take the whole page down).
pub(crate) fn num(hash: &Counters, field: &str) -> u64 {
    hash.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One endpoint's totals since the stats began.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EndpointTotals {
    pub(crate) count: u64,
    pub(crate) error_count: u64,
    pub(crate) cancelled: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) latency_sum_ms: u64,
    /// Unix ms of the last batch that carried a request; 0: none.
    pub(crate) last_request: u64,
    /// Per class, in [`STATUS_CLASSES`] order.
    pub(crate) status: [u64; STATUS_CLASSES.len()],
    pub(crate) latency: [u64; BUCKETS],
    pub(crate) ttfb: [u64; BUCKETS],
}

impl EndpointTotals {
    fn from_hash(h: &Counters) -> EndpointTotals {
        EndpointTotals {
            count: num(h, "count"),
            error_count: num(h, "error_count"),
            cancelled: num(h, "cancelled"),
            bytes_in: num(h, "bytes_in"),
            bytes_out: num(h, "bytes_out"),
            latency_sum_ms: num(h, "latency_sum_ms"),
            last_request: num(h, field::LAST_REQUEST),
            status: STATUS_CLASSES.map(|class| num(h, class)),
            latency: std::array::from_fn(|i| num(h, &field::latency(i))),
            ttfb: std::array::from_fn(|i| num(h, &field::ttfb(i))),
        }
    }
}

/// What a node last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    pub(crate) node_id: String,
    pub(crate) boot_id: String,
    pub(crate) seq: u64,
    pub(crate) config_version: u64,
    pub(crate) config_hash: String,
    /// Unix ms of its last applied batch.
    pub(crate) last_seen: u64,
    pub(crate) inflight: u64,
    pub(crate) rss_bytes: u64,
    pub(crate) uptime_s: u64,
    pub(crate) requests_total: u64,
    pub(crate) tasks: u64,
}

impl NodeRecord {
    fn from_hash(node_id: String, h: &Counters) -> NodeRecord {
        let text = |f: &str| h.get(f).cloned().unwrap_or_default();
        NodeRecord {
            node_id,
            boot_id: text("boot_id"),
            seq: num(h, "seq"),
            config_version: num(h, "config_version"),
            config_hash: text("config_hash"),
            last_seen: num(h, "last_seen"),
            inflight: num(h, "inflight"),
            rss_bytes: num(h, "rss_bytes"),
            uptime_s: num(h, "uptime_s"),
            requests_total: num(h, field::REQUESTS_TOTAL),
            tasks: num(h, "tasks"),
        }
    }
}

/// One series bucket (minute or hour) that holds anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeriesBucket {
    /// Bucket start, unix seconds.
    pub(crate) t: u64,
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) latency: [u64; BUCKETS],
}

/// The series `/stats` shows, oldest first, and the two newest minutes'
/// request counts over all endpoints (for the request rate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Series {
    pub(crate) minute: Vec<SeriesBucket>,
    pub(crate) hour: Vec<SeriesBucket>,
    pub(crate) this_minute: u64,
    pub(crate) last_minute: u64,
}

/// What [`StatsStore::import_go_stats`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GoImport {
    /// No Go stats in this Redis.
    Nothing,
    /// Imported now; the summary (JSON) and the warnings of what was skipped.
    Imported(String, Vec<String>),
    /// Imported (or skipped) before.
    Done,
    /// Our totals were not empty: not imported, and never will be.
    Skipped,
}

/// The stats and node registry of one Redis namespace.
#[derive(Clone)]
pub(crate) struct StatsStore {
    conn: RedisConn,
    keys: RedisKeys,
    apply: Script,
    /// The [`Durability`] last seen (0: none yet), so a change is logged
    /// once rather than with every batch.
    durability: Arc<AtomicU8>,
}

impl StatsStore {
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> StatsStore {
        StatsStore {
            conn,
            keys: RedisKeys::new(prefix),
            apply: Script::new(writes::APPLY),
            durability: Arc::new(AtomicU8::new(0)),
        }
    }

    /// Applies `batch` once (one EVALSHA); a repeat of an applied
    /// `(node_id, boot_id, seq)` writes nothing new. When the primary has
    /// a replica, the batch counts as applied only once `WAIT` confirms a
    /// replica holds it (a repeat included: its first application may not
    /// have reached one).
    pub(crate) async fn apply(
        &self,
        batch: &StatsBatch,
        now_ms: u64,
    ) -> Result<Applied, ApplyError> {
        let writes = writes::plan(&self.keys, batch, now_ms);
        if let Some(field) = writes.too_large {
            return Err(ApplyError::TooLarge(field));
        }
        let outcome: String = match self.durability().await? {
            Durability::PrimaryOnly => self.run(&self.apply, &writes).await?,
            Durability::Replicated => {
                // One pipeline, so the WAIT goes down the connection that
                // wrote: it waits for this client's writes.
                let invocation = invocation(&self.apply, &writes);
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation)
                    .cmd("WAIT")
                    .arg(1)
                    .arg(REPLICA_WAIT.as_millis() as u64);
                let mut conn = self.conn.clone();
                let (outcome, confirmed): (String, u64) = match pipe.query_async(&mut conn).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        invocation.load_async(&mut conn).await?;
                        pipe.query_async(&mut conn).await?
                    }
                    result => result?,
                };
                if confirmed == 0 {
                    return Err(ApplyError::NotReplicated);
                }
                outcome
            }
        };
        Ok(if outcome == "duplicate" {
            Applied::Duplicate
        } else {
            Applied::New
        })
    }

    /// Whether the primary has a connected replica now (`ROLE`); a change
    /// since the last look is logged.
    pub(crate) async fn durability(&self) -> redis::RedisResult<Durability> {
        let role: redis::Role = redis::cmd("ROLE")
            .query_async(&mut self.conn.clone())
            .await?;
        let now = match role {
            redis::Role::Primary { replicas, .. } if !replicas.is_empty() => Durability::Replicated,
            _ => Durability::PrimaryOnly,
        };
        let code = now as u8 + 1;
        if self.durability.swap(code, Ordering::Relaxed) != code {
            match now {
                Durability::Replicated => tracing::info!(
                    "the Redis primary has a replica: a stats batch is acknowledged once a replica holds it"
                ),
                Durability::PrimaryOnly => tracing::warn!(
                    "the Redis primary has no replica: stats batches are acknowledged once the primary holds them, so losing the primary loses the newest (GET /api/nodes: stats_durability)"
                ),
            }
        }
        Ok(now)
    }

    /// The cluster totals and every endpoint's, sorted by prefix (two
    /// round trips: the set of endpoints, then their hashes).
    pub(crate) async fn endpoints(
        &self,
    ) -> redis::RedisResult<(Counters, BTreeMap<String, EndpointTotals>)> {
        let mut conn = self.conn.clone();
        let (totals, prefixes): (Counters, Vec<String>) = redis::pipe()
            .hgetall(&self.keys.stats_totals)
            .smembers(&self.keys.stats_endpoints)
            .query_async(&mut conn)
            .await?;
        let hashes = self
            .hashes(prefixes.iter().map(|p| self.keys.stats_endpoint(p)))
            .await?;
        let endpoints = prefixes
            .into_iter()
            .zip(hashes)
            .map(|(prefix, h)| (prefix, EndpointTotals::from_hash(&h)))
            .collect();
        Ok((totals, endpoints))
    }

    /// Imports the Go version's saved stats once, while our totals are
    /// empty (see [`go_import`]). Without Go stats, nothing is written.
    pub(crate) async fn import_go_stats(&self, now_ms: u64) -> redis::RedisResult<GoImport> {
        // The marker is checked by the script alone, atomically with the
        // writes: the Go keys are read (and warned about) on every start
        // while they exist (the Go version gave them 7 days).
        let mut warnings = Vec::new();
        let mut text = Vec::new();
        for key in go_import::GO_KEYS {
            text.push(self.go_string(key, &mut warnings).await?);
        }
        let endpoints = match text[2].take() {
            Some(t) => serde_json::from_str(&t).ok().or_else(|| {
                warnings.push(format!("{}: not JSON, skipped", go_import::GO_KEYS[2]));
                None
            }),
            None => self.go_endpoint_hash(&mut warnings).await?,
        };
        let mut go = go_import::GoStats::parse(
            text[0].as_deref(),
            text[1].as_deref(),
            endpoints,
            text[3].as_deref(),
        );
        warnings.append(&mut go.warnings);
        if go.is_empty() {
            for warning in &warnings {
                tracing::warn!("Go stats import: {warning}");
            }
            return Ok(GoImport::Nothing);
        }
        let writes = go.plan(&self.keys, now_ms, crate::store::AUDIT_MAX_LEN);
        let import = Script::new(go_import::IMPORT);
        let outcome = self.run(&import, &writes).await?;
        Ok(match outcome.as_str() {
            "imported" => GoImport::Imported(go.summary(now_ms), warnings),
            "skipped" => GoImport::Skipped,
            _ => GoImport::Done,
        })
    }

    /// A Go key read as a string; `None` when absent or another type
    /// (a warning then, except for `stats:endpoints`, which may be a hash).
    async fn go_string(
        &self,
        key: &str,
        warnings: &mut Vec<String>,
    ) -> redis::RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
        match kind.as_str() {
            "string" => redis::cmd("GET").arg(key).query_async(&mut conn).await,
            "none" => Ok(None),
            _ if key == go_import::GO_KEYS[2] && kind == "hash" => Ok(None),
            _ => {
                warnings.push(format!("{key}: a Redis {kind}, not a string, skipped"));
                Ok(None)
            }
        }
    }

    /// `stats:endpoints` as a hash of per-endpoint JSON objects, read as
    /// the one JSON object the Go version wrote; `None` when not a hash.
    async fn go_endpoint_hash(
        &self,
        warnings: &mut Vec<String>,
    ) -> redis::RedisResult<Option<serde_json::Value>> {
        let key = go_import::GO_KEYS[2];
        let mut conn = self.conn.clone();
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
        if kind != "hash" {
            return Ok(None);
        }
        let hash: Counters = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        let mut map = serde_json::Map::new();
        for (prefix, text) in hash {
            match serde_json::from_str(&text) {
                Ok(v) => {
                    map.insert(prefix, v);
                }
                Err(_) => warnings.push(format!("{key}: {prefix:?} is not JSON, skipped")),
            }
        }
        Ok(Some(serde_json::Value::Object(map)))
    }

    /// The runs of the newest requests, oldest first (as stored: see
    /// [`writes::request_run`]).
    pub(crate) async fn request_runs(&self) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("LRANGE")
            .arg(&self.keys.stats_requests)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
    }

    /// The newest `limit` of the failed requests kept, newest first by
    /// their `time`. The list holds them in the order their batches
    /// arrived, which two nodes' push intervals (or a node resending after
    /// an outage) interleave, so the whole list (at most
    /// [`apiproxy_shared::FAILED_KEPT`]) is read and sorted before it is
    /// cut. Entries that do not parse (edited by hand) are left out.
    pub(crate) async fn failed(&self, limit: usize) -> redis::RedisResult<Vec<FailedRecord>> {
        let mut conn = self.conn.clone();
        let stored: Vec<String> = redis::cmd("LRANGE")
            .arg(&self.keys.stats_failed)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut records: Vec<FailedRecord> = stored
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect();
        // Stable: requests of the same millisecond keep their arrival order.
        records.sort_by_key(|r| std::cmp::Reverse(r.time));
        records.truncate(limit);
        Ok(records)
    }

    /// Every node still registered, sorted by id, and the current mappings
    /// version. Ids whose hash has expired are dropped from the set here.
    pub(crate) async fn nodes(&self) -> redis::RedisResult<(Vec<NodeRecord>, u64)> {
        let mut conn = self.conn.clone();
        let (mut ids, version): (Vec<String>, Option<u64>) = redis::pipe()
            .smembers(&self.keys.nodes)
            .get(&self.keys.version)
            .query_async(&mut conn)
            .await?;
        ids.sort();
        let hashes = self.hashes(ids.iter().map(|id| self.keys.node(id))).await?;
        let mut gone = Vec::new();
        let mut nodes = Vec::new();
        for (id, h) in ids.into_iter().zip(hashes) {
            if h.is_empty() {
                gone.push(id);
            } else {
                nodes.push(NodeRecord::from_hash(id, &h));
            }
        }
        // A node that pushes again between the read and this SREM drops out
        // of the set until its next batch adds it back (seconds later).
        if !gone.is_empty() {
            let _: () = redis::cmd("SREM")
                .arg(&self.keys.nodes)
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
        Ok((nodes, version.unwrap_or(0)))
    }

    /// Runs `script` with the KEYS and ARGV of `writes`; its reply.
    async fn run(&self, script: &Script, writes: &writes::Writes) -> redis::RedisResult<String> {
        invocation(script, writes)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// HGETALL of every key, in one round trip.
    async fn hashes(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> redis::RedisResult<Vec<Counters>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hgetall(key);
        }
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }

    /// The last 24 h of minutes and 30 days of hours up to `now_s`, of
    /// one endpoint or (`None`) all of them, in one round trip: HMGET of
    /// just the fields needed, never the whole (per-endpoint) hashes.
    pub(crate) async fn series(
        &self,
        now_s: u64,
        endpoint: Option<&str>,
    ) -> redis::RedisResult<Series> {
        let suffix = endpoint.unwrap_or("");
        let mut fields = vec![format!("c{suffix}"), format!("e{suffix}")];
        fields.extend((0..BUCKETS).map(|i| format!("{}{suffix}", field::series_bucket(i))));
        let minutes = bucket_starts(now_s, 60, MINUTE_BUCKETS);
        let hours = bucket_starts(now_s, 3600, HOUR_BUCKETS);
        let mut pipe = redis::pipe();
        for &t in &minutes {
            pipe.cmd("HMGET")
                .arg(self.keys.stats_minute(t))
                .arg(&fields);
        }
        for &t in &hours {
            pipe.cmd("HMGET").arg(self.keys.stats_hour(t)).arg(&fields);
        }
        let this_minute = minutes[minutes.len() - 1];
        for t in [this_minute, this_minute.saturating_sub(60)] {
            pipe.cmd("HGET").arg(self.keys.stats_minute(t)).arg("c");
        }
        let mut conn = self.conn.clone();
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let rate: Vec<Option<u64>> = replies
            .split_off(minutes.len() + hours.len())
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()?;
        let hour_replies = replies.split_off(minutes.len());
        Ok(Series {
            minute: buckets_from(&minutes, replies)?,
            hour: buckets_from(&hours, hour_replies)?,
            this_minute: rate[0].unwrap_or(0),
            last_minute: rate[1].unwrap_or(0),
        })
    }
}

/// `script` with the KEYS and ARGV of `writes`.
fn invocation<'a>(script: &'a Script, writes: &writes::Writes) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in &writes.keys {
        invocation.key(key);
    }
    for arg in &writes.args {
        invocation.arg(arg);
    }
    invocation
}

/// Starts of the `n` buckets of `width` seconds up to the one holding
/// `now_s`, oldest first.
fn bucket_starts(now_s: u64, width: u64, n: u64) -> Vec<u64> {
    let newest = now_s / width * width;
    (0..n)
        .rev()
        .filter_map(|back| newest.checked_sub(back * width))
        .collect()
}

/// The non-empty buckets among HMGET replies of `c`, `e`, `b0`…`b18`.
fn buckets_from(
    starts: &[u64],
    replies: Vec<redis::Value>,
) -> redis::RedisResult<Vec<SeriesBucket>> {
    let mut out = Vec::new();
    for (&t, reply) in starts.iter().zip(replies) {
        let values: Vec<Option<u64>> = redis::from_redis_value(reply)?;
        let count = values[0].unwrap_or(0);
        if count == 0 {
            continue;
        }
        out.push(SeriesBucket {
            t,
            count,
            errors: values[1].unwrap_or(0),
            latency: std::array::from_fn(|i| values[2 + i].unwrap_or(0)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_are_aligned_and_oldest_first() {
        assert_eq!(bucket_starts(125, 60, 3), vec![0, 60, 120]);
        assert_eq!(bucket_starts(59, 60, 3), vec![0], "never before the epoch");
        assert_eq!(bucket_starts(7200, 3600, 2), vec![3600, 7200]);
    }
}
