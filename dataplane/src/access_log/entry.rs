//! One access-log line: what the request path fills in as the request
//! arrives (cheap copies, nothing formatted) and how its line is formatted
//! when it ends, as JSON or as text close to nginx's `combined` format.
//!
//! Never a header value that may be a secret: of the headers, only
//! `User-Agent` and the request ids are kept. The query is left out unless
//! asked for, and then its credential parameters are masked.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::{Method, Version};
use percent_encoding::percent_decode_str;

use super::format::{
    json_field, json_plain_field, push_addr, push_escaped, push_millis, push_u64, Memo,
};
use crate::body_state::FailureSlot;
use crate::gate::client_key;

/// Query parameters whose values are masked when the query is logged.
const SECRET_PARAMS: [&str; 5] = ["key", "api_key", "token", "access_token", "sig"];

/// Longest `User-Agent` kept (a client may send kilobytes).
const MAX_USER_AGENT: usize = 256;
/// Longest path (and query) kept: an entry, which lives as long as its
/// request, stays small whatever path a client sends.
const MAX_TARGET: usize = 4096;

/// What one request leaves in the access log.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub(crate) request_id: HeaderValue,
    pub(crate) client: SocketAddr,
    /// `None`: the request head could not be read.
    pub(crate) method: Option<Method>,
    /// The path (the authority for CONNECT), and the masked query when
    /// `API_PROXY_ACCESS_LOG_QUERY` (at most [`MAX_TARGET`] bytes), then
    /// the user agent (at most [`MAX_USER_AGENT`]): one allocation.
    texts: Box<str>,
    /// Where the user agent starts in `texts`; `None`: none was sent.
    user_agent_at: Option<u16>,
    pub(crate) protocol: Version,
    /// Set once routed.
    pub(crate) prefix: Option<Arc<str>>,
    /// The upstream's `host[:port]`, once routed.
    pub(crate) upstream: Option<HeaderValue>,
    /// The address of the upstream connection that answered.
    pub(crate) upstream_addr: Option<SocketAddr>,
    /// The request body's state, to read its byte count at the end.
    pub(crate) body: Option<FailureSlot>,
    pub(crate) bytes_out: u64,
    pub(crate) ttfb: Option<Duration>,
    /// The upstream's own `X-Request-Id`, when it answered with one that
    /// is not ours (the client sees that one).
    pub(crate) upstream_request_id: Option<HeaderValue>,
    /// The proxy key's id (its 64 bits), on a keyed mapping; never the key.
    pub(crate) key_id: Option<u64>,
    // Filled in when the request ends.
    pub(crate) start: SystemTime,
    pub(crate) status: u16,
    pub(crate) error: Option<&'static str>,
    pub(crate) duration: Duration,
    pub(crate) cancelled: bool,
}

impl AccessEntry {
    /// The fields known when the request arrives.
    pub(crate) fn new<B>(
        req: &http::Request<B>,
        request_id: HeaderValue,
        client: SocketAddr,
        with_query: bool,
    ) -> AccessEntry {
        let uri = req.uri();
        let path = match uri.path() {
            // The authority form of CONNECT has no path.
            "" => uri.authority().map_or("", |a| a.as_str()),
            path => path,
        };
        let user_agent = req.headers().get(http::header::USER_AGENT).map(|ua| {
            // Checked first: `from_utf8` runs over ASCII a word at a time,
            // the lossy walk byte by byte.
            match std::str::from_utf8(ua.as_bytes()) {
                Ok(ua) => Cow::Borrowed(ua),
                Err(_) => String::from_utf8_lossy(ua.as_bytes()),
            }
        });
        let user_agent = user_agent.as_deref().map(|ua| truncate(ua, MAX_USER_AGENT));
        let mut texts = String::with_capacity(
            (path.len()
                + uri
                    .query()
                    .filter(|_| with_query)
                    .map_or(0, |q| 1 + q.len()))
            .min(MAX_TARGET)
                + user_agent.map_or(0, str::len),
        );
        match uri.query() {
            Some(query) if with_query => {
                texts.push_str(path);
                texts.push('?');
                mask_query(query, &mut texts);
                let end = truncate(&texts, MAX_TARGET).len();
                texts.truncate(end);
            }
            _ => texts.push_str(truncate(path, MAX_TARGET)),
        }
        let user_agent_at = user_agent.map(|ua| {
            let at = texts.len() as u16;
            texts.push_str(ua);
            at
        });
        AccessEntry {
            method: Some(req.method().clone()),
            texts: texts.into(),
            user_agent_at,
            protocol: req.version(),
            ..AccessEntry::bare(request_id, client)
        }
    }

    /// An entry with the request's id and client only: what a request
    /// whose head could not be read (malformed, too large) is logged
    /// with, and what a request is told with when there is no access log
    /// (its id and error type, for the recent failures).
    pub(crate) fn bare(request_id: HeaderValue, client: SocketAddr) -> AccessEntry {
        AccessEntry {
            request_id,
            client,
            method: None,
            texts: "".into(),
            user_agent_at: None,
            protocol: Version::HTTP_11,
            prefix: None,
            upstream: None,
            upstream_addr: None,
            body: None,
            bytes_out: 0,
            ttfb: None,
            upstream_request_id: None,
            key_id: None,
            start: SystemTime::UNIX_EPOCH,
            status: 0,
            error: None,
            duration: Duration::ZERO,
            cancelled: false,
        }
    }

    fn bytes_in(&self) -> u64 {
        self.body.as_ref().map_or(0, |b| b.received())
    }

    fn method(&self) -> &str {
        self.method.as_ref().map_or("-", Method::as_str)
    }

    /// The path, or `-` when the head could not be read.
    fn target(&self) -> &str {
        let target = match self.user_agent_at {
            Some(at) => &self.texts[..usize::from(at)],
            None => &self.texts,
        };
        if target.is_empty() {
            "-"
        } else {
            target
        }
    }

    fn user_agent(&self) -> Option<&str> {
        self.user_agent_at.map(|at| &self.texts[usize::from(at)..])
    }

    /// Appends the entry as one JSON object and a newline, written by
    /// hand: serde's byte-by-byte escaping of every key and value was most
    /// of a line's cost in a profile, and all but the path, the user agent
    /// and the ids are known to need no escaping.
    pub(crate) fn write_json(&self, node_id: &str, memo: &mut Memo, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        memo.times.push(out, self.start);
        out.push(b'"');
        json_field(out, "request_id", Some(text(&self.request_id)));
        json_field(out, "node_id", Some(node_id));
        out.extend_from_slice(b",\"client\":\"");
        push_addr(out, self.client, &mut memo.client_ip);
        out.push(b'"');
        json_plain_field(out, "method", self.method());
        json_field(out, "prefix", self.prefix.as_deref());
        json_field(out, "path", Some(self.target()));
        json_plain_field(out, "protocol", protocol(self.protocol));
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        match self.error {
            Some(error) => json_plain_field(out, "error", error),
            None => out.extend_from_slice(b",\"error\":null"),
        }
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in());
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_millis(out, self.duration);
        out.extend_from_slice(b",\"ttfb_ms\":");
        match self.ttfb {
            Some(ttfb) => push_millis(out, ttfb),
            None => out.extend_from_slice(b"null"),
        }
        match &self.upstream {
            Some(upstream) => json_plain_field(out, "upstream", text(upstream)),
            None => out.extend_from_slice(b",\"upstream\":null"),
        }
        out.extend_from_slice(b",\"upstream_addr\":");
        match self.upstream_addr {
            Some(addr) => {
                out.push(b'"');
                push_addr(out, addr, &mut memo.upstream_ip);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        if let Some(id) = &self.upstream_request_id {
            json_field(out, "upstream_request_id", Some(text(id)));
        }
        if let Some(bits) = self.key_id {
            out.extend_from_slice(b",\"key_id\":\"");
            push_key_id(out, bits);
            out.push(b'"');
        }
        out.extend_from_slice(if self.cancelled {
            b",\"cancelled\":true"
        } else {
            b",\"cancelled\":false"
        });
        json_field(out, "user_agent", self.user_agent());
        out.extend_from_slice(b"}\n");
    }

    /// Appends the entry as one text line: nginx's `combined` format
    /// (client, time, request line, status, bytes sent, referer left out,
    /// user agent), then our fields as `name=value`.
    pub(crate) fn write_text(&self, node_id: &str, memo: &mut Memo, out: &mut Vec<u8>) {
        memo.client_ip.push(out, self.client.ip());
        out.extend_from_slice(b" - - [");
        memo.times.push(out, self.start);
        out.extend_from_slice(b"] \"");
        out.extend_from_slice(self.method().as_bytes());
        out.push(b' ');
        push_escaped(out, self.target(), false);
        out.push(b' ');
        out.extend_from_slice(protocol(self.protocol).as_bytes());
        out.extend_from_slice(b"\" ");
        push_u64(out, u64::from(self.status));
        out.push(b' ');
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b" \"-\" \"");
        push_escaped(out, self.user_agent().unwrap_or("-"), false);
        out.push(b'"');
        let field = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            push_escaped(out, value, true);
        };
        field(out, "request_id", text(&self.request_id));
        field(out, "node_id", node_id);
        field(out, "prefix", self.prefix.as_deref().unwrap_or("-"));
        field(out, "error", self.error.unwrap_or("-"));
        out.extend_from_slice(b" bytes_in=");
        push_u64(out, self.bytes_in());
        out.extend_from_slice(b" duration_ms=");
        push_millis(out, self.duration);
        out.extend_from_slice(b" ttfb_ms=");
        match self.ttfb {
            Some(ttfb) => push_millis(out, ttfb),
            None => out.push(b'-'),
        }
        field(out, "upstream", self.upstream.as_ref().map_or("-", text));
        out.extend_from_slice(b" upstream_addr=");
        match self.upstream_addr {
            Some(addr) => push_addr(out, addr, &mut memo.upstream_ip),
            None => out.push(b'-'),
        }
        out.extend_from_slice(if self.cancelled {
            b" cancelled=true"
        } else {
            b" cancelled=false"
        });
        if let Some(id) = &self.upstream_request_id {
            field(out, "upstream_request_id", text(id));
        }
        if let Some(bits) = self.key_id {
            out.extend_from_slice(b" key_id=");
            push_key_id(out, bits);
        }
        out.push(b'\n');
    }
}

/// `key_` and the id's 16 hex digits, as [`apiproxy_shared::access::format_key_id`].
fn push_key_id(out: &mut Vec<u8>, bits: u64) {
    out.extend_from_slice(b"key_");
    for shift in (0..16).rev() {
        out.push(b"0123456789abcdef"[(bits >> (shift * 4)) as usize & 15]);
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A header value as text (the ids, the upstream's authority); one that
/// is not UTF-8 shows as `-`. `from_utf8` runs over ASCII a word at a
/// time, where `HeaderValue::to_str` checks byte by byte.
fn text(value: &HeaderValue) -> &str {
    std::str::from_utf8(value.as_bytes()).unwrap_or("-")
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends `query` with the value of each credential parameter replaced
/// by `***` (names compared decoded and without case, as an upstream or
/// the proxy's own gate reads them: `%6Bey=K` is `key=K`), and any value
/// that is a proxy key (`apx-…`) whatever its parameter's name.
pub(crate) fn mask_query(query: &str, out: &mut String) {
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (pair, None),
        };
        let decoded = percent_decode_str(name).decode_utf8_lossy();
        let secret = SECRET_PARAMS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&decoded))
            || value.is_some_and(|v| {
                client_key::is_proxy_key(&percent_decode_str(v).collect::<Vec<u8>>())
            });
        out.push_str(name);
        match value {
            Some(_) if secret => out.push_str("=***"),
            Some(value) => {
                out.push('=');
                out.push_str(value);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(query: &str) -> String {
        let mut out = String::new();
        mask_query(query, &mut out);
        out
    }

    #[test]
    fn credential_parameters_are_masked() {
        assert_eq!(masked("key=K&alt=sse"), "key=***&alt=sse");
        assert_eq!(
            masked("a=1&API_KEY=s&token=t&access_token=u&sig=v&b"),
            "a=1&API_KEY=***&token=***&access_token=***&sig=***&b"
        );
        assert_eq!(masked("keys=1&mykey=2"), "keys=1&mykey=2");
        assert_eq!(masked("key"), "key");
        // As the gate and an upstream read them: decoded names, and a
        // proxy key under any name.
        assert_eq!(masked("%6Bey=K&x=1"), "%6Bey=***&x=1");
        assert_eq!(masked("other=apx-123&p=apx"), "other=***&p=apx");
        assert_eq!(masked("other=apx%2D123"), "other=***");
    }

    fn entry(target: &str, query: bool) -> AccessEntry {
        let req = http::Request::builder()
            .uri(target)
            .header("user-agent", "sdk \"1\"\t")
            .header("authorization", "Bearer sk-secret")
            .body(())
            .unwrap();
        let mut e = AccessEntry::new(
            &req,
            HeaderValue::from_static("rid-1"),
            "10.0.0.1:5000".parse().unwrap(),
            query,
        );
        e.status = 200;
        e.prefix = Some("/gemini".into());
        e.start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        e.duration = Duration::from_micros(12_345);
        e
    }

    #[test]
    fn json_lines_hold_every_field_and_no_secret() {
        let mut out = Vec::new();
        entry("/gemini/v1?key=K&alt=sse", true).write_json("dp-1", &mut Memo::default(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["node_id"], "dp-1");
        assert_eq!(v["client"], "10.0.0.1:5000");
        assert_eq!(v["path"], "/gemini/v1?key=***&alt=sse");
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["ttfb_ms"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "sdk \"1\"\t");
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("sk-secret") && !text.contains("=K"),
            "{text}"
        );

        let mut out = Vec::new();
        entry("/gemini/v1?key=K", false).write_json("dp-1", &mut Memo::default(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/gemini/v1");
    }

    /// An entry stays small whatever the client sent.
    #[test]
    fn long_paths_and_agents_are_cut() {
        let long = format!("/{}", "a".repeat(10_000));
        let req = http::Request::builder()
            .uri(format!("{long}?q={}", "b".repeat(10_000)))
            .header("user-agent", "u".repeat(10_000))
            .body(())
            .unwrap();
        let id = HeaderValue::from_static("r");
        for query in [false, true] {
            let e = AccessEntry::new(&req, id.clone(), "10.0.0.1:1".parse().unwrap(), query);
            assert_eq!(e.target().len(), MAX_TARGET);
            assert!(long.starts_with(e.target()));
            assert_eq!(e.user_agent().map(str::len), Some(MAX_USER_AGENT));
        }
        let connect = http::Request::builder()
            .method("CONNECT")
            .uri("example.com:443")
            .body(())
            .unwrap();
        let e = AccessEntry::new(&connect, id, "10.0.0.1:1".parse().unwrap(), false);
        assert_eq!((e.method(), e.target()), ("CONNECT", "example.com:443"));
    }

    /// Whatever a client put in the path or the user agent, a JSON line
    /// parses back to it.
    #[test]
    fn json_lines_escape_what_needs_it() {
        let mut e = entry("/a\\b%22c/\u{e9}", false);
        // Bytes no HTTP parser lets through, written as they would be.
        let path = e.target().to_owned();
        e.texts = format!("{path}q\"\\\u{1}\u{7f}\u{e9}").into();
        e.user_agent_at = Some(path.len() as u16);
        let mut out = Vec::new();
        e.write_json("n\"1", &mut Memo::default(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a\\b%22c/\u{e9}");
        assert_eq!(v["user_agent"], "q\"\\\u{1}\u{7f}\u{e9}");
        assert_eq!(v["node_id"], "n\"1");
    }

    #[test]
    fn text_lines_stay_one_line() {
        let mut out = Vec::new();
        entry("/gemini/v1", false).write_text("dp-1", &mut Memo::default(), &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(
            line.starts_with(
                "10.0.0.1 - - [2023-11-14T22:13:20.123Z] \"GET /gemini/v1 HTTP/1.1\" 200 0 \"-\" \"sdk \\x221\\x22\\x09\""
            ),
            "{line}"
        );
        assert!(line.contains(" request_id=rid-1 node_id=dp-1 prefix=/gemini error=- bytes_in=0 duration_ms=12.345 ttfb_ms=- upstream=- upstream_addr=- cancelled=false"), "{line}");
        assert!(!line.contains("sk-secret"));
    }
}
