//! Per-prefix request stats, the one recording behind both `/metrics` and
//! the batches pushed to the control plane (SPEC §3, §6).
//!
//! The request path only does relaxed `fetch_add`s on cache-line-aligned
//! shards: each thread writes its own shard, so two workers finishing
//! requests on the same prefix never bounce a line between them, and
//! nothing locks or allocates. Readers (a scrape, a push) sum the shards.
//! Counters only grow; a push sends the difference to what the control
//! plane last acknowledged (see `stats_push`).
//!
//! The in-flight count costs one more add: requests started, minus the
//! requests finished, which the status counters already count (a scan can
//! see an end before its start, so readers clamp at 0). With
//! `API_PROXY_ENABLE_STATS=false` only starts and ends are counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiproxy_shared::stats::{bucket_index, BUCKETS};

use crate::error_kind::UpstreamErrorKind;

/// Label of requests that matched no mapping.
pub(crate) const NO_PREFIX: &str = "none";

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// The upstream failed (before or after the head went out).
    Failed(UpstreamErrorKind),
    /// The client went away before the end.
    Cancelled,
}

/// One histogram: counts per bucket (not cumulative) and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        self.buckets[bucket_index(d.as_secs_f64())].fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// What one thread recorded for one prefix. Aligned to two cache lines so
/// that neighbouring shards (and the adjacent-line prefetcher) never share.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    started: AtomicU64,
    /// Requests finished while stats are off (with stats on, the status
    /// counters count them).
    finished_unrecorded: AtomicU64,
    /// By status class, 1xx..5xx.
    status: [AtomicU64; 5],
    errors: AtomicU64,
    cancelled: AtomicU64,
    upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: Histogram,
    ttfb: Histogram,
}

/// The live counters of one prefix. Aligned like a shard so that, inside
/// its `Arc`, the reference count (bumped by every request on every
/// worker) sits on another cache line than the fields each record reads.
#[derive(Debug)]
#[repr(align(128))]
pub struct PrefixStats {
    prefix: Arc<str>,
    /// `false` with stats off: only the in-flight count moves.
    recording: bool,
    shards: Box<[Shard]>,
}

/// Hands each thread a shard index once; the request path then reads a
/// thread-local instead of hashing a thread id.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: usize = NEXT_THREAD.fetch_add(1, Relaxed);
}

impl PrefixStats {
    fn new(prefix: Arc<str>, shards: usize, recording: bool) -> PrefixStats {
        PrefixStats {
            prefix,
            recording,
            shards: (0..shards).map(|_| Shard::default()).collect(),
        }
    }

    pub(crate) fn prefix(&self) -> &Arc<str> {
        &self.prefix
    }

    fn shard(&self) -> &Shard {
        // The shard count is a power of two: a mask, not a division.
        let i = THREAD_INDEX.with(|i| *i) & (self.shards.len() - 1);
        &self.shards[i]
    }

    /// A request started.
    pub fn start(&self) {
        self.shard().started.fetch_add(1, Relaxed);
    }

    /// The response head went out `elapsed` after the request arrived.
    pub fn ttfb(&self, elapsed: Duration) {
        if self.recording {
            self.shard().ttfb.observe(elapsed);
        }
    }

    /// A response ended. `status` is what the client got (499 when it left
    /// before any head).
    pub fn finish(&self, status: u16, outcome: Outcome, elapsed: Duration) {
        let shard = self.shard();
        if !self.recording {
            shard.finished_unrecorded.fetch_add(1, Relaxed);
            return;
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        shard.status[class].fetch_add(1, Relaxed);
        match outcome {
            Outcome::Completed if status >= 500 => {
                shard.errors.fetch_add(1, Relaxed);
            }
            Outcome::Completed => {}
            Outcome::Failed(kind) => {
                shard.errors.fetch_add(1, Relaxed);
                shard.upstream_errors[kind as usize].fetch_add(1, Relaxed);
            }
            // A client that left is not an error of the service.
            Outcome::Cancelled => {
                shard.cancelled.fetch_add(1, Relaxed);
            }
        }
        shard.latency.observe(elapsed);
    }

    /// Body bytes received from the client.
    pub(crate) fn bytes_in(&self, n: u64) {
        if self.recording {
            self.shard().bytes_in.fetch_add(n, Relaxed);
        }
    }

    /// Body bytes sent to the client.
    pub(crate) fn bytes_out(&self, n: u64) {
        if self.recording {
            self.shard().bytes_out.fetch_add(n, Relaxed);
        }
    }

    /// Requests of this prefix not finished yet.
    pub(crate) fn inflight(&self) -> i64 {
        // Ends first: a start read after them can only make the sum larger
        // than the truth for a moment, never count a finished request twice.
        let ended: u64 = self
            .shards
            .iter()
            .map(|s| {
                s.status.iter().map(|c| c.load(Relaxed)).sum::<u64>()
                    + s.finished_unrecorded.load(Relaxed)
            })
            .sum();
        let started: u64 = self.shards.iter().map(|s| s.started.load(Relaxed)).sum();
        i64::try_from(started).unwrap_or(i64::MAX) - i64::try_from(ended).unwrap_or(i64::MAX)
    }

    /// The sum over all shards. Fields are read one by one while requests
    /// go on, so a request may show in one field and not yet in another;
    /// the next read catches up, and totals never go backwards.
    pub fn read(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.shards.iter() {
            add_all(&mut t.status, &s.status);
            t.errors += s.errors.load(Relaxed);
            t.cancelled += s.cancelled.load(Relaxed);
            add_all(&mut t.upstream_errors, &s.upstream_errors);
            t.bytes_in += s.bytes_in.load(Relaxed);
            t.bytes_out += s.bytes_out.load(Relaxed);
            add_all(&mut t.latency, &s.latency.buckets);
            t.latency_sum_us += s.latency.sum_us.load(Relaxed);
            add_all(&mut t.ttfb, &s.ttfb.buckets);
            t.ttfb_sum_us += s.ttfb.sum_us.load(Relaxed);
        }
        t
    }
}

fn add_all<const N: usize>(into: &mut [u64; N], from: &[AtomicU64; N]) {
    for (t, f) in into.iter_mut().zip(from) {
        *t += f.load(Relaxed);
    }
}

/// Plain totals of one prefix, read from its shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub(crate) status: [u64; 5],
    pub(crate) errors: u64,
    pub(crate) cancelled: u64,
    pub(crate) upstream_errors: [u64; UpstreamErrorKind::ALL.len()],
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) latency: [u64; BUCKETS],
    pub(crate) latency_sum_us: u64,
    pub(crate) ttfb: [u64; BUCKETS],
    pub(crate) ttfb_sum_us: u64,
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.status.iter().sum()
    }

    /// What was added since `earlier` (an older read of the same counters).
    pub(crate) fn since(&self, earlier: &Totals) -> Totals {
        fn sub<const N: usize>(a: &[u64; N], b: &[u64; N]) -> [u64; N] {
            std::array::from_fn(|i| a[i].saturating_sub(b[i]))
        }
        Totals {
            status: sub(&self.status, &earlier.status),
            errors: self.errors.saturating_sub(earlier.errors),
            cancelled: self.cancelled.saturating_sub(earlier.cancelled),
            upstream_errors: sub(&self.upstream_errors, &earlier.upstream_errors),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            latency: sub(&self.latency, &earlier.latency),
            latency_sum_us: self.latency_sum_us.saturating_sub(earlier.latency_sum_us),
            ttfb: sub(&self.ttfb, &earlier.ttfb),
            ttfb_sum_us: self.ttfb_sum_us.saturating_sub(earlier.ttfb_sum_us),
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// Every prefix's stats, kept for the life of the process so counters stay
/// monotonic across snapshots (a prefix deleted and re-added continues its
/// series). Only snapshot builds and readers take the lock.
#[derive(Debug)]
pub struct StatsRegistry {
    shards: usize,
    recording: bool,
    prefixes: Mutex<HashMap<Arc<str>, Arc<PrefixStats>>>,
    unmatched: Arc<PrefixStats>,
}

impl StatsRegistry {
    /// `threads`: how many threads record (the runtime's workers); the
    /// shard count is that rounded up to a power of two, at most 16.
    /// `recording`: `false` counts only requests in flight.
    pub fn new(threads: usize, recording: bool) -> StatsRegistry {
        let shards = threads.clamp(1, 16).next_power_of_two();
        StatsRegistry {
            shards,
            recording,
            prefixes: Mutex::new(HashMap::new()),
            unmatched: Arc::new(PrefixStats::new(NO_PREFIX.into(), shards, recording)),
        }
    }

    /// Whether request stats are recorded (`API_PROXY_ENABLE_STATS`).
    pub(crate) fn recording(&self) -> bool {
        self.recording
    }

    /// Requests in flight over every prefix.
    pub(crate) fn inflight(&self) -> i64 {
        let map = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|s| s.inflight()).sum::<i64>() + self.unmatched.inflight()
    }

    /// The stats of `prefix`, created on first use.
    pub fn prefix(&self, prefix: &str) -> Arc<PrefixStats> {
        let mut map = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = map.get(prefix) {
            return stats.clone();
        }
        let prefix: Arc<str> = prefix.into();
        let stats = Arc::new(PrefixStats::new(
            prefix.clone(),
            self.shards,
            self.recording,
        ));
        map.insert(prefix, stats.clone());
        stats
    }

    /// Requests that matched no mapping (`prefix="none"`).
    pub(crate) fn unmatched(&self) -> &Arc<PrefixStats> {
        &self.unmatched
    }

    /// Every mapped prefix's stats, sorted by prefix.
    pub(crate) fn all(&self) -> Vec<Arc<PrefixStats>> {
        let map = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.values().cloned().collect();
        drop(map);
        all.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_what_happened() {
        let reg = StatsRegistry::new(3, true);
        assert_eq!(reg.shards, 4);
        let s = reg.prefix("/a");
        assert!(Arc::ptr_eq(&s, &reg.prefix("/a")));
        for _ in 0..5 {
            s.start();
        }
        assert_eq!(reg.inflight(), 5);
        s.ttfb(Duration::from_millis(3));
        s.finish(200, Outcome::Completed, Duration::from_millis(7));
        s.finish(503, Outcome::Completed, Duration::from_millis(1));
        s.finish(
            502,
            Outcome::Failed(UpstreamErrorKind::Connect),
            Duration::from_secs(2),
        );
        s.finish(499, Outcome::Cancelled, Duration::from_secs(4000));
        s.bytes_in(10);
        s.bytes_out(20);
        let t = s.read();
        assert_eq!(t.requests(), 4);
        assert_eq!(t.status, [0, 1, 0, 1, 2]);
        assert_eq!(t.errors, 2);
        assert_eq!(t.cancelled, 1);
        assert_eq!(t.upstream_errors[UpstreamErrorKind::Connect as usize], 1);
        assert_eq!((t.bytes_in, t.bytes_out), (10, 20));
        assert_eq!(t.latency[0], 1);
        assert_eq!(t.latency[1], 1);
        assert_eq!(t.latency[8], 1);
        assert_eq!(t.latency[BUCKETS - 1], 1);
        assert_eq!(t.ttfb[0], 1);
        assert_eq!(t.latency_sum_us, 4_002_008_000);
        assert_eq!(reg.inflight(), 1);
    }

    #[test]
    fn off_counts_only_inflight() {
        let reg = StatsRegistry::new(1, false);
        let s = reg.prefix("/a");
        s.start();
        s.start();
        s.ttfb(Duration::ZERO);
        s.bytes_in(3);
        s.finish(200, Outcome::Completed, Duration::ZERO);
        assert!(s.read().is_zero());
        assert_eq!(reg.inflight(), 1);
    }

    #[test]
    fn shards_from_many_threads_add_up() {
        let reg = Arc::new(StatsRegistry::new(2, true));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = reg.prefix("/x");
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.start();
                        s.finish(200, Outcome::Completed, Duration::ZERO);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = reg.prefix("/x").read();
        assert_eq!(t.requests(), 4000);
        assert_eq!(t.latency[0], 4000);
        assert_eq!(reg.inflight(), 0);
    }

    #[test]
    fn since_is_the_difference() {
        let reg = StatsRegistry::new(1, true);
        let s = reg.prefix("/x");
        s.finish(200, Outcome::Completed, Duration::ZERO);
        let first = s.read();
        s.finish(500, Outcome::Completed, Duration::ZERO);
        s.bytes_out(5);
        let d = s.read().since(&first);
        assert_eq!(d.requests(), 1);
        assert_eq!(d.status[4], 1);
        assert_eq!((d.errors, d.bytes_out), (1, 5));
        assert!(s.read().since(&s.read()).is_zero());
    }
}
