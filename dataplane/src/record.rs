//! Accounting of one proxied request: in-flight count, status class,
//! latency, TTFB, cancellations and upstream failures, recorded exactly once
//! when the response body ends — completed, failed or dropped by a client
//! that went away — and reported then to the access log and, when it
//! failed, to the node's recent failures.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiproxy_shared::stats::FailedRequest;
use http::header::HeaderValue;
use tokio::time::Instant;

use crate::access_log::{AccessEntry, RequestLog};
use crate::gate::usage::UsageCell;
pub use crate::stats::Outcome;
use crate::stats::PrefixStats;

/// Lives from the moment a request arrives (routed or not) until its
/// response ends. Dropping it unfinished counts a client cancellation.
#[derive(Debug)]
pub struct RequestRecord {
    stats: Arc<PrefixStats>,
    start: Instant,
    status: u16,
    done: bool,
    /// Where the end is told besides the stats, and what is told: one
    /// allocation a request, the id's and the access log's fields in it
    /// (kept out of line: a record lives as long as its response, which
    /// an open stream's connection task holds).
    report: Option<(&'static RequestLog, Box<AccessEntry>)>,
    /// The proxy key's usage on this prefix, on a keyed mapping.
    key: Option<Arc<UsageCell>>,
}

impl RequestRecord {
    /// A record told only to the stats (benches).
    pub fn start(stats: Arc<PrefixStats>, start: Instant) -> RequestRecord {
        stats.start();
        RequestRecord {
            stats,
            start,
            status: 0,
            done: false,
            report: None,
            key: None,
        }
    }

    /// A record whose end is also told to `log`.
    pub(crate) fn reported(
        stats: Arc<PrefixStats>,
        start: Instant,
        log: &'static RequestLog,
        entry: Box<AccessEntry>,
    ) -> RequestRecord {
        let mut record = RequestRecord::start(stats, start);
        record.report = Some((log, entry));
        record
    }

    /// The request's id (`-` for a record of the benches).
    pub(crate) fn id(&self) -> &str {
        self.id_value()
            .and_then(|id| id.to_str().ok())
            .unwrap_or("-")
    }

    pub(crate) fn id_value(&self) -> Option<&HeaderValue> {
        self.report.as_ref().map(|(_, entry)| &entry.request_id)
    }

    /// The access-log entry, to add what routing learns; `None` without
    /// an access log, where the entry only carries the id and the error
    /// type (for the recent failures) and nothing else is worth copying.
    pub(crate) fn entry_mut(&mut self) -> Option<&mut AccessEntry> {
        match &mut self.report {
            Some((log, entry)) if log.access.is_some() => Some(entry),
            _ => None,
        }
    }

    /// The request came with the proxy key `id` (its 64 bits); `usage`,
    /// where its use on this prefix is counted (`None` with stats off).
    pub(crate) fn key(&mut self, id: u64, usage: Option<Arc<UsageCell>>) {
        if let Some(entry) = self.entry_mut() {
            entry.key_id = Some(id);
        }
        self.key = usage;
    }

    /// The proxy key's usage cell, to count the request body's bytes.
    pub(crate) fn key_usage(&self) -> Option<&Arc<UsageCell>> {
        self.key.as_ref()
    }

    /// The proxy answered by itself with this error type.
    pub(crate) fn error(&mut self, error_type: &'static str) {
        if let Some((_, entry)) = &mut self.report {
            entry.error = Some(error_type);
        }
    }

    /// The response head is on its way to the client.
    pub fn head(&mut self, status: u16) {
        self.status = status;
        let ttfb = self.start.elapsed();
        self.stats.ttfb(ttfb);
        if let Some(entry) = self.entry_mut() {
            entry.ttfb = Some(ttfb);
        }
    }

    /// `n` body bytes went to the client.
    pub(crate) fn bytes_out(&mut self, n: u64) {
        self.stats.bytes_out(n);
        if let Some(key) = &self.key {
            key.bytes_out(n);
        }
        if let Some(entry) = self.entry_mut() {
            entry.bytes_out += n;
        }
    }

    /// The response ended; later calls and the drop do nothing.
    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // A request that never got a head was cancelled before the upstream
        // answered: counted as the 499 nginx would log, in the 4xx class.
        let status = if self.status == 0 { 499 } else { self.status };
        let elapsed = self.start.elapsed();
        self.stats.finish(status, outcome, elapsed);
        if let Some(key) = &self.key {
            key.finish(status, outcome);
        }
        if let Some((log, entry)) = self.report.take() {
            self.tell(log, entry, status, outcome, elapsed);
        }
    }

    fn tell(
        &self,
        log: &'static RequestLog,
        mut entry: Box<AccessEntry>,
        status: u16,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        let cancelled = outcome == Outcome::Cancelled;
        let error = match outcome {
            Outcome::Failed(kind) => entry.error.or(Some(kind.error_type())),
            _ => entry.error,
        };
        let failed = status >= 500 || error.is_some() || cancelled;
        if !failed && log.access.is_none() {
            return;
        }
        let started = SystemTime::now().checked_sub(elapsed).unwrap_or(UNIX_EPOCH);
        if failed {
            log.failures.push(FailedRequest {
                time: started
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                request_id: entry.request_id.to_str().unwrap_or("-").to_owned(),
                prefix: self.stats.prefix().to_string(),
                status,
                error_type: error
                    .or(cancelled.then_some("cancelled"))
                    .map(str::to_owned),
                duration_ms: elapsed.as_millis() as u64,
            });
        }
        if log.access.is_some() {
            entry.start = started;
            entry.status = status;
            entry.error = error;
            entry.duration = elapsed;
            entry.cancelled = cancelled;
            entry.prefix = Some(self.stats.prefix().clone());
            log.write(&entry, status >= 400 || error.is_some() || cancelled);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}
