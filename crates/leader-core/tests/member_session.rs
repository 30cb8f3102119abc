//! Whole members on the memory store, on tokio's paused clock: a session
//! the store ends is noticed from the member key and released at once (in
//! exclusive mode); halt releases before it leaves; a member that never
//! acknowledges has its session ended by the leader after the handoff
//! timeout, and its items move on; a member that never registered drains at
//! once. The member's read-only observer: leadership, the acknowledged
//! position, the moves in flight while it leads, its store contact through
//! an outage, and the end of its tasks.

use std::time::Duration;

use leader_core::{Layout, Member, MemberConfig, MemberHandle, MemberObserver, MemberStore};
use tokio::time::{timeout, Instant};
use worker_core::{MemoryStore, StoreContact, WorkloadChange};

fn layout() -> Layout {
    Layout {
        members: "s/members/".into(),
        leader: "s/leader".into(),
        work: "s/work/".into(),
        assignments: "s/assignments/".into(),
        handoff: "s/handoff/".into(),
        drain: "s/drain/".into(),
        sequence: "s/sequence".into(),
    }
}

fn config(id: &str) -> MemberConfig {
    MemberConfig::new(id)
        .layout(layout())
        .ttl(Duration::from_secs(15))
        .leader_soak(Duration::from_millis(300))
        .worker_timing(Duration::from_millis(100), Duration::from_millis(300))
}

fn spawn(store: &MemoryStore, config: &MemberConfig) -> MemberHandle {
    Member::spawn(config, &MemberStore::from_backend(store.clone())).expect("spawn")
}

/// Waits (at most `bound`) until `member`'s settled workload has `n` items.
async fn holds(member: &MemberHandle, n: usize, bound: Duration) {
    let mut w = member.worker().watch();
    timeout(bound, async {
        while w.current().workload.len() != n || !w.current().ready {
            w.changed().await.expect("worker alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} items within {bound:?}"));
}

/// The next change whose workload after it is empty.
async fn next_release(changes: &mut worker_core::Changes, bound: Duration) -> WorkloadChange {
    timeout(bound, async {
        loop {
            let c = changes.next().await.expect("changes open");
            if !c.removed.is_empty() && c.added.is_empty() {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a release within {bound:?}"))
}

/// The store ends an exclusive member's session (an operator, a node
/// deregistration) long before its next renewal: the member sees its own
/// key vanish and releases at once, not at its next renewal (TTL/3 later) or
/// its deadline − margin.
#[tokio::test(start_paused = true)]
async fn an_exclusive_member_releases_at_once_when_the_store_ends_its_session() {
    let store = MemoryStore::new();
    for i in 0..3 {
        store.put(format!("s/work/w{i}"), "");
    }
    let m1 = spawn(&store, &config("m1").exclusive(Duration::from_secs(3)));
    holds(&m1, 3, Duration::from_secs(10)).await;
    let session = m1
        .leading()
        .borrow()
        .clone()
        .expect("m1 leads")
        .session()
        .clone();
    let mut changes = m1.worker().changes();
    let ended = Instant::now();
    assert!(store.expire_session(&session));
    next_release(&mut changes, Duration::from_secs(1)).await;
    assert!(
        ended.elapsed() < Duration::from_secs(1),
        "released {:?} after the session ended",
        ended.elapsed()
    );
    // Registered anew, it holds its items again.
    holds(&m1, 3, Duration::from_secs(20)).await;
    m1.halt().await;
}

/// Halting an exclusive member releases its workload first: the application
/// gets a change removing everything before the member leaves.
#[tokio::test(start_paused = true)]
async fn halting_an_exclusive_member_releases_before_it_leaves() {
    let store = MemoryStore::new();
    for i in 0..3 {
        store.put(format!("s/work/w{i}"), "");
    }
    let m1 = spawn(&store, &config("m1").exclusive(Duration::from_secs(3)));
    holds(&m1, 3, Duration::from_secs(10)).await;
    let mut changes = m1.worker().changes();
    let halted = tokio::spawn(m1.halt());
    let release = next_release(&mut changes, Duration::from_secs(5)).await;
    assert_eq!(release.removed.len(), 3, "{release:?}");
    timeout(Duration::from_secs(30), halted)
        .await
        .expect("halted")
        .expect("halt task");
    assert!(store.keys("s/members/").is_empty(), "the session is closed");
}

/// A member whose application never acknowledges (a hung handler, a bug in
/// a `manual_ack` application) blocks its moves only until the handoff
/// timeout: then the leader ends its session and the items move on.
#[tokio::test(start_paused = true)]
async fn a_member_that_never_acknowledges_has_its_session_ended_after_the_handoff_timeout() {
    let store = MemoryStore::new();
    for i in 0..4 {
        store.put(format!("s/work/w{i}"), "");
    }
    let handoff_timeout = Duration::from_secs(20);
    // m1 leads and takes nothing; m2 never acknowledges anything.
    let m1 = spawn(
        &store,
        &config("m1")
            .weight(0)
            .handoff_timeout(handoff_timeout)
            .prepare(false),
    );
    let mut stuck = config("m2").manual_ack(true);
    stuck.campaign = false;
    let m2 = spawn(&store, &stuck);
    holds(&m2, 4, Duration::from_secs(10)).await;
    // m3 joins: two items are revoked from m2, which never acknowledges.
    let asked = Instant::now();
    let mut joining = config("m3");
    joining.campaign = false;
    let m3 = spawn(&store, &joining);
    holds(&m3, 2, handoff_timeout + Duration::from_secs(20)).await;
    assert!(
        asked.elapsed() >= handoff_timeout,
        "moved on only after the timeout ({:?})",
        asked.elapsed()
    );
    m3.halt().await;
    m2.halt().await;
    m1.halt().await;
}

/// Waits (virtual time, at most a minute) until `cond` holds for `o`.
async fn until(what: &str, o: &MemberObserver, cond: impl Fn(&MemberObserver) -> bool) {
    timeout(Duration::from_secs(60), async {
        while !cond(o) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test(start_paused = true)]
async fn the_observer_shows_leadership_acks_moves_and_contact() {
    let store = MemoryStore::new();
    for i in 0..4 {
        store.put(format!("s/work/w{i}"), "");
    }
    // The revoke, acknowledgement, assign protocol (no make-before-break).
    let m1 = spawn(&store, &config("m1").manual_ack(true).prepare(false));
    let o = m1.observer();
    assert!(o.is_running());
    until("m1 leads and holds 4", &o, |o| {
        o.is_leader() && o.worker().is_ready() && o.worker().settled().workload.len() == 4
    })
    .await;
    assert_eq!(o.store_contact(), StoreContact::Reachable);
    assert_eq!(o.worker().store_contact(), StoreContact::Reachable);
    assert!(o.handoffs().is_empty());
    assert!(!o.is_draining());
    let placed = o.worker().settled().revision;
    m1.ack(placed);
    until("the ack is written", &o, |o| o.acked() >= Some(placed)).await;

    // A second member: two items move from m1, and wait for m1's ack.
    let m2 = spawn(&store, &config("m2"));
    until("m1 released two", &o, |o| {
        o.worker().settled().workload.len() == 2
    })
    .await;
    until("two moves in flight from m1", &o, |o| {
        o.handoffs().len() == 2 && o.handoffs().iter().all(|h| &*h.from == "m1")
    })
    .await;
    let released = o.worker().settled().revision;
    assert!(o.acked() < Some(released));
    m1.ack(released);
    until("the moves are done", &o, |o| o.handoffs().is_empty()).await;
    let o2 = m2.observer();
    until("m2 holds two", &o2, |o| {
        o.worker().settled().workload.len() == 2
    })
    .await;
    assert!(!o2.is_leader());
    assert_eq!(o2.worker().leader(), o.worker().leader());

    // An outage: both contacts fail, then come back.
    store.set_unavailable("down");
    until("unreachable", &o, |o| {
        matches!(o.worker().store_contact(), StoreContact::Unreachable(_))
    })
    .await;
    store.set_available();
    until("reachable again", &o, |o| {
        o.worker().store_contact().is_reachable() && o.store_contact().is_reachable()
    })
    .await;

    m2.start_drain();
    until("m2 drains", &o2, MemberObserver::is_draining).await;
    m2.halt().await;
    assert!(!o2.is_running());
    m1.halt().await;
    assert!(!o.is_running());
    assert!(!o.is_leader());
}

/// A member that never registered (its store refuses it) holds nothing and
/// is counted in by no leader: a drain leaves at once, not after the whole
/// drain timeout.
#[tokio::test(start_paused = true)]
async fn a_member_that_never_registered_drains_at_once() {
    let store = MemoryStore::new();
    store.set_unavailable("refused (test)");
    let mut m1 = spawn(&store, &config("m1").drain_timeout(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    m1.start_drain();
    let left = timeout(Duration::from_secs(60), m1.left())
        .await
        .expect("the drain ends");
    assert_eq!(left, leader_core::Left::Drained);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "left after {:?}: it waited for the drain timeout",
        started.elapsed()
    );
    m1.halt().await;
}
