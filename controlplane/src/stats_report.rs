//! The `/stats` body and the node list, computed from what the
//! [`StatsStore`](crate::stats_store::StatsStore) reads. Pure functions,
//! so the arithmetic (quantiles, rates, node states) is tested without
//! Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use apiproxy_shared::stats::{quantile, BUCKETS};

use crate::model::{
    EndpointStats, NodeCounts, NodeInfo, NodeState, Performance, RequestRecord, SeriesPoint,
    SeriesReport, StatsReport,
};
use crate::stats_store::{
    num, parse_request_run, Counters, EndpointTotals, NodeRecord, Series, SeriesBucket,
};

/// Most entries in `/stats`' `requests`, as the Go version kept.
pub(crate) const MAX_REQUESTS: usize = 10_000;

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
            tasks: n.tasks,
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
        last_request: e.last_request / 1000,
        last_request_ms: e.last_request,
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
    let latency = cluster_latency(endpoints);
    let (total, errors) = (num(totals, "total"), num(totals, "errors"));
    let live = || nodes.iter().filter(|n| n.state != NodeState::Down);
    let rss: u64 = live().map(|n| n.rss_bytes).sum();
    Performance {
        requests_per_sec: requests_per_sec(series.this_minute, series.last_minute, now_ms),
        avg_response_time_ms: latency.mean_ms().map_or(0.0, round3),
        p99_response_time_ms: quantile_ms(&latency.buckets, 0.99),
        error_rate: if total == 0 {
            0.0
        } else {
            round3(errors as f64 / total as f64 * 100.0)
        },
        memory_usage_mb: round3(rss as f64 / (1024.0 * 1024.0)),
        goroutine_count: live().map(|n| n.tasks).sum(),
    }
}

/// Every endpoint's durations together.
struct ClusterLatency {
    buckets: [u64; BUCKETS],
    /// Requests with a measured duration: those in the histograms (counts
    /// imported from the Go version have none).
    timed: u64,
    sum_ms: u64,
}

impl ClusterLatency {
    fn mean_ms(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.sum_ms as f64 / self.timed as f64)
    }
}

fn cluster_latency(endpoints: &BTreeMap<String, EndpointTotals>) -> ClusterLatency {
    let mut all = ClusterLatency {
        buckets: [0; BUCKETS],
        timed: 0,
        sum_ms: 0,
    };
    for e in endpoints.values() {
        for (sum, n) in all.buckets.iter_mut().zip(e.latency) {
            *sum = sum.saturating_add(n);
        }
        all.sum_ms = all.sum_ms.saturating_add(e.latency_sum_ms);
    }
    all.timed = all.buckets.iter().fold(0, |a, n| a.saturating_add(*n));
    all
}

/// A duration as Go's `time.Duration.String()` writes it: `"0s"`,
/// `"750ns"`, `"1.5µs"`, `"12.3ms"`, `"1.5s"`, `"2m3.4s"`, `"1h0m0s"`.
pub(crate) fn go_duration(nanos: u64) -> String {
    /// `n / 10^digits` with the fraction's trailing zeros dropped.
    fn decimal(n: u64, digits: u32) -> String {
        let unit = 10u64.pow(digits);
        let frac = n % unit;
        if frac == 0 {
            return (n / unit).to_string();
        }
        let frac = format!("{frac:0width$}", width = digits as usize);
        format!("{}.{}", n / unit, frac.trim_end_matches('0'))
    }
    match nanos {
        0 => "0s".to_owned(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", decimal(n, 3)),
        n if n < 1_000_000_000 => format!("{}ms", decimal(n, 6)),
        n => {
            let (hours, minutes) = (n / 3_600_000_000_000, n / 60_000_000_000 % 60);
            let seconds = format!("{}s", decimal(n % 60_000_000_000, 9));
            if hours > 0 {
                format!("{hours}h{minutes}m{seconds}")
            } else if minutes > 0 {
                format!("{minutes}m{seconds}")
            } else {
                seconds
            }
        }
    }
}

/// The newest [`MAX_REQUESTS`] requests of the stored runs (oldest
/// first), newest last; unreadable runs are skipped.
pub(crate) fn request_records(runs: &[String]) -> Vec<RequestRecord> {
    let mut out = Vec::new();
    for (t, count, prefix) in runs.iter().rev().filter_map(|r| parse_request_run(r)) {
        let room = MAX_REQUESTS - out.len();
        let n = usize::try_from(count).map_or(room, |c| c.min(room));
        out.extend((0..n).map(|_| RequestRecord {
            timestamp: t,
            endpoint: prefix.to_owned(),
        }));
        if out.len() == MAX_REQUESTS {
            break;
        }
    }
    out.reverse();
    out
}

/// The `/stats` body at `now_ms`.
pub(crate) fn report(
    totals: &Counters,
    endpoints: &BTreeMap<String, EndpointTotals>,
    nodes: &[NodeInfo],
    series: &Series,
    request_runs: &[String],
    now_ms: u64,
) -> StatsReport {
    let latency = cluster_latency(endpoints);
    let avg_ns = latency
        .sum_ms
        .saturating_mul(1_000_000)
        .checked_div(latency.timed)
        .unwrap_or(0);
    StatsReport {
        avg_response: go_duration(avg_ns),
        dropped_events: 0,
        requests: request_records(request_runs),
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
            tasks: 7,
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
        let runs = ["90 2 /a", "junk", "100 1 /b"].map(String::from);
        let r = report(&totals, &endpoints, &nodes, &series, &runs, 100_000);
        assert_eq!(
            (r.total, r.errors, r.unmatched, r.cancelled),
            (100, 5, 3, 0)
        );
        let a = &r.endpoints["/a"];
        assert_eq!((a.p50_ms, a.p99_ms), (100.0, 247.0));
        assert_eq!(r.performance.avg_response_time_ms, 120.0);
        assert_eq!(r.avg_response, "120ms");
        assert_eq!(r.dropped_events, 0);
        assert_eq!(
            r.performance.goroutine_count, 7,
            "the down node's tasks are left out"
        );
        let entry = |t, e: &str| RequestRecord {
            timestamp: t,
            endpoint: e.to_owned(),
        };
        assert_eq!(
            r.requests,
            [entry(90, "/a"), entry(90, "/a"), entry(100, "/b")]
        );
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

        let empty = report(&Counters::new(), &BTreeMap::new(), &[], &series, &[], 0);
        assert_eq!(empty.avg_response, "0s");
        assert!(empty.requests.is_empty());
        assert_eq!(empty.performance.error_rate, 0.0);
        assert_eq!(empty.performance.avg_response_time_ms, 0.0);
        assert_eq!(empty.performance.p99_response_time_ms, 0.0);
    }

    #[test]
    fn last_request_is_in_seconds_and_milliseconds() {
        let e = EndpointTotals {
            last_request: 1_700_000_123_456,
            ..EndpointTotals::default()
        };
        let s = endpoint_stats(&e);
        assert_eq!(
            (s.last_request, s.last_request_ms),
            (1_700_000_123, 1_700_000_123_456)
        );
    }

    #[test]
    fn the_average_leaves_out_counts_without_durations() {
        let mut latency = [0u64; BUCKETS];
        latency[3] = 10;
        let timed = EndpointTotals {
            count: 10,
            latency_sum_ms: 400,
            latency,
            ..EndpointTotals::default()
        };
        let imported = EndpointTotals {
            count: 1_000,
            ..EndpointTotals::default()
        };
        let endpoints = BTreeMap::from([("/a".to_owned(), timed), ("/go".to_owned(), imported)]);
        let series = Series {
            minute: vec![],
            hour: vec![],
            this_minute: 0,
            last_minute: 0,
        };
        let r = report(&Counters::new(), &endpoints, &[], &series, &[], 0);
        assert_eq!(r.performance.avg_response_time_ms, 40.0);
        assert_eq!(r.avg_response, "40ms");
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        for (nanos, text) in [
            (0, "0s"),
            (750, "750ns"),
            (1_500, "1.5µs"),
            (12_300_000, "12.3ms"),
            (120_000_000, "120ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (123_400_000_000, "2m3.4s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_001, "1h2m3.000000001s"),
        ] {
            assert_eq!(go_duration(nanos), text);
        }
    }

    #[test]
    fn requests_are_capped_to_the_newest() {
        let runs = ["1 9999 /old", "2 1 /b", "3 2 /c"].map(String::from);
        let r = request_records(&runs);
        assert_eq!(r.len(), MAX_REQUESTS);
        assert_eq!((r[0].timestamp, r[0].endpoint.as_str()), (1, "/old"));
        assert_eq!(r.iter().filter(|e| e.endpoint == "/old").count(), 9_997);
        assert_eq!((r[9_997].timestamp, r[9_997].endpoint.as_str()), (2, "/b"));
        assert_eq!(r[MAX_REQUESTS - 1].endpoint, "/c");
        let huge = [format!("5 {} /x", u64::MAX)];
        assert_eq!(request_records(&huge).len(), MAX_REQUESTS);
    }
}
