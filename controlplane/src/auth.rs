//! Admin authentication: the bearer token compared in constant time
//! (independent of length too: both sides are hashed first), session
//! cookies holding a random id (never the token; Redis keeps only the id's
//! hash), and a per-address limit on failed logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::redis_conn::RedisConn;

pub(crate) const SESSION_COOKIE: &str = "apiproxy_session";
/// How long a session lasts without a new login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const LOGIN_WINDOW: Duration = Duration::from_secs(60);
const LOGIN_MAX_FAILURES: u32 = 10;

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares candidates with a secret without leaking, through timing,
/// where they differ or how long the secret is.
pub(crate) struct Secret {
    digest: [u8; 32],
}

impl Secret {
    pub(crate) fn new(secret: &str) -> Secret {
        Secret {
            digest: sha256(secret.as_bytes()),
        }
    }

    pub(crate) fn matches(&self, candidate: &str) -> bool {
        let other = sha256(candidate.as_bytes());
        self.digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Sessions in Redis, so every control-plane replica knows them and a
/// restart logs no one out.
/// Each session records (as a digest) which admin token opened it, so
/// changing `ADMIN_TOKEN` ends every session opened with the old one.
#[derive(Clone)]
pub(crate) struct Sessions {
    conn: RedisConn,
    prefix: String,
    token_digest: String,
}

impl Sessions {
    pub(crate) fn new(conn: RedisConn, redis_prefix: &str, admin_token: &str) -> Sessions {
        Sessions {
            conn,
            prefix: format!("{redis_prefix}:session:"),
            token_digest: hex(&sha256(
                format!("apiproxy-session:{admin_token}").as_bytes(),
            )),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, hex(&sha256(id.as_bytes())))
    }

    /// A new session; returns the id for the cookie.
    pub(crate) async fn create(&self) -> redis::RedisResult<String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "system random number generator failed",
            ))
        })?;
        let id = hex(&bytes);
        let mut conn = self.conn.clone();
        let _: () = conn
            .set_ex(self.key(&id), &self.token_digest, SESSION_TTL.as_secs())
            .await?;
        Ok(id)
    }

    pub(crate) async fn is_valid(&self, id: &str) -> redis::RedisResult<bool> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let stored: Option<String> = conn.get(self.key(id)).await?;
        Ok(stored.is_some_and(|d| d == self.token_digest))
    }

    pub(crate) async fn delete(&self, id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.del(self.key(id)).await
    }
}

/// After 10 failed logins from one address within a minute, every login
/// from it is refused until that minute has passed.
#[derive(Default)]
pub(crate) struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl LoginLimiter {
    /// `Err(seconds)` to wait when the address is locked out.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let map = self.failures.lock().expect("limiter lock");
        match map.get(&ip) {
            Some((start, n)) if *n >= LOGIN_MAX_FAILURES && start.elapsed() < LOGIN_WINDOW => {
                Err((LOGIN_WINDOW - start.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("limiter lock");
        // Forget windows that are over, so the map stays small.
        map.retain(|_, (start, _)| start.elapsed() < LOGIN_WINDOW);
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_matches_only_itself() {
        let s = Secret::new("a-very-long-admin-token");
        assert!(s.matches("a-very-long-admin-token"));
        for other in [
            "",
            "a",
            "a-very-long-admin-toke",
            "a-very-long-admin-token ",
            "A-very-long-admin-token",
        ] {
            assert!(!s.matches(other), "{other:?}");
        }
    }

    #[test]
    fn ten_failures_lock_an_address_out() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..9 {
            l.failed(ip);
        }
        assert!(l.check(ip).is_ok());
        l.failed(ip);
        let wait = l.check(ip).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.check("10.0.0.2".parse().unwrap()).is_ok());
    }
}
