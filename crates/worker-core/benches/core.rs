#![allow(missing_docs)] // criterion_group! generates undocumented items.
#![allow(clippy::many_single_char_names)] // criterion-style short names in a benchmark.
//! Benchmarks of the state machine: the cost of one single-key change (observe,
//! soak, commit) with workloads of 1,000 / 10,000 / 100,000 items. The cost must
//! not grow linearly with the workload. And the memory store's cost of one write
//! with 10 / 100 / 1,000 other members' watches open: it must not grow with them.
//!
//! Run: `cargo bench -p kv-coordinator-worker --bench core`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use worker_core::machine::{Action, Machine, Timing};
use worker_core::{KvChange, KvEntry, KvWatch, Leader, MemoryStore, Snapshot, WatchEvent};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn synced(n: usize) -> (Machine, Instant) {
    let timing = Timing::default();
    let mut m = Machine::new("svc/assignments/", "m1", timing, 1).unwrap();
    let now = Instant::now();
    m.handle_leader(
        now,
        Some(Leader {
            id: "L".into(),
            term: 1,
            name: None,
        }),
    );
    let entries = (0..n)
        .map(|i| {
            KvEntry::new(
                format!("svc/assignments/m1/work-{i:07}"),
                Bytes::from_static(b"params"),
            )
        })
        .collect();
    m.handle_list(
        now,
        &Snapshot {
            revision: 1,
            entries,
        },
    );
    let now = now + timing.soak;
    m.handle_timeout(now);
    while m.poll().is_some() {}
    assert!(m.is_synced());
    (m, now)
}

fn change(m: &mut Machine, now: &mut Instant, rev: &mut u64, c: KvChange) -> usize {
    *rev += 1;
    m.handle_watch(
        *now,
        WatchEvent::Changes {
            revision: *rev,
            changes: vec![c],
        },
    );
    *now += Duration::from_millis(500);
    m.handle_timeout(*now);
    let mut published = 0;
    while let Some(a) = m.poll() {
        if let Action::Publish(c) = a {
            published += c.added.len() + c.removed.len();
        }
    }
    published
}

fn single_key_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_key_change");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let (mut m, mut now) = synced(n);
        let mut rev = 1;
        let key = "svc/assignments/m1/new-item";
        g.bench_with_input(BenchmarkId::new("etcd_style_event", n), &n, |b, _| {
            b.iter(|| {
                // One add and one remove, each observed, soaked and committed.
                let a = change(
                    &mut m,
                    &mut now,
                    &mut rev,
                    KvChange::Put(KvEntry::new(key, Bytes::from_static(b"v"))),
                );
                let d = change(
                    &mut m,
                    &mut now,
                    &mut rev,
                    KvChange::Delete { key: key.into() },
                );
                assert_eq!(a + d, 2);
            });
        });
    }
    g.finish();
}

fn consul_style_snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("full_snapshot_diff");
    g.sample_size(10);
    for n in SIZES {
        let (mut m, now) = synced(n);
        let mut entries: Vec<KvEntry> = (0..n)
            .map(|i| {
                KvEntry::new(
                    format!("svc/assignments/m1/work-{i:07}"),
                    Bytes::from_static(b"params"),
                )
            })
            .collect();
        entries.push(KvEntry::new(
            "svc/assignments/m1/new-item",
            Bytes::from_static(b"v"),
        ));
        let snap = WatchEvent::Snapshot(Snapshot {
            revision: 2,
            entries,
        });
        g.bench_with_input(BenchmarkId::new("consul_style_answer", n), &n, |b, _| {
            b.iter(|| {
                m.handle_watch(now, snap.clone());
                m.handle_watch(
                    now,
                    WatchEvent::Lost {
                        reason: String::new(),
                    },
                );
                while m.poll().is_some() {}
            });
        });
    }
    g.finish();
}

/// One write under member 0's prefix, delivered to member 0's watch, while
/// `n` other members' watches wait on the same store.
fn memory_store_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_store_write");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(3));
    for n in [10usize, 100, 1_000] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = MemoryStore::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        rt.block_on(async {
            for m in 0..=n {
                let mut w = store.watch(&format!("svc/m{m}/"), 0).await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    while w.next().await.is_ok() {
                        if m == 0 && tx.send(()).is_err() {
                            return;
                        }
                    }
                });
            }
            tokio::task::yield_now().await;
        });
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("watches", n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                store.put(format!("svc/m0/w{}", i % 1000), "v");
                rt.block_on(rx.recv()).unwrap();
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    single_key_change,
    consul_style_snapshot,
    memory_store_write
);
criterion_main!(benches);
