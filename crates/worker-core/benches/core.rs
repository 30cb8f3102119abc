#![allow(missing_docs)] // criterion_group! generates undocumented items.
#![allow(clippy::many_single_char_names)] // criterion-style short names in a benchmark.
//! Benchmarks of the state machine: the cost of one single-key change (observe,
//! soak, commit) with workloads of 1,000 / 10,000 / 100,000 items. The cost must
//! not grow linearly with the workload.
//!
//! Run: `cargo bench -p worker-core --bench core`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use worker_core::machine::{Action, Machine, Timing};
use worker_core::{KvChange, KvEntry, Leader, Snapshot, WatchEvent};

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

criterion_group!(benches, single_key_change, consul_style_snapshot);
criterion_main!(benches);
