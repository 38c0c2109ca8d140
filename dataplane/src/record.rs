//! Accounting of one proxied request: in-flight count, status class,
//! latency, TTFB, cancellations and upstream failures, recorded exactly once
//! when the response body ends — completed, failed or dropped by a client
//! that went away.

use std::sync::Arc;

use tokio::time::Instant;

pub use crate::stats::Outcome;
use crate::stats::PrefixStats;

/// Lives from the moment a request is routed until its response ends.
/// Dropping it unfinished counts a client cancellation.
#[derive(Debug)]
pub struct RequestRecord {
    stats: Arc<PrefixStats>,
    start: Instant,
    status: u16,
    done: bool,
}

impl RequestRecord {
    pub fn start(stats: Arc<PrefixStats>, start: Instant) -> RequestRecord {
        stats.start();
        RequestRecord {
            stats,
            start,
            status: 0,
            done: false,
        }
    }

    pub(crate) fn stats(&self) -> &Arc<PrefixStats> {
        &self.stats
    }

    /// The response head is on its way to the client.
    pub fn head(&mut self, status: u16) {
        self.status = status;
        self.stats.ttfb(self.start.elapsed());
    }

    /// The response ended; later calls and the drop do nothing.
    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // A request that never got a head was cancelled before the upstream
        // answered: counted as the 499 nginx would log, in the 4xx class.
        let status = if self.status == 0 { 499 } else { self.status };
        self.stats.finish(status, outcome, self.start.elapsed());
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}
