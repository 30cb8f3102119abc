//! What watches a check for an item held by two members: in the store's
//! assignment keys ([`DoubleOwnerWatch`]) or in the members' acknowledged
//! workloads ([`AckedLedger`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use worker_core::WorkId;

use crate::member::MemberHandle;

/// Whether an assignment value gives its holder the primary role.
fn primary(value: &[u8]) -> bool {
    worker_core::Envelope::role_of(value).0 == worker_core::Role::Primary
}

/// Follows an assignment prefix and records every moment an item is under
/// two members as primary (secondaries' keys, preparing ones included, may
/// overlap; the default mode's make-before-break moves hold two primaries'
/// keys for a moment, so a check of it runs with `prepare` off or in
/// exclusive mode). Checked after each single change, which is stricter than
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
                let mut keys: BTreeSet<Vec<u8>> = snapshot
                    .entries
                    .into_iter()
                    .filter(|e| primary(&e.value))
                    .map(|e| e.key)
                    .collect();
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
                                        KvChange::Put(e) if primary(&e.value) => {
                                            keys.insert(e.key);
                                        }
                                        KvChange::Put(e) => {
                                            keys.remove(&e.key);
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
                                keys = s
                                    .entries
                                    .into_iter()
                                    .filter(|e| primary(&e.value))
                                    .map(|e| e.key)
                                    .collect();
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
/// holds as primary: a secondary, preparing or standing by, is not active)
/// and records each moment an item is held by two members, how long items
/// were held by two members at once (overlaps) and by nobody (gaps), and
/// the moves (an item held by another member than its last holder).
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

/// What an [`AckedLedger`] saw: what each member holds now, and every
/// workload it was told of, with when it held it.
#[derive(Default)]
struct LedgerState {
    /// What each member holds (as the changes arrived).
    holds: BTreeMap<String, BTreeSet<WorkId>>,
    /// Every workload set, in arrival order: (when it was held from,
    /// member, workload). Changes may arrive out of time order (each
    /// member's are timed when its worker published them); the measures
    /// replay them in time order.
    log: Vec<(tokio::time::Instant, String, BTreeSet<WorkId>)>,
}

/// The measures, from a replay of the log in time order.
#[derive(Default)]
struct Replay {
    /// What each member holds.
    holds: BTreeMap<String, BTreeSet<WorkId>>,
    /// The members holding each item.
    owners: BTreeMap<WorkId, BTreeSet<String>>,
    /// The last member that took each item.
    last_owner: BTreeMap<WorkId, String>,
    /// Items that had a holder and have none, since when.
    unowned_since: BTreeMap<WorkId, tokio::time::Instant>,
    /// Items held by two members or more, since when.
    doubled_since: BTreeMap<WorkId, tokio::time::Instant>,
    /// What was measured.
    figures: LedgerFigures,
    /// Every moment an item was held by two members.
    violations: Vec<String>,
}

impl Replay {
    /// `member` holds exactly `workload` from `at` on (`at` never before the
    /// previous call's).
    fn apply(&mut self, member: &str, workload: &BTreeSet<WorkId>, at: tokio::time::Instant) {
        let before = self.holds.remove(member).unwrap_or_default();
        for gone in before.difference(workload) {
            let left = self.owners.get_mut(gone).map_or(0, |o| {
                o.remove(member);
                o.len()
            });
            if left < 2 {
                if let Some(since) = self.doubled_since.remove(gone) {
                    let overlap = at.saturating_duration_since(since);
                    let f = &mut self.figures;
                    f.longest_overlap = f.longest_overlap.max(overlap);
                    f.overlaps += overlap;
                }
            }
            if left == 0 {
                self.owners.remove(gone);
                self.unowned_since.insert(gone.clone(), at);
            }
        }
        for new in workload.difference(&before) {
            let others: Vec<String> = self
                .owners
                .get(new)
                .map(|o| o.iter().filter(|m| *m != member).cloned().collect())
                .unwrap_or_default();
            if !others.is_empty() {
                self.violations
                    .push(format!("{new} held by {member} and {others:?} at {at:?}"));
                self.doubled_since.entry(new.clone()).or_insert(at);
            }
            if let Some(since) = self.unowned_since.remove(new) {
                let gap = at.saturating_duration_since(since);
                let f = &mut self.figures;
                f.longest_gap = f.longest_gap.max(gap);
                f.gaps += gap;
            }
            if self.last_owner.get(new).is_some_and(|last| last != member) {
                self.figures.moves += 1;
            }
            self.last_owner.insert(new.clone(), member.to_owned());
            self.owners
                .entry(new.clone())
                .or_default()
                .insert(member.to_owned());
        }
        self.holds.insert(member.to_owned(), workload.clone());
    }
}

/// What an [`AckedLedger`] measured of gaps and overlaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerFigures {
    /// The longest time an item that had a holder was held by nobody.
    pub longest_gap: Duration,
    /// Item-seconds held by nobody (items that had a holder).
    pub gaps: Duration,
    /// The longest time an item was held by two members or more.
    pub longest_overlap: Duration,
    /// Item-seconds held by two members or more.
    pub overlaps: Duration,
    /// Items that changed holder.
    pub moves: usize,
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
        s.log.push((at, member.to_owned(), workload.clone()));
        s.holds.insert(member.to_owned(), workload);
        drop(s);
        self.1.send_modify(|n| *n += 1);
    }

    /// The log replayed in time order (arrival order among equal times).
    fn replay(&self) -> Replay {
        let s = self.lock();
        let mut order: Vec<usize> = (0..s.log.len()).collect();
        order.sort_by_key(|i| (s.log[*i].0, *i));
        let mut r = Replay::default();
        for i in order {
            let (at, member, workload) = &s.log[i];
            r.apply(member, workload, *at);
        }
        r
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
    /// publication): the items it holds as primary count when each change
    /// is received (secondaries, preparing or standing by, are not active
    /// and may overlap); when its worker halts it holds nothing. Stops with
    /// the worker.
    pub fn follow(&self, member: &str, handle: &MemberHandle) -> tokio::task::JoinHandle<()> {
        self.follow_roles(member, handle, false)
    }

    /// Like [`follow`](Self::follow), counting every replica `member` holds,
    /// primary or secondary (to see where the replicas are, not who is
    /// active).
    pub fn follow_replicas(
        &self,
        member: &str,
        handle: &MemberHandle,
    ) -> tokio::task::JoinHandle<()> {
        self.follow_roles(member, handle, true)
    }

    /// [`follow`](Self::follow) (`secondaries` false) or
    /// [`follow_replicas`](Self::follow_replicas).
    fn follow_roles(
        &self,
        member: &str,
        handle: &MemberHandle,
        with_secondaries: bool,
    ) -> tokio::task::JoinHandle<()> {
        let mut changes = handle.worker().changes();
        let (ledger, member) = (self.clone(), member.to_owned());
        tokio::spawn(async move {
            let mut workload = worker_core::Workload::new();
            let mut secondaries = BTreeSet::new();
            // Timed when the worker published the change, not when this
            // task got to it: a busy machine must not reorder two members'
            // changes.
            while let Some((change, at)) = changes.next_at().await {
                change.apply_to(&mut workload);
                change.apply_roles_to(&mut secondaries);
                let held = workload
                    .keys()
                    .filter(|w| with_secondaries || !secondaries.contains(*w))
                    .cloned()
                    .collect();
                ledger.set(&member, held, at);
            }
            ledger.set(&member, BTreeSet::new(), tokio::time::Instant::now());
        })
    }

    /// The gaps, overlaps and moves measured so far.
    pub fn figures(&self) -> LedgerFigures {
        self.replay().figures
    }

    /// Every moment an item was held by two members.
    pub fn violations(&self) -> Vec<String> {
        self.replay().violations
    }

    /// Items that changed holder.
    pub fn moves(&self) -> usize {
        self.replay().figures.moves
    }

    /// The longest time an item that had a holder was held by nobody.
    pub fn longest_unowned(&self) -> Duration {
        self.replay().figures.longest_gap
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
