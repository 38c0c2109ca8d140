//! Upgraded connections (WebSocket, e.g. OpenAI Realtime): once the upstream
//! answered 101, bytes are copied both ways until either side closes, the
//! tunnel is silent for the idle timeout, or the drain deadline passes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::Tunnel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

/// Spawns and tracks tunnels, so shutdown can wait for them.
#[derive(Clone)]
pub(crate) struct Tunnels {
    tracker: TaskTracker,
    idle_timeout: Duration,
    /// Cancelled when the drain deadline passes.
    abort: CancellationToken,
}

impl Tunnels {
    pub(crate) fn new(idle_timeout: Duration, abort: CancellationToken) -> Self {
        Tunnels {
            tracker: TaskTracker::new(),
            idle_timeout,
            abort,
        }
    }

    /// `client` and the tunnel's upstream: both connections, already
    /// switched.
    pub(crate) fn spawn<C>(&self, client: C, tunnel: Tunnel)
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let idle = self.idle_timeout;
        let abort = self.abort.clone();
        let Tunnel {
            upstream,
            prefix,
            request_id,
        } = tunnel;
        let request_id = request_id.to_str().unwrap_or("-");
        let span = tracing::debug_span!("tunnel", %prefix, request_id);
        self.tracker.spawn(
            async move {
                let activity = Arc::new(AtomicU64::new(0));
                let origin = Instant::now();
                let mut client = Watched { io: client, activity: activity.clone(), origin };
                let mut upstream = Watched { io: upstream, activity: activity.clone(), origin };
                tokio::select! {
                    result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
                        Ok((up, down)) => debug!(up, down, "tunnel closed"),
                        Err(error) => debug!(%error, "tunnel failed"),
                    },
                    _ = idle_expired(&activity, origin, idle) => debug!("tunnel idle timeout"),
                    _ = abort.cancelled() => debug!("tunnel closed by shutdown"),
                }
            }
            .instrument(span),
        );
    }

    /// Stops accepting new tunnels and waits for the open ones to end.
    pub(crate) async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Resolves once no byte moved either way for `idle`.
async fn idle_expired(activity: &AtomicU64, origin: Instant, idle: Duration) {
    loop {
        let last = origin + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An I/O object that notes the time of its last successful read or write.
struct Watched<T> {
    io: T,
    activity: Arc<AtomicU64>,
    origin: Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
