//! The gate with 10, 1,000 and 100,000 proxy keys: the cost of admitting a
//! keyed request (hash of the key, lookup, credential) must not grow with
//! the keys, one key change must cost O(log n), and a key must hold at
//! most 200 bytes of the data plane's memory.
//!
//! `cargo bench -p apiproxy-dataplane --bench gate`

use std::hint::black_box;

use apiproxy_dataplane::Gate;
use apiproxy_shared::access::{
    key_hash, key_hash_hex, key_id_of, Access, CredentialPlace, KeyRecord, SecretsKey,
    StoredCredential, StoredPolicy,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 3] = [10, 1_000, 100_000];

fn secret(i: usize) -> String {
    format!("apx-bench-secret-{i:08}")
}

fn record(i: usize, enabled: bool) -> (String, String) {
    let id = key_id_of(&key_hash(secret(i).as_bytes()));
    let record = KeyRecord {
        id: id.clone(),
        name: format!("key {i}"),
        prefixes: None,
        enabled,
        expires_at: None,
        created_at: 1,
        sha256: key_hash_hex(secret(i).as_bytes()),
    };
    (id, serde_json::to_string(&record).unwrap())
}

fn policy(secrets: &SecretsKey) -> (String, String) {
    let stored = StoredPolicy {
        access: Access::Key,
        upstream_credential: Some(StoredCredential {
            place: CredentialPlace {
                header: Some("authorization".into()),
                template: Some("Bearer {secret}".into()),
                query: None,
            },
            sealed: secrets.seal("/openai", "sk-real-credential"),
            secret_hint: "…tial".into(),
        }),
    };
    ("/openai".into(), serde_json::to_string(&stored).unwrap())
}

fn gate(n: usize, secrets: &SecretsKey) -> Gate {
    let keys: Vec<_> = (0..n).map(|i| record(i, true)).collect();
    let (prefix, stored) = policy(secrets);
    Gate::default().build(&keys, [(&prefix, &stored)], Some(secrets))
}

fn admit_and_change(c: &mut Criterion) {
    let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
    let mut group = c.benchmark_group("gate");
    for n in SIZES {
        let g = gate(n, &secrets);
        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {}", secret(n / 2));
        headers.insert("authorization", HeaderValue::from_str(&bearer).unwrap());
        group.bench_with_input(BenchmarkId::new("admit", n), &headers, |b, h| {
            b.iter(|| {
                black_box(
                    g.admit(black_box("/openai"), &http::Method::POST, h, None, None)
                        .is_ok(),
                )
            })
        });
        let (id, disabled) = record(n / 2, false);
        group.bench_with_input(BenchmarkId::new("change", n), &disabled, |b, r| {
            b.iter(|| black_box(g.with_key(&id, Some(r))))
        });
    }
    group.finish();
}

/// Bytes the gate keeps per key: what building it left allocated, over
/// the keys (its input built beforehand, outside the measured region).
fn memory(_: &mut Criterion) {
    let secrets = SecretsKey::from_base64(&SecretsKey::generate()).unwrap();
    for n in SIZES {
        let keys: Vec<_> = (0..n).map(|i| record(i, true)).collect();
        let (prefix, stored) = policy(&secrets);
        let region = Region::new(GLOBAL);
        let g = Gate::default().build(&keys, [(&prefix, &stored)], Some(&secrets));
        let change = region.change();
        let kept = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
        let blocks = change.allocations as i64 - change.deallocations as i64;
        println!(
            "gate/memory/{n}: {kept} bytes in {blocks} blocks kept: {:.1} bytes and {:.2} blocks a key ({} keys)",
            kept as f64 / n as f64,
            blocks as f64 / n as f64,
            g.keys()
        );
        drop(g);
    }
}

criterion_group!(benches, admit_and_change, memory);
criterion_main!(benches);
