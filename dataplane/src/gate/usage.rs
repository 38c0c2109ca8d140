//! Per proxy key and prefix usage, counted on the request path with
//! relaxed atomics and pushed in the stats batches (`keys`) as deltas.
//!
//! A key's counters are made the first time it is used on a prefix and
//! registered once with the [`UsageRegistry`], which the stats pusher
//! reads; the request path never takes the registry's lock after that.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use apiproxy_shared::stats::STATUS_CLASSES;
use fnv::FnvHashMap;

use crate::stats::Outcome;

/// What one key did on one prefix, since the node started.
/// Requests are not counted apart: they are the sum of the status
/// classes, so a batch's classes always add up to its requests.
#[derive(Debug, Default)]
pub(crate) struct UsageCell {
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    status: [AtomicU64; STATUS_CLASSES.len()],
}

/// A [`UsageCell`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UsageCounts {
    pub(crate) errors: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) status: [u64; STATUS_CLASSES.len()],
}

#[cfg(test)]
impl UsageCounts {
    pub(crate) fn requests(&self) -> u64 {
        self.status.iter().sum()
    }
}

impl UsageCell {
    /// A response ended with `status` (as [`crate::stats::PrefixStats::finish`]
    /// counts it: errors are 5xx and upstream failures, never cancels).
    pub(crate) fn finish(&self, status: u16, outcome: Outcome) {
        // The class before the error: see `read`.
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Relaxed);
        let error = match outcome {
            Outcome::Completed => status >= 500,
            Outcome::Failed(_) => true,
            Outcome::Cancelled => false,
        };
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    pub(crate) fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// The counts now. Errors are read before the classes and counted
    /// after them, so a read never shows more errors than requests.
    pub(crate) fn read(&self) -> UsageCounts {
        let errors = self.errors.load(Relaxed);
        UsageCounts {
            errors,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            status: std::array::from_fn(|i| self.status[i].load(Relaxed)),
        }
    }
}

/// One registered cell: whose and where.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub(crate) key_id: Arc<str>,
    pub(crate) prefix: Arc<str>,
    pub(crate) cell: Arc<UsageCell>,
}

/// Every cell ever made on this node, for the stats pusher.
#[derive(Debug, Default)]
pub struct UsageRegistry {
    cells: Mutex<Vec<Registered>>,
}

impl UsageRegistry {
    fn register(&self, entry: Registered) {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    /// The cells, in the order they were made.
    pub(crate) fn all(&self) -> Vec<Registered> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets cells only the registry still holds (their key is gone)
    /// once `settled` says their last counts were pushed.
    pub(crate) fn prune(&self, mut settled: impl FnMut(&Registered) -> bool) {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| Arc::strong_count(&r.cell) > 1 || !settled(r));
    }
}

/// One key's cells by prefix. Shared by every version of the key's record
/// (a rename or a disable keeps the counts).
#[derive(Debug)]
pub(crate) struct KeyUsage {
    pub(crate) key_id: Arc<str>,
    cells: RwLock<FnvHashMap<Arc<str>, Arc<UsageCell>>>,
    registry: Arc<UsageRegistry>,
}

impl KeyUsage {
    pub(crate) fn new(key_id: Arc<str>, registry: Arc<UsageRegistry>) -> KeyUsage {
        KeyUsage {
            key_id,
            cells: RwLock::default(),
            registry,
        }
    }

    /// The cell of `prefix`, made and registered on first use.
    pub(crate) fn cell(&self, prefix: &Arc<str>) -> Arc<UsageCell> {
        if let Some(cell) = self
            .cells
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(prefix)
        {
            return cell.clone();
        }
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        cells
            .entry(prefix.clone())
            .or_insert_with(|| {
                let cell = Arc::new(UsageCell::default());
                self.registry.register(Registered {
                    key_id: self.key_id.clone(),
                    prefix: prefix.clone(),
                    cell: cell.clone(),
                });
                cell
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_kind::UpstreamErrorKind;

    #[test]
    fn cells_count_and_register_once() {
        let registry = Arc::new(UsageRegistry::default());
        let usage = KeyUsage::new("key_1".into(), registry.clone());
        let prefix: Arc<str> = "/a".into();
        let cell = usage.cell(&prefix);
        assert!(Arc::ptr_eq(&cell, &usage.cell(&prefix)));
        cell.finish(200, Outcome::Completed);
        cell.finish(502, Outcome::Failed(UpstreamErrorKind::Connect));
        cell.finish(499, Outcome::Cancelled);
        cell.bytes_in(10);
        cell.bytes_out(20);
        let counts = cell.read();
        assert_eq!(counts.requests(), 3);
        assert_eq!(counts.errors, 1);
        assert_eq!(counts.status, [0, 1, 0, 1, 1]);
        assert_eq!((counts.bytes_in, counts.bytes_out), (10, 20));
        assert_eq!(registry.all().len(), 1);
        usage.cell(&"/b".into());
        assert_eq!(registry.all().len(), 2);
        // Held by the key: kept, settled or not.
        registry.prune(|_| true);
        assert_eq!(registry.all().len(), 2);
        drop((usage, cell));
        registry.prune(|r| &*r.prefix == "/a");
        let left = registry.all();
        assert_eq!(left.len(), 1);
        assert_eq!(&*left[0].prefix, "/b");
    }
}
