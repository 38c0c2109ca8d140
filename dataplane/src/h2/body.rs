//! The request body's pipe into its stream, and the response body read
//! from it.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};

use super::connection::Lease;
use super::{Error, REPLAY_LIMIT};

/// The request body on its way up, sent as the stream's window allows:
/// the client is read no faster than the upstream takes.
pub(super) struct Pipe<B> {
    pub(super) body: B,
    pub(super) tx: SendStream<Bytes>,
    /// To send before the body's own data (what a refused stream had
    /// taken).
    pub(super) queued: VecDeque<Bytes>,
    /// `body` has no more.
    pub(super) body_done: bool,
    /// What was sent, while it may have to be sent again; `None` once past
    /// [`REPLAY_LIMIT`] (or once the head arrived).
    pub(super) kept: Option<VecDeque<Bytes>>,
    pub(super) kept_len: usize,
    /// Everything was sent.
    pub(super) done: bool,
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Sends until the body ends (`Ok`), fails, or waits.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Room for at least a byte before anything is taken from the
            // client: h2 buffers what is sent past the window, so waiting
            // for it is the backpressure.
            self.tx.reserve_capacity(1);
            if self.tx.capacity() == 0 {
                loop {
                    match ready!(self.tx.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(Error::H2(e))),
                        None => {
                            return Poll::Ready(Err(Error::H2(h2::Error::from(Reason::CANCEL))))
                        }
                    }
                }
            } else if let Poll::Ready(reason) = self.tx.poll_reset(cx)? {
                return Poll::Ready(Err(Error::H2(reason.into())));
            }
            let data = match self.queued.pop_front() {
                Some(data) => data,
                None if self.body_done => {
                    self.tx.send_data(Bytes::new(), true)?;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                None => match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            self.body_done = self.body.is_end_stream();
                            data
                        }
                        Err(frame) => {
                            self.kept = None;
                            self.body_done = true;
                            if let Ok(trailers) = frame.into_trailers() {
                                self.tx.send_trailers(trailers)?;
                                self.done = true;
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                    },
                    Some(Err(e)) => {
                        self.tx.send_reset(Reason::CANCEL);
                        return Poll::Ready(Err(Error::Body(e.into())));
                    }
                    None => {
                        self.body_done = true;
                        continue;
                    }
                },
            };
            let end = self.body_done && self.queued.is_empty();
            self.keep(&data);
            self.tx.send_data(data, end)?;
            if end {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn keep(&mut self, data: &Bytes) {
        if let Some(kept) = &mut self.kept {
            self.kept_len += data.len();
            if self.kept_len <= REPLAY_LIMIT {
                kept.push_back(data.clone());
            } else {
                self.kept = None;
            }
        }
    }
}

/// An HTTP/2 response body; it also sends what is left of the request
/// body, and gives the stream's place back when dropped.
pub(crate) struct ResponseBody<B> {
    pub(super) recv: RecvStream,
    /// Boxed: rare (an answer before the whole request was sent), and
    /// every open stream would carry its size.
    pub(super) pipe: Option<Box<Pipe<B>>>,
    pub(super) data_done: bool,
    pub(super) _lease: Lease,
}

impl<B> ResponseBody<B> {
    /// The address of the connection its stream is on.
    pub(crate) fn peer(&self) -> Option<std::net::SocketAddr> {
        self._lease.conn.peer
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h2::ResponseBody")
            .field("data_done", &self.data_done)
            .finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(pipe) = &mut this.pipe {
            // The upload's own failure is the upstream's to answer: it sees
            // the stream reset.
            if pipe.poll(cx).is_ready() {
                this.pipe = None;
            }
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read: the upstream may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Error::H2(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Error::H2(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
