//! Accounting of one proxied request: in-flight gauge, status class,
//! latency, TTFB, cancellations and upstream failures, recorded exactly once
//! when the response body ends — completed, failed or dropped by a client
//! that went away.

use std::sync::Arc;
use std::time::Instant;

use prometheus::IntGauge;

use crate::metrics::{PrefixMetrics, UpstreamErrorKind};

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// The upstream failed after the head went out.
    Failed(UpstreamErrorKind),
    /// The client went away before the end.
    Cancelled,
}

/// Lives from the moment a request is routed until its response ends.
/// Dropping it unfinished counts a client cancellation.
#[derive(Debug)]
pub struct RequestRecord {
    metrics: Arc<PrefixMetrics>,
    inflight: IntGauge,
    start: Instant,
    status: u16,
    done: bool,
}

impl RequestRecord {
    pub fn start(
        metrics: Arc<PrefixMetrics>,
        inflight: &IntGauge,
        start: Instant,
    ) -> RequestRecord {
        inflight.inc();
        RequestRecord {
            metrics,
            inflight: inflight.clone(),
            start,
            status: 0,
            done: false,
        }
    }

    pub fn metrics(&self) -> &Arc<PrefixMetrics> {
        &self.metrics
    }

    /// The response head is on its way to the client.
    pub fn head(&mut self, status: u16) {
        self.status = status;
        self.metrics
            .ttfb
            .observe(self.start.elapsed().as_secs_f64());
    }

    /// The response ended; later calls and the drop do nothing.
    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = &self.metrics;
        match outcome {
            Outcome::Completed => {}
            Outcome::Failed(kind) => m.upstream_error(kind),
            Outcome::Cancelled => m.client_cancelled.inc(),
        }
        // A request that never got a head was cancelled before the upstream
        // answered: counted as the 499 nginx would log, in the 4xx class.
        m.request(if self.status == 0 { 499 } else { self.status });
        m.duration.observe(self.start.elapsed().as_secs_f64());
        self.inflight.dec();
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}
