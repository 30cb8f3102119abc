//! What watches a check for an item held by two members: in the store's
//! assignment keys ([`DoubleOwnerWatch`]) or in the members' acknowledged
//! workloads ([`AckedLedger`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use worker_core::WorkId;

use crate::member::MemberHandle;

/// Follows an assignment prefix and records every moment an item is under
/// two members. Checked after each single change, which is stricter than
/// per store revision (a revision may hold several changes). Stops when
/// dropped.
pub struct DoubleOwnerWatch {
    /// Every moment seen with an item under two members.
    violations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// How many changes (and snapshots) were checked.
    changes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The task following the prefix.
    task: tokio::task::JoinHandle<()>,
}

impl DoubleOwnerWatch {
    /// Starts following `prefix` (`<assignments prefix>`) through `kv`.
    pub fn start(kv: std::sync::Arc<dyn worker_core::KvWatch>, prefix: &str) -> Self {
        use worker_core::{KvChange, WatchEvent};
        let violations: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let changes: std::sync::Arc<std::sync::atomic::AtomicUsize> = std::sync::Arc::default();
        let (out, seen, prefix) = (violations.clone(), changes.clone(), prefix.to_owned());
        let task = tokio::spawn(async move {
            let check = |keys: &BTreeSet<Vec<u8>>, at: u64| {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut owners: BTreeMap<&[u8], usize> = BTreeMap::new();
                for k in keys {
                    let rest = &k[prefix.len()..];
                    if let Some(pos) = rest.iter().position(|b| *b == b'/') {
                        *owners.entry(&rest[pos + 1..]).or_default() += 1;
                    }
                }
                for (work, n) in owners {
                    if n > 1 {
                        out.lock().unwrap().push(format!(
                            "{} under {n} members at {at}",
                            String::from_utf8_lossy(work)
                        ));
                    }
                }
            };
            loop {
                let Ok(snapshot) = kv.list(&prefix).await else {
                    continue;
                };
                let mut keys: BTreeSet<Vec<u8>> =
                    snapshot.entries.into_iter().map(|e| e.key).collect();
                check(&keys, snapshot.revision);
                let mut rev = snapshot.revision;
                'watch: loop {
                    let Ok(mut stream) = kv.watch(&prefix, rev).await else {
                        continue;
                    };
                    loop {
                        match stream.next().await {
                            Ok(WatchEvent::Changes { revision, changes }) => {
                                for c in changes {
                                    match c {
                                        KvChange::Put(e) => {
                                            keys.insert(e.key);
                                        }
                                        KvChange::Delete { key } => {
                                            keys.remove(&key);
                                        }
                                    }
                                    check(&keys, revision);
                                }
                                rev = revision;
                            }
                            Ok(WatchEvent::Snapshot(s)) => {
                                keys = s.entries.into_iter().map(|e| e.key).collect();
                                check(&keys, s.revision);
                                rev = s.revision;
                            }
                            Ok(WatchEvent::Progress { revision }) => rev = revision,
                            Ok(WatchEvent::Lost { .. }) => break 'watch,
                            Err(_) => continue 'watch,
                        }
                    }
                }
            }
        });
        Self {
            violations,
            changes,
            task,
        }
    }

    /// Every moment seen so far with an item under two members.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Panics if an item was ever under two members, or if the watch saw
    /// nothing at all (it would then prove nothing).
    pub fn assert_clean(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "an item was under two members: {v:?}");
        assert!(
            self.changes.load(std::sync::atomic::Ordering::Relaxed) > 1,
            "the watch saw no change at all"
        );
    }
}

impl Drop for DoubleOwnerWatch {
    /// Stops following the prefix.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows every member's *acknowledged* workload (what its application
/// holds) and records each moment an item is held by two members, the
/// moves (an item held by another member than its last holder), and the
/// longest time an item that had a holder was held by nobody.
///
/// Fed by [`follow`](Self::follow) for members in this process (each
/// settled change counts when the checker receives it), or by
/// [`set`](Self::set) from anything else (a process's JSON lines). A member
/// that stops (halt, kill, a process that exits) holds nothing from then on:
/// call [`set`](Self::set) with an empty set.
#[derive(Clone)]
pub struct AckedLedger(
    /// What the ledger saw.
    std::sync::Arc<std::sync::Mutex<LedgerState>>,
    /// Bumped on every change, for [`wait`](Self::wait).
    std::sync::Arc<tokio::sync::watch::Sender<u64>>,
);

impl Default for AckedLedger {
    /// An empty ledger.
    fn default() -> Self {
        Self(
            std::sync::Arc::default(),
            std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        )
    }
}

/// What an [`AckedLedger`] saw.
#[derive(Default)]
struct LedgerState {
    /// What each member holds.
    holds: BTreeMap<String, BTreeSet<WorkId>>,
    /// The members holding each item.
    owners: BTreeMap<WorkId, BTreeSet<String>>,
    /// The last member that took each item.
    last_owner: BTreeMap<WorkId, String>,
    /// Items that had a holder and have none, since when.
    unowned_since: BTreeMap<WorkId, tokio::time::Instant>,
    /// The longest time an item that had a holder was held by nobody.
    longest_gap: Duration,
    /// Items that changed holder.
    moves: usize,
    /// Every moment an item was held by two members.
    violations: Vec<String>,
}

impl AckedLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ledger's state, even after a panic of another holder.
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `member` holds exactly `workload` from `at` on.
    pub fn set(&self, member: &str, workload: BTreeSet<WorkId>, at: tokio::time::Instant) {
        let mut s = self.lock();
        let before = s.holds.remove(member).unwrap_or_default();
        for gone in before.difference(&workload) {
            let empty = s.owners.get_mut(gone).is_some_and(|o| {
                o.remove(member);
                o.is_empty()
            });
            if empty {
                s.owners.remove(gone);
                s.unowned_since.insert(gone.clone(), at);
            }
        }
        for new in workload.difference(&before) {
            let others: Vec<String> = s
                .owners
                .get(new)
                .map(|o| o.iter().filter(|m| *m != member).cloned().collect())
                .unwrap_or_default();
            if !others.is_empty() {
                s.violations
                    .push(format!("{new} held by {member} and {others:?} at {at:?}"));
            }
            if let Some(since) = s.unowned_since.remove(new) {
                let gap = at.saturating_duration_since(since);
                s.longest_gap = s.longest_gap.max(gap);
            }
            if s.last_owner.get(new).is_some_and(|last| last != member) {
                s.moves += 1;
            }
            s.last_owner.insert(new.clone(), member.to_owned());
            s.owners
                .entry(new.clone())
                .or_default()
                .insert(member.to_owned());
        }
        s.holds.insert(member.to_owned(), workload);
        drop(s);
        self.1.send_modify(|n| *n += 1);
    }

    /// Waits (at most `bound`) until what the members hold satisfies `ok`;
    /// panics naming `what` otherwise.
    pub async fn wait(
        &self,
        bound: Duration,
        what: &str,
        ok: impl Fn(&BTreeMap<String, BTreeSet<WorkId>>) -> bool,
    ) {
        assert!(
            self.try_wait(bound, ok).await,
            "timed out after {bound:?} waiting for {what} (acknowledged workloads: {:?})",
            self.holdings()
        );
    }

    /// Waits (at most `bound`) until what the members hold satisfies `ok`;
    /// false if it did not in time.
    pub async fn try_wait(
        &self,
        bound: Duration,
        ok: impl Fn(&BTreeMap<String, BTreeSet<WorkId>>) -> bool,
    ) -> bool {
        let mut rx = self.1.subscribe();
        let done = tokio::time::timeout(bound, async {
            loop {
                rx.borrow_and_update();
                if ok(&self.holdings()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        done.is_ok()
    }

    /// Follows `member`'s settled changes (a member that acknowledges on
    /// publication): its workload counts when each change is received; when
    /// its worker halts it holds nothing. Stops with the worker.
    pub fn follow(&self, member: &str, handle: &MemberHandle) -> tokio::task::JoinHandle<()> {
        let mut changes = handle.worker().changes();
        let (ledger, member) = (self.clone(), member.to_owned());
        tokio::spawn(async move {
            let mut workload = worker_core::Workload::new();
            while let Some(change) = changes.next().await {
                change.apply_to(&mut workload);
                ledger.set(
                    &member,
                    workload.keys().cloned().collect(),
                    tokio::time::Instant::now(),
                );
            }
            ledger.set(&member, BTreeSet::new(), tokio::time::Instant::now());
        })
    }

    /// Like [`follow`](Self::follow), counting only the items `member` holds
    /// as primary (with replicas): a ledger fed so finds an item held as
    /// primary by two members; secondaries may overlap.
    pub fn follow_primaries(
        &self,
        member: &str,
        handle: &MemberHandle,
    ) -> tokio::task::JoinHandle<()> {
        let mut changes = handle.worker().changes();
        let (ledger, member) = (self.clone(), member.to_owned());
        tokio::spawn(async move {
            let mut workload = worker_core::Workload::new();
            let mut secondaries = BTreeSet::new();
            while let Some(change) = changes.next().await {
                change.apply_to(&mut workload);
                change.apply_roles_to(&mut secondaries);
                let primaries = workload
                    .keys()
                    .filter(|w| !secondaries.contains(*w))
                    .cloned()
                    .collect();
                ledger.set(&member, primaries, tokio::time::Instant::now());
            }
            ledger.set(&member, BTreeSet::new(), tokio::time::Instant::now());
        })
    }

    /// Every moment an item was held by two members.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Items that changed holder.
    pub fn moves(&self) -> usize {
        self.lock().moves
    }

    /// The longest time an item that had a holder was held by nobody.
    pub fn longest_unowned(&self) -> Duration {
        self.lock().longest_gap
    }

    /// What each member holds now.
    pub fn holdings(&self) -> BTreeMap<String, BTreeSet<WorkId>> {
        self.lock().holds.clone()
    }

    /// Panics listing the violations, if any.
    pub fn assert_clean(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "items held by two members at once ({}): {v:?}",
            v.len()
        );
    }
}
