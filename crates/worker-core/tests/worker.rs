//! The tokio driver on the memory backend, with tokio's paused clock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// Yields to the worker task until `cond` holds (bounded: panics after 10,000 turns).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Halt while a candidate is soaking: the pending commit must never happen.
#[tokio::test(start_paused = true)]
async fn nothing_published_after_halt_returns() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let w = spawn(&store, &config());
    w.ready().await.unwrap();
    let mut watch = w.watch();
    let before = watch.current();
    let events = store.stats().events;
    store.put(format!("{P}m1/a"), "1");
    // The worker reads the put in the same turn it hands it to the machine:
    // from here on a candidate is pending, due one soak (500 ms) later.
    until("the worker read the put", || store.stats().events > events).await;
    assert!(watch.current().workload.is_empty(), "still soaking");
    w.halt().await;
    // Paused clock: move well past the soak the pending candidate was due at.
    tokio::time::advance(Duration::from_secs(10)).await;
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

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The memory store, except that `list` holds until `release` is notified.
struct GatedList {
    store: MemoryStore,
    started: Arc<AtomicU32>,
    dropped: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl KvWatch for GatedList {
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let guard = SetOnDrop(self.dropped.clone());
        self.release.notified().await;
        std::mem::forget(guard);
        self.store.list(prefix).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError> {
        self.store.watch(prefix, after).await
    }
}

/// Halt while the first read is in flight, with a leader present (so the
/// first sync would follow that read): the read is cancelled, the state never
/// becomes ready, and waiters end with `Halted`, even once the read could
/// have completed.
#[tokio::test(start_paused = true)]
async fn halt_before_first_sync_ends_ready() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "1");
    let kv = GatedList {
        store: store.clone(),
        started: Arc::default(),
        dropped: Arc::default(),
        release: Arc::default(),
    };
    let (started, dropped, release) = (kv.started.clone(), kv.dropped.clone(), kv.release.clone());
    let w = Worker::spawn_seeded(&config(), Arc::new(kv), Arc::new(store.clone()), 5).unwrap();
    let mut watch = w.watch();
    let mut changes = w.changes();
    until("the first read started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    timeout(Duration::from_secs(60), w.halt())
        .await
        .expect("halt returns while a read is in flight");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the in-flight read was cancelled"
    );
    // Were the worker still running, the read would now complete and the
    // first sync follow one soak later.
    release.notify_waiters();
    release.notify_one();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(!watch.current().ready);
    assert!(matches!(watch.changed().await, Err(Halted)));
    assert!(changes.next().await.is_none());
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

/// The observer follows the store contact through an outage (unreachable
/// once a request failed, reachable at the first answer after it) and says
/// when the worker task has ended.
#[tokio::test(start_paused = true)]
async fn observer_follows_store_contact_and_the_task() {
    use worker_core::StoreContact;
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/a"), "1");
    let w = spawn(&store, &config());
    let observer = w.observer();
    assert!(observer.is_running());
    assert!(!observer.is_ready());
    w.ready().await.unwrap();
    assert!(observer.is_ready());
    assert_eq!(observer.store_contact(), StoreContact::Reachable);
    assert_eq!(observer.leader().map(|l| l.id), Some("L".to_owned()));
    assert_eq!(names(&observer.settled().workload), ["a"]);

    store.set_unavailable("down");
    let contact = timeout(Duration::from_secs(30), async {
        loop {
            if let StoreContact::Unreachable(e) = observer.store_contact() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the failure is seen");
    assert!(contact.contains("down"), "{contact}");
    assert_eq!(w.store_contact(), observer.store_contact());
    store.set_available();
    timeout(Duration::from_secs(30), async {
        while !observer.store_contact().is_reachable() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("reachable again after the outage");
    // The settled workload was kept throughout.
    assert_eq!(names(&observer.settled().workload), ["a"]);
    w.halt().await;
    assert!(!observer.is_running());
    assert!(observer.is_ready(), "the last values stay");
}
