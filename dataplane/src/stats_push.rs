//! Pushes stats batches to the control plane (SPEC §6).
//!
//! The counters in [`crate::stats`] only grow. The pusher remembers the
//! totals the control plane last acknowledged; a batch is the difference
//! between a fresh read and those. A batch that fails is kept and resent
//! unchanged (same `seq`, same deltas) until it is acknowledged, while new
//! requests keep adding to the live counters, so they land in the next
//! batch. Memory is therefore the acknowledged totals plus one batch,
//! O(prefixes), however long the control plane is away, and the control
//! plane, which applies each `(node_id, boot_id, seq)` once, neither loses
//! nor double-counts anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiproxy_shared::stats::{
    EndpointDelta, Gauges, KeyUsage, StatsBatch, MAX_KEY_USAGE, STATUS_CLASSES,
};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::StatsPush;
use crate::connect::{tls_config, TlsSetupError};
use crate::failures::RecentFailures;
use crate::gate::usage::UsageCounts;
use crate::request_id::random_u64;
use crate::routing::Snapshot;
use crate::state::RoutingState;
use crate::stats::Totals;

/// Longest wait for one push; a slow control plane never holds batches up
/// for longer than this.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the final flush on shutdown may take.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type PushClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A batch on its way, with the totals it was computed from: once it is
/// acknowledged those become the new baseline.
struct Pending {
    batch: StatsBatch,
    reads: Vec<(Arc<str>, Totals)>,
    unmatched: Totals,
    /// The number of the newest failed request in the batch.
    failed_upto: u64,
    /// Each key usage cell's read (by address).
    key_reads: Vec<(usize, UsageCounts)>,
}

/// How one send ended.
enum Sent {
    Acknowledged,
    /// The control plane refused the batch for good (400, 413): resending
    /// it cannot help, so it is dropped and logged.
    Rejected(StatusCode, String),
    Failed(String),
}

pub(crate) struct StatsPusher {
    client: PushClient,
    settings: StatsPush,
    authorization: HeaderValue,
    state: Arc<RoutingState>,
    boot_id: String,
    started: Instant,
    seq: u64,
    acked: HashMap<Arc<str>, Totals>,
    acked_unmatched: Totals,
    /// Per proxy key usage cell (by address: the registry holds each cell
    /// until its last counts are acknowledged), what was acknowledged.
    acked_keys: HashMap<usize, UsageCounts>,
    failures: &'static RecentFailures,
    /// The newest failed request the control plane acknowledged.
    acked_failed: u64,
    pending: Option<Pending>,
    /// The snapshot whose content hash is `hash`: hashing 10,000 mappings
    /// on every push would be waste.
    hashed: Option<(Arc<Snapshot>, String)>,
    failing: bool,
}

impl StatsPusher {
    pub(crate) fn new(
        settings: StatsPush,
        state: Arc<RoutingState>,
        failures: &'static RecentFailures,
        ca_file: Option<&std::path::Path>,
    ) -> Result<StatsPusher, TlsSetupError> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", settings.token.0))
            .expect("the configuration checked the token's characters");
        authorization.set_sensitive(true);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(PUSH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca_file)?)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(StatsPusher {
            client,
            settings,
            authorization,
            state,
            boot_id: boot_id(),
            started: Instant::now(),
            seq: 1,
            acked: HashMap::new(),
            acked_unmatched: Totals::default(),
            acked_keys: HashMap::new(),
            failures,
            acked_failed: 0,
            pending: None,
            hashed: None,
            failing: false,
        })
    }

    /// Pushes every interval until `shutdown`, then flushes what is left.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        info!(
            node_id = %self.settings.node_id,
            boot_id = %self.boot_id,
            url = %self.settings.url,
            interval = ?self.settings.interval,
            "pushing stats to the control plane"
        );
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => self.push_once().await,
                _ = shutdown.cancelled() => break,
            }
        }
        // The final flush: a batch still pending, then what came after it.
        let flush = async {
            let had_pending = self.pending.is_some();
            self.push_once().await;
            if had_pending && self.pending.is_none() {
                self.push_once().await;
            }
        };
        if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, flush)
            .await
            .is_err()
        {
            warn!("final stats flush timed out; the last deltas are lost");
        }
        if self.pending.is_some() {
            warn!(seq = self.seq, "final stats batch was not acknowledged");
        }
    }

    /// Sends the pending batch, or a new one, once.
    async fn push_once(&mut self) {
        let mut pending = match self.pending.take() {
            Some(p) => p,
            None => self.next_batch(),
        };
        // A resend keeps `seq` and the deltas; only the time and the
        // gauges are refreshed.
        pending.batch.sent_at = unix_now();
        pending.batch.gauges = self.gauges();
        let mut sent = self.send(&pending.batch).await;
        if matches!(sent, Sent::Rejected(..)) && without_newer_fields(&mut pending.batch) {
            // A control plane older than the batch's `failed` or `keys`
            // field refuses the whole batch for it (400): the counts go
            // again without them rather than be lost with them.
            warn!(
                seq = pending.batch.seq,
                "control plane rejected a stats batch with failed requests or key usage; resending it without them (upgrade the control plane)"
            );
            sent = self.send(&pending.batch).await;
        }
        match sent {
            Sent::Acknowledged => {
                if std::mem::take(&mut self.failing) {
                    info!(seq = pending.batch.seq, "stats pushes acknowledged again");
                }
                self.acknowledge(pending);
            }
            Sent::Rejected(status, body) => {
                self.state.metrics.stats_push_failures.inc();
                error!(seq = pending.batch.seq, %status, reason = %body, "control plane rejected a stats batch; dropping it");
                self.acknowledge(pending);
            }
            Sent::Failed(why) => {
                self.state.metrics.stats_push_failures.inc();
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(seq = pending.batch.seq, error = %why, "stats push failed; will resend the same batch");
                } else {
                    debug!(seq = pending.batch.seq, error = %why, "stats push failed again");
                }
                self.pending = Some(pending);
            }
        }
    }

    /// The reads become the baseline the next batch is measured from.
    fn acknowledge(&mut self, pending: Pending) {
        for (prefix, totals) in pending.reads {
            self.acked.insert(prefix, totals);
        }
        self.acked_unmatched = pending.unmatched;
        self.acked_failed = pending.failed_upto;
        for (cell, counts) in pending.key_reads {
            self.acked_keys.insert(cell, counts);
        }
        // Cells of deleted keys go once all they counted was pushed.
        let acked = &mut self.acked_keys;
        self.state.key_usage.prune(|r| {
            let address = Arc::as_ptr(&r.cell) as usize;
            let settled = acked.get(&address) == Some(&r.cell.read());
            if settled {
                acked.remove(&address);
            }
            settled
        });
        self.seq += 1;
    }

    fn next_batch(&mut self) -> Pending {
        let mut reads = Vec::new();
        let mut endpoints = BTreeMap::new();
        let stats = self.state.metrics.stats();
        for s in stats.all() {
            if endpoints.len() == MAX_BATCH_ENDPOINTS {
                // The rest keep their baseline and go in the next batch.
                break;
            }
            if let Some((delta, baseline)) = endpoint_batch(s.read(), self.acked.get(s.prefix())) {
                endpoints.insert(s.prefix().to_string(), delta);
                reads.push((s.prefix().clone(), baseline));
            }
        }
        let unmatched = stats.unmatched().read();
        let (keys, key_reads) = self.key_usage();
        let (failed, failed_upto) = self.failures.since(self.acked_failed);
        let snapshot = self.state.current();
        let config_hash = match &self.hashed {
            Some((hashed, hash)) if Arc::ptr_eq(hashed, &snapshot) => hash.clone(),
            _ => {
                let hash = snapshot.content_hash();
                self.hashed = Some((snapshot.clone(), hash.clone()));
                hash
            }
        };
        let batch = StatsBatch {
            node_id: self.settings.node_id.clone(),
            boot_id: self.boot_id.clone(),
            seq: self.seq,
            sent_at: unix_now(),
            interval_s: self.settings.interval.as_secs_f64(),
            config_version: self.state.version(),
            config_hash,
            gauges: Gauges::default(),
            unmatched: unmatched.since(&self.acked_unmatched).requests(),
            endpoints,
            failed,
            keys,
        };
        Pending {
            batch,
            reads,
            unmatched,
            failed_upto,
            key_reads,
        }
    }

    /// Each proxy key's usage per prefix since the last acknowledged batch,
    /// and the reads that become the next baseline.
    fn key_usage(&self) -> (Vec<KeyUsage>, Vec<(usize, UsageCounts)>) {
        let mut deltas = Vec::new();
        let mut reads = Vec::new();
        for r in self.state.key_usage.all() {
            if deltas.len() == MAX_KEY_USAGE {
                // The rest keep their baseline and go in the next batch.
                break;
            }
            let address = Arc::as_ptr(&r.cell) as usize;
            let now = r.cell.read();
            let acked = self.acked_keys.get(&address).copied().unwrap_or_default();
            let status: [u64; STATUS_CLASSES.len()] =
                std::array::from_fn(|i| now.status[i] - acked.status[i]);
            let requests: u64 = status.iter().sum();
            if requests == 0 && now.bytes_in == acked.bytes_in && now.bytes_out == acked.bytes_out {
                continue;
            }
            // An error counted after its class was read goes next time.
            let errors = (now.errors - acked.errors).min(requests);
            let baseline = UsageCounts {
                errors: acked.errors + errors,
                ..now
            };
            deltas.push(KeyUsage {
                key_id: r.key_id.to_string(),
                prefix: r.prefix.to_string(),
                requests,
                errors,
                status: STATUS_CLASSES
                    .iter()
                    .zip(status)
                    .filter(|(_, n)| *n > 0)
                    .map(|(class, n)| ((*class).to_owned(), n))
                    .collect(),
                bytes_in: now.bytes_in - acked.bytes_in,
                bytes_out: now.bytes_out - acked.bytes_out,
            });
            reads.push((address, baseline));
        }
        (deltas, reads)
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            inflight: u64::try_from(self.state.metrics.inflight()).unwrap_or(0),
            rss_bytes: rss_bytes().unwrap_or(0),
            uptime_s: self.started.elapsed().as_secs(),
            tasks: alive_tasks(),
        }
    }

    async fn send(&self, batch: &StatsBatch) -> Sent {
        let body = match serde_json::to_vec(batch) {
            Ok(body) => body,
            Err(e) => return Sent::Failed(format!("cannot encode the batch: {e}")),
        };
        let request = Request::post(self.settings.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| crate::causes::chain(&e))?;
            let status = response.status();
            // Read the (small) body so the connection goes back to the pool.
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(PUSH_TIMEOUT, exchange).await {
            Err(_) => Sent::Failed(format!("no answer within {PUSH_TIMEOUT:?}")),
            Ok(Err(e)) => Sent::Failed(e),
            Ok(Ok((status, _))) if status.is_success() => Sent::Acknowledged,
            Ok(Ok((status, body))) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                if matches!(
                    status,
                    StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
                ) {
                    Sent::Rejected(status, text)
                } else {
                    Sent::Failed(format!("control plane answered {status}: {text}"))
                }
            }
        }
    }
}

/// Clears the fields an older control plane refuses (`failed`, `keys`);
/// whether the batch held any.
fn without_newer_fields(batch: &mut StatsBatch) -> bool {
    let had = !batch.failed.is_empty() || !batch.keys.is_empty();
    batch.failed.clear();
    batch.keys.clear();
    had
}

/// Most endpoints one batch carries (about 250 KiB of JSON): the control
/// plane refuses bodies over 1 MiB. Endpoints left out keep their baseline
/// and go in the next batch.
const MAX_BATCH_ENDPOINTS: usize = 1_000;

/// One endpoint's delta since `acked`, and the totals that become its
/// baseline once the batch is acknowledged; `None` when nothing is new.
///
/// Shards are read field by field while requests finish, so a read can
/// hold a request's error (or cancellation) without its status. Counts
/// beyond the requests stay out of the baseline and go in the next batch:
/// every batch is valid, nothing is lost.
fn endpoint_batch(now: Totals, acked: Option<&Totals>) -> Option<(EndpointDelta, Totals)> {
    let zero = Totals::default();
    let acked = acked.unwrap_or(&zero);
    let mut baseline = now;
    let mut delta = baseline.since(acked);
    let requests = delta.requests();
    if delta.errors > requests {
        delta.errors = requests;
        baseline.errors = acked.errors + requests;
    }
    if delta.cancelled > requests {
        delta.cancelled = requests;
        baseline.cancelled = acked.cancelled + requests;
    }
    if delta.is_zero() {
        return None;
    }
    // From the totals, not the delta, so the rounding never adds up.
    let latency_sum_ms = baseline.latency_sum_us / 1000 - acked.latency_sum_us / 1000;
    Some((endpoint_delta(&delta, latency_sum_ms), baseline))
}

fn endpoint_delta(d: &Totals, latency_sum_ms: u64) -> EndpointDelta {
    EndpointDelta {
        requests: d.requests(),
        errors: d.errors,
        status: STATUS_CLASSES
            .iter()
            .zip(d.status)
            .filter(|(_, n)| *n > 0)
            .map(|(class, n)| ((*class).to_owned(), n))
            .collect(),
        cancelled: d.cancelled,
        bytes_in: d.bytes_in,
        bytes_out: d.bytes_out,
        latency_sum_ms,
        latency_buckets: d.latency.to_vec(),
        ttfb_buckets: d.ttfb.to_vec(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id for this process start, formatted like a UUID (v4). Two
/// std `RandomState`s are seeded from the OS's randomness, which is all a
/// boot id needs; no extra crate for it.
fn boot_id() -> String {
    let (a, b) = (random_u64(), random_u64());
    let (a, b) = (
        (a & 0xffff_ffff_ffff_0fff) | 0x4000,
        (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000,
    );
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Tasks alive in this runtime; 0 outside one. Pushed as a gauge (the
/// console's `goroutine_count`) and exported as `apiproxy_runtime_tasks`.
pub(crate) fn alive_tasks() -> u64 {
    tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks() as u64)
}

/// Resident set size from `/proc/self/status` (kB there).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_look_like_uuids_and_differ() {
        let a = boot_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, boot_id());
    }

    #[tokio::test]
    async fn alive_tasks_are_counted_in_a_runtime() {
        assert_eq!(std::thread::spawn(alive_tasks).join().unwrap(), 0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let before = alive_tasks();
        let task = tokio::spawn(async move { rx.await.ok() });
        assert_eq!(alive_tasks(), before + 1);
        tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_bytes().unwrap() > 1024 * 1024);
    }

    #[test]
    fn the_fallback_for_an_older_control_plane_sends_neither_failed_nor_keys() {
        let mut batch = StatsBatch {
            node_id: "dp-1".into(),
            boot_id: "b".into(),
            seq: 1,
            sent_at: 0,
            interval_s: 2.0,
            config_version: 0,
            config_hash: "h".into(),
            gauges: Gauges::default(),
            unmatched: 0,
            endpoints: BTreeMap::from([("/a".into(), endpoint_delta(&Totals::default(), 0))]),
            failed: vec![apiproxy_shared::FailedRequest {
                time: 1,
                request_id: "r-1".into(),
                prefix: "/a".into(),
                status: 502,
                error_type: None,
                duration_ms: 3,
            }],
            keys: vec![apiproxy_shared::KeyUsage {
                key_id: "key_0123456789abcdef".into(),
                prefix: "/a".into(),
                ..Default::default()
            }],
        };
        assert!(without_newer_fields(&mut batch));
        let json = serde_json::to_value(&batch).unwrap();
        assert!(json.get("keys").is_none() && json.get("failed").is_none());
        assert!(json["endpoints"].get("/a").is_some(), "the counts stay");
        assert!(!without_newer_fields(&mut batch), "nothing left to drop");
    }

    #[test]
    fn deltas_carry_only_nonzero_classes() {
        let mut t = Totals::default();
        t.status[1] = 3;
        t.status[4] = 1;
        t.errors = 1;
        t.latency_sum_us = 2_500;
        let d = endpoint_delta(&t, 2);
        assert_eq!(d.requests, 4);
        assert_eq!(
            d.status,
            BTreeMap::from([("2xx".into(), 3), ("5xx".into(), 1)])
        );
        assert_eq!(d.latency_sum_ms, 2);
        assert_eq!(d.latency_buckets.len(), apiproxy_shared::stats::BUCKETS);
    }

    #[test]
    fn a_torn_read_still_makes_a_valid_batch_and_loses_nothing() {
        // A read that saw a request's error before its status.
        let mut acked = Totals::default();
        acked.status[1] = 10;
        acked.errors = 2;
        let mut torn = acked.clone();
        torn.errors += 1;
        torn.cancelled += 1;
        assert!(endpoint_batch(torn.clone(), Some(&acked)).is_none());
        // One more finished request: the error and its status line up.
        let mut later = torn;
        later.status[4] += 1;
        let (delta, baseline) = endpoint_batch(later.clone(), Some(&acked)).unwrap();
        assert_eq!((delta.requests, delta.errors, delta.cancelled), (1, 1, 1));
        assert_eq!(baseline, later);
        // The same with the status seen and the error not yet: the error
        // comes in the next batch.
        let mut first = acked.clone();
        first.status[4] += 2;
        first.errors += 3; // one error of a request whose status is not in yet
        let (delta, baseline) = endpoint_batch(first.clone(), Some(&acked)).unwrap();
        assert_eq!((delta.requests, delta.errors), (2, 2));
        assert_eq!(baseline.errors, acked.errors + 2);
        let mut second = first;
        second.status[4] += 1;
        let (delta, _) = endpoint_batch(second, Some(&baseline)).unwrap();
        assert_eq!((delta.requests, delta.errors), (1, 1));
    }

    #[test]
    fn latency_sums_do_not_drift_with_rounding() {
        let mut total_ms = 0;
        let mut acked = Totals::default();
        let mut now = Totals::default();
        for _ in 0..1000 {
            now.status[1] += 1;
            now.latency_sum_us += 700; // 0.7 ms each
            let (delta, baseline) = endpoint_batch(now.clone(), Some(&acked)).unwrap();
            total_ms += delta.latency_sum_ms;
            acked = baseline;
        }
        assert_eq!(total_ms, 700);
    }
}
