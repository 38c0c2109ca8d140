//! Prometheus metrics (SPEC §3). [`Metrics`] owns a registry for the
//! process and config series; the per-prefix request series are rendered
//! from the [`StatsRegistry`] shards, the same counters the stats pushes
//! read, so nothing is counted twice and the request path touches only
//! atomics.

use std::io::Write as _;
use std::sync::Arc;

use apiproxy_shared::prometheus_text::{escape, head, histogram, sample};
use apiproxy_shared::stats::STATUS_CLASSES;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error_kind::UpstreamErrorKind;
use crate::stats::{PrefixStats, StatsRegistry, Totals};

/// The data plane's metrics and the registry that exports them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    stats: Arc<StatsRegistry>,
    pub(crate) config_version: IntGauge,
    pub(crate) config_stale: IntGauge,
    pub(crate) config_invalid_entries: IntGauge,
    pub(crate) proxy_keys: IntGauge,
    pub(crate) policies: IntGauge,
    pub(crate) stats_push_failures: IntCounter,
    pub(crate) access_log_dropped: IntCounter,
    pub(crate) config_announcements_ignored: IntCounter,
    config_reloads: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics with request stats recorded by one thread.
    pub fn new() -> Metrics {
        Metrics::with_stats(StatsRegistry::new(1, true))
    }

    pub(crate) fn with_stats(stats: StatsRegistry) -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "apiproxy_config_reloads_total",
                "Attempts to load a new mappings snapshot.",
            ),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_reloads.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new("apiproxy_build_info", "Build information."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");

        let metrics = Metrics {
            config_version: gauge(
                "apiproxy_config_version",
                "Version of the applied mappings snapshot.",
            ),
            config_stale: gauge(
                "apiproxy_config_stale",
                "1 while the snapshot may be behind its source.",
            ),
            config_invalid_entries: gauge(
                "apiproxy_config_invalid_entries",
                "Entries skipped in the current snapshot because they are invalid.",
            ),
            proxy_keys: gauge(
                "apiproxy_proxy_keys",
                "Proxy keys in the current snapshot.",
            ),
            policies: gauge(
                "apiproxy_policies",
                "Mappings with an access policy in the current snapshot.",
            ),
            stats_push_failures: counter(
                "apiproxy_stats_push_failures_total",
                "Stats batches the control plane did not acknowledge.",
            ),
            config_announcements_ignored: counter(
                "apiproxy_config_announcements_ignored_total",
                "Mapping announcements ignored: their version was already applied (a repeat or an older one).",
            ),
            access_log_dropped: counter(
                "apiproxy_access_log_dropped_total",
                "Access log lines dropped: the queue was full (a sink slower than the traffic) or the sink failed.",
            ),
            registry,
            stats: Arc::new(stats),
            config_reloads,
        };
        // Export the reload series from the start so dashboards see zeros.
        metrics.config_reloads.with_label_values(&["ok"]);
        metrics.config_reloads.with_label_values(&["error"]);
        metrics
    }

    /// The stats of `prefix` (looked up when a snapshot is built).
    pub(crate) fn prefix(&self, prefix: &str) -> Arc<PrefixStats> {
        self.stats.prefix(prefix)
    }

    /// Stats of requests that matched no mapping (`prefix="none"`).
    pub(crate) fn unmatched(&self) -> &Arc<PrefixStats> {
        self.stats.unmatched()
    }

    /// The request stats, for the pusher.
    pub(crate) fn stats(&self) -> &Arc<StatsRegistry> {
        &self.stats
    }

    /// Requests whose response has not finished. A scan of the shards can
    /// see a request's end before its start, so it is clamped at 0.
    pub(crate) fn inflight(&self) -> i64 {
        self.stats.inflight().max(0)
    }

    pub(crate) fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        let _ = write!(
            buf,
            "# HELP apiproxy_inflight_requests Requests whose response has not finished.\n\
             # TYPE apiproxy_inflight_requests gauge\napiproxy_inflight_requests {}\n",
            self.inflight()
        );
        let stats = &self.stats;
        if stats.recording() {
            let mut all = stats.all();
            all.push(stats.unmatched().clone());
            let read: Vec<(Arc<str>, Totals)> =
                all.iter().map(|s| (s.prefix().clone(), s.read())).collect();
            buf.extend_from_slice(render_prefix_series(&read).as_bytes());
        }
        buf
    }
}

/// Reads a prefix's totals into one counter value.
type Pick = fn(&Totals) -> u64;
/// Reads a prefix's totals into one histogram: buckets and sum (µs).
type PickHistogram = fn(&Totals) -> (&[u64], u64);

/// The per-prefix families in the text format, with the label names in
/// the alphabetical order the prometheus crate uses for its own.
fn render_prefix_series(all: &[(Arc<str>, Totals)]) -> String {
    let mut out = String::with_capacity(1024 + all.len() * 4096);
    let label = |prefix: &str| format!("prefix=\"{}\"", escape(prefix));
    head(
        &mut out,
        "apiproxy_requests_total",
        "counter",
        "Requests finished, by mapping prefix and status class.",
    );
    for (prefix, t) in all {
        for (class, n) in STATUS_CLASSES.iter().zip(t.status) {
            let labels = format!("{},status_class=\"{class}\"", label(prefix));
            sample(&mut out, "apiproxy_requests_total", &labels, n);
        }
    }
    let histograms: [(&str, &str, PickHistogram); 2] = [
        (
            "apiproxy_request_duration_seconds",
            "Time from request received to response body finished.",
            |t| (&t.latency, t.latency_sum_us),
        ),
        (
            "apiproxy_time_to_first_byte_seconds",
            "Time from request received to response head sent to the client.",
            |t| (&t.ttfb, t.ttfb_sum_us),
        ),
    ];
    for (name, help, pick) in histograms {
        head(&mut out, name, "histogram", help);
        for (prefix, t) in all {
            let (buckets, sum_us) = pick(t);
            histogram(&mut out, name, &label(prefix), buckets, sum_us as f64 / 1e6);
        }
    }
    head(
        &mut out,
        "apiproxy_upstream_errors_total",
        "counter",
        "Failures talking to the upstream, by kind.",
    );
    for (prefix, t) in all {
        for (kind, n) in UpstreamErrorKind::ALL.iter().zip(t.upstream_errors) {
            let labels = format!("kind=\"{}\",{}", kind.as_str(), label(prefix));
            sample(&mut out, "apiproxy_upstream_errors_total", &labels, n);
        }
    }
    let counters: [(&str, &str, Pick); 3] = [
        (
            "apiproxy_client_cancelled_total",
            "Requests the client abandoned before the response ended.",
            |t| t.cancelled,
        ),
        (
            "apiproxy_request_bytes_total",
            "Request body bytes received from clients.",
            |t| t.bytes_in,
        ),
        (
            "apiproxy_response_bytes_total",
            "Response body bytes sent to clients.",
            |t| t.bytes_out,
        ),
    ];
    for (name, help, value) in counters {
        head(&mut out, name, "counter", help);
        for (prefix, t) in all {
            sample(&mut out, name, &label(prefix), value(t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Outcome;

    #[test]
    fn exports_the_spec_names() {
        let m = Metrics::new();
        let p = m.prefix("/openai");
        p.start();
        p.start();
        p.finish(200, Outcome::Completed, Duration::from_millis(200));
        p.finish(
            503,
            Outcome::Failed(UpstreamErrorKind::Reset),
            Duration::from_millis(1),
        );
        p.ttfb(Duration::from_millis(1));
        let text = String::from_utf8(m.encode()).unwrap();
        for needle in [
            r#"apiproxy_requests_total{prefix="/openai",status_class="2xx"} 1"#,
            r#"apiproxy_requests_total{prefix="/openai",status_class="5xx"} 1"#,
            r#"apiproxy_requests_total{prefix="none",status_class="2xx"} 0"#,
            r#"apiproxy_upstream_errors_total{kind="reset",prefix="/openai"} 1"#,
            r#"apiproxy_request_duration_seconds_bucket{prefix="/openai",le="0.005"} 1"#,
            r#"apiproxy_request_duration_seconds_bucket{prefix="/openai",le="0.25"} 2"#,
            r#"apiproxy_request_duration_seconds_bucket{prefix="/openai",le="+Inf"} 2"#,
            r#"apiproxy_request_duration_seconds_sum{prefix="/openai"} 0.201"#,
            r#"apiproxy_request_duration_seconds_count{prefix="/openai"} 2"#,
            r#"apiproxy_time_to_first_byte_seconds_count{prefix="/openai"} 1"#,
            "# TYPE apiproxy_request_duration_seconds histogram",
            r#"apiproxy_client_cancelled_total{prefix="/openai"} 0"#,
            "apiproxy_request_bytes_total",
            "apiproxy_response_bytes_total",
            "apiproxy_inflight_requests 0",
            "apiproxy_config_version 0",
            "apiproxy_config_stale 0",
            "apiproxy_config_invalid_entries 0",
            "apiproxy_proxy_keys 0",
            "apiproxy_policies 0",
            "apiproxy_stats_push_failures_total 0",
            "apiproxy_access_log_dropped_total 0",
            "apiproxy_config_announcements_ignored_total 0",
            r#"apiproxy_config_reloads_total{result="error"} 0"#,
            r#"apiproxy_build_info{version="#,
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn disabled_stats_export_no_request_series() {
        let m = Metrics::with_stats(StatsRegistry::new(1, false));
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains("apiproxy_requests_total"));
        assert!(text.contains("apiproxy_inflight_requests 0"));
        assert!(text.contains("process_open_fds"));
    }
}
