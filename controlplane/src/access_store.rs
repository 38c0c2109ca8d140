//! Proxy keys and mapping policies in Redis, written as the
//! mappings are: each change, its version bump and its audit entry happen
//! in one Lua script, and the announcement is published after it. A key's
//! record, its `by-hash` index entry, its last use and its usage counters
//! come and go together.
//!
//! A change is a compare-and-set: the script writes only if the record is
//! still the one the change was computed from (a concurrent change makes
//! it read again), so the audit entry's before and after are exact. What
//! it records is a one-line summary that never holds a secret.

use std::collections::HashMap;

use apiproxy_shared::access::{Access, KeyRecord, StoredPolicy};
use apiproxy_shared::{RedisKeys, UpdateMessage};
use redis::{AsyncCommands, Script};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::redis_conn::RedisConn;
use crate::store::{announce, now_ms, AUDIT_MAX_LEN};

/// Reads before a change gives up on records that keep changing under it.
const ATTEMPTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("no key {0}")]
    NoKey(String),
    #[error("no policy for {0}")]
    NoPolicy(String),
    /// A change the stored record makes impossible (400).
    #[error("{0}")]
    Refused(String),
    #[error("changed by other requests meanwhile; try again")]
    Busy,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

// KEYS: the records' hash, version, audit; for a key also by-hash,
// last-used and its usage hash. ARGV: field (key id or prefix), the JSON
// the change was computed from ('' = none), the new JSON ('' = delete),
// op, old summary, new summary, actor, time, maxlen, and for a key its
// SHA-256 hex. Returns {version, records before}, or {-1, 0} when the
// record is no longer the one read.
const CHANGE: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return {-1, 0} end
local before = redis.call('HLEN', KEYS[1])
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'time', ARGV[8], 'op', ARGV[4],
  'prefix', ARGV[1], 'old_target', ARGV[5], 'new_target', ARGV[6], 'actor', ARGV[7])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if #KEYS > 3 then
    redis.call('HDEL', KEYS[4], ARGV[10])
    redis.call('HDEL', KEYS[5], ARGV[1])
    redis.call('DEL', KEYS[6])
  end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  if #KEYS > 3 then redis.call('HSET', KEYS[4], ARGV[10], ARGV[1]) end
end
return {v, before}";

/// A proxy key as the API shows it: its record and its last use.
pub(crate) type KeyEntry = (KeyRecord, Option<u64>);

/// A policy written: what is stored now, the version, and whether it is
/// the first policy of the namespace.
pub(crate) struct PolicySet {
    pub(crate) policy: StoredPolicy,
    pub(crate) version: u64,
    pub(crate) first: bool,
}

/// Keys and policies of one Redis namespace.
#[derive(Clone)]
pub(crate) struct AccessStore {
    conn: RedisConn,
    keys: RedisKeys,
}

/// Which hash a change writes, and the field's own value before it.
struct Change<'a> {
    field: &'a str,
    /// The stored JSON the change was computed from.
    old: Option<&'a str>,
    new: Option<String>,
    op: &'a str,
    old_summary: String,
    new_summary: String,
    actor: &'a str,
}

impl AccessStore {
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> AccessStore {
        AccessStore {
            conn,
            keys: RedisKeys::new(prefix),
        }
    }

    /// Every key with its last use, by `created_at` then id.
    pub(crate) async fn list_keys(&self) -> Result<Vec<KeyEntry>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (records, used): (HashMap<String, String>, HashMap<String, u64>) = redis::pipe()
            .atomic()
            .hgetall(&self.keys.keys)
            .hgetall(&self.keys.keys_last_used)
            .query_async(&mut conn)
            .await?;
        let mut keys: Vec<KeyEntry> = records
            .iter()
            .filter_map(|(id, json)| parse::<KeyRecord>("key", id, json))
            .map(|record| {
                let used = used.get(&record.id).copied();
                (record, used)
            })
            .collect();
        keys.sort_by(|(a, _), (b, _)| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    /// One key with its last use, and its stored JSON.
    async fn read_key(&self, id: &str) -> Result<Option<(KeyEntry, String)>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (json, used): (Option<String>, Option<u64>) = redis::pipe()
            .atomic()
            .hget(&self.keys.keys, id)
            .hget(&self.keys.keys_last_used, id)
            .query_async(&mut conn)
            .await?;
        Ok(json.and_then(|json| Some(((parse("key", id, &json)?, used), json))))
    }

    pub(crate) async fn key(&self, id: &str) -> Result<Option<KeyEntry>, redis::RedisError> {
        Ok(self.read_key(id).await?.map(|(entry, _)| entry))
    }

    /// Stores a new key and its `by-hash` entry.
    pub(crate) async fn create_key(
        &self,
        record: &KeyRecord,
        actor: &str,
    ) -> Result<u64, AccessError> {
        let change = Change {
            field: &record.id,
            old: None,
            new: Some(to_json(record)),
            op: "key_create",
            old_summary: String::new(),
            new_summary: key_summary(record),
            actor,
        };
        // An id is the first 64 bits of a new random secret's hash: taken
        // only by a collision (about 2^-64 a key).
        let (version, _) = self
            .write(change, Some(&record.sha256))
            .await?
            .ok_or(AccessError::Busy)?;
        self.announce_key(version, &record.id).await;
        Ok(version)
    }

    /// Applies `edit` to the stored key; nothing is written (and no
    /// version spent) when it changes nothing.
    pub(crate) async fn update_key(
        &self,
        id: &str,
        actor: &str,
        edit: impl Fn(&KeyRecord) -> KeyRecord,
    ) -> Result<KeyEntry, AccessError> {
        for _ in 0..ATTEMPTS {
            let ((old, used), json) = self
                .read_key(id)
                .await?
                .ok_or_else(|| AccessError::NoKey(id.to_owned()))?;
            let new = edit(&old);
            if new == old {
                return Ok((old, used));
            }
            let change = Change {
                field: id,
                old: Some(&json),
                new: Some(to_json(&new)),
                op: "key_update",
                old_summary: key_summary(&old),
                new_summary: key_summary(&new),
                actor,
            };
            if let Some((version, _)) = self.write(change, Some(&old.sha256)).await? {
                self.announce_key(version, id).await;
                return Ok((new, used));
            }
        }
        Err(AccessError::Busy)
    }

    /// Deletes a key with its `by-hash` entry, last use and usage.
    pub(crate) async fn delete_key(&self, id: &str, actor: &str) -> Result<u64, AccessError> {
        for _ in 0..ATTEMPTS {
            let ((old, _), json) = self
                .read_key(id)
                .await?
                .ok_or_else(|| AccessError::NoKey(id.to_owned()))?;
            let change = Change {
                field: id,
                old: Some(&json),
                new: None,
                op: "key_delete",
                old_summary: key_summary(&old),
                new_summary: String::new(),
                actor,
            };
            if let Some((version, _)) = self.write(change, Some(&old.sha256)).await? {
                self.announce_key(version, id).await;
                return Ok(version);
            }
        }
        Err(AccessError::Busy)
    }

    /// Every policy, by prefix.
    pub(crate) async fn list_policies(
        &self,
    ) -> Result<Vec<(String, StoredPolicy)>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let stored: HashMap<String, String> = conn.hgetall(&self.keys.policies).await?;
        let mut policies: Vec<(String, StoredPolicy)> = stored
            .iter()
            .filter_map(|(prefix, json)| Some((prefix.clone(), parse("policy", prefix, json)?)))
            .collect();
        policies.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(policies)
    }

    /// A policy's stored JSON and what it reads as: `None` for JSON that
    /// does not parse (only a hand edit makes one; the data planes refuse
    /// its mapping's requests), which a `PUT` or a `DELETE` still replaces.
    async fn read_policy(
        &self,
        prefix: &str,
    ) -> Result<Option<(Option<StoredPolicy>, String)>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.hget(&self.keys.policies, prefix).await?;
        Ok(json.map(|json| (parse("policy", prefix, &json), json)))
    }

    pub(crate) async fn policy(
        &self,
        prefix: &str,
    ) -> Result<Option<StoredPolicy>, redis::RedisError> {
        Ok(self
            .read_policy(prefix)
            .await?
            .and_then(|(policy, _)| policy))
    }

    /// Sets the policy of `prefix` (its one spelling) to what `make` makes
    /// of the stored one, if any.
    pub(crate) async fn put_policy(
        &self,
        prefix: &str,
        actor: &str,
        make: impl Fn(Option<&StoredPolicy>) -> Result<StoredPolicy, AccessError>,
    ) -> Result<PolicySet, AccessError> {
        for _ in 0..ATTEMPTS {
            let stored = self.read_policy(prefix).await?;
            let old = stored.as_ref().and_then(|(policy, _)| policy.as_ref());
            let new = make(old)?;
            let change = Change {
                field: prefix,
                old: stored.as_ref().map(|(_, json)| json.as_str()),
                new: Some(to_json(&new)),
                op: "policy_set",
                old_summary: old.map(policy_summary).unwrap_or_default(),
                new_summary: policy_summary(&new),
                actor,
            };
            if let Some((version, before)) = self.write(change, None).await? {
                self.announce_policy(version, prefix).await;
                return Ok(PolicySet {
                    policy: new,
                    version,
                    first: before == 0,
                });
            }
        }
        Err(AccessError::Busy)
    }

    pub(crate) async fn delete_policy(
        &self,
        prefix: &str,
        actor: &str,
    ) -> Result<u64, AccessError> {
        for _ in 0..ATTEMPTS {
            let (old, json) = self
                .read_policy(prefix)
                .await?
                .ok_or_else(|| AccessError::NoPolicy(prefix.to_owned()))?;
            let change = Change {
                field: prefix,
                old: Some(&json),
                new: None,
                op: "policy_delete",
                old_summary: old
                    .as_ref()
                    .map_or_else(|| "unreadable".to_owned(), policy_summary),
                new_summary: String::new(),
                actor,
            };
            if let Some((version, _)) = self.write(change, None).await? {
                self.announce_policy(version, prefix).await;
                return Ok(version);
            }
        }
        Err(AccessError::Busy)
    }

    /// Runs [`CHANGE`] on `{p}:keys` (with the key's index, last use and
    /// usage) when `key_hash` is given, else on `{p}:policies`. `None`:
    /// the record changed since it was read.
    async fn write(
        &self,
        change: Change<'_>,
        key_hash: Option<&str>,
    ) -> Result<Option<(u64, u64)>, redis::RedisError> {
        let script = Script::new(CHANGE);
        let mut invocation = script.key(match key_hash {
            Some(_) => &self.keys.keys,
            None => &self.keys.policies,
        });
        invocation.key(&self.keys.version).key(&self.keys.audit);
        if key_hash.is_some() {
            invocation
                .key(&self.keys.keys_by_hash)
                .key(&self.keys.keys_last_used)
                .key(self.keys.stats_key(change.field));
        }
        invocation
            .arg(change.field)
            .arg(change.old.unwrap_or_default())
            .arg(change.new.unwrap_or_default())
            .arg(change.op)
            .arg(change.old_summary)
            .arg(change.new_summary)
            .arg(change.actor)
            .arg(now_ms())
            .arg(AUDIT_MAX_LEN)
            .arg(key_hash.unwrap_or_default());
        let mut conn = self.conn.clone();
        let (version, before): (i64, u64) = invocation.invoke_async(&mut conn).await?;
        Ok(u64::try_from(version).ok().map(|v| (v, before)))
    }

    async fn announce_key(&self, version: u64, id: &str) {
        announce(&self.conn, &self.keys, UpdateMessage::key(version, id)).await;
    }

    async fn announce_policy(&self, version: u64, prefix: &str) {
        announce(
            &self.conn,
            &self.keys,
            UpdateMessage::policy(version, prefix),
        )
        .await;
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialisable")
}

/// A stored record, or `None` (logged) for one that does not parse, as
/// only a hand edit can make: it is left alone, as if absent.
fn parse<T: DeserializeOwned>(what: &str, field: &str, json: &str) -> Option<T> {
    serde_json::from_str(json)
        .inspect_err(
            |error| tracing::warn!(%error, field, "a stored {what} does not parse; ignored"),
        )
        .ok()
}

/// A key's audit line: `name=ci-bot enabled=true prefixes=/openai
/// expires_at=-` (`prefixes=*`: all).
fn key_summary(key: &KeyRecord) -> String {
    let name = if key
        .name
        .contains(|c: char| c.is_whitespace() || c == '"' || c == '=')
    {
        format!("{:?}", key.name)
    } else {
        key.name.clone()
    };
    let prefixes = key
        .prefixes
        .as_ref()
        .map_or("*".to_owned(), |p| p.join(","));
    let expires = key.expires_at.map_or("-".to_owned(), |t| t.to_string());
    format!(
        "name={name} enabled={} prefixes={prefixes} expires_at={expires}",
        key.enabled
    )
}

/// A policy's audit line: `access=key credential=header:authorization
/// template="Bearer {secret}" secret=…abcd`; the secret only as its hint.
fn policy_summary(policy: &StoredPolicy) -> String {
    let access = match policy.access {
        Access::Open => "open",
        Access::Key => "key",
    };
    let credential = match &policy.upstream_credential {
        None => "-".to_owned(),
        Some(c) => match (&c.place.header, &c.place.query) {
            (Some(header), _) => format!(
                "header:{header} template={:?} secret={}",
                c.place.template.as_deref().unwrap_or_default(),
                c.secret_hint
            ),
            (None, query) => format!(
                "query:{} secret={}",
                query.as_deref().unwrap_or_default(),
                c.secret_hint
            ),
        },
    };
    format!("access={access} credential={credential}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiproxy_shared::access::{CredentialPlace, StoredCredential};

    #[test]
    fn summaries_hold_no_secret() {
        let key = KeyRecord {
            id: "key_0123456789abcdef".into(),
            name: "ci bot".into(),
            prefixes: Some(vec!["/openai".into(), "/claude".into()]),
            enabled: true,
            expires_at: None,
            created_at: 1,
            sha256: "00".repeat(32),
        };
        assert_eq!(
            key_summary(&key),
            r#"name="ci bot" enabled=true prefixes=/openai,/claude expires_at=-"#
        );
        let all = KeyRecord {
            name: "ci".into(),
            prefixes: None,
            expires_at: Some(5),
            enabled: false,
            ..key
        };
        assert_eq!(
            key_summary(&all),
            "name=ci enabled=false prefixes=* expires_at=5"
        );
        let header = StoredPolicy {
            access: Access::Key,
            upstream_credential: Some(StoredCredential {
                place: CredentialPlace {
                    header: Some("authorization".into()),
                    template: Some("Bearer {secret}".into()),
                    query: None,
                },
                sealed: "v1.sealed".into(),
                secret_hint: "…abcd".into(),
            }),
        };
        assert_eq!(
            policy_summary(&header),
            r#"access=key credential=header:authorization template="Bearer {secret}" secret=…abcd"#
        );
        let mut query = header.clone();
        query.upstream_credential.as_mut().unwrap().place = CredentialPlace {
            header: None,
            template: None,
            query: Some("key".into()),
        };
        assert_eq!(
            policy_summary(&query),
            "access=key credential=query:key secret=…abcd"
        );
        let open = StoredPolicy {
            access: Access::Open,
            upstream_credential: None,
        };
        assert_eq!(policy_summary(&open), "access=open credential=-");
    }
}
