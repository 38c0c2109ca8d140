//! Chaos under load: a whole cluster — Redis, the control plane, two data
//! planes — under steady client load while each dependency in turn is
//! killed or cut off. Not one proxied request may fail; after each fault
//! every live node must come back to the latest mappings; and at the end
//! `/stats` must hold exactly what each surviving node served. Only a node
//! killed with -9 may lose counts: those it had not pushed yet, a bounded
//! number.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiproxy_tests::client::get_reply;
use apiproxy_tests::controlplane::{stats, ControlPlane};
use apiproxy_tests::redis::{ChaosProxy, RedisServer};
use apiproxy_tests::upstream::{self, full, handler, Upstream};
use apiproxy_tests::{eventually, DataPlane};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// `API_PROXY_STATS_INTERVAL` of every node (the fixture's default).
const STATS_INTERVAL: Duration = Duration::from_millis(200);
/// One request per node this often: about 150 requests a second each.
const PACE: Duration = Duration::from_millis(7);
/// Bounds of each load task, whatever happens to the test.
const MAX_REQUESTS_PER_NODE: u64 = 15_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(90);
/// Requests each node must serve during a fault before it is lifted, so
/// every fault is really exercised under load.
const UNDER_FAULT: u64 = 200;
/// Longest wait for any recovery.
const RECOVERY: Duration = Duration::from_secs(15);

/// What the load saw, all nodes together.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: AtomicU64,
    max_latency_us: AtomicU64,
    /// The first few failures, for the assertion message.
    errors: Mutex<Vec<String>>,
}

/// Paced `GET /up/ok` requests to one node over a keep-alive connection
/// until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests this node answered correctly so far.
    ok: Arc<AtomicU64>,
    /// Returns when each answered request finished.
    task: tokio::task::JoinHandle<Vec<SystemTime>>,
}

impl Load {
    fn start(addr: SocketAddr, seen: Arc<Seen>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            async move {
                let deadline = Instant::now() + MAX_LOAD_TIME;
                let mut conn = None;
                let mut finished = Vec::new();
                let mut pace = tokio::time::interval(PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst)
                    && sent < MAX_REQUESTS_PER_NODE
                    && Instant::now() < deadline
                {
                    pace.tick().await;
                    sent += 1;
                    let start = Instant::now();
                    let result =
                        match tokio::time::timeout(Duration::from_secs(5), get_ok(&mut conn, addr))
                            .await
                        {
                            Ok(result) => result,
                            Err(_) => Err("no answer within 5 s".to_owned()),
                        };
                    let latency = start.elapsed().as_micros() as u64;
                    seen.max_latency_us.fetch_max(latency, Ordering::Relaxed);
                    match result {
                        Ok(()) => {
                            finished.push(SystemTime::now());
                            ok.fetch_add(1, Ordering::SeqCst);
                            seen.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            conn = None;
                            seen.failed.fetch_add(1, Ordering::SeqCst);
                            let mut errors = seen.errors.lock().unwrap();
                            if errors.len() < 10 {
                                errors.push(format!("{addr}: {e}"));
                            }
                        }
                    }
                }
                finished
            }
        });
        Load { stop, ok, task }
    }

    /// Stops after the request in progress; returns when each answered
    /// request finished.
    async fn finish(self) -> Vec<SystemTime> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task")
    }
}

/// One `GET /up/ok`, reconnecting if the last connection failed: `Ok` for
/// a 200 with the upstream's body.
async fn get_ok(
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
) -> Result<(), String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().expect("connected above");
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let req = Request::get("/up/ok")
        .header("host", "proxy.test")
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status == 200 && body == "/ok" {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// A data plane under load, and what it answered outside the load.
struct Node {
    id: &'static str,
    dp: DataPlane,
    load: Load,
    /// Routing checks sent to it (all answered 200, or the test failed).
    probes: u64,
}

impl Node {
    async fn start(id: &'static str, redis_url: &str, cp_url: &str, seen: &Arc<Seen>) -> Node {
        let dp = DataPlane::start_pushing(redis_url, cp_url, id, &[]);
        // Readiness on the metrics port: no proxied request goes unseen
        // by the count.
        eventually(&format!("{id} ready"), RECOVERY, || async {
            (dp.readyz().await == 200).then_some(())
        })
        .await;
        let load = Load::start(dp.addr, seen.clone());
        Node {
            id,
            dp,
            load,
            probes: 0,
        }
    }

    /// Stops the load; returns the node, when each load request finished,
    /// and how many requests the node served, checked against its own
    /// count.
    async fn stop(self) -> (&'static str, DataPlane, Vec<SystemTime>, u64) {
        let Node {
            id,
            dp,
            load,
            probes,
        } = self;
        let finished = load.finish().await;
        let served = finished.len() as u64 + probes;
        let counted: u64 = dp
            .metrics()
            .await
            .iter()
            .filter(|(k, _)| k.starts_with("apiproxy_requests_total{"))
            .map(|(_, v)| *v as u64)
            .sum();
        assert_eq!(counted, served, "{id} counted other than its clients saw");
        (id, dp, finished, served)
    }
}

/// Answers with the path it was asked for, so a client sees where a
/// mapping sent it.
async fn path_upstream() -> Upstream {
    upstream::http(handler(|req: Request<Incoming>| async move {
        Response::new(full(req.uri().path().to_owned()))
    }))
    .await
}

/// Points `/moving` at `{upstream}/{step}`; returns the new version.
async fn move_mapping(cp: &ControlPlane, up: &Upstream, step: &str) -> u64 {
    let target = format!("{}/{step}", up.url());
    let reply = cp
        .admin(
            "PUT",
            "/api/mappings/moving",
            Some(json!({ "target": target })),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["version"].as_u64().expect("version")
}

/// The control plane's node list by id.
async fn listed(cp: &ControlPlane) -> Vec<Value> {
    let reply = cp.admin("GET", "/api/nodes", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["nodes"].as_array().expect("nodes").clone()
}

fn find<'a>(listed: &'a [Value], id: &str) -> Option<&'a Value> {
    listed.iter().find(|n| n["node_id"] == id)
}

/// Waits until every node in `nodes` applies `version` (its own gauge) and
/// the control plane lists it `up` on that version with one config hash
/// for all; then each must route `/moving` to `step` at once. Returns the
/// time since `since`.
async fn converge(
    cp: &ControlPlane,
    nodes: &mut [Node],
    version: u64,
    step: &str,
    since: Instant,
) -> Duration {
    let view: &[Node] = nodes;
    eventually(
        &format!("every node on version {version}"),
        RECOVERY,
        || async {
            for n in view {
                if n.dp.metric("apiproxy_config_version").await != version as f64 {
                    return None;
                }
            }
            let listed = listed(cp).await;
            let mut hashes = Vec::new();
            for n in view {
                let entry = find(&listed, n.id)?;
                if entry["config_version"] != version || entry["state"] != "up" {
                    return None;
                }
                hashes.push(entry["config_hash"].clone());
            }
            assert!(
                hashes.windows(2).all(|w| w[0] == w[1]),
                "one version, several contents: {listed:?}"
            );
            Some(())
        },
    )
    .await;
    let took = since.elapsed();
    for n in nodes.iter_mut() {
        let reply = get_reply(n.dp.addr, "/moving/x").await;
        n.probes += 1;
        assert_eq!(reply.status, 200, "{}: {}", n.id, reply.text());
        assert_eq!(reply.text(), format!("/{step}/x"), "{} on {version}", n.id);
    }
    took
}

/// Waits until each node has served `n` more load requests than `from`.
async fn load_goes_on(nodes: &[Node], from: &[u64], n: u64, during: &str) {
    eventually(
        &format!("{n} requests per node during {during}"),
        RECOVERY,
        || async {
            nodes
                .iter()
                .zip(from)
                .all(|(node, from)| node.load.ok.load(Ordering::SeqCst) >= from + n)
                .then_some(())
        },
    )
    .await;
}

fn load_marks(nodes: &[Node]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| n.load.ok.load(Ordering::SeqCst))
        .collect()
}

/// Waits until every node's stats push failures grew by at least `n`
/// since `from`: the pushes are really failing.
async fn pushes_fail(nodes: &[Node], from: &[f64], n: f64, during: &str) {
    eventually(
        &format!("stats pushes failing during {during}"),
        RECOVERY,
        || async {
            for (node, from) in nodes.iter().zip(from) {
                if node.dp.metric("apiproxy_stats_push_failures_total").await < from + n {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

async fn push_failure_marks(nodes: &[Node]) -> Vec<f64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.dp.metric("apiproxy_stats_push_failures_total").await);
    }
    out
}

/// Waits until every node's `apiproxy_config_stale` reads `stale`. Longer
/// than `DataPlane::wait_metric` allows: after an outage of a few seconds
/// the node's reconnect backoff alone may be 3 s.
async fn wait_stale(nodes: &[Node], stale: f64) {
    eventually(&format!("config_stale {stale}"), RECOVERY, || async {
        for n in nodes {
            if n.dp.metric("apiproxy_config_stale").await != stale {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// One phase's figures: the load it saw and how long recovery took.
struct Phase {
    name: &'static str,
    at: Instant,
    ok: u64,
    failed: u64,
}

impl Phase {
    fn begin(name: &'static str, seen: &Seen) -> Phase {
        seen.max_latency_us.store(0, Ordering::SeqCst);
        Phase {
            name,
            at: Instant::now(),
            ok: seen.ok.load(Ordering::SeqCst),
            failed: seen.failed.load(Ordering::SeqCst),
        }
    }

    /// Prints the summary and fails the test if any request failed.
    fn end(self, seen: &Seen, recovery: &str) {
        let ok = seen.ok.load(Ordering::SeqCst) - self.ok;
        let failed = seen.failed.load(Ordering::SeqCst) - self.failed;
        println!(
            "{}: {:.1} s, {} requests, {failed} failed, max latency {:.1} ms; {recovery}",
            self.name,
            self.at.elapsed().as_secs_f64(),
            ok + failed,
            seen.max_latency_us.load(Ordering::SeqCst) as f64 / 1000.0,
        );
        assert_eq!(
            failed,
            0,
            "{}: requests failed: {:?}",
            self.name,
            seen.errors.lock().unwrap()
        );
        assert!(ok > 0, "{}: no load at all", self.name);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_under_load_fails_no_request_and_keeps_stats_exact() {
    let test_start = Instant::now();
    // Every write reaches the disk before Redis answers, so a kill -9
    // loses nothing acknowledged. The fixture keeps its data directory (a
    // TempDir) across restarts.
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false);
    let mut cp = ControlPlane::start_for_nodes(&redis.url(), 0);
    let cp_port = cp.addr.port();
    // The nodes reach Redis and the control plane only through these.
    let redis_link = ChaosProxy::start(redis.addr()).await;
    let cp_link = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], cp_port))).await;
    let (redis_url, cp_url) = (redis_link.url(), format!("http://{}", cp_link.addr));

    let up = path_upstream().await;
    for (prefix, target) in [
        ("/up", up.url()),
        ("/moving", format!("{}/setup", up.url())),
    ] {
        let reply = cp.create(prefix, &target).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let seen = Arc::new(Seen::default());
    let mut nodes = vec![
        Node::start("dp-1", &redis_url, &cp_url, &seen).await,
        Node::start("dp-2", &redis_url, &cp_url, &seen).await,
    ];
    converge(&cp, &mut nodes, 2, "setup", Instant::now()).await;

    // 1. Redis: kill -9, then back on the same port with its data.
    let phase = Phase::begin("1 Redis kill -9 and restart", &seen);
    let (loads, fails) = (load_marks(&nodes), push_failure_marks(&nodes).await);
    redis.kill();
    wait_stale(&nodes, 1.0).await;
    // The control plane cannot store batches: pushes fail meanwhile.
    pushes_fail(&nodes, &fails, 2.0, "the Redis outage").await;
    load_goes_on(&nodes, &loads, UNDER_FAULT, "the Redis outage").await;
    let down_for = phase.at.elapsed();
    redis.restart();
    let back = Instant::now();
    wait_stale(&nodes, 0.0).await;
    let resynced = back.elapsed();
    eventually("control plane ready again", RECOVERY, || async {
        (get_reply(cp.addr, "/readyz").await.status == 200).then_some(())
    })
    .await;
    let kept = cp.admin("GET", "/api/mappings", None).await.json();
    assert_eq!(kept["version"], 2, "Redis lost data in the kill: {kept}");
    assert_eq!(kept["count"], 2, "{kept}");
    let changed = Instant::now();
    let version = move_mapping(&cp, &up, "after-redis").await;
    assert_eq!(version, 3);
    let took = converge(&cp, &mut nodes, version, "after-redis", changed).await;
    phase.end(
        &seen,
        &format!(
            "Redis down {:.1} s, nodes re-read it {} ms after its restart, v{version} everywhere in {} ms",
            down_for.as_secs_f64(),
            resynced.as_millis(),
            took.as_millis()
        ),
    );

    // 2. The control plane: kill -9, then a new one on the same port.
    let phase = Phase::begin("2 control plane kill -9 and restart", &seen);
    let (loads, fails) = (load_marks(&nodes), push_failure_marks(&nodes).await);
    cp.kill();
    pushes_fail(&nodes, &fails, 2.0, "the control-plane outage").await;
    load_goes_on(&nodes, &loads, UNDER_FAULT, "the control-plane outage").await;
    let down_for = phase.at.elapsed();
    cp = ControlPlane::start_for_nodes(&redis.url(), cp_port);
    let changed = Instant::now();
    let version = move_mapping(&cp, &up, "after-controlplane").await;
    assert_eq!(version, 4);
    let took = converge(&cp, &mut nodes, version, "after-controlplane", changed).await;
    phase.end(
        &seen,
        &format!(
            "control plane down {:.1} s, v{version} everywhere in {} ms",
            down_for.as_secs_f64(),
            took.as_millis()
        ),
    );

    // 3. Both links cut: the nodes hear neither Redis nor the control
    // plane, which both keep running and take a change meanwhile.
    let phase = Phase::begin("3 links to Redis and control plane cut", &seen);
    let (loads, fails) = (load_marks(&nodes), push_failure_marks(&nodes).await);
    redis_link.cut();
    cp_link.cut();
    wait_stale(&nodes, 1.0).await;
    let version = move_mapping(&cp, &up, "after-cut").await;
    assert_eq!(version, 5);
    pushes_fail(&nodes, &fails, 2.0, "the cut").await;
    load_goes_on(&nodes, &loads, UNDER_FAULT, "the cut").await;
    // Cut off, every node still serves its last snapshot.
    for n in &mut nodes {
        assert_eq!(
            n.dp.metric("apiproxy_config_version").await,
            4.0,
            "{}",
            n.id
        );
        let reply = get_reply(n.dp.addr, "/moving/x").await;
        n.probes += 1;
        assert_eq!(reply.text(), "/after-controlplane/x", "{}", n.id);
    }
    let cut_for = phase.at.elapsed();
    redis_link.restore();
    cp_link.restore();
    let restored = Instant::now();
    let took = converge(&cp, &mut nodes, version, "after-cut", restored).await;
    wait_stale(&nodes, 0.0).await;
    phase.end(
        &seen,
        &format!(
            "cut {:.1} s, v{version} everywhere {} ms after the restore",
            cut_for.as_secs_f64(),
            took.as_millis()
        ),
    );

    // 4. A data plane: kill -9, and a replacement. Its traffic stops
    // first, as a balancer's would, so no request is in flight: what is
    // lost is only what it had not pushed yet.
    let phase = Phase::begin("4 data plane kill -9 and replacement", &seen);
    let (victim_id, mut victim, finished, victim_served) = nodes.remove(1).stop().await;
    victim.signal("KILL");
    let killed_at = SystemTime::now();
    assert!(victim.wait_exit(Duration::from_secs(5)).code().is_none());
    nodes.push(Node::start("dp-3", &redis_url, &cp_url, &seen).await);
    let changed = Instant::now();
    let version = move_mapping(&cp, &up, "after-replacement").await;
    assert_eq!(version, 6);
    let took = converge(&cp, &mut nodes, version, "after-replacement", changed).await;
    let loads = load_marks(&nodes);
    load_goes_on(&nodes, &loads, UNDER_FAULT, "the replacement").await;
    phase.end(
        &seen,
        &format!("v{version} on dp-1 and dp-3 in {} ms", took.as_millis()),
    );

    // The end: the survivors' counts exactly, the victim's up to its
    // last push.
    let mut survivors = Vec::new();
    for n in nodes {
        let (id, dp, _, served) = n.stop().await;
        survivors.push((id, served, dp));
    }
    let survivors_served: u64 = survivors.iter().map(|s| s.1).sum();
    let exact = Instant::now();
    let (s, victim_pushed, victim_seen) = eventually("cluster stats exact", RECOVERY, || async {
        let listed = listed(&cp).await;
        let s = stats(cp_port).await?;
        let total = s["total"].as_u64()?;
        assert!(
            total <= survivors_served + victim_served,
            "counted more than was served: {s}"
        );
        for (id, served, _) in &survivors {
            if find(&listed, id)?["requests_total"] != *served {
                return None;
            }
        }
        let victim = find(&listed, victim_id)?;
        let pushed = victim["requests_total"].as_u64()?;
        (total == survivors_served + pushed && victim["state"] == "down")
            .then(|| (s, pushed, victim["last_seen"].as_u64().unwrap_or(0)))
    })
    .await;
    let exact_after = exact.elapsed();
    assert_eq!(s["unmatched"], 0, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["cancelled"], 0, "{s}");
    let by_endpoint: u64 = s["endpoints"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(by_endpoint, s["total"], "{s}");
    // Three more batches from each survivor: nothing counted twice.
    let settled = unix_ms(SystemTime::now()) + 3 * STATS_INTERVAL.as_millis() as u64;
    eventually("three more batches", RECOVERY, || async {
        let listed = listed(&cp).await;
        survivors
            .iter()
            .all(|(id, _, _)| {
                find(&listed, id).is_some_and(|n| n["last_seen"].as_u64().unwrap() > settled)
            })
            .then_some(())
    })
    .await;
    let again = stats(cp_port).await.unwrap();
    assert_eq!(
        again["total"], s["total"],
        "changed after settling: {again}"
    );

    // The victim's loss: what it served in its last two push intervals
    // (the batch on its way may die with it), bounded here at three (a
    // loaded machine delays pushes by up to an interval) plus scheduling
    // slack; never more than it served.
    assert!(victim_pushed <= victim_served);
    let lost = victim_served - victim_pushed;
    let within = |window: Duration| {
        let from = killed_at - window;
        finished.iter().filter(|t| **t > from).count() as u64
    };
    let bound_window = 3 * STATS_INTERVAL + Duration::from_millis(100);
    let after_last_batch = finished
        .iter()
        .filter(|t| unix_ms(**t) > victim_seen)
        .count();
    println!(
        "{victim_id} killed: served {victim_served}, pushed {victim_pushed}, lost {lost}; \
         it served {} in the last {STATS_INTERVAL:?} and {} in the last {bound_window:?} \
         before the kill, {after_last_batch} after its last batch was applied",
        within(STATS_INTERVAL),
        within(bound_window),
    );
    assert!(victim_pushed > 0, "{victim_id} never pushed anything");
    assert!(
        lost <= within(bound_window),
        "{victim_id} lost {lost}, more than its last {bound_window:?} of traffic ({})",
        within(bound_window)
    );
    println!(
        "stats: total {} = dp-1 {} + dp-3 {} + dp-2 pushed {victim_pushed}, exact {} ms after \
         the load stopped; whole test {:.1} s",
        s["total"],
        survivors[0].1,
        survivors[1].1,
        exact_after.as_millis(),
        test_start.elapsed().as_secs_f64()
    );
    drop(redis_link);
    drop(cp_link);
}
