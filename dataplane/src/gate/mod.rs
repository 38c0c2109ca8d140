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
pub(crate) mod usage;

use std::borrow::Cow;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use apiproxy_shared::access::{
    format_key_id, key_allows, key_hash, parse_hash_hex, parse_key_id, Access, KeyRecord,
    SecretsKey, StoredPolicy,
};
use apiproxy_shared::canonical_prefix;
use fnv::FnvBuildHasher;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rpds::HashTrieMapSync;
use tracing::{error, warn};

use self::client_key::{Found, KEY_PARAM};
use self::usage::{KeyUsage, UsageRegistry};
use crate::error::ProxyError;

/// The first 8 bytes of a SHA-256, as the key table's index: digests of
/// random secrets are uniform already, so they need no hashing again.
type HashHead = u64;

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

/// A proxy key as the data plane keeps it: what the check needs and no
/// more (about a hundred bytes a key; the name lives in the control plane).
#[derive(Debug, Clone)]
pub(crate) struct ProxyKey {
    /// The rest of the SHA-256 after the table's [`HashHead`].
    tail: [u8; 24],
    id: u64,
    enabled: bool,
    /// Unix seconds; 0: never.
    expires_at: u64,
    prefixes: Option<Arc<[Box<str>]>>,
    /// [`record_digest`] of the record it was made from.
    raw: u64,
    /// Made on first use, and kept by every later version of the record.
    usage: Arc<OnceLock<Arc<KeyUsage>>>,
}

impl ProxyKey {
    /// The key's usage counters, made on first use.
    pub(crate) fn usage(&self, registry: &Arc<UsageRegistry>) -> &Arc<KeyUsage> {
        self.usage
            .get_or_init(|| Arc::new(KeyUsage::new(self.id().into(), registry.clone())))
    }

    pub(crate) fn id(&self) -> String {
        format_key_id(self.id)
    }

    /// The id's 64 bits.
    pub(crate) fn id_bits(&self) -> u64 {
        self.id
    }
}

/// An upstream credential, opened and ready to put in a request.
#[derive(Clone)]
enum Credential {
    Header(HeaderName, HeaderValue),
    /// The parameter's name and the whole `name=value` pair, encoded.
    Query(Box<str>, Box<str>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Header(name, _) => write!(f, "Credential::Header({name}, …)"),
            Credential::Query(name, _) => write!(f, "Credential::Query({name}, …)"),
        }
    }
}

/// A mapping's policy, ready for the request path.
#[derive(Debug)]
pub(crate) struct Policy {
    access: Access,
    /// `Err`: the policy names a credential this node cannot open; its
    /// requests get 503 (fail closed), never a pass without it.
    credential: Option<Result<Credential, ()>>,
}

/// Characters a query credential's value is sent with encoded: all but
/// RFC 3986's unreserved.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Policy {
    /// Makes the policy of `prefix` from its stored form. A credential that
    /// cannot be opened is said once here, when the policy is applied, not
    /// on every request.
    fn new(prefix: &str, stored: StoredPolicy, secrets: Option<&SecretsKey>) -> Policy {
        let credential = stored.upstream_credential.map(|c| {
            let Some(secrets) = secrets else {
                error!(prefix, "this mapping's upstream credential needs API_PROXY_SECRETS_KEY, which this node does not have: its requests get 503 not_ready");
                return Err(());
            };
            let secret = secrets.open(prefix, &c.sealed).map_err(|e| {
                error!(prefix, %e, "this mapping's requests get 503 not_ready");
            })?;
            let place = c.place.normalised().map_err(|e| {
                error!(prefix, %e, "invalid upstream credential: this mapping's requests get 503 not_ready");
            })?;
            match (place.header, place.query) {
                (Some(name), _) => {
                    let name = HeaderName::try_from(name).map_err(|_| ())?;
                    let mut value = HeaderValue::try_from(place.template.map_or(secret.clone(), |t| t.replacen(apiproxy_shared::access::SECRET_PLACEHOLDER, &secret, 1)))
                        .map_err(|_| error!(prefix, "the upstream credential is not a valid header value: this mapping's requests get 503 not_ready"))?;
                    // Kept out of HTTP/2 header compression tables and
                    // out of any debug output.
                    value.set_sensitive(true);
                    Ok(Credential::Header(name, value))
                }
                (None, Some(name)) => {
                    let pair = format!("{name}={}", utf8_percent_encode(&secret, QUERY_VALUE));
                    Ok(Credential::Query(name.into(), pair.into()))
                }
                (None, None) => Err(()),
            }
        });
        Policy {
            access: stored.access,
            credential,
        }
    }
}

/// What the gate lets through, and what it changes on the way.
#[derive(Debug)]
pub(crate) struct Pass {
    /// The proxy key, when the mapping needs one.
    pub(crate) key: Option<ProxyKey>,
    /// Where that key was: taken out of the request.
    found: Option<Found>,
    credential: Option<Credential>,
}

/// Why the gate refused, and whose key it was if it knew it.
#[derive(Debug)]
pub(crate) struct Denied {
    pub(crate) error: ProxyError,
    pub(crate) key: Option<ProxyKey>,
}

impl Pass {
    /// The upstream request's query: the client's without its proxy key
    /// or its own credential parameter, with ours added. Borrowed when
    /// nothing changes.
    pub(crate) fn query<'q>(&self, query: Option<&'q str>) -> Option<Cow<'q, str>> {
        let (remove, append) = match (&self.credential, &self.found) {
            (Some(Credential::Query(name, pair)), _) => (&**name, Some(&**pair)),
            (_, Some(Found::Query)) => (KEY_PARAM, None),
            _ => return query.map(Cow::Borrowed),
        };
        // The proxy key in `key` and the credential in another parameter:
        // both go.
        let query = match (&self.found, remove) {
            (Some(Found::Query), r) if r != KEY_PARAM => {
                client_key::rewrite_query(query, KEY_PARAM, None)
            }
            _ => query.map(str::to_owned),
        };
        client_key::rewrite_query(query.as_deref(), remove, append).map(Cow::Owned)
    }

    /// Takes the proxy key's header out and puts the credential's in.
    pub(crate) fn rewrite_headers(&self, headers: &mut HeaderMap) {
        if let Some(Found::Header(name)) = &self.found {
            headers.remove(name);
        }
        if let Some(Credential::Header(name, value)) = &self.credential {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The proxy keys and policies one snapshot holds.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    keys: HashTrieMapSync<HashHead, ProxyKey, Identity>,
    /// Key id → its [`HashHead`], to apply a change or delete by id.
    ids: HashTrieMapSync<u64, HashHead, Identity>,
    policies: HashTrieMapSync<Arc<str>, Arc<Policy>, FnvBuildHasher>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            keys: HashTrieMapSync::new_with_hasher_and_ptr_kind(Identity::default()),
            ids: HashTrieMapSync::new_with_hasher_and_ptr_kind(Identity::default()),
            policies: HashTrieMapSync::new_with_hasher_and_ptr_kind(FnvBuildHasher::default()),
        }
    }
}

fn head(hash: &[u8; 32]) -> (HashHead, [u8; 24]) {
    let mut h = [0u8; 8];
    h.copy_from_slice(&hash[..8]);
    let mut tail = [0u8; 24];
    tail.copy_from_slice(&hash[8..]);
    (u64::from_be_bytes(h), tail)
}

impl Gate {
    /// Whether any mapping has a policy: without one, requests skip the gate.
    pub(crate) fn is_open(&self) -> bool {
        self.policies.is_empty()
    }

    pub(crate) fn keys(&self) -> usize {
        self.keys.size()
    }

    pub(crate) fn policies(&self) -> usize {
        self.policies.size()
    }

    /// The decision for a request on the mapping `prefix`: `Ok(None)` for
    /// a mapping without a policy.
    pub(crate) fn admit(
        &self,
        prefix: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Pass>, Denied> {
        self.admit_at(prefix, headers, query, unix_seconds)
    }

    /// [`Gate::admit`] with its clock, read only for a key that expires.
    fn admit_at(
        &self,
        prefix: &str,
        headers: &HeaderMap,
        query: Option<&str>,
        now: fn() -> u64,
    ) -> Result<Option<Pass>, Denied> {
        let Some(policy) = self.policies.get(prefix) else {
            return Ok(None);
        };
        let denied = |error, key| Err(Denied { error, key });
        let (key, found) = match policy.access {
            Access::Open => (None, None),
            Access::Key => {
                let Some((secret, found)) = client_key::find(headers, query) else {
                    return denied(
                        ProxyError::Unauthorized("this endpoint needs a proxy key (Authorization: Bearer, x-api-key, x-goog-api-key or ?key=)"),
                        None,
                    );
                };
                let (h, tail) = head(&key_hash(&secret));
                let Some(key) = self.keys.get(&h).filter(|k| k.tail == tail) else {
                    return denied(ProxyError::Unauthorized("unknown proxy key"), None);
                };
                let expires_at = (key.expires_at != 0).then_some(key.expires_at);
                let now = if expires_at.is_some() { now() } else { 0 };
                if let Err(why) = key_allows(
                    key.enabled,
                    expires_at,
                    key.prefixes.as_deref(),
                    prefix,
                    now,
                ) {
                    return denied(ProxyError::Forbidden(why.message()), Some(key.clone()));
                }
                (Some(key.clone()), Some(found))
            }
        };
        let credential = match &policy.credential {
            None => None,
            Some(Ok(c)) => Some(c.clone()),
            Some(Err(())) => return denied(ProxyError::CredentialUnavailable, key),
        };
        Ok(Some(Pass {
            key,
            found,
            credential,
        }))
    }

    /// The gate after the key `id` changed (`record` `None`: deleted).
    /// A record that fails validation removes the key: it fails closed.
    pub(crate) fn with_key(&self, id: &str, record: Option<&str>) -> Gate {
        let mut next = self.clone();
        let Some(bits) = parse_key_id(id) else {
            warn!(
                key_id = id,
                "skipping a key record under a field that is not a key id"
            );
            return next;
        };
        let old = next.ids.get(&bits).copied();
        let usage = old.and_then(|h| next.keys.get(&h)).map(|k| k.usage.clone());
        if let Some(h) = old {
            next.keys.remove_mut(&h);
            next.ids.remove_mut(&bits);
        }
        if let Some(key) = record.and_then(|r| parse_key(id, r)) {
            next.insert(key, usage);
        }
        next
    }

    fn insert(
        &mut self,
        (h, mut key): (HashHead, ProxyKey),
        usage: Option<Arc<OnceLock<Arc<KeyUsage>>>>,
    ) {
        if let Some(usage) = usage {
            key.usage = usage;
        }
        if self.keys.get(&h).is_some_and(|other| other.id != key.id) {
            warn!(key_id = %key.id(), "two keys share the first 64 bits of their hash; skipping this one");
            return;
        }
        self.ids.insert_mut(key.id, h);
        self.keys.insert_mut(h, key);
    }

    /// The gate after the policy of `prefix` changed (`stored` `None`:
    /// removed, the mapping is open again).
    pub(crate) fn with_policy(
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
            match serde_json::from_str::<StoredPolicy>(stored) {
                Ok(policy) => {
                    next.policies.insert_mut(
                        canonical.clone(),
                        Arc::new(Policy::new(&canonical, policy, secrets)),
                    );
                }
                // A policy that cannot be read must not leave its mapping
                // open: it refuses every request, as one whose credential
                // cannot be opened.
                Err(e) => {
                    error!(prefix, %e, "unreadable policy: this mapping's requests get 503 not_ready");
                    next.policies.insert_mut(
                        canonical,
                        Arc::new(Policy {
                            access: Access::Key,
                            credential: Some(Err(())),
                        }),
                    );
                }
            }
        }
        next
    }

    /// A gate from every record, sharing the usage of keys this one has.
    pub(crate) fn build<'p>(
        &self,
        keys: &[(String, String)],
        policies: impl IntoIterator<Item = (&'p String, &'p String)>,
        secrets: Option<&SecretsKey>,
    ) -> Gate {
        let mut next = Gate::default();
        for (id, record) in keys {
            if let Some((h, key)) = parse_key(id, record) {
                let usage = self
                    .ids
                    .get(&key.id)
                    .and_then(|old| self.keys.get(old))
                    .map(|k| k.usage.clone());
                next.insert((h, key), usage);
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
            .iter()
            .map(|(h, k)| {
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&h.to_be_bytes());
                hash[8..].copy_from_slice(&k.tail);
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
                    sha256: apiproxy_shared::access::hex(&hash),
                };
                (
                    k.id(),
                    serde_json::to_string(&record).expect("serialisable"),
                )
            })
            .collect()
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stored record as the gate keeps it; `None` (said) when it is invalid.
fn parse_key(id: &str, record: &str) -> Option<(HashHead, ProxyKey)> {
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
    let hash = parse_hash_hex(&r.sha256)?;
    let (h, tail) = head(&hash);
    Some((
        h,
        ProxyKey {
            tail,
            id: parse_key_id(&r.id)?,
            enabled: r.enabled,
            // 0 is "never": an expiry at 0 (long past) is kept as 1.
            expires_at: r.expires_at.map_or(0, |t| t.max(1)),
            prefixes: r
                .prefixes
                .map(|p| p.into_iter().map(String::into_boxed_str).collect()),
            raw: record_digest(id, record),
            usage: Arc::default(),
        },
    ))
}

/// A digest of one key record as Redis holds it.
fn record_digest(id: &str, record: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(id.as_bytes());
    h.write_u8(0);
    h.write(record.as_bytes());
    h.finish()
}

/// All key records as one digest, independent of their order, that one
/// change updates without reading the others: a full read compares it
/// with what is applied instead of keeping every record twice. A record
/// the gate skipped as invalid is not in it, so a later full read sees a
/// difference and rebuilds: never wrong, at most one rebuild too many.
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
        if let Some(old) = parse_key_id(id)
            .and_then(|bits| gate.ids.get(&bits))
            .and_then(|h| gate.keys.get(h))
        {
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
    use apiproxy_shared::access::{key_hash_hex, CredentialPlace, StoredCredential};
    use http::header::AUTHORIZATION;

    const ID: &str = "key_00000000000000a1";

    fn record(
        secret: &str,
        enabled: bool,
        prefixes: Option<&[&str]>,
        expires_at: Option<u64>,
    ) -> String {
        serde_json::to_string(&KeyRecord {
            id: ID.into(),
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
                ID,
                Some(&record("apx-good", true, Some(&["/openai"]), Some(100))),
            )
            .with_policy(
                "/openai",
                Some(&bearer(&secrets, "/openai")),
                Some(&secrets),
            )
            .with_policy("/other", Some(&bearer(&secrets, "/other")), Some(&secrets));
        assert!(!gate.is_open());
        let now = || 50;
        let admit = |h: &HeaderMap, prefix: &str| gate.admit_at(prefix, h, None, now);
        // No policy: nothing to do.
        assert!(matches!(admit(&HeaderMap::new(), "/open"), Ok(None)));
        assert_eq!(status(&admit(&HeaderMap::new(), "/openai")), Some(401));
        let unknown = headers(&[("authorization", "Bearer apx-bad")]);
        assert_eq!(status(&admit(&unknown, "/openai")), Some(401));
        let good = headers(&[("authorization", "Bearer apx-good"), ("x-api-key", "own")]);
        let pass = admit(&good, "/openai").unwrap().unwrap();
        assert_eq!(pass.key.as_ref().unwrap().id(), ID);
        let mut rewritten = good.clone();
        pass.rewrite_headers(&mut rewritten);
        assert_eq!(rewritten[AUTHORIZATION], "Bearer sk-real");
        assert!(rewritten[AUTHORIZATION].is_sensitive());
        assert_eq!(rewritten["x-api-key"], "own");
        // Known, but not on this prefix: 403 with the key named.
        let denied = admit(&good, "/other").unwrap_err();
        assert_eq!(denied.error.status().as_u16(), 403);
        assert_eq!(denied.key.unwrap().id(), ID);
        // Expired.
        assert_eq!(
            status(&gate.admit_at("/openai", &good, None, || 100)),
            Some(403)
        );
        // Disabled: the change replaces the key in place.
        let off = gate.with_key(ID, Some(&record("apx-good", false, None, None)));
        assert_eq!(
            status(&off.admit_at("/openai", &good, None, now)),
            Some(403)
        );
        assert_eq!(off.keys(), 1);
        // Deleted: unknown.
        let gone = gate.with_key(ID, None);
        assert_eq!(gone.keys(), 0);
        assert_eq!(
            status(&gone.admit_at("/openai", &good, None, now)),
            Some(401)
        );
        // The gate requests were reading is untouched.
        assert!(admit(&good, "/openai").is_ok());
    }

    #[test]
    fn credentials_that_cannot_be_opened_fail_closed() {
        let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let other = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let stored = bearer(&secrets, "/openai");
        let good = headers(&[("x-goog-api-key", "apx-good")]);
        for gate in [
            Gate::default().with_policy("/openai", Some(&stored), None),
            Gate::default().with_policy("/openai", Some(&stored), Some(&other)),
            // Sealed for another prefix: moved in Redis.
            Gate::default().with_policy("/other", Some(&stored), Some(&secrets)),
            Gate::default().with_policy("/openai", Some("{not json"), Some(&secrets)),
        ] {
            let gate = gate.with_key(ID, Some(&record("apx-good", true, None, None)));
            let prefix = if gate.policies.contains_key("/other") {
                "/other"
            } else {
                "/openai"
            };
            assert_eq!(
                status(&gate.admit_at(prefix, &good, None, || 0)),
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
            .with_key(ID, Some(&record("apx-good", true, None, None)))
            .with_policy(
                "/gemini",
                Some(&policy(&secrets, "/gemini", place, "AIza/real+")),
                Some(&secrets),
            );
        let query = Some("alt=sse&key=apx-good");
        let pass = gate
            .admit_at("/gemini", &HeaderMap::new(), query, || 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            pass.query(query).as_deref(),
            Some("alt=sse&key=AIza%2Freal%2B")
        );
        // The key in a header, the credential in the query: the client's
        // own `key` goes too.
        let h = headers(&[("x-goog-api-key", "apx-good")]);
        let pass = gate
            .admit_at("/gemini", &h, Some("key=own"), || 0)
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
    fn digests_follow_changes_and_usage_survives_them() {
        let keys = vec![(ID.to_owned(), record("apx-good", true, None, None))];
        let gate = Gate::default().build(&keys, std::iter::empty(), None);
        let mut digest = KeysDigest::of(&keys);
        let registry = Arc::new(UsageRegistry::default());
        let usage = gate.keys.values().next().unwrap().usage(&registry).clone();
        let changed = record("apx-good", false, None, None);
        digest.replace(&gate, ID, Some(&changed));
        let next = gate.with_key(ID, Some(&changed));
        assert_eq!(digest, KeysDigest::of(&[(ID.to_owned(), changed.clone())]));
        assert!(Arc::ptr_eq(
            next.keys.values().next().unwrap().usage(&registry),
            &usage
        ));
        let rebuilt = next.build(&[(ID.to_owned(), changed)], std::iter::empty(), None);
        assert!(Arc::ptr_eq(
            rebuilt.keys.values().next().unwrap().usage(&registry),
            &usage
        ));
        digest.replace(&next, ID, None);
        assert_eq!(digest, KeysDigest::default());
        // The cache form reads back as the same key.
        let records = next.key_records();
        let again = Gate::default().build(&records, std::iter::empty(), None);
        assert_eq!(again.keys(), 1);
    }
}
