//! Proxy keys and per-mapping access policies: the records
//! the control plane writes to Redis and the data planes read, their
//! validation, and the two pieces of cryptography both sides must agree on:
//! the key hash (SHA-256) and the sealing of upstream credentials under
//! `API_PROXY_SECRETS_KEY` (ChaCha20-Poly1305).
//!
//! A mapping without a policy is open, as it always was; the Go-compatible
//! mappings hash is never touched by any of this.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// What every proxy key starts with, so a leaked one is recognisable (and
/// secret scanners can be taught it).
pub const PROXY_KEY_PREFIX: &str = "apx-";
/// Random bytes in a proxy key, after its prefix (base64url, 43 characters).
pub const PROXY_KEY_BYTES: usize = 32;
/// The placeholder of a credential header's template.
pub const SECRET_PLACEHOLDER: &str = "{secret}";
/// Longest key name, credential secret and header template accepted.
pub const MAX_NAME_LEN: usize = 100;
pub const MAX_SECRET_LEN: usize = 4096;
pub const MAX_TEMPLATE_LEN: usize = 256;
/// Most prefixes one key may list.
pub const MAX_KEY_PREFIXES: usize = 100;

/// SHA-256 of a proxy key's secret: what Redis and the data planes hold.
pub fn key_hash(secret: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// [`key_hash`] as 64 lower-case hex digits (the `{p}:keys:by-hash` field).
pub fn key_hash_hex(secret: &[u8]) -> String {
    hex(&key_hash(secret))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Parses 64 hex digits back into a hash.
pub fn parse_hash_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    bytes
}

/// A fresh proxy key: `apx-` and 32 random bytes in base64url.
pub fn new_proxy_key() -> String {
    format!(
        "{PROXY_KEY_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random::<PROXY_KEY_BYTES>())
    )
}

/// A key's id: `key_` and the first 16 hex digits of its secret's SHA-256.
/// Not secret (it names the key in logs, metrics and the API): a quarter
/// of a hash of 256 random bits tells nothing of them. Taken from the hash
/// so that a data plane indexes its keys by one number for both the
/// request path's lookup (by hash) and a change's (by id).
pub fn key_id_of(hash: &[u8; 32]) -> String {
    format_key_id(key_id_bits(hash))
}

/// The 64 bits [`key_id_of`] spells.
pub fn key_id_bits(hash: &[u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(head)
}

/// The id whose 16 hex digits are `bits`.
pub fn format_key_id(bits: u64) -> String {
    format!("key_{bits:016x}")
}

/// The 64 bits a key id's hex digits spell (a data plane keeps that, not
/// the string); `None` for anything [`key_id_of`] does not make.
pub fn parse_key_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("key_")?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if digits.len() != 16 || !digits.bytes().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Whether `id` has the shape [`key_id_of`] makes.
pub fn is_key_id(id: &str) -> bool {
    parse_key_id(id).is_some()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsKeyError {
    #[error("API_PROXY_SECRETS_KEY must be 32 bytes in base64 (`apiproxy-controlplane gen-secrets-key` prints one)")]
    Shape,
}

/// A sealed credential could not be opened: another secrets key sealed it,
/// or it was altered (or moved to another prefix) in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the credential cannot be opened with this API_PROXY_SECRETS_KEY (another key sealed it, or it was altered)")]
pub struct OpenError;

/// `API_PROXY_SECRETS_KEY`: seals upstream credentials for Redis and opens
/// them again. Sealed form: `v1.` + base64url(nonce ‖ ciphertext ‖ tag),
/// with the policy's prefix as associated data, so a sealed credential
/// copied to another prefix's policy does not open.
pub struct SecretsKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(…)")
    }
}

const SEALED_VERSION: &str = "v1.";

impl SecretsKey {
    /// Reads the base64 (standard or url-safe, padded or not) form.
    pub fn from_base64(text: &str) -> Result<SecretsKey, SecretsKeyError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| SecretsKeyError::Shape)?;
        if bytes.len() != 32 {
            return Err(SecretsKeyError::Shape);
        }
        let key =
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SecretsKeyError::Shape)?;
        Ok(SecretsKey {
            key: LessSafeKey::new(key),
        })
    }

    /// A fresh key in the form [`SecretsKey::from_base64`] reads.
    pub fn generate() -> String {
        STANDARD.encode(random::<32>())
    }

    /// Seals `secret` for the policy of `prefix`. The nonce is random: a
    /// handful of credentials are ever sealed under one key, far from the
    /// 2^32 where random 96-bit nonces start to risk a repeat.
    pub fn seal(&self, prefix: &str, secret: &str) -> String {
        let nonce_bytes = random::<NONCE_LEN>();
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(prefix.as_bytes()),
                &mut data,
            )
            .expect("a credential is far below the AEAD's length limit");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_VERSION}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens what [`SecretsKey::seal`] made for `prefix`.
    pub fn open(&self, prefix: &str, sealed: &str) -> Result<String, OpenError> {
        let body = sealed.strip_prefix(SEALED_VERSION).ok_or(OpenError)?;
        let mut bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| OpenError)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(prefix.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| OpenError)?;
        String::from_utf8(plain.to_vec()).map_err(|_| OpenError)
    }
}

/// A proxy key as stored in `{p}:keys` (id → this JSON). The secret is
/// never stored; `sha256` is its [`key_hash_hex`], also the field of
/// `{p}:keys:by-hash`. `last_used_at` is not here: it changes with every
/// stats batch, and the data planes re-read this record on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Prefixes the key may be used on; `None`: all.
    #[serde(default)]
    pub prefixes: Option<Vec<String>>,
    pub enabled: bool,
    /// Unix seconds; `None`: never expires.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    pub sha256: String,
}

/// Why a key's fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("`name` must be 1 to {MAX_NAME_LEN} characters with no control characters")]
    Name,
    #[error("`prefixes` must list 1 to {MAX_KEY_PREFIXES} prefixes (leave it out for all)")]
    PrefixCount,
    #[error("`prefixes`: {0}: {1}")]
    Prefix(String, String),
}

/// Checks a key's name.
pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(KeyError::Name);
    }
    Ok(())
}

/// Checks a key's allowed prefixes and returns them each in its one
/// spelling (what the data plane's routes are named by).
pub fn canonical_key_prefixes(prefixes: &[String]) -> Result<Vec<String>, KeyError> {
    if prefixes.is_empty() || prefixes.len() > MAX_KEY_PREFIXES {
        return Err(KeyError::PrefixCount);
    }
    let mut out = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let canonical = crate::canonical_prefix(p)
            .map_err(|e| KeyError::Prefix(p.clone(), e.to_string()))?
            .into_owned();
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

impl KeyRecord {
    /// What serde cannot check (the data plane skips a record that fails).
    pub fn validate(&self) -> Result<(), &'static str> {
        let Some(hash) = parse_hash_hex(&self.sha256) else {
            return Err("`sha256` is not 64 hex digits");
        };
        if key_id_of(&hash) != self.id {
            return Err("`id` is not the one its `sha256` gives");
        }
        if validate_key_name(&self.name).is_err() {
            return Err("`name` is invalid");
        }
        if let Some(prefixes) = &self.prefixes {
            match canonical_key_prefixes(prefixes) {
                Ok(canonical) if canonical == *prefixes => {}
                _ => return Err("`prefixes` are not valid prefixes in their one spelling"),
            }
        }
        Ok(())
    }
}

/// Whether a key with these fields may be used on the mapping `prefix` at
/// `now` (unix seconds); `Err` says why not, for the 403's message. Takes
/// the fields, not a [`KeyRecord`]: a data plane keeps keys in a smaller
/// form.
pub fn key_allows<S: AsRef<str>>(
    enabled: bool,
    expires_at: Option<u64>,
    prefixes: Option<&[S]>,
    prefix: &str,
    now: u64,
) -> Result<(), Refusal> {
    if !enabled {
        return Err(Refusal::Disabled);
    }
    if expires_at.is_some_and(|t| now >= t) {
        return Err(Refusal::Expired);
    }
    if let Some(prefixes) = prefixes {
        if !prefixes.iter().any(|p| p.as_ref() == prefix) {
            return Err(Refusal::NotHere);
        }
    }
    Ok(())
}

/// Why a known key is refused (403 `forbidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    Expired,
    NotHere,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Disabled => "this proxy key is disabled",
            Refusal::Expired => "this proxy key has expired",
            Refusal::NotHere => "this proxy key is not allowed on this endpoint",
        }
    }
}

/// Who may use a mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who reaches the proxy (a mapping with no policy).
    #[default]
    Open,
    /// Only a request with a known, enabled, unexpired proxy key allowed
    /// on the prefix.
    Key,
}

/// Where the upstream wants its credential: a header whose value is
/// `template` with `{secret}` replaced, or a query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialPlace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Headers a credential may not be put in: the proxy owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("`upstream_credential` needs exactly one of `header` and `query`")]
    Place,
    #[error("`upstream_credential.header`: not a header name the proxy may set")]
    Header,
    #[error("`upstream_credential.template` must hold `{{secret}}` once, be at most {MAX_TEMPLATE_LEN} bytes of visible ASCII and spaces, and only go with `header`")]
    Template,
    #[error("`upstream_credential.query` must be 1 to 64 of A-Z a-z 0-9 - _ . ~")]
    Query,
    #[error("`upstream_credential.secret` must be 1 to {MAX_SECRET_LEN} bytes of visible ASCII")]
    Secret,
}

impl CredentialPlace {
    /// Checks the place and returns it with the header name lower-cased
    /// and the template filled in (`{secret}` when none was given).
    pub fn normalised(&self) -> Result<CredentialPlace, PolicyError> {
        match (&self.header, &self.query) {
            (Some(header), None) => {
                let name = header.to_ascii_lowercase();
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty()
                    || name.len() > 64
                    || !name.bytes().all(token)
                    || RESERVED_HEADERS.contains(&name.as_str())
                    || name.starts_with(':')
                {
                    return Err(PolicyError::Header);
                }
                let template = self.template.as_deref().unwrap_or(SECRET_PLACEHOLDER);
                if template.len() > MAX_TEMPLATE_LEN
                    || template.matches(SECRET_PLACEHOLDER).count() != 1
                    || !template.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
                {
                    return Err(PolicyError::Template);
                }
                Ok(CredentialPlace {
                    header: Some(name),
                    template: Some(template.to_owned()),
                    query: None,
                })
            }
            (None, Some(query)) => {
                if self.template.is_some() {
                    return Err(PolicyError::Template);
                }
                let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-_.~".contains(&b);
                if query.is_empty() || query.len() > 64 || !query.bytes().all(unreserved) {
                    return Err(PolicyError::Query);
                }
                Ok(self.clone())
            }
            _ => Err(PolicyError::Place),
        }
    }

    /// The value the upstream gets for `secret`.
    pub fn value(&self, secret: &str) -> String {
        match &self.template {
            Some(template) => template.replacen(SECRET_PLACEHOLDER, secret, 1),
            None => secret.to_owned(),
        }
    }
}

/// Checks a credential secret.
pub fn validate_secret(secret: &str) -> Result<(), PolicyError> {
    if secret.is_empty()
        || secret.len() > MAX_SECRET_LEN
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(PolicyError::Secret);
    }
    Ok(())
}

/// Shortest secret whose hint shows its last four characters: of a
/// shorter one, four characters would be too much of it (all of a test
/// key's).
pub const HINT_MIN_LEN: usize = 16;

/// What a read shows of a secret: its last four characters, or nothing of
/// one shorter than [`HINT_MIN_LEN`].
pub fn secret_hint(secret: &str) -> String {
    if secret.chars().count() < HINT_MIN_LEN {
        return "…".to_owned();
    }
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// An upstream credential as stored: sealed, with its hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    #[serde(flatten)]
    pub place: CredentialPlace,
    /// [`SecretsKey::seal`] of the secret, for the policy's prefix.
    pub sealed: String,
    pub secret_hint: String,
}

/// A mapping's policy as stored in `{p}:policies` (prefix → this JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub access: Access,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_credential: Option<StoredCredential>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_with_their_key_and_prefix() {
        let key = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        let sealed = key.seal("/openai", "sk-live-1234");
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("sk-live"));
        assert_eq!(key.open("/openai", &sealed).unwrap(), "sk-live-1234");
        // Each seal has its own nonce.
        assert_ne!(sealed, key.seal("/openai", "sk-live-1234"));
        assert_eq!(key.open("/other", &sealed), Err(OpenError));
        let other = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
        assert_eq!(other.open("/openai", &sealed), Err(OpenError));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(key.open("/openai", &tampered), Err(OpenError));
        assert_eq!(key.open("/openai", "sk-plain"), Err(OpenError));
    }

    #[test]
    fn secrets_key_must_be_32_bytes_of_base64() {
        assert!(SecretsKey::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(SecretsKey::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
        assert_eq!(
            SecretsKey::from_base64(&STANDARD.encode([7u8; 16])).unwrap_err(),
            SecretsKeyError::Shape
        );
        assert!(SecretsKey::from_base64("not base64!").is_err());
        assert!(SecretsKey::from_base64("").is_err());
    }

    #[test]
    fn proxy_keys_and_ids_have_their_shapes() {
        let k = new_proxy_key();
        assert!(k.starts_with("apx-") && k.len() == 4 + 43, "{k}");
        assert_ne!(k, new_proxy_key());
        let id = key_id_of(&key_hash(k.as_bytes()));
        assert!(is_key_id(&id), "{id}");
        assert_eq!(id[4..], key_hash_hex(k.as_bytes())[..16]);
        assert!(!is_key_id("key_XYZ"));
        assert!(!is_key_id("key_0123456789ABCDEF"));
        assert_eq!(parse_key_id("key_00000000000000ff"), Some(255));
        assert_eq!(format_key_id(255), "key_00000000000000ff");
        let h = key_hash_hex(b"abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hash_hex(&h), Some(key_hash(b"abc")));
        assert_eq!(parse_hash_hex("zz"), None);
    }

    fn record() -> KeyRecord {
        KeyRecord {
            id: key_id_of(&key_hash(b"x")),
            name: "ci".into(),
            prefixes: Some(vec!["/openai".into()]),
            enabled: true,
            expires_at: Some(1000),
            created_at: 1,
            sha256: key_hash_hex(b"x"),
        }
    }

    #[test]
    fn a_key_is_refused_for_each_reason() {
        let r = record();
        let allows = |r: &KeyRecord, prefix: &str, now: u64| {
            key_allows(r.enabled, r.expires_at, r.prefixes.as_deref(), prefix, now)
        };
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(allows(&r, "/openai", 999), Ok(()));
        assert_eq!(allows(&r, "/openai", 1000), Err(Refusal::Expired));
        assert_eq!(allows(&r, "/anthropic", 1), Err(Refusal::NotHere));
        let off = KeyRecord {
            enabled: false,
            ..record()
        };
        assert_eq!(allows(&off, "/openai", 1), Err(Refusal::Disabled));
        let all = KeyRecord {
            prefixes: None,
            expires_at: None,
            ..record()
        };
        assert_eq!(allows(&all, "/anything", u64::MAX), Ok(()));
        let aliased = KeyRecord {
            prefixes: Some(vec!["/openai/".into()]),
            ..record()
        };
        assert!(aliased.validate().is_err());
        let other_id = KeyRecord {
            id: "key_0123456789abcdef".into(),
            ..record()
        };
        assert!(other_id.validate().is_err());
    }

    #[test]
    fn places_are_checked_and_normalised() {
        let header = |h: &str, t: Option<&str>| CredentialPlace {
            header: Some(h.into()),
            template: t.map(Into::into),
            query: None,
        };
        let p = header("Authorization", Some("Bearer {secret}"))
            .normalised()
            .unwrap();
        assert_eq!(p.header.as_deref(), Some("authorization"));
        assert_eq!(p.value("sk-1"), "Bearer sk-1");
        let bare = header("x-api-key", None).normalised().unwrap();
        assert_eq!(bare.value("sk-2"), "sk-2");
        assert_eq!(header("Host", None).normalised(), Err(PolicyError::Header));
        assert_eq!(
            header("x-a", Some("Bearer")).normalised(),
            Err(PolicyError::Template)
        );
        assert_eq!(
            header("x-a", Some("{secret}{secret}")).normalised(),
            Err(PolicyError::Template)
        );
        let query = CredentialPlace {
            header: None,
            template: None,
            query: Some("key".into()),
        };
        assert_eq!(query.normalised().unwrap().value("g"), "g");
        let both = CredentialPlace {
            query: Some("key".into()),
            ..header("x", None)
        };
        assert_eq!(both.normalised(), Err(PolicyError::Place));
        assert_eq!(validate_secret("sk ok"), Err(PolicyError::Secret));
        assert_eq!(secret_hint("sk-abcdef-ghijklmn"), "…klmn");
        assert_eq!(secret_hint("sk-abcdef"), "…");
        assert_eq!(secret_hint("ab"), "…");
    }

    #[test]
    fn stored_policy_round_trips() {
        let json = r#"{"access":"key","upstream_credential":{"header":"authorization","template":"Bearer {secret}","sealed":"v1.x","secret_hint":"…abcd"}}"#;
        let p: StoredPolicy = serde_json::from_str(json).unwrap();
        assert_eq!(p.access, Access::Key);
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
        let open: StoredPolicy = serde_json::from_str(r#"{"access":"open"}"#).unwrap();
        assert_eq!(open.upstream_credential, None);
    }
}
