//! The routing table: one immutable [`Snapshot`] of `prefix -> target`,
//! longest-prefix lookup on segment boundaries, and the upstream URL join.
//!
//! Lookup walks the request path's own segment boundaries from the longest
//! candidate down, one hash probe each, so its cost depends on the path's
//! depth (capped by the deepest configured prefix), never on how many
//! mappings there are.

use std::collections::HashMap;
use std::sync::Arc;

use apiproxy_shared::{validate_mapping, Target};
use http::{HeaderValue, Uri};
use tracing::warn;

use crate::metrics::Metrics;
use crate::stats::PrefixStats;

/// One routable mapping with everything the request path needs prepared.
#[derive(Debug)]
pub struct Route {
    pub prefix: Arc<str>,
    pub target: Target,
    /// The target exactly as configured, to recognise an unchanged entry.
    raw_target: Box<str>,
    /// Scheme and authority of every upstream URL, parsed once.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `Host` header value for the upstream request.
    pub host: HeaderValue,
    /// Where this prefix's requests are counted.
    pub stats: Arc<PrefixStats>,
}

/// An immutable set of routes; replaced whole, never edited.
#[derive(Debug, Default)]
pub struct Snapshot {
    routes: HashMap<Arc<str>, Arc<Route>>,
    /// Segments in the deepest prefix: longer paths start probing there.
    max_depth: usize,
    pub version: u64,
    /// Entries skipped because they failed validation.
    pub invalid_entries: usize,
}

impl Snapshot {
    /// Builds a snapshot from raw entries. Invalid entries are skipped with
    /// a warning and counted; the rest apply.
    pub fn build<I, P, T>(entries: I, version: u64, metrics: &Metrics) -> Snapshot
    where
        I: IntoIterator<Item = (P, T)>,
        P: AsRef<str>,
        T: AsRef<str>,
    {
        Snapshot::default().next(entries, version, metrics)
    }

    /// Builds the snapshot that follows this one. Routes whose prefix and
    /// target did not change are shared, not rebuilt, so a reload of 10,000
    /// mappings that changes one costs hash inserts, not 10,000 validations
    /// and metric-series lookups.
    pub fn next<I, P, T>(&self, entries: I, version: u64, metrics: &Metrics) -> Snapshot
    where
        I: IntoIterator<Item = (P, T)>,
        P: AsRef<str>,
        T: AsRef<str>,
    {
        let mut snapshot = Snapshot {
            version,
            ..Snapshot::default()
        };
        for (prefix, target) in entries {
            let (prefix, target) = (prefix.as_ref(), target.as_ref());
            let route = match self.routes.get(prefix) {
                Some(same) if &*same.raw_target == target => same.clone(),
                _ => match Route::new(prefix, target, metrics) {
                    Ok(route) => Arc::new(route),
                    Err(error) => {
                        warn!(prefix, %error, "skipping invalid mapping (target not logged: it may hold credentials)");
                        snapshot.invalid_entries += 1;
                        continue;
                    }
                },
            };
            snapshot.max_depth = snapshot.max_depth.max(depth(prefix));
            snapshot.routes.insert(route.prefix.clone(), route);
        }
        snapshot
    }

    /// The snapshot after one announced change (`target` `None`: deleted),
    /// sharing every other route. `raw_entries` is how many raw entries the
    /// source now holds, so the invalid count stays exact.
    pub fn with_change(
        &self,
        prefix: &str,
        target: Option<&str>,
        version: u64,
        raw_entries: usize,
        metrics: &Metrics,
    ) -> Snapshot {
        let mut routes = self.routes.clone();
        routes.remove(prefix);
        let mut max_depth = self.max_depth;
        if let Some(target) = target {
            match Route::new(prefix, target, metrics) {
                Ok(route) => {
                    // An upper bound is enough: it only lets lookups skip
                    // candidates deeper than any prefix.
                    max_depth = max_depth.max(depth(prefix));
                    routes.insert(route.prefix.clone(), Arc::new(route));
                }
                Err(error) => {
                    warn!(prefix, %error, "skipping invalid mapping (target not logged: it may hold credentials)")
                }
            }
        }
        Snapshot {
            invalid_entries: raw_entries.saturating_sub(routes.len()),
            routes,
            max_depth,
            version,
        }
    }

    /// [`apiproxy_shared::content_hash`] of the routes as configured, so the
    /// console can tell whether nodes serve the same set.
    pub fn content_hash(&self) -> String {
        apiproxy_shared::content_hash(self.routes.values().map(|r| (&*r.prefix, &*r.raw_target)))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Longest prefix of `path` that matches on a segment boundary: the path
    /// equals the prefix or continues with `/` after it. Returns the route
    /// and the rest of the path after the prefix.
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        if self.routes.is_empty() {
            return None;
        }
        // Candidate ends: the end of the path, then every `/` before it,
        // longest first, skipping candidates deeper than any prefix.
        let mut end = path.len();
        let mut candidate_depth = depth(path);
        loop {
            if candidate_depth <= self.max_depth && end > 1 {
                if let Some(route) = self.routes.get(&path[..end]) {
                    return Some((route, &path[end..]));
                }
            }
            match path[..end].rfind('/') {
                Some(slash) if slash > 0 => {
                    end = slash;
                    candidate_depth -= 1;
                }
                _ => break,
            }
        }
        self.routes.get("/").map(|route| (route, path))
    }
}

/// Number of `/`-separated segments in a prefix or path (`/` has none).
fn depth(path: &str) -> usize {
    path.bytes().filter(|b| *b == b'/').count() - usize::from(path == "/")
}

impl Route {
    fn new(
        prefix: &str,
        target: &str,
        metrics: &Metrics,
    ) -> Result<Route, apiproxy_shared::MappingError> {
        let mapping = validate_mapping(prefix, target)?;
        let target_raw = target;
        let target = Target::parse(&mapping.target)?;
        let host = HeaderValue::from_str(&target.authority).map_err(|_| {
            apiproxy_shared::MappingError::Target("host is not a valid header value")
        })?;
        let invalid = |_| apiproxy_shared::MappingError::Target("not a valid URL");
        Ok(Route {
            scheme: target.scheme.as_str().parse().map_err(invalid)?,
            authority: target.authority.parse().map_err(invalid)?,
            prefix: Arc::from(prefix),
            host,
            stats: metrics.prefix(prefix),
            raw_target: target_raw.into(),
            target,
        })
    }

    /// Upstream URL: target + rest of the path + `?` + raw query. Nothing is
    /// decoded or re-encoded; an empty result path is sent as `/`. Only the
    /// path and query are parsed per request: scheme and authority were
    /// parsed when the snapshot was built.
    pub fn upstream_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let base = &self.target.base_path;
        let mut path =
            String::with_capacity(base.len() + rest.len() + query.map_or(1, |q| q.len() + 2));
        path.push_str(base);
        path.push_str(rest);
        if path.is_empty() {
            path.push('/');
        }
        if let Some(q) = query {
            path.push('?');
            path.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
    }
}

/// True when a raw path holds a `.` or `..` segment, also spelled with
/// `%2e`/`%2E`: such a path could climb out of the target's base path.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let mut dots = 0;
        let mut rest = segment.as_bytes();
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && (rest[2] | 0x20) == b'e'
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot(entries: &[(&str, &str)]) -> Snapshot {
        Snapshot::build(entries.iter().copied(), 1, &Metrics::new())
    }

    fn route_for<'p>(s: &Snapshot, path: &'p str) -> Option<(String, &'p str)> {
        s.lookup(path).map(|(r, rest)| (r.prefix.to_string(), rest))
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let s = snapshot(&[
            ("/openai", "https://a"),
            ("/openai/v2", "https://b"),
            ("/google/v1", "https://c"),
        ]);
        assert_eq!(route_for(&s, "/openai"), Some(("/openai".into(), "")));
        assert_eq!(
            route_for(&s, "/openai/v1/chat"),
            Some(("/openai".into(), "/v1/chat"))
        );
        assert_eq!(
            route_for(&s, "/openai/v2/x"),
            Some(("/openai/v2".into(), "/x"))
        );
        assert_eq!(route_for(&s, "/openai/v2"), Some(("/openai/v2".into(), "")));
        assert_eq!(route_for(&s, "/openai/"), Some(("/openai".into(), "/")));
        assert_eq!(route_for(&s, "/openaiX"), None);
        assert_eq!(route_for(&s, "/google"), None);
        assert_eq!(
            route_for(&s, "/google/v1/models"),
            Some(("/google/v1".into(), "/models"))
        );
        assert_eq!(route_for(&s, "/"), None);
    }

    #[test]
    fn slash_is_the_default_route() {
        let s = snapshot(&[("/", "http://default"), ("/openai", "https://a")]);
        assert_eq!(
            route_for(&s, "/anything/else"),
            Some(("/".into(), "/anything/else"))
        );
        assert_eq!(route_for(&s, "/"), Some(("/".into(), "/")));
        assert_eq!(route_for(&s, "/openai/x"), Some(("/openai".into(), "/x")));
    }

    #[test]
    fn next_snapshot_shares_unchanged_routes() {
        let metrics = Metrics::new();
        let first = Snapshot::build([("/a", "http://a"), ("/b", "http://b")], 1, &metrics);
        let second = first.next([("/a", "http://a"), ("/b", "http://changed")], 2, &metrics);
        let (a1, _) = first.lookup("/a").unwrap();
        let (a2, _) = second.lookup("/a").unwrap();
        assert!(Arc::ptr_eq(a1, a2), "unchanged route is shared");
        let (b2, _) = second.lookup("/b").unwrap();
        assert_eq!(b2.target.to_string(), "http://changed");
        assert_eq!(second.version, 2);
        assert!(second
            .next([("/a", "http://a")], 3, &metrics)
            .lookup("/b")
            .is_none());
    }

    #[test]
    fn with_change_edits_one_route_and_keeps_counts_exact() {
        let metrics = Metrics::new();
        let first = Snapshot::build([("/a", "http://a"), ("/bad", "ftp://x")], 1, &metrics);
        assert_eq!(first.invalid_entries, 1);
        let added = first.with_change("/b/c", Some("http://b"), 2, 3, &metrics);
        assert_eq!(
            (added.len(), added.invalid_entries, added.version),
            (2, 1, 2)
        );
        assert!(Arc::ptr_eq(
            first.lookup("/a").unwrap().0,
            added.lookup("/a").unwrap().0
        ));
        assert_eq!(added.lookup("/b/c/d").unwrap().1, "/d");
        let deleted = added.with_change("/a", None, 3, 2, &metrics);
        assert!(deleted.lookup("/a").is_none());
        let fixed = deleted.with_change("/bad", Some("http://ok"), 4, 2, &metrics);
        assert_eq!((fixed.len(), fixed.invalid_entries), (2, 0));
        let broken = fixed.with_change("/a", Some("nope"), 5, 3, &metrics);
        assert_eq!((broken.len(), broken.invalid_entries), (2, 1));
    }

    #[test]
    fn invalid_entries_are_skipped_and_counted() {
        let s = snapshot(&[
            ("/ok", "https://a"),
            ("nope", "https://b"),
            ("/bad", "ftp://c"),
        ]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.invalid_entries, 2);
    }

    #[test]
    fn upstream_url_joins_without_touching_bytes() {
        let s = snapshot(&[
            ("/gemini", "https://generativelanguage.googleapis.com"),
            ("/groq", "https://api.groq.com/openai/"),
            ("/", "http://127.0.0.1:9"),
        ]);
        let url = |path: &str, q: Option<&str>| {
            let (r, rest) = s.lookup(path).unwrap();
            r.upstream_uri(rest, q).unwrap().to_string()
        };
        assert_eq!(
            url("/gemini/v1beta/models", Some("key=K")),
            "https://generativelanguage.googleapis.com/v1beta/models?key=K"
        );
        assert_eq!(
            url("/gemini", None),
            "https://generativelanguage.googleapis.com/"
        );
        assert_eq!(
            url("/groq/v1/chat", None),
            "https://api.groq.com/openai/v1/chat"
        );
        assert_eq!(url("/groq", None), "https://api.groq.com/openai");
        assert_eq!(
            url("/a%2Fb/%3F", Some("x=%20")),
            "http://127.0.0.1:9/a%2Fb/%3F?x=%20"
        );
        assert_eq!(
            url("/gemini/x", Some("")),
            "https://generativelanguage.googleapis.com/x?"
        );
    }

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a/%2E",
            "/a/..",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in [
            "/a/b",
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/a/%2e%2e%2e",
            "/",
            "/a/%2f/b",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }

    proptest! {
        /// The hash walk agrees with a plain scan over all prefixes.
        #[test]
        fn lookup_matches_a_linear_scan(
            prefixes in proptest::collection::vec("(/[ab]{1,2}){1,3}", 0..8),
            path in "(/[ab]{0,2}){0,4}",
            default in any::<bool>(),
        ) {
            let mut entries: Vec<(String, &str)> = prefixes.iter().map(|p| (p.clone(), "http://h")).collect();
            if default { entries.push(("/".into(), "http://h")); }
            let s = Snapshot::build(entries.iter().map(|(p, t)| (p.as_str(), *t)), 1, &Metrics::new());
            let expected = entries.iter().map(|(p, _)| p.as_str())
                .filter(|p| *p == "/" || path == *p || (path.starts_with(*p) && path.as_bytes().get(p.len()) == Some(&b'/')))
                .max_by_key(|p| if *p == "/" { 0 } else { p.len() });
            let found = s.lookup(&path).map(|(r, _)| r.prefix.to_string());
            prop_assert_eq!(found.as_deref(), expected);
        }

        /// The joined URL is the target followed by exactly the request bytes.
        #[test]
        fn join_appends_rest_and_query_verbatim(rest in "(/[a-z%0-9]{0,3}){0,3}", q in proptest::option::of("[a-z=&%0-9]{0,6}")) {
            let s = snapshot(&[("/p", "https://h/base")]);
            let path = format!("/p{rest}");
            let (r, found_rest) = s.lookup(&path).unwrap();
            prop_assert_eq!(found_rest, rest.as_str());
            let url = r.upstream_uri(found_rest, q.as_deref()).unwrap().to_string();
            let expected = format!("https://h/base{rest}{}", q.as_ref().map(|q| format!("?{q}")).unwrap_or_default());
            prop_assert_eq!(url, expected);
        }
    }
}
