//! The routing table: one immutable [`Snapshot`] of `prefix -> route`,
//! longest-prefix lookup on segment boundaries.
//!
//! Lookup walks the request path's own segment boundaries from the longest
//! candidate down, one map probe each, so its cost depends on the path's
//! depth (capped by the deepest configured prefix), never on how many
//! mappings there are. The map is persistent ([`RouteTrie`]): the snapshot
//! after one change shares all but a path of nodes with the one before, so
//! a change costs O(log n), not a copy of the table.

use std::collections::BTreeMap;
use std::sync::Arc;

use apiproxy_shared::canonical_prefix;
use fnv::FnvBuildHasher;
use rpds::HashTrieMapSync;
use tracing::warn;

pub use crate::route::Route;
use crate::route_trie::RouteTrie;

/// FNV, not SipHash: keys are the operator's prefixes, never a client's,
/// so there is no table to flood.
type Map<K, V> = HashTrieMapSync<K, V, FnvBuildHasher>;

/// An immutable set of routes; replaced whole, never edited.
#[derive(Debug)]
pub struct Snapshot {
    /// By prefix in its one spelling.
    routes: RouteTrie,
    /// The entries that do not route, as configured (raw prefix -> raw
    /// target): refused by validation, or another spelling of a routed
    /// prefix. Kept so that the snapshot alone says what its source holds;
    /// there are few, usually none.
    skipped: Map<Box<str>, Box<str>>,
    /// Segments in the deepest prefix: longer paths start probing there.
    max_depth: usize,
    pub(crate) version: u64,
    /// Whether some entry's prefix is not in its one spelling, so that one
    /// change may decide between two entries: [`Snapshot::with_change`]
    /// then rebuilds from all of them.
    aliased: bool,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot {
            routes: RouteTrie::default(),
            skipped: Map::new_with_hasher_and_ptr_kind(FnvBuildHasher::default()),
            max_depth: 0,
            version: 0,
            aliased: false,
        }
    }
}

impl Snapshot {
    /// Builds a snapshot from raw entries. Invalid entries are skipped with
    /// a warning and counted; the rest apply.
    pub fn build<I, P, T>(entries: I, version: u64) -> Snapshot
    where
        I: IntoIterator<Item = (P, T)>,
        P: AsRef<str>,
        T: AsRef<str>,
    {
        Snapshot::default().next(entries, version)
    }

    /// Builds the snapshot that follows this one. Routes whose prefix and
    /// target did not change are shared, not rebuilt (with their stats and
    /// parsed upstream), so a reload of 10,000 mappings that changes one
    /// costs map inserts, not 10,000 validations.
    pub(crate) fn next<I, P, T>(&self, entries: I, version: u64) -> Snapshot
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
                Some(same) if same.raw_prefix() == prefix && same.raw_target() == target => {
                    same.clone()
                }
                _ => match Route::new(prefix, target) {
                    Ok(route) => Arc::new(route),
                    Err(error) => {
                        snapshot.skip_invalid(prefix, target, error);
                        continue;
                    }
                },
            };
            snapshot.insert(route);
        }
        snapshot
    }

    fn skip_invalid(&mut self, prefix: &str, target: &str, error: apiproxy_shared::MappingError) {
        warn!(prefix, %error, "skipping invalid mapping (target not logged: it may hold credentials)");
        self.skipped.insert_mut(prefix.into(), target.into());
    }

    /// Adds a route. Two spellings of one prefix (`/trail` and `/trail/`,
    /// as the Go version allowed) are one route: the entry in the one
    /// spelling wins, else the smaller raw prefix, whatever the order the
    /// entries come in, so every node picks the same; the other is skipped
    /// and counted as invalid.
    fn insert(&mut self, route: Arc<Route>) {
        self.aliased |= route.is_respelled();
        self.max_depth = self.max_depth.max(depth(&route.prefix));
        let (kept, skipped) = match self.routes.get(&route.prefix) {
            // The same raw prefix twice (never from a hash): the later wins.
            Some(old) if old.raw_prefix() != route.raw_prefix() => {
                let rank = |r: &Route| (r.is_respelled(), r.raw_prefix().to_owned());
                if rank(&route) < rank(old) {
                    (route, old.clone())
                } else {
                    (old.clone(), route)
                }
            }
            _ => {
                self.routes.insert(route);
                return;
            }
        };
        warn!(prefix = %kept.prefix, kept = %kept.raw_prefix(), skipped = %skipped.raw_prefix(), "skipping a second spelling of one prefix");
        self.skipped
            .insert_mut(skipped.raw_prefix().into(), skipped.raw_target().into());
        self.routes.insert(kept);
    }

    /// The snapshot after one announced change (`target` `None`: deleted),
    /// sharing every other route. When a prefix is not in its one
    /// spelling, here or in the change, the change may decide between two
    /// spellings, and the snapshot is rebuilt from all its entries.
    pub fn with_change(&self, prefix: &str, target: Option<&str>, version: u64) -> Snapshot {
        if self.aliased || canonical_prefix(prefix).is_ok_and(|one| one != prefix) {
            let mut entries: BTreeMap<&str, &str> = self.entries().collect();
            match target {
                Some(target) => entries.insert(prefix, target),
                None => entries.remove(prefix),
            };
            return self.next(entries, version);
        }
        let mut next = Snapshot {
            routes: self.routes.clone(),
            skipped: self.skipped.remove(prefix),
            // An upper bound is enough: it only lets lookups skip
            // candidates deeper than any prefix.
            max_depth: self.max_depth,
            version,
            aliased: false,
        };
        // An insert replaces the route it finds, so only a delete or an
        // invalid target removes one (a second path copy otherwise).
        match target.map(|target| (target, Route::new(prefix, target))) {
            Some((_, Ok(route))) => {
                next.max_depth = next.max_depth.max(depth(prefix));
                next.routes.insert(Arc::new(route));
            }
            Some((target, Err(error))) => {
                next.routes.remove(prefix);
                next.skip_invalid(prefix, target, error);
            }
            None => {
                next.routes.remove(prefix);
            }
        }
        next
    }

    /// Every entry as configured, routed or skipped: what the source holds.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        let routed = self.routes.iter().map(|r| (r.raw_prefix(), r.raw_target()));
        routed.chain(self.skipped.iter().map(|(p, t)| (&**p, &**t)))
    }

    /// Whether `entries` (raw, as a source holds them) are exactly this
    /// snapshot's: a full read that finds this needs no new snapshot.
    pub(crate) fn holds(&self, entries: &BTreeMap<String, String>) -> bool {
        let target_of = |raw_prefix: &str| match self.skipped.get(raw_prefix) {
            Some(target) => Some(&**target),
            None => {
                let one = canonical_prefix(raw_prefix).ok()?;
                let route = self.routes.get(&one)?;
                (route.raw_prefix() == raw_prefix).then(|| route.raw_target())
            }
        };
        // As many entries, each found with its target: a raw prefix is
        // routed or skipped, never both, so this is the same set.
        entries.len() == self.routes.len() + self.skipped.size()
            && entries
                .iter()
                .all(|(p, t)| target_of(p) == Some(t.as_str()))
    }

    /// [`apiproxy_shared::content_hash`] of the routed entries as
    /// configured (raw prefix and target, as the hash holds them), so the
    /// console can tell whether nodes serve the same set.
    pub(crate) fn content_hash(&self) -> String {
        apiproxy_shared::content_hash(self.routes.iter().map(|r| (r.raw_prefix(), r.raw_target())))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Entries skipped because they failed validation, or lost to another
    /// spelling of their prefix.
    pub(crate) fn invalid_entries(&self) -> usize {
        self.skipped.size()
    }

    /// Longest prefix of `path` that matches on a segment boundary: the path
    /// equals the prefix or continues with `/` after it. Returns the route
    /// and the rest of the path after the prefix.
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        if self.is_empty() {
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

/// The path as an upstream may read it, when that differs from how it is
/// written: percent-encodings of characters a prefix may hold decoded
/// (`/%61dmin` is `/admin`), `%2F`, `%5C` and `\` read as `/`, runs of
/// `/` as one (nginx merges them), other encodings in upper-case hex and
/// raw non-ASCII bytes encoded, as prefixes are spelled. `None` when the
/// path is already so spelled. Routing matches the path as written; a
/// gate asks this to see whether another mapping is meant.
pub(crate) fn plain_spelling(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let plain = |c: &u8| *c != b'%' && *c != b'\\' && c.is_ascii();
    if b.iter().all(plain) && !path.contains("//") {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = String::with_capacity(path.len());
    let push = |out: &mut String, byte: u8, raw: bool| {
        let slash = matches!(byte, b'/' | b'\\');
        if slash {
            if !out.ends_with('/') {
                out.push('/');
            }
        } else if byte.is_ascii_alphanumeric()
            // Decoded, a character a prefix may hold is itself; written
            // raw, any ASCII but `%` stays as it is.
            || (byte.is_ascii() && !raw && b"-._~!$&'()*+,;=:@".contains(&byte))
            || (byte.is_ascii() && raw && byte != b'%')
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    };
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                push(&mut out, hi << 4 | lo, false);
                i += 3;
            }
            (c, _, _) => {
                push(&mut out, c, true);
                i += 1;
            }
        }
    }
    (out != path).then_some(out)
}

/// True when a raw path holds a `.` or `..` segment as any common upstream
/// may read it: the dots also spelled `%2e`, segments also ended by `\`,
/// `%2F` or `%5C` (nginx, IIS and WHATWG parsers treat them as `/`), and
/// `;params` ignored (Tomcat reads `..;` as `..`). Such a path could climb
/// out of the target's base path, into another prefix's upstream.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    let b = path.as_bytes();
    let encoded = |i: usize, hi: u8, lo: u8| {
        b.len() >= i + 3 && b[i] == b'%' && b[i + 1] == hi && (b[i + 2] | 0x20) == lo
    };
    let separator_len = |i: usize| match b[i] {
        b'/' | b'\\' => 1,
        b'%' if encoded(i, b'2', b'f') || encoded(i, b'5', b'c') => 3,
        _ => 0,
    };
    // The segment being read: how many dots its name has, whether its name
    // is dots only so far, and whether `;params` have begun.
    let (mut dots, mut only_dots, mut params) = (0, true, false);
    let mut i = 0;
    loop {
        let separator = if i == b.len() { 0 } else { separator_len(i) };
        if i == b.len() || separator > 0 {
            if only_dots && (dots == 1 || dots == 2) {
                return true;
            }
            if i == b.len() {
                return false;
            }
            (dots, only_dots, params) = (0, true, false);
            i += separator;
        } else if params {
            i += 1;
        } else if b[i] == b';' {
            params = true;
            i += 1;
        } else if b[i] == b'.' {
            dots += 1;
            i += 1;
        } else if encoded(i, b'2', b'e') {
            dots += 1;
            i += 3;
        } else {
            only_dots = false;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metrics;
    use apiproxy_shared::validate_mapping;
    use proptest::prelude::*;

    fn snapshot(entries: &[(&str, &str)]) -> Snapshot {
        Snapshot::build(entries.iter().copied(), 1)
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
        let first = Snapshot::build([("/a", "http://a"), ("/b", "http://b")], 1);
        let second = first.next([("/a", "http://a"), ("/b", "http://changed")], 2);
        let (a1, _) = first.lookup("/a").unwrap();
        let (a2, _) = second.lookup("/a").unwrap();
        assert!(Arc::ptr_eq(a1, a2), "unchanged route is shared");
        let (b2, _) = second.lookup("/b").unwrap();
        assert_eq!(b2.raw_target(), "http://changed");
        assert_eq!(second.version, 2);
        assert!(second.next([("/a", "http://a")], 3).lookup("/b").is_none());
    }

    fn raw(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn with_change_edits_one_route_and_keeps_counts_exact() {
        let first = Snapshot::build([("/a", "http://a"), ("/bad", "ftp://x")], 1);
        assert_eq!(first.invalid_entries(), 1);
        let added = first.with_change("/b/c", Some("http://b"), 2);
        assert_eq!(
            (added.len(), added.invalid_entries(), added.version),
            (2, 1, 2)
        );
        assert!(Arc::ptr_eq(
            first.lookup("/a").unwrap().0,
            added.lookup("/a").unwrap().0
        ));
        assert_eq!(added.lookup("/b/c/d").unwrap().1, "/d");
        let deleted = added.with_change("/a", None, 3);
        assert!(deleted.lookup("/a").is_none());
        let fixed = deleted.with_change("/bad", Some("http://ok"), 4);
        assert_eq!((fixed.len(), fixed.invalid_entries()), (2, 0));
        let broken = fixed.with_change("/a", Some("nope"), 5);
        assert_eq!((broken.len(), broken.invalid_entries()), (2, 1));
        assert!(Arc::ptr_eq(
            fixed.lookup("/b/c").unwrap().0,
            broken.lookup("/b/c").unwrap().0
        ));
        // The snapshot alone says what the source holds, skipped entries
        // included: a full read of exactly that needs no new snapshot.
        let held = raw(&[("/a", "nope"), ("/bad", "http://ok"), ("/b/c", "http://b")]);
        assert!(broken.holds(&held));
        assert_eq!(
            broken.entries().collect::<BTreeMap<_, _>>(),
            held.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect()
        );
        for differs in [
            raw(&[("/a", "nope"), ("/bad", "http://ok")]),
            raw(&[("/a", "nope2"), ("/bad", "http://ok"), ("/b/c", "http://b")]),
            raw(&[("/a", "nope"), ("/bad", "http://ok"), ("/b/c/", "http://b")]),
            raw(&[
                ("/a", "nope"),
                ("/bad", "http://ok"),
                ("/b/c", "http://b"),
                ("/d", "http://d"),
            ]),
        ] {
            assert!(!broken.holds(&differs), "{differs:?}");
        }
    }

    #[test]
    fn go_era_prefixes_route_in_their_one_spelling() {
        let s = snapshot(&[
            ("/trail/", "http://t/base"),
            ("/café", "http://c"),
            ("/日本/v1/", "http://j"),
        ]);
        assert_eq!((s.len(), s.invalid_entries()), (3, 0));
        assert_eq!(route_for(&s, "/trail/x"), Some(("/trail".into(), "/x")));
        assert_eq!(route_for(&s, "/trail/"), Some(("/trail".into(), "/")));
        assert_eq!(route_for(&s, "/trail"), Some(("/trail".into(), "")));
        assert_eq!(route_for(&s, "/trailer"), None);
        // The raw path: non-ASCII as percent-encoded UTF-8, upper-case hex.
        assert_eq!(
            route_for(&s, "/caf%C3%A9/x"),
            Some(("/caf%C3%A9".into(), "/x"))
        );
        assert_eq!(route_for(&s, "/caf%c3%a9/x"), None);
        assert_eq!(route_for(&s, "/café/x"), None);
        assert_eq!(
            route_for(&s, "/%E6%97%A5%E6%9C%AC/v1/m"),
            Some(("/%E6%97%A5%E6%9C%AC/v1".into(), "/m"))
        );
        let (route, rest) = s.lookup("/trail/x").unwrap();
        assert_eq!(route.upstream_target(rest, None).unwrap(), "/base/x");
        // Nodes report stats under the one spelling, and the hash of what
        // the hash holds, as configured.
        assert_eq!(&**route.in_use(&Metrics::new()).stats.prefix(), "/trail");
        assert_eq!(
            s.content_hash(),
            apiproxy_shared::content_hash([
                ("/trail/", "http://t/base"),
                ("/café", "http://c"),
                ("/日本/v1/", "http://j"),
            ])
        );
    }

    #[test]
    fn two_spellings_of_one_prefix_are_decided_the_same_in_any_order() {
        for (entries, kept) in [
            (
                vec![("/trail/", "http://slash"), ("/trail", "http://one")],
                "/trail",
            ),
            (
                vec![("/trail", "http://one"), ("/trail/", "http://slash")],
                "/trail",
            ),
            (
                vec![("/café", "http://raw"), ("/caf%C3%A9", "http://one")],
                "/caf%C3%A9",
            ),
            (vec![("/café/", "http://b"), ("/café", "http://a")], "/café"),
            (vec![("/café", "http://a"), ("/café/", "http://b")], "/café"),
            (
                vec![
                    ("/caf%C3%A9/", "http://c"),
                    ("/café", "http://a"),
                    ("/café/", "http://b"),
                ],
                "/caf%C3%A9/",
            ),
        ] {
            let s = Snapshot::build(entries.iter().copied(), 1);
            let (route, _) = s.lookup(&canonical_prefix(kept).unwrap()).unwrap();
            assert_eq!(route.raw_prefix(), kept, "{entries:?}");
            let target = entries.iter().find(|e| e.0 == kept).unwrap().1;
            assert_eq!(route.raw_target(), target, "{entries:?}");
            assert_eq!((s.len(), s.invalid_entries()), (1, entries.len() - 1));
            assert_eq!(
                s.content_hash(),
                apiproxy_shared::content_hash([(kept, target)])
            );
        }
    }

    #[test]
    fn a_change_between_two_spellings_rebuilds_from_all_entries() {
        let first = Snapshot::build([("/trail/", "http://slash"), ("/x", "http://x")], 1);
        // The one spelling arrives: it wins, the other becomes invalid.
        let added = first.with_change("/trail", Some("http://one"), 2);
        assert_eq!((added.len(), added.invalid_entries()), (2, 1));
        assert_eq!(
            added.lookup("/trail/a").unwrap().0.raw_target(),
            "http://one"
        );
        // It goes: the other spelling routes again.
        let deleted = added.with_change("/trail", None, 3);
        assert_eq!((deleted.len(), deleted.invalid_entries()), (2, 0));
        assert_eq!(
            deleted.lookup("/trail/a").unwrap().0.raw_target(),
            "http://slash"
        );
        assert_eq!(deleted.version, 3);
        // Without other spellings, a change shares the untouched routes.
        let plain = Snapshot::build([("/a", "http://a")], 1);
        let changed = plain.with_change("/b", Some("http://b"), 2);
        assert!(!changed.aliased);
        assert_eq!((changed.len(), changed.invalid_entries()), (2, 0));
    }

    /// The upstream URL a request for `path` with query `q` goes to.
    fn upstream_url(s: &Snapshot, path: &str, q: Option<&str>) -> String {
        let (r, rest) = s.lookup(path).unwrap();
        format!(
            "{}{}",
            r.in_use(&Metrics::new()).upstream.key,
            r.upstream_target(rest, q).unwrap()
        )
    }

    #[test]
    fn a_target_query_comes_before_the_clients() {
        let s = snapshot(&[
            ("/gemini", "https://g.test/v1beta?key=K"),
            ("/bare", "http://b.test?key=K"),
            ("/slash", "http://s.test/s/"),
        ]);
        let url = |path: &str, q: Option<&str>| upstream_url(&s, path, q);
        assert_eq!(
            url("/gemini/models", Some("a=1")),
            "https://g.test/v1beta/models?key=K&a=1"
        );
        assert_eq!(
            url("/gemini/models", None),
            "https://g.test/v1beta/models?key=K"
        );
        assert_eq!(
            url("/gemini/models", Some("")),
            "https://g.test/v1beta/models?key=K"
        );
        assert_eq!(url("/gemini", None), "https://g.test/v1beta?key=K");
        assert_eq!(url("/bare", Some("key=X")), "http://b.test/?key=K&key=X");
        assert_eq!(url("/slash/x", Some("a=1")), "http://s.test/s/x?a=1");
        assert_eq!(url("/slash", None), "http://s.test/s");
    }

    #[test]
    fn plain_spellings_are_what_an_upstream_may_read() {
        for (path, plain) in [
            ("/admin/x", None),
            ("/v1/chat/completions", None),
            ("/%61dmin/x", Some("/admin/x")),
            ("//admin//x", Some("/admin/x")),
            ("/a%2fb/x", Some("/a/b/x")),
            ("/a\\b", Some("/a/b")),
            ("/caf%c3%a9/x", Some("/caf%C3%A9/x")),
            ("/caf%C3%A9/x", None),
            ("/café/x", Some("/caf%C3%A9/x")),
            ("/a%20b/%3a", Some("/a%20b/:")),
            ("/a%2", Some("/a%252")),
        ] {
            assert_eq!(plain_spelling(path).as_deref(), plain, "{path}");
        }
    }

    #[test]
    fn invalid_entries_are_skipped_and_counted() {
        let s = snapshot(&[
            ("/ok", "https://a"),
            ("nope", "https://b"),
            ("/bad", "ftp://c"),
        ]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.invalid_entries(), 2);
    }

    #[test]
    fn upstream_url_joins_without_touching_bytes() {
        let s = snapshot(&[
            ("/gemini", "https://generativelanguage.googleapis.com"),
            ("/groq", "https://api.groq.com/openai/"),
            ("/", "http://127.0.0.1:9"),
        ]);
        let url = |path: &str, q: Option<&str>| upstream_url(&s, path, q);
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
            // Where lenient upstreams end a segment, or drop its params.
            "/a/..%2fb/x",
            "/a/..%2Fb",
            "/a/..%5cb",
            "/a/..\\b",
            "/a/..;/b",
            "/a/.;x",
            "/a/%2e%2e;jsessionid=1",
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
            "/v1/models/org%2Fmodel",
            "/a/...;x",
            "/a/;/b",
            "/a/b;..",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }

    // Fuzzing. Each property is a `check_*` function run twice: by proptest
    // on generated inputs, and by a `#[test]` on the kept corpus in
    // `dataplane/tests/corpus/` (one input per line; a line starting with
    // `# ` is a comment). Cases: `PROPTEST_CASES` (default 256), so no
    // config here sets `cases`, which would override it. A failure is saved
    // by proptest's default `SourceParallel` persistence to
    // `dataplane/proptest-regressions/routing.txt` and replayed first on
    // every run: commit that file, and add the minimal input to the corpus.

    fn corpus(text: &str) -> impl Iterator<Item = &str> {
        text.lines()
            .filter(|line| !line.is_empty() && !line.starts_with("# "))
    }

    fn fail(error: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(error.to_string())
    }

    /// How an upstream may read a path before acting on it.
    #[derive(Clone, Copy)]
    enum Reading {
        /// RFC 3986: `%2e` is `.`, only `/` separates segments.
        Rfc3986,
        /// Also what nginx, IIS, Tomcat or WHATWG URL parsers variously do:
        /// `%2F`, `%5C` and `\` separate segments too, `;params` end one.
        Lenient,
    }

    /// Whether an upstream reading `path` this way finds a `.` or `..`
    /// segment, that is, would resolve the path to a different one.
    fn sees_dot_segment(path: &str, reading: Reading) -> bool {
        let mut path = path.to_ascii_lowercase().replace("%2e", ".");
        if let Reading::Lenient = reading {
            path = path
                .replace("%2f", "/")
                .replace("%5c", "/")
                .replace('\\', "/");
        }
        path.split('/').any(|segment| {
            let name = match reading {
                Reading::Rfc3986 => segment,
                Reading::Lenient => segment.split(';').next().unwrap_or(segment),
            };
            name == "." || name == ".."
        })
    }

    /// What a table (one entry per raw prefix, as a hash holds them)
    /// routes: for each prefix's one spelling, the entry that validation
    /// accepts (what the control plane stores) among its spellings, the one
    /// spelling first, else the smallest. Every other entry is invalid.
    struct Routed {
        /// One spelling -> (raw prefix, target).
        routes: BTreeMap<String, (String, String)>,
        invalid: usize,
    }

    impl Routed {
        fn of(entries: &[(String, String)]) -> Routed {
            let valid: Vec<_> = entries
                .iter()
                .filter_map(|(p, t)| validate_mapping(p, t).ok().map(|m| (m.prefix, p, t)))
                .collect();
            let mut spellings: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (one, raw, _) in &valid {
                let all = spellings.entry(one.as_str()).or_default();
                if !all.contains(&raw.as_str()) {
                    all.push(raw);
                }
            }
            let distinct: usize = spellings.values().map(Vec::len).sum();
            let routes = spellings
                .iter()
                .map(|(one, raws)| {
                    let best = raws.iter().min_by_key(|r| (**r != *one, **r)).unwrap();
                    let (_, raw, target) = valid.iter().rev().find(|v| v.1 == best).unwrap();
                    (one.to_string(), (raw.to_string(), target.to_string()))
                })
                .collect();
            Routed {
                routes,
                invalid: entries.len() - valid.len() + distinct - spellings.len(),
            }
        }
    }

    /// Builds the snapshot of a table: it routes what [`Routed`] says,
    /// counts the rest as invalid, and hashes the routed entries as they
    /// are written.
    fn check_table(entries: &[(String, String)]) -> Result<Snapshot, TestCaseError> {
        let snapshot = Snapshot::build(entries.iter().cloned(), 1);
        let routed = Routed::of(entries);
        prop_assert_eq!(snapshot.invalid_entries(), routed.invalid);
        prop_assert_eq!(snapshot.len(), routed.routes.len());
        prop_assert_eq!(
            snapshot.content_hash(),
            apiproxy_shared::content_hash(
                routed
                    .routes
                    .values()
                    .map(|(p, t)| (p.as_str(), t.as_str()))
            )
        );
        Ok(snapshot)
    }

    /// One raw request target against a table: dot segments are found in
    /// exactly the spellings SPEC §3 names; the matcher agrees with a scan
    /// of the table; and a request the proxy accepts goes to its route's
    /// target followed by its own bytes, which no later parse or `reading`
    /// by the upstream can move to another host, out of the target's base
    /// path, or to a different path.
    fn check_request(
        entries: &[(String, String)],
        snapshot: &Snapshot,
        raw: &str,
        reading: Reading,
    ) -> Result<(), TestCaseError> {
        // What hyper hands the proxy: it answers 400 to anything else.
        let Ok(request) = http::uri::PathAndQuery::try_from(raw) else {
            return Ok(());
        };
        let (path, query) = (request.path(), request.query());
        prop_assert_eq!(
            has_dot_segment(path),
            sees_dot_segment(path, Reading::Lenient)
        );

        let matches = |p: &&str| {
            *p == "/"
                || path
                    .strip_prefix(*p)
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        };
        let routed = Routed::of(entries);
        let longest = routed
            .routes
            .keys()
            .map(String::as_str)
            .filter(matches)
            .max_by_key(|p| if *p == "/" { 0 } else { p.len() });
        let found = snapshot.lookup(path);
        prop_assert_eq!(found.map(|(route, _)| &*route.prefix), longest);

        // proxy.rs `refuse_foreign_targets` turns these away first.
        let Some((route, rest)) = found else {
            return Ok(());
        };
        if !path.starts_with('/') || has_dot_segment(path) {
            return Ok(());
        }
        let (prefix, (_, configured)) = routed
            .routes
            .get_key_value(&*route.prefix)
            .expect("routed prefix is in the table");
        let target = ExpectedTarget::of(configured)?;
        let own_rest = if prefix == "/" {
            path
        } else {
            &path[prefix.len()..]
        };
        prop_assert_eq!(rest, own_rest);
        let target_uri = route.upstream_target(rest, query).map_err(fail)?;
        let uri = format!("{}{target_uri}", route.in_use(&Metrics::new()).upstream.key);
        let mut upstream_path = format!("{}{rest}", target.base_path);
        if upstream_path.is_empty() {
            upstream_path.push('/');
        }
        let query = match (&target.query, query) {
            (Some(own), Some(q)) if !q.is_empty() => format!("?{own}&{q}"),
            (Some(own), _) => format!("?{own}"),
            (None, Some(q)) => format!("?{q}"),
            (None, None) => String::new(),
        };
        prop_assert_eq!(
            &uri,
            &format!(
                "{}://{}{upstream_path}{query}",
                target.scheme, target.authority
            )
        );

        let reparsed: http::Uri = uri.parse().map_err(fail)?;
        prop_assert_eq!(reparsed.scheme_str(), Some(target.scheme.as_str()));
        prop_assert_eq!(
            reparsed.authority().map(|a| a.as_str()),
            Some(target.authority.as_str())
        );
        let under_base = reparsed.path().strip_prefix(&target.base_path);
        prop_assert!(under_base.is_some_and(|r| r.is_empty() || r.starts_with('/')));
        prop_assert!(
            !sees_dot_segment(reparsed.path(), reading),
            "upstream resolves {} elsewhere",
            reparsed.path()
        );
        Ok(())
    }

    /// What a valid configured target means, read with plain string
    /// operations rather than `Target::parse` (whose reading is what is
    /// under test): the query after the first `?` unless empty; before it,
    /// the scheme before `://`, the authority up to the next `/`, both in
    /// lower case, and the path after it without trailing slashes.
    struct ExpectedTarget {
        scheme: String,
        authority: String,
        base_path: String,
        query: Option<String>,
    }

    impl ExpectedTarget {
        fn of(configured: &str) -> Result<ExpectedTarget, TestCaseError> {
            let (configured, query) = match configured.split_once('?') {
                Some((before, query)) => (before, Some(query).filter(|q| !q.is_empty())),
                None => (configured, None),
            };
            let (scheme, rest) = configured
                .split_once("://")
                .ok_or_else(|| fail(format!("routed target without ://: {configured}")))?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            Ok(ExpectedTarget {
                scheme: scheme.to_ascii_lowercase(),
                authority: authority.to_ascii_lowercase(),
                base_path: path.trim_end_matches('/').to_owned(),
                query: query.map(str::to_owned),
            })
        }
    }

    fn corpus_table() -> Vec<(String, String)> {
        corpus(include_str!("../tests/corpus/mappings.txt"))
            .map(|line| {
                let (prefix, target) = line.split_once(' ').unwrap_or((line, ""));
                (prefix.to_owned(), target.to_owned())
            })
            .collect()
    }

    /// The request corpus against the mapping corpus, with and without its
    /// default route.
    fn replay_request_corpus(reading: Reading) {
        let with_default = corpus_table();
        let without: Vec<_> = with_default
            .iter()
            .filter(|e| e.0 != "/")
            .cloned()
            .collect();
        for entries in [with_default, without] {
            let snapshot = check_table(&entries).unwrap();
            for line in corpus(include_str!("../tests/corpus/request-targets.txt")) {
                check_request(&entries, &snapshot, line, reading)
                    .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            }
        }
    }

    #[test]
    fn request_target_corpus() {
        replay_request_corpus(Reading::Rfc3986);
    }

    /// Request-target pieces that have fooled path handling somewhere: dot
    /// segments in every spelling, encoded and back slashes, double
    /// encoding, path parameters (`..;` is `..` to Tomcat), user info,
    /// query and fragment marks, non-ASCII.
    const REQUEST_PIECES: &[&str] = &[
        "/", "//", ".", "..", "...", ".a", "%2e", "%2E", ".%2E", "%2e%2e", "%2f", "%2F", "%5c",
        "%5C", "%252e", "%25", "%", "\\", "@", "?", "#", ";", ";x=1", ":", "*", "a", "B", "é",
        "💥",
    ];
    /// Valid and refused target parts; base paths are free of dot segments
    /// (a configured one is the operator's choice, not a request's).
    const SCHEMES: &[&str] = &["http", "https", "HTTPS"];
    const AUTHORITIES: &[&str] = &[
        "a.test",
        "B.Test:8443",
        "127.0.0.1:8080",
        "[::1]:9",
        "[FE80::1:2]",
        "[1.2]",
        "a_b",
        "-",
        ".",
        "h:65536",
        "[::1]x",
        "u@h",
    ];
    const BASE_PATHS: &[&str] = &[
        "",
        "/",
        "/api",
        "/api/",
        "/v1/x",
        "/a%2Fb",
        "/~u/!$&'()*+,;=:@",
        "/q?key=K",
        "?key=K&x=%20",
        "/api/?",
        "/?a?b",
    ];

    /// Mappings whose prefixes share segments, so requests hit several.
    fn table() -> impl Strategy<Value = Vec<(String, String)>> {
        use proptest::{collection::vec, sample::select};
        let odd = [
            ".a", "...", "@", ":", ";", "~", ".", "..", "%2e", "", "é", "%C3%A9", "%c3%a9", "%C3",
        ];
        let segment = prop_oneof![
            4 => "[ab]{1,2}",
            1 => select(odd.to_vec()).prop_map(String::from),
        ];
        // Some with a trailing `/`: a second spelling of the same prefix.
        let prefix = prop_oneof![
            6 => (vec(segment, 1..4), "/?").prop_map(|(s, end)| format!("/{}{end}", s.join("/"))),
            1 => Just("/".to_owned()),
        ];
        let target = (select(SCHEMES), select(AUTHORITIES), select(BASE_PATHS))
            .prop_map(|(s, a, b)| format!("{s}://{a}{b}"));
        // One entry per raw prefix, as a Redis hash holds them.
        vec((prefix, target), 0..6).prop_map(|entries| {
            let unique: BTreeMap<_, _> = entries.into_iter().collect();
            unique.into_iter().collect()
        })
    }

    /// A table, and a request target that starts with one of its prefixes
    /// (or `/`) and goes on with hostile pieces.
    fn table_and_request() -> impl Strategy<Value = (Vec<(String, String)>, String)> {
        use proptest::{collection::vec, sample::select};
        table().prop_flat_map(|entries| {
            let mut starts: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
            starts.extend(
                entries
                    .iter()
                    .filter_map(|e| canonical_prefix(&e.0).ok().map(|p| p.into_owned())),
            );
            starts.push("/".into());
            let rest = vec(select(REQUEST_PIECES), 0..8).prop_map(|p| p.concat());
            (
                Just(entries),
                (select(starts), rest).prop_map(|(s, r)| s + &r),
            )
        })
    }

    /// FINDING, not the contract yet: SPEC §3 forwards `..%2F`, `..%5C`,
    /// `..\` and `..;` segments, which upstreams that read paths leniently
    /// resolve out of the target's base path. Ignored until SPEC decides.
    #[test]
    fn request_target_corpus_lenient_upstream() {
        replay_request_corpus(Reading::Lenient);
    }

    proptest! {
        /// One change at a time, from a one-field read, routes exactly
        /// what a full read of the same entries builds.
        #[test]
        fn changes_one_by_one_equal_a_full_build(
            (start, changes) in (table(), proptest::collection::vec((0..8usize, proptest::option::of(0..4usize)), 1..12))
        ) {
            let prefixes = ["/a", "/a/b", "/trail", "/trail/", "/caf%C3%A9", "/café", "nope", "/"];
            let targets = ["http://one", "https://two/base/", "ftp://bad", "http://q?key=K"];
            let mut held: BTreeMap<String, String> = start.iter().cloned().collect();
            let mut snapshot = Snapshot::build(&held, 1);
            for (version, (p, t)) in (2..).zip(changes) {
                let (prefix, target) = (prefixes[p], t.map(|t| targets[t]));
                match target {
                    Some(target) => held.insert(prefix.to_owned(), target.to_owned()),
                    None => held.remove(prefix),
                };
                snapshot = snapshot.with_change(prefix, target, version);
                prop_assert!(snapshot.holds(&held));
                let full = Snapshot::build(&held, version);
                prop_assert_eq!(snapshot.len(), full.len());
                prop_assert_eq!(snapshot.invalid_entries(), full.invalid_entries());
                prop_assert_eq!(snapshot.content_hash(), full.content_hash());
                for (one, _) in full.entries() {
                    let path = format!("{}/x", canonical_prefix(one).unwrap_or_default());
                    let a = snapshot.lookup(&path).map(|(r, rest)| (r.raw_prefix(), r.raw_target(), rest));
                    let b = full.lookup(&path).map(|(r, rest)| (r.raw_prefix(), r.raw_target(), rest));
                    prop_assert_eq!(a, b);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn requests_route_to_their_own_upstream((entries, raw) in table_and_request()) {
            let snapshot = check_table(&entries)?;
            check_request(&entries, &snapshot, &raw, Reading::Rfc3986)?;
        }

        #[test]
        fn lenient_upstreams_resolve_nothing((entries, raw) in table_and_request()) {
            let snapshot = check_table(&entries)?;
            check_request(&entries, &snapshot, &raw, Reading::Lenient)?;
        }
    }
}
