//! Prometheus metrics (SPEC §3). [`Metrics`] owns its registry; each route
//! holds a [`PrefixMetrics`] with every labelled series resolved when the
//! snapshot is built, so the request path only touches atomics.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Upper bounds of the latency and TTFB histograms, in seconds; the stats
/// batches use the same ones (SPEC §6).
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Label of requests that matched no mapping.
pub const NO_PREFIX: &str = "none";

/// Why talking to the upstream failed (`kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Refused, unreachable or DNS failure.
    Connect,
    Tls,
    /// Refused by `API_PROXY_TARGET_POLICY`.
    Policy,
    /// Connect, response-header or idle timeout.
    Timeout,
    /// Connection reset or closed early.
    Reset,
    /// Malformed response.
    Protocol,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 6] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Policy,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Policy => "policy",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every series of one prefix, resolved once.
#[derive(Debug)]
pub struct PrefixMetrics {
    requests: [IntCounter; 5],
    pub duration: Histogram,
    pub ttfb: Histogram,
    upstream_errors: [IntCounter; 6],
    pub client_cancelled: IntCounter,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
}

impl PrefixMetrics {
    /// Counts a finished request under its status class.
    pub fn request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }
}

/// The labelled per-prefix families.
#[derive(Debug, Clone)]
struct PrefixFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
    ttfb: HistogramVec,
    upstream_errors: IntCounterVec,
    client_cancelled: IntCounterVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
}

impl PrefixFamilies {
    fn resolve(&self, prefix: &str) -> Arc<PrefixMetrics> {
        let p = [prefix];
        Arc::new(PrefixMetrics {
            requests: STATUS_CLASSES.map(|class| self.requests.with_label_values(&[prefix, class])),
            duration: self.duration.with_label_values(&p),
            ttfb: self.ttfb.with_label_values(&p),
            upstream_errors: UpstreamErrorKind::ALL.map(|kind| {
                self.upstream_errors
                    .with_label_values(&[prefix, kind.as_str()])
            }),
            client_cancelled: self.client_cancelled.with_label_values(&p),
            request_bytes: self.request_bytes.with_label_values(&p),
            response_bytes: self.response_bytes.with_label_values(&p),
        })
    }
}

/// The data plane's metrics and the registry that exports them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    families: PrefixFamilies,
    pub inflight: IntGauge,
    pub config_version: IntGauge,
    pub config_stale: IntGauge,
    pub config_invalid_entries: IntGauge,
    config_reloads: IntCounterVec,
    unmatched: Arc<PrefixMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            v
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram_vec = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let v = HistogramVec::new(opts, &["prefix"]).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            v
        };
        let requests = counter_vec(
            "apiproxy_requests_total",
            "Requests finished, by mapping prefix and status class.",
            &["prefix", "status_class"],
        );
        let duration = histogram_vec(
            "apiproxy_request_duration_seconds",
            "Time from request received to response body finished.",
        );
        let ttfb = histogram_vec(
            "apiproxy_time_to_first_byte_seconds",
            "Time from request received to response head sent to the client.",
        );
        let upstream_errors = counter_vec(
            "apiproxy_upstream_errors_total",
            "Failures talking to the upstream, by kind.",
            &["prefix", "kind"],
        );
        let client_cancelled = counter_vec(
            "apiproxy_client_cancelled_total",
            "Requests the client abandoned before the response ended.",
            &["prefix"],
        );
        let request_bytes = counter_vec(
            "apiproxy_request_bytes_total",
            "Request body bytes received from clients.",
            &["prefix"],
        );
        let response_bytes = counter_vec(
            "apiproxy_response_bytes_total",
            "Response body bytes sent to clients.",
            &["prefix"],
        );
        let config_reloads = counter_vec(
            "apiproxy_config_reloads_total",
            "Attempts to load a new mappings snapshot.",
            &["result"],
        );
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

        let families = PrefixFamilies {
            requests,
            duration,
            ttfb,
            upstream_errors,
            client_cancelled,
            request_bytes,
            response_bytes,
        };
        let metrics = Metrics {
            inflight: gauge(
                "apiproxy_inflight_requests",
                "Requests whose response has not finished.",
            ),
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
            registry,
            unmatched: families.resolve(NO_PREFIX),
            families,
            config_reloads,
        };
        // Export the reload series from the start so dashboards see zeros.
        metrics.config_reloads.with_label_values(&["ok"]);
        metrics.config_reloads.with_label_values(&["error"]);
        metrics
    }

    /// Resolves every series of `prefix` (done when a snapshot is built).
    pub fn prefix(&self, prefix: &str) -> Arc<PrefixMetrics> {
        self.families.resolve(prefix)
    }

    /// Series for requests that matched no mapping (`prefix="none"`).
    pub fn unmatched(&self) -> &Arc<PrefixMetrics> {
        &self.unmatched
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_spec_names() {
        let m = Metrics::new();
        let p = m.prefix("/openai");
        p.request(200);
        p.request(503);
        p.upstream_error(UpstreamErrorKind::Reset);
        p.duration.observe(0.2);
        let text = String::from_utf8(m.encode()).unwrap();
        for needle in [
            r#"apiproxy_requests_total{prefix="/openai",status_class="2xx"} 1"#,
            r#"apiproxy_requests_total{prefix="/openai",status_class="5xx"} 1"#,
            r#"apiproxy_upstream_errors_total{kind="reset",prefix="/openai"} 1"#,
            r#"apiproxy_request_duration_seconds_bucket{prefix="/openai",le="3600"} 1"#,
            "apiproxy_time_to_first_byte_seconds_bucket",
            "apiproxy_client_cancelled_total",
            "apiproxy_request_bytes_total",
            "apiproxy_response_bytes_total",
            "apiproxy_inflight_requests 0",
            "apiproxy_config_version 0",
            "apiproxy_config_stale 0",
            "apiproxy_config_invalid_entries 0",
            r#"apiproxy_config_reloads_total{result="error"} 0"#,
            r#"apiproxy_build_info{version="#,
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn status_classes_clamp() {
        let m = Metrics::new();
        let p = m.prefix("/x");
        p.request(101);
        p.request(404);
        p.request(999);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(r#"apiproxy_requests_total{prefix="/x",status_class="1xx"} 1"#));
        assert!(text.contains(r#"apiproxy_requests_total{prefix="/x",status_class="4xx"} 1"#));
        assert!(text.contains(r#"apiproxy_requests_total{prefix="/x",status_class="5xx"} 1"#));
    }
}
