//! The control plane's one Redis connection, shared by every request:
//! made lazily (the control plane starts, and reports not-ready, while
//! Redis is down) and replaced by itself when it breaks.
//!
//! One server: the redis crate's `ConnectionManager`, which reconnects to
//! that server. A Sentinel set: a connection to the master the sentinels
//! name; when it breaks (or the server turned replica and refuses a
//! write), it is dropped, and the next command asks the sentinels again,
//! so writes resume on the new master after a failover. The command that
//! met the break fails (503), as with a `ConnectionManager`: it is not
//! sent twice.

use std::sync::Arc;
use std::time::Duration;

use apiproxy_shared::RedisTarget;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind,
    Value,
};
use tokio::sync::Mutex;

/// A Redis connection for the whole control plane; clones share it.
#[derive(Clone)]
pub struct RedisConn(Conn);

#[derive(Clone)]
enum Conn {
    Server(ConnectionManager),
    Sentinel(Arc<Follower>),
}

impl RedisConn {
    /// Every command's connect and response time are bounded by `timeout`.
    pub(crate) fn new(target: RedisTarget, timeout: Duration) -> redis::RedisResult<RedisConn> {
        if let Some(client) = target.server() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2);
            let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
            return Ok(RedisConn(Conn::Server(manager)));
        }
        Ok(RedisConn(Conn::Sentinel(Arc::new(Follower {
            db: target.db(),
            target,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            current: Mutex::new(Current::default()),
        }))))
    }
}

/// The master connection of a Sentinel target.
struct Follower {
    target: RedisTarget,
    db: i64,
    config: AsyncConnectionConfig,
    current: Mutex<Current>,
}

/// The connection, numbered: a failure drops it only if no newer one
/// replaced it meanwhile.
#[derive(Default)]
struct Current {
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

impl Follower {
    /// The connection, made now (the sentinels asked) when there is none.
    /// Concurrent callers wait for one lookup rather than each making one.
    async fn connection(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.current.lock().await;
        if let Some(conn) = &current.conn {
            return Ok((current.generation, conn.clone()));
        }
        let client = self.target.client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        current.generation += 1;
        current.conn = Some(conn.clone());
        tracing::info!("connected to the Redis master the sentinels name");
        Ok((current.generation, conn))
    }

    /// After `result` of a command on connection `generation`: drops the
    /// connection when the error says it no longer reaches a master.
    async fn check<T>(&self, generation: u64, result: &redis::RedisResult<T>) {
        let Err(e) = result else { return };
        if !lost_master(e) {
            return;
        }
        let mut current = self.current.lock().await;
        if current.generation == generation && current.conn.take().is_some() {
            tracing::warn!(error = %e, "lost the Redis master; asking the sentinels again");
        }
    }
}

/// The connection is broken, timed out, or reaches a server that is no
/// longer the master (it refuses writes as a replica).
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Sentinel(follower) => Box::pin(async move {
                let (generation, mut conn) = follower.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                follower.check(generation, &result).await;
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(follower) => Box::pin(async move {
                let (generation, mut conn) = follower.connection().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                follower.check(generation, &result).await;
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Conn::Server(conn) => conn.get_db(),
            Conn::Sentinel(follower) => follower.db,
        }
    }
}
