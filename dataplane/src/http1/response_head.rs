//! The upstream's response head: parsed, its connection fields consumed,
//! and its body's framing decided (RFC 9112 §6.3).

use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

use super::codec::{parse_length, Decoder, Found, MAX_HEADERS};
use super::connection::{Connection, ExchangeError};
use crate::headers::{list_items, named_by_connection};

/// Largest response head read (hyper's client allows about 400 KiB).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// A parsed response head and how its body is framed.
pub(crate) struct ResponseHead {
    pub(super) response: Response<()>,
    pub(super) decoder: Decoder,
    pub(super) reusable: bool,
}

/// Reads until a whole final head is in (1xx interim heads other than 101
/// are skipped) and parses it.
pub(crate) fn poll_head(
    conn: &mut Connection,
    cx: &mut Context<'_>,
    head_request: bool,
) -> Poll<Result<ResponseHead, ExchangeError>> {
    loop {
        if !conn.read.is_empty() {
            if let Some(head) = parse_response_head(&mut conn.read, head_request)? {
                return Poll::Ready(Ok(head));
            }
        }
        if conn.read.len() >= MAX_RESPONSE_HEAD {
            return Poll::Ready(Err(ExchangeError::protocol(format!(
                "response head larger than {MAX_RESPONSE_HEAD} bytes"
            ))));
        }
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(ExchangeError::ClosedBeforeHead));
        }
    }
}

/// The head at the front of `read`, taken out of it; `None` until it is
/// all there.
fn parse_response_head(
    read: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, ExchangeError> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ExchangeError::protocol(e.to_string())),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| ExchangeError::protocol(format!("status code {code}")))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            read.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        // Values are slices of the head, not copies: where each one lies.
        let base = read.as_ptr() as usize;
        let mut found = Found::new();
        let mut present = ResponseFields::default();
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| ExchangeError::protocol(format!("header name {:?}", field.name)))?;
            present.note(&name, field.value);
            let start = field.value.as_ptr() as usize - base;
            found.push((name, start, start + field.value.len()));
        }
        let head = read.split_to(len).freeze();
        // `Connection` and the fields it names are about this connection
        // alone (RFC 9110 §7.6.1): they are read here and go no further,
        // so the proxy's filter has nothing of theirs to find and remove
        // (a search of every response otherwise, and most HTTP/1.1
        // upstreams send `Connection: keep-alive`). A 101 keeps them: its
        // `Connection: upgrade` is the proxy's to pass on.
        let own_fields = status != StatusCode::SWITCHING_PROTOCOLS && present.connection;
        let named = if own_fields && present.names_fields {
            let tokens = found
                .iter()
                .filter(|(name, _, _)| name == header::CONNECTION)
                .flat_map(|(_, start, end)| list_items(&head[*start..*end]));
            named_by_connection(tokens, || found.iter().map(|(name, _, _)| name), false)
        } else {
            Vec::new()
        };
        // Room for the `X-Request-Id` the proxy adds without the map
        // growing.
        let mut headers = HeaderMap::with_capacity(found.len() + 1);
        for (name, start, end) in found.drain(..) {
            if own_fields && (name == header::CONNECTION || named.contains(&name)) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| ExchangeError::protocol(format!("value of {name}")))?;
            headers.append(name, value);
        }
        let (decoder, framed) = framing(status, head_request, present)?;
        let reusable = framed
            && version == Version::HTTP_11
            && status != StatusCode::SWITCHING_PROTOCOLS
            && !present.close;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(ResponseHead {
            response,
            decoder,
            reusable,
        }));
    }
}

/// What the fields that frame a response and its `Connection` say, noted
/// while its head is read: looking each up in the map afterwards would
/// hash its name.
#[derive(Debug, Default, Clone, Copy)]
struct ResponseFields {
    transfer_encoding: bool,
    /// The last `Transfer-Encoding` ends in `chunked`.
    chunked_last: bool,
    content_length: bool,
    /// What the `Content-Length` fields agree on; `None` when one is
    /// invalid or they differ.
    length: Option<u64>,
    connection: bool,
    /// `Connection: close`.
    close: bool,
    /// `Connection` has a token other than `keep-alive`: it may name a
    /// field of the message.
    names_fields: bool,
}

impl ResponseFields {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            // As hyper: the last item, empty or not (`chunked,` is not
            // chunked, and is read until the close).
            self.chunked_last = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            let length = parse_length(value);
            self.length = match self.content_length {
                false => length,
                true => length.filter(|n| self.length == Some(*n)),
            };
            self.content_length = true;
        } else if name == header::CONNECTION {
            self.connection = true;
            for token in list_items(value) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.names_fields |= !token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

/// How the response body is framed (RFC 9112 §6.3), and whether its end
/// is known without the connection closing.
fn framing(
    status: StatusCode,
    head_request: bool,
    present: ResponseFields,
) -> Result<(Decoder, bool), ExchangeError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::Length(0), true));
    }
    if present.transfer_encoding {
        // Length and chunks both: the chunks win, and the connection is
        // not trusted with another request.
        let lone = !present.content_length;
        return Ok(if present.chunked_last {
            (Decoder::chunked(), lone)
        } else {
            (Decoder::UntilClose, false)
        });
    }
    if !present.content_length {
        return Ok((Decoder::UntilClose, false));
    }
    match present.length {
        Some(n) => Ok((Decoder::Length(n), true)),
        None => Err(ExchangeError::protocol(
            "invalid or conflicting content-length",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        wire: &str,
        head_request: bool,
    ) -> Result<Option<(ResponseHead, BytesMut)>, ExchangeError> {
        let mut read = BytesMut::from(wire);
        Ok(parse_response_head(&mut read, head_request)?.map(|head| (head, read)))
    }

    fn complete(wire: &str) -> ResponseHead {
        head(wire, false).unwrap().expect("a complete head").0
    }

    #[test]
    fn a_head_is_parsed_with_its_fields_and_framing() {
        let (h, rest) = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), 201, "the interim 100 is skipped");
        let values: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(matches!(h.decoder, Decoder::Length(3)));
        assert!(h.reusable);
        assert_eq!(&rest[..], b"abc");
        assert!(head("HTTP/1.1 200 OK\r\nContent-Len", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let no_body = [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        ];
        for wire in no_body {
            let h = complete(wire);
            assert!(
                matches!(h.decoder, Decoder::Length(0)) && h.reusable,
                "{wire}"
            );
        }
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(
            matches!(h.decoder, Decoder::Length(0)),
            "a HEAD response has no body"
        );

        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Chunked(_)) && h.reusable);
        let h =
            complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert!(
            matches!(h.decoder, Decoder::Chunked(_)) && !h.reusable,
            "chunks win, trust goes"
        );
        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        let h = complete("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        let h = complete("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Length(4)));
        let h = complete("HTTP/1.1 200 OK\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Length(4)));
        // The last field decides; an empty last item is not `chunked`.
        let h = complete(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::UntilClose) && !h.reusable);
        // A framing field `Connection` names leaves the map, not the framing.
        let h =
            complete("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(h.decoder, Decoder::Length(3)) && h.reusable);
        assert!(h.response.headers().is_empty());

        for not_again in [
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(!complete(not_again).reusable, "{not_again}");
        }
    }

    #[test]
    fn connection_and_the_fields_it_names_stop_here() {
        let names = |h: &ResponseHead| -> Vec<String> {
            let mut names: Vec<_> = h.response.headers().keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        let h = complete(
            "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nconnection: ,x-other ,\r\nX-Other: 3\r\nContent-Length: 0\r\n\r\n",
        );
        // `Keep-Alive` is the proxy filter's to remove, as with HTTP/2.
        assert_eq!(names(&h), ["content-length", "keep-alive", "x-end"]);
        assert!(h.reusable, "keep-alive and field names are not close");

        let h = complete("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(names(&h), ["content-length"]);
        assert!(!h.reusable);

        let h = complete(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        assert_eq!(
            names(&h),
            ["connection", "upgrade"],
            "a 101's are the proxy's to pass on"
        );
    }

    #[test]
    fn bad_heads_are_protocol_errors() {
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            let e = head(wire, false).map(|_| ()).unwrap_err();
            assert!(e.is_protocol(), "{wire}: {e}");
        }
    }
}
