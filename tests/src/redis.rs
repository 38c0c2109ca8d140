//! A real `redis-server` per test, on its own free port, and a TCP chaos
//! proxy that can cut and restore the link to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiproxy_shared::{RedisKeys, UpdateMessage, UpdateOp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{free_port, TempDir};

/// Whether the `redis-server` `child`, logging to `log`, came to listen
/// (within 5 s). A connection to its port proves nothing: when another
/// process took the port first, the connection reaches that one while
/// Redis fails to bind and exits. So its log is read: it says it is ready
/// only once it listens.
fn wait_until_listening(child: &mut Child, log: &std::path::Path, ready: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited: port taken
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(ready) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A `redis-server` child process; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// Extra `redis-server` arguments (auth, TLS).
    args: Vec<String>,
    /// A configuration file, read as it is: persistence is left as it says.
    config: Option<PathBuf>,
    tls: bool,
    /// `redis-server --sentinel`: a Sentinel from `config`.
    sentinel: bool,
    /// Certificate files of a TLS server, removed with it.
    _files: Option<TempDir>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[], false)
    }

    /// Starts with extra arguments, e.g. `["--requirepass", "pw"]`. With
    /// `tls`, the port is a TLS port (the arguments must name the files).
    pub fn start_with(args: &[&str], tls: bool) -> RedisServer {
        RedisServer::start_in(TempDir::new("redis"), None, args, tls)
    }

    /// Starts from the configuration file `conf` (its text), as a
    /// deployment would mount it; only the address, the data directory and
    /// the log file are given on the command line.
    pub fn start_with_config(conf: &str) -> RedisServer {
        let dir = TempDir::new("redis");
        let file = dir.path("redis.conf");
        std::fs::write(&file, conf).expect("write redis.conf");
        RedisServer::start_in(dir, Some(file), &[], false)
    }

    /// A Sentinel (`redis-server <conf> --sentinel`, plus `args`) from the
    /// configuration file `conf` (its text), as a deployment would mount
    /// it; it rewrites the file, which is its own copy.
    pub fn start_sentinel(conf: &str, args: &[&str]) -> RedisServer {
        let dir = TempDir::new("sentinel");
        let file = dir.path("sentinel.conf");
        std::fs::write(&file, conf).expect("write sentinel.conf");
        let mut server = RedisServer::unstarted(dir, Some(file), args, false);
        server.sentinel = true;
        server.start_on_a_free_port()
    }

    fn start_in(dir: TempDir, config: Option<PathBuf>, args: &[&str], tls: bool) -> RedisServer {
        RedisServer::unstarted(dir, config, args, tls).start_on_a_free_port()
    }

    fn unstarted(dir: TempDir, config: Option<PathBuf>, args: &[&str], tls: bool) -> RedisServer {
        RedisServer {
            child: None,
            port: 0,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            config,
            tls,
            sentinel: false,
            _files: None,
        }
    }

    fn start_on_a_free_port(self) -> RedisServer {
        let mut server = self;
        // Redis has no "port 0": pick a free port; retry if another process
        // takes it between our probe and Redis's bind.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? `apt-get install redis-server`)");
    }

    /// A replica of `primary`, returned once its first sync finished
    /// (within 10 s).
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let replica = RedisServer::start_with(
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
            false,
        );
        let log = replica.dir.path("redis.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("MASTER <-> REPLICA sync: Finished with success")
        {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// A `redis-server --sentinel` watching `primary` as the master
    /// `name`, with a quorum of 2: a master silent for 1 s is down, and a
    /// failover may be retried after 5 s.
    pub fn start_sentinel_watching(primary: &RedisServer, name: &str) -> RedisServer {
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n",
            port = primary.port
        );
        RedisServer::start_sentinel(&conf, &[])
    }

    /// A TLS-only server with a certificate for `localhost` from `ca`.
    pub fn start_tls(ca: &crate::tls::TestCa) -> RedisServer {
        let dir = TempDir::new("redis-tls");
        let (cert, key, ca_file) = (
            dir.path("cert.pem"),
            dir.path("key.pem"),
            dir.path("ca.pem"),
        );
        std::fs::write(&cert, &ca.server_cert_pem).unwrap();
        std::fs::write(&key, &ca.server_key_pem).unwrap();
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        let args = [
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca_file.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ];
        let mut server = RedisServer::start_with(&args, true);
        server._files = Some(dir);
        server
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let ports = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        let log = self.dir.path("redis.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new("redis-server");
        match &self.config {
            // The file comes first, the options after it override it.
            Some(file) => cmd.arg(file),
            None => cmd.args(["--save", "", "--appendonly", "no"]),
        };
        if self.sentinel {
            cmd.arg("--sentinel");
        }
        let child = cmd
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(&self.args)
            .args(["--dir", self.dir.0.to_str().unwrap()])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        // A Sentinel logs no "ready" line: its first monitor line comes
        // once it listens.
        let ready = if self.sentinel {
            "+monitor master"
        } else {
            "Ready to accept connections"
        };
        wait_until_listening(self.child.insert(child), &log, ready)
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}/", self.port)
        } else {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    /// The CA file a client needs for a TLS server.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self._files.as_ref().map(|d| d.path("ca.pem"))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: connections stay open and nothing is answered (a replica
    /// stops acknowledging) until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the server runs");
        crate::dataplane::send_signal(child.id(), sig);
    }

    /// Starts again on the same port and data directory: empty, unless it
    /// was started with persistence (`--appendonly yes`).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection with the given URL, trusting the test CA for TLS.
    pub async fn conn_to(&self, url: &str) -> redis::aio::MultiplexedConnection {
        let client = match self.ca_file() {
            Some(ca) => {
                let root_cert = Some(std::fs::read(ca).unwrap());
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert,
                    },
                )
                .unwrap()
            }
            None => redis::Client::open(url).unwrap(),
        };
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.conn_to(&self.url()).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes like the control plane does: change + version bump in one
/// transaction, then the announcement. Returns the new version.
pub async fn upsert(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    prefix: &str,
    target: &str,
) -> u64 {
    let version = upsert_unannounced(conn, keys, prefix, target).await;
    announce(conn, keys, version, UpdateOp::Upsert, Some(prefix)).await;
    version
}

/// [`upsert`]'s write (`HSET` and the version bump in one transaction)
/// without its announcement, as when the announcement is lost; returns
/// the new version.
pub async fn upsert_unannounced(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    prefix: &str,
    target: &str,
) -> u64 {
    let (version,): (u64,) = redis::pipe()
        .atomic()
        .hset(&keys.mappings, prefix, target)
        .ignore()
        .incr(&keys.version, 1)
        .query_async(conn)
        .await
        .unwrap();
    version
}

pub async fn delete(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    prefix: &str,
) -> u64 {
    let (version,): (u64,) = redis::pipe()
        .atomic()
        .hdel(&keys.mappings, prefix)
        .ignore()
        .incr(&keys.version, 1)
        .query_async(conn)
        .await
        .unwrap();
    announce(conn, keys, version, UpdateOp::Delete, Some(prefix)).await;
    version
}

/// Writes (`Some`) or removes (`None`) the field `field` of the hash
/// `hash` with a version bump, as the control plane writes a proxy key or
/// a policy, and announces it (`op` `Key`: `field` is the key id; `Policy`:
/// the prefix). Returns the new version.
pub async fn put_gate_entry(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    op: UpdateOp,
    field: &str,
    value: Option<&str>,
) -> u64 {
    let hash = match op {
        UpdateOp::Key => &keys.keys,
        _ => &keys.policies,
    };
    let mut pipe = redis::pipe();
    pipe.atomic();
    match value {
        Some(v) => pipe.hset(hash, field, v).ignore(),
        None => pipe.hdel(hash, field).ignore(),
    };
    let (version,): (u64,) = pipe.incr(&keys.version, 1).query_async(conn).await.unwrap();
    let message = match op {
        UpdateOp::Key => UpdateMessage::key(version, field),
        _ => UpdateMessage::policy(version, field),
    };
    publish(conn, keys, &message.to_json()).await;
    version
}

async fn announce(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    version: u64,
    op: UpdateOp,
    prefix: Option<&str>,
) {
    let message = UpdateMessage::mapping(version, op, prefix);
    let _: () = redis::cmd("PUBLISH")
        .arg(&keys.updates)
        .arg(message.to_json())
        .query_async(conn)
        .await
        .unwrap();
}

/// Writes the Go version's way: the hash only, no version bump, no
/// announcement (see [`publish`]).
pub async fn hset_plain(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    prefix: &str,
    target: &str,
) {
    let _: () = redis::cmd("HSET")
        .arg(&keys.mappings)
        .arg(prefix)
        .arg(target)
        .query_async(conn)
        .await
        .unwrap();
}

/// Deletes from the hash only, like an operator at `redis-cli`.
pub async fn hdel_plain(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    prefix: &str,
) {
    let _: () = redis::cmd("HDEL")
        .arg(&keys.mappings)
        .arg(prefix)
        .query_async(conn)
        .await
        .unwrap();
}

/// Publishes a raw payload on the updates channel (the Go version sends
/// `mapping_added`).
pub async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    payload: &str,
) {
    let _: () = redis::cmd("PUBLISH")
        .arg(&keys.updates)
        .arg(payload)
        .query_async(conn)
        .await
        .unwrap();
}

/// A TCP proxy in front of a server; `cut()` drops every connection and
/// refuses new ones until `restore()`.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut_tx: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(target: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let flag = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cut_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        ChaosProxy {
            addr,
            up,
            cut_tx,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut_tx.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
