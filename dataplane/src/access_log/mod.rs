//! Where a finished request is reported besides the stats: the access log
//! (one line a request, `API_PROXY_ACCESS_LOG`) and the recent failures
//! the stats batches carry to the console.
//!
//! The log never blocks the request path: an entry is a few copies made
//! as the request arrives, formatted at its end into its worker's buffer
//! (`lines`), and written by a thread of its own; nothing on the request
//! path waits for the disk or a pipe. When the sink is slower than the
//! traffic the buffers fill and lines are dropped and counted
//! (`apiproxy_access_log_dropped_total`), never kept without bound.

mod entry;
mod format;
mod lines;
mod writer;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::HeaderValue;
use prometheus::IntCounter;

pub(crate) use entry::AccessEntry;
pub(crate) use writer::{Reopener, WriterHandle};

use crate::failures::RecentFailures;
use crate::request_id::random_u64;
use lines::{Lines, Slot};

/// Bytes of lines a worker's buffer holds at most while the writer has
/// not taken it; beyond, lines are dropped. A tick's worth of lines at
/// 50,000 requests a second is about 1 MiB.
const BUFFERED: usize = 2 * 1024 * 1024;

/// `API_PROXY_ACCESS_LOG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sink {
    Off,
    Stdout,
    /// Appended to; reopened on SIGHUP (for logrotate).
    File(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = String;

    fn from_str(s: &str) -> Result<Sink, String> {
        match s {
            "off" => Ok(Sink::Off),
            "stdout" => Ok(Sink::Stdout),
            "" => Err("must be off, stdout or a file path".into()),
            path => Ok(Sink::File(path.into())),
        }
    }
}

/// `API_PROXY_ACCESS_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Json,
    Text,
}

/// The access-log settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) sink: Sink,
    pub(crate) format: Format,
    /// Log the query string, credential parameters masked.
    pub(crate) query: bool,
    /// Fraction of successful requests logged (failures always are).
    pub(crate) sample: f64,
    pub(crate) node_id: String,
}

/// The access log's side of the request path.
#[derive(Debug)]
pub(crate) struct AccessLog {
    lines: Arc<Lines>,
    format: Format,
    node_id: Box<str>,
    query: bool,
    /// `sample` scaled to the range of a `u64`: a request is kept when a
    /// random draw is below it.
    keep_below: u64,
    dropped: IntCounter,
}

/// What a request reports to when it ends, besides its stats. Lives for
/// the whole process (the records of streams still open at shutdown keep
/// a reference).
#[derive(Debug)]
pub(crate) struct RequestLog {
    pub(crate) access: Option<AccessLog>,
    pub(crate) failures: RecentFailures,
}

impl RequestLog {
    /// Opens the sink and starts the writer's thread. `dropped` counts the
    /// lines a full buffer had no room for and those the sink refused.
    pub(crate) fn start(
        settings: Settings,
        dropped: IntCounter,
    ) -> std::io::Result<(&'static RequestLog, Option<WriterHandle>)> {
        let (access, writer) = if settings.sink == Sink::Off {
            (None, None)
        } else {
            let lines = Arc::new(Lines::new(BUFFERED));
            let writer = writer::start(&settings, lines.clone(), dropped.clone())?;
            let keep_below = if settings.sample >= 1.0 {
                u64::MAX
            } else {
                (settings.sample.max(0.0) * u64::MAX as f64) as u64
            };
            let access = AccessLog {
                lines,
                format: settings.format,
                node_id: settings.node_id.into(),
                query: settings.query,
                keep_below,
                dropped,
            };
            (Some(access), Some(writer))
        };
        let log = RequestLog {
            access,
            failures: RecentFailures::default(),
        };
        Ok((Box::leak(Box::new(log)), writer))
    }

    /// Reports nothing anywhere (tests of the request path).
    #[cfg(test)]
    pub(crate) fn off() -> &'static RequestLog {
        Box::leak(Box::new(RequestLog {
            access: None,
            failures: RecentFailures::default(),
        }))
    }

    /// The entry of a request that arrives: its fields copied only when
    /// there is an access log to write them to.
    pub(crate) fn entry<B>(
        &self,
        req: &http::Request<B>,
        request_id: HeaderValue,
        client: SocketAddr,
    ) -> Box<AccessEntry> {
        Box::new(match &self.access {
            Some(access) => AccessEntry::new(req, request_id, client, access.query),
            None => AccessEntry::bare(request_id, client),
        })
    }

    /// Writes a finished entry's line, unless sampling leaves a success
    /// out or the writer is behind.
    pub(crate) fn write(&self, entry: &AccessEntry, failed: bool) {
        let Some(access) = &self.access else { return };
        if !failed && access.keep_below != u64::MAX && draw() >= access.keep_below {
            return;
        }
        let Some(mut slot) = access.lines.slot() else {
            access.dropped.inc();
            return;
        };
        let Slot { buf, memo } = &mut *slot;
        match access.format {
            Format::Json => entry.write_json(&access.node_id, memo, buf),
            Format::Text => entry.write_text(&access.node_id, memo, buf),
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(random_u64() | 1);
}

/// A uniform `u64` from this thread's xorshift generator (sampling needs
/// no more than that, and no lock or syscall).
fn draw() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse() {
        assert_eq!("off".parse(), Ok(Sink::Off));
        assert_eq!("stdout".parse(), Ok(Sink::Stdout));
        assert_eq!(
            "/var/log/a.log".parse(),
            Ok(Sink::File("/var/log/a.log".into()))
        );
        assert!("".parse::<Sink>().is_err());
    }

    #[test]
    fn draws_spread_over_the_range() {
        let below_half = (0..10_000).filter(|_| draw() < u64::MAX / 2).count();
        assert!((4_000..6_000).contains(&below_half), "{below_half}");
    }
}
