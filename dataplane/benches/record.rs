//! Cost of recording one request (in-flight gauge, TTFB, status, latency:
//! what every proxied request does) while a second thread records on the
//! same prefix the whole time, and the allocations it makes (must be 0).
//!
//! `cargo bench -p apiproxy-dataplane --bench record`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use apiproxy_dataplane::{Outcome, RequestRecord};
use apiproxy_dataplane::{PrefixStats, StatsRegistry};
use criterion::{criterion_group, criterion_main, Criterion};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// What every proxied request records, given its prefix's handle: start
/// (in flight), head (TTFB), finish (status, latency).
fn record_one(stats: &PrefixStats, start: Instant) {
    stats.start();
    stats.ttfb(start.elapsed());
    stats.finish(black_box(200), Outcome::Completed, start.elapsed());
}

/// The same through a [`RequestRecord`], which owns a clone of the
/// prefix's `Arc`: that reference count is shared by both threads.
fn record_owned(stats: &Arc<PrefixStats>) {
    let mut r = RequestRecord::start(stats.clone(), tokio::time::Instant::now());
    r.head(black_box(200));
    r.finish(Outcome::Completed);
}

fn record(c: &mut Criterion) {
    // Two recording threads: the shards are sized for them, as the data
    // plane sizes them for its workers.
    let registry = StatsRegistry::new(2, true);
    let stats = registry.prefix("/openai");
    let stop = Arc::new(AtomicBool::new(false));
    let rival = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                record_owned(&stats);
                n += 1;
            }
            n
        })
    };

    let start = Instant::now();
    c.bench_function("record_one_request/2_threads_same_prefix", |b| {
        b.iter(|| record_one(&stats, start))
    });
    c.bench_function(
        "record_one_request_with_arc_clone/2_threads_same_prefix",
        |b| b.iter(|| record_owned(&stats)),
    );

    let region = Region::new(GLOBAL);
    for _ in 0..100_000 {
        record_owned(&stats);
    }
    let allocs = region.change();
    stop.store(true, Ordering::Relaxed);
    let rival_records = rival.join().unwrap();
    println!(
        "allocations over 100,000 recordings: {} (bytes {}); the rival thread recorded {rival_records}",
        allocs.allocations, allocs.bytes_allocated
    );
    assert_eq!(allocs.allocations, 0, "recording must not allocate");
    let t = stats.read();
    assert!(t.requests() >= 100_000 + rival_records);
}

criterion_group!(benches, record);
criterion_main!(benches);
