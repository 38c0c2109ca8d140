//! Header rewriting between client and upstream (SPEC §3 "Headers").
//!
//! RFC 9110 §7.6.1: a proxy removes the `Connection` header and every field
//! it names, and the hop-by-hop fields, before forwarding a message.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The hop-by-hop fields, each with its bit in a [`scan`] result.
/// `Connection` must stay first: it names more fields to remove.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
];
const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 7;
const UPGRADE_BIT: u16 = 1 << 8;
/// Not hop-by-hop: a `text/event-stream` `Content-Type`, found in the
/// same pass (see [`rewrite_response`]).
const EVENT_STREAM_BIT: u16 = 1 << 9;
/// The fields removed whatever their value: all but `Connection` (it
/// names more), `TE` (kept as `trailers`) and `Upgrade` (kept when
/// upgrading).
const ALWAYS_REMOVED: u16 = 0b0111_1110;

/// Which hop-by-hop fields `headers` has, one bit each (the index in
/// [`HOP_BY_HOP`]), and [`EVENT_STREAM_BIT`] for an event stream. Names
/// are matched by length and bytes: map keys are lowercase, and most
/// messages have none of these, so this one pass is all a message usually
/// costs (comparing `HeaderName`s or looking each field up would cost a
/// hash or a comparison per rule and field).
fn scan(headers: &HeaderMap) -> u16 {
    let mut present = 0;
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        let index = match name.len() {
            12 if name == b"content-type" && is_event_stream(value) => 9,
            2 if name == b"te" => 7,
            7 if name == b"trailer" => 5,
            7 if name == b"upgrade" => 8,
            10 if name == b"connection" => 0,
            10 if name == b"keep-alive" => 1,
            16 if name == b"proxy-connection" => 2,
            17 if name == b"transfer-encoding" => 6,
            18 if name == b"proxy-authenticate" => 3,
            19 if name == b"proxy-authorization" => 4,
            _ => continue,
        };
        present |= 1 << index;
    }
    present
}

/// True when a request asks to switch to WebSocket: it carries `Upgrade:
/// websocket` and `Connection: upgrade`. Other upgrades (`h2c` above all)
/// are not tunnelled: an h2c tunnel would let the client send requests for
/// any path on the upstream, past the prefix, the dot-segment check and the
/// body limit. Their `Upgrade` header is removed like any hop-by-hop one.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    if !headers.contains_key(header::UPGRADE) {
        return false;
    }
    let websocket =
        list_tokens(headers.get_all(header::UPGRADE)).any(|t| t.eq_ignore_ascii_case("websocket"));
    websocket && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    has_token(headers.get_all(header::CONNECTION), token)
}

/// The items of one value of a list-valued field: split at commas,
/// trimmed, empty ones skipped. Split as bytes, not through `to_str`, so a
/// non-ASCII byte in one item cannot hide the others (and with them a
/// field `Connection` names).
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Whether a list-valued field has `token` (ASCII case ignored), compared
/// as bytes: nothing is decoded for the common one-token values.
pub(crate) fn has_token<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    token: &str,
) -> bool {
    values
        .into_iter()
        .any(|v| list_items(v.as_bytes()).any(|item| item.eq_ignore_ascii_case(token.as_bytes())))
}

/// The comma-separated tokens of a list-valued field, trimmed, empty ones
/// included (unlike [`list_items`]): a request's `Transfer-Encoding` must
/// be exactly `chunked`, and `chunked,` is refused rather than read the
/// way some other hop in front of us may not read it. Split as bytes, as
/// [`list_items`] is.
pub(crate) fn list_tokens<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
}

/// Removes the hop-by-hop set: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
/// `Proxy-Authorization`, `TE` other than `trailers`, `Trailer`,
/// `Transfer-Encoding`, and `Upgrade` unless `upgrading`. When upgrading,
/// `Upgrade` stays and `Connection: upgrade` is set again.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    strip(headers, scan(headers), upgrading);
}

/// A response on its way to the client: the hop-by-hop set removed (see
/// [`strip_hop_by_hop`]), and a `text/event-stream` one given
/// `X-Accel-Buffering: no` and `Cache-Control: no-cache` unless the
/// upstream set them, so buffering proxies and caches in front of us pass
/// each event on at once. One pass over the fields finds what both need.
pub(crate) fn rewrite_response(headers: &mut HeaderMap) {
    let present = scan(headers);
    strip(headers, present, false);
    // Still there: `Connection` may have named it.
    if present & EVENT_STREAM_BIT != 0 && headers.contains_key(header::CONTENT_TYPE) {
        headers
            .entry(HeaderName::from_static("x-accel-buffering"))
            .or_insert(HeaderValue::from_static("no"));
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-cache"));
    }
}

fn is_event_stream(content_type: &HeaderValue) -> bool {
    content_type
        .as_bytes()
        .trim_ascii_start()
        .get(..17)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
}

/// The fields among `names()` that `Connection`'s `tokens` name, but
/// `keep-alive` (a field removed anyway) and, when `upgrading`, `upgrade`
/// (kept). The tokens are nearly always `keep-alive` or `close`: each is
/// compared as bytes with the few names the message has rather than
/// parsed into a name and hashed, and nothing is allocated unless one is
/// found.
pub(crate) fn named_by_connection<'a, N: Iterator<Item = &'a HeaderName>>(
    tokens: impl Iterator<Item = &'a [u8]>,
    names: impl Fn() -> N,
    upgrading: bool,
) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for token in tokens {
        if token.eq_ignore_ascii_case(b"keep-alive")
            || (upgrading && token.eq_ignore_ascii_case(b"upgrade"))
        {
            continue;
        }
        if let Some(name) =
            names().find(|name| name.as_str().as_bytes().eq_ignore_ascii_case(token))
        {
            named.push(name.clone());
        }
    }
    named
}

/// [`strip_hop_by_hop`], with the [`scan`] done.
fn strip(headers: &mut HeaderMap, present: u16, upgrading: bool) {
    if present & CONNECTION_BIT != 0 {
        // `Connection` names more headers to remove (our HTTP/1.1 client
        // has removed a response's already; this is mostly a request's).
        let tokens = headers
            .get_all(header::CONNECTION)
            .into_iter()
            .flat_map(|v| list_items(v.as_bytes()));
        let named = named_by_connection(tokens, || headers.keys(), upgrading);
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    if present & ALWAYS_REMOVED != 0 {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if present & ALWAYS_REMOVED & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
    if present & TE_BIT != 0 {
        let te_is_trailers = headers.get_all(header::TE).iter().all(|v| {
            v.to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("trailers"))
        });
        if !te_is_trailers {
            headers.remove(header::TE);
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `API_PROXY_FORWARDED_HEADERS=true`: appends the client address to
/// `X-Forwarded-For` and sets `X-Forwarded-Proto` and `X-Forwarded-Host`
/// (the `Host` the client sent), before `Host` is rewritten.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: std::net::IpAddr,
    original_host: Option<HeaderValue>,
) {
    let ip = client.to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// The byte match in `scan` and the name table agree, bit by bit, and
    /// end-to-end names (of the same lengths too) set no bit.
    #[test]
    fn scan_finds_each_hop_by_hop_name_at_its_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = map(&[("content-type", "x"), ("tea", "x"), ("trailers", "x")]);
            h.insert(name.clone(), HeaderValue::from_static("x"));
            assert_eq!(scan(&h), 1 << i, "{name}");
        }
        let h = map(&[
            ("tx", "x"),
            ("referer", "x"),
            ("user-agent", "x"),
            ("x-request-id-abcdef", "x"),
        ]);
        assert_eq!(scan(&h), 0);
        let h = map(&[("content-type", "Text/Event-Stream")]);
        assert_eq!(scan(&h), EVENT_STREAM_BIT);
    }

    /// The fixed hop-by-hop set goes; end-to-end headers stay.
    #[test]
    fn removes_fixed_hop_by_hop_set() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic x"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("authorization", "Bearer sk"),
            ("content-length", "5"),
            ("accept-encoding", "gzip"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            names(&h),
            ["accept-encoding", "authorization", "content-length"]
        );
    }

    /// Headers named in `Connection` are hop-by-hop too.
    #[test]
    fn removes_headers_named_in_connection() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", "x-other"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("x-keep", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-keep"]);
    }

    /// A non-ASCII byte in one `Connection` token does not hide the others.
    #[test]
    fn connection_tokens_are_read_past_non_ascii_bytes() {
        let mut h = map(&[("connection", "x-hop, é"), ("x-hop", "1"), ("x-keep", "2")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-keep"]);
    }

    /// `TE: trailers` is the one TE value that may be forwarded.
    #[test]
    fn te_kept_only_when_trailers() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.contains_key("te"));
        let mut h = map(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("te"));
    }

    /// An upgrading request keeps `Upgrade` and `Connection: upgrade` only.
    #[test]
    fn upgrade_survives_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn upgrade_needs_both_headers_and_websocket() {
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
        assert!(!is_upgrade_request(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
    }

    #[test]
    fn event_stream_gets_anti_buffering_headers_unless_set() {
        let mut h = map(&[("content-type", " text/event-stream; charset=utf-8")]);
        rewrite_response(&mut h);
        assert_eq!(h["x-accel-buffering"], "no");
        assert_eq!(h["cache-control"], "no-cache");
        let mut h = map(&[
            ("content-type", "text/event-stream"),
            ("cache-control", "private"),
        ]);
        rewrite_response(&mut h);
        assert_eq!(h["cache-control"], "private");
        let mut h = map(&[("content-type", "application/json")]);
        rewrite_response(&mut h);
        assert!(!h.contains_key("x-accel-buffering"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1")]);
        add_forwarded(
            &mut h,
            "10.0.0.2".parse().unwrap(),
            Some(HeaderValue::from_static("proxy:8000")),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "proxy:8000");
    }

    // Fuzzing, as in routing.rs: `check_filter` runs on generated messages
    // and on the corpus `dataplane/tests/corpus/headers.txt`; failures are
    // saved to `dataplane/proptest-regressions/headers.txt` (commit it).

    /// The comma-separated tokens of a list field, lower-cased, whatever
    /// the spacing, case or other bytes in the value. Kept apart from
    /// `list_tokens` on purpose: the oracle must not share its bugs.
    fn tokens(fields: &[(HeaderName, HeaderValue)], name: &HeaderName) -> Vec<String> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.as_bytes().split(|b| *b == b','))
            .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
            .collect()
    }

    /// SPEC §3's hop-by-hop rule, computed from the message as sent: every
    /// field survives with its values in order except `Connection` and the
    /// fields it names, the fixed set, `TE` other than `trailers`, and
    /// `Upgrade` unless upgrading; upgrading leaves `Connection: upgrade`.
    /// A request upgrades when it says `Upgrade: websocket` and
    /// `Connection: upgrade`.
    fn check_filter(fields: &[(HeaderName, HeaderValue)]) -> Result<(), TestCaseError> {
        let mut sent = HeaderMap::new();
        for (name, value) in fields {
            sent.append(name.clone(), value.clone());
        }
        let named = tokens(fields, &header::CONNECTION);
        let websocket = tokens(fields, &header::UPGRADE).contains(&"websocket".to_owned());
        prop_assert_eq!(
            is_upgrade_request(&sent),
            websocket && named.contains(&"upgrade".to_owned())
        );
        let te_trailers = fields
            .iter()
            .filter(|(n, _)| n == header::TE)
            .all(|(_, v)| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"));
        for upgrading in [false, true] {
            let kept = |name: &HeaderName| match name.as_str() {
                "upgrade" if upgrading => true,
                "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "trailer"
                | "transfer-encoding"
                | "upgrade" => false,
                "te" if !te_trailers => false,
                name => !named.iter().any(|t| t == name),
            };
            let mut expected = HeaderMap::new();
            for (name, value) in fields.iter().filter(|(n, _)| kept(n)) {
                expected.append(name.clone(), value.clone());
            }
            if upgrading {
                expected.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            let mut forwarded = sent.clone();
            strip_hop_by_hop(&mut forwarded, upgrading);
            prop_assert_eq!(forwarded, expected, "upgrading: {}", upgrading);
        }
        Ok(())
    }

    /// Messages of `name: value` lines (the value verbatim after the first
    /// `:`), separated by blank lines; a line starting with `# ` is a
    /// comment.
    #[test]
    fn header_corpus() {
        for message in include_str!("../tests/corpus/headers.txt").split("\n\n") {
            let fields: Vec<_> = message
                .lines()
                .filter(|line| !line.starts_with("# "))
                .map(|line| {
                    let (name, value) = line.split_once(':').expect("name: value");
                    (
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                    )
                })
                .collect();
            check_filter(&fields).unwrap_or_else(|e| panic!("{message:?}: {e}"));
        }
    }

    /// Names in odd case: the hop-by-hop set, fields often named in
    /// `Connection`, and end-to-end ones that must survive.
    const NAMES: &[&str] = &[
        "Connection",
        "CONNECTION",
        "Keep-Alive",
        "proxy-connection",
        "Proxy-Authenticate",
        "proxy-authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Authorization",
        "X-A",
        "x-b",
    ];
    const VALUES: &[&str] = &[
        "",
        "trailers",
        " Trailers ",
        "trailers, deflate",
        "chunked",
        "keep-alive",
        "close",
        "Upgrade",
        "websocket",
        "WebSocket, h2c",
        "é",
    ];
    /// `Connection` list pieces: names, junk tokens, odd separators.
    const TOKENS: &[&str] = &[
        "connection",
        "Keep-Alive",
        "TE",
        "upgrade",
        "UPGRADE",
        "host",
        "content-length",
        "x-a",
        "X-B",
        "close",
        "",
        "x a",
        "é",
    ];
    const SEPARATORS: &[&str] = &[",", ", ", " ,", ",,", " , ", "\t,\t", ",\t"];

    fn message() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
        use proptest::{collection::vec, sample::select};
        let name = prop_oneof![
            3 => select(NAMES).prop_map(String::from),
            1 => "[a-z0-9!#$%&'*+.^_`|~-]{1,6}",
        ]
        .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap());
        // Visible ASCII, spaces, tabs and obs-text: what a value may hold.
        let byte = prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')];
        let value = prop_oneof![
            2 => select(VALUES).prop_map(|v| v.as_bytes().to_vec()),
            1 => vec(byte, 0..10),
        ]
        .prop_map(|v| HeaderValue::from_bytes(&v).unwrap());
        let list = (
            select(&[" ", "", "\t"][..]),
            vec((select(TOKENS), select(SEPARATORS)), 1..4),
        )
            .prop_map(|(pad, items)| {
                let list: String = items.iter().flat_map(|(t, s)| [*t, *s]).collect();
                HeaderValue::from_bytes(format!("{pad}{list}{pad}").as_bytes()).unwrap()
            });
        let connection = list.prop_map(|v| (header::CONNECTION, v));
        (vec((name, value), 0..8), vec(connection, 0..3))
            .prop_map(|(fields, lists)| fields.into_iter().chain(lists).collect())
    }

    proptest! {
        #[test]
        fn filter_removes_exactly_the_hop_set(fields in message()) {
            check_filter(&fields)?;
        }
    }
}
