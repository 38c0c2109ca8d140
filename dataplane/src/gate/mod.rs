//! The gate in front of the keyed mappings: the proxy keys and per-mapping
//! policies of the snapshot, and the decision for one request. A mapping
//! without a policy is open, as before; a `key` policy lets through only
//! a request whose proxy key is known, enabled, unexpired and allowed on
//! the prefix; an upstream credential replaces the client's.
//!
//! The tables are persistent maps (hash array mapped tries): one key or
//! policy change makes the next [`Gate`] in O(log n), sharing the rest
//! with the one requests are still reading. Nothing here talks to Redis;
//! [`crate::redis_source`] hands in the records.

pub(crate) mod client_key;
mod policy;
pub(crate) mod usage;

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use apiproxy_shared::access::{
    format_key_id, hex, key_allows, key_hash, key_id_bits, parse_hash_hex, parse_key_id, Access,
    KeyRecord, SecretsKey, StoredPolicy,
};
use apiproxy_shared::canonical_prefix;
use apiproxy_shared::content_hash::entry_digest;
use fnv::FnvBuildHasher;
use http::{HeaderMap, Method};
use rpds::HashTrieMapSync;
use tracing::{error, warn};

pub use self::policy::Pass;
use self::policy::Policy;
use self::usage::{KeyUsage, UsageRegistry};
use crate::error::ProxyError;

/// A key's id as a number: the first 8 bytes of its SHA-256
/// ([`apiproxy_shared::access::key_id_of`]), so one index serves the
/// request path (which has the hash) and a change (which names the id).
/// Digests of random secrets are uniform already: no hashing again.
type IdBits = u64;

#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Identity = BuildHasherDefault<IdentityHasher>;

/// Bytes of the SHA-256 checked after the id's 8: 192 bits in all must
/// match, far beyond any search, with 8 bytes a key less to keep.
const TAIL: usize = 16;

fn split(hash: &[u8; 32]) -> (IdBits, [u8; TAIL]) {
    let mut tail = [0u8; TAIL];
    tail.copy_from_slice(&hash[8..8 + TAIL]);
    (key_id_bits(hash), tail)
}

/// A proxy key as the data plane keeps it: what the check needs and no
/// more (the name lives in the control plane).
#[derive(Debug)]
pub struct ProxyKey {
    id: IdBits,
    /// The SHA-256's bytes after the id's.
    tail: [u8; TAIL],
    /// [`record_digest`] of the record it was made from.
    raw: u64,
    /// Unix seconds; 0: never.
    expires_at: u64,
    prefixes: Option<Arc<[Box<str>]>>,
    /// Made on first use. A new version of the record takes the counters
    /// of the one it replaces; a request racing that on the old version
    /// may make a second set, which is pushed beside the first and summed
    /// by the control plane: nothing is lost.
    usage: OnceLock<Arc<KeyUsage>>,
    enabled: bool,
}

impl ProxyKey {
    pub fn id(&self) -> String {
        format_key_id(self.id)
    }

    /// What a request keeps of its key: the id, and where its use is
    /// counted when `usage` (the node's registry) is given.
    fn admitted(&self, usage: Option<&Arc<UsageRegistry>>) -> Admitted {
        Admitted {
            id: self.id,
            usage: usage.map(|registry| {
                self.usage
                    .get_or_init(|| Arc::new(KeyUsage::new(self.id().into(), registry.clone())))
                    .clone()
            }),
        }
    }
}

/// The proxy key a request came with.
#[derive(Debug)]
pub struct Admitted {
    /// The id's 64 bits.
    pub(crate) id: u64,
    /// Its counters; `None` with stats off.
    pub(crate) usage: Option<Arc<KeyUsage>>,
}

/// Why the gate refused, and whose key it was if it knew it.
#[derive(Debug)]
pub struct Denied {
    pub(crate) error: ProxyError,
    pub(crate) key: Option<Admitted>,
}

/// The proxy keys and policies one snapshot holds.
#[derive(Debug, Clone)]
pub struct Gate {
    keys: HashTrieMapSync<IdBits, ProxyKey, Identity>,
    policies: HashTrieMapSync<Arc<str>, Arc<Policy>, FnvBuildHasher>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            keys: HashTrieMapSync::new_with_hasher_and_ptr_kind(Identity::default()),
            policies: HashTrieMapSync::new_with_hasher_and_ptr_kind(FnvBuildHasher::default()),
        }
    }
}

impl Gate {
    /// Whether no mapping has a policy: then requests skip the gate.
    pub(crate) fn is_open(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn keys(&self) -> usize {
        self.keys.size()
    }

    pub(crate) fn policies(&self) -> usize {
        self.policies.size()
    }

    /// Whether the mapping `prefix` has a policy.
    pub(crate) fn guards(&self, prefix: &str) -> bool {
        self.policies.contains_key(prefix)
    }

    /// The decision for a request on the mapping `prefix`: `Ok(None)` for
    /// a mapping without a policy. `usage`: the node's key usage registry,
    /// when it records stats.
    pub fn admit(
        &self,
        prefix: &str,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        usage: Option<&Arc<UsageRegistry>>,
    ) -> Result<Option<Pass>, Denied> {
        if *method == Method::OPTIONS && is_preflight(headers) {
            return Ok(self.preflight(prefix));
        }
        self.admit_at(prefix, headers, query, usage, unix_seconds)
    }

    /// A browser's CORS preflight never carries credentials: on a keyed
    /// mapping it goes to the upstream without a key and without the
    /// upstream credential, and the upstream answers what it allows.
    fn preflight(&self, prefix: &str) -> Option<Pass> {
        let policy = self.policies.get(prefix)?;
        // A key in a header of a preflight (none should be) is found and
        // taken out all the same.
        Some(Pass {
            key: None,
            keyed: policy.access == Access::Key,
            key_headers: 0b111,
            credential: None,
        })
    }

    /// [`Gate::admit`] with its clock, read only for a key that expires.
    fn admit_at(
        &self,
        prefix: &str,
        headers: &HeaderMap,
        query: Option<&str>,
        usage: Option<&Arc<UsageRegistry>>,
        now: fn() -> u64,
    ) -> Result<Option<Pass>, Denied> {
        let Some(policy) = self.policies.get(prefix) else {
            return Ok(None);
        };
        let denied = |error, key| Err(Denied { error, key });
        let (key, key_headers) = match policy.access {
            Access::Open => (None, 0),
            Access::Key => {
                let Some(found) = client_key::find(headers, query) else {
                    return denied(
                        ProxyError::Unauthorized("this endpoint needs a proxy key (Authorization: Bearer, x-api-key, x-goog-api-key or ?key=)"),
                        None,
                    );
                };
                let (id, tail) = split(&key_hash(&found.key));
                let Some(key) = self.keys.get(&id).filter(|k| k.tail == tail) else {
                    return denied(ProxyError::Unauthorized("unknown proxy key"), None);
                };
                let expires_at = (key.expires_at != 0).then_some(key.expires_at);
                let now = if expires_at.is_some() { now() } else { 0 };
                let prefixes = key.prefixes.as_deref();
                if let Err(why) = key_allows(key.enabled, expires_at, prefixes, prefix, now) {
                    let key = key.admitted(usage);
                    return denied(ProxyError::Forbidden(why.message()), Some(key));
                }
                (Some(key.admitted(usage)), found.in_headers)
            }
        };
        let credential = match &policy.credential {
            None => None,
            Some(Ok(c)) => Some(c.clone()),
            Some(Err(())) => return denied(ProxyError::CredentialUnavailable, key),
        };
        Ok(Some(Pass {
            keyed: key.is_some(),
            key,
            key_headers,
            credential,
        }))
    }

    /// The gate after the key `id` changed (`record` `None`: deleted).
    /// A record that fails validation removes the key: it fails closed.
    pub fn with_key(&self, id: &str, record: Option<&str>) -> Gate {
        let mut next = self.clone();
        let Some(bits) = parse_key_id(id) else {
            warn!(
                key_id = id,
                "skipping a key record under a field that is not a key id"
            );
            return next;
        };
        let usage = next.keys.get(&bits).and_then(|k| k.usage.get().cloned());
        next.keys.remove_mut(&bits);
        if let Some(key) = record.and_then(|r| parse_key(id, r)) {
            if let Some(usage) = usage {
                let _ = key.usage.set(usage);
            }
            next.keys.insert_mut(bits, key);
        }
        next
    }

    /// The gate after the policy of `prefix` changed (`stored` `None`:
    /// removed, the mapping is open again).
    pub fn with_policy(
        &self,
        prefix: &str,
        stored: Option<&str>,
        secrets: Option<&SecretsKey>,
    ) -> Gate {
        let mut next = self.clone();
        let Ok(canonical) = canonical_prefix(prefix) else {
            warn!(prefix, "skipping a policy whose field is not a prefix");
            return next;
        };
        let canonical: Arc<str> = canonical.into();
        next.policies.remove_mut(&canonical);
        if let Some(stored) = stored {
            let policy = match serde_json::from_str::<StoredPolicy>(stored) {
                Ok(policy) => Policy::new(&canonical, policy, secrets),
                Err(e) => {
                    error!(prefix, %e, "unreadable policy: this mapping's requests get 503 not_ready");
                    Policy::unreadable()
                }
            };
            next.policies.insert_mut(canonical, Arc::new(policy));
        }
        next
    }

    /// A gate from every record, sharing the usage of keys this one has.
    pub fn build<'p>(
        &self,
        keys: &[(String, String)],
        policies: impl IntoIterator<Item = (&'p String, &'p String)>,
        secrets: Option<&SecretsKey>,
    ) -> Gate {
        let mut next = Gate::default();
        for (id, record) in keys {
            if let Some(key) = parse_key(id, record) {
                if let Some(usage) = self.keys.get(&key.id).and_then(|k| k.usage.get()) {
                    let _ = key.usage.set(usage.clone());
                }
                next.keys.insert_mut(key.id, key);
            }
        }
        for (prefix, stored) in policies {
            next = next.with_policy(prefix, Some(stored), secrets);
        }
        next
    }

    /// The keys as records again, for the snapshot cache: what the gate
    /// checks, under the id as name (the name is the control plane's).
    pub(crate) fn key_records(&self) -> Vec<(String, String)> {
        self.keys
            .values()
            .map(|k| {
                // The bytes not kept are not checked either: zeros.
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&k.id.to_be_bytes());
                hash[8..8 + TAIL].copy_from_slice(&k.tail);
                let record = KeyRecord {
                    id: k.id(),
                    name: k.id(),
                    prefixes: k
                        .prefixes
                        .as_ref()
                        .map(|p| p.iter().map(|s| s.to_string()).collect()),
                    enabled: k.enabled,
                    expires_at: (k.expires_at != 0).then_some(k.expires_at),
                    created_at: 0,
                    sha256: hex(&hash),
                };
                (
                    k.id(),
                    serde_json::to_string(&record).expect("serialisable"),
                )
            })
            .collect()
    }
}

/// `OPTIONS` with `Origin` and `Access-Control-Request-Method` (the method
/// is checked by the caller).
fn is_preflight(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stored record as the gate keeps it; `None` (said) when it is invalid.
fn parse_key(id: &str, record: &str) -> Option<ProxyKey> {
    let parsed = serde_json::from_str::<KeyRecord>(record)
        .map_err(|e| e.to_string())
        .and_then(|r| r.validate().map(|()| r).map_err(str::to_owned))
        .and_then(|r| {
            if r.id == id {
                Ok(r)
            } else {
                Err("the record's id is not its field's".to_owned())
            }
        });
    let r = match parsed {
        Ok(r) => r,
        Err(error) => {
            warn!(key_id = id, %error, "skipping an invalid key record");
            return None;
        }
    };
    let (id_bits, tail) = split(&parse_hash_hex(&r.sha256)?);
    Some(ProxyKey {
        id: id_bits,
        tail,
        raw: record_digest(id, record),
        // 0 is "never": an expiry at 0 (long past) is kept as 1.
        expires_at: r.expires_at.map_or(0, |t| t.max(1)),
        prefixes: r
            .prefixes
            .map(|p| p.into_iter().map(String::into_boxed_str).collect()),
        usage: OnceLock::new(),
        enabled: r.enabled,
    })
}

/// A digest of one key record as Redis holds it.
fn record_digest(id: &str, record: &str) -> u64 {
    entry_digest(id.as_bytes(), record.as_bytes())
}

/// All key records as one digest, independent of their order, that one
/// change updates without reading the others: a full read compares it
/// with what is applied instead of keeping every record twice. A full
/// read counts every record; a change can only take out what the gate
/// kept, so a record it skipped as invalid and then saw changed leaves the
/// digest off, and the next full read rebuilds: never wrong, at most one
/// rebuild too many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeysDigest {
    sum: u64,
    count: usize,
}

impl KeysDigest {
    pub(crate) fn of(keys: &[(String, String)]) -> KeysDigest {
        let mut d = KeysDigest::default();
        for (id, record) in keys {
            d.add(record_digest(id, record));
        }
        d
    }

    fn add(&mut self, digest: u64) {
        self.sum = self.sum.wrapping_add(digest);
        self.count += 1;
    }

    /// The digest after the key `id` (applied in `gate`) became `record`.
    pub(crate) fn replace(&mut self, gate: &Gate, id: &str, record: Option<&str>) {
        if let Some(old) = parse_key_id(id).and_then(|bits| gate.keys.get(&bits)) {
            self.sum = self.sum.wrapping_sub(old.raw);
            self.count -= 1;
        }
        if let Some(record) = record {
            self.add(record_digest(id, record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiproxy_shared::access::{key_hash_hex, key_id_of, CredentialPlace, StoredCredential};
    use http::header::{HeaderName, HeaderValue, AUTHORIZATION};

    const GOOD: &str = "apx-good";

    fn id_of(secret: &str) -> String {
        key_id_of(&key_hash(secret.as_bytes()))
    }

    fn record(
        secret: &str,
        enabled: bool,
        prefixes: Option<&[&str]>,
        expires_at: Option<u64>,
    ) -> String {
        serde_json::to_string(&KeyRecord {
            id: id_of(secret),
            name: "ci".into(),
            prefixes: prefixes.map(|p| p.iter().map(|s| s.to_string()).collect()),
            enabled,
            expires_at,
            created_at: 1,
            sha256: key_hash_hex(secret.as_bytes()),
        })
        .unwrap()
    }

    fn policy(secrets: &SecretsKey, prefix: &str, place: CredentialPlace, secret: &str) -> String {
        serde_json::to_string(&StoredPolicy {
            access: Access::Key,
            upstream_credential: Some(StoredCredential {
                place,
                sealed: secrets.seal(prefix, secret),
                secret_hint: "…".into(),
            }),
        })
        .unwrap()
    }

    fn bearer(secrets: &SecretsKey, prefix: &str) -> String {
        let place = CredentialPlace {
            header: Some("Authorization".into()),
            template: Some("Bearer {secret}".into()),
            query: None,
        };
        policy(secrets, prefix, place, "sk-real")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_static(n),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn status(r: &Result<Option<Pass>, Denied>) -> Option<u16> {
        r.as_ref().err().map(|d| d.error.status().as_u16())
    }

    #[test]
    fn keyed_mappings_take_only_known_allowed_keys() {
        let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let gate = Gate::default()
            .with_key(
                &id_of(GOOD),
                Some(&record(GOOD, true, Some(&["/openai"]), Some(100))),
            )
            .with_policy(
                "/openai",
                Some(&bearer(&secrets, "/openai")),
                Some(&secrets),
            )
            .with_policy("/other", Some(&bearer(&secrets, "/other")), Some(&secrets));
        assert!(!gate.is_open());
        let now = || 50;
        let admit = |h: &HeaderMap, prefix: &str| gate.admit_at(prefix, h, None, None, now);
        // No policy: nothing to do.
        assert!(matches!(admit(&HeaderMap::new(), "/open"), Ok(None)));
        assert_eq!(status(&admit(&HeaderMap::new(), "/openai")), Some(401));
        let unknown = headers(&[("authorization", "Bearer apx-bad")]);
        assert_eq!(status(&admit(&unknown, "/openai")), Some(401));
        let good = headers(&[("authorization", "Bearer apx-good"), ("x-api-key", "own")]);
        let pass = admit(&good, "/openai").unwrap().unwrap();
        assert_eq!(format_key_id(pass.key.as_ref().unwrap().id), id_of(GOOD));
        let mut rewritten = good.clone();
        pass.rewrite_headers(&mut rewritten);
        assert_eq!(rewritten[AUTHORIZATION], "Bearer sk-real");
        assert!(rewritten[AUTHORIZATION].is_sensitive());
        assert_eq!(rewritten["x-api-key"], "own");
        // Known, but not on this prefix: 403 with the key named.
        let denied = admit(&good, "/other").unwrap_err();
        assert_eq!(denied.error.status().as_u16(), 403);
        assert_eq!(format_key_id(denied.key.unwrap().id), id_of(GOOD));
        // Expired.
        assert_eq!(
            status(&gate.admit_at("/openai", &good, None, None, || 100)),
            Some(403)
        );
        // Disabled: the change replaces the key in place.
        let off = gate.with_key(&id_of(GOOD), Some(&record(GOOD, false, None, None)));
        assert_eq!(
            status(&off.admit_at("/openai", &good, None, None, now)),
            Some(403)
        );
        assert_eq!(off.keys(), 1);
        // Deleted: unknown.
        let gone = gate.with_key(&id_of(GOOD), None);
        assert_eq!(gone.keys(), 0);
        assert_eq!(
            status(&gone.admit_at("/openai", &good, None, None, now)),
            Some(401)
        );
        // The gate requests were reading is untouched.
        assert!(admit(&good, "/openai").is_ok());
    }

    #[test]
    fn a_cors_preflight_passes_without_key_or_credential() {
        let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let gate = Gate::default().with_policy(
            "/openai",
            Some(&bearer(&secrets, "/openai")),
            Some(&secrets),
        );
        let preflight = headers(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ]);
        let pass = gate
            .admit("/openai", &Method::OPTIONS, &preflight, None, None)
            .unwrap()
            .unwrap();
        let mut rewritten = preflight.clone();
        pass.rewrite_headers(&mut rewritten);
        assert!(rewritten.get(AUTHORIZATION).is_none());
        // Not a preflight: an OPTIONS without them, or a POST with them.
        for (method, h) in [
            (Method::OPTIONS, HeaderMap::new()),
            (Method::POST, preflight.clone()),
        ] {
            assert_eq!(
                status(&gate.admit("/openai", &method, &h, None, None)),
                Some(401)
            );
        }
    }

    #[test]
    fn credentials_that_cannot_be_opened_fail_closed() {
        let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let other = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let stored = bearer(&secrets, "/openai");
        let good = headers(&[("x-goog-api-key", GOOD)]);
        for gate in [
            Gate::default().with_policy("/openai", Some(&stored), None),
            Gate::default().with_policy("/openai", Some(&stored), Some(&other)),
            // Sealed for another prefix: moved in Redis.
            Gate::default().with_policy("/other", Some(&stored), Some(&secrets)),
            Gate::default().with_policy("/openai", Some("{not json"), Some(&secrets)),
        ] {
            let gate = gate.with_key(&id_of(GOOD), Some(&record(GOOD, true, None, None)));
            let prefix = if gate.policies.contains_key("/other") {
                "/other"
            } else {
                "/openai"
            };
            assert_eq!(
                status(&gate.admit_at(prefix, &good, None, None, || 0)),
                Some(503),
                "{prefix}"
            );
        }
    }

    #[test]
    fn query_keys_and_credentials_are_swapped() {
        let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let place = CredentialPlace {
            header: None,
            template: None,
            query: Some("key".into()),
        };
        let gate = Gate::default()
            .with_key(&id_of(GOOD), Some(&record(GOOD, true, None, None)))
            .with_policy(
                "/gemini",
                Some(&policy(&secrets, "/gemini", place, "AIza/real+")),
                Some(&secrets),
            );
        let query = Some("alt=sse&key=apx-good");
        let pass = gate
            .admit_at("/gemini", &HeaderMap::new(), query, None, || 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            pass.query(query).as_deref(),
            Some("alt=sse&key=AIza%2Freal%2B")
        );
        // The key in a header, the credential in the query: the client's
        // own `key` goes too.
        let h = headers(&[("x-goog-api-key", GOOD)]);
        let pass = gate
            .admit_at("/gemini", &h, Some("key=own"), None, || 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            pass.query(Some("key=own")).as_deref(),
            Some("key=AIza%2Freal%2B")
        );
        let mut rewritten = h.clone();
        pass.rewrite_headers(&mut rewritten);
        assert!(rewritten.get("x-goog-api-key").is_none());
    }

    #[test]
    fn a_proxy_key_in_the_query_never_goes_on_however_spelled() {
        let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let gate = Gate::default()
            .with_key(&id_of(GOOD), Some(&record(GOOD, true, None, None)))
            .with_policy(
                "/openai",
                Some(&bearer(&secrets, "/openai")),
                Some(&secrets),
            );
        for query in [
            "key=apx-good&a=1",
            "%6Bey=apx-good&a=1",
            "%6bey=apx%2Dgood&a=1",
        ] {
            let pass = gate
                .admit_at("/openai", &HeaderMap::new(), Some(query), None, || 0)
                .unwrap_or_else(|d| panic!("{query}: {:?}", d.error))
                .unwrap();
            assert_eq!(pass.query(Some(query)).as_deref(), Some("a=1"), "{query}");
        }
        // Beside a key in a header, spellings an upstream may read as `key`.
        let h = headers(&[("x-api-key", GOOD)]);
        for query in ["KEY=apx-good&a=1", "key=+apx-good&a=1"] {
            let pass = gate
                .admit_at("/openai", &h, Some(query), None, || 0)
                .unwrap()
                .unwrap();
            assert_eq!(pass.query(Some(query)).as_deref(), Some("a=1"), "{query}");
        }
        // A query with no key at all is passed on as it is.
        let pass = gate
            .admit_at("/openai", &h, Some("a=%20"), None, || 0)
            .unwrap()
            .unwrap();
        assert_eq!(pass.query(Some("a=%20")).as_deref(), Some("a=%20"));
    }

    #[test]
    fn digests_follow_changes_and_usage_survives_them() {
        let keys = vec![(id_of(GOOD), record(GOOD, true, None, None))];
        let gate = Gate::default().build(&keys, std::iter::empty(), None);
        let mut digest = KeysDigest::of(&keys);
        let registry = Arc::new(UsageRegistry::default());
        let usage_of = |g: &Gate| {
            let key = g.keys.values().next().unwrap();
            key.admitted(Some(&registry)).usage.unwrap()
        };
        let usage = usage_of(&gate);
        let id = id_of(GOOD);
        let changed = record(GOOD, false, None, None);
        digest.replace(&gate, &id, Some(&changed));
        let next = gate.with_key(&id, Some(&changed));
        assert_eq!(digest, KeysDigest::of(&[(id.clone(), changed.clone())]));
        assert!(Arc::ptr_eq(&usage_of(&next), &usage));
        let rebuilt = next.build(&[(id.clone(), changed)], std::iter::empty(), None);
        assert!(Arc::ptr_eq(&usage_of(&rebuilt), &usage));
        digest.replace(&next, &id, None);
        assert_eq!(digest, KeysDigest::default());
        // The cache form reads back as the same key.
        let records = next.key_records();
        let again = Gate::default().build(&records, std::iter::empty(), None);
        assert_eq!(again.keys(), 1);
    }
}
