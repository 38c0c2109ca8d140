//! The mapping model (`prefix -> target`) and its validation rules
//! (SPEC §5). Every mapping the data plane routes and every mapping the
//! control plane stores passes through [`validate_mapping`].

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest prefix accepted, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;
/// Longest target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;

/// One validated routing entry: requests under `prefix` go to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub prefix: String,
    /// Normalised target URL (lower-case scheme, no trailing `/`).
    pub target: String,
}

/// Why a prefix or target was refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("prefix: {0}")]
    Prefix(&'static str),
    #[error("target: {0}")]
    Target(&'static str),
}

/// Upstream scheme of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A target URL split into the parts the proxy needs to build an upstream
/// request: `scheme://authority` + `base_path` + (rest of the client path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// `host[:port]`, exactly as written (IPv6 hosts keep their brackets).
    pub authority: String,
    /// Empty, or begins with `/` and does not end with `/`.
    pub base_path: String,
    /// The target's own query (without `?`, never empty): sent before the
    /// client's. It may hold credentials (`key=`): never log it.
    pub query: Option<String>,
}

impl Target {
    /// Parses and validates a target URL (SPEC §5): absolute `http` or
    /// `https`, a host, no user info, no fragment, at most
    /// [`MAX_TARGET_LEN`] bytes. A trailing `/` of the path is dropped, and
    /// so is an empty query (a bare `?`).
    pub fn parse(raw: &str) -> Result<Target, MappingError> {
        let parts = TargetParts::parse(raw)?;
        Ok(Target {
            scheme: parts.scheme,
            authority: parts.authority.to_ascii_lowercase(),
            base_path: parts.base_path.to_owned(),
            query: parts.query.map(str::to_owned),
        })
    }

    /// Host without port or IPv6 brackets, as used for DNS and TLS SNI.
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }
}

/// A target URL's parts as [`Target::parse`] validates them, borrowed from
/// the URL as written (the authority keeps its case): what a holder of the
/// written URL keeps instead of a second copy of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetParts<'a> {
    pub scheme: Scheme,
    pub authority: &'a str,
    /// Empty, or begins with `/` and does not end with `/`.
    pub base_path: &'a str,
    /// Never empty.
    pub query: Option<&'a str>,
}

impl<'a> TargetParts<'a> {
    /// Validates `raw` as [`Target::parse`] does.
    pub fn parse(raw: &'a str) -> Result<TargetParts<'a>, MappingError> {
        use MappingError::Target as E;
        if raw.is_empty() {
            return Err(E("must not be empty"));
        }
        if raw.len() > MAX_TARGET_LEN {
            return Err(E("longer than 2048 bytes"));
        }
        if raw
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(E("must not contain whitespace or control characters"));
        }
        let (scheme, rest) =
            split_scheme(raw).ok_or(E("must be an absolute http:// or https:// URL"))?;
        if rest.contains('#') {
            return Err(E("must not contain a fragment (#)"));
        }
        // The query ends the authority and the path wherever it starts, as
        // in every URL parser: `http://h?x/y` is the host `h`.
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(E("must not contain user info (user:pass@)"));
        }
        validate_authority(authority)?;
        if !path.bytes().all(is_path_byte) {
            return Err(E("path contains characters not allowed in a URL path"));
        }
        if !query.unwrap_or("").bytes().all(is_query_byte) {
            return Err(E("query contains characters not allowed in a URL query"));
        }
        Ok(TargetParts {
            scheme,
            authority,
            base_path: path.trim_end_matches('/'),
            query: query.filter(|q| !q.is_empty()),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.base_path
        )?;
        match &self.query {
            Some(query) => write!(f, "?{query}"),
            None => Ok(()),
        }
    }
}

/// A target as it may be logged or shown to anyone but an admin: without
/// its query (`?…` shows that it has one), which may hold credentials.
pub fn loggable_target(target: &str) -> Cow<'_, str> {
    match target.split_once('?') {
        Some((before, _)) => Cow::Owned(format!("{before}?…")),
        None => Cow::Borrowed(target),
    }
}

fn split_scheme(raw: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = raw.split_once("://")?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return None;
    };
    Some((scheme, rest))
}

fn validate_authority(authority: &str) -> Result<(), MappingError> {
    use MappingError::Target as E;
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or(E("IPv6 host is missing its closing ]"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(E("IPv6 host is not valid"));
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or(E("unexpected text after the IPv6 host"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(E("must have a host"));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(E("host contains characters not allowed in a host name"));
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E("port must be a number from 1 to 65535"));
        }
        match port.parse::<u32>() {
            Ok(1..=65535) => {}
            _ => return Err(E("port must be a number from 1 to 65535")),
        }
    }
    Ok(())
}

/// RFC 3986 `pchar` plus `/`, and `%` for already-encoded target paths.
fn is_path_byte(b: u8) -> bool {
    is_prefix_byte(b) || b == b'%'
}

/// Characters a query may hold: a path's, and `?`.
fn is_query_byte(b: u8) -> bool {
    is_path_byte(b) || b == b'?'
}

/// ASCII characters a prefix may hold: unreserved, sub-delims, `:`, `@`,
/// `/`. A `%` only as the encoding of a non-ASCII byte, so that a prefix
/// has exactly one spelling on the wire.
fn is_prefix_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// The one spelling of a prefix (SPEC §5), in which it is matched against
/// the raw request path: non-ASCII characters percent-encoded as UTF-8 with
/// upper-case hex (`/café` is `/caf%C3%A9`), and a trailing `/` dropped
/// (`/trail/` is `/trail`) except from the prefix `/` itself. Refused
/// unless that spelling starts with `/`, is at most [`MAX_PREFIX_LEN`]
/// bytes of URL path characters, holds a `%` only as `%XX` encoding a byte
/// of 0x80 or more (`%C3%A9` typed directly is `é`; `%c3%a9`, `%2F` or
/// `%41` are refused), decodes to UTF-8, and has no empty or dot segments.
/// Borrowed unless non-ASCII characters had to be encoded.
pub fn canonical_prefix(prefix: &str) -> Result<Cow<'_, str>, MappingError> {
    use MappingError::Prefix as E;
    if prefix.is_empty() {
        return Err(E("must not be empty"));
    }
    if !prefix.starts_with('/') {
        return Err(E("must start with /"));
    }
    if prefix == "/" {
        return Ok(Cow::Borrowed(prefix));
    }
    // Every character may only grow; a trailing `/` is the one thing that
    // can shrink, so this bounds the work on hostile input.
    if prefix.len() > MAX_PREFIX_LEN + 1 {
        return Err(E("longer than 256 bytes"));
    }
    let mut spelled: Cow<'_, str> = Cow::Borrowed(prefix);
    if !prefix.is_ascii() {
        let mut encoded = String::with_capacity(prefix.len() * 3);
        for b in prefix.bytes() {
            if b.is_ascii() {
                encoded.push(char::from(b));
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        spelled = Cow::Owned(encoded);
    }
    if spelled.ends_with('/') {
        match spelled {
            Cow::Borrowed(s) => spelled = Cow::Borrowed(&s[..s.len() - 1]),
            Cow::Owned(ref mut s) => {
                s.pop();
            }
        }
    }
    check_spelling(&spelled)?;
    Ok(spelled)
}

/// The rules of [`canonical_prefix`] on a spelling already encoded and
/// without its trailing `/`.
fn check_spelling(prefix: &str) -> Result<(), MappingError> {
    use MappingError::Prefix as E;
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(E("longer than 256 bytes"));
    }
    let b = prefix.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| match b.get(j) {
                    Some(d @ b'0'..=b'9') => Some(d - b'0'),
                    Some(d @ b'A'..=b'F') => Some(d - b'A' + 10),
                    _ => None,
                };
                match (hex(i + 1), hex(i + 2)) {
                    (Some(hi @ 8..), Some(lo)) => decoded.push(hi << 4 | lo),
                    _ => return Err(E(
                        "% only as the encoding of a non-ASCII byte (%80 to %FF, upper-case hex)",
                    )),
                }
                i += 3;
            }
            c if is_prefix_byte(c) => {
                decoded.push(c);
                i += 1;
            }
            c => {
                return Err(match c {
                    b'?' => E("must not contain ?"),
                    b'#' => E("must not contain #"),
                    b'\\' => E("must not contain \\"),
                    c if c.is_ascii_whitespace() => E("must not contain whitespace"),
                    _ => E("contains characters not allowed in a URL path"),
                })
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(E("percent-encoded bytes are not UTF-8"));
    }
    for segment in prefix[1..].split('/') {
        match segment {
            "" => return Err(E("must not contain empty segments (//)")),
            "." | ".." => return Err(E("must not contain . or .. segments")),
            _ => {}
        }
    }
    Ok(())
}

/// Validates a prefix that must already be in its one spelling
/// ([`canonical_prefix`]), as the prefixes nodes report stats for are.
pub fn validate_prefix(prefix: &str) -> Result<(), MappingError> {
    if canonical_prefix(prefix)? == prefix {
        Ok(())
    } else {
        Err(MappingError::Prefix(
            "must be written in its one spelling (non-ASCII percent-encoded, no trailing /)",
        ))
    }
}

/// Validates both halves of a mapping and returns it normalised: the
/// prefix in its one spelling ([`canonical_prefix`]), the target with a
/// lower-case scheme and host and no trailing `/` on its path.
pub fn validate_mapping(prefix: &str, target: &str) -> Result<Mapping, MappingError> {
    let prefix = canonical_prefix(prefix)?;
    let parsed = Target::parse(target)?;
    Ok(Mapping {
        prefix: prefix.into_owned(),
        target: parsed.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_default_mappings() {
        for (p, t) in [
            ("/openai", "https://api.openai.com"),
            ("/groq", "https://api.groq.com/openai"),
            ("/", "http://127.0.0.1:8080"),
            ("/google/v1", "https://generativelanguage.googleapis.com/"),
            ("/v6", "http://[::1]:9000/base"),
        ] {
            validate_mapping(p, t).unwrap_or_else(|e| panic!("{p} -> {t}: {e}"));
        }
    }

    #[test]
    fn prefix_rules_each_have_a_message_naming_the_field() {
        for bad in [
            "",
            "openai",
            "//",
            "/a//",
            "/a//b",
            "/a/./b",
            "/..",
            "/../",
            "/a b",
            "/a?b",
            "/a#b",
            "/a%2Fb",
            "/a\\b",
            "/caf%c3%a9",
            "/%41",
            "/%C3",
            "/%E9",
            "/a%",
            "/a%C",
        ] {
            let err = validate_prefix(bad).expect_err(bad);
            assert!(err.to_string().starts_with("prefix: "), "{bad}: {err}");
        }
        assert!(validate_prefix(&format!("/{}", "a".repeat(255))).is_ok());
        assert!(validate_prefix(&format!("/{}", "a".repeat(256))).is_err());
        // The limit is on the one spelling: a trailing `/` does not count,
        // an encoded character counts three bytes a byte.
        assert!(canonical_prefix(&format!("/{}/", "a".repeat(255))).is_ok());
        assert!(canonical_prefix(&format!("/{}é", "a".repeat(249))).is_ok());
        assert!(canonical_prefix(&format!("/{}é", "a".repeat(250))).is_err());
    }

    #[test]
    fn a_prefix_has_one_spelling() {
        for (raw, one) in [
            ("/", "/"),
            ("/trail/", "/trail"),
            ("/a/b/", "/a/b"),
            ("/café", "/caf%C3%A9"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/café/", "/caf%C3%A9"),
            ("/ca%C3%A9f%C3%A9", "/ca%C3%A9f%C3%A9"),
            ("/日本/v1", "/%E6%97%A5%E6%9C%AC/v1"),
            ("/💥", "/%F0%9F%92%A5"),
        ] {
            assert_eq!(canonical_prefix(raw).as_deref(), Ok(one), "{raw}");
            assert_eq!(validate_mapping(raw, "http://h").unwrap().prefix, one);
            assert_eq!(validate_prefix(one), Ok(()), "{one}");
            if raw != one {
                let err = validate_prefix(raw).expect_err(raw);
                assert!(err.to_string().contains("one spelling"), "{raw}: {err}");
            }
        }
        // Unchanged ASCII spellings are not copied.
        assert!(matches!(canonical_prefix("/openai"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn target_rules_each_have_a_message_naming_the_field() {
        for bad in [
            "",
            "api.openai.com",
            "ftp://x",
            "https://",
            "https://user:pw@host",
            "https://host/?q=1#f",
            "https://host/#f",
            "https://host/?q=é",
            "https://host/?q\\x",
            "https://host?q=a b",
            "https://ho st",
            "https://host:0",
            "https://host:65536",
            "https://host:abc",
            "https://[::1",
            "https://[1.2]",
        ] {
            let err = Target::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("target: "), "{bad}: {err}");
        }
        assert!(Target::parse(&format!("https://h/{}", "a".repeat(2040))).is_err());
    }

    #[test]
    fn target_is_normalised_and_split() {
        let t = Target::parse("HTTPS://API.Example.com:8443/api/").unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(t.authority, "api.example.com:8443");
        assert_eq!(t.host(), "api.example.com");
        assert_eq!(t.base_path, "/api");
        assert_eq!(t.to_string(), "https://api.example.com:8443/api");
        assert_eq!(Target::parse("http://[::1]:80").unwrap().host(), "::1");
        assert_eq!(t.query, None);
    }

    #[test]
    fn target_query_is_kept_and_never_logged() {
        for (raw, base, query, shown) in [
            (
                "http://host/q?key=K",
                "/q",
                Some("key=K"),
                "http://host/q?key=K",
            ),
            (
                "http://host/q/?key=K",
                "/q",
                Some("key=K"),
                "http://host/q?key=K",
            ),
            ("http://host?key=K", "", Some("key=K"), "http://host?key=K"),
            (
                "http://host/?a=1&b=%20/?",
                "",
                Some("a=1&b=%20/?"),
                "http://host?a=1&b=%20/?",
            ),
            ("http://host/q?", "/q", None, "http://host/q"),
            // The query ends the host: `?` cannot move it.
            (
                "http://host?@evil.test/x",
                "",
                Some("@evil.test/x"),
                "http://host?@evil.test/x",
            ),
        ] {
            let t = Target::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(t.authority, "host", "{raw}");
            assert_eq!(t.base_path, base, "{raw}");
            assert_eq!(t.query.as_deref(), query, "{raw}");
            assert_eq!(t.to_string(), shown, "{raw}");
        }
        assert_eq!(loggable_target("http://host/q?key=K"), "http://host/q?…");
        assert_eq!(loggable_target("http://host/q"), "http://host/q");
    }

    #[test]
    fn mapping_round_trips_through_json() {
        let m = validate_mapping("/openai", "https://api.openai.com/").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"prefix":"/openai","target":"https://api.openai.com"}"#
        );
        assert_eq!(serde_json::from_str::<Mapping>(&json).unwrap(), m);
    }

    // Fuzzing. Each property is a `check_*` function run twice: by proptest
    // on generated inputs, and by a `#[test]` on the kept corpus in
    // `shared/tests/corpus/` (one input per line; a line starting with `# `
    // is a comment). Cases: `PROPTEST_CASES` (default 256), so no config
    // here sets `cases`, which would override it. A failure is saved by
    // proptest's default `SourceParallel` persistence to
    // `shared/proptest-regressions/mapping.txt` and replayed first on every
    // run: commit that file, and add the minimal input to the corpus.

    fn corpus(text: &str) -> impl Iterator<Item = &str> {
        text.lines()
            .filter(|line| !line.is_empty() && !line.starts_with("# "))
    }

    /// An accepted target connects to exactly the host written between
    /// `://` and the path or query (user info, `\`, `#` or `?` cannot move
    /// it), keeps the query after the first `?` (a bare `?` dropped),
    /// normalises to a fixed point, and round-trips as a mapping.
    fn check_target(raw: &str) -> Result<(), TestCaseError> {
        let mapping = validate_mapping("/p", raw);
        let target = match Target::parse(raw) {
            Ok(target) => target,
            Err(error) => {
                prop_assert!(error.to_string().starts_with("target: "), "{}", error);
                prop_assert_eq!(mapping, Err(error));
                return Ok(());
            }
        };
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(TestCaseError::fail("accepted without ://"));
        };
        prop_assert_eq!(scheme.to_ascii_lowercase(), target.scheme.as_str());
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        prop_assert_eq!(authority.to_ascii_lowercase(), target.authority.as_str());
        // `host[:port]`: a name or an IPv6 address in brackets, and a port
        // the socket layer takes.
        let host = target.host();
        prop_assert!(!host.is_empty());
        let bracketed = if host.contains(':') {
            prop_assert!(host.parse::<std::net::Ipv6Addr>().is_ok(), "host {}", host);
            format!("[{host}]")
        } else {
            prop_assert!(host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
            host.to_owned()
        };
        let port = target.authority.strip_prefix(&bracketed);
        prop_assert!(
            port.is_some_and(|p| p.is_empty()
                || p.strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_some_and(|p| p > 0)),
            "authority {}",
            target.authority
        );
        prop_assert_eq!(path.trim_end_matches('/'), target.base_path.as_str());
        prop_assert!(path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'));
        prop_assert_eq!(target.query.as_deref(), query.filter(|q| !q.is_empty()));
        prop_assert!(query
            .unwrap_or("")
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'#' && b != b'\\'));

        let mapping = mapping.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&mapping.target, &target.to_string());
        prop_assert_eq!(Target::parse(&mapping.target), Ok(target));
        prop_assert_eq!(
            validate_mapping(&mapping.prefix, &mapping.target),
            Ok(mapping.clone())
        );
        let json = serde_json::to_string(&mapping).unwrap();
        prop_assert_eq!(serde_json::from_str::<Mapping>(&json).unwrap(), mapping);
        Ok(())
    }

    /// SPEC §5's prefix rule, read as "one spelling on the wire, nothing a
    /// URL normaliser could change", computed here with plain string
    /// operations: the raw prefix with its non-ASCII bytes written `%XX`
    /// (upper-case hex) and one trailing `/` dropped is `/`, or at most 256
    /// bytes of `/`-separated segments that are not empty, `.` or `..`,
    /// made of unreserved characters, sub-delims, `:`, `@` and `%XX` of a
    /// byte 0x80 or more (any other `%` would be a second spelling), whose
    /// decoded bytes are UTF-8. Accepted exactly then, as that spelling,
    /// which is its own.
    fn check_prefix(raw: &str) -> Result<(), TestCaseError> {
        let encoded: String = raw
            .bytes()
            .map(|b| match b {
                0x80.. => format!("%{b:02X}"),
                _ => char::from(b).to_string(),
            })
            .collect();
        let one = match encoded.strip_suffix('/') {
            Some(shorter) if shorter.starts_with('/') => shorter.to_owned(),
            _ => encoded,
        };
        let plain_byte = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        let plain = |s: &str| {
            if matches!(s, "" | "." | "..") {
                return false;
            }
            let mut pieces = s.split('%');
            let first = pieces.next().unwrap_or("");
            first.bytes().all(plain_byte)
                && pieces.all(|p| {
                    p.len() >= 2
                        && matches!(p.as_bytes()[0], b'8'..=b'9' | b'A'..=b'F')
                        && matches!(p.as_bytes()[1], b'0'..=b'9' | b'A'..=b'F')
                        && p[2..].bytes().all(plain_byte)
                })
        };
        let utf8 = || {
            let mut bytes = Vec::new();
            let mut pieces = one.split('%');
            bytes.extend(pieces.next().unwrap_or("").bytes());
            for p in pieces {
                bytes.push(u8::from_str_radix(&p[..2], 16).unwrap());
                bytes.extend(p[2..].bytes());
            }
            String::from_utf8(bytes).is_ok()
        };
        let expected = raw == "/"
            || (one.len() <= MAX_PREFIX_LEN
                && one
                    .strip_prefix('/')
                    .is_some_and(|r| r.split('/').all(plain))
                && utf8());
        match canonical_prefix(raw) {
            Ok(canonical) => {
                prop_assert!(expected, "accepted");
                prop_assert_eq!(&*canonical, one.as_str());
                let again = canonical_prefix(&one);
                prop_assert_eq!(again.as_deref(), Ok(one.as_str()));
                prop_assert_eq!(validate_prefix(&one), Ok(()));
                prop_assert_eq!(validate_prefix(raw).is_ok(), raw == one);
                let mapping = validate_mapping(raw, "http://h");
                prop_assert_eq!(mapping.map(|m| m.prefix), Ok(one));
            }
            Err(error) => {
                prop_assert!(!expected, "refused: {}", error);
                prop_assert!(error.to_string().starts_with("prefix: "), "{}", error);
                prop_assert_eq!(validate_prefix(raw), Err(error.clone()));
                prop_assert_eq!(validate_mapping(raw, "http://h"), Err(error));
            }
        }
        Ok(())
    }

    #[test]
    fn target_corpus() {
        for line in corpus(include_str!("../tests/corpus/targets.txt")) {
            check_target(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
    }

    #[test]
    fn prefix_corpus() {
        for line in corpus(include_str!("../tests/corpus/prefixes.txt")) {
            check_prefix(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
    }

    /// Pieces of URLs that have confused URL parsers, each list split into
    /// what validation accepts and what it refuses: odd schemes and
    /// separators, user info, IPv6 and port edge cases, dot segments,
    /// encoded and back slashes, query and fragment marks, whitespace,
    /// control characters, non-ASCII.
    const SCHEMES: (&[&str], &[&str]) = (
        &["http://", "https://", "HTTP://", "hTtPs://"],
        &[
            "ftp://",
            "ws://",
            "javascript:",
            "http:/",
            "http:",
            "//",
            "",
            "http:\\\\",
            " http://",
        ],
    );
    const USERINFO: (&[&str], &[&str]) = (&[""], &["user@", "u:p@", "@", ":@", "good.test@"]);
    const HOSTS: (&[&str], &[&str]) = (
        &[
            "api.example.com",
            "API.Example.COM",
            "127.0.0.1",
            "localhost",
            "a_b",
            "h?",
            "xn--bcher-kva.test",
            "[::1]",
            "[FE80::1:2]",
            "[::ffff:1.2.3.4]",
            "-",
            ".",
        ],
        &[
            "[::1",
            "::1",
            "[::1]x",
            "[::1]80",
            "[1.2]",
            "[:]",
            "[v1.x]",
            "[fe80::1%25eth0]",
            "[]",
            "",
            "ex ample",
            "bücher.test",
            "a\\b",
            "a%2eb",
            "h#",
            "h\t",
        ],
    );
    const PORTS: (&[&str], &[&str]) = (
        &["", ":1", ":443", ":65535", ":080"],
        &[
            ":0",
            ":65536",
            ":",
            ":99999999999999999999",
            ":+80",
            ":8a",
            "::80",
        ],
    );
    const PATH_PIECES: (&[&str], &[&str]) = (
        &[
            "/",
            "//",
            ".",
            "..",
            "...",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "%252e",
            "@",
            ";",
            ":",
            "~",
            "!$&'()*+,=",
            "a",
            "V1",
            "A-b_c",
            "%",
            "%zz",
            "?",
            "?key=K",
            "&a=1",
        ],
        &["\\", "#", "é", "💥", " ", "\t", "\u{0}", "\u{7f}"],
    );

    /// Mostly accepted pieces, so that whole inputs are accepted often
    /// enough for the round-trip checks to run.
    fn piece(
        lists: (&'static [&'static str], &'static [&'static str]),
    ) -> impl Strategy<Value = &'static str> {
        judged_piece(lists).prop_map(|(piece, _)| piece)
    }

    /// A piece, and whether it came from the accepted list.
    fn judged_piece(
        (accepted, refused): (&'static [&'static str], &'static [&'static str]),
    ) -> impl Strategy<Value = (&'static str, bool)> {
        use proptest::sample::select;
        prop_oneof![
            6 => select(accepted).prop_map(|p| (p, true)),
            1 => select(refused).prop_map(|p| (p, false)),
        ]
    }

    /// A target, and whether validation must accept it: true when it is
    /// built of accepted pieces only, its path (if any) starting with `/`.
    fn hostile_target() -> impl Strategy<Value = (String, bool)> {
        let path = proptest::collection::vec(judged_piece(PATH_PIECES), 0..6);
        let built = (
            judged_piece(SCHEMES),
            judged_piece(USERINFO),
            judged_piece(HOSTS),
            judged_piece(PORTS),
            path,
        )
            .prop_map(|((s, s_ok), (u, u_ok), (h, h_ok), (p, p_ok), path)| {
                let path_ok = path.iter().all(|(_, ok)| *ok);
                let path: String = path.into_iter().map(|(piece, _)| piece).collect();
                // Without a `/` after the authority, the path's pieces
                // join the host or port; and a refused piece can be made
                // good by its neighbour (no host, then a path `a`).
                let valid = s_ok
                    && u_ok
                    && h_ok
                    && p_ok
                    && path_ok
                    && (path.is_empty() || path.starts_with('/') || path.starts_with('?'));
                (format!("{s}{u}{h}{p}{path}"), valid)
            });
        prop_oneof![6 => built, 1 => any::<String>().prop_map(|s| (s, false))]
    }

    const SEGMENTS: (&[&str], &[&str]) = (
        &[
            "...",
            ".a",
            "a.",
            "~",
            "@",
            ":",
            ";x=1",
            "!$&'()*+,=",
            "é",
            "café",
            "%C3%A9",
            "💥",
            "%F0%9F%92%A5",
        ],
        &[
            "", ".", "..", "%2e", "%2F", "%", "\\", "?", "#", " ", "\t", "%c3%a9", "%C3", "%A9",
            "%41", "%E9", "%C3%", "%G0",
        ],
    );

    fn hostile_prefix() -> impl Strategy<Value = String> {
        use proptest::collection::vec;
        let segment = prop_oneof![
            2 => "[a-zA-Z0-9_-]{1,3}",
            1 => piece(SEGMENTS).prop_map(String::from),
        ];
        prop_oneof![
            6 => (vec(segment, 1..5), "/?").prop_map(|(s, end)| format!("/{}{end}", s.join("/"))),
            1 => vec(piece(PATH_PIECES), 0..8).prop_map(|p| p.concat()),
            // Around the 256-byte limit.
            1 => "(/[a-z]{1,3}){60,90}",
            1 => any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn targets_never_panic_and_accepted_ones_round_trip(
            (raw, valid) in hostile_target()
        ) {
            check_target(&raw)?;
            // Two-sided: refused targets are checked above, and one built
            // of accepted pieces only must be accepted.
            if valid {
                prop_assert!(Target::parse(&raw).is_ok(), "refused: {:?}", raw);
            }
        }

        #[test]
        fn prefixes_are_accepted_exactly_by_the_spec_rule(raw in hostile_prefix()) {
            check_prefix(&raw)?;
        }
    }
}
