//! A `Changes` subscriber that stops reading is bounded: its queue holds at
//! most `CHANGES_QUEUE` changes, the newest coalesced, and applying what it
//! holds in order still ends at the settled workload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use worker_core::{
    MemoryStore, WorkId, Worker, WorkerConfig, Workload, WorkloadChange, CHANGES_QUEUE,
};

const P: &str = "svc/assignments/";

/// The change from `a` to `b`.
fn diff(a: &Workload, b: &Workload, revision: u64) -> WorkloadChange {
    let mut c = WorkloadChange::default();
    c.revision = revision;
    for (id, v) in b {
        match a.get(id) {
            None => c.added.push((id.clone(), v.clone())),
            Some(old) if old != v => c.changed.push((id.clone(), v.clone())),
            Some(_) => {}
        }
    }
    c.removed = a
        .keys()
        .filter(|id| !b.contains_key(*id))
        .cloned()
        .collect();
    c
}

fn workload(pairs: &BTreeMap<u8, u8>) -> Workload {
    pairs
        .iter()
        .map(|(k, v)| (WorkId::from(format!("w{k}")), Bytes::from(vec![*v])))
        .collect()
}

proptest! {
    /// `a.then(b)` applied to a workload is `a` then `b` applied to it.
    #[test]
    fn then_composes_changes(states in prop::collection::vec(
        prop::collection::btree_map(0u8..6, 0u8..3, 0..6), 2..8)) {
        let states: Vec<Workload> = states.iter().map(workload).collect();
        let changes: Vec<WorkloadChange> = states
            .windows(2)
            .enumerate()
            .map(|(i, w)| diff(&w[0], &w[1], i as u64 + 1))
            .collect();
        let composed = changes
            .iter()
            .cloned()
            .reduce(WorkloadChange::then)
            .expect("at least one");
        let mut applied = states[0].clone();
        composed.apply_to(&mut applied);
        prop_assert_eq!(&applied, states.last().expect("last"));
        prop_assert_eq!(composed.revision, changes.len() as u64);
        // Each id is in one list at most.
        let mut ids: Vec<&WorkId> = composed
            .added
            .iter()
            .map(|(id, _)| id)
            .chain(&composed.removed)
            .chain(composed.changed.iter().map(|(id, _)| id))
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), n);
    }
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_stops_reading_is_bounded() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let config = WorkerConfig::new("m1").prefix(P);
    let w = Worker::spawn_seeded(&config, Arc::new(store.clone()), Arc::new(store.clone()), 5)
        .expect("spawn");
    w.ready().await.expect("ready");
    let mut slow = w.changes();
    let first = slow.next().await.expect("the initial change");
    let mut held = Workload::new();
    first.apply_to(&mut held);
    // 3 × the queue's size of settled changes, none of them read.
    let mut watch = w.watch();
    for i in 0..3 * CHANGES_QUEUE {
        store.put(format!("{P}m1/w{}", i % 7), format!("v{i}"));
        if i % 3 == 0 {
            store.delete(format!("{P}m1/w{}", (i + 2) % 7));
        }
        tokio::time::timeout(Duration::from_secs(60), watch.changed())
            .await
            .expect("a settled change within a minute")
            .expect("not halted");
    }
    let settled = w.workload();
    let mut queued = 0;
    while let Some(change) = slow.try_next() {
        change.apply_to(&mut held);
        queued += 1;
    }
    assert!(queued <= CHANGES_QUEUE, "{queued} queued");
    assert_eq!(
        &held, &*settled,
        "the queue still ends at the settled workload"
    );
    w.halt().await;
    assert!(slow.next().await.is_none(), "ends with the worker");
}

/// `Changes` is a `Stream`: the combinators of `StreamExt` read it, they see
/// the changes `next` would, and the stream ends when the worker halts.
#[tokio::test(start_paused = true)]
async fn changes_is_a_stream_that_ends_when_the_worker_halts() {
    use futures_util::StreamExt;

    let store = MemoryStore::new();
    store.set_leader("L");
    let config = WorkerConfig::new("m1").prefix(P);
    let w = Worker::spawn_seeded(&config, Arc::new(store.clone()), Arc::new(store.clone()), 5)
        .expect("spawn");
    let changes = w.changes();
    store.put(format!("{P}m1/a"), "1");
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut added = changes.filter(|c| std::future::ready(!c.added.is_empty()));
        let first = added.next().await;
        (first, added)
    })
    .await
    .expect("a change within the bound");
    let (first, added) = first;
    let first = first.expect("a change adding the item");
    assert_eq!(&*first.added[0].0, "a");
    store.put(format!("{P}m1/b"), "2");
    w.halt().await;
    // Halted: whatever was queued, then the end.
    let rest: Vec<WorkloadChange> =
        tokio::time::timeout(std::time::Duration::from_secs(30), added.collect())
            .await
            .expect("the stream ends once the worker halted");
    assert!(rest.iter().all(|c| c.removed.is_empty()), "{rest:?}");
}
