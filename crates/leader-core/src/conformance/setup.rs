//! The set-up every scenario shares: work items put in the store, members
//! spawned on their own connections ([`Group`]), bounded waits on what the
//! members hold or the store shows, and the checks of each plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use worker_core::{KvWatch, WorkId};

use super::{layout, AckedLedger, ClusterStore, Link};
use crate::member::{Member, MemberConfig, MemberHandle, MemberStore};
use crate::PlanReport;

/// What each member holds, by member id.
pub(super) type Holdings = BTreeMap<String, BTreeSet<WorkId>>;

/// Awaits `fut` for at most `bound`; panics naming `what` otherwise.
pub(super) async fn bounded<T>(
    bound: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {bound:?} waiting for {what}"))
}

/// Puts `count` work items `w<i>` (`i` padded with zeros to `width`
/// digits), each with the value `value(i)`.
pub(super) async fn put_items_with(
    store: &dyn ClusterStore,
    root: &str,
    count: usize,
    width: usize,
    value: impl Fn(usize) -> Vec<u8>,
) {
    for i in 0..count {
        store
            .put(&format!("{root}work/w{i:0width$}"), &value(i))
            .await;
    }
}

/// Puts `count` work items `w<i>` (`i` padded with zeros to `width`
/// digits) with empty values.
pub(super) async fn put_items(store: &dyn ClusterStore, root: &str, count: usize, width: usize) {
    put_items_with(store, root, count, width, |_| Vec::new()).await;
}

/// Spawns one member with `config` on a connection of its own.
pub(super) async fn spawn_member(
    store: &dyn ClusterStore,
    root: &str,
    config: &MemberConfig,
) -> MemberHandle {
    spawn_on(config, &store.connect(&layout(root)).await)
}

/// Spawns one member with `config` on `connection`.
fn spawn_on(config: &MemberConfig, connection: &MemberStore) -> MemberHandle {
    Member::spawn(config, connection).expect("spawn")
}

/// A running group of members, by id, with a subscription to each one's
/// plans.
pub(super) struct Group {
    /// The members, by id.
    pub(super) members: BTreeMap<String, MemberHandle>,
    /// Each member's plans, subscribed as it was spawned.
    pub(super) plans: Vec<tokio::sync::broadcast::Receiver<PlanReport>>,
}

impl Group {
    /// Starts one member per id, each on its own connection, with
    /// `config(id)`, in the order given.
    pub(super) async fn spawn(
        store: &dyn ClusterStore,
        root: &str,
        ids: &[&str],
        config: impl Fn(&str) -> MemberConfig,
    ) -> Self {
        let mut group = Self {
            members: BTreeMap::new(),
            plans: Vec::new(),
        };
        for id in ids {
            group.join(id, spawn_member(store, root, &config(id)).await);
        }
        group
    }

    /// Adds a member spawned elsewhere, subscribing to its plans.
    pub(super) fn join(&mut self, id: &str, member: MemberHandle) {
        self.plans.push(member.plans());
        self.members.insert(id.to_owned(), member);
    }

    /// Spawns member `id` with `config` through a link the check can cut,
    /// and adds it; returns the link.
    pub(super) async fn join_cuttable(
        &mut self,
        store: &dyn ClusterStore,
        root: &str,
        id: &str,
        config: &MemberConfig,
    ) -> Box<dyn Link> {
        let (connection, link) = store.connect_cuttable(&layout(root)).await;
        self.join(id, spawn_on(config, &connection));
        link
    }

    /// Has `ledger` follow every member of the group.
    pub(super) fn follow(&self, ledger: &AckedLedger) {
        for (id, m) in &self.members {
            ledger.follow(id, m);
        }
    }

    /// The id of the member that leads.
    pub(super) fn leader(&self) -> String {
        self.find(MemberHandle::is_leader).expect("a leader")
    }

    /// The id of a member that does not lead.
    pub(super) fn follower(&self) -> String {
        self.find(|m| !m.is_leader()).expect("a follower")
    }

    /// The first member id (in id order) whose handle satisfies `ok`.
    fn find(&self, ok: impl Fn(&MemberHandle) -> bool) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| ok(m))
            .map(|(id, _)| id.clone())
    }

    /// Waits (at most `bound`) until the members' settled workloads satisfy
    /// `ok`; panics naming `what` otherwise.
    pub(super) async fn wait(
        &self,
        bound: Duration,
        what: &str,
        ok: impl Fn(&Holdings) -> bool,
    ) -> Holdings {
        wait_holdings(&self.members, bound, what, ok).await
    }

    /// Waits (at most `bound`) until the members' settled workloads hold
    /// `items` items, each once, in exactly the `counts` per member.
    pub(super) async fn wait_exact(
        &self,
        bound: Duration,
        what: &str,
        items: usize,
        counts: &[usize],
    ) -> Holdings {
        self.wait(bound, what, |h| exact(h, items, counts)).await
    }

    /// Checks the plans made since the last call ([`check_plans`]).
    pub(super) fn check_plans(&mut self) -> Vec<PlanReport> {
        check_plans(&mut self.plans)
    }

    /// Halts every member.
    pub(super) async fn halt(self) {
        for (_, m) in self.members {
            m.halt().await;
        }
    }
}

/// Each member's settled workload, by member id.
fn holdings(members: &BTreeMap<String, MemberHandle>) -> Holdings {
    members
        .iter()
        .map(|(id, m)| (id.clone(), m.worker().workload().keys().cloned().collect()))
        .collect()
}

/// Waits until the members' settled workloads satisfy `ok`.
async fn wait_holdings(
    members: &BTreeMap<String, MemberHandle>,
    bound: Duration,
    what: &str,
    ok: impl Fn(&Holdings) -> bool,
) -> Holdings {
    let result = tokio::time::timeout(bound, async {
        let mut watches: Vec<_> = members.values().map(|m| m.worker().watch()).collect();
        loop {
            let h = holdings(members);
            if ok(&h) {
                return h;
            }
            let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
            futures_select_any(changed).await;
        }
    })
    .await;
    result.unwrap_or_else(|_| {
        panic!(
            "timed out after {bound:?} waiting for {what}; holdings: {:?}",
            holdings(members)
        )
    })
}

/// Resolves once any of `futs` is ready.
pub(super) async fn futures_select_any<F: std::future::Future + Unpin>(
    futs: impl Iterator<Item = F>,
) {
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(move |cx| {
        for f in &mut futs {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

/// Whether `h` holds `items` items, each once, in exactly the `counts` per
/// member (in any order).
pub(super) fn exact(h: &Holdings, items: usize, counts: &[usize]) -> bool {
    let all: BTreeSet<&WorkId> = h.values().flatten().collect();
    let total: usize = h.values().map(BTreeSet::len).sum();
    let mut c: Vec<usize> = h.values().map(BTreeSet::len).collect();
    c.sort_unstable();
    let mut want = counts.to_vec();
    want.sort_unstable();
    total == items && all.len() == items && c == want
}

/// How many items the members other than `except` hold.
pub(super) fn held_by_others(h: &Holdings, except: &str) -> usize {
    h.iter()
        .filter(|(id, _)| *id != except)
        .map(|(_, w)| w.len())
        .sum()
}

/// Plans are checked as they come: every plan moves exactly the fewest items.
fn check_plans(rxs: &mut [tokio::sync::broadcast::Receiver<PlanReport>]) -> Vec<PlanReport> {
    let mut all = Vec::new();
    for rx in rxs {
        while let Ok(p) = rx.try_recv() {
            assert_eq!(
                p.moved, p.min_moves,
                "a plan moved more than the fewest: {p:?}"
            );
            all.push(p);
        }
    }
    all
}

/// The members that hold something.
fn busy(h: &Holdings) -> Holdings {
    h.iter()
        .filter(|(_, w)| !w.is_empty())
        .map(|(id, w)| (id.clone(), w.clone()))
        .collect()
}

/// Waits (at most `bound`) until the acknowledged workloads of the members
/// that hold something hold `items` items, each once, in exactly the
/// `counts` per member.
pub(super) async fn wait_acked_exact(
    ledger: &AckedLedger,
    bound: Duration,
    what: &str,
    items: usize,
    counts: &[usize],
) {
    ledger
        .wait(bound, what, |h| exact(&busy(h), items, counts))
        .await;
}

/// Polls `probe` every 50 ms until it says `Ok` (at most `bound`); panics
/// naming `what` and the last state `probe` described otherwise. For what
/// only the store's own client sees (the leader's keys, not a member's).
pub(super) async fn poll_store<F>(bound: Duration, what: &str, mut probe: impl FnMut() -> F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let Err(state) = probe().await else {
            return;
        };
        assert!(
            start.elapsed() < bound,
            "timed out after {bound:?} waiting for {what}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no handoff record is left under `root`.
pub(super) async fn wait_no_handoffs(store: &dyn ClusterStore, root: &str, bound: Duration) {
    let prefix = format!("{root}handoff/");
    poll_store(bound, "no handoff record pending", || async {
        let keys = store.keys(&prefix).await;
        if keys.is_empty() {
            Ok(())
        } else {
            Err(format!("handoffs still pending: {keys:?}"))
        }
    })
    .await;
}

/// Waits until `key` no longer exists, following its prefix through `kv`.
pub(super) async fn wait_key_gone(kv: &dyn KvWatch, prefix: &str, key: &str, bound: Duration) {
    use worker_core::{KvChange, WatchEvent};
    let gone = async {
        loop {
            let Ok(snapshot) = kv.list(prefix).await else {
                continue;
            };
            if !snapshot.entries.iter().any(|e| e.key == key.as_bytes()) {
                return;
            }
            let Ok(mut stream) = kv.watch(prefix, snapshot.revision).await else {
                continue;
            };
            loop {
                match stream.next().await {
                    Ok(WatchEvent::Changes { changes, .. }) => {
                        if changes.iter().any(
                            |c| matches!(c, KvChange::Delete { key: k } if k == key.as_bytes()),
                        ) {
                            return;
                        }
                    }
                    Ok(WatchEvent::Snapshot(s)) => {
                        if !s.entries.iter().any(|e| e.key == key.as_bytes()) {
                            return;
                        }
                    }
                    Ok(WatchEvent::Progress { .. }) => {}
                    Ok(WatchEvent::Lost { .. }) | Err(_) => break,
                }
            }
        }
    };
    bounded(bound, &format!("{key} to be gone"), gone).await;
}

/// The session member `id`'s key names, read through `kv` (a member's
/// client); `None` when the key is absent or names none.
pub(super) async fn member_session(kv: &dyn KvWatch, root: &str, id: &str) -> Option<String> {
    let key = layout(root).member_key(id);
    let listed = bounded(
        super::WAIT,
        &format!("reading {id}'s member key"),
        kv.list(&key),
    )
    .await
    .expect("list");
    listed
        .entries
        .iter()
        .find(|e| e.key == key.as_bytes())
        .and_then(|e| crate::layout::MemberMeta::parse(&e.value).ok())
        .and_then(|m| m.session)
}

/// Panics unless every member of `after` still holds what it held in
/// `before` (a member absent from `before` held nothing), saying what it
/// `did` otherwise.
pub(super) fn assert_kept(before: &Holdings, after: &Holdings, did: &str) {
    let none = BTreeSet::new();
    for (id, held) in after {
        let had = before.get(id).unwrap_or(&none);
        assert!(had.is_subset(held), "{id} {did}: {had:?} -> {held:?}");
    }
}
