//! The send of one request on a leased stream, up to its response head;
//! a refused stream is given back whole, to be sent again elsewhere.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::Reason;
use http::header::{HeaderValue, HOST, TE};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;

use super::body::{Pipe, ResponseBody};
use super::connection::Lease;
use super::Error;

/// A request's head, kept until the response head arrives so that a
/// refused stream can go again.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
}

impl Head {
    fn request(&self) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A request the upstream never processed, with what of its body was
/// already taken from the client: the pool sends it on another connection.
#[derive(Debug)]
pub(crate) struct Refused<B> {
    head: Head,
    body: B,
    /// Taken from `body` and sent on the refused stream.
    taken: VecDeque<Bytes>,
    /// `body` has no more.
    body_done: bool,
}

impl<B> Refused<B> {
    /// Nothing of the body has been taken: it can go on any connection.
    pub(crate) fn into_untouched(self: Box<Self>) -> Result<Request<B>, Box<Self>> {
        // A body at its end of which nothing was taken is empty: it goes
        // as it is.
        if !self.taken.is_empty() {
            return Err(self);
        }
        let Refused { head, body, .. } = *self;
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.headers_mut() = head.headers;
        Ok(req)
    }
}

/// How a send ended without a response head.
#[derive(Debug)]
pub(crate) enum Failed<B> {
    /// The stream was never opened (the connection was going away), or the
    /// upstream refused it unprocessed: it can go on another connection.
    Refused(Box<Refused<B>>),
    Failed(Error),
}

/// Sends `req` (absolute URI) on a leased stream. Over HTTP/2 the
/// authority travels in `:authority` only: `Host` is dropped, as Envoy
/// does (nginx answers a request with both 400, "client sent duplicate
/// host header").
pub(crate) fn send<B: Body<Data = Bytes> + Unpin>(lease: Lease, req: Request<B>) -> Exchange<B> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(HOST);
    // The hop-by-hop filter keeps `TE` only when it says `trailers` (in
    // any case); HTTP/2 wants exactly that spelling, and h2 refuses the
    // request otherwise.
    if parts.headers.contains_key(TE) {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    };
    let body_done = body.is_end_stream();
    resend(
        lease,
        Refused {
            head,
            body,
            taken: VecDeque::new(),
            body_done,
        },
    )
}

/// Sends a refused request again, on another connection's stream.
pub(crate) fn resend<B>(lease: Lease, refused: Refused<B>) -> Exchange<B> {
    Exchange {
        state: State::Ready(Some(Box::new(refused))),
        sender: lease.conn.sender.clone(),
        lease: Some(lease),
    }
}

/// The send of one request, up to its response head.
pub(crate) struct Exchange<B> {
    lease: Option<Lease>,
    sender: SendRequest<Bytes>,
    state: State<B>,
}

// The large variant is the one a send spends its time in.
#[allow(clippy::large_enum_variant)]
enum State<B> {
    /// Waiting for the connection to take a new stream.
    Ready(Option<Box<Refused<B>>>),
    /// Sent: the body goes up while the head is awaited.
    Head {
        head: Option<Head>,
        response: ResponseFuture,
        pipe: Option<Pipe<B>>,
    },
}

/// Marks the leased stream's connection closed: it took no new stream.
fn close(lease: &Option<Lease>) {
    if let Some(lease) = lease {
        lease.conn.close();
    }
}

impl<B> Future for Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<Response<ResponseBody<B>>, Failed<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Ready(refused) => {
                    if ready!(this.sender.poll_ready(cx)).is_err() {
                        // Going away, or gone: no stream was opened.
                        close(&this.lease);
                        let refused = refused.take().expect("polled after completion");
                        return Poll::Ready(Err(Failed::Refused(refused)));
                    }
                    let Refused {
                        head,
                        body,
                        taken,
                        body_done,
                    } = *refused.take().expect("polled after completion");
                    let end = body_done && taken.is_empty();
                    match this.sender.send_request(head.request(), end) {
                        Ok((response, tx)) => {
                            // A bodiless request's pipe is done at once;
                            // it holds the body for a resend.
                            let pipe = Pipe {
                                body,
                                tx,
                                queued: taken,
                                body_done,
                                kept: Some(VecDeque::new()),
                                kept_len: 0,
                                done: end,
                            };
                            this.state = State::Head {
                                head: Some(head),
                                response,
                                pipe: Some(pipe),
                            };
                        }
                        Err(e) if !(e.is_go_away() || e.is_io()) => {
                            // Not the connection's doing (a field h2
                            // refuses): this request fails, the
                            // connection stays.
                            return Poll::Ready(Err(Failed::Failed(Error::H2(e))));
                        }
                        Err(_) => {
                            close(&this.lease);
                            let refused = Refused {
                                head,
                                body,
                                taken,
                                body_done,
                            };
                            return Poll::Ready(Err(Failed::Refused(Box::new(refused))));
                        }
                    }
                }
                State::Head {
                    head,
                    response,
                    pipe,
                } => {
                    if let Some(p) = pipe {
                        match p.poll(cx) {
                            Poll::Pending => {}
                            // The client went or sent too much: nothing
                            // to wait for.
                            Poll::Ready(Err(e @ Error::Body(_))) => {
                                return Poll::Ready(Err(Failed::Failed(e)))
                            }
                            // Reset by the upstream: its answer, or its
                            // error, says why (a refusal among them: the
                            // pipe keeps what a resend needs).
                            Poll::Ready(Err(Error::H2(_))) => p.done = true,
                            // Sent whole; kept only while it may be sent
                            // again.
                            Poll::Ready(Ok(())) if p.kept.is_none() => *pipe = None,
                            Poll::Ready(Ok(())) => {}
                        }
                    }
                    let result = ready!(Pin::new(response).poll(cx));
                    let lease = this.lease.take().expect("leased until the send ends");
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let pipe = pipe.take().filter(|p| !p.done).map(|mut p| {
                                p.kept = None;
                                Box::new(p)
                            });
                            Ok(response.map(|recv| ResponseBody {
                                recv,
                                pipe,
                                data_done: false,
                                _lease: lease,
                            }))
                        }
                        Err(e)
                            if is_refused(&e)
                                || (resendable(head.as_ref(), pipe.as_ref())
                                    && went_away(&e, &mut this.sender, cx)) =>
                        {
                            if e.is_go_away() {
                                lease.conn.close();
                            }
                            match refused(head.take(), pipe.take()) {
                                Some(refused) => Err(Failed::Refused(Box::new(refused))),
                                None => Err(Failed::Failed(Error::H2(e))),
                            }
                        }
                        Err(e) => Err(Failed::Failed(Error::H2(e))),
                    });
                }
            }
        }
    }
}

/// The upstream did not process the stream: it refused it, or its GOAWAY
/// names a lower stream as the last it processes (RFC 9113, 6.8).
fn is_refused(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM))
}

/// A GET, HEAD or OPTIONS without a body, of which nothing was sent but
/// its head: what the HTTP/1.1 client also sends again when its
/// connection closed before any answer.
fn resendable<B>(head: Option<&Head>, pipe: Option<&Pipe<B>>) -> bool {
    let idempotent = head.is_some_and(|h| {
        h.method == Method::GET || h.method == Method::HEAD || h.method == Method::OPTIONS
    });
    idempotent
        && pipe.is_some_and(|p| {
            p.body_done && p.queued.is_empty() && p.kept.as_ref().is_some_and(VecDeque::is_empty)
        })
}

/// The stream was cut with its connection (`e`, an I/O error) after the
/// upstream said GOAWAY without an error, before any answer. Streams up
/// to the GOAWAY's last one may have been processed (RFC 9113, 6.8), and
/// h2 does not tell which that was: so this is taken as a refusal only
/// for requests that are safe to send twice ([`resendable`]).
fn went_away(e: &h2::Error, sender: &mut SendRequest<Bytes>, cx: &mut Context<'_>) -> bool {
    e.is_io()
        && matches!(
            sender.poll_ready(cx),
            Poll::Ready(Err(gone)) if gone.is_go_away()
                && gone.is_remote()
                && gone.reason() == Some(Reason::NO_ERROR)
        )
}

/// The request again, if all that was taken of its body was kept.
fn refused<B>(head: Option<Head>, pipe: Option<Pipe<B>>) -> Option<Refused<B>> {
    let pipe = pipe?;
    let mut taken = pipe.kept?;
    // Taken but not yet sent, then: still to be sent.
    taken.extend(pipe.queued);
    Some(Refused {
        head: head?,
        body: pipe.body,
        taken,
        body_done: pipe.body_done,
    })
}
