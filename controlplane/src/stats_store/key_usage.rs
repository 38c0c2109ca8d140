//! Reads of the per-key usage the batches add (see [`super::writes`]):
//! one key's counters per prefix and its hourly series, for
//! `GET /api/keys/{id}/usage`, and every existing key's counters, for
//! `/metrics`.

use std::collections::BTreeMap;

use apiproxy_shared::stats::STATUS_CLASSES;
use serde::Serialize;

use super::{bucket_starts, field, num, Counters, StatsStore};

/// Hourly points of a key's series: the last 24 hours.
pub(crate) const KEY_SERIES_HOURS: u64 = 24;

/// One key's usage of one prefix since its stats began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct PrefixUsage {
    pub(crate) prefix: String,
    pub(crate) requests: u64,
    /// 5xx responses and upstream failures, as the endpoints count them.
    pub(crate) errors: u64,
    /// Body bytes received from clients.
    pub(crate) bytes_in: u64,
    /// Body bytes sent to clients.
    pub(crate) bytes_out: u64,
    /// Requests by status class, every class (`1xx`…`5xx`) present.
    #[schema(example = json!({"1xx": 0, "2xx": 41, "3xx": 0, "4xx": 1, "5xx": 2}))]
    pub(crate) status: BTreeMap<String, u64>,
}

/// One hour of a key's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct UsagePoint {
    /// Start of the hour, unix seconds.
    pub(crate) t: u64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

/// A usage hash (fields `{prefix}|{counter}`) as one entry per prefix,
/// sorted by prefix. Prefixes may hold `|`; counters never do. Fields of
/// another shape (edited by hand) are left out.
pub(crate) fn usage_by_prefix(hash: &Counters) -> Vec<PrefixUsage> {
    let mut prefixes: Vec<&str> = hash
        .keys()
        .filter_map(|f| f.rsplit_once('|'))
        .map(|(prefix, _)| prefix)
        .filter(|p| p.starts_with('/'))
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    prefixes
        .into_iter()
        .map(|prefix| {
            let n = |counter: &str| num(hash, &field::key_counter(prefix, counter));
            PrefixUsage {
                prefix: prefix.to_owned(),
                requests: n("requests"),
                errors: n("errors"),
                bytes_in: n("bytes_in"),
                bytes_out: n("bytes_out"),
                status: STATUS_CLASSES
                    .iter()
                    .map(|class| ((*class).to_owned(), n(class)))
                    .collect(),
            }
        })
        .collect()
}

impl StatsStore {
    /// One key's usage per prefix and its last [`KEY_SERIES_HOURS`] hours
    /// up to `now_s`, oldest first, zeros where nothing was counted; `None`
    /// when `{p}:keys` does not hold the key. One round trip.
    pub(crate) async fn key_usage(
        &self,
        key_id: &str,
        now_s: u64,
    ) -> redis::RedisResult<Option<(Vec<PrefixUsage>, Vec<UsagePoint>)>> {
        let hours = bucket_starts(now_s, 3600, KEY_SERIES_HOURS);
        let fields = [
            field::key_series(key_id, "requests"),
            field::key_series(key_id, "errors"),
        ];
        let mut pipe = redis::pipe();
        pipe.hexists(&self.keys.keys, key_id)
            .hgetall(self.keys.stats_key(key_id));
        for &t in &hours {
            pipe.cmd("HMGET").arg(self.keys.stats_hour(t)).arg(&fields);
        }
        let mut conn = self.conn.clone();
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let series = replies.split_off(2);
        let mut head = replies.into_iter();
        let exists: bool = redis::from_redis_value(head.next().expect("two replies"))?;
        if !exists {
            return Ok(None);
        }
        let usage: Counters = redis::from_redis_value(head.next().expect("two replies"))?;
        let mut points = Vec::with_capacity(hours.len());
        for (&t, reply) in hours.iter().zip(series) {
            let values: Vec<Option<u64>> = redis::from_redis_value(reply)?;
            let value = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
            points.push(UsagePoint {
                t,
                requests: value(0),
                errors: value(1),
            });
        }
        Ok(Some((usage_by_prefix(&usage), points)))
    }

    /// Every key in `{p}:keys` that has usage, by id, with its usage per
    /// prefix (two round trips: the ids, then their hashes).
    pub(crate) async fn all_key_usage(
        &self,
    ) -> redis::RedisResult<BTreeMap<String, Vec<PrefixUsage>>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("HKEYS")
            .arg(&self.keys.keys)
            .query_async(&mut conn)
            .await?;
        let hashes = self
            .hashes(ids.iter().map(|id| self.keys.stats_key(id)))
            .await?;
        Ok(ids
            .into_iter()
            .zip(hashes)
            .map(|(id, h)| (id, usage_by_prefix(&h)))
            .filter(|(_, usage)| !usage.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_hash_reads_back_per_prefix() {
        let hash: Counters = [
            ("/b|requests", "2"),
            ("/a|x|requests", "3"),
            ("/a|x|4xx", "3"),
            ("/b|2xx", "2"),
            ("/b|bytes_out", "9"),
            ("odd", "1"),
            ("not-a-prefix|requests", "1"),
        ]
        .into_iter()
        .map(|(f, v)| (f.to_owned(), v.to_owned()))
        .collect();
        let usage = usage_by_prefix(&hash);
        assert_eq!(
            usage.iter().map(|u| u.prefix.as_str()).collect::<Vec<_>>(),
            ["/a|x", "/b"]
        );
        assert_eq!(usage[0].requests, 3);
        assert_eq!(usage[0].status["4xx"], 3);
        assert_eq!(usage[0].status.len(), STATUS_CLASSES.len());
        assert_eq!((usage[1].bytes_out, usage[1].status["2xx"]), (9, 2));
        assert_eq!(usage[1].errors, 0);
    }
}
