//! The conformance suite every backend's tests run (feature `conformance`).
//!
//! A backend's test crate implements [`ConformanceStore`] over a real server
//! (or the [`MemoryStore`](crate::MemoryStore)) and calls each check, or
//! [`run_all`]. Every check uses its own fresh key prefix under the one it is
//! given, so the checks can share a server. Waits are bounded by
//! [`EVENT_TIMEOUT`] (generous for a loaded 2-core machine); a check panics
//! with a message saying what it waited for.
#![allow(clippy::missing_panics_doc)] // a test suite: every check panics when the store fails it

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::traits::{KvStream, KvWatch, LeaderWait};
use crate::types::{KvChange, WatchEvent, WorkloadChange};
use crate::worker::{Worker, WorkerConfig};

/// Bound on every wait for an expected event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// What a backend gives the suite: the backend under test, and a plain way to
/// write keys and take leadership (the store's own client or CLI).
#[async_trait]
pub trait ConformanceStore: Send + Sync {
    /// The backend's [`KvWatch`].
    fn kv(&self) -> Arc<dyn KvWatch>;
    /// The backend's [`LeaderWait`], observing the leadership that
    /// [`take_leadership`](Self::take_leadership) takes.
    fn leader_wait(&self) -> Arc<dyn LeaderWait>;
    /// Writes `key = value`.
    async fn put(&self, key: &str, value: &[u8]);
    /// Deletes `key`.
    async fn delete(&self, key: &str);
    /// Makes a leader exist (`id` as its proposal/value).
    async fn take_leadership(&self, id: &str);
    /// Makes no leader exist.
    async fn release_leadership(&self);
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"))
}

fn keys_of(event: &WatchEvent) -> Vec<String> {
    match event {
        WatchEvent::Changes { changes, .. } => changes
            .iter()
            .map(|c| match c {
                KvChange::Put(e) => String::from_utf8_lossy(&e.key).into_owned(),
                KvChange::Delete { key } => String::from_utf8_lossy(key).into_owned(),
            })
            .collect(),
        WatchEvent::Snapshot(s) => s
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.key).into_owned())
            .collect(),
        WatchEvent::Progress { .. } | WatchEvent::Lost { .. } => Vec::new(),
    }
}

/// Reads events until `pred` holds for one; returns every event read.
async fn until(
    stream: &mut Box<dyn KvStream>,
    what: &str,
    pred: impl Fn(&WatchEvent) -> bool,
) -> Vec<WatchEvent> {
    bounded(what, async {
        let mut seen = Vec::new();
        loop {
            let ev = stream.next().await.expect("watch stream failed");
            assert!(
                !matches!(ev, WatchEvent::Lost { .. }),
                "unexpected lost position while waiting for {what}: {ev:?}"
            );
            let done = pred(&ev);
            seen.push(ev);
            if done {
                return seen;
            }
        }
    })
    .await
}

/// Whether `event` shows `key` present (put / in snapshot).
fn shows_put(event: &WatchEvent, key: &str) -> bool {
    match event {
        WatchEvent::Changes { changes, .. } => changes
            .iter()
            .any(|c| matches!(c, KvChange::Put(e) if e.key == key.as_bytes())),
        WatchEvent::Snapshot(s) => s.entries.iter().any(|e| e.key == key.as_bytes()),
        _ => false,
    }
}

/// Whether `event` shows `key` absent (delete / snapshot without it).
fn shows_delete(event: &WatchEvent, key: &str) -> bool {
    match event {
        WatchEvent::Changes { changes, .. } => changes
            .iter()
            .any(|c| matches!(c, KvChange::Delete { key: k } if k == key.as_bytes())),
        WatchEvent::Snapshot(s) => !s.entries.iter().any(|e| e.key == key.as_bytes()),
        _ => false,
    }
}

/// An empty prefix lists empty; a put and a delete after the listed position
/// are seen by the watch, with growing positions.
pub async fn list_and_watch(store: &dyn ConformanceStore, prefix: &str) {
    let kv = store.kv();
    let member = format!("{prefix}lw/m1/");
    let snap = bounded("empty list", kv.list(&member))
        .await
        .expect("list failed");
    assert!(snap.entries.is_empty(), "fresh prefix not empty: {snap:?}");

    let key = format!("{member}w1");
    store.put(&key, b"v1").await;
    let snap = bounded("list", kv.list(&member))
        .await
        .expect("list failed");
    assert_eq!(snap.entries.len(), 1, "{snap:?}");
    assert_eq!(snap.entries[0].key, key.as_bytes());
    assert_eq!(&snap.entries[0].value[..], b"v1");

    let mut stream = bounded("watch open", kv.watch(&member, snap.revision))
        .await
        .expect("watch failed");
    let key2 = format!("{member}w2");
    store.put(&key2, b"v2").await;
    until(&mut stream, "put of w2", |e| shows_put(e, &key2)).await;
    store.delete(&key).await;
    until(&mut stream, "delete of w1", |e| shows_delete(e, &key)).await;
    let snap2 = bounded("list", kv.list(&member))
        .await
        .expect("list failed");
    assert!(snap2.revision > snap.revision, "position did not grow");
    assert_eq!(snap2.entries.len(), 1);
}

/// Member `m1`'s watch never carries `m10/…` or other prefixes' keys.
pub async fn own_keys_only(store: &dyn ConformanceStore, prefix: &str) {
    let kv = store.kv();
    let member = format!("{prefix}own/m1/");
    let snap = bounded("list", kv.list(&member))
        .await
        .expect("list failed");
    let mut stream = bounded("watch open", kv.watch(&member, snap.revision))
        .await
        .expect("watch failed");
    store.put(&format!("{prefix}own/m10/x"), b"no").await;
    store.put(&format!("{prefix}own/m1x"), b"no").await;
    store.put(&format!("{prefix}other/m1/x"), b"no").await;
    let mine = format!("{member}y");
    store.put(&mine, b"yes").await;
    let events = until(&mut stream, "put of m1/y", |e| shows_put(e, &mine)).await;
    for ev in &events {
        for k in keys_of(ev) {
            assert!(
                k.starts_with(&member),
                "m1's watch carried foreign key {k:?}: {ev:?}"
            );
        }
    }
}

/// Leadership: none, then taken, then released, as [`LeaderWait`] reports it.
pub async fn leader_observed(store: &dyn ConformanceStore) {
    store.release_leadership().await;
    let lw = store.leader_wait();
    assert_eq!(
        bounded("leader()", lw.leader())
            .await
            .expect("leader() failed"),
        None
    );
    let mut obs = bounded("observe()", lw.observe())
        .await
        .expect("observe failed");
    assert_eq!(
        bounded("first state", obs.next())
            .await
            .expect("observe failed"),
        None
    );
    store.take_leadership("conformance-leader").await;
    let l = bounded("a leader", async {
        loop {
            if let Some(l) = obs.next().await.expect("observe failed") {
                return l;
            }
        }
    })
    .await;
    assert!(!l.id.is_empty(), "leader without id: {l:?}");
    assert_eq!(
        bounded("leader()", lw.leader())
            .await
            .expect("leader() failed")
            .as_ref(),
        Some(&l)
    );
    store.release_leadership().await;
    bounded("no leader", async {
        while obs.next().await.expect("observe failed").is_some() {}
    })
    .await;
}

async fn next_change(changes: &mut crate::worker::Changes, what: &str) -> WorkloadChange {
    bounded(what, changes.next())
        .await
        .unwrap_or_else(|| panic!("worker ended while waiting for {what}"))
}

/// A whole worker on the backend: first sync, adds, value changes, removes,
/// nothing committed without a leader, settle after the leader returns, and
/// a prefix with regex metacharacters.
pub async fn worker_end_to_end(store: &dyn ConformanceStore, prefix: &str) {
    let prefix = format!("{prefix}svc.a+b/(x)/");
    let member = format!("{prefix}m1/");
    store.take_leadership("conformance-leader").await;
    store.put(&format!("{member}w1"), b"1").await;
    store.put(&format!("{prefix}m10/not-mine"), b"x").await;
    let config = WorkerConfig::new("m1")
        .prefix(prefix.clone())
        .soak(Duration::from_millis(100))
        .leader_settle(Duration::from_millis(300));
    let worker = Worker::spawn(&config, store.kv(), store.leader_wait()).expect("config");
    let mut changes = worker.changes();
    let first = next_change(&mut changes, "first sync").await;
    assert!(first.initial);
    let ids = |v: &[(crate::WorkId, bytes::Bytes)]| {
        v.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&first.added), ["w1"]);

    store.put(&format!("{member}w2"), b"2").await;
    let c = next_change(&mut changes, "w2 added").await;
    assert_eq!(ids(&c.added), ["w2"]);
    assert!(c.removed.is_empty() && c.changed.is_empty() && !c.initial);
    assert!(c.revision >= first.revision);

    store.put(&format!("{member}w1"), b"1b").await;
    let c = next_change(&mut changes, "w1 changed").await;
    assert_eq!(ids(&c.changed), ["w1"]);
    assert_eq!(&c.changed[0].1[..], b"1b");

    store.delete(&format!("{member}w2")).await;
    let c = next_change(&mut changes, "w2 removed").await;
    assert_eq!(
        c.removed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["w2"]
    );
    assert_eq!(
        worker
            .workload()
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["w1"]
    );

    // No leader: a change is observed but not committed.
    store.release_leadership().await;
    let mut leader = worker.leader_watch();
    bounded(
        "the worker to see no leader",
        leader.wait_for(Option::is_none),
    )
    .await
    .expect("worker ended");
    // Nothing may settle now: wait well past the soak (a bound on a non-event).
    store.put(&format!("{member}w3"), b"3").await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
    assert!(quiet.is_err(), "published without a leader: {quiet:?}");
    assert!(!worker.workload().contains_key("w3"));

    store.take_leadership("conformance-leader-2").await;
    let c = next_change(&mut changes, "w3 after the leader returned").await;
    assert_eq!(ids(&c.added), ["w3"]);
    worker.halt().await;
    assert!(changes.next().await.is_none(), "change after halt");
}

/// Runs every check under `prefix` (which should be unique to this run).
pub async fn run_all(store: &dyn ConformanceStore, prefix: &str) {
    list_and_watch(store, prefix).await;
    own_keys_only(store, prefix).await;
    leader_observed(store).await;
    worker_end_to_end(store, prefix).await;
}

/// [`ConformanceStore`] over a [`MemoryStore`](crate::MemoryStore).
#[derive(Debug, Clone, Default)]
pub struct MemoryConformance(pub crate::MemoryStore);

#[async_trait]
impl ConformanceStore for MemoryConformance {
    fn kv(&self) -> Arc<dyn KvWatch> {
        Arc::new(self.0.clone())
    }
    fn leader_wait(&self) -> Arc<dyn LeaderWait> {
        Arc::new(self.0.clone())
    }
    async fn put(&self, key: &str, value: &[u8]) {
        self.0.put(key, bytes::Bytes::copy_from_slice(value));
    }
    async fn delete(&self, key: &str) {
        self.0.delete(key);
    }
    async fn take_leadership(&self, id: &str) {
        self.0.set_leader(id);
    }
    async fn release_leadership(&self) {
        self.0.clear_leader();
    }
}
