//! Whole members spreading work: members settling to their quotas, a member
//! that dies, joins, restarts within the rebalance delay or is drained and
//! restarted in turn, and values cut to the store's transaction limits.

use std::collections::BTreeSet;
use std::time::Duration;

use super::checkers::LedgerFigures;
use super::setup::{
    assert_kept, put_items, put_items_with, spawn_member, wait_acked_exact, wait_key_gone,
    wait_no_handoffs, Group,
};
use super::{layout, member_config, AckedLedger, ClusterStore, WAIT};

/// Whole members: 3 members and 30 items settle 10/10/10; a killed member's
/// items (only those) move once its session expires; a joining member takes
/// exactly its share from members above quota; every plan moves the fewest.
pub async fn members_spread_work(store: &dyn ClusterStore, root: &str) {
    put_items_with(store, root, 30, 2, |i| format!("p{i}").into_bytes()).await;
    let mut group = Group::spawn(store, root, &["m1", "m2", "m3"], |id| {
        member_config(store, root, id)
    })
    .await;
    let before = group.wait_exact(WAIT, "10/10/10", 30, &[10, 10, 10]).await;
    group.check_plans();
    for (id, m) in &group.members {
        let w = m.worker().workload();
        for (work, value) in w.iter() {
            assert_eq!(
                &value[..],
                format!("p{}", work[1..].parse::<u32>().unwrap()).as_bytes(),
                "{id}/{work}: value copied from the item"
            );
        }
    }

    // Kill a member that does not lead (the leader case is its own check).
    let victim = group.follower();
    group.members.remove(&victim).expect("victim").kill().await;
    let after = group
        .wait_exact(
            store.expiry_bound(),
            "the killed member's items on survivors (15/15)",
            30,
            &[15, 15],
        )
        .await;
    assert_kept(&before, &after, "lost items it had");
    group.check_plans();

    // A member joins: it takes 7 or 8, only from members above quota.
    let m4 = spawn_member(store, root, &member_config(store, root, "m4")).await;
    group.join("m4", m4);
    let joined = group
        .wait_exact(WAIT, "10/10/10 after m4 joined", 30, &[10, 10, 10])
        .await;
    for (id, held) in &joined {
        if id != "m4" {
            assert!(
                held.is_subset(&after[id]),
                "{id} gained items when m4 joined"
            );
        }
    }
    let reports = group.check_plans();
    assert!(
        reports.iter().any(|p| p.moved == 10),
        "the join moved exactly m4's share (10 items): {reports:?}"
    );

    // No key under two members at the end.
    let keys = store.keys(&format!("{root}assignments/")).await;
    let mut seen = BTreeSet::new();
    for k in &keys {
        let work = k.rsplit('/').next().unwrap_or_default().to_owned();
        assert!(seen.insert(work), "item under two members: {keys:?}");
    }
    assert_eq!(seen.len(), 30);
    group.halt().await;
}

/// With `rebalance_delay`, a member that dies and is restarted with the same
/// id within the delay gets its items back and nothing moves: no plan moves
/// or places anything.
pub async fn restart_within_rebalance_delay_moves_nothing(store: &dyn ClusterStore, root: &str) {
    let observer = store.connect(&layout(root)).await;
    put_items(store, root, 12, 2).await;
    let config =
        |id: &str| member_config(store, root, id).rebalance_delay(store.expiry_bound() * 2);
    let mut group = Group::spawn(store, root, &["a", "b", "c"], config).await;
    let before = group.wait_exact(WAIT, "4/4/4", 12, &[4, 4, 4]).await;
    group.check_plans();
    let victim = group.follower();
    group.members.remove(&victim).expect("victim").kill().await;
    // Its session expires and its member key goes: it has left.
    wait_key_gone(
        observer.kv.as_ref(),
        &format!("{root}members/"),
        &format!("{root}members/{victim}"),
        store.expiry_bound(),
    )
    .await;
    group.join(&victim, spawn_member(store, root, &config(&victim)).await);
    let after = group
        .wait_exact(WAIT, "4/4/4 after the restart", 12, &[4, 4, 4])
        .await;
    assert_eq!(after, before, "every member holds what it held before");
    let reports = group.check_plans();
    assert!(
        reports.iter().all(|p| p.moved == 0 && p.placed == 0),
        "a restart within the delay moved or placed items: {reports:?}"
    );
    group.halt().await;
}

/// What [`rolling_restart`] measured.
#[derive(Debug, Clone, Copy)]
pub struct RollingRestart {
    /// The time the five restarts took, from the first drain to the last
    /// member holding its share again.
    pub took: Duration,
    /// The ledger's gaps (items held as primary by nobody) and overlaps
    /// (by two members) over the restarts.
    pub figures: LedgerFigures,
}

/// A rolling restart: 5 members holding 100 items, each drained and
/// restarted with the same id in turn, with make-before-break moves. The
/// moves are exactly the fewest (each member's 20 items out, then 20 back
/// in). In exclusive mode no item is ever active (primary in an
/// acknowledged workload) on two members, and the longest time one is
/// active nowhere is at most 0.1 s, 5 item-seconds in all; in the default
/// mode no item is ever active nowhere (the overlap is returned).
pub async fn rolling_restart(
    store: &dyn ClusterStore,
    root: &str,
    exclusive: bool,
) -> RollingRestart {
    rolling_restart_with(store, root, exclusive, true).await
}

/// [`rolling_restart`] without make-before-break (`prepare` off, the
/// default mode): every move is revoke, acknowledgement, assign, so each
/// moved item is active nowhere from the old owner's acknowledgement until
/// the new owner soaked the assign; never longer than that soak and a
/// little (a drained leader leaves only once the new owners acknowledged
/// its assigns: seeing it go first, they would wait `leader_settle`), and
/// never on two members.
pub async fn rolling_restart_revoke_first(store: &dyn ClusterStore, root: &str) -> RollingRestart {
    let r = rolling_restart_with(store, root, false, false).await;
    let soak = member_config(store, root, "r1").worker.soak;
    assert!(
        r.figures.longest_gap <= soak + Duration::from_millis(50),
        "revoke-first: an item active nowhere longer than the new owner's soak: {:?}",
        r.figures
    );
    r
}

/// The rolling restart, in exclusive mode or not, with or without
/// make-before-break.
async fn rolling_restart_with(
    store: &dyn ClusterStore,
    root: &str,
    exclusive: bool,
    prepare: bool,
) -> RollingRestart {
    let ledger = AckedLedger::new();
    put_items(store, root, 100, 3).await;
    let ids = ["r1", "r2", "r3", "r4", "r5"];
    let config = |id: &str| {
        let c = member_config(store, root, id).prepare(prepare);
        if exclusive {
            let margin = c.ttl / 5;
            c.exclusive(margin)
        } else {
            c
        }
    };
    let mut group = Group::spawn(store, root, &ids, config).await;
    group.follow(&ledger);
    group.wait_exact(WAIT, "20 each", 100, &[20; 5]).await;
    wait_no_handoffs(store, root, WAIT).await;
    wait_acked_exact(&ledger, WAIT, "20 each acknowledged", 100, &[20; 5]).await;
    group.check_plans();
    let start = ledger.figures();
    let started = tokio::time::Instant::now();
    for id in ids {
        let left = group.members.remove(id).expect("member").drain().await;
        assert_eq!(left, crate::member::Left::Drained, "{id} drained");
        group
            .wait_exact(WAIT, "25 each on the other four", 100, &[25; 4])
            .await;
        let back = spawn_member(store, root, &config(id)).await;
        ledger.follow(id, &back);
        group.join(id, back);
        group
            .wait_exact(WAIT, "20 each after the restart", 100, &[20; 5])
            .await;
        wait_no_handoffs(store, root, WAIT).await;
        wait_acked_exact(&ledger, WAIT, "20 each acknowledged", 100, &[20; 5]).await;
    }
    let took = started.elapsed();
    let reports = group.check_plans();
    let moved: usize = reports.iter().map(|p| p.moved + p.placed).sum();
    let end = ledger.figures();
    let figures = LedgerFigures {
        longest_gap: end.longest_gap,
        gaps: end.gaps.saturating_sub(start.gaps),
        longest_overlap: end.longest_overlap,
        overlaps: end.overlaps.saturating_sub(start.overlaps),
        moves: end.moves.saturating_sub(start.moves),
    };
    assert_eq!(
        figures.moves, 200,
        "each restart moved its 20 items out and 20 back, nothing more (plans: {reports:?})"
    );
    assert!(moved >= 200, "the plans account for every move: {moved}");
    if exclusive || !prepare {
        ledger.assert_clean();
    }
    if exclusive && prepare {
        assert!(
            figures.longest_gap <= Duration::from_millis(100)
                && figures.gaps <= Duration::from_secs(5),
            "exclusive: an item active nowhere for too long: {figures:?}"
        );
    } else if prepare {
        assert_eq!(
            figures.gaps,
            Duration::ZERO,
            "an item active nowhere during a planned move: {figures:?}"
        );
    }
    group.halt().await;
    RollingRestart { took, figures }
}

/// Items whose values add up to more than one transaction takes are
/// assigned in transactions cut to the store's byte limit, and an item whose
/// value cannot fit in any transaction is refused without holding up the
/// others: `count` items of `size` bytes and one of `oversized` bytes.
pub async fn large_values_are_cut_to_the_store_limits(
    store: &dyn ClusterStore,
    root: &str,
    count: usize,
    size: usize,
    oversized: usize,
) {
    put_items_with(store, root, count, 3, |i| {
        vec![b'a' + u8::try_from(i % 26).unwrap_or(0); size]
    })
    .await;
    store
        .put(&format!("{root}work/huge"), &vec![b'h'; oversized])
        .await;
    let group = Group::spawn(store, root, &["m1"], |id| member_config(store, root, id)).await;
    let held = group
        .wait(WAIT, "every item that fits", |h| {
            h.get("m1").is_some_and(|s| s.len() >= count)
        })
        .await;
    let m1 = &held["m1"];
    assert_eq!(
        m1.len(),
        count,
        "the oversized item is not assigned: {m1:?}"
    );
    assert!(!m1.contains("huge"));
    let workload = group.members["m1"].worker().workload();
    assert!(
        workload.values().all(|v| v.len() == size),
        "values copied whole"
    );
    let keys = store.keys(&format!("{root}assignments/")).await;
    assert_eq!(
        keys.len(),
        count,
        "the oversized item has no assignment key"
    );
    group.halt().await;
}
