//! The tokio driver on the memory backend, with tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{timeout, Instant};
use worker_core::{
    Halted, KvStream, KvWatch, MemoryStore, Revision, Snapshot, StoreError, Worker, WorkerConfig,
    WorkerHandle,
};

const P: &str = "svc/assignments/";

fn spawn(store: &MemoryStore, config: &WorkerConfig) -> WorkerHandle {
    Worker::spawn_seeded(config, Arc::new(store.clone()), Arc::new(store.clone()), 5).unwrap()
}

fn config() -> WorkerConfig {
    WorkerConfig::new("m1").prefix(P)
}

fn names(w: &worker_core::Workload) -> Vec<String> {
    w.keys().map(ToString::to_string).collect()
}

#[tokio::test(start_paused = true)]
async fn ready_publishes_first_sync_after_soak() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "1");
    let w = spawn(&store, &config());
    let start = Instant::now();
    let workload = w.ready().await.unwrap();
    assert_eq!(names(&workload), ["a"]);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "first sync after one soak"
    );
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn empty_first_sync_is_published() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let w = spawn(&store, &config());
    assert!(w.ready().await.unwrap().is_empty());
    assert!(w.is_ready());
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_leader_and_settle() {
    let store = MemoryStore::new();
    store.put(format!("{P}m1/a"), "1");
    let w = spawn(&store, &config());
    assert!(
        timeout(Duration::from_secs(60), w.ready()).await.is_err(),
        "ready without a leader"
    );
    let t0 = Instant::now();
    store.set_leader("L");
    w.ready().await.unwrap();
    // leader_settle (5 s) after the leader appeared; the set was quiet long before.
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn changes_stream_added_removed_changed() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "1");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    let mut changes = w.changes();
    let init = changes.next().await.unwrap();
    assert!(init.initial);
    assert_eq!(init.added.len(), 1);

    store.put(format!("{P}m1/b"), "2");
    store.put(format!("{P}m1/a"), "1b");
    store.put(format!("{P}m10/x"), "no");
    let c = changes.next().await.unwrap();
    assert_eq!(c.added.len(), 1);
    assert_eq!(&*c.added[0].0, "b");
    assert_eq!(&*c.changed[0].0, "a");
    assert!(c.revision >= store.revision() - 1 && c.revision <= store.revision());

    store.delete(format!("{P}m1/a"));
    let c = changes.next().await.unwrap();
    assert_eq!(c.removed.len(), 1);
    assert_eq!(names(&w.workload()), ["b"]);
    w.halt().await;
    assert!(changes.next().await.is_none(), "stream ends at halt");
}

#[tokio::test(start_paused = true)]
async fn watch_awaits_next_change() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    let mut watch = w.watch();
    store.put(format!("{P}m1/z"), "1");
    let s = watch.changed().await.unwrap();
    assert_eq!(names(&s.workload), ["z"]);
    w.halt().await;
    assert!(watch.changed().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn outage_keeps_settled_set_and_recovers() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "1");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    let mut changes = w.changes();
    changes.next().await.unwrap();

    store.set_unavailable("down");
    // During 60 s of outage nothing is published and the set is kept.
    assert!(timeout(Duration::from_secs(60), changes.next())
        .await
        .is_err());
    assert_eq!(names(&w.workload()), ["a"]);
    let lists_during = store.stats().lists;
    store.set_available();
    store.put(format!("{P}m1/b"), "1");
    let c = timeout(Duration::from_secs(30), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*c.added[0].0, "b");
    assert!(c.removed.is_empty(), "nothing lost across the outage");
    // Backoff: over 60 s of outage the retries stayed few (cap 10 s).
    assert!(
        lists_during + store.stats().watches < 40,
        "{:?}",
        store.stats()
    );
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn compaction_while_running_relists() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "1");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    store.set_unavailable("cut off");
    store.delete(format!("{P}m1/a"));
    store.put(format!("{P}m1/c"), "1");
    store.compact(store.revision());
    store.set_available();
    let mut watch = w.watch();
    let s = timeout(Duration::from_secs(60), watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&s.workload), ["c"]);
    assert!(store.stats().lists >= 2, "relisted");
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn nothing_published_after_halt_returns() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    let mut watch = w.watch();
    store.put(format!("{P}m1/a"), "1"); // soak in flight
    let before = watch.current();
    w.halt().await;
    tokio::time::sleep(Duration::from_secs(10)).await; // paused clock: advance past the soak
    assert!(
        watch.changed().await.is_err(),
        "channel closed, nothing new"
    );
    assert!(watch.current().workload.is_empty());
    assert_eq!(watch.current().revision, before.revision);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_worker() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    let mut watch = w.watch();
    drop(w);
    assert!(timeout(Duration::from_secs(1), watch.changed())
        .await
        .unwrap()
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn halt_before_first_sync_ends_ready() {
    let store = MemoryStore::new();
    let w = spawn(&store, &config());
    let r = w.watch();
    w.halt().await;
    assert!(!r.current().ready);
}

#[tokio::test(start_paused = true)]
async fn many_workers_share_one_store() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let workers: Vec<_> = (0..50)
        .map(|i| {
            store.put(format!("{P}m{i}/w{i}"), "v");
            spawn(&store, &WorkerConfig::new(format!("m{i}")).prefix(P))
        })
        .collect();
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(names(&w.ready().await.unwrap()), [format!("w{i}")]);
    }
    for w in workers {
        w.halt().await;
    }
}

/// A store whose reads panic: the worker task dies with them.
struct PanickingKv;

#[async_trait]
impl KvWatch for PanickingKv {
    async fn list(&self, _prefix: &str) -> Result<Snapshot, StoreError> {
        panic!("deliberate panic in the store (test)");
    }

    async fn watch(
        &self,
        _prefix: &str,
        _after: Revision,
    ) -> Result<Box<dyn KvStream>, StoreError> {
        panic!("deliberate panic in the store (test)");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_task_ends_ready_and_changes_with_halted() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let w =
        Worker::spawn_seeded(&config(), Arc::new(PanickingKv), Arc::new(store.clone()), 5).unwrap();
    let mut before = w.changes();
    let mut watch = w.watch();
    assert_eq!(
        timeout(Duration::from_secs(60), w.ready()).await,
        Ok(Err(Halted)),
        "ready() must end when the worker task dies"
    );
    assert!(timeout(Duration::from_secs(60), before.next())
        .await
        .expect("Changes::next() must end when the worker task dies")
        .is_none());
    assert!(timeout(Duration::from_secs(60), w.changes().next())
        .await
        .expect("a subscription after the task died ends at once")
        .is_none());
    assert!(matches!(
        timeout(Duration::from_secs(60), watch.changed()).await,
        Ok(Err(Halted))
    ));
    timeout(Duration::from_secs(60), w.halt())
        .await
        .expect("halt after a panic returns");
}
