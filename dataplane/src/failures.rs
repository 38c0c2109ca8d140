//! The node's newest failed requests (a status of 500 or more, a proxy
//! error, a cancel), kept for the console: each stats batch carries the
//! ones the control plane has not acknowledged yet.
//!
//! Only failures take the lock, for a push onto a ring of [`MAX_FAILED`]
//! (the ring's room is made once; what the push frees is the entry it
//! evicts), and the pusher, for a copy of what is new: no I/O under it,
//! and a request that succeeds never touches it.

use std::collections::VecDeque;
use std::sync::Mutex;

use apiproxy_shared::stats::{FailedRequest, MAX_FAILED};

#[derive(Debug, Default)]
pub(crate) struct RecentFailures {
    ring: Mutex<Ring>,
}

impl Default for Ring {
    fn default() -> Ring {
        Ring {
            kept: VecDeque::with_capacity(MAX_FAILED),
            last: 0,
        }
    }
}

#[derive(Debug)]
struct Ring {
    /// Oldest first, each with its number (1, 2, …).
    kept: VecDeque<(u64, FailedRequest)>,
    last: u64,
}

impl RecentFailures {
    pub(crate) fn push(&self, failed: FailedRequest) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.kept.len() == MAX_FAILED {
            ring.kept.pop_front();
        }
        ring.last += 1;
        let n = ring.last;
        ring.kept.push_back((n, failed));
    }

    /// The failures after number `after` still kept, oldest first, and the
    /// number of the newest (`after` when there is none).
    pub(crate) fn since(&self, after: u64) -> (Vec<FailedRequest>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let newer: Vec<_> = ring
            .kept
            .iter()
            .filter(|(n, _)| *n > after)
            .map(|(_, f)| f.clone())
            .collect();
        (newer, ring.last.max(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(n: u64) -> FailedRequest {
        FailedRequest {
            time: n,
            request_id: format!("r{n}"),
            prefix: "/a".into(),
            status: 502,
            error_type: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn keeps_the_newest_and_hands_out_each_once() {
        let f = RecentFailures::default();
        assert_eq!(f.since(0), (vec![], 0));
        for n in 1..=3 {
            f.push(failed(n));
        }
        let (batch, last) = f.since(0);
        assert_eq!(batch, vec![failed(1), failed(2), failed(3)]);
        assert_eq!(last, 3);
        assert_eq!(f.since(last), (vec![], 3));
        for n in 4..=(3 + MAX_FAILED as u64 + 10) {
            f.push(failed(n));
        }
        let (batch, last) = f.since(3);
        assert_eq!(batch.len(), MAX_FAILED);
        assert_eq!(batch[0], failed(14));
        assert_eq!(last, 3 + MAX_FAILED as u64 + 10);
    }
}
