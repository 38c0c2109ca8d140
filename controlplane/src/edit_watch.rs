//! Edits made in Redis around the API (a script's `HSET`, a restore of the
//! hashes) bump no version and announce nothing. The data planes check
//! only the version on their resync, one `GET` each, so that a fleet of a
//! thousand costs Redis next to nothing at idle; one reader does the
//! comparison for them all instead. Every `API_PROXY_RESYNC_INTERVAL` the
//! control plane reads the mappings, keys and policies in one transaction,
//! and when they changed while the version did not, bumps the version and
//! announces a full re-read (`replace`).
//!
//! A direct edit that lands in the same interval as a change through the
//! API is not told apart from it here; the nodes' own full re-read
//! (`API_PROXY_FULL_RESYNC_INTERVAL`) remains the net for that, and for a
//! fleet running with no control plane.

use std::time::Duration;

use crate::redis_conn::RedisConn;
use apiproxy_shared::content_hash::entry_digest;
use apiproxy_shared::{RedisKeys, UpdateMessage, UpdateOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::announce;

type RawHash = Vec<(Vec<u8>, Vec<u8>)>;

/// The version as read (the raw value, `None` when unset) and a digest of
/// each hash: mappings, keys, policies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    version: Option<Vec<u8>>,
    digests: [u64; 3],
}

/// Bumps the version only if it is still the one compared: a change made
/// through the API meanwhile has announced itself.
const BUMP: &str = r"
if redis.call('GET', KEYS[1]) ~= (ARGV[1] ~= '' and ARGV[1] or false) then
  return false
end
return redis.call('INCR', KEYS[1])
";

/// Watches until `shutdown`. A failed read is retried at the next tick
/// (the API's own errors say when Redis is away).
pub(crate) async fn watch(
    conn: RedisConn,
    prefix: &str,
    every: Duration,
    shutdown: CancellationToken,
) {
    let keys = RedisKeys::new(prefix);
    let bump = redis::Script::new(BUMP);
    let mut last: Option<Seen> = None;
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        let seen = match read(&conn, &keys).await {
            Ok(seen) => seen,
            Err(error) => {
                debug!(%error, "could not compare the hashes with the last read");
                continue;
            }
        };
        let edited = last
            .as_ref()
            .is_some_and(|l| l.version == seen.version && l.digests != seen.digests);
        last = Some(seen.clone());
        if !edited {
            continue;
        }
        let raw = seen.version.clone().unwrap_or_default();
        let bumped: Result<Option<u64>, _> = bump
            .key(&keys.version)
            .arg(raw)
            .invoke_async(&mut conn.clone())
            .await;
        match bumped {
            Ok(Some(version)) => {
                warn!(version, "mappings, keys or policies changed in Redis without a version bump: announced a full re-read");
                announce(
                    &conn,
                    &keys,
                    UpdateMessage::mapping(version, UpdateOp::Replace, None),
                )
                .await;
                // The bump is ours: not an edit to announce again.
                last = last.map(|l| Seen {
                    version: Some(version.to_string().into_bytes()),
                    ..l
                });
            }
            // The version moved meanwhile: that change was announced.
            Ok(None) => {}
            Err(error) => debug!(%error, "could not announce an edit made in Redis"),
        }
    }
}

async fn read(conn: &RedisConn, keys: &RedisKeys) -> redis::RedisResult<Seen> {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .get(&keys.version)
        .hgetall(&keys.mappings)
        .hgetall(&keys.keys)
        .hgetall(&keys.policies);
    let (version, mappings, proxy_keys, policies): (Option<Vec<u8>>, RawHash, RawHash, RawHash) =
        pipe.query_async(&mut conn.clone()).await?;
    Ok(Seen {
        version,
        digests: [&mappings, &proxy_keys, &policies].map(digest),
    })
}

/// Order-independent: Redis returns a hash's fields in no fixed order.
fn digest(hash: &RawHash) -> u64 {
    hash.iter()
        .fold(0, |sum, (f, v)| sum.wrapping_add(entry_digest(f, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> RawHash {
        pairs
            .iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_digest_ignores_order_and_sees_every_change() {
        let a = digest(&hash(&[("/a", "http://a"), ("/b", "http://b")]));
        assert_eq!(a, digest(&hash(&[("/b", "http://b"), ("/a", "http://a")])));
        for other in [
            hash(&[("/a", "http://a")]),
            hash(&[("/a", "http://a"), ("/b", "http://c")]),
            hash(&[("/a", "http://a"), ("/bh", "ttp://b")]),
        ] {
            assert_ne!(a, digest(&other));
        }
    }
}
