//! Upstream HTTP/2, on the h2 crate: one shared [`Connection`] per TLS
//! connection whose ALPN chose `h2`, a [`Lease`] per stream, and the send
//! of one request ([`Exchange`]) up to its response head, whose body
//! ([`ResponseBody`]) reads the rest.
//!
//! Why not hyper's HTTP/2 client: it hides the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` and queues the streams beyond it
//! inside itself, where the pool cannot see them; the pool needs the limit
//! to open another connection instead (see [`crate::pool`]). With h2 the
//! pool reads the limit and counts the streams it leased.
//!
//! The request body is sent from the request's own task, not a task of
//! its own: the send future writes it while it waits for the head, and
//! the response body goes on writing what is left (an upstream may answer
//! before it has read the whole request).
//!
//! A stream the upstream refused unprocessed (`REFUSED_STREAM`, or a
//! GOAWAY that names a lower stream) is given back with its head and its
//! body, so the pool can send it again on another connection: what of the
//! body was already sent is kept for that (shared `Bytes`, not copied), up
//! to [`REPLAY_LIMIT`].

mod body;
mod connection;
mod exchange;

use std::error::Error as StdError;

use h2::Reason;

pub(crate) use body::ResponseBody;
pub(crate) use connection::{handshake, Connection, Lease};
pub(crate) use exchange::{resend, send, Exchange, Failed, Refused};

/// The most of a request body kept to send again should its stream be
/// refused: an LLM request (a prompt with its context) is well within it;
/// a larger upload that is refused fails instead.
const REPLAY_LIMIT: usize = 64 * 1024;

/// Streams a new connection is expected to allow, for the requests that
/// wait for it, until the server's SETTINGS say (RFC 9113 recommends
/// servers allow at least 100). Until they arrive h2 itself puts no limit:
/// only the request that opened the connection uses it before then.
pub(crate) const ASSUMED_STREAMS: usize = 100;

/// The longest the requests waiting for a new connection wait for the
/// server's SETTINGS after the handshake.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why an HTTP/2 exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("upstream HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// The client's request body failed (the cause says how).
    #[error("request body: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
}

impl Error {
    /// The upstream broke the protocol (as opposed to resetting or going).
    pub(crate) fn is_protocol(&self) -> bool {
        matches!(self, Error::H2(e) if e.reason() == Some(Reason::PROTOCOL_ERROR))
    }

    /// The client's request body failed, not the upstream.
    pub(crate) fn is_client_body(&self) -> bool {
        matches!(self, Error::Body(_))
    }
}
