//! The acknowledged handoff: no item held twice while members drain, join
//! and die (and its control without the handoff), moves throttled by
//! `max_moves_in_flight`, a stuck member's session ended after the handoff
//! timeout, and an item found under two members on taking office.

use std::collections::BTreeSet;
use std::time::Duration;

use super::setup::{
    member_session, poll_store, put_items, spawn_member, wait_acked_exact, wait_no_handoffs, Group,
};
use super::{layout, member_config, AckedLedger, ClusterStore, WAIT};

/// The acknowledged handoff (make-before-break off: revoke, acknowledgement,
/// assign): an item never is in two members' acknowledged workloads while
/// members drain, join, die and the leader fails over; a drained member
/// leaves holding nothing, and only its items move.
pub async fn handoff_never_double_owns(store: &dyn ClusterStore, root: &str) {
    handoff_scenario(store, root, true).await.assert_clean();
}

/// The control of [`handoff_never_double_owns`]: with the handoff off, the
/// same drain lets the new owners hold items before the drained member let
/// go, and the ledger sees it.
pub async fn without_handoff_a_drain_double_owns(store: &dyn ClusterStore, root: &str) {
    let ledger = handoff_scenario(store, root, false).await;
    assert!(
        !ledger.violations().is_empty(),
        "without the handoff the checker should have seen a double owner"
    );
}

/// The scenario of [`handoff_never_double_owns`], with the handoff on or
/// off: a drain, a join and the leader's death, followed by the ledger it
/// returns.
async fn handoff_scenario(store: &dyn ClusterStore, root: &str, handoff: bool) -> AckedLedger {
    let ledger = AckedLedger::new();
    put_items(store, root, 30, 2).await;
    // Members with different soaks, so that without the handoff a new owner
    // would often publish before the old one let go.
    let config = |id: &str| {
        let soak = if id == "m1" { 400 } else { 100 };
        member_config(store, root, id)
            .worker_timing(Duration::from_millis(soak), Duration::from_millis(300))
            .handoff(handoff)
            .prepare(false)
    };
    let mut group = Group::spawn(store, root, &["m1", "m2", "m3"], config).await;
    group.follow(&ledger);
    group.wait_exact(WAIT, "10/10/10", 30, &[10, 10, 10]).await;
    group.check_plans();

    // Drain the member with the longest soak.
    let drained = group.members.remove("m1").expect("m1").drain().await;
    assert_eq!(drained, crate::member::Left::Drained, "m1 drained");
    group
        .wait_exact(WAIT, "15/15 after the drain", 30, &[15, 15])
        .await;
    wait_acked_exact(&ledger, WAIT, "15/15 acknowledged", 30, &[15, 15]).await;
    assert_eq!(ledger.moves(), 10, "only the drained member's items moved");

    // A member joins (its share comes through the handoff too).
    let m4 = spawn_member(store, root, &config("m4")).await;
    ledger.follow("m4", &m4);
    group.join("m4", m4);
    group
        .wait_exact(WAIT, "10/10/10 after m4 joined", 30, &[10, 10, 10])
        .await;
    wait_acked_exact(&ledger, WAIT, "10/10/10 acknowledged", 30, &[10, 10, 10]).await;
    assert_eq!(ledger.moves(), 20, "the join moved exactly m4's share");

    // The leader dies: another leads; the dead one holds nothing.
    let leader = group.leader();
    group.members.remove(&leader).expect("leader").kill().await;
    ledger.set(&leader, BTreeSet::new(), tokio::time::Instant::now());
    group
        .wait_exact(
            store.expiry_bound(),
            "15/15 after the leader died",
            30,
            &[15, 15],
        )
        .await;
    wait_no_handoffs(store, root, WAIT).await;
    group.check_plans();
    group.halt().await;
    ledger
}

/// A member whose application never acknowledges (a hung handler, a bug in
/// a `manual_ack` application) holds up its moves only until the handoff
/// timeout: then the leader ends that member's session (a session it did not
/// open: Consul session destroy, etcd lease revoke), the member registers
/// anew with another session, and the items it was to give up move on.
pub async fn a_stuck_member_has_its_session_ended_after_the_handoff_timeout(
    store: &dyn ClusterStore,
    root: &str,
) {
    put_items(store, root, 4, 2).await;
    let handoff_timeout = Duration::from_secs(3);
    // s1 leads and takes nothing; s2 never acknowledges anything.
    let config = |id: &str| {
        let mut c = member_config(store, root, id);
        match id {
            // Revoke first: with make-before-break the new owner is
            // active before s2 lets go, and nothing waits for s2.
            "s1" => c.weight(0).handoff_timeout(handoff_timeout).prepare(false),
            "s2" => {
                c.campaign = false;
                c.manual_ack(true)
            }
            _ => {
                c.campaign = false;
                c
            }
        }
    };
    let mut group = Group::spawn(store, root, &["s1", "s2"], config).await;
    group
        .wait(WAIT, "all 4 on s2", |h| h["s2"].len() == 4)
        .await;
    let kv = store.connect(&layout(root)).await.kv;
    let first = member_session(kv.as_ref(), root, "s2")
        .await
        .expect("s2's key names its session");
    // s3 joins: two items are revoked from s2, which never acknowledges.
    let asked = tokio::time::Instant::now();
    group.join("s3", spawn_member(store, root, &config("s3")).await);
    let bound = handoff_timeout + store.expiry_bound();
    group
        .wait(bound, "2 items on s3", |h| h["s3"].len() == 2)
        .await;
    assert!(
        asked.elapsed() >= handoff_timeout,
        "the items moved before the handoff timeout ({:?})",
        asked.elapsed()
    );
    // The items moved because s2's first session ended: its key is gone
    // or names a new session.
    assert_ne!(
        member_session(kv.as_ref(), root, "s2").await,
        Some(first),
        "s2's session was ended"
    );
    group.halt().await;
}

/// `max_moves_in_flight`: a member joining a cluster with 24 items takes its
/// share at most 2 items at a time (never more than 2 handoff records at
/// once), and no item is held twice.
pub async fn moves_are_throttled(store: &dyn ClusterStore, root: &str) {
    let ledger = AckedLedger::new();
    put_items(store, root, 24, 2).await;
    let config = |id: &str| {
        member_config(store, root, id)
            .max_moves_in_flight(2)
            .prepare(false)
    };
    let mut group = Group::spawn(store, root, &["t1", "t2"], config).await;
    group.follow(&ledger);
    group.wait_exact(WAIT, "12/12", 24, &[12, 12]).await;
    let observer = store.connect(&layout(root)).await;
    let (mut records, task) = crate::follow::spawn_follow(
        observer.kv.clone(),
        format!("{root}handoff/"),
        (Duration::from_millis(50), Duration::from_millis(500)),
    );
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = most.clone();
    let counter = tokio::spawn(async move {
        while records.changed().await.is_ok() {
            let n = records.borrow_and_update().as_ref().map_or(0, |m| m.len());
            seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let t3 = spawn_member(store, root, &config("t3")).await;
    ledger.follow("t3", &t3);
    group.join("t3", t3);
    // A follower may see pictures that fold several changes into one (Consul
    // throttles a watch of a prefix whose answers do not change): also
    // sample the records with the store's own client while the moves go on.
    let prefix = format!("{root}handoff/");
    let sampling = async {
        loop {
            let n = store.keys(&prefix).await.len();
            most.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = sampling => {}
        _ = group.wait_exact(WAIT, "8/8/8", 24, &[8, 8, 8]) => {}
    }
    wait_no_handoffs(store, root, WAIT).await;
    counter.abort();
    task.abort();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    assert!(most >= 1, "the moves went through handoff records");
    assert!(most <= 2, "{most} moves in flight at once, limit 2");
    ledger.assert_clean();
    group.halt().await;
}

/// A leader that takes over finds an item under two members (as a takeover
/// after a crash, or a hand edit, can): both must be revoked, each waiting
/// for its own acknowledgement, and one transaction never names the item's
/// handoff record twice (etcd refuses such a transaction; the memory store
/// too). m1 and m2 (weight 0) both hold `w`; m3 must end up its only owner,
/// with no record left.
pub async fn takeover_finds_an_item_under_two_members(store: &dyn ClusterStore, root: &str) {
    store.put(&format!("{root}work/w"), b"p").await;
    store.put(&format!("{root}assignments/m1/w"), b"p").await;
    store.put(&format!("{root}assignments/m2/w"), b"p").await;
    let group = Group::spawn(store, root, &["m1", "m2", "m3"], |id| {
        let c = member_config(store, root, id);
        if id == "m3" {
            c
        } else {
            c.weight(0)
        }
    })
    .await;
    group
        .wait(WAIT, "w with m3 alone", |h| {
            h.get("m3").is_some_and(|s| s.len() == 1)
                && h.get("m1").is_some_and(BTreeSet::is_empty)
                && h.get("m2").is_some_and(BTreeSet::is_empty)
        })
        .await;
    let only = [format!("{root}assignments/m3/w")];
    poll_store(WAIT, "the store to settle", || async {
        let keys = store.keys(&format!("{root}assignments/")).await;
        let records = store.keys(&format!("{root}handoff/")).await;
        if keys == only && records.is_empty() {
            Ok(())
        } else {
            Err(format!("{keys:?} {records:?}"))
        }
    })
    .await;
    group.halt().await;
}
