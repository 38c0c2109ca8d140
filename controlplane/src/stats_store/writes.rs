//! What applying one batch writes (the layout is in the parent module),
//! decided in Rust and unit-tested here; the Lua script [`APPLY`] checks
//! the sequence number and then runs the list, all atomically.

use std::collections::BTreeMap;
use std::time::Duration;

use apiproxy_shared::redis_keys::REQUEST_RUNS;
use apiproxy_shared::{EndpointDelta, KeyUsage, RedisKeys, StatsBatch, FAILED_KEPT};

use super::{field, FailedRecord};

// How long each key is kept after the last batch that wrote it.
const SEQ_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const NODE_TTL: Duration = Duration::from_secs(3600);
const MINUTE_TTL: Duration = Duration::from_secs(25 * 3600);
const HOUR_TTL: Duration = Duration::from_secs(31 * 24 * 3600);

/// Most one batch may add to any one counter. Redis counters are signed
/// 64-bit and HINCRBY fails on overflow (a failed script is not rolled
/// back), so each batch is bounded far below that: 8192 batches at the
/// limit before a counter could overflow, where a real node adds a few
/// thousand per batch.
pub(crate) const MAX_DELTA: u64 = 1 << 50;

/// The Lua function `run(op, key, a, b)` that performs one write of a
/// [`Writes`] list; it returns an error reply for an unknown op.
macro_rules! run_op {
    () => {
        r"
local function run(op, key, a, b)
  if op == 'incr' then redis.call('HINCRBY', key, a, b)
  elseif op == 'set' then redis.call('HSET', key, a, b)
  elseif op == 'max' then
    local old = tonumber(redis.call('HGET', key, a))
    if not old or old < tonumber(b) then redis.call('HSET', key, a, b) end
  elseif op == 'add' then redis.call('SADD', key, a)
  elseif op == 'expire' then redis.call('EXPIRE', key, a)
  elseif op == 'push' then redis.call('RPUSH', key, a)
  elseif op == 'keep' then redis.call('LTRIM', key, -tonumber(a), -1)
  elseif op == 'push_front' then redis.call('LPUSH', key, a)
  elseif op == 'keep_front' then redis.call('LTRIM', key, 0, tonumber(a) - 1)
  else return redis.error_reply('unknown op ' .. op) end
end"
    };
}
pub(super) use run_op;

// KEYS[1]: the seq key; KEYS[2]: the node hash; then the keys the writes
// name by index. ARGV[1]: seq; ARGV[2]: seq TTL (s); ARGV[3]: boot_id;
// then the writes, four arguments each: op, key index, field or member
// (or TTL for `expire`), value. [`plan`] builds both lists. The op
// `only_if` (field, n) is the script's own: the next n writes are skipped
// unless the hash holds the field (see [`Writes::only_if`]).
//
// Sequence numbers are compared as decimal strings (length, then bytes)
// because Lua numbers are doubles and a u64 seq may not fit one.
pub(super) const APPLY: &str = concat!(
    run_op!(),
    r"
local function le(a, b) return #a < #b or (#a == #b and a <= b) end
local last = redis.call('GET', KEYS[1])
if last and le(ARGV[1], last) then
  -- A write, so a WAIT after this repeat covers its first application
  -- (made on this primary, perhaps through an earlier connection).
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 'duplicate'
end
-- Recorded before the writes: should one fail, the rest of this batch is
-- lost rather than its first part counted twice when the node resends.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
-- requests_total counts since the node booted.
if redis.call('HGET', KEYS[2], 'boot_id') ~= ARGV[3] then
  redis.call('HDEL', KEYS[2], 'requests_total')
end
local i = 4
while i <= #ARGV do
  local op, key, a, b = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if op == 'only_if' then
    if redis.call('HEXISTS', key, a) == 0 then i = i + 4 * tonumber(b) end
  else
    local err = run(op, key, a, b)
    if err then return err end
  end
end
return 'applied'"
);

/// The writes one batch implies, in order, as the script's KEYS and ARGV.
#[derive(Debug, Default)]
pub(super) struct Writes {
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<String>,
    /// The first counter that would grow by more than [`MAX_DELTA`].
    pub(super) too_large: Option<String>,
}

impl Writes {
    /// Declares a key; returns its 1-based index for the script.
    pub(super) fn key(&mut self, name: String) -> usize {
        self.keys.push(name);
        self.keys.len()
    }

    fn op(&mut self, op: &str, key: usize, a: &str, b: String) {
        self.args
            .extend([op.to_owned(), key.to_string(), a.to_owned(), b]);
    }

    /// HINCRBY, left out when there is nothing to add.
    pub(super) fn incr(&mut self, key: usize, field: &str, by: u64) {
        if by > MAX_DELTA && self.too_large.is_none() {
            self.too_large = Some(field.to_owned());
        }
        if by > 0 {
            self.op("incr", key, field, by.to_string());
        }
    }

    pub(super) fn set(&mut self, key: usize, field: &str, value: impl ToString) {
        self.op("set", key, field, value.to_string());
    }

    /// HSET unless the field already holds a larger number.
    fn max(&mut self, key: usize, field: &str, value: u64) {
        self.op("max", key, field, value.to_string());
    }

    /// The writes `writes` adds take effect only if hash `key` holds
    /// `field` when the script reaches them (checked there, atomically
    /// with them); nothing is added when they are none.
    fn only_if(&mut self, key: usize, field: &str, writes: impl FnOnce(&mut Writes)) {
        let at = self.args.len();
        self.op("only_if", key, field, String::new());
        writes(self);
        let guarded = (self.args.len() - at) / 4 - 1;
        if guarded == 0 {
            self.args.truncate(at);
        } else {
            self.args[at + 3] = guarded.to_string();
        }
    }

    pub(super) fn add(&mut self, key: usize, member: &str) {
        self.op("add", key, member, String::new());
    }

    fn expire(&mut self, key: usize, ttl: Duration) {
        self.op("expire", key, &ttl.as_secs().to_string(), String::new());
    }

    /// RPUSH of one element.
    pub(super) fn push(&mut self, key: usize, value: &str) {
        self.op("push", key, value, String::new());
    }

    /// LTRIM to the newest `n` elements.
    pub(super) fn keep(&mut self, key: usize, n: usize) {
        self.op("keep", key, &n.to_string(), String::new());
    }

    /// LPUSH of one element: a list kept newest first.
    fn push_front(&mut self, key: usize, value: &str) {
        self.op("push_front", key, value, String::new());
    }

    /// LTRIM to the first `n` elements (the newest of a
    /// [`Writes::push_front`] list).
    fn keep_front(&mut self, key: usize, n: usize) {
        self.op("keep_front", key, &n.to_string(), String::new());
    }
}

/// One run of [`RedisKeys::stats_requests`]: `count` requests to `prefix`
/// in second `t`.
pub(crate) fn request_run(t: u64, count: u64, prefix: &str) -> String {
    format!("{t} {count} {prefix}")
}

/// A run read back; `None` for one that is not `"{t} {count} {prefix}"`.
pub(crate) fn parse_request_run(run: &str) -> Option<(u64, u64, &str)> {
    let mut parts = run.splitn(3, ' ');
    let t = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    let prefix = parts.next().filter(|p| p.starts_with('/'))?;
    Some((t, count, prefix))
}

/// Counters of one endpoint's hash that a delta adds to.
fn endpoint_counters(e: &EndpointDelta) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = [
        ("count", e.requests),
        ("error_count", e.errors),
        ("cancelled", e.cancelled),
        ("bytes_in", e.bytes_in),
        ("bytes_out", e.bytes_out),
        ("latency_sum_ms", e.latency_sum_ms),
    ]
    .into_iter()
    .map(|(f, n)| (f.to_owned(), n))
    .collect();
    out.extend(e.status.iter().map(|(class, n)| (class.clone(), *n)));
    out.extend(buckets(&e.latency_buckets, field::latency));
    out.extend(buckets(&e.ttfb_buckets, field::ttfb));
    out
}

/// Counters of a key's usage hash that one [`KeyUsage`] adds to.
fn key_counters(k: &KeyUsage) -> Vec<(String, u64)> {
    [
        ("requests", k.requests),
        ("errors", k.errors),
        ("bytes_in", k.bytes_in),
        ("bytes_out", k.bytes_out),
    ]
    .into_iter()
    .chain(k.status.iter().map(|(class, n)| (class.as_str(), *n)))
    .map(|(counter, n)| (field::key_counter(&k.prefix, counter), n))
    .collect()
}

/// What one batch adds for one key: its usage hash's counters, and its
/// requests and errors for the series.
#[derive(Default)]
struct KeySums {
    counters: BTreeMap<String, u64>,
    requests: u64,
    errors: u64,
}

/// Counters of a series bucket (minute or hour) that a delta adds to.
fn series_counters(e: &EndpointDelta) -> Vec<(String, u64)> {
    let mut out = vec![("c".to_owned(), e.requests), ("e".to_owned(), e.errors)];
    out.extend(buckets(&e.latency_buckets, field::series_bucket));
    out
}

fn buckets<'a>(
    counts: &'a [u64],
    name: fn(usize) -> String,
) -> impl Iterator<Item = (String, u64)> + 'a {
    counts.iter().enumerate().map(move |(i, n)| (name(i), *n))
}

/// Adds `pairs` into `sums`, saturating (a saturated sum is over the limit).
fn accumulate(sums: &mut BTreeMap<String, u64>, pairs: &[(String, u64)]) {
    for (field, n) in pairs {
        let sum = sums.entry(field.clone()).or_default();
        *sum = sum.saturating_add(*n);
    }
}

/// The writes that apply `batch` at `now_ms` (the control plane's clock).
/// Series buckets are chosen by that clock, not by `sent_at`: a batch
/// resent after an outage lands in the minute it is applied.
pub(super) fn plan(keys: &RedisKeys, batch: &StatsBatch, now_ms: u64) -> Writes {
    let now_s = now_ms / 1000;
    let mut w = Writes {
        args: vec![
            batch.seq.to_string(),
            SEQ_TTL.as_secs().to_string(),
            batch.boot_id.clone(),
        ],
        ..Writes::default()
    };
    w.key(keys.stats_seq(&batch.node_id, &batch.boot_id));
    let node = w.key(keys.node(&batch.node_id));
    let nodes = w.key(keys.nodes.clone());
    let totals = w.key(keys.stats_totals.clone());
    let endpoints = w.key(keys.stats_endpoints.clone());
    let minute = w.key(keys.stats_minute(now_s / 60 * 60));
    let hour = w.key(keys.stats_hour(now_s / 3600 * 3600));
    let requests_list = w.key(keys.stats_requests.clone());

    let mut sums = BTreeMap::new();
    let mut series_sums = BTreeMap::new();
    for (prefix, e) in &batch.endpoints {
        let counters = endpoint_counters(e);
        let series = series_counters(e);
        accumulate(&mut sums, &counters);
        accumulate(&mut series_sums, &series);
        let hash = w.key(keys.stats_endpoint(prefix));
        w.add(endpoints, prefix);
        for (f, n) in &counters {
            w.incr(hash, f, *n);
        }
        if e.requests > 0 {
            w.set(hash, field::LAST_REQUEST, now_ms);
            w.push(requests_list, &request_run(now_s, e.requests, prefix));
        }
        for (f, n) in &series {
            let per_endpoint = format!("{f}{prefix}");
            w.incr(minute, &per_endpoint, *n);
            w.incr(hour, &per_endpoint, *n);
        }
    }
    let sum = |f: &str| sums.get(f).copied().unwrap_or(0);
    let requests = sum("count");
    for (f, n) in [
        ("total", requests),
        ("errors", sum("error_count")),
        ("cancelled", sum("cancelled")),
        ("unmatched", batch.unmatched),
        ("bytes_in", sum("bytes_in")),
        ("bytes_out", sum("bytes_out")),
    ] {
        w.incr(totals, f, n);
    }
    for (f, n) in &series_sums {
        w.incr(minute, f, *n);
        w.incr(hour, f, *n);
    }
    key_usage(&mut w, keys, batch, hour);
    w.expire(minute, MINUTE_TTL);
    w.expire(hour, HOUR_TTL);
    if requests > 0 {
        w.keep(requests_list, REQUEST_RUNS);
    }

    w.set(node, "boot_id", &batch.boot_id);
    w.set(node, "seq", batch.seq);
    w.set(node, "config_version", batch.config_version);
    w.set(node, "config_hash", &batch.config_hash);
    w.set(node, "last_seen", now_ms);
    w.set(node, "inflight", batch.gauges.inflight);
    w.set(node, "rss_bytes", batch.gauges.rss_bytes);
    w.set(node, "uptime_s", batch.gauges.uptime_s);
    w.set(node, "tasks", batch.gauges.tasks);
    w.incr(
        node,
        field::REQUESTS_TOTAL,
        requests.saturating_add(batch.unmatched),
    );
    w.expire(node, NODE_TTL);
    w.add(nodes, &batch.node_id);

    // The batch lists them oldest first: pushed in that order onto the
    // front, the newest ends up first.
    if !batch.failed.is_empty() {
        let failed = w.key(keys.stats_failed.clone());
        for request in &batch.failed {
            w.push_front(
                failed,
                &FailedRecord::new(&batch.node_id, request).to_json(),
            );
        }
        w.keep_front(failed, FAILED_KEPT);
    }
    w
}

/// The writes of the batch's key usage: per key, its counters, its last
/// use (`sent_at`) and its requests and errors in the hour bucket, all
/// dropped when the key is not in `{p}:keys` (deleted since the node
/// counted them). Must come before the hour bucket's EXPIRE: a bucket
/// these writes create would otherwise never expire.
fn key_usage(w: &mut Writes, keys: &RedisKeys, batch: &StatsBatch, hour: usize) {
    if batch.keys.is_empty() {
        return;
    }
    let mut per_key: BTreeMap<&str, KeySums> = BTreeMap::new();
    for k in &batch.keys {
        let sums = per_key.entry(&k.key_id).or_default();
        accumulate(&mut sums.counters, &key_counters(k));
        sums.requests = sums.requests.saturating_add(k.requests);
        sums.errors = sums.errors.saturating_add(k.errors);
    }
    let records = w.key(keys.keys.clone());
    let last_used = w.key(keys.keys_last_used.clone());
    for (id, sums) in per_key {
        let usage = w.key(keys.stats_key(id));
        w.only_if(records, id, |w| {
            for (f, n) in &sums.counters {
                w.incr(usage, f, *n);
            }
            w.max(last_used, id, batch.sent_at);
            w.incr(hour, &field::key_series(id, "requests"), sums.requests);
            w.incr(hour, &field::key_series(id, "errors"), sums.errors);
        });
    }
}

#[cfg(test)]
mod tests {
    use apiproxy_shared::stats::BUCKETS;
    use apiproxy_shared::{FailedRequest, Gauges};

    use super::*;

    fn delta(requests: u64, bucket: usize) -> EndpointDelta {
        let mut latency_buckets = vec![0; BUCKETS];
        latency_buckets[bucket] = requests;
        EndpointDelta {
            requests,
            errors: 1,
            status: BTreeMap::from([("2xx".to_owned(), requests - 1), ("5xx".to_owned(), 1)]),
            bytes_in: 10,
            latency_buckets,
            ttfb_buckets: vec![0; BUCKETS],
            ..EndpointDelta::default()
        }
    }

    fn batch() -> StatsBatch {
        StatsBatch {
            node_id: "dp-1".into(),
            boot_id: "boot".into(),
            seq: 7,
            sent_at: 0,
            interval_s: 2.0,
            config_version: 3,
            config_hash: "h".into(),
            gauges: Gauges {
                inflight: 2,
                rss_bytes: 1000,
                uptime_s: 5,
                tasks: 9,
            },
            unmatched: 4,
            endpoints: BTreeMap::from([
                ("/a".to_owned(), delta(3, 2)),
                ("/b".to_owned(), delta(5, 2)),
            ]),
            failed: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// The writes as (op, key, field, value) for assertions.
    fn ops(w: &Writes) -> Vec<(String, String, String, String)> {
        assert_eq!(w.args[..3], ["7", "604800", "boot"]);
        w.args[3..]
            .chunks(4)
            .map(|c| {
                let key = w.keys[c[1].parse::<usize>().unwrap() - 1].clone();
                (c[0].clone(), key, c[2].clone(), c[3].clone())
            })
            .collect()
    }

    fn has(w: &Writes, op: &str, key: &str, field: &str, value: &str) -> bool {
        ops(w)
            .iter()
            .any(|o| o == &(op.into(), key.into(), field.into(), value.into()))
    }

    #[test]
    fn a_batch_writes_totals_endpoints_series_and_the_node() {
        let keys = RedisKeys::new("p");
        let now_ms = 1_700_000_123_456;
        let w = plan(&keys, &batch(), now_ms);
        assert_eq!(w.keys[0], "p:stats:seq:dp-1:boot");
        assert_eq!(w.keys[1], "p:node:dp-1");
        assert!(w.too_large.is_none());
        for (op, key, field, value) in [
            ("incr", "p:stats:totals", "total", "8"),
            ("incr", "p:stats:totals", "errors", "2"),
            ("incr", "p:stats:totals", "unmatched", "4"),
            ("incr", "p:stats:totals", "bytes_in", "20"),
            ("add", "p:stats:endpoints", "/a", ""),
            ("incr", "p:stats:endpoint:/a", "count", "3"),
            ("incr", "p:stats:endpoint:/a", "5xx", "1"),
            ("incr", "p:stats:endpoint:/b", "l2", "5"),
            (
                "set",
                "p:stats:endpoint:/b",
                "last_request",
                "1700000123456",
            ),
            ("incr", "p:stats:minute:1700000100", "c", "8"),
            ("incr", "p:stats:minute:1700000100", "b2", "8"),
            ("incr", "p:stats:minute:1700000100", "c/a", "3"),
            ("incr", "p:stats:hour:1699999200", "e/b", "1"),
            ("expire", "p:stats:minute:1700000100", "90000", ""),
            ("push", "p:stats:requests", "1700000123 3 /a", ""),
            ("push", "p:stats:requests", "1700000123 5 /b", ""),
            ("keep", "p:stats:requests", "10000", ""),
            ("set", "p:node:dp-1", "tasks", "9"),
            ("set", "p:node:dp-1", "config_version", "3"),
            ("set", "p:node:dp-1", "last_seen", "1700000123456"),
            ("incr", "p:node:dp-1", "requests_total", "12"),
            ("expire", "p:node:dp-1", "3600", ""),
            ("add", "p:nodes", "dp-1", ""),
        ] {
            assert!(has(&w, op, key, field, value), "{op} {key} {field} {value}");
        }
        // Zero counters are not written at all.
        assert!(!ops(&w).iter().any(|o| o.2 == "cancelled" || o.2 == "t0"));
    }

    #[test]
    fn request_runs_round_trip_and_odd_ones_are_refused() {
        assert_eq!(request_run(12, 3, "/a b"), "12 3 /a b");
        assert_eq!(parse_request_run("12 3 /a b"), Some((12, 3, "/a b")));
        for odd in ["", "12", "12 3", "x 3 /a", "12 x /a", "12 3 a", "-1 3 /a"] {
            assert_eq!(parse_request_run(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn a_batch_without_requests_pushes_no_run() {
        let mut b = batch();
        b.endpoints.clear();
        let w = plan(&RedisKeys::new("p"), &b, 1_000);
        assert!(!ops(&w).iter().any(|o| o.0 == "push" || o.0 == "keep"));
    }

    fn failed(time: u64, error_type: Option<&str>) -> FailedRequest {
        FailedRequest {
            time,
            request_id: format!("req-{time}"),
            prefix: "/a".into(),
            status: 502,
            error_type: error_type.map(str::to_owned),
            duration_ms: 12,
        }
    }

    #[test]
    fn failed_requests_go_newest_first_with_the_node_and_are_trimmed() {
        let mut b = batch();
        b.failed = vec![failed(1, Some("upstream_connect")), failed(2, None)];
        let w = plan(&RedisKeys::new("p"), &b, 1_000);
        let on_failed: Vec<_> = ops(&w)
            .into_iter()
            .filter(|o| o.1 == "p:stats:failed")
            .map(|o| (o.0, o.2))
            .collect();
        // Pushed oldest first onto the front: the newest ends up first.
        assert_eq!(
            on_failed,
            [
                (
                    "push_front".to_owned(),
                    r#"{"node_id":"dp-1","time":1,"request_id":"req-1","prefix":"/a","status":502,"error_type":"upstream_connect","duration_ms":12}"#
                        .to_owned()
                ),
                (
                    "push_front".to_owned(),
                    r#"{"node_id":"dp-1","time":2,"request_id":"req-2","prefix":"/a","status":502,"duration_ms":12}"#
                        .to_owned()
                ),
                ("keep_front".to_owned(), "1000".to_owned()),
            ]
        );
        // Round trip: what is stored reads back as the record.
        let stored: FailedRecord = serde_json::from_str(&on_failed[0].1).unwrap();
        assert_eq!(stored, FailedRecord::new("dp-1", &b.failed[0]));
    }

    #[test]
    fn a_batch_without_failed_requests_leaves_the_list_alone() {
        let w = plan(&RedisKeys::new("p"), &batch(), 1_000);
        assert!(!w.keys.iter().any(|k| k == "p:stats:failed"));
        assert!(!ops(&w).iter().any(|o| o.0.ends_with("_front")));
    }

    fn usage(key_id: &str, prefix: &str, requests: u64, errors: u64) -> KeyUsage {
        KeyUsage {
            key_id: key_id.into(),
            prefix: prefix.into(),
            requests,
            errors,
            status: BTreeMap::from([
                ("2xx".to_owned(), requests - errors),
                ("5xx".to_owned(), errors),
            ]),
            bytes_in: 10,
            bytes_out: 20,
        }
    }

    #[test]
    fn key_usage_is_written_only_while_the_key_exists() {
        let a = "key_00000000000000aa";
        let b = "key_00000000000000bb";
        let mut batch = batch();
        batch.sent_at = 1_700_000_000;
        batch.keys = vec![
            usage(a, "/a", 3, 1),
            usage(a, "/b", 2, 0),
            usage(b, "/a", 1, 0),
            usage(a, "/a", 1, 0),
        ];
        let w = plan(&RedisKeys::new("p"), &batch, 1_700_000_123_456);
        let ops = ops(&w);
        let hour = "p:stats:hour:1699999200";
        let key_a = "p:stats:key:key_00000000000000aa";
        let guarded: Vec<_> = ops
            .iter()
            .skip_while(|o| o.0 != "only_if" || o.2 != a)
            .map(|o| (o.0.as_str(), o.1.as_str(), o.2.as_str(), o.3.as_str()))
            .collect();
        let expected = [
            ("only_if", "p:keys", a, "13"),
            // The same key and prefix twice in a batch: added up.
            ("incr", key_a, "/a|2xx", "3"),
            ("incr", key_a, "/a|5xx", "1"),
            ("incr", key_a, "/a|bytes_in", "20"),
            ("incr", key_a, "/a|bytes_out", "40"),
            ("incr", key_a, "/a|errors", "1"),
            ("incr", key_a, "/a|requests", "4"),
            ("incr", key_a, "/b|2xx", "2"),
            ("incr", key_a, "/b|bytes_in", "10"),
            ("incr", key_a, "/b|bytes_out", "20"),
            ("incr", key_a, "/b|requests", "2"),
            ("max", "p:keys:last-used", a, "1700000000"),
            ("incr", hour, "key:key_00000000000000aa:requests", "6"),
            ("incr", hour, "key:key_00000000000000aa:errors", "1"),
            ("only_if", "p:keys", b, "6"),
        ];
        assert_eq!(guarded[..expected.len()], expected);
        // Every guarded write comes before the buckets' EXPIRE.
        let expire = ops.iter().position(|o| o.0 == "expire" && o.1 == hour);
        let last_key_write = ops.iter().rposition(|o| o.2.starts_with("key:"));
        let (Some(expire), Some(last_key_write)) = (expire, last_key_write) else {
            panic!("no EXPIRE of {hour} or no key write: {ops:?}");
        };
        assert!(last_key_write < expire);
        assert!(w.too_large.is_none());
    }

    #[test]
    fn a_batch_without_key_usage_names_no_key() {
        let w = plan(&RedisKeys::new("p"), &batch(), 1_000);
        assert!(!w.keys.iter().any(|k| k.starts_with("p:keys")));
        assert!(!ops(&w).iter().any(|o| o.0 == "only_if" || o.0 == "max"));
    }

    #[test]
    fn a_guard_over_nothing_is_left_out() {
        let mut w = Writes::default();
        w.only_if(1, "f", |w| w.incr(2, "zero", 0));
        assert!(w.args.is_empty());
        w.only_if(1, "f", |w| w.incr(2, "one", 1));
        assert_eq!(w.args[..4], ["only_if", "1", "f", "1"]);
    }

    #[test]
    fn an_oversized_counter_is_named() {
        let mut b = batch();
        b.endpoints.get_mut("/a").unwrap().bytes_out = MAX_DELTA;
        assert!(plan(&RedisKeys::default(), &b, 0).too_large.is_none());
        b.endpoints.get_mut("/b").unwrap().bytes_out = 1;
        let w = plan(&RedisKeys::default(), &b, 0);
        assert_eq!(w.too_large.as_deref(), Some("bytes_out"));
    }
}
