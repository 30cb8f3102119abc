//! Exclusive mode: a member cut off from the store releases its items
//! before they go to others, whether its session expires or the store ends
//! it early; each with its control (no exclusive mode, a margin-only wait)
//! that the ledger catches holding an item twice.

use std::collections::BTreeSet;

use super::setup::{held_by_others, member_session, put_items, wait_acked_exact, Group, Holdings};
use super::{member_config, AckedLedger, ClusterStore, WAIT};

/// Exclusive mode: a member cut off from the store for longer than its TTL
/// releases its workload before its items go to others, while the rest of
/// the cluster goes on (an item added meanwhile is placed); healed, it comes
/// back and takes its share again; the leader dies. The acknowledged
/// workloads never hold an item twice.
pub async fn exclusive_cut_off_member_never_double_owns(store: &dyn ClusterStore, root: &str) {
    exclusive_scenario(store, root, true).await.assert_clean();
}

/// The control of [`exclusive_cut_off_member_never_double_owns`]: without
/// exclusive mode the cut-off member keeps its workload (by design) while
/// its items are given to others, and the ledger sees it.
pub async fn without_exclusive_a_cut_off_member_double_owns(store: &dyn ClusterStore, root: &str) {
    let ledger = exclusive_scenario(store, root, false).await;
    assert!(
        !ledger.violations().is_empty(),
        "without exclusive mode the checker should have seen a double owner"
    );
}

/// The scenario of [`exclusive_cut_off_member_never_double_owns`], in
/// exclusive mode or not: a member cut off and healed, then the leader's
/// death, followed by the ledger it returns.
async fn exclusive_scenario(store: &dyn ClusterStore, root: &str, exclusive: bool) -> AckedLedger {
    let ledger = AckedLedger::new();
    put_items(store, root, 12, 2).await;
    let config = |id: &str| {
        let c = member_config(store, root, id);
        if exclusive {
            let margin = c.ttl / 5;
            c.exclusive(margin)
        } else {
            c
        }
    };
    let mut group = Group::spawn(store, root, &["x1", "x2"], config).await;
    // The member to cut off joins last, so that it does not lead.
    let link = group.join_cuttable(store, root, "x3", &config("x3")).await;
    group.follow(&ledger);
    group.wait_exact(WAIT, "4/4/4", 12, &[4, 4, 4]).await;
    assert!(
        !group.members["x3"].is_leader(),
        "x3 joined last and does not lead"
    );

    link.cut();
    // The others go on: an item is added meanwhile.
    store.put(&format!("{root}work/w12"), b"").await;
    let bound = store.expiry_bound() + store.ttl();
    if exclusive {
        group
            .wait(bound, "x3 to release its workload", |h| h["x3"].is_empty())
            .await;
    }
    group
        .wait(bound, "all 13 items on x1 and x2", |h| {
            held_by_others(h, "x3") == 13
        })
        .await;

    link.heal();
    group
        .wait_exact(bound, "x3 back with its share", 13, &[4, 4, 5])
        .await;

    // The leader dies.
    let leader = group.leader();
    group.members.remove(&leader).expect("leader").kill().await;
    ledger.set(&leader, BTreeSet::new(), tokio::time::Instant::now());
    group
        .wait_exact(bound, "13 items on the two survivors", 13, &[6, 7])
        .await;
    wait_acked_exact(
        &ledger,
        WAIT,
        "13 items acknowledged by the two survivors",
        13,
        &[6, 7],
    )
    .await;
    group.check_plans();
    group.halt().await;
    ledger
}

/// Exclusive mode, a member cut off while the store ends its session (an
/// operator's `consul session destroy`, a node deregistration, `etcdctl
/// lease revoke`): the member cannot hear of it and keeps its items until
/// its own deadline − margin, while the leader sees its key vanish at once.
/// The leader gives its items away only a whole TTL later: the acknowledged
/// workloads never hold an item twice. Healed, the member comes back with a
/// new session and takes its share again.
pub async fn exclusive_session_ended_while_cut_off_never_double_owns(
    store: &dyn ClusterStore,
    root: &str,
) {
    session_ended_scenario(store, root, true)
        .await
        .assert_clean();
}

/// The control of [`exclusive_session_ended_while_cut_off_never_double_owns`]:
/// a leader that waits only the margin after the member key vanished (the
/// rule before early session ends were covered) gives the items away while
/// the cut-off member still holds them, and the ledger sees it.
pub async fn with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns(
    store: &dyn ClusterStore,
    root: &str,
) {
    let ledger = session_ended_scenario(store, root, false).await;
    assert!(
        !ledger.violations().is_empty(),
        "with the margin-only wait the checker should have seen a double owner"
    );
}

/// The scenario of
/// [`exclusive_session_ended_while_cut_off_never_double_owns`], with the
/// leader waiting a whole TTL (`lease_wait`) or only the margin: a member
/// cut off while the store ends its session, then healed, followed by the
/// ledger it returns.
async fn session_ended_scenario(
    store: &dyn ClusterStore,
    root: &str,
    lease_wait: bool,
) -> AckedLedger {
    let ledger = AckedLedger::new();
    put_items(store, root, 12, 2).await;
    let config = |id: &str| {
        let mut c = member_config(store, root, id);
        if !lease_wait {
            // The control must see the double owner every time: a longer
            // lease keeps the cut-off member holding its items (until its
            // last renewal + TTL − margin) well past the moment the
            // margin-only leader has given them away and the new owners
            // acknowledged them, however loaded the machine is.
            let doubled = c.ttl * 2;
            c = c.ttl(doubled);
        }
        c.leader.lease_wait = lease_wait;
        let margin = c.ttl / 5;
        c.exclusive(margin)
    };
    let mut group = Group::spawn(store, root, &["e1", "e2"], config).await;
    let link = group.join_cuttable(store, root, "e3", &config("e3")).await;
    group.follow(&ledger);
    group.wait_exact(WAIT, "4/4/4", 12, &[4, 4, 4]).await;
    wait_acked_exact(&ledger, WAIT, "4/4/4 acknowledged", 12, &[4, 4, 4]).await;
    assert!(
        !group.members["e3"].is_leader(),
        "e3 joined last and does not lead"
    );
    // e3's session, as its member key names it, read with a member's client.
    let kv = store.connect(&super::layout(root)).await.kv;
    let session = member_session(kv.as_ref(), root, "e3")
        .await
        .expect("e3's member key names its session");

    link.cut();
    store.end_session(&session).await;
    let bound = store.expiry_bound() + store.ttl() * 2;
    let others_hold_all = |h: &Holdings| held_by_others(h, "e3") == 12;
    group
        .wait(bound, "all 12 items on e1 and e2", others_hold_all)
        .await;
    ledger
        .wait(bound, "12 items acknowledged by e1 and e2", others_hold_all)
        .await;

    link.heal();
    group
        .wait_exact(bound, "e3 back with its share", 12, &[4, 4, 4])
        .await;
    wait_acked_exact(&ledger, bound, "4/4/4 acknowledged again", 12, &[4, 4, 4]).await;
    group.check_plans();
    group.halt().await;
    ledger
}
