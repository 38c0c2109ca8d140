//! The client's request head: parsed, checked, and its body's framing
//! decided (RFC 9112 §6.1, §6.3); what cannot be served is refused with a
//! status of its own.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::codec::{parse_length, Decoder, Found, MAX_HEADERS};
use crate::headers::{has_token, list_tokens};

/// Largest request head (request line and fields); larger gets 431. API
/// requests carry a few short fields; nginx allows 32 KiB by default.
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// A request head that cannot be served: answered with an error and the
/// connection closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// Over [`MAX_REQUEST_HEAD`] or [`MAX_HEADERS`]: 431.
    #[error("{0}")]
    TooLarge(String),
    /// Malformed, or framed ambiguously: 400.
    #[error("{0}")]
    Malformed(String),
}

/// A parsed request head.
pub(crate) struct RequestHead {
    pub(crate) request: Request<()>,
    /// How the body is framed; `None`: there is none.
    pub(crate) body: Option<Decoder>,
    pub(crate) keep_alive: bool,
    /// An HTTP/1.0 client: keep-alive must be confirmed in the response,
    /// and a body of unknown length ends with the connection.
    pub(crate) http10: bool,
    /// The client accepts trailer fields (`TE: trailers`).
    pub(crate) trailers: bool,
    pub(crate) expects_continue: bool,
}

/// The fields a head's handling depends on, noted while it is read (each
/// lookup afterwards would hash its name).
#[derive(Default)]
struct RequestFields {
    content_length: bool,
    transfer_encoding: bool,
    connection: bool,
    te: bool,
    expect: bool,
}

/// Parses the request head at the front of `read` and takes it out:
/// `None` until it is all there. Refusals: 431 for a head over
/// [`MAX_REQUEST_HEAD`] or [`MAX_HEADERS`], 400 for anything malformed or
/// framed ambiguously (RFC 9112 §6.1, §6.3: both `Content-Length` and
/// `Transfer-Encoding`, a coding other than `chunked`, differing lengths).
pub(crate) fn parse_request_head(read: &mut BytesMut) -> Result<Option<RequestHead>, Refusal> {
    let too_large = |what: &str| Refusal::TooLarge(format!("request head {what}"));
    let bad = |what: String| Refusal::Malformed(what);
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, read, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if read.len() > MAX_REQUEST_HEAD => {
            return Err(too_large("larger than 64 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large("with over 100 fields")),
        Err(e) => return Err(bad(format!("malformed request head: {e}"))),
    };
    if len > MAX_REQUEST_HEAD {
        return Err(too_large("larger than 64 KiB"));
    }
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("invalid method {method:?}")))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // The target and the values are slices of the head, not copies: where
    // each one lies.
    let base = read.as_ptr() as usize;
    let path = parsed.path.unwrap_or_default();
    let target = (path.as_ptr() as usize - base, path.len());
    let mut found = Found::new();
    let mut present = RequestFields::default();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| bad(format!("invalid header name {:?}", field.name)))?;
        if name == header::CONTENT_LENGTH {
            present.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            present.transfer_encoding = true;
        } else if name == header::CONNECTION {
            present.connection = true;
        } else if name == header::TE {
            present.te = true;
        } else if name == header::EXPECT {
            present.expect = true;
        }
        let start = field.value.as_ptr() as usize - base;
        found.push((name, start, start + field.value.len()));
    }
    let head = read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|e| bad(format!("invalid request target: {e}")))?;
    // Room for the `Host` and `X-Request-Id` the proxy may add without the
    // map growing (a growth rehashes it and allocates twice).
    let mut headers = HeaderMap::with_capacity(found.len() + 2);
    for (name, start, end) in found.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| bad(format!("invalid value of {name}")))?;
        headers.append(name, value);
    }

    let body = body_framing(&headers, &present, version)?;
    let field_has = |name: HeaderName, token: &str| has_token(headers.get_all(name), token);
    let keep_alive = match version {
        Version::HTTP_11 => !(present.connection && field_has(header::CONNECTION, "close")),
        _ => present.connection && field_has(header::CONNECTION, "keep-alive"),
    };
    let trailers = present.te && field_has(header::TE, "trailers");
    let expects_continue = present.expect
        && version == Version::HTTP_11
        && body.is_some()
        && field_has(header::EXPECT, "100-continue");

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        body,
        keep_alive,
        http10: version == Version::HTTP_10,
        trailers,
        expects_continue,
    }))
}

/// How a request's body is framed (RFC 9112 §6.3); `None`: no body.
fn body_framing(
    headers: &HeaderMap,
    present: &RequestFields,
    version: Version,
) -> Result<Option<Decoder>, Refusal> {
    let bad = |what: &str| Err(Refusal::Malformed(what.into()));
    if present.transfer_encoding {
        if present.content_length {
            return bad(
                "both Content-Length and Transfer-Encoding: the body's framing is ambiguous",
            );
        }
        if version == Version::HTTP_10 {
            return bad("Transfer-Encoding in an HTTP/1.0 request");
        }
        // Exactly one coding, `chunked`: any other has no length we could
        // trust, and we never decode content.
        let mut codings = list_tokens(headers.get_all(header::TRANSFER_ENCODING));
        return match (codings.next(), codings.next()) {
            (Some(coding), None) if coding.eq_ignore_ascii_case("chunked") => {
                Ok(Some(Decoder::chunked()))
            }
            _ => bad("unsupported Transfer-Encoding (only chunked is accepted)"),
        };
    }
    if !present.content_length {
        return Ok(None);
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        match parse_length(value.as_bytes()) {
            Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
            _ => return bad("invalid or conflicting Content-Length"),
        }
    }
    Ok(length.filter(|n| *n > 0).map(Decoder::Length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &str) -> Result<Option<(RequestHead, BytesMut)>, Refusal> {
        let mut read = BytesMut::from(wire);
        Ok(parse_request_head(&mut read)?.map(|head| (head, read)))
    }

    fn head(wire: &str) -> RequestHead {
        parse(wire).unwrap().expect("a whole head").0
    }

    /// The status a refusal is answered with.
    fn refusal(wire: &str) -> u16 {
        match parse(wire) {
            Err(Refusal::TooLarge(_)) => 431,
            Err(Refusal::Malformed(_)) => 400,
            Ok(_) => panic!("accepted: {wire:?}"),
        }
    }

    #[test]
    fn a_head_is_parsed_into_the_request_and_leaves_what_follows() {
        let (head, rest) = parse(
            "POST /v1/chat?x=%2F HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nx-two: 2\r\n\
             content-length: 3\r\n\r\nabcGET / HTTP/1.1\r\n",
        )
        .unwrap()
        .unwrap();
        let req = &head.request;
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/v1/chat");
        assert_eq!(req.uri().query(), Some("x=%2F"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "a");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert!(matches!(head.body, Some(Decoder::Length(3))));
        assert!(head.keep_alive && !head.http10 && !head.trailers && !head.expects_continue);
        assert_eq!(&rest[..], b"abcGET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nhost: a\r\n").unwrap().is_none());
        assert!(parse("GET / HT").unwrap().is_none());
    }

    #[test]
    fn bodies_are_framed_by_length_or_chunks_or_not_at_all() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").body.is_none());
        assert!(head("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            .body
            .is_none());
        assert!(matches!(
            head("POST / HTTP/1.1\r\ncontent-length: 7, 7\r\n\r\n").body,
            Some(Decoder::Length(7))
        ));
        assert!(matches!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").body,
            Some(Decoder::Chunked(_))
        ));
    }

    /// RFC 9112 §6.1 and §6.3: every ambiguous framing is refused.
    #[test]
    fn ambiguous_or_unknown_framings_are_refused() {
        let cases = [
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked,\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: , chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 4x\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ];
        for wire in cases {
            assert_eq!(refusal(wire), 400, "{wire:?}");
        }
    }

    #[test]
    fn oversized_heads_get_431() {
        let fields: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(refusal(&format!("GET / HTTP/1.1\r\n{fields}\r\n")), 431);
        // Whole but too large, and too large before it is whole.
        let big = "a".repeat(MAX_REQUEST_HEAD);
        assert_eq!(refusal(&format!("GET / HTTP/1.1\r\nx: {big}\r\n\r\n")), 431);
        assert_eq!(refusal(&format!("GET / HTTP/1.1\r\nx: {big}")), 431);
        // At the limit exactly, it is accepted.
        let line = "GET / HTTP/1.1\r\nx: \r\n\r\n";
        let fill = "a".repeat(MAX_REQUEST_HEAD - line.len());
        assert!(parse(&format!("GET / HTTP/1.1\r\nx: {fill}\r\n\r\n"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nconnection: foo, Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        let kept = head("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n");
        assert!(kept.keep_alive && kept.http10);
    }

    #[test]
    fn trailers_and_100_continue_are_noted() {
        assert!(head("GET / HTTP/1.1\r\nte: gzip, trailers\r\n\r\n").trailers);
        let wire = "POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 1\r\n\r\n";
        assert!(head(wire).expects_continue);
        // Without a body there is nothing to wait for.
        assert!(!head("GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n").expects_continue);
    }
}
