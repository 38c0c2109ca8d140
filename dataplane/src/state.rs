//! The routing state every request reads: one `ArcSwap<Snapshot>`, plus the
//! readiness flags. Sources (the mappings file now, Redis later) build a
//! snapshot aside and hand it to [`RoutingState::apply`]; requests `load`
//! it once each and never wait on a source.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::info;

use crate::gate::usage::UsageRegistry;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::routing::Snapshot;

#[derive(Debug)]
pub(crate) struct RoutingState {
    snapshot: ArcSwap<Snapshot>,
    /// The proxy keys and policies, swapped apart from the routes: a key
    /// change never rebuilds the routing table, nor a route change the
    /// keys.
    gate: ArcSwap<Gate>,
    /// Whether some mapping has a policy: requests to an all-open node
    /// never load the gate.
    gated: AtomicBool,
    pub(crate) key_usage: Arc<UsageRegistry>,
    /// The configuration version served: the routes' or, after a key or
    /// policy change, that change's (it does not touch the routes).
    version: AtomicU64,
    applied: AtomicBool,
    draining: AtomicBool,
    pub(crate) metrics: Metrics,
}

impl RoutingState {
    pub(crate) fn new(metrics: Metrics) -> Self {
        RoutingState {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            gate: ArcSwap::from_pointee(Gate::default()),
            gated: AtomicBool::new(false),
            key_usage: Arc::default(),
            version: AtomicU64::new(0),
            applied: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// The gate, when some mapping has a policy.
    pub(crate) fn gate(&self) -> Option<arc_swap::Guard<Arc<Gate>>> {
        self.gated.load(Ordering::Acquire).then(|| self.gate.load())
    }

    /// The gate (empty before the first), to build the next one from.
    pub(crate) fn current_gate(&self) -> Arc<Gate> {
        self.gate.load_full()
    }

    /// Swaps in the next gate whole.
    pub(crate) fn apply_gate(&self, gate: Gate) {
        let open = gate.is_open();
        info!(
            keys = gate.keys(),
            policies = gate.policies(),
            "keys and policies applied"
        );
        let m = &self.metrics;
        m.proxy_keys
            .set(i64::try_from(gate.keys()).unwrap_or(i64::MAX));
        m.policies
            .set(i64::try_from(gate.policies()).unwrap_or(i64::MAX));
        self.gate.store(Arc::new(gate));
        self.gated.store(!open, Ordering::Release);
    }

    /// The current snapshot, or `None` before the first one is applied.
    pub(crate) fn snapshot(&self) -> Option<arc_swap::Guard<Arc<Snapshot>>> {
        self.applied
            .load(Ordering::Acquire)
            .then(|| self.snapshot.load())
    }

    /// The current snapshot (empty before the first), to build the next
    /// one from.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new snapshot whole and updates the config gauges.
    pub(crate) fn apply(&self, snapshot: Snapshot) {
        let (version, invalid) = (snapshot.version, snapshot.invalid_entries());
        info!(
            version,
            mappings = snapshot.len(),
            invalid,
            "mappings applied"
        );
        // Swap first: a scrape that shows version N means requests already
        // route on N.
        self.snapshot.store(Arc::new(snapshot));
        self.applied.store(true, Ordering::Release);
        self.set_version(version);
        let m = &self.metrics;
        m.config_invalid_entries
            .set(i64::try_from(invalid).unwrap_or(i64::MAX));
        m.config_reload(true);
    }

    /// A key or policy change at `version` was applied: the routes stay.
    pub(crate) fn advance(&self, version: u64) {
        self.set_version(version);
        self.metrics.config_reload(true);
    }

    fn set_version(&self, version: u64) {
        self.version.store(version, Ordering::Release);
        self.metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// The configuration version served.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `Ok` when ready to take traffic, else the reason.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.applied.load(Ordering::Acquire) {
            Err("no mappings snapshot applied yet")
        } else {
            Ok(())
        }
    }
}
