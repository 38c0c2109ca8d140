//! SSE load generator for `bench/bench.py h2` (wrk does not read event
//! streams): opens `--streams` HTTP/1.1 connections, each asking for an
//! event stream (GET, or POST with a `--post-bytes` JSON body), and for
//! every event measures its age: now minus the send time the origin
//! (`--example origin`) wrote into it, both read from the same clock.
//! Prints one JSON object: streams, events, latency percentiles.
//!
//! `--repeat` makes each connection ask again, on the same keep-alive
//! connection, as soon as a stream ends, until `--duration-s` has passed:
//! chat requests answered by short generations, counted per second.
//!
//! ```sh
//! cargo run --release -p apiproxy-tests --example sse_load -- --target 127.0.0.1:8000 \
//!     --path /llm/sse --streams 2000 --open-per-s 2000 --duration-s 30
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The SSE load generator (see the module's comment).
#[derive(Clone, Debug, clap::Parser)]
struct Options {
    #[arg(long, default_value = "127.0.0.1:8000")]
    target: SocketAddr,
    #[arg(long, default_value = "/sse")]
    path: String,
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Connections opened a second.
    #[arg(long, default_value_t = 2000.0)]
    open_per_s: f64,
    #[arg(long = "duration-s", default_value_t = 30.0)]
    duration_s: f64,
    /// With a body of this many bytes (a chat request): POST, else GET.
    #[arg(long, default_value_t = 0)]
    post_bytes: usize,
    /// Ask again on the same connection until the duration has passed.
    #[arg(long)]
    repeat: bool,
    /// Events younger than this after the start are not counted (the
    /// ramp-up).
    #[arg(long = "warmup-s", default_value_t = 0.0)]
    warmup_s: f64,
    /// Also report, for each second since the start, how many events
    /// arrived older than this (where in the run a high percentile comes
    /// from); 0: not reported.
    #[arg(long = "late-ms", default_value_t = 0.0)]
    late_ms: f64,
}

#[derive(Default)]
struct Totals {
    opened: AtomicU64,
    /// Streams answered 200 with an event stream.
    ok: AtomicU64,
    /// Streams read to their end.
    done: AtomicU64,
    errors: AtomicU64,
    events: AtomicU64,
    /// Event ages in microseconds.
    ages: Mutex<Vec<u32>>,
    /// The second since the start in which each event older than
    /// `--late-ms` arrived.
    late: Mutex<Vec<u32>>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn request(o: &Options) -> Vec<u8> {
    if o.post_bytes == 0 {
        return format!(
            "GET {} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
            o.path
        )
        .into_bytes();
    }
    // A chat request: JSON with a long prompt.
    let head =
        "{\"model\":\"bench\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"";
    let tail = "\"}]}";
    let pad = o.post_bytes.saturating_sub(head.len() + tail.len());
    let body = format!("{head}{}{tail}", "x".repeat(pad));
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        o.path,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

/// Reads HTTP/1.1 responses off one connection.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }
}

/// One response: its status, then its body's events, each handed to
/// `on_event` with its age as it arrives.
async fn read_response(r: &mut Reader, mut on_event: impl FnMut(u128)) -> std::io::Result<u16> {
    let status_line = r.line().await?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut chunked, mut length) = (false, None);
    loop {
        let line = r.line().await?;
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        } else if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut events = Vec::new();
    let mut scan = |data: &[u8], events: &mut Vec<u8>| {
        events.extend_from_slice(data);
        while let Some(end) = events.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = events.drain(..end + 2).collect();
            if let Some(t) = sent_at(&event) {
                on_event(now_ns().saturating_sub(t));
            }
        }
    };
    if chunked {
        loop {
            let size =
                usize::from_str_radix(r.line().await?.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                while !r.line().await?.is_empty() {}
                break;
            }
            let data = r.take(size).await?;
            scan(&data, &mut events);
            r.take(2).await?;
        }
    } else {
        let data = r.take(length.unwrap_or(0)).await?;
        scan(&data, &mut events);
    }
    Ok(status)
}

/// The `"t":<ns>` an event carries.
fn sent_at(event: &[u8]) -> Option<u128> {
    let at = event.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits: Vec<u8> = event[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn one_connection(o: Arc<Options>, totals: Arc<Totals>, start: Instant, end: Instant) {
    let Ok(stream) = TcpStream::connect(o.target).await else {
        totals.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut r = Reader {
        stream,
        buf: Vec::new(),
    };
    let req = request(&o);
    let mut ages = Vec::new();
    let mut late = Vec::new();
    let late_ns = (o.late_ms * 1e6) as u128;
    loop {
        totals.opened.fetch_add(1, Ordering::Relaxed);
        if r.stream.write_all(&req).await.is_err() {
            totals.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let counted = |age_ns: u128| {
            totals.events.fetch_add(1, Ordering::Relaxed);
            let since = start.elapsed();
            if since.as_secs_f64() >= o.warmup_s {
                ages.push((age_ns / 1000).min(u32::MAX as u128) as u32);
            }
            if late_ns > 0 && age_ns > late_ns {
                late.push(since.as_secs() as u32);
            }
        };
        match read_response(&mut r, counted).await {
            Ok(200) => {
                totals.ok.fetch_add(1, Ordering::Relaxed);
                totals.done.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        if !o.repeat || Instant::now() >= end {
            break;
        }
    }
    totals.ages.lock().unwrap().extend(ages);
    totals.late.lock().unwrap().extend(late);
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let o = Arc::new(<Options as clap::Parser>::parse());
    let totals = Arc::new(Totals::default());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(o.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / o.open_per_s.max(1.0));
    for i in 0..o.streams {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        tasks.spawn(one_connection(o.clone(), totals.clone(), start, end));
    }
    eprintln!(
        "sse_load: {} streams opened in {:.1} s",
        o.streams,
        start.elapsed().as_secs_f64()
    );
    // Every stream ends by itself; past the duration and a grace of 30 s,
    // whatever is left is cut (and counted as not done).
    let _ = tokio::time::timeout_at((end + Duration::from_secs(30)).into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let elapsed = start.elapsed().as_secs_f64();
    let mut ages = std::mem::take(&mut *totals.ages.lock().unwrap());
    ages.sort_unstable();
    let mut json = serde_json::json!({
        "streams": o.streams,
        "opened": totals.opened.load(Ordering::SeqCst),
        "ok": totals.ok.load(Ordering::SeqCst),
        "done": totals.done.load(Ordering::SeqCst),
        "errors": totals.errors.load(Ordering::SeqCst),
        "events": totals.events.load(Ordering::SeqCst),
        "counted": ages.len(),
        "elapsed_s": elapsed,
        "age_us": {
            "p50": pct(&ages, 50.0), "p90": pct(&ages, 90.0), "p99": pct(&ages, 99.0),
            "p999": pct(&ages, 99.9), "max": ages.last().copied().unwrap_or(0),
        },
    });
    let mut late_by_s = std::collections::BTreeMap::<u32, u64>::new();
    for second in std::mem::take(&mut *totals.late.lock().unwrap()) {
        *late_by_s.entry(second).or_default() += 1;
    }
    if o.late_ms > 0.0 {
        json["late_by_s"] = serde_json::json!(late_by_s);
    }
    println!("{json}");
}
