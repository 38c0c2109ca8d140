//! Redis mode (SPEC §4): notify-then-read. The node reads the whole mappings
//! hash and the version at start and on every (re)subscribe, re-reads on
//! each announcement (bursts coalesced), and re-reads every
//! `API_PROXY_RESYNC_INTERVAL`, applying only when the content changed — that
//! catches a direct `HSET` without a version bump. While Redis is away the
//! last snapshot keeps serving; no request ever waits on Redis.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::access::SecretsKey;
use apiproxy_shared::{content_hash, RedisKeys, RedisTarget, UpdateMessage, UpdateOp};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::gate::{Gate, KeysDigest};
use crate::request_id::random_u64;
use crate::routing::Snapshot;
use crate::snapshot_cache::{CachedSnapshot, SnapshotCache};
use crate::state::RoutingState;

/// Longest wait for a connection or a read before Redis counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("subscription closed by Redis")]
    Closed,
}

async fn within<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SyncError> {
    match tokio::time::timeout(REDIS_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SyncError::Timeout(REDIS_TIMEOUT)),
    }
}

pub(crate) struct RedisSource {
    /// One server, or the master a Sentinel set names at each (re)connect.
    target: RedisTarget,
    keys: RedisKeys,
    state: Arc<RoutingState>,
    cache: Option<SnapshotCache>,
    resync: Resync,
    /// What is applied now.
    applied: Option<Applied>,
    /// The cache lags the applied snapshot (written at most once per
    /// resync interval after incremental changes).
    cache_dirty: bool,
    /// A newer version the last check found in Redis: if it is still not
    /// applied at the next check, its announcement was lost.
    ahead: Option<u64>,
    /// Opens the upstream credentials of the policies.
    secrets: Option<Arc<SecretsKey>>,
}

/// How often a node makes sure it missed nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resync {
    /// The version in Redis against the applied one: one `GET`, so a fleet
    /// of any size costs Redis next to nothing at idle. A newer (or older)
    /// version means a missed announcement: read everything.
    pub(crate) check: Duration,
    /// Read everything whatever the version says: for a direct edit of the
    /// hashes that bumped nothing, when no control plane is there to see it
    /// and announce it.
    pub(crate) full: Duration,
}

/// The applied state beside the routes (the snapshot holds the mappings
/// as configured): compared with each full read, and written to the cache.
struct Applied {
    version: u64,
    /// The keys as a digest, not their records: a hundred thousand keys
    /// are compared with a full read without being kept twice.
    keys: KeysDigest,
    policies: BTreeMap<String, String>,
}

impl RedisSource {
    pub(crate) fn new(
        target: RedisTarget,
        prefix: &str,
        state: Arc<RoutingState>,
        cache: Option<SnapshotCache>,
        resync: Resync,
        secrets: Option<Arc<SecretsKey>>,
    ) -> RedisSource {
        RedisSource {
            target,
            keys: RedisKeys::new(prefix),
            state,
            cache,
            resync,
            applied: None,
            cache_dirty: false,
            ahead: None,
            secrets,
        }
    }

    /// Follows Redis until `shutdown`, reconnecting with jittered backoff.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut tried_cache = false;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return self.flush_cache(),
                result = self.session(&mut backoff) => result,
            };
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            self.state.metrics.config_stale.set(1);
            // The cache is only for a node that has nothing yet: once a
            // snapshot came from Redis, the cache can only be older.
            if self.applied.is_none() && !tried_cache {
                warn!(%error, "Redis unreachable at start");
                self.boot_from_cache();
                tried_cache = true;
            } else if backoff.is_fresh() {
                warn!(%error, "lost Redis; serving the last snapshot and reconnecting");
            } else {
                // Once per outage is enough at warn; each retry is debug.
                debug!(%error, "Redis still unreachable");
            }
            let delay = backoff.next_delay();
            debug!(?delay, "reconnecting to Redis");
            tokio::select! {
                _ = shutdown.cancelled() => return self.flush_cache(),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connected period: subscribe, read everything, then follow the
    /// announcements and the resync timer until the connection fails.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<(), SyncError> {
        // Behind Sentinel, the master as of this (re)connect: after a
        // failover the new one, subscribed again and read in full below.
        let client = within(self.target.client()).await?;
        let mut pubsub = within(client.get_async_pubsub()).await?;
        within(pubsub.subscribe(&self.keys.updates)).await?;
        let mut conn = within(client.get_multiplexed_async_connection()).await?;
        // Subscribed first, then read: a change made in between is in the
        // read or announced after it, never lost.
        self.reload(&mut conn, "subscribed").await?;
        backoff.reset();
        let mut messages = pubsub.on_message();
        // Each node's resyncs keep a phase of their own: a fleet that
        // (re)connects together, after a Redis restart or in a rollout,
        // spreads its later reads over the interval instead of reading in
        // one burst every interval.
        let every = |interval| {
            let first = tokio::time::Instant::now() + phase(interval, random_u64());
            let mut timer = tokio::time::interval_at(first, interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        };
        let (mut check, mut full) = (every(self.resync.check), every(self.resync.full));
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Err(SyncError::Closed) };
                    // Coalesce a burst: everything already queued is covered
                    // by one read.
                    let mut burst = Burst::new(self.applied.as_ref().map(|a| a.version));
                    burst.add(message.get_payload_bytes());
                    while let Some(Some(next)) = messages.next().now_or_never() {
                        burst.add(next.get_payload_bytes());
                    }
                    if burst.stale > 0 {
                        self.state
                            .metrics
                            .config_announcements_ignored
                            .inc_by(burst.stale);
                        debug!(ignored = burst.stale, "announcements of a version already applied ignored");
                    }
                    match burst.news() {
                        News::None => {}
                        News::Each(updates) => self.follow(&mut conn, &updates).await?,
                        News::All => self.reload(&mut conn, "announced").await?,
                    }
                }
                _ = check.tick() => {
                    self.check_version(&mut conn).await?;
                    self.flush_cache();
                }
                _ = full.tick() => {
                    self.reload(&mut conn, "full resync").await?;
                    self.flush_cache();
                }
            }
        }
    }

    /// Applies announced changes, consecutive from the version after ours:
    /// as announced when each says what it changed to (a delete, an upsert
    /// with its target), else with one read of just their fields and the
    /// version, in one transaction. When the version read is not the last
    /// one announced (more changes landed meanwhile), or a change names
    /// nothing to read, only a full read is exact.
    async fn follow(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        updates: &[UpdateMessage],
    ) -> Result<(), SyncError> {
        let changes: Option<Vec<(u64, Change<'_>)>> = updates
            .iter()
            .map(|u| Change::of(u).map(|c| (u.version, c)))
            .collect();
        let (Some(changes), Some(last), true) = (changes, updates.last(), self.applied.is_some())
        else {
            return self.reload(conn, "announced").await;
        };
        // Announcements that say it all (a delete, an upsert with its
        // target) are applied as they are: no read, so a fleet takes a
        // change with one wake-up a node and no load on Redis.
        let all_told = changes
            .iter()
            .all(|(_, c)| matches!(c, Change::Mapping { told: Some(_), .. }));
        if all_told {
            for (version, change) in changes {
                if let Change::Mapping {
                    prefix,
                    told: Some(target),
                } = change
                {
                    self.apply_mapping(version, prefix, target.map(str::to_owned));
                }
            }
            self.state.metrics.config_stale.set(0);
            self.cache_dirty = true;
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (_, change) in &changes {
            let (hash, field) = match change {
                Change::Mapping { prefix, .. } => (&self.keys.mappings, prefix),
                Change::Gate(GateChange::Key(id)) => (&self.keys.keys, id),
                Change::Gate(GateChange::Policy(prefix)) => (&self.keys.policies, prefix),
            };
            pipe.hget(hash, *field);
        }
        pipe.get(&self.keys.version);
        let mut read: Vec<Option<Vec<u8>>> = match within(pipe.query_async(conn)).await {
            Ok(read) => read,
            Err(e) => {
                self.state.metrics.config_reload(false);
                return Err(e);
            }
        };
        let version = parse_version(read.pop().flatten().as_deref());
        if version != last.version {
            return self.reload(conn, "announced").await;
        }
        let mut gate_changed = false;
        for ((version, change), value) in changes.into_iter().zip(read) {
            let value = value.map(text);
            match change {
                Change::Mapping { prefix, .. } => self.apply_mapping(version, prefix, value),
                Change::Gate(change) => {
                    self.apply_gate_change(version, change, value);
                    gate_changed = true;
                }
            }
        }
        self.state.metrics.config_stale.set(0);
        self.cache_dirty = true;
        if gate_changed {
            // Written now, not at the next resync: a node that restarts
            // with Redis down must not boot with a key it has since seen
            // revoked.
            self.flush_cache();
        }
        Ok(())
    }

    /// The cheap resync: reads everything only when Redis's version went
    /// back (a restore), or was already newer than the applied one at the
    /// check before and still is not applied (an announcement was lost). A
    /// newer version seen once is most likely a change whose announcement
    /// is on its way: a node must not read everything for it.
    async fn check_version(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), SyncError> {
        let read: Option<Vec<u8>> =
            match within(redis::AsyncCommands::get(conn, &self.keys.version)).await {
                Ok(read) => read,
                Err(e) => {
                    self.state.metrics.config_reload(false);
                    return Err(e);
                }
            };
        let version = parse_version(read.as_deref());
        let applied = self.applied.as_ref().map(|a| a.version);
        let lost = self.ahead.is_some_and(|ahead| applied < Some(ahead));
        self.ahead = None;
        match applied {
            Some(applied) if applied == version => Ok(()),
            Some(applied) if applied < version && !lost => {
                self.ahead = Some(version);
                debug!(
                    version,
                    applied, "a newer version in Redis; its announcement may be on its way"
                );
                Ok(())
            }
            _ => {
                info!(version, "a version not applied found by the resync");
                self.reload(conn, "resync").await
            }
        }
    }

    /// Applies one mapping change (`upsert`, `delete`) read by
    /// [`RedisSource::follow`].
    fn apply_mapping(&mut self, version: u64, prefix: &str, target: Option<String>) {
        let snapshot = self
            .state
            .current()
            .with_change(prefix, target.as_deref(), version);
        debug!(version, prefix, "applying one announced change");
        self.state.apply(snapshot);
        if let Some(applied) = self.applied.as_mut() {
            applied.version = version;
        }
    }

    /// Applies one key or policy change read by [`RedisSource::follow`].
    fn apply_gate_change(&mut self, version: u64, change: GateChange<'_>, value: Option<String>) {
        let Some(applied) = self.applied.as_mut() else {
            return;
        };
        let gate = self.state.current_gate();
        let next = match change {
            GateChange::Key(id) => {
                applied.keys.replace(&gate, id, value.as_deref());
                gate.with_key(id, value.as_deref())
            }
            GateChange::Policy(prefix) => {
                match &value {
                    Some(v) => applied.policies.insert(prefix.to_owned(), v.clone()),
                    None => applied.policies.remove(prefix),
                };
                gate.with_policy(prefix, value.as_deref(), self.secrets.as_deref())
            }
        };
        applied.version = version;
        debug!(
            version,
            ?change,
            "applying one announced key or policy change"
        );
        self.state.apply_gate(next);
        self.state.advance(version);
    }

    /// Reads the hash and the version in one transaction and applies them if
    /// either changed.
    async fn reload(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        why: &str,
    ) -> Result<(), SyncError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hgetall(&self.keys.mappings)
            .get(&self.keys.version)
            .hgetall(&self.keys.keys)
            .hgetall(&self.keys.policies);
        // Raw bytes: one entry that is not UTF-8 must not fail the whole
        // read; it becomes an invalid entry, skipped and counted.
        let (raw, version, raw_keys, raw_policies): (
            RawEntries,
            Option<Vec<u8>>,
            RawEntries,
            RawEntries,
        ) = match within(pipe.query_async(conn)).await {
            Ok(read) => read,
            Err(e) => {
                self.state.metrics.config_reload(false);
                return Err(e);
            }
        };
        // Each reply becomes text in place: a hundred thousand key records
        // are not held twice.
        let entries: BTreeMap<String, String> =
            raw.into_iter().map(|(p, t)| (text(p), text(t))).collect();
        let keys: Vec<(String, String)> = raw_keys
            .into_iter()
            .map(|(id, r)| (text(id), text(r)))
            .collect();
        let policies: BTreeMap<String, String> = raw_policies
            .into_iter()
            .map(|(p, r)| (text(p), text(r)))
            .collect();
        let version = parse_version(version.as_deref());
        self.state.metrics.config_stale.set(0);
        let digest = KeysDigest::of(&keys);
        // The gate first: a mapping and the policy that guards it, read
        // together, never route before the guard is in place.
        let gate_same = self
            .applied
            .as_ref()
            .is_some_and(|a| a.keys == digest && a.policies == policies);
        if !gate_same {
            debug!(
                why,
                keys = keys.len(),
                policies = policies.len(),
                "applying keys and policies from Redis"
            );
            let gate =
                self.state
                    .current_gate()
                    .build(&keys, policies.iter(), self.secrets.as_deref());
            self.state.apply_gate(gate);
            self.cache_dirty = true;
        }
        let current = self.state.current();
        match self.applied.as_mut() {
            Some(a) if a.version == version && current.holds(&entries) => {
                a.keys = digest;
                a.policies = policies;
                self.flush_cache();
                return Ok(());
            }
            Some(a) if a.version == version => {
                info!(version, "mappings changed in Redis without a version bump");
            }
            _ => {}
        }
        debug!(why, version, "applying mappings from Redis");
        self.state.apply(current.next(&entries, version));
        self.applied = Some(Applied {
            version,
            keys: digest,
            policies,
        });
        self.cache_dirty = true;
        self.flush_cache();
        Ok(())
    }

    /// Writes the applied snapshot to the cache file if it lags.
    fn flush_cache(&mut self) {
        let (Some(cache), Some(applied), true) = (&self.cache, &self.applied, self.cache_dirty)
        else {
            return;
        };
        let snapshot = self.state.current();
        let cached = CachedSnapshot {
            version: applied.version,
            hash: content_hash(snapshot.entries()),
            mappings: snapshot
                .entries()
                .map(|(p, t)| (p.to_owned(), t.to_owned()))
                .collect(),
            keys: self.state.current_gate().key_records(),
            policies: applied
                .policies
                .iter()
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect(),
        };
        match cache.store(&cached) {
            Ok(()) => self.cache_dirty = false,
            Err(error) => warn!(%error, "could not write the snapshot cache"),
        }
    }

    /// Redis is down at boot: a valid cache makes the node ready (and
    /// stale); a missing or corrupt one leaves it not ready until Redis
    /// answers.
    fn boot_from_cache(&mut self) {
        let Some(cache) = &self.cache else {
            warn!("no API_PROXY_SNAPSHOT_CACHE: not ready until Redis answers");
            return;
        };
        match cache.load() {
            Ok(cached) => {
                info!(version = cached.version, path = %cache.path().display(), "serving the cached snapshot until Redis answers");
                // The gate first, as on every read.
                let policies: BTreeMap<String, String> = cached.policies.into_iter().collect();
                let gate =
                    Gate::default().build(&cached.keys, policies.iter(), self.secrets.as_deref());
                self.state.apply_gate(gate);
                self.state
                    .apply(Snapshot::build(&cached.mappings, cached.version));
                self.state.metrics.config_stale.set(1);
                self.applied = Some(Applied {
                    version: cached.version,
                    keys: KeysDigest::of(&cached.keys),
                    policies,
                });
            }
            Err(error) => {
                error!(%error, "refusing the snapshot cache; not ready until Redis answers")
            }
        }
    }
}

/// When a session's first resync comes: between half and one and a half
/// intervals after it read everything, placed by `random`.
fn phase(interval: Duration, random: u64) -> Duration {
    interval / 2 + interval.mul_f64((random % 1_000_000) as f64 / 1_000_000.0)
}

/// What one announced change changed, named by its field.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    Mapping {
        prefix: &'a str,
        /// What the mapping became, when the announcement says it: a
        /// delete (`Some(None)`), an upsert with its target.
        told: Option<Option<&'a str>>,
    },
    Gate(GateChange<'a>),
}

#[derive(Debug, Clone, Copy)]
enum GateChange<'a> {
    Key(&'a str),
    Policy(&'a str),
}

impl<'a> Change<'a> {
    /// `None` for an announcement that names nothing to read (`replace`).
    fn of(update: &'a UpdateMessage) -> Option<Change<'a>> {
        match (update.op, &update.key_id, &update.prefix) {
            (UpdateOp::Upsert | UpdateOp::Delete, _, Some(prefix)) => Some(Change::Mapping {
                prefix,
                told: match update.op {
                    UpdateOp::Delete => Some(None),
                    _ => update.target.as_deref().map(Some),
                },
            }),
            (UpdateOp::Key, Some(id), _) => Some(Change::Gate(GateChange::Key(id))),
            (UpdateOp::Policy, _, Some(prefix)) => Some(Change::Gate(GateChange::Policy(prefix))),
            _ => None,
        }
    }
}

/// The hash as Redis sends it: field and value bytes.
type RawEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes from Redis as text; invalid UTF-8 becomes U+FFFD, which no
/// prefix or target accepts, so the entry is refused by validation.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// [`lossy`], taking the bytes: valid UTF-8 (all but a broken entry) is
/// not copied.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| lossy(e.as_bytes()))
}

/// What a burst of announcements asks for. A change (`upsert`, `delete`)
/// whose version the node has already applied (a repeat, an older one, one
/// a full read got ahead of) asks for nothing and is counted. Changes that
/// each carry the version after the one before, from the applied one on,
/// are followed one by one (a one-field read each, up to [`FOLLOW_MAX`]):
/// a node that fell a few changes behind under load does not pay a read of
/// everything. Anything else asks for a full read: a gap, a `replace`
/// (also how `POST /api/mappings/reload` makes every node re-read at the
/// current version), a payload that does not parse (the Go version's
/// `mapping_added`).
struct Burst {
    applied: Option<u64>,
    stale: u64,
    news: Vec<Option<UpdateMessage>>,
}

enum News {
    None,
    Each(Vec<UpdateMessage>),
    All,
}

/// Changes in one burst followed one by one; more are read in one go.
const FOLLOW_MAX: usize = 32;

impl Burst {
    fn new(applied: Option<u64>) -> Burst {
        Burst {
            applied,
            stale: 0,
            news: Vec::new(),
        }
    }

    fn add(&mut self, payload: &[u8]) {
        match UpdateMessage::parse(payload) {
            Some(u)
                if u.op != UpdateOp::Replace && self.applied.is_some_and(|v| u.version <= v) =>
            {
                self.stale += 1
            }
            update => self.news.push(update),
        }
    }

    fn news(self) -> News {
        if self.news.is_empty() {
            return News::None;
        }
        if self.news.len() > FOLLOW_MAX {
            return News::All;
        }
        let mut next = self.applied.map(|v| v + 1);
        let mut each = Vec::with_capacity(self.news.len());
        for update in self.news {
            match update {
                Some(u) if Some(u.version) == next && u.op != UpdateOp::Replace => {
                    next = Some(u.version + 1);
                    each.push(u);
                }
                _ => return News::All,
            }
        }
        News::Each(each)
    }
}

/// The version key as a number; missing (the Go version never wrote one)
/// or not a number counts as 0.
fn parse_version(raw: Option<&[u8]>) -> u64 {
    match raw.map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    }) {
        None => 0,
        Some(Some(v)) => v,
        Some(None) => {
            warn!("the mappings version key is not a number; reading it as 0");
            0
        }
    }
}

/// Exponential backoff with full jitter: each wait is random in
/// [delay/2, delay], so a fleet that lost Redis together does not come
/// back in lockstep.
struct Backoff {
    delay: Duration,
    random: RandomState,
    n: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: BACKOFF_MIN,
            random: RandomState::new(),
            n: 0,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        self.n += 1;
        let r = self.random.hash_one(self.n) % 1000;
        let wait = self.delay / 2 + self.delay.mul_f64(r as f64 / 2000.0);
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        wait
    }

    fn reset(&mut self) {
        self.delay = BACKOFF_MIN;
    }

    /// No failed attempt since the last success (or ever).
    fn is_fresh(&self) -> bool {
        self.delay == BACKOFF_MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN);
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits[9] >= BACKOFF_MAX / 2);
        assert!(!b.is_fresh());
        b.reset();
        assert!(b.is_fresh());
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn resync_phases_spread_over_an_interval() {
        let interval = Duration::from_secs(10);
        let phases: Vec<Duration> = (0..1000).map(|_| phase(interval, random_u64())).collect();
        assert!(phases
            .iter()
            .all(|p| (interval / 2..interval * 3 / 2).contains(p)));
        // Spread, not bunched: every tenth of the range is used.
        let mut tenths = [0; 10];
        for p in &phases {
            tenths[((p.as_secs_f64() - 5.0) / 1.0) as usize] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 40), "{tenths:?}");
        assert_eq!(phase(interval, 0), interval / 2);
    }

    fn announced(version: u64) -> Vec<u8> {
        format!(r#"{{"version": {version}, "op": "upsert", "prefix": "/a"}}"#).into_bytes()
    }

    fn news(applied: Option<u64>, payloads: &[Vec<u8>]) -> (u64, &'static str) {
        let mut burst = Burst::new(applied);
        for p in payloads {
            burst.add(p);
        }
        let stale = burst.stale;
        let news = match burst.news() {
            News::None => "none",
            News::Each(each) => match each.len() {
                1 => "one",
                _ => "each",
            },
            News::All => "all",
        };
        (stale, news)
    }

    #[test]
    fn announcements_of_an_applied_version_ask_for_nothing() {
        assert_eq!(news(Some(5), &[announced(5), announced(3)]), (2, "none"));
        assert_eq!(news(Some(5), &[announced(6)]), (0, "one"));
        assert_eq!(news(Some(5), &[announced(5), announced(6)]), (1, "one"));
        // Consecutive versions are followed one by one; a gap, or more
        // than FOLLOW_MAX, is a full read.
        assert_eq!(news(Some(5), &[announced(6), announced(7)]), (0, "each"));
        assert_eq!(news(Some(5), &[announced(7)]), (0, "all"));
        assert_eq!(news(Some(5), &[announced(6), announced(8)]), (0, "all"));
        let many: Vec<_> = (6..6 + FOLLOW_MAX as u64 + 1).map(announced).collect();
        assert_eq!(news(Some(5), &many), (0, "all"));
        assert_eq!(news(Some(5), &many[..FOLLOW_MAX]), (0, "each"));
        // The Go version's payload, or any other, always means "re-read".
        assert_eq!(news(Some(5), &[b"mapping_added".to_vec()]), (0, "all"));
        assert_eq!(news(Some(5), &[announced(4), b"x".to_vec()]), (1, "all"));
        // Before the first read there is nothing to follow from.
        assert_eq!(news(None, &[announced(1)]), (0, "all"));
        // A replace at the current version is a reload: always read.
        let reload = br#"{"version": 5, "op": "replace"}"#.to_vec();
        assert_eq!(news(Some(5), &[reload]), (0, "all"));
    }
}
