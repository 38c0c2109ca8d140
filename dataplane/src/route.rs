//! One mapping as the request path uses it: the prefix, the target as
//! configured, and what is derived from them on first use.
//!
//! A node may hold a hundred thousand mappings of which a few carry
//! traffic, so a route keeps only its two strings and the places of the
//! target's parts inside them. The upstream's parsed form (a pool key and a
//! `Host` value) and the prefix's stats are built by the first request,
//! and kept for the route's life.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use apiproxy_shared::{canonical_prefix, MappingError, TargetParts};
use http::uri::{InvalidUri, PathAndQuery};
use http::{HeaderValue, Uri};

use crate::metrics::Metrics;
use crate::pool::HostKey;
use crate::stats::PrefixStats;

/// One routable mapping.
#[derive(Debug)]
pub struct Route {
    /// The prefix in its one spelling ([`canonical_prefix`]): what the raw
    /// request path is matched against, and the name stats know it by.
    pub(crate) prefix: Arc<str>,
    /// The prefix as configured when that is another spelling (`/trail/`,
    /// `/café`, entries from the Go version); `None` for nearly all.
    respelled: Option<Box<str>>,
    /// The target exactly as configured: to recognise an unchanged entry,
    /// for the content hash, and the one copy of the target's parts.
    raw_target: Box<str>,
    /// The target's base path and own query, as places in `raw_target`.
    base_path: Range<u16>,
    query: Option<Range<u16>>,
    in_use: OnceLock<Box<InUse>>,
}

/// What the first request to a route builds.
#[derive(Debug)]
pub(crate) struct InUse {
    pub(crate) upstream: Upstream,
    /// Where this prefix's requests are counted.
    pub(crate) stats: Arc<PrefixStats>,
}

/// Where a route's requests go, parsed once.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// Scheme and authority, hashed: the pools know their hosts by it.
    pub(crate) key: HostKey,
    /// `Host` header value for the upstream request.
    pub(crate) host: HeaderValue,
}

impl Upstream {
    fn of(target: &TargetParts<'_>) -> Result<Upstream, MappingError> {
        let invalid = |_| MappingError::Target("not a valid URL");
        let authority = target.authority.to_ascii_lowercase();
        let host = HeaderValue::from_str(&authority)
            .map_err(|_| MappingError::Target("host is not a valid header value"))?;
        Ok(Upstream {
            key: HostKey::new(
                target.scheme.as_str().parse().map_err(invalid)?,
                authority.parse().map_err(invalid)?,
            ),
            host,
        })
    }
}

impl Route {
    /// Validates one entry as configured (SPEC §5) and prepares it.
    pub(crate) fn new(raw_prefix: &str, raw_target: &str) -> Result<Route, MappingError> {
        let prefix = canonical_prefix(raw_prefix)?;
        let target = TargetParts::parse(raw_target)?;
        // Parsed here only to refuse what could not be sent; kept from the
        // first request on.
        Upstream::of(&target)?;
        let place = |part: &str| {
            if part.is_empty() {
                // Possibly not a slice of `raw_target` at all (`""`).
                return 0..0;
            }
            let start = part.as_ptr() as usize - raw_target.as_ptr() as usize;
            // Targets are at most MAX_TARGET_LEN (2,048) bytes.
            start as u16..(start + part.len()) as u16
        };
        Ok(Route {
            respelled: (prefix != raw_prefix).then(|| raw_prefix.into()),
            prefix: Arc::from(prefix),
            base_path: place(target.base_path),
            query: target.query.map(place),
            raw_target: raw_target.into(),
            in_use: OnceLock::new(),
        })
    }

    /// The prefix as configured.
    pub(crate) fn raw_prefix(&self) -> &str {
        self.respelled.as_deref().unwrap_or(&self.prefix)
    }

    /// The target as configured.
    pub(crate) fn raw_target(&self) -> &str {
        &self.raw_target
    }

    /// Whether the prefix is configured in another spelling than its one.
    pub(crate) fn is_respelled(&self) -> bool {
        self.respelled.is_some()
    }

    /// The parsed upstream and the stats, built by the first call.
    pub(crate) fn in_use(&self, metrics: &Metrics) -> &InUse {
        self.in_use.get_or_init(|| {
            let upstream = TargetParts::parse(&self.raw_target)
                .and_then(|target| Upstream::of(&target))
                // `Route::new` parsed the same bytes: this cannot fail.
                .expect("a route's target was validated when it was built");
            Box::new(InUse {
                upstream,
                stats: metrics.prefix(&self.prefix),
            })
        })
    }

    fn part(&self, place: &Range<u16>) -> &str {
        &self.raw_target[place.start as usize..place.end as usize]
    }

    /// The upstream request target, in origin form: the target's base path,
    /// then the rest of the path, then `?` and the raw query. A target with
    /// its own query sends it first, then `&` and the client's query if it
    /// is not empty (`/q/rest?key=K&a=1`). Nothing is decoded or
    /// re-encoded; an empty result path is sent as `/`. The host is
    /// [`Route::upstream`], never rebuilt per request.
    pub(crate) fn upstream_target(
        &self,
        rest: &str,
        query: Option<&str>,
    ) -> Result<Uri, InvalidUri> {
        let base = self.part(&self.base_path);
        let path_len = (base.len() + rest.len()).max(1);
        let own = self.query.as_ref().map(|q| self.part(q));
        let query_len = match (own, query) {
            (None, None) => 0,
            (None, Some(q)) => q.len() + 1,
            (Some(own), None | Some("")) => own.len() + 1,
            (Some(own), Some(q)) => own.len() + q.len() + 2,
        };
        // Exactly the length: a `Vec` whose capacity is its length becomes
        // the URI's `Bytes` as it is; any other costs one more allocation.
        let mut target = String::with_capacity(path_len + query_len);
        target.push_str(base);
        target.push_str(rest);
        if target.is_empty() {
            target.push('/');
        }
        if let Some(own) = own {
            target.push('?');
            target.push_str(own);
            if let Some(q) = query.filter(|q| !q.is_empty()) {
                target.push('&');
                target.push_str(q);
            }
        } else if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        Ok(Uri::from(PathAndQuery::try_from(target)?))
    }
}
