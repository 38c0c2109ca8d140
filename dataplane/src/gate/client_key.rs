//! Where a client's SDK puts its API key, and so where a client sends its
//! proxy key: `Authorization: Bearer` (OpenAI and most others),
//! `x-api-key` (Anthropic), `x-goog-api-key` or the `key` query parameter
//! (Gemini). Found there, the proxy key is taken out before the request
//! goes on: the upstream never sees it.

use std::borrow::Cow;

use apiproxy_shared::access::PROXY_KEY_PREFIX;
use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderMap;
use percent_encoding::percent_decode_str;

pub(crate) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub(crate) static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
/// The query parameter Gemini's SDKs send the key in.
pub(crate) const KEY_PARAM: &str = "key";

/// Where the proxy key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Header(HeaderName),
    Query,
}

/// The client's proxy key and where it was. Of the places that hold a
/// value, the first whose value looks like a proxy key (`apx-…`) wins, so
/// a client may send its own upstream key beside it; failing that, the
/// first value at all (which will be unknown: 401).
pub(crate) fn find<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<(Cow<'a, [u8]>, Found)> {
    let bearer = headers.get(AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let scheme = v.get(..7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| v[7..].trim_ascii())
    });
    let candidates = [
        bearer.map(|v| (Cow::Borrowed(v), Found::Header(AUTHORIZATION))),
        header(headers, &X_API_KEY),
        header(headers, &X_GOOG_API_KEY),
        query
            .and_then(|q| param(q, KEY_PARAM))
            .map(|v| (v, Found::Query)),
    ];
    let mut first = None;
    for candidate in candidates.into_iter().flatten() {
        if candidate.0.starts_with(PROXY_KEY_PREFIX.as_bytes()) {
            return Some(candidate);
        }
        first.get_or_insert(candidate);
    }
    first
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<(Cow<'a, [u8]>, Found)> {
    let value = headers.get(name)?.as_bytes().trim_ascii();
    Some((Cow::Borrowed(value), Found::Header(name.clone())))
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

/// The decoded value of the first parameter called `name`.
fn param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    pairs(query)
        .find(|(n, _)| n == name)
        .map(|(_, pair)| match pair.split_once('=') {
            Some((_, value)) => match percent_decode_str(value).into() {
                Cow::Borrowed(b) => Cow::Borrowed(b),
                Cow::Owned(v) => Cow::Owned(v),
            },
            None => Cow::Borrowed(&b""[..]),
        })
}

/// `query` without the parameters called `remove` (names compared
/// decoded, so `%6Bey` is `key` too), then `append` (a ready `name=value`)
/// if any. `None` when nothing is left.
pub(crate) fn rewrite_query(
    query: Option<&str>,
    remove: &str,
    append: Option<&str>,
) -> Option<String> {
    let mut out = String::with_capacity(query.map_or(0, str::len) + append.map_or(0, str::len) + 1);
    for (name, pair) in query.into_iter().flat_map(pairs) {
        if name != remove {
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

    fn found(h: &HeaderMap, q: Option<&str>) -> Option<(String, Found)> {
        find(h, q).map(|(v, f)| (String::from_utf8(v.into_owned()).unwrap(), f))
    }

    #[test]
    fn every_sdk_place_is_found() {
        let bearer = headers(&[("authorization", "Bearer apx-1")]);
        assert_eq!(
            found(&bearer, None),
            Some(("apx-1".into(), Found::Header(AUTHORIZATION)))
        );
        let lower = headers(&[("authorization", "bearer  apx-1 ")]);
        assert_eq!(found(&lower, None).unwrap().0, "apx-1");
        let anthropic = headers(&[("x-api-key", "apx-2")]);
        assert_eq!(
            found(&anthropic, None),
            Some(("apx-2".into(), Found::Header(X_API_KEY.clone())))
        );
        let gemini = headers(&[("x-goog-api-key", "apx-3")]);
        assert_eq!(found(&gemini, None).unwrap().0, "apx-3");
        assert_eq!(
            found(&HeaderMap::new(), Some("alt=sse&key=apx-4")),
            Some(("apx-4".into(), Found::Query))
        );
        assert_eq!(
            found(&HeaderMap::new(), Some("%6Bey=apx%2D5")).unwrap().0,
            "apx-5"
        );
        assert_eq!(found(&HeaderMap::new(), Some("keys=1")), None);
        assert_eq!(found(&headers(&[("authorization", "Basic x")]), None), None);
    }

    #[test]
    fn a_proxy_key_beside_another_credential_wins() {
        let both = headers(&[("authorization", "Bearer sk-own"), ("x-api-key", "apx-9")]);
        assert_eq!(
            found(&both, None),
            Some(("apx-9".into(), Found::Header(X_API_KEY.clone())))
        );
        // No proxy key anywhere: the first value, which will be unknown.
        let own = headers(&[("x-api-key", "sk-own")]);
        assert_eq!(found(&own, Some("key=g")).unwrap().0, "sk-own");
    }

    #[test]
    fn queries_lose_the_key_and_gain_the_credential() {
        assert_eq!(
            rewrite_query(Some("alt=sse&key=apx-1&x=%20"), "key", None).as_deref(),
            Some("alt=sse&x=%20")
        );
        assert_eq!(rewrite_query(Some("key=apx-1"), "key", None), None);
        assert_eq!(
            rewrite_query(Some("%6Bey=a&key=b&k=1"), "key", Some("key=REAL")).as_deref(),
            Some("k=1&key=REAL")
        );
        assert_eq!(
            rewrite_query(None, "key", Some("key=REAL")).as_deref(),
            Some("key=REAL")
        );
        assert_eq!(rewrite_query(Some("&&"), "key", None), None);
    }
}
