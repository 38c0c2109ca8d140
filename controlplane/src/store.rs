//! Mappings in Redis (SPEC §4), written atomically: each change, its
//! version bump and its audit entry happen in one Lua script; the
//! announcement is published after it. Readers (the data planes) never see
//! a change without its version, nor a version without its change.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use apiproxy_shared::{RedisKeys, UpdateMessage, UpdateOp};
use redis::{AsyncCommands, Script};
use serde::Serialize;

use crate::redis_conn::RedisConn;

/// Audit entries kept (approximately) in the stream.
pub(crate) const AUDIT_MAX_LEN: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a mapping for {0} already exists")]
    Exists(String),
    #[error("no mapping for {0}")]
    Missing(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One audit entry (SPEC §5).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub(crate) struct AuditEntry {
    pub(crate) id: String,
    pub(crate) time: u64,
    pub(crate) op: String,
    pub(crate) prefix: String,
    pub(crate) old_target: Option<String>,
    pub(crate) new_target: Option<String>,
    pub(crate) actor: String,
}

// KEYS: mappings, version, audit. ARGV: prefix, target, actor, time, maxlen.
const CREATE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'time', ARGV[4], 'op', 'create',
  'prefix', ARGV[1], 'old_target', '', 'new_target', ARGV[2], 'actor', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return v";

const UPDATE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return -1 end
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'time', ARGV[4], 'op', 'update',
  'prefix', ARGV[1], 'old_target', old, 'new_target', ARGV[2], 'actor', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return v";

// ARGV: prefix, (unused), actor, time, maxlen.
const DELETE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return -1 end
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'time', ARGV[4], 'op', 'delete',
  'prefix', ARGV[1], 'old_target', old, 'new_target', '', 'actor', ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
return v";

// ARGV: actor, time, maxlen, only_if_empty ("1": do nothing unless the
// hash is empty, for `init`), then prefix/target pairs of the new set.
// The version is bumped first: if that fails (a non-integer version key),
// nothing else has changed.
const REPLACE: &str = r"
if ARGV[4] == '1' and redis.call('HLEN', KEYS[1]) > 0 then return -1 end
local v = redis.call('INCR', KEYS[2])
local old = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do old[flat[i]] = flat[i + 1] end
local new = {}
for i = 5, #ARGV, 2 do new[ARGV[i]] = ARGV[i + 1] end
local function audit(op, prefix, before, after)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'time', ARGV[2], 'op', op,
    'prefix', prefix, 'old_target', before or '', 'new_target', after or '', 'actor', ARGV[1])
end
for prefix, target in pairs(old) do
  if new[prefix] == nil then audit('delete', prefix, target, nil) end
end
for prefix, target in pairs(new) do
  if old[prefix] == nil then audit('create', prefix, nil, target)
  elseif old[prefix] ~= target then audit('update', prefix, old[prefix], target) end
end
redis.call('DEL', KEYS[1])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return v";

/// The control plane's clock, unix ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Publishes a change on the updates channel.
async fn publish(
    conn: &RedisConn,
    keys: &RedisKeys,
    message: &UpdateMessage,
) -> Result<(), redis::RedisError> {
    let mut conn = conn.clone();
    conn.publish::<_, _, ()>(&keys.updates, message.to_json())
        .await
}

/// Publishes a change made. A lost announcement is not fatal: nodes also
/// re-read on their resync interval.
pub(crate) async fn announce(conn: &RedisConn, keys: &RedisKeys, message: UpdateMessage) {
    if let Err(error) = publish(conn, keys, &message).await {
        tracing::warn!(%error, version = message.version, "could not announce a change; nodes will catch up on resync");
    }
}

/// The mapping store of one Redis namespace.
#[derive(Clone)]
pub(crate) struct Store {
    conn: RedisConn,
    keys: RedisKeys,
    /// Whether a mapping's announcement carries its target
    /// (`API_PROXY_ANNOUNCE_TARGETS`): a node then applies the change with
    /// no read of Redis.
    announce_targets: bool,
}

impl Store {
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> Store {
        Store {
            conn,
            keys: RedisKeys::new(prefix),
            announce_targets: true,
        }
    }

    /// `false`: announcements name the prefix only.
    pub(crate) fn announcing_targets(self, announce_targets: bool) -> Store {
        Store {
            announce_targets,
            ..self
        }
    }

    /// All mappings and the version, read in one transaction.
    pub(crate) async fn list(&self) -> Result<(BTreeMap<String, String>, u64), StoreError> {
        let mut conn = self.conn.clone();
        let (map, version): (BTreeMap<String, String>, Option<u64>) = redis::pipe()
            .atomic()
            .hgetall(&self.keys.mappings)
            .get(&self.keys.version)
            .query_async(&mut conn)
            .await?;
        Ok((map, version.unwrap_or(0)))
    }

    pub(crate) async fn get(&self, prefix: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.hget(&self.keys.mappings, prefix).await?)
    }

    async fn change(
        &self,
        script: &str,
        prefix: &str,
        target: &str,
        actor: &str,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let version: i64 = Script::new(script)
            .key(&self.keys.mappings)
            .key(&self.keys.version)
            .key(&self.keys.audit)
            .arg(prefix)
            .arg(target)
            .arg(actor)
            .arg(now_ms())
            .arg(AUDIT_MAX_LEN)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(version).ok())
    }

    pub(crate) async fn create(
        &self,
        prefix: &str,
        target: &str,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let v = self
            .change(CREATE, prefix, target, actor)
            .await?
            .ok_or_else(|| StoreError::Exists(prefix.into()))?;
        self.announce_upsert(v, prefix, target).await;
        Ok(v)
    }

    pub(crate) async fn update(
        &self,
        prefix: &str,
        target: &str,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let v = self
            .change(UPDATE, prefix, target, actor)
            .await?
            .ok_or_else(|| StoreError::Missing(prefix.into()))?;
        self.announce_upsert(v, prefix, target).await;
        Ok(v)
    }

    pub(crate) async fn delete(&self, prefix: &str, actor: &str) -> Result<u64, StoreError> {
        let v = self
            .change(DELETE, prefix, "", actor)
            .await?
            .ok_or_else(|| StoreError::Missing(prefix.into()))?;
        self.announce(v, UpdateOp::Delete, Some(prefix)).await;
        Ok(v)
    }

    /// Replaces the whole set atomically with one version bump.
    pub(crate) async fn replace(
        &self,
        mappings: &BTreeMap<String, String>,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let v = self
            .run_replace(mappings, actor, false)
            .await?
            .expect("unconditional replace");
        Ok(v)
    }

    /// Writes the given mappings only when the hash is empty (`init`); the
    /// emptiness check is inside the script, so a concurrent create or a
    /// second `init` cannot be overwritten. `None` when the hash held
    /// anything.
    pub(crate) async fn init_defaults(
        &self,
        defaults: &[(&str, &str)],
        actor: &str,
    ) -> Result<Option<u64>, StoreError> {
        let map: BTreeMap<String, String> = defaults
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        self.run_replace(&map, actor, true).await
    }

    async fn run_replace(
        &self,
        mappings: &BTreeMap<String, String>,
        actor: &str,
        only_if_empty: bool,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let script = Script::new(REPLACE);
        let mut invocation = script.key(&self.keys.mappings);
        invocation
            .key(&self.keys.version)
            .key(&self.keys.audit)
            .arg(actor)
            .arg(now_ms())
            .arg(AUDIT_MAX_LEN)
            .arg(if only_if_empty { "1" } else { "0" });
        for (prefix, target) in mappings {
            invocation.arg(prefix).arg(target);
        }
        let v: i64 = invocation.invoke_async(&mut conn).await?;
        let Ok(v) = u64::try_from(v) else {
            return Ok(None);
        };
        self.announce(v, UpdateOp::Replace, None).await;
        Ok(Some(v))
    }

    /// Announces a full re-read (`replace`, no prefix, at the current
    /// version): every node, a Go one too, re-reads the whole hash, so an
    /// edit made straight in Redis applies at once. Writes nothing; the
    /// announcement is the whole point, so failing to publish is an error.
    /// Returns the current version.
    pub(crate) async fn announce_reload(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let version: Option<u64> = conn.get(&self.keys.version).await?;
        let version = version.unwrap_or(0);
        self.publish(version, UpdateOp::Replace, None).await?;
        Ok(version)
    }

    /// Publishes an `upsert`, with its target unless told not to.
    async fn announce_upsert(&self, version: u64, prefix: &str, target: &str) {
        let message = match self.announce_targets {
            true => UpdateMessage::upsert(version, prefix, target),
            false => UpdateMessage::mapping(version, UpdateOp::Upsert, Some(prefix)),
        };
        announce(&self.conn, &self.keys, message).await;
    }

    /// Publishes the change (see [`announce`]).
    async fn announce(&self, version: u64, op: UpdateOp, prefix: Option<&str>) {
        announce(
            &self.conn,
            &self.keys,
            UpdateMessage::mapping(version, op, prefix),
        )
        .await;
    }

    async fn publish(
        &self,
        version: u64,
        op: UpdateOp,
        prefix: Option<&str>,
    ) -> Result<(), StoreError> {
        Ok(publish(
            &self.conn,
            &self.keys,
            &UpdateMessage::mapping(version, op, prefix),
        )
        .await?)
    }

    /// The newest `limit` audit entries, newest first.
    pub(crate) async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrevrange_count(&self.keys.audit, "+", "-", limit)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let field = |name: &str| entry.get::<String>(name).filter(|v| !v.is_empty());
                AuditEntry {
                    time: field("time").and_then(|t| t.parse().ok()).unwrap_or(0),
                    op: field("op").unwrap_or_default(),
                    prefix: field("prefix").unwrap_or_default(),
                    old_target: field("old_target"),
                    new_target: field("new_target"),
                    actor: field("actor").unwrap_or_default(),
                    id: entry.id,
                }
            })
            .collect())
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}
