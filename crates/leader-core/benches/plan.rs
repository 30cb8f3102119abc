#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Benchmarks of the planner: 10 members × 1,000 items, 100 × 10,000 and 1,000 × 100,000,
//! each starting from a balanced assignment, for one member joining and one member dying,
//! plus the no-change replan a new leader makes. Each sample includes the whole `plan()` call
//! (quotas, sheds, placement, the new `BTreeMap` and the revoke/assign diff).
//!
//! Run: `cargo bench -p kv-coordinator-leader --bench plan`

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use leader_core::{plan, Assignment, MemberId};
use worker_core::WorkId;

const SIZES: [(usize, usize); 3] = [(10, 1_000), (100, 10_000), (1_000, 100_000)];

fn setup(m: usize, n: usize) -> (BTreeSet<WorkId>, BTreeMap<MemberId, u32>, Assignment) {
    let items: BTreeSet<WorkId> = (0..n).map(|i| Arc::from(format!("work-{i:07}"))).collect();
    let members: BTreeMap<MemberId, u32> = (0..m)
        .map(|i| (Arc::from(format!("member-{i:04}")), 1))
        .collect();
    let current = plan(&items, &members, &Assignment::new()).assignment;
    (items, members, current)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for (m, n) in SIZES {
        let (items, members, current) = setup(m, n);
        let label = format!("{m}x{n}");
        g.throughput(Throughput::Elements(n as u64));

        let mut joined = members.clone();
        joined.insert(Arc::from("member-joiner"), 1);
        g.bench_with_input(BenchmarkId::new("join", &label), &joined, |b, joined| {
            b.iter(|| plan(&items, joined, &current));
        });

        let mut died = members.clone();
        died.remove(&*format!("member-{:04}", m / 2));
        g.bench_with_input(BenchmarkId::new("die", &label), &died, |b, died| {
            b.iter(|| plan(&items, died, &current));
        });

        g.bench_with_input(BenchmarkId::new("same", &label), &members, |b, members| {
            b.iter(|| plan(&items, members, &current));
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
