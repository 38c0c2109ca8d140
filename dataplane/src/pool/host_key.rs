//! The key the pool finds an upstream host by.

use std::hash::{Hash, Hasher};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

/// An upstream host as the pool knows it: scheme and authority. A route
/// makes its key once, when the snapshot is built, and hands it to every
/// send, so a request neither builds nor hashes one: the key is hashed
/// when made, and compared as the bytes it was spelled with (`Authority`'s
/// own `Hash` lowercases byte by byte, a cost paid on every lookup). A mapping spells its host one way; two spellings would only
/// mean two pools.
#[derive(Clone, Debug)]
pub(crate) struct HostKey {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) hash: u64,
}

impl HostKey {
    pub(crate) fn new(scheme: Scheme, authority: Authority) -> HostKey {
        let mut hasher = fnv::FnvHasher::default();
        scheme.as_str().hash(&mut hasher);
        authority.as_str().hash(&mut hasher);
        HostKey {
            scheme,
            authority,
            hash: hasher.finish(),
        }
    }
}

impl PartialEq for HostKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.authority.as_str(), other.authority.as_str());
        // The pool's key is a clone of the route's, sharing its bytes: the
        // same pointer spares the comparison.
        let same_bytes = (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b;
        self.hash == other.hash && same_bytes && self.scheme == other.scheme
    }
}

impl Eq for HostKey {}

impl Hash for HostKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `scheme://authority`, as in a URL.
impl std::fmt::Display for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl HostKey {
    /// `uri` (either form) in absolute form on this host.
    pub(super) fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }
}
