//! Routing lookup cost at 10, 1,000 and 10,000 mappings: it must not grow
//! with the number of mappings (one hash probe per path segment).
//!
//! `cargo bench -p apiproxy-dataplane --bench lookup`

use std::hint::black_box;

use apiproxy_dataplane::Metrics;
use apiproxy_dataplane::Snapshot;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn snapshot(n: usize, metrics: &Metrics) -> Snapshot {
    let entries: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("/svc{i}/v1"),
                format!("https://upstream{i}.example.com/api"),
            )
        })
        .collect();
    Snapshot::build(
        entries.iter().map(|(p, t)| (p.as_str(), t.as_str())),
        1,
        metrics,
    )
}

fn lookup(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("lookup");
    for n in [10usize, 1_000, 10_000] {
        let s = snapshot(n, &metrics);
        // A typical API path three segments below its prefix, and a miss.
        let hit = format!("/svc{}/v1/chat/completions/x", n / 2);
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

criterion_group!(benches, lookup);
criterion_main!(benches);
