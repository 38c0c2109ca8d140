//! Where a client's SDK puts its API key, and so where a client sends its
//! proxy key: `Authorization: Bearer` (OpenAI and most others),
//! `x-api-key` (Anthropic), `x-goog-api-key` or the `key` query parameter
//! (Gemini). The proxy key is taken out of every one of them before the
//! request goes on: the upstream never sees it, even from a client that
//! sent it in two places.

use std::borrow::Cow;

use apiproxy_shared::access::PROXY_KEY_PREFIX;
use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderMap;
use percent_encoding::percent_decode_str;

pub(crate) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub(crate) static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
/// The query parameter Gemini's SDKs send the key in.
pub(crate) const KEY_PARAM: &str = "key";

/// Whether `value` is a proxy key (what the control plane makes starts
/// with `apx-`).
pub(crate) fn is_proxy_key(value: &[u8]) -> bool {
    value.starts_with(PROXY_KEY_PREFIX.as_bytes())
}

/// The value of an `Authorization: Bearer` header (any whitespace after
/// the scheme).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let scheme = value.get(..6)?;
    let rest = &value[6..];
    (scheme.eq_ignore_ascii_case(b"bearer") && rest.first().is_some_and(u8::is_ascii_whitespace))
        .then(|| rest.trim_ascii())
}

/// Whether a value of the key header `name` holds a proxy key anywhere an
/// upstream might read one: as its bearer token, or as the value itself
/// (`Authorization: apx-…` too). Such a value never goes on.
fn holds_proxy_key(name: &HeaderName, value: &http::HeaderValue) -> bool {
    key_in(name, value).is_some_and(is_proxy_key) || is_proxy_key(value.as_bytes().trim_ascii())
}

/// The headers an SDK puts its key in.
const KEY_HEADERS: [&HeaderName; 3] = [&AUTHORIZATION, &X_API_KEY, &X_GOOG_API_KEY];

/// The key a value of the key header `name` holds: a bearer token, or the
/// value itself.
fn key_in<'v>(name: &HeaderName, value: &'v http::HeaderValue) -> Option<&'v [u8]> {
    let value = value.as_bytes();
    if name == AUTHORIZATION {
        bearer(value)
    } else {
        Some(value.trim_ascii())
    }
}

/// What a request holds: the proxy key it is checked by, and which key
/// headers hold a proxy key at all (one bit each, in [`KEY_HEADERS`]'s
/// order), to take out.
pub(crate) struct Found<'a> {
    pub(crate) key: Cow<'a, [u8]>,
    pub(crate) in_headers: u8,
}

/// The client's proxy key. Of the places that hold a value, the first
/// whose value looks like a proxy key (`apx-…`) wins, so a client may send
/// its own upstream key beside it; failing that, the first value at all
/// (which will be unknown: 401).
pub(crate) fn find<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Found<'a>> {
    let (mut key, mut first, mut in_headers) = (None, None, 0u8);
    for (bit, name) in KEY_HEADERS.into_iter().enumerate() {
        for value in headers.get_all(name) {
            if holds_proxy_key(name, value) {
                in_headers |= 1 << bit;
            }
            let Some(candidate) = key_in(name, value) else {
                continue;
            };
            if is_proxy_key(candidate) {
                key.get_or_insert(candidate);
            }
            first.get_or_insert(candidate);
        }
    }
    let key = match (key, query.and_then(|q| param(q, KEY_PARAM))) {
        (Some(key), _) => Cow::Borrowed(key),
        (None, Some(param)) if is_proxy_key(&param) => param,
        (None, param) => first.map(Cow::Borrowed).or(param)?,
    };
    Some(Found { key, in_headers })
}

/// The bit of the key header `name` in [`Found::in_headers`] (0 for any
/// other header).
pub(crate) fn bit_of(name: &HeaderName) -> u8 {
    KEY_HEADERS
        .iter()
        .position(|h| *h == name)
        .map_or(0, |i| 1 << i)
}

/// Takes the proxy keys out of the key headers `in_headers` names (as
/// [`find`] gave it); other values of those headers (a client's own
/// upstream key) stay.
pub(crate) fn strip_headers(headers: &mut HeaderMap, in_headers: u8) {
    for (bit, name) in KEY_HEADERS.into_iter().enumerate() {
        if in_headers & (1 << bit) == 0 {
            continue;
        }
        let kept: Vec<_> = headers
            .get_all(name)
            .iter()
            .filter(|v| !holds_proxy_key(name, v))
            .cloned()
            .collect();
        headers.remove(name);
        for v in kept {
            headers.append(name, v);
        }
    }
}

/// The pairs of a query string as (decoded name, raw pair).
fn pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        (decode(name), pair)
    })
}

fn decode(text: &str) -> Cow<'_, str> {
    // `+` is a space in form encoding; a key never holds either.
    percent_decode_str(text).decode_utf8_lossy()
}

/// The decoded value of the first parameter called `name` that holds a
/// proxy key, else of the first one called so.
fn param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    let mut values =
        pairs(query)
            .filter(|(n, _)| n == name)
            .map(|(_, pair)| match pair.split_once('=') {
                Some((_, value)) => match percent_decode_str(value).into() {
                    Cow::Borrowed(b) => Cow::Borrowed(b),
                    Cow::Owned(v) => Cow::Owned(v),
                },
                None => Cow::Borrowed(&b""[..]),
            });
    let first = values.next()?;
    if is_proxy_key(&first) {
        return Some(first);
    }
    Some(values.find(|v| is_proxy_key(v)).unwrap_or(first))
}

/// Whether a query parameter may carry a proxy key to an upstream: any
/// name that reads as `key` without case, and a value that holds one once
/// decoded (`+` read as a space, as form parsers do) and trimmed.
fn query_holds_proxy_key(name: &str, pair: &str) -> bool {
    let value = pair
        .split_once('=')
        .map_or("", |(_, v)| v)
        .replace('+', " ");
    let value: Vec<u8> = percent_decode_str(&value).collect();
    name.eq_ignore_ascii_case(KEY_PARAM) && is_proxy_key(value.trim_ascii())
}

/// `query` without the parameters called `remove` (names compared
/// decoded, so `%6Bey` is `key` too) and, when `keyed`, without any `key`
/// parameter that holds a proxy key; then `append` (a ready `name=value`)
/// if any. `None` when nothing is left.
pub(crate) fn rewrite_query(
    query: Option<&str>,
    remove: Option<&str>,
    keyed: bool,
    append: Option<&str>,
) -> Option<String> {
    let mut out = String::with_capacity(query.map_or(0, str::len) + append.map_or(0, str::len) + 1);
    for (name, pair) in query.into_iter().flat_map(pairs) {
        if Some(&*name) != remove && !(keyed && query_holds_proxy_key(&name, pair)) {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
    }
    if let Some(pair) = append {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(pair);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn found(h: &HeaderMap, q: Option<&str>) -> Option<String> {
        find(h, q).map(|f| String::from_utf8(f.key.into_owned()).unwrap())
    }

    #[test]
    fn every_sdk_place_is_found() {
        let bearer = headers(&[("authorization", "Bearer apx-1")]);
        assert_eq!(found(&bearer, None), Some("apx-1".into()));
        let lower = headers(&[("authorization", "bearer  apx-1 ")]);
        assert_eq!(found(&lower, None).as_deref(), Some("apx-1"));
        let anthropic = headers(&[("x-api-key", "apx-2")]);
        assert_eq!(found(&anthropic, None), Some("apx-2".into()));
        let gemini = headers(&[("x-goog-api-key", "apx-3")]);
        assert_eq!(found(&gemini, None).as_deref(), Some("apx-3"));
        assert_eq!(
            found(&HeaderMap::new(), Some("alt=sse&key=apx-4")),
            Some("apx-4".into())
        );
        assert_eq!(
            found(&HeaderMap::new(), Some("%6Bey=apx%2D5")).as_deref(),
            Some("apx-5")
        );
        assert_eq!(found(&HeaderMap::new(), Some("keys=1")), None);
        assert_eq!(found(&headers(&[("authorization", "Basic x")]), None), None);
    }

    #[test]
    fn a_proxy_key_beside_another_credential_wins() {
        let both = headers(&[("authorization", "Bearer sk-own"), ("x-api-key", "apx-9")]);
        assert_eq!(found(&both, None), Some("apx-9".into()));
        // No proxy key anywhere: the first value, which will be unknown.
        let second = found(&HeaderMap::new(), Some("key=sk-own&key=apx-7"));
        assert_eq!(second.as_deref(), Some("apx-7"));
        let own = headers(&[("x-api-key", "sk-own")]);
        assert_eq!(found(&own, Some("key=g")).as_deref(), Some("sk-own"));
    }

    #[test]
    fn queries_lose_the_key_and_gain_the_credential() {
        // A keyed request loses its proxy keys, not another `key`.
        assert_eq!(
            rewrite_query(Some("alt=sse&key=apx-1&x=%20&key=own"), None, true, None).as_deref(),
            Some("alt=sse&x=%20&key=own")
        );
        assert_eq!(rewrite_query(Some("%6Bey=apx%2D1"), None, true, None), None);
        assert_eq!(
            rewrite_query(Some("key=apx-1"), None, false, None).as_deref(),
            Some("key=apx-1")
        );
        // A credential parameter replaces every one of its name.
        assert_eq!(
            rewrite_query(
                Some("%6Bey=a&key=b&k=1"),
                Some("key"),
                true,
                Some("key=REAL")
            )
            .as_deref(),
            Some("k=1&key=REAL")
        );
        assert_eq!(
            rewrite_query(None, Some("key"), false, Some("key=REAL")).as_deref(),
            Some("key=REAL")
        );
        assert_eq!(rewrite_query(Some("&&"), Some("key"), true, None), None);
        // Spellings an upstream may still read as the key.
        assert_eq!(
            rewrite_query(
                Some("KEY=apx-1&key=+apx-2&key=%20apx-3&a=1"),
                None,
                true,
                None
            )
            .as_deref(),
            Some("a=1")
        );
    }

    #[test]
    fn every_proxy_key_leaves_the_headers() {
        let mut h = headers(&[
            ("authorization", "Bearer apx-1"),
            ("x-api-key", "apx-1"),
            ("x-api-key", "sk-own"),
            ("x-goog-api-key", " apx-2"),
            ("authorization", "Basic abc"),
            ("authorization", "apx-4"),
            ("authorization", "Bearer\tapx-5"),
            ("x-other", "apx-3"),
        ]);
        let in_headers = find(&h, None).unwrap().in_headers;
        assert_eq!(in_headers, 0b111);
        strip_headers(&mut h, in_headers);
        let values = |n: &str| -> Vec<_> {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(values("authorization"), ["Basic abc"]);
        assert_eq!(values("x-api-key"), ["sk-own"]);
        assert!(values("x-goog-api-key").is_empty());
        assert_eq!(values("x-other"), ["apx-3"]);
    }
}
