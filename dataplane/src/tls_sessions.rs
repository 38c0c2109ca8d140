//! Where upstream TLS sessions are kept for resumption: rustls's in-memory
//! cache, with room for more TLS 1.3 tickets per server.
//!
//! A TLS 1.3 ticket resumes one connection only (rustls hands each out
//! once, as RFC 8446 asks of clients), and rustls keeps 8 per server: a
//! wave of new upstream connections (a load peak, a pool refilled after
//! an idle spell) used them up after eight, and every further connection
//! paid a full handshake, the origin's CPU as well as ours. Servers send
//! one or more tickets per connection (nginx and rustls two), so a pool
//! that keeps [`TICKETS_PER_SERVER`] resumes that many of a wave that
//! follows a first one. TLS 1.2 sessions, which may resume any number of
//! connections, stay as rustls keeps them (one per server).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::Tls13ClientSessionValue;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets kept per upstream server. Each holds the server's
/// certificate chain (a few KiB), so this bounds the store at a few
/// hundred KiB per server.
const TICKETS_PER_SERVER: usize = 128;

/// Servers whose tickets are kept (beyond it, one server's are dropped
/// for the newcomer's).
const SERVERS: usize = 256;

/// The store the upstream TLS config resumes sessions from.
pub(crate) fn store() -> Arc<dyn ClientSessionStore> {
    Arc::new(SessionStore {
        rest: ClientSessionMemoryCache::new(SERVERS),
        tickets: Mutex::default(),
    })
}

struct SessionStore {
    /// Key exchange hints and TLS 1.2 sessions.
    rest: ClientSessionMemoryCache,
    tickets: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore").finish_non_exhaustive()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.rest.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.rest.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.rest.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.rest.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.rest.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        if !tickets.contains_key(&server_name) && tickets.len() >= SERVERS {
            if let Some(other) = tickets.keys().next().cloned() {
                tickets.remove(&other);
            }
        }
        let kept = tickets.entry(server_name).or_default();
        if kept.len() == TICKETS_PER_SERVER {
            kept.pop_front();
        }
        kept.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // The newest first: the furthest from its expiry.
        self.tickets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(server_name)
            .and_then(VecDeque::pop_back)
    }
}
