//! The routing table at 10 to 100,000 mappings:
//! - a lookup must not grow with the number of mappings (one map probe per
//!   path segment);
//! - one announced change must cost O(log n), not a copy of the table
//!   (≤ 50 µs at 50,000 mappings);
//! - a mapping must hold at most 300 bytes of memory (no request yet: no
//!   stats, no parsed upstream);
//! - a full build of 100,000 mappings, as at boot.
//!
//! `cargo bench -p apiproxy-dataplane --bench routes`

use std::hint::black_box;
use std::time::Instant;

use apiproxy_dataplane::Snapshot;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Typical of a gateway: many prefixes, some upstream hosts, base paths.
fn entries(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("/team{i}/openai"),
                format!("https://upstream{}.example.com/v1", i % 100),
            )
        })
        .collect()
}

fn snapshot(n: usize) -> Snapshot {
    Snapshot::build(entries(n), 1)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let s = snapshot(n);
        // A typical API path three segments below its prefix, and a miss.
        let hit = format!("/team{}/openai/chat/completions/x", n / 2);
        group.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, path| {
            b.iter(|| black_box(s.lookup(black_box(path)).is_some()))
        });
        group.bench_with_input(
            BenchmarkId::new("miss", n),
            "/nothing/here/at/all",
            |b, path| b.iter(|| black_box(s.lookup(black_box(path)).is_none())),
        );
    }
    group.finish();
}

/// One announced change: a new target for an existing prefix, as the
/// Redis follower applies it (the old snapshot stays alive meanwhile, as
/// it does while requests hold it).
fn change(c: &mut Criterion) {
    let mut group = c.benchmark_group("change");
    for n in [10usize, 1_000, 10_000, 50_000, 100_000] {
        let s = snapshot(n);
        let prefix = format!("/team{}/openai", n / 2);
        group.bench_with_input(BenchmarkId::from_parameter(n), &prefix, |b, prefix| {
            b.iter(|| black_box(s.with_change(prefix, Some("https://moved.example.com/v2"), 2)))
        });
    }
    group.finish();
}

/// Bytes a snapshot keeps per mapping, and the time to build 100,000.
fn memory_and_build(_: &mut Criterion) {
    for n in [1_000usize, 10_000, 100_000] {
        let input = entries(n);
        let region = Region::new(GLOBAL);
        let started = Instant::now();
        let s = Snapshot::build(input.iter().map(|(p, t)| (p, t)), 1);
        let took = started.elapsed();
        let change = region.change();
        let kept = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
        println!(
            "routes/memory/{n}: {kept} bytes kept: {:.1} bytes a mapping; built in {:.1} ms ({} routes)",
            kept as f64 / n as f64,
            took.as_secs_f64() * 1e3,
            s.len()
        );
    }
}

criterion_group!(benches, lookup, change, memory_and_build);
criterion_main!(benches);
