//! Our HTTP/1.1 client for upstream connections: the request's own task
//! writes the request and reads the response, straight from the socket.
//!
//! Why not hyper's connection-level client: it runs each connection in a
//! task of its own and hands every request and response across channels,
//! so each request woke two tasks and crossed four queues, a large share of
//! the proxy's user-space instructions. What is left is small enough to own: write a head
//! and a body, parse a head with `httparse` (the parser hyper uses), and
//! decode a body framed by length, by chunks or by the close.
//!
//! A connection is lent to one request at a time ([`send`]). It goes back
//! to its pool when the response body was read to its end and the whole
//! request was written; cut short, it is dropped, which closes it.
//!
//! Once the response head is in, the rest of an upload moves when the
//! response body is polled (the listener polls it while the client can
//! take more); a response that ends first ends the upload, and its connection
//! is closed rather than reused.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;

use super::connection::{Connection, ExchangeError, Home};
use super::request_writer::{encode_head, RequestFraming, Writer};
use super::response_body::ResponseBody;
use super::response_head::{poll_head, ResponseHead};

/// Sends `req` on `conn`: resolves at the response head, whose body reads
/// the rest from the same connection. `reused`: the connection served an
/// earlier request, so a request that did not reach the upstream may be
/// tried again elsewhere ([`Failed::Unsent`]): one whose first write
/// failed, and a bodiless GET, HEAD or OPTIONS whose connection closed
/// without a byte of answer (the upstream had closed it while it idled,
/// unseen, and never read the request).
pub(crate) fn send<B>(
    conn: Connection,
    req: Request<B>,
    host: &str,
    home: Home,
    reused: bool,
) -> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let head_request = req.method() == Method::HEAD;
    let (head, framing) = encode_head(&req, host);
    let resendable = reused
        && matches!(framing, RequestFraming::None)
        && matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let (parts, body) = req.into_parts();
    Exchange {
        conn: Some(conn),
        writer: Writer {
            queue: VecDeque::from([head]),
            body: Some(body),
            ended: matches!(framing, RequestFraming::None),
            flushed: false,
            framing,
            written: 0,
        },
        unsent: reused.then_some(parts),
        resendable,
        write_error: None,
        head_request,
        home: Some(home),
    }
}

/// Why a send produced no response.
pub(crate) enum Failed<B> {
    /// Nothing left on a reused connection (it had closed): the request
    /// can go on another.
    Unsent(Box<Request<B>>),
    Failed(ExchangeError),
}

/// The send: writes the request and reads the response head.
pub(crate) struct Exchange<B> {
    conn: Option<Connection>,
    writer: Writer<B>,
    /// The request's head, on a reused connection, while it may be retried.
    unsent: Option<http::request::Parts>,
    /// A bodiless GET, HEAD or OPTIONS on a reused connection.
    resendable: bool,
    /// The upstream stopped taking the request; its answer is still read.
    write_error: Option<ExchangeError>,
    head_request: bool,
    home: Option<Home>,
}

impl<B> Future for Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<Response<ResponseBody<B>>, Failed<B>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // The request goes up while the response is awaited: an upstream
        // may answer (413, say) before it read the whole body.
        let mut write_error = None;
        if !this.writer.is_done() {
            let conn = this.conn.as_mut().expect("exchange polled after it ended");
            if let Poll::Ready(Err(e)) = this.writer.poll_write(&mut conn.io, cx) {
                write_error = Some(e);
            }
        }
        if let Some(e) = write_error {
            if this.writer.written == 0 {
                if let Some(req) = this.give_back() {
                    return Poll::Ready(Err(Failed::Unsent(req)));
                }
            }
            if e.is_body() {
                // The client's body failed: no answer to wait for.
                this.conn = None;
                return Poll::Ready(Err(Failed::Failed(e)));
            }
            // The upstream may have answered and closed (a reset then fails
            // our writes while its answer waits to be read).
            this.writer.stop();
            this.write_error = Some(e);
        }
        let conn = this.conn.as_mut().expect("exchange polled after it ended");
        let head = match ready!(poll_head(conn, cx, this.head_request)) {
            Ok(head) => head,
            Err(e) => {
                let nothing_read = conn.read.is_empty();
                if matches!(e, ExchangeError::ClosedBeforeHead) && nothing_read && this.resendable {
                    if let Some(req) = this.give_back() {
                        return Poll::Ready(Err(Failed::Unsent(req)));
                    }
                }
                this.conn = None;
                let e = this.write_error.take().unwrap_or(e);
                return Poll::Ready(Err(Failed::Failed(e)));
            }
        };
        let ResponseHead {
            response,
            decoder,
            mut reusable,
        } = head;
        if this.write_error.is_some() {
            reusable = false;
        }
        let writer = std::mem::replace(
            &mut this.writer,
            Writer {
                queue: VecDeque::new(),
                body: None,
                ended: true,
                flushed: true,
                framing: RequestFraming::None,
                written: 0,
            },
        );
        let body = ResponseBody {
            conn: this.conn.take(),
            decoder,
            writer: (!writer.is_done()).then(|| Box::new(writer)),
            reusable,
            home: this.home.take(),
            gave_data: false,
        };
        Poll::Ready(Ok(response.map(|()| body)))
    }
}

impl<B> Exchange<B> {
    /// The request, rebuilt for another connection, when it may be.
    fn give_back(&mut self) -> Option<Box<Request<B>>> {
        let parts = self.unsent.take()?;
        let body = self.writer.body.take()?;
        self.conn = None;
        Some(Box::new(Request::from_parts(parts, body)))
    }
}
