//! `GET /metrics` of the control plane: the cluster totals from Redis under
//! `apiproxy_cluster_*` names, so they never collide with the data planes'
//! own series when one Prometheus scrapes both, and the control plane's
//! own `process_*` metrics.

use std::collections::BTreeMap;

use apiproxy_shared::prometheus_text::{escape, head, histogram, sample};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::model::NodeCounts;
use crate::stats_store::{num, Counters, EndpointTotals, PrefixUsage};

/// The per-prefix counters: name, HELP, value.
type Counter = (&'static str, &'static str, fn(&EndpointTotals) -> u64);

const COUNTERS: [Counter; 5] = [
    (
        "apiproxy_cluster_requests_total",
        "Requests that matched the prefix, all nodes.",
        |e| e.count,
    ),
    (
        "apiproxy_cluster_errors_total",
        "Upstream or proxy 5xx responses and upstream failures, all nodes.",
        |e| e.error_count,
    ),
    (
        "apiproxy_cluster_cancelled_total",
        "Requests the client abandoned, all nodes.",
        |e| e.cancelled,
    ),
    (
        "apiproxy_cluster_request_bytes_total",
        "Request body bytes received from clients, all nodes.",
        |e| e.bytes_in,
    ),
    (
        "apiproxy_cluster_response_bytes_total",
        "Response body bytes sent to clients, all nodes.",
        |e| e.bytes_out,
    ),
];

/// Owns the registry of the control plane's own process metrics; the
/// cluster series are rendered from Redis on each scrape (they are other
/// processes' counters, which a prometheus-crate counter cannot hold).
pub(crate) struct ClusterMetrics {
    registry: Registry,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics::new()
    }
}

impl ClusterMetrics {
    pub(crate) fn new() -> ClusterMetrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        ClusterMetrics { registry }
    }

    /// The text exposition: cluster series, then the process metrics.
    /// `keys`: each existing key's usage per prefix, by key id.
    pub(crate) fn render(
        &self,
        totals: &Counters,
        endpoints: &BTreeMap<String, EndpointTotals>,
        keys: &BTreeMap<String, Vec<PrefixUsage>>,
        nodes: &NodeCounts,
    ) -> String {
        let mut out = String::with_capacity(1024 + endpoints.len() * 4096);
        let labels: Vec<(String, &EndpointTotals)> = endpoints
            .iter()
            .map(|(prefix, e)| (format!("prefix=\"{}\"", escape(prefix)), e))
            .collect();
        for (name, help, value) in COUNTERS {
            head(&mut out, name, "counter", help);
            for (label, e) in &labels {
                sample(&mut out, name, label, value(e));
            }
        }
        let name = "apiproxy_cluster_request_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "Time from request received to response body finished, all nodes.",
        );
        for (label, e) in &labels {
            histogram(
                &mut out,
                name,
                label,
                &e.latency,
                e.latency_sum_ms as f64 / 1000.0,
            );
        }
        let name = "apiproxy_cluster_unmatched_requests_total";
        head(
            &mut out,
            name,
            "counter",
            "Requests that matched no mapping, all nodes.",
        );
        sample(&mut out, name, "", num(totals, "unmatched"));
        let name = "apiproxy_cluster_key_requests_total";
        head(
            &mut out,
            name,
            "counter",
            "Requests made with the proxy key, by prefix and status class, all nodes.",
        );
        for (key_id, usage) in keys {
            for u in usage {
                for (class, n) in u.status.iter().filter(|(_, n)| **n > 0) {
                    let label = format!(
                        "key_id=\"{}\",prefix=\"{}\",status_class=\"{class}\"",
                        escape(key_id),
                        escape(&u.prefix)
                    );
                    sample(&mut out, name, &label, *n);
                }
            }
        }
        let name = "apiproxy_cluster_nodes";
        head(
            &mut out,
            name,
            "gauge",
            "Registered data-plane nodes by state.",
        );
        for (state, n) in [
            ("up", nodes.up),
            ("stale", nodes.stale),
            ("down", nodes.down),
        ] {
            sample(&mut out, name, &format!("state=\"{state}\""), n);
        }
        let mut process = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut process)
            .expect("text encoding cannot fail");
        out.push_str(&String::from_utf8_lossy(&process));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiproxy_shared::stats::BUCKETS;

    #[test]
    fn cluster_series_use_their_own_names() {
        let mut latency = [0; BUCKETS];
        latency[3] = 2;
        let e = EndpointTotals {
            count: 2,
            error_count: 1,
            bytes_in: 10,
            bytes_out: 20,
            latency_sum_ms: 80,
            latency,
            ..EndpointTotals::default()
        };
        let totals: Counters = [("unmatched".to_owned(), "4".to_owned())].into();
        let nodes = NodeCounts {
            up: 2,
            stale: 1,
            down: 0,
        };
        let usage = PrefixUsage {
            prefix: "/a\"b".into(),
            requests: 3,
            errors: 1,
            bytes_in: 0,
            bytes_out: 0,
            status: [("1xx", 0), ("2xx", 2), ("5xx", 1)]
                .map(|(c, n)| (c.to_owned(), n))
                .into(),
        };
        let text = ClusterMetrics::new().render(
            &totals,
            &BTreeMap::from([("/a\"b".to_owned(), e)]),
            &BTreeMap::from([("key_00000000000000aa".to_owned(), vec![usage])]),
            &nodes,
        );
        for line in [
            r#"apiproxy_cluster_requests_total{prefix="/a\"b"} 2"#,
            r#"apiproxy_cluster_errors_total{prefix="/a\"b"} 1"#,
            r#"apiproxy_cluster_response_bytes_total{prefix="/a\"b"} 20"#,
            r#"apiproxy_cluster_request_duration_seconds_bucket{prefix="/a\"b",le="0.05"} 2"#,
            r#"apiproxy_cluster_request_duration_seconds_sum{prefix="/a\"b"} 0.08"#,
            "apiproxy_cluster_unmatched_requests_total 4",
            "# TYPE apiproxy_cluster_key_requests_total counter",
            r#"apiproxy_cluster_key_requests_total{key_id="key_00000000000000aa",prefix="/a\"b",status_class="2xx"} 2"#,
            r#"apiproxy_cluster_key_requests_total{key_id="key_00000000000000aa",prefix="/a\"b",status_class="5xx"} 1"#,
            r#"apiproxy_cluster_nodes{state="stale"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(!text.contains("apiproxy_requests_total"));
        assert!(!text.contains("status_class=\"1xx\""), "no zero classes");
    }
}
