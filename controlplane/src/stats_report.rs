//! The `/stats` body and the node list, computed from what the
//! [`StatsStore`](crate::stats_store::StatsStore) reads. Pure functions,
//! so the arithmetic (quantiles, rates, node states) is tested without
//! Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use apiproxy_shared::stats::{quantile, BUCKETS};

use crate::model::{
    EndpointStats, NodeCounts, NodeInfo, NodeState, Performance, SeriesPoint, SeriesReport,
    StatsReport,
};
use crate::stats_store::{num, Counters, EndpointTotals, NodeRecord, Series, SeriesBucket};

/// What a node's record says about it at `now_ms`.
pub(crate) fn node_state(
    node: &NodeRecord,
    now_ms: u64,
    timeout: Duration,
    version: u64,
) -> NodeState {
    if now_ms.saturating_sub(node.last_seen) > timeout.as_millis() as u64 {
        NodeState::Down
    } else if node.config_version != version {
        NodeState::Stale
    } else {
        NodeState::Up
    }
}

/// The node list of `GET /api/nodes`, in the order given (by id).
pub(crate) fn node_list(
    records: Vec<NodeRecord>,
    now_ms: u64,
    timeout: Duration,
    version: u64,
) -> Vec<NodeInfo> {
    records
        .into_iter()
        .map(|n| NodeInfo {
            state: node_state(&n, now_ms, timeout, version),
            node_id: n.node_id,
            boot_id: n.boot_id,
            config_version: n.config_version,
            config_hash: n.config_hash,
            last_seen: n.last_seen,
            inflight: n.inflight,
            rss_bytes: n.rss_bytes,
            requests_total: n.requests_total,
            uptime_s: n.uptime_s,
        })
        .collect()
}

pub(crate) fn node_counts(nodes: &[NodeInfo]) -> NodeCounts {
    let mut counts = NodeCounts::default();
    for n in nodes {
        *match n.state {
            NodeState::Up => &mut counts.up,
            NodeState::Stale => &mut counts.stale,
            NodeState::Down => &mut counts.down,
        } += 1;
    }
    counts
}

/// Rounded to the microsecond: the estimates are not more precise, and
/// `0.247` reads better than `0.24700000000000003`.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `q` quantile of a histogram in ms; 0 when it is empty.
fn quantile_ms(buckets: &[u64], q: f64) -> f64 {
    quantile(buckets, q).map_or(0.0, |s| round3(s * 1000.0))
}

/// Requests per second over the last 60 s: the current (partial) minute
/// plus the share of the previous minute the window still covers.
fn requests_per_sec(this_minute: u64, last_minute: u64, now_ms: u64) -> f64 {
    let into_minute = (now_ms % 60_000) as f64 / 60_000.0;
    round3((this_minute as f64 + last_minute as f64 * (1.0 - into_minute)) / 60.0)
}

fn endpoint_stats(e: &EndpointTotals) -> EndpointStats {
    EndpointStats {
        count: e.count,
        error_count: e.error_count,
        last_request: e.last_request,
        p50_ms: quantile_ms(&e.latency, 0.5),
        p99_ms: quantile_ms(&e.latency, 0.99),
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
    }
}

fn series_points(buckets: &[SeriesBucket]) -> Vec<SeriesPoint> {
    buckets
        .iter()
        .map(|b| SeriesPoint {
            t: b.t,
            count: b.count,
            errors: b.errors,
            p99_ms: quantile_ms(&b.latency, 0.99),
        })
        .collect()
}

fn performance(
    totals: &Counters,
    endpoints: &BTreeMap<String, EndpointTotals>,
    nodes: &[NodeInfo],
    series: &Series,
    now_ms: u64,
) -> Performance {
    let mut latency = [0u64; BUCKETS];
    let (mut count, mut latency_sum_ms) = (0u64, 0u64);
    for e in endpoints.values() {
        for (sum, n) in latency.iter_mut().zip(e.latency) {
            *sum = sum.saturating_add(n);
        }
        count = count.saturating_add(e.count);
        latency_sum_ms = latency_sum_ms.saturating_add(e.latency_sum_ms);
    }
    let (total, errors) = (num(totals, "total"), num(totals, "errors"));
    let rss: u64 = nodes
        .iter()
        .filter(|n| n.state != NodeState::Down)
        .map(|n| n.rss_bytes)
        .sum();
    Performance {
        requests_per_sec: requests_per_sec(series.this_minute, series.last_minute, now_ms),
        avg_response_time_ms: if count == 0 {
            0.0
        } else {
            round3(latency_sum_ms as f64 / count as f64)
        },
        p99_response_time_ms: quantile_ms(&latency, 0.99),
        error_rate: if total == 0 {
            0.0
        } else {
            round3(errors as f64 / total as f64 * 100.0)
        },
        memory_usage_mb: round3(rss as f64 / (1024.0 * 1024.0)),
    }
}

/// The `/stats` body at `now_ms`.
pub(crate) fn report(
    totals: &Counters,
    endpoints: &BTreeMap<String, EndpointTotals>,
    nodes: &[NodeInfo],
    series: &Series,
    now_ms: u64,
) -> StatsReport {
    StatsReport {
        total: num(totals, "total"),
        errors: num(totals, "errors"),
        unmatched: num(totals, "unmatched"),
        cancelled: num(totals, "cancelled"),
        endpoints: endpoints
            .iter()
            .map(|(prefix, e)| (prefix.clone(), endpoint_stats(e)))
            .collect(),
        performance: performance(totals, endpoints, nodes, series, now_ms),
        series: SeriesReport {
            minute: series_points(&series.minute),
            hour: series_points(&series.hour),
        },
        nodes: node_counts(nodes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(last_seen: u64, config_version: u64) -> NodeRecord {
        NodeRecord {
            node_id: "n".into(),
            boot_id: "b".into(),
            seq: 1,
            config_version,
            config_hash: "h".into(),
            last_seen,
            inflight: 0,
            rss_bytes: 3 * 1024 * 1024,
            uptime_s: 1,
            requests_total: 0,
        }
    }

    #[test]
    fn node_states_follow_the_timeout_then_the_version() {
        let t = Duration::from_secs(10);
        assert_eq!(node_state(&record(95_000, 4), 100_000, t, 4), NodeState::Up);
        assert_eq!(
            node_state(&record(95_000, 3), 100_000, t, 4),
            NodeState::Stale
        );
        assert_eq!(
            node_state(&record(89_999, 4), 100_000, t, 4),
            NodeState::Down
        );
        // Written by a replica whose clock runs ahead: not down.
        assert_eq!(
            node_state(&record(101_000, 4), 100_000, t, 4),
            NodeState::Up
        );
    }

    #[test]
    fn rate_weights_the_previous_minute_by_what_the_window_still_covers() {
        assert_eq!(requests_per_sec(0, 600, 0), 10.0);
        assert_eq!(requests_per_sec(300, 600, 30_000), 10.0);
        assert_eq!(requests_per_sec(60, 0, 59_999), 1.0);
    }

    #[test]
    fn report_derives_rates_and_quantiles() {
        let mut latency = [0u64; BUCKETS];
        latency[4] = 50; // (50, 100] ms
        latency[5] = 50; // (100, 250] ms
        let endpoint = EndpointTotals {
            count: 100,
            error_count: 5,
            latency_sum_ms: 12_000,
            latency,
            ..EndpointTotals::default()
        };
        let totals: Counters = [("total", "100"), ("errors", "5"), ("unmatched", "3")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let endpoints = BTreeMap::from([("/a".to_owned(), endpoint)]);
        let nodes = node_list(
            vec![record(100_000, 1), record(0, 1)],
            100_000,
            Duration::from_secs(10),
            1,
        );
        let series = Series {
            minute: vec![SeriesBucket {
                t: 60,
                count: 100,
                errors: 5,
                latency,
            }],
            hour: vec![],
            this_minute: 100,
            last_minute: 0,
        };
        let r = report(&totals, &endpoints, &nodes, &series, 100_000);
        assert_eq!(
            (r.total, r.errors, r.unmatched, r.cancelled),
            (100, 5, 3, 0)
        );
        let a = &r.endpoints["/a"];
        assert_eq!((a.p50_ms, a.p99_ms), (100.0, 247.0));
        assert_eq!(r.performance.avg_response_time_ms, 120.0);
        assert_eq!(r.performance.p99_response_time_ms, 247.0);
        assert_eq!(r.performance.error_rate, 5.0);
        assert_eq!(
            r.performance.memory_usage_mb, 3.0,
            "the down node's RSS is left out"
        );
        assert_eq!(r.series.minute[0].p99_ms, 247.0);
        assert_eq!(
            r.nodes,
            NodeCounts {
                up: 1,
                stale: 0,
                down: 1
            }
        );

        let empty = report(&Counters::new(), &BTreeMap::new(), &[], &series, 0);
        assert_eq!(empty.performance.error_rate, 0.0);
        assert_eq!(empty.performance.avg_response_time_ms, 0.0);
        assert_eq!(empty.performance.p99_response_time_ms, 0.0);
    }
}
