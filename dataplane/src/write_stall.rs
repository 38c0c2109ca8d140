//! A client that stops reading must not hold its upstream open forever.
//! When the socket cannot take more bytes, the listener stops polling the response
//! body, so the body's own idle timer never runs; the deadline has to sit
//! on the socket's write side instead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a client socket: a write that stays blocked for `timeout` fails
/// with `TimedOut`, which ends the connection and drops what it carried
/// (the upstream request with it).
#[derive(Debug)]
pub(crate) struct WriteStallTimeout<S> {
    inner: S,
    timeout: Duration,
    /// A write is blocked and `sleep` runs to its deadline.
    blocked: bool,
    /// Made on the first blocked write, re-armed on each later one:
    /// connections whose writes always go through cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStallTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        WriteStallTimeout {
            inner,
            timeout,
            blocked: false,
            sleep: None,
        }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    /// Tracks a write's result: `Pending` starts the deadline (once per
    /// stall) and fails once it has passed; progress ends the stall.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = false;
            return polled;
        }
        if !self.blocked {
            // The first block since the last progress starts the deadline;
            // later polls of the same stall only look at it.
            self.blocked = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = self.sleep.as_mut().expect("armed above");
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client read nothing for {:?} (idle timeout)", self.timeout),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStallTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStallTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, polled)
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
        let mut io = WriteStallTimeout::new(near, 2 * SECOND);
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
    async fn reads_may_wait_as_long_as_they_like() {
        // Waiting for a long upstream answer is not the client's stall.
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = WriteStallTimeout::new(near, SECOND);
        let later = tokio::spawn(async move {
            tokio::time::sleep(10 * SECOND).await;
            far.write_all(b"E").await.unwrap();
            far
        });
        assert_eq!(io.read_u8().await.unwrap(), b'E');
        drop(later.await.unwrap());
    }
}
