//! One upstream host in the pool: its budget, its idle HTTP/1.1
//! connections, its HTTP/2 connections and the dials under way.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{FutureExt as _, Shared};
use tokio::sync::oneshot;

use super::HostKey;
use crate::budget::{Budget, BudgetLimits};
use crate::connect::ConnectError;
use crate::{h2, http1};

/// One upstream host. A request finds it by key once, when the request is
/// made, and holds it from then on: the checkout, and the release of the
/// connection after the response, lock only this host's connections.
pub(super) struct Host {
    pub(super) key: HostKey,
    pub(super) budget: Budget,
    /// Idle HTTP/1.1 connections, most recently used last: the warmest is
    /// taken first, and the coldest are left to expire when traffic falls.
    /// Shared with the response bodies that send their connection back.
    pub(super) idle: http1::Home,
    pub(super) h2: Mutex<H2Conns>,
    /// Dials going on after their request took an idle connection.
    pub(super) detached: AtomicUsize,
}

impl Host {
    pub(super) fn new(key: HostKey, limits: BudgetLimits) -> Self {
        Host {
            key,
            budget: Budget::new(limits),
            idle: http1::Home::default(),
            h2: Mutex::default(),
            detached: AtomicUsize::new(0),
        }
    }

    /// Records what a connection made for this host turned out to be;
    /// with the `ticket` it was dialled under, ends that dial and tells
    /// those who waited for it.
    pub(super) fn dialed(
        &self,
        ticket: Option<DialTicket>,
        outcome: Dialed,
        conn: Option<Arc<h2::Connection>>,
    ) {
        {
            let mut h2 = lock(&self.h2);
            if let Some(ticket) = &ticket {
                h2.dials.retain(|d| d.id != ticket.id);
            }
            h2.conns.extend(conn);
            match outcome {
                Dialed::H2 => h2.speaks_h2 = Some(true),
                Dialed::H1 => h2.speaks_h2 = Some(false),
                Dialed::Failed(_) => {}
            }
        }
        if let Some(tell) = ticket.and_then(|mut t| t.tell.take()) {
            let _ = tell.send(outcome);
        }
    }
}

/// A host's HTTP/2 connections, and the connections being opened to it.
#[derive(Default)]
pub(super) struct H2Conns {
    /// Oldest first: streams fill the oldest, so extras empty first.
    pub(super) conns: Vec<Arc<h2::Connection>>,
    pub(super) dials: Vec<Dial>,
    pub(super) next_dial: u64,
    /// What ALPN chose on the last connection made: `None` until one was.
    pub(super) speaks_h2: Option<bool>,
}

/// A connection being opened, and how many requests wait for it.
pub(super) struct Dial {
    pub(super) id: u64,
    pub(super) waiting: usize,
    pub(super) outcome: Shared<oneshot::Receiver<Dialed>>,
}

/// What a dial made, told to the requests that waited for it.
#[derive(Clone, Debug)]
pub(super) enum Dialed {
    /// An HTTP/2 connection, now in the host's list.
    H2,
    /// An HTTP/1.1 connection, taken by the request that made it.
    H1,
    Failed(ConnectError),
}

impl H2Conns {
    /// A stream on the oldest connection with room; closed connections
    /// found on the way are forgotten.
    pub(super) fn lease(&mut self) -> Option<h2::Lease> {
        self.conns.retain(|c| !c.is_closed());
        self.conns.iter().find_map(h2::Connection::lease)
    }

    /// A dial to wait for, or a ticket to dial.
    pub(super) fn wait_or_dial(&mut self, host: &Arc<Host>) -> Found {
        // What the newest connection allows is what the next will.
        let expected = self
            .conns
            .last()
            .map_or(h2::ASSUMED_STREAMS, |c| c.stream_limit());
        // The dialer takes one stream itself.
        if let Some(dial) = self.dials.iter_mut().find(|d| d.waiting + 1 < expected) {
            dial.waiting += 1;
            return Found::Wait(dial.outcome.clone());
        }
        let (tell, outcome) = oneshot::channel();
        let id = self.next_dial;
        self.next_dial += 1;
        self.dials.push(Dial {
            id,
            waiting: 0,
            outcome: outcome.shared(),
        });
        Found::Dial(Some(DialTicket {
            host: host.clone(),
            id,
            tell: Some(tell),
        }))
    }
}

/// The right to open a connection others wait for. Dropped unused (the
/// request went away mid-dial), it lets them go and try for themselves.
pub(super) struct DialTicket {
    pub(super) host: Arc<Host>,
    pub(super) id: u64,
    pub(super) tell: Option<oneshot::Sender<Dialed>>,
}

impl Drop for DialTicket {
    fn drop(&mut self) {
        if self.tell.is_some() {
            lock(&self.host.h2).dials.retain(|d| d.id != self.id);
        }
    }
}

/// A connection taken for one request.
pub(super) enum Checkout {
    /// `reused`: it served a request before.
    H1 {
        conn: http1::Connection,
        reused: bool,
    },
    H2(h2::Lease),
}

/// Where a request's connection comes from.
pub(super) enum Found {
    Conn(Checkout),
    /// Another request is opening one.
    Wait(Shared<oneshot::Receiver<Dialed>>),
    /// Open one (and tell the waiters, with a ticket).
    Dial(Option<DialTicket>),
}

/// A lock whose holder panicked still guards consistent data here (each
/// critical section is a push, a pop or a retain).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
