#![allow(missing_docs)] // criterion_group! generates undocumented items.
//! Benchmarks of the replica planner next to the single-owner `plan()`: 1,000 members in 3
//! zones × 100,000 items × 3 replicas, the first plan (from nothing), the re-plan after one
//! member dies and after one member joins, and `plan()` at 1,000 × 100,000 for the same steps;
//! and (group `replicas-small`) small inputs where the exact passes and the search over the
//! primaries run: 4 × 5, 10 × 100, 5 × 200 and 30 × 34 (members × items, 3 replicas, 3
//! zones), the first plan and the re-plan after one member dies. Each sample is one whole call
//! (flow, placement, the searches, the new maps and the key diff).
//!
//! Run: `cargo bench -p kv-coordinator-leader --bench replicas`

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leader_core::{plan, plan_replicas, Assignment, MemberId, ReplicaAssignment, ReplicaMember};
use worker_core::WorkId;

const MEMBERS: usize = 1_000;
const ITEMS: usize = 100_000;
const REPLICAS: u32 = 3;

fn bench(c: &mut Criterion) {
    let ids: Vec<WorkId> = (0..ITEMS)
        .map(|i| Arc::from(format!("work-{i:07}")))
        .collect();
    let items: BTreeMap<WorkId, u32> = ids.iter().map(|w| (w.clone(), REPLICAS)).collect();
    let set: BTreeSet<WorkId> = ids.iter().cloned().collect();
    let zones = ["zone-a", "zone-b", "zone-c"];
    let members: BTreeMap<MemberId, ReplicaMember> = (0..MEMBERS)
        .map(|i| {
            let m = ReplicaMember::new(1, Some(zones[i % 3]));
            (Arc::from(format!("member-{i:04}")), m)
        })
        .collect();
    let weights: BTreeMap<MemberId, u32> = members.keys().map(|m| (m.clone(), 1)).collect();
    let dead = format!("member-{:04}", MEMBERS / 2);
    let mut died = members.clone();
    died.remove(&*dead);
    let mut died_w = weights.clone();
    died_w.remove(&*dead);

    let mut joined = members.clone();
    joined.insert(
        Arc::from("member-joiner"),
        ReplicaMember::new(1, Some("zone-a")),
    );
    let mut joined_w = weights.clone();
    joined_w.insert(Arc::from("member-joiner"), 1);

    let first = plan_replicas(&items, &members, &ReplicaAssignment::new());
    let join = plan_replicas(&items, &joined, &first.state);
    eprintln!(
        "replica re-plan after a join: {} cold primaries, {} primaries changed, {} secondaries \
         moved, {} keys revoked, {} assigned",
        join.cold_primaries,
        join.primaries_changed,
        join.secondaries_moved,
        join.revoked.len(),
        join.assigned.len()
    );
    let after = plan_replicas(&items, &died, &first.state);
    eprintln!(
        "replica re-plan after a death: {} cold primaries, {} promotions, {} primaries changed, \
         {} secondaries moved, {} keys revoked, {} assigned",
        after.cold_primaries,
        after.promotions,
        after.primaries_changed,
        after.secondaries_moved,
        after.revoked.len(),
        after.assigned.len()
    );
    let single = plan(&set, &weights, &Assignment::new()).assignment;

    let mut g = c.benchmark_group("replicas");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(ITEMS as u64));
    g.bench_function("replicas/first/1000x100000x3", |b| {
        b.iter(|| plan_replicas(&items, &members, &ReplicaAssignment::new()));
    });
    g.bench_function("replicas/die/1000x100000x3", |b| {
        b.iter(|| plan_replicas(&items, &died, &first.state));
    });
    g.bench_function("replicas/join/1000x100000x3", |b| {
        b.iter(|| plan_replicas(&items, &joined, &first.state));
    });
    g.bench_function("single/first/1000x100000", |b| {
        b.iter(|| plan(&set, &weights, &Assignment::new()));
    });
    g.bench_function("single/die/1000x100000", |b| {
        b.iter(|| plan(&set, &died_w, &single));
    });
    g.bench_function("single/join/1000x100000", |b| {
        b.iter(|| plan(&set, &joined_w, &single));
    });
    g.finish();
}

/// Small inputs, where the exact passes run: `members` in 3 zones × `items` × 3 replicas,
/// the first plan and the re-plan after one member dies (each sample one whole call).
fn small(c: &mut Criterion) {
    let mut g = c.benchmark_group("replicas-small");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(3));
    for (members_n, items_n) in [(4usize, 5usize), (10, 100), (5, 200), (30, 34)] {
        let items: BTreeMap<WorkId, u32> = (0..items_n)
            .map(|i| (Arc::from(format!("work-{i:04}")), REPLICAS))
            .collect();
        let zones = ["zone-a", "zone-b", "zone-c"];
        let members: BTreeMap<MemberId, ReplicaMember> = (0..members_n)
            .map(|i| {
                let m = ReplicaMember::new(1, Some(zones[i % 3]));
                (Arc::from(format!("member-{i:02}")), m)
            })
            .collect();
        let first = plan_replicas(&items, &members, &ReplicaAssignment::new());
        let mut died = members.clone();
        died.remove(&*format!("member-{:02}", members_n / 2));
        let after = plan_replicas(&items, &died, &first.state);
        eprintln!(
            "{members_n} x {items_n} x 3, re-plan after a death: {} cold primaries, {} primaries \
             changed, {} secondaries moved",
            after.cold_primaries, after.primaries_changed, after.secondaries_moved
        );
        let tag = format!("{members_n}x{items_n}x3");
        g.bench_function(format!("replicas/first/{tag}"), |b| {
            b.iter(|| plan_replicas(&items, &members, &ReplicaAssignment::new()));
        });
        g.bench_function(format!("replicas/die/{tag}"), |b| {
            b.iter(|| plan_replicas(&items, &died, &first.state));
        });
    }
    g.finish();
}

criterion_group!(benches, bench, small);
criterion_main!(benches);
