//! The access log's own thread: every tick it takes each worker's buffer
//! of lines and writes it whole (to a file in one call, to stdout in
//! pieces of whole lines), so that a line is never torn and nothing on the
//! request path waits for the disk or a pipe. Lines of different workers
//! are written in turns, a buffer at a time.
//!
//! It sleeps between ticks instead of being woken by the workers: a
//! writer woken by every request (a futex call and a context switch each)
//! was measured to halve throughput, while a sleeping one costs the node
//! 20 wake-ups a second. Lines reach the sink within a tick.
//! SIGHUP asks it to reopen its file (after logrotate moved it): the batch
//! in hand goes to the old file, the next to the new one, none is lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::{info, warn};

use super::lines::Lines;
use super::{Settings, Sink};

/// How often the writer takes the workers' lines.
const TICK: Duration = Duration::from_millis(50);
/// A failing sink is reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The running writer: reopen its file, or stop it.
#[derive(Debug)]
pub(crate) struct WriterHandle {
    reopen: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Asks the writer to reopen its file at its path before its next batch.
#[derive(Debug, Clone)]
pub(crate) struct Reopener(Arc<AtomicBool>);

impl Reopener {
    pub(crate) fn reopen(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl WriterHandle {
    pub(crate) fn reopener(&self) -> Reopener {
        Reopener(self.reopen.clone())
    }

    /// Writes what the workers hold and stops, waiting up to `wait` for it.
    pub(crate) async fn close(self, wait: Duration) {
        self.closing.store(true, Ordering::Relaxed);
        let until = tokio::time::Instant::now() + wait;
        while !self.thread.is_finished() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.thread.is_finished() {
            warn!(
                ?wait,
                "access log writer did not finish in time: its sink is stalled"
            );
        }
    }
}

/// Where the lines go.
enum Out {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Out {
    fn open(sink: &Sink) -> io::Result<Out> {
        match sink {
            Sink::Off => Err(io::Error::other("the access log is off")),
            Sink::Stdout => Ok(Out::Stdout),
            Sink::File(path) => Ok(Out::File {
                file: open(path)?,
                path: path.clone(),
            }),
        }
    }

    /// Writes `batch`; on an error, also how much of it is known to have
    /// been written, so that only the lines after it count as lost.
    fn write(&mut self, batch: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut written = 0;
        match self {
            // Under the lock for the whole batch, so no other writer in
            // this process lands inside a line; and in whole lines of at
            // most PIPE_BUF a write, which a pipe never interleaves with
            // another process's writes (stderr and stdout in one pipe).
            Out::Stdout => {
                let mut out = io::stdout().lock();
                for chunk in whole_lines(batch, PIPE_BUF) {
                    out.write_all(chunk)
                        .and_then(|()| out.flush())
                        .map_err(|e| (e, written))?;
                    written += chunk.len();
                }
            }
            Out::File { file, .. } => {
                while written < batch.len() {
                    match file.write(&batch[written..]) {
                        Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err((e, written)),
                    }
                }
            }
        }
        Ok(())
    }

    fn reopen(&mut self) {
        if let Out::File { path, file } = self {
            match open(path) {
                Ok(new) => {
                    *file = new;
                    info!(path = %path.display(), "access log reopened");
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "cannot reopen the access log; still writing to the old file")
                }
            }
        }
    }
}

/// The most a write to a pipe keeps whole (POSIX's minimum, Linux's).
const PIPE_BUF: usize = 4096;

/// `batch` cut after newlines into pieces of at most `max` bytes (a line
/// longer than that is a piece of its own).
fn whole_lines(batch: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let window = &rest[..rest.len().min(max)];
        let end = match window.iter().rposition(|&b| b == b'\n') {
            Some(i) if rest.len() > max => i + 1,
            _ if rest.len() <= max => rest.len(),
            // One line longer than `max`: up to its newline.
            _ => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1),
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// The lines of `batch` not wholly written when the sink failed after
/// `written` bytes: a line cut short counts as lost with those after it.
fn lost_lines(batch: &[u8], written: usize) -> u64 {
    batch[written.min(batch.len())..]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Opens the sink (a failure is a configuration error) and starts the
/// thread.
pub(super) fn start(
    settings: &Settings,
    lines: Arc<Lines>,
    dropped: IntCounter,
) -> io::Result<WriterHandle> {
    let out = Out::open(&settings.sink)?;
    let reopen = Arc::new(AtomicBool::new(false));
    let closing = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        out,
        lines,
        reopen: reopen.clone(),
        closing: closing.clone(),
        dropped,
        batch: Vec::new(),
        reported: None,
    };
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer.run())?;
    Ok(WriterHandle {
        reopen,
        closing,
        thread,
    })
}

struct Writer {
    out: Out,
    lines: Arc<Lines>,
    reopen: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    dropped: IntCounter,
    /// A buffer taken from a worker, written and cleared, then given to
    /// the next worker in exchange for its own.
    batch: Vec<u8>,
    reported: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        loop {
            // Read before the buffers are taken: whatever was logged
            // before the close was asked for is written.
            let closing = self.closing.load(Ordering::Relaxed);
            self.take_all();
            if closing {
                // A worker appending now holds its buffer's lock, which
                // the last pass waits for; one that comes later finds the
                // log closed and counts its line dropped.
                self.lines.close();
                self.take_all();
                return;
            }
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.out.reopen();
            }
            std::thread::sleep(TICK);
        }
    }

    /// Takes every worker's lines and writes them.
    fn take_all(&mut self) {
        for i in 0..self.lines.slots() {
            self.lines.take(i, &mut self.batch);
            self.write();
        }
    }

    /// Writes `batch` and clears it.
    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Err((error, written)) = self.out.write(&self.batch) {
            let lost = lost_lines(&self.batch, written);
            self.dropped.inc_by(lost);
            let now = Instant::now();
            if self.reported.is_none_or(|at| now - at >= REPORT_EVERY) {
                self.reported = Some(now);
                warn!(%error, lines = lost, "cannot write the access log; lines lost");
            }
        }
        self.batch.clear();
        // A buffer that grew past the bound (a line beyond it, after a
        // stall) is let go rather than passed on to the next worker: what
        // the buffers hold in memory stays near the bound too.
        if self.batch.capacity() > self.lines.bound() {
            self.batch = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_after_newlines() {
        fn pieces(batch: &[u8], max: usize) -> Vec<&[u8]> {
            whole_lines(batch, max).collect()
        }
        assert_eq!(pieces(b"", 8), Vec::<&[u8]>::new());
        assert_eq!(pieces(b"ab\ncd\n", 8), vec![&b"ab\ncd\n"[..]]);
        assert_eq!(pieces(b"ab\ncd\nef\n", 7), vec![&b"ab\ncd\n"[..], b"ef\n"]);
        assert_eq!(
            pieces(b"a\nlong line\nb\n", 4),
            vec![&b"a\n"[..], b"long line\n", b"b\n"]
        );
        let batch = b"x\n".repeat(5000);
        let cut = pieces(&batch, PIPE_BUF);
        assert!(cut
            .iter()
            .all(|p| p.len() <= PIPE_BUF && p.ends_with(b"\n")));
        assert_eq!(cut.concat(), batch);
    }

    #[test]
    fn lines_written_before_a_failure_are_not_counted_lost() {
        let batch = b"a\nbb\nc\n";
        assert_eq!(lost_lines(batch, 0), 3);
        assert_eq!(lost_lines(batch, 2), 2, "after the first line");
        assert_eq!(lost_lines(batch, 3), 2, "the second line cut short");
        assert_eq!(lost_lines(batch, batch.len()), 0);
    }

    #[test]
    fn a_failing_file_says_how_much_it_took() {
        let mut out = Out::open(&Sink::File("/dev/full".into())).unwrap();
        let (error, written) = out.write(b"line\n").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
        assert_eq!(written, 0);
    }
}
