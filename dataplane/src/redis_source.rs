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

use apiproxy_shared::{content_hash, RedisKeys, UpdateMessage};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::routing::Snapshot;
use crate::snapshot_cache::{CachedSnapshot, SnapshotCache};
use crate::state::RoutingState;

/// Longest wait for a connection or a read before Redis counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL itself is never printed: it may hold a password.
    #[error("API_PROXY_REDIS_URL: not a valid redis:// or rediss:// URL ({0})")]
    Url(String),
}

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

pub struct RedisSource {
    client: redis::Client,
    keys: RedisKeys,
    state: Arc<RoutingState>,
    cache: Option<SnapshotCache>,
    resync: Duration,
    /// What is applied now: its version and content hash.
    applied: Option<(u64, String)>,
}

impl RedisSource {
    pub fn new(
        url: &str,
        prefix: &str,
        state: Arc<RoutingState>,
        cache: Option<SnapshotCache>,
        resync: Duration,
    ) -> Result<RedisSource, RedisSetupError> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(RedisSetupError::Url(
                "scheme must be redis:// or rediss://".into(),
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|e| RedisSetupError::Url(format!("{:?}", e.kind())))?;
        Ok(RedisSource {
            client,
            keys: RedisKeys::new(prefix),
            state,
            cache,
            resync,
            applied: None,
        })
    }

    /// Follows Redis until `shutdown`, reconnecting with jittered backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut first_attempt = true;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.session(&mut backoff) => result,
            };
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            self.state.metrics.config_stale.set(1);
            if first_attempt {
                warn!(%error, "Redis unreachable at start");
                self.boot_from_cache();
            } else {
                warn!(%error, "lost Redis; serving the last snapshot and reconnecting");
            }
            first_attempt = false;
            let delay = backoff.next_delay();
            debug!(?delay, "reconnecting to Redis");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connected period: subscribe, read everything, then follow the
    /// announcements and the resync timer until the connection fails.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<(), SyncError> {
        let mut pubsub = within(self.client.get_async_pubsub()).await?;
        within(pubsub.subscribe(&self.keys.updates)).await?;
        let mut conn = within(self.client.get_multiplexed_async_connection()).await?;
        // Subscribed first, then read: a change made in between is in the
        // read or announced after it, never lost.
        self.reload(&mut conn, "subscribed").await?;
        backoff.reset();
        let mut messages = pubsub.on_message();
        let mut resync = tokio::time::interval(self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Err(SyncError::Closed) };
                    let mut update = UpdateMessage::parse(message.get_payload_bytes());
                    // Coalesce a burst: everything already queued is covered
                    // by one read.
                    let mut coalesced = 0usize;
                    while let Some(Some(next)) = messages.next().now_or_never() {
                        update = UpdateMessage::parse(next.get_payload_bytes()).or(update);
                        coalesced += 1;
                    }
                    if let (Some(u), Some((applied, _))) = (&update, &self.applied) {
                        debug!(version = u.version, applied, coalesced, "update announced");
                    }
                    self.reload(&mut conn, "announced").await?;
                }
                _ = resync.tick() => self.reload(&mut conn, "resync").await?,
            }
        }
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
            .get(&self.keys.version);
        let (entries, version): (BTreeMap<String, String>, Option<u64>) =
            match within(pipe.query_async(conn)).await {
                Ok(pair) => pair,
                Err(e) => {
                    self.state.metrics.config_reload(false);
                    return Err(e);
                }
            };
        let version = version.unwrap_or(0);
        let hash = content_hash(entries.iter().map(|(p, t)| (p.as_str(), t.as_str())));
        self.state.metrics.config_stale.set(0);
        if self
            .applied
            .as_ref()
            .is_some_and(|(v, h)| *v == version && *h == hash)
        {
            return Ok(());
        }
        if self
            .applied
            .as_ref()
            .is_some_and(|(v, h)| *v == version && *h != hash)
        {
            info!(version, "mappings changed in Redis without a version bump");
        }
        debug!(why, version, "applying mappings from Redis");
        self.apply(entries, version, hash);
        Ok(())
    }

    /// Builds and swaps in the snapshot, then writes the cache. This runs on
    /// the sync thread (see `MappingSource::run`), never on a request worker.
    fn apply(&mut self, entries: BTreeMap<String, String>, version: u64, hash: String) {
        let snapshot = self
            .state
            .current()
            .next(&entries, version, &self.state.metrics);
        self.state.apply(snapshot);
        if let Some(cache) = &self.cache {
            let cached = CachedSnapshot {
                version,
                hash: hash.clone(),
                mappings: entries,
            };
            if let Err(error) = cache.store(&cached) {
                warn!(%error, "could not write the snapshot cache");
            }
        }
        self.applied = Some((version, hash));
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
                let snapshot =
                    Snapshot::build(&cached.mappings, cached.version, &self.state.metrics);
                self.state.apply(snapshot);
                self.state.metrics.config_stale.set(1);
                self.applied = Some((cached.version, cached.hash));
            }
            Err(error) => {
                error!(%error, "refusing the snapshot cache; not ready until Redis answers")
            }
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
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        let state = Arc::new(RoutingState::new(crate::metrics::Metrics::new()));
        let err = RedisSource::new(
            "http://user:secret@h",
            "apiproxy",
            state.clone(),
            None,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("secret"));
        assert!(RedisSource::new(
            "rediss://:pw@h:6380/0",
            "apiproxy",
            state,
            None,
            Duration::from_secs(1)
        )
        .is_ok());
    }
}
