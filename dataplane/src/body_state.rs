//! What a streaming request body tells the rest of the request while it
//! streams: why it failed and when it last moved (the response-header
//! timeout and the error mapping read them), and how many bytes it took
//! (the access log reads that). Shared by the body and whoever holds the
//! slot; below both.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why the client's request body stopped, kept outside the error chain:
/// an HTTP/2 upstream connection turns a body error into a stream reset
/// and drops the cause, yet the client must still get 413 or 400, not 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    TooLarge(u64),
    Idle(Duration),
    /// The client's side broke (it went away mid-upload).
    Client,
    /// The client sent a body that does not parse (bad chunk framing).
    Malformed,
}

/// What a streaming request body tells the proxy: why it failed, when it
/// last moved, and how much it took. The response-header timeout counts from the last byte
/// sent, so an upload in progress is never cut, and one the upstream
/// stopped reading still ends.
#[derive(Debug)]
pub(crate) struct BodyState {
    pub(crate) failure: OnceLock<BodyFailure>,
    origin: tokio::time::Instant,
    /// Milliseconds after `origin` of the last frame taken from the client.
    last_frame_ms: std::sync::atomic::AtomicU64,
    /// Body bytes taken from the client so far (for the access log).
    received: std::sync::atomic::AtomicU64,
}

impl Default for BodyState {
    fn default() -> Self {
        BodyState {
            failure: OnceLock::new(),
            origin: tokio::time::Instant::now(),
            last_frame_ms: std::sync::atomic::AtomicU64::new(0),
            received: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl BodyState {
    /// A frame was taken from the client; `received` bytes so far.
    pub(crate) fn moved(&self, received: u64) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_frame_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        self.received
            .store(received, std::sync::atomic::Ordering::Relaxed);
    }

    /// Body bytes taken from the client so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the body last moved (its creation if it never did).
    pub(crate) fn last_moved(&self) -> tokio::time::Instant {
        self.origin
            + Duration::from_millis(
                self.last_frame_ms
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
    }
}

pub(crate) type FailureSlot = Arc<BodyState>;
