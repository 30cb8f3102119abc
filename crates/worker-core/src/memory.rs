//! The in-process memory store: the embedded default for demos, single-process
//! use and tests.
//!
//! It behaves like a small consistent KV store: every write gets the next
//! revision, watches follow a prefix from a revision, history is compacted
//! (automatically past [`MemoryStore::HISTORY_LIMIT`] changes, or on request),
//! and a watch behind the compaction point reports [`WatchEvent::Lost`]. A
//! leader slot stands for the leader election. Tests can make it unavailable,
//! fail the next requests, lose every watch's position, or hold a fenced
//! transaction (its caller gets a timeout) and apply it later.
//!
//! A write costs what it touches: each open watch has its own queue, registered
//! under its prefix; a write appends the change to the queues of the watches
//! whose prefix holds the key (found by looking up each prefix of the key, not
//! by visiting every watch) and wakes only those. A woken watch takes its queue;
//! it never rescans history (history is read once, when a watch opens behind
//! the current revision).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{watch, Notify};

mod coord;

use crate::error::StoreError;
use crate::traits::{KvStream, KvWatch, LeaderStream, LeaderWait};
use crate::types::{KvChange, KvEntry, Leader, Revision, Snapshot, WatchEvent};

/// Counts of requests served, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// `list` calls.
    pub lists: u64,
    /// `watch` calls (streams opened).
    pub watches: u64,
    /// Events returned by watch streams.
    pub events: u64,
    /// Times a waiting watch stream was woken to deliver events: a write wakes
    /// only the streams whose prefix holds the written key.
    pub watch_wakeups: u64,
    /// Fenced transactions applied.
    pub txns: u64,
    /// Fenced transactions rejected because the fence no longer held.
    pub fenced: u64,
}

#[derive(Debug, Default)]
struct State {
    data: BTreeMap<Vec<u8>, Bytes>,
    /// The revision at which each key was created.
    created: BTreeMap<Vec<u8>, Revision>,
    /// The revision at which each key was last written.
    modified: BTreeMap<Vec<u8>, Revision>,
    revision: Revision,
    history: VecDeque<(Revision, KvChange)>,
    compacted: Revision,
    leader: Option<Leader>,
    terms: u64,
    unavailable: Option<String>,
    fail_next: u32,
    stats: MemoryStats,
    sessions: coord::Sessions,
    watchers: Watchers,
    /// What one fenced transaction may carry; `None`: 127 operations.
    txn_limits: Option<crate::TxnLimits>,
}

/// The open watch streams, indexed by prefix.
#[derive(Debug, Default)]
struct Watchers {
    next_id: u64,
    /// Prefix -> ids of the watches of that prefix.
    by_prefix: BTreeMap<Vec<u8>, Vec<u64>>,
    slots: HashMap<u64, Slot>,
}

/// One open watch stream's queue.
#[derive(Debug)]
struct Slot {
    prefix: Vec<u8>,
    /// Changes under the prefix not yet delivered, oldest first.
    queue: Vec<KvChange>,
    /// The queue grew past [`MemoryStore::HISTORY_LIMIT`] and was dropped:
    /// the stream reports [`WatchEvent::Lost`].
    overflowed: bool,
    /// The stream is (about to be) waiting for `wake`.
    waiting: bool,
    wake: Arc<Notify>,
}

impl Slot {
    fn wake(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.wake.notify_one();
        }
    }
}

impl Watchers {
    fn register(&mut self, prefix: Vec<u8>, backlog: Vec<KvChange>) -> (u64, Arc<Notify>) {
        self.next_id += 1;
        let id = self.next_id;
        let wake = Arc::new(Notify::new());
        self.by_prefix.entry(prefix.clone()).or_default().push(id);
        self.slots.insert(
            id,
            Slot {
                prefix,
                queue: backlog,
                overflowed: false,
                waiting: false,
                wake: wake.clone(),
            },
        );
        (id, wake)
    }

    fn unregister(&mut self, id: u64) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_prefix.get_mut(&slot.prefix) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_prefix.remove(&slot.prefix);
            }
        }
    }

    /// Appends `change` to the queue of every watch whose prefix holds its key
    /// and wakes those: O(key length × log prefixes + matching watches).
    fn dispatch(&mut self, change: &KvChange) {
        if self.slots.is_empty() {
            return;
        }
        let key = match change {
            KvChange::Put(e) => &e.key[..],
            KvChange::Delete { key } => &key[..],
        };
        for len in 0..=key.len() {
            let Some(ids) = self.by_prefix.get(&key[..len]) else {
                continue;
            };
            for id in ids {
                let Some(slot) = self.slots.get_mut(id) else {
                    continue;
                };
                if !slot.overflowed {
                    slot.queue.push(change.clone());
                    if slot.queue.len() > MemoryStore::HISTORY_LIMIT {
                        slot.overflowed = true;
                        slot.queue = Vec::new();
                    }
                }
                slot.wake();
            }
        }
    }

    /// Wakes every waiting watch (a fault or a compaction they must see).
    fn wake_all(&mut self) {
        for slot in self.slots.values_mut() {
            slot.wake();
        }
    }
}

impl State {
    fn check(&mut self) -> Result<(), StoreError> {
        if let Some(reason) = &self.unavailable {
            return Err(StoreError::injected(reason.clone()));
        }
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(StoreError::injected("failing on request"));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Bumped on every write, leader change or fault change: wakes streams.
    notify: watch::Sender<u64>,
}

/// An in-process KV store with revisions, prefix watches and a leader slot.
///
/// Cloning gives another handle to the same store; it is usable from many
/// tasks at once.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Changes kept for watches before the oldest are compacted away.
    pub const HISTORY_LIMIT: usize = 100_000;

    /// An empty store at revision 0 with no leader.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: watch::channel(0).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self) {
        self.inner.notify.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records a write: the next revision, history, and the queues of the
    /// watches it concerns (which are woken). Every write goes through here.
    fn record(s: &mut State, change: KvChange) -> Revision {
        s.revision += 1;
        let rev = s.revision;
        match &change {
            KvChange::Put(entry) => {
                s.created.entry(entry.key.clone()).or_insert(rev);
                s.modified.insert(entry.key.clone(), rev);
            }
            KvChange::Delete { key } => {
                s.created.remove(key);
                s.modified.remove(key);
            }
        }
        s.watchers.dispatch(&change);
        s.history.push_back((rev, change));
        if s.history.len() > Self::HISTORY_LIMIT {
            let drop = s.history.len() - Self::HISTORY_LIMIT / 2;
            s.history.drain(..drop);
            s.compacted = s.history.front().map_or(rev, |(r, _)| r - 1);
        }
        rev
    }

    /// Writes `key = value`; returns the new revision.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Bytes>) -> Revision {
        let entry = KvEntry::new(key, value);
        let rev = {
            let mut s = self.lock();
            s.data.insert(entry.key.clone(), entry.value.clone());
            Self::record(&mut s, KvChange::Put(entry))
        };
        rev
    }

    /// Deletes `key`; returns the new revision, or `None` if it did not exist.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Option<Revision> {
        let key = key.as_ref();
        let rev = {
            let mut s = self.lock();
            s.data.remove(key)?;
            Self::record(&mut s, KvChange::Delete { key: key.to_vec() })
        };
        Some(rev)
    }

    /// Deletes every key under `prefix`; returns how many.
    pub fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> usize {
        let prefix = prefix.as_ref();
        let n = {
            let mut s = self.lock();
            let keys: Vec<Vec<u8>> = s
                .data
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &keys {
                s.data.remove(k);
                Self::record(&mut s, KvChange::Delete { key: k.clone() });
            }
            keys.len()
        };
        n
    }

    /// The value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        self.lock().data.get(key.as_ref()).cloned()
    }

    /// The keys under `prefix`, sorted.
    pub fn keys(&self, prefix: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
        let prefix = prefix.as_ref();
        self.lock()
            .data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// Drops history up to and including `revision`: watches behind it report
    /// [`WatchEvent::Lost`].
    pub fn compact(&self, revision: Revision) {
        {
            let mut s = self.lock();
            let revision = revision.min(s.revision);
            while s.history.front().is_some_and(|(r, _)| *r <= revision) {
                s.history.pop_front();
            }
            s.compacted = s.compacted.max(revision);
            s.watchers.wake_all();
        }
        self.wake();
    }

    /// Makes `id` the leader with a new term; returns it.
    pub fn set_leader(&self, id: impl Into<String>) -> Leader {
        let leader = {
            let mut s = self.lock();
            s.terms += 1;
            let l = Leader {
                id: id.into(),
                term: s.terms,
                name: None,
            };
            s.leader = Some(l.clone());
            s.sessions.leader_set_externally();
            l
        };
        self.wake();
        leader
    }

    /// Removes the leader.
    pub fn clear_leader(&self) {
        {
            let mut s = self.lock();
            s.leader = None;
            s.sessions.leader_set_externally();
        }
        self.wake();
    }

    /// The current leader.
    pub fn current_leader(&self) -> Option<Leader> {
        self.lock().leader.clone()
    }

    /// Makes every request (and every open stream) fail with `reason` until
    /// [`set_available`](Self::set_available).
    pub fn set_unavailable(&self, reason: impl Into<String>) {
        {
            let mut s = self.lock();
            s.unavailable = Some(reason.into());
            s.watchers.wake_all();
        }
        self.wake();
    }

    /// Ends an outage started by [`set_unavailable`](Self::set_unavailable).
    pub fn set_available(&self) {
        self.lock().unavailable = None;
        self.wake();
    }

    /// Makes the next `n` requests fail.
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// Counts of requests served so far.
    pub fn stats(&self) -> MemoryStats {
        self.lock().stats
    }
}

#[async_trait]
impl KvWatch for MemoryStore {
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let mut s = self.lock();
        s.check()?;
        s.stats.lists += 1;
        let p = prefix.as_bytes();
        let entries = s
            .data
            .range(p.to_vec()..)
            .take_while(|(k, _)| k.starts_with(p))
            .map(|(k, v)| {
                let rev = s.created.get(k).copied().unwrap_or(0);
                KvEntry::at(k.clone(), v.clone(), rev)
            })
            .collect();
        Ok(Snapshot {
            revision: s.revision,
            entries,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError> {
        let mut s = self.lock();
        s.check()?;
        s.stats.watches += 1;
        let prefix = prefix.as_bytes().to_vec();
        // Opened behind the current revision: the backlog, read from history
        // once. Behind the compaction point there is none: the stream is lost.
        let backlog = if after < s.revision && after >= s.compacted {
            let start = s.history.partition_point(|(r, _)| *r <= after);
            s.history
                .range(start..)
                .filter(|(_, c)| match c {
                    KvChange::Put(e) => e.key.starts_with(&prefix),
                    KvChange::Delete { key } => key.starts_with(&prefix),
                })
                .map(|(_, c)| c.clone())
                .collect()
        } else {
            Vec::new()
        };
        let (id, wake) = s.watchers.register(prefix, backlog);
        Ok(Box::new(MemoryWatch {
            store: self.clone(),
            id,
            wake,
            after,
        }))
    }
}

/// A watch stream: takes what writes queued for it.
struct MemoryWatch {
    store: MemoryStore,
    id: u64,
    wake: Arc<Notify>,
    after: Revision,
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.store.lock().watchers.unregister(self.id);
    }
}

#[async_trait]
impl KvStream for MemoryWatch {
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            {
                let mut guard = self.store.lock();
                let s = &mut *guard;
                if let Some(reason) = &s.unavailable {
                    return Err(StoreError::injected(reason.clone()));
                }
                if self.after < s.compacted {
                    return Ok(WatchEvent::Lost {
                        reason: format!(
                            "revision {} compacted (compacted up to {})",
                            self.after, s.compacted
                        ),
                    });
                }
                let Some(slot) = s.watchers.slots.get_mut(&self.id) else {
                    return Err(StoreError::injected("watch closed"));
                };
                if slot.overflowed {
                    return Ok(WatchEvent::Lost {
                        reason: format!(
                            "watch fell more than {} changes behind",
                            MemoryStore::HISTORY_LIMIT
                        ),
                    });
                }
                if !slot.queue.is_empty() {
                    let changes = std::mem::take(&mut slot.queue);
                    slot.waiting = false;
                    let revision = s.revision;
                    self.after = revision;
                    s.stats.events += 1;
                    return Ok(WatchEvent::Changes { revision, changes });
                }
                // A write after this point finds `waiting` and stores a permit
                // in `wake` even before the await below: no wake-up is lost.
                slot.waiting = true;
            }
            self.wake.notified().await;
            self.store.lock().stats.watch_wakeups += 1;
        }
    }
}

#[async_trait]
impl LeaderWait for MemoryStore {
    async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let mut s = self.lock();
        s.check()?;
        Ok(s.leader.clone())
    }

    async fn observe(&self) -> Result<Box<dyn LeaderStream>, StoreError> {
        self.lock().check()?;
        Ok(Box::new(MemoryLeaderStream {
            store: self.clone(),
            rx: self.inner.notify.subscribe(),
            last: None,
            first: true,
        }))
    }
}

struct MemoryLeaderStream {
    store: MemoryStore,
    rx: watch::Receiver<u64>,
    last: Option<Leader>,
    first: bool,
}

#[async_trait]
impl LeaderStream for MemoryLeaderStream {
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        loop {
            self.rx.borrow_and_update();
            {
                let s = self.store.lock();
                if let Some(reason) = &s.unavailable {
                    return Err(StoreError::injected(reason.clone()));
                }
                if self.first || self.last != s.leader {
                    self.first = false;
                    self.last.clone_from(&s.leader);
                    return Ok(s.leader.clone());
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(StoreError::injected("store dropped"));
            }
        }
    }
}
