//! The proxy's own error responses (SPEC §3 "Errors"): one type, one tested
//! mapping to status, `type` and `X-Apiproxy-Error`.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{BodyFailure, ProxyBody};
use crate::causes::chain;
use crate::error_kind::UpstreamErrorKind;
use crate::pool::SendError;
use crate::request_id::X_REQUEST_ID;

pub(crate) const ERROR_HEADER: &str = "x-apiproxy-error";

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client's request cannot be served as sent.
    Client,
    /// The upstream failed, or did not answer in time.
    Upstream,
    /// The proxy itself cannot serve yet.
    Proxy,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Proxy => "proxy",
        }
    }
}

/// Why the proxy answered by itself instead of with the upstream's response.
/// Each variant is made where the failure is met, so it carries its side
/// ([`ProxyError::side`]) and kind from there.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no mapping for {0}")]
    NoMapping(String),
    #[error("{0}")]
    BadRequest(String),
    /// A request head over the size or field limit (431, typed as a bad
    /// request: SPEC §3 names no type of its own for it).
    #[error("{0}")]
    HeadTooLarge(String),
    #[error("method CONNECT is not allowed: this is not a forward proxy")]
    MethodNotAllowed,
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("no mappings snapshot applied yet")]
    NotReady,
    /// A keyed mapping without a proxy key, or with one no one made (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A known proxy key that may not be used here now (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The mapping's upstream credential cannot be opened on this node (no
    /// or another `API_PROXY_SECRETS_KEY`): it fails closed (503).
    #[error("this endpoint's upstream credential is not available on this node")]
    CredentialUnavailable,
    #[error("{message}")]
    Upstream {
        kind: UpstreamErrorKind,
        message: String,
    },
}

impl ProxyError {
    pub(crate) fn upstream(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        ProxyError::Upstream {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn side(&self) -> Side {
        match self {
            ProxyError::NoMapping(_)
            | ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::PayloadTooLarge(_) => Side::Client,
            ProxyError::NotReady | ProxyError::CredentialUnavailable => Side::Proxy,
            ProxyError::Unauthorized(_) | ProxyError::Forbidden(_) => Side::Client,
            ProxyError::Upstream { .. } => Side::Upstream,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoMapping(_) => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NotReady | ProxyError::CredentialUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `type` field and `X-Apiproxy-Error` value.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoMapping(_) => "no_mapping",
            ProxyError::BadRequest(_) | ProxyError::HeadTooLarge(_) => "bad_request",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::NotReady | ProxyError::CredentialUnavailable => "not_ready",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Upstream { kind, .. } => kind.error_type(),
        }
    }

    pub(crate) fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::Upstream { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The error response of the request `request_id`: the id is in the
    /// body and in `X-Request-Id`.
    pub(crate) fn into_response(self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let body = serde_json::json!({"error": {
            "type": self.kind(),
            "message": self.to_string(),
            "request_id": request_id.to_str().unwrap_or_default(),
        }});
        let mut response = Response::new(ProxyBody::full(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.kind()));
        headers.insert(&X_REQUEST_ID, request_id.clone());
        response
    }
}

/// What sending a request upstream can end in, before any response head.
#[derive(Debug)]
pub(crate) enum SendFailure {
    /// Answer the client with this error.
    Respond(ProxyError),
    /// The client's own body failed: it went away, so write nothing.
    ClientGone,
}

/// Classifies a failed send: first by what the request body recorded
/// (`failure`: an HTTP/2 connection turns a body error into a stream reset
/// and drops the cause), then by the side and kind the error was made with.
pub(crate) fn classify_send_error(err: &SendError, failure: Option<BodyFailure>) -> SendFailure {
    match failure {
        Some(BodyFailure::TooLarge(limit)) => {
            return SendFailure::Respond(ProxyError::PayloadTooLarge(limit))
        }
        Some(BodyFailure::Idle(d)) => {
            return SendFailure::Respond(ProxyError::BadRequest(format!(
                "request body sent no data for {d:?} (idle timeout)"
            )))
        }
        Some(BodyFailure::Malformed) => {
            return SendFailure::Respond(ProxyError::BadRequest(
                "invalid request body (chunk framing)".into(),
            ))
        }
        Some(BodyFailure::Client) => return SendFailure::ClientGone,
        None => {}
    }
    match err {
        SendError::Connect(connect) => {
            SendFailure::Respond(ProxyError::upstream(connect.kind, connect.to_string()))
        }
        // The body records each failure of its own in the slot; one
        // without it is the client's side all the same.
        err if err.is_client_body() => SendFailure::ClientGone,
        err => SendFailure::Respond(ProxyError::upstream(
            err.kind(),
            format!("upstream failed before the response: {}", chain(err)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SPEC §3 table, pinned.
    #[test]
    fn status_and_type_per_error() {
        use UpstreamErrorKind::*;
        let cases = [
            (
                ProxyError::NoMapping("/x".into()),
                404,
                "no_mapping",
                Side::Client,
            ),
            (
                ProxyError::BadRequest("x".into()),
                400,
                "bad_request",
                Side::Client,
            ),
            (
                ProxyError::HeadTooLarge("x".into()),
                431,
                "bad_request",
                Side::Client,
            ),
            (
                ProxyError::MethodNotAllowed,
                405,
                "method_not_allowed",
                Side::Client,
            ),
            (
                ProxyError::PayloadTooLarge(1),
                413,
                "payload_too_large",
                Side::Client,
            ),
            (ProxyError::NotReady, 503, "not_ready", Side::Proxy),
            (
                ProxyError::upstream(Connect, "x"),
                502,
                "upstream_connect",
                Side::Upstream,
            ),
            (
                ProxyError::upstream(Tls, "x"),
                502,
                "upstream_connect",
                Side::Upstream,
            ),
            (
                ProxyError::upstream(Policy, "x"),
                502,
                "upstream_connect",
                Side::Upstream,
            ),
            (
                ProxyError::upstream(Reset, "x"),
                502,
                "upstream_error",
                Side::Upstream,
            ),
            (
                ProxyError::upstream(Protocol, "x"),
                502,
                "upstream_error",
                Side::Upstream,
            ),
            (
                ProxyError::upstream(Timeout, "x"),
                504,
                "upstream_timeout",
                Side::Upstream,
            ),
        ];
        for (err, status, kind, side) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.kind(), kind, "{err:?}");
            assert_eq!(err.side(), side, "{err:?}");
            let resp = err.into_response(&HeaderValue::from_static("rid-7"));
            assert_eq!(resp.headers()[ERROR_HEADER], kind);
            assert_eq!(resp.headers()[&X_REQUEST_ID], "rid-7");
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        }
    }
}
