//! The client socket, with the two deadlines hyper does not keep for us.
//!
//! - The first byte. hyper's header read timeout starts once a request
//!   head is being read, but the HTTP/1-or-h2c sniffing in front of it
//!   waits without one: a client that connects and sends nothing would
//!   hold its descriptor forever.
//! - Blocked writes. When a client stops reading, hyper stops polling the
//!   response body, so the body's own idle timer never runs and the
//!   upstream stays open. The deadline has to sit on the socket's write
//!   side instead.
//!
//! Both fail the socket with `TimedOut`, which ends the connection and
//! drops what it carried (the upstream request with it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct ClientIo<S> {
    inner: S,
    /// Until the first byte has arrived: when the connection is given up.
    first_byte_by: Option<Instant>,
    /// Longest a write may stay blocked.
    write_timeout: Duration,
    /// A write is blocked and `sleep` runs to its deadline.
    write_blocked: bool,
    /// The one timer, made on the first wait: the first-byte deadline
    /// first, then write stalls. Connections that never wait cost none.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> ClientIo<S> {
    /// `first_byte` counts from now; `write_timeout` from each write that
    /// blocks after progress.
    pub fn new(inner: S, first_byte: Duration, write_timeout: Duration) -> Self {
        ClientIo {
            inner,
            first_byte_by: Some(Instant::now() + first_byte),
            write_timeout,
            write_blocked: false,
            sleep: None,
        }
    }

    /// Polls the timer towards `deadline`, moving it there first if `reset`.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant, reset: bool) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if reset {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }

    fn timed_out(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
    }

    /// Tracks a write's result: `Pending` starts the stall deadline (once
    /// per stall) and fails when it has passed; progress ends the stall.
    fn track_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_blocked = false;
            return polled;
        }
        let reset = !std::mem::replace(&mut self.write_blocked, true);
        let deadline = Instant::now() + self.write_timeout;
        ready!(self.poll_deadline(cx, deadline, reset));
        Poll::Ready(Err(Self::timed_out(
            "client read nothing for the idle timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.first_byte_by else {
            return polled;
        };
        if polled.is_pending() {
            ready!(self.poll_deadline(cx, deadline, false));
            return Poll::Ready(Err(Self::timed_out("client sent nothing")));
        }
        if buf.filled().len() > filled {
            self.first_byte_by = None;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.track_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_fails_after_the_timeout_and_progress_resets_it() {
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = ClientIo::new(near, SECOND, 2 * SECOND);
        io.write_all(b"12345678").await.unwrap();
        // The pipe is full. Reading half of it frees room before the
        // deadline, so the next write goes through.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(SECOND * 3 / 2).await;
            let mut half = [0u8; 4];
            far.read_exact(&mut half).await.unwrap();
            far
        });
        io.write_all(b"abcd").await.unwrap();
        let _far = reader.await.unwrap();
        // Nobody reads any more: the next write times out 2 s after it
        // blocked, not 2 s after the first block.
        let blocked = Instant::now();
        let err = io.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(blocked.elapsed(), 2 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_before_the_first_byte_times_out_but_not_after_it() {
        let (near, _far) = tokio::io::duplex(64);
        let mut silent = ClientIo::new(near, SECOND, SECOND);
        let start = Instant::now();
        let err = silent.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), SECOND);

        let (near, mut far) = tokio::io::duplex(64);
        let mut talking = ClientIo::new(near, SECOND, SECOND);
        far.write_all(b"G").await.unwrap();
        assert_eq!(talking.read_u8().await.unwrap(), b'G');
        // Waiting for a long answer upstream is not the client's silence.
        let later = tokio::spawn(async move {
            tokio::time::sleep(10 * SECOND).await;
            far.write_all(b"E").await.unwrap();
            far
        });
        assert_eq!(talking.read_u8().await.unwrap(), b'E');
        drop(later.await.unwrap());
    }
}
