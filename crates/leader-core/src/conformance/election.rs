//! Sessions, the election and fencing, and the leader's hand-over (a
//! resignation) and failover (a leader that dies).

use bytes::Bytes;
use worker_core::{TxnOp, TxnOutcome};

use super::setup::{assert_kept, bounded, put_items, Group};
use super::{layout, member_config, ClusterStore, DoubleOwnerWatch, WAIT};
use crate::member::MemberHandle;

/// Sessions: a bound key lives with its session; a closed session cannot be
/// renewed and its keys are gone.
pub async fn sessions_and_bound_keys(store: &dyn ClusterStore, root: &str) {
    let s = store.connect(&layout(root)).await;
    let key = format!("{root}members/a");
    let session = s.membership.open_session(store.ttl()).await.expect("open");
    assert!(s
        .membership
        .put_bound(&session, &key, Bytes::from_static(b"{}"))
        .await
        .expect("put_bound"));
    assert_eq!(
        store.keys(&format!("{root}members/")).await,
        vec![key.clone()]
    );
    assert!(s.membership.renew_session(&session).await.expect("renew"));
    s.membership.close_session(&session).await.expect("close");
    assert!(
        store.keys(&format!("{root}members/")).await.is_empty(),
        "a closed session's key must be gone"
    );
    assert!(
        !s.membership.renew_session(&session).await.expect("renew"),
        "a closed session cannot be renewed"
    );
    s.membership
        .close_session(&session)
        .await
        .expect("closing twice is no error");
}

/// The election: one leader at a time; a deposed leader's write is rejected
/// and nothing of it is applied; resigning hands over.
pub async fn election_and_fencing(store: &dyn ClusterStore, root: &str) {
    let a = store.connect(&layout(root)).await;
    let b = store.connect(&layout(root)).await;
    let election = format!("{root}leader");
    let ttl = store.ttl();
    let sa = a.membership.open_session(ttl).await.expect("open a");
    let sb = b.membership.open_session(ttl).await.expect("open b");
    let fa = a
        .election
        .try_lead(&election, &sa, "a")
        .await
        .expect("campaign a")
        .expect("a leads a free election");
    assert!(
        b.election
            .try_lead(&election, &sb, "b")
            .await
            .expect("campaign b")
            .is_none(),
        "b must not lead while a does"
    );
    let again = a
        .election
        .try_lead(&election, &sa, "a")
        .await
        .expect("again");
    assert_eq!(
        again.as_ref(),
        Some(&fa),
        "asking again keeps the same term"
    );
    let observed = bounded(WAIT, "the observed leader", async {
        let mut stream = a.leader.observe().await.expect("observe");
        loop {
            if let Some(l) = stream.next().await.expect("observe") {
                return l;
            }
        }
    })
    .await;
    assert_eq!(observed.term, fa.term(), "the observed term is the fence's");

    let put = |k: &str| TxnOp::Put {
        key: format!("{root}assignments/{k}"),
        value: Bytes::from_static(b"v"),
    };
    let max = a.writer.max_ops();
    assert!(max >= 2, "max_ops {max}");
    let many: Vec<TxnOp> = (0..max).map(|i| put(&format!("m/{i}"))).collect();
    assert!(matches!(
        a.writer.apply(&fa, &many).await.expect("apply"),
        TxnOutcome::Applied { .. }
    ));
    assert_eq!(
        store.keys(&format!("{root}assignments/m/")).await.len(),
        max
    );

    // a's session ends: b leads, a's fence is rejected.
    a.membership.close_session(&sa).await.expect("close a");
    let fb = bounded(WAIT, "b to lead after a's session ended", async {
        let mut stream = b.leader.observe().await.expect("observe");
        loop {
            if let Some(f) = b.election.try_lead(&election, &sb, "b").await.expect("b") {
                return f;
            }
            stream.next().await.expect("observe");
        }
    })
    .await;
    assert_ne!(fb.term(), fa.term());
    let stale = vec![
        TxnOp::Delete {
            key: format!("{root}assignments/m/0"),
        },
        put("stale"),
    ];
    assert_eq!(
        a.writer.apply(&fa, &stale).await.expect("apply"),
        TxnOutcome::Fenced,
        "a deposed leader's write must be rejected"
    );
    let keys = store.keys(&format!("{root}assignments/")).await;
    assert!(!keys.iter().any(|k| k.ends_with("/stale")), "{keys:?}");
    assert!(
        keys.contains(&format!("{root}assignments/m/0")),
        "nothing of a fenced txn applies"
    );
    assert!(matches!(
        b.writer.apply(&fb, &[put("fresh")]).await.expect("apply"),
        TxnOutcome::Applied { .. }
    ));
    b.election.resign(&fb).await.expect("resign");
    b.election
        .resign(&fb)
        .await
        .expect("resigning twice is no error");
    b.membership.close_session(&sb).await.expect("close b");
}

/// A leader that halts resigns: another member leads well before a TTL, and
/// the work stays spread.
pub async fn leader_halt_hands_over(store: &dyn ClusterStore, root: &str) {
    put_items(store, root, 6, 1).await;
    let mut group = Group::spawn(store, root, &["a", "b"], |id| {
        member_config(store, root, id)
    })
    .await;
    group.wait_exact(WAIT, "3/3", 6, &[3, 3]).await;
    let leader = group.leader();
    let other = group
        .members
        .keys()
        .find(|id| **id != leader)
        .cloned()
        .expect("other");
    let mut leading = group.members[&other].leading();
    let started = tokio::time::Instant::now();
    group.members.remove(&leader).expect("leader").halt().await;
    bounded(
        store.ttl(),
        "the other member to lead after a resignation",
        async {
            while leading.borrow_and_update().is_none() {
                leading.changed().await.expect("member alive");
            }
        },
    )
    .await;
    let took = started.elapsed();
    assert!(took < store.ttl(), "hand-over took {took:?}");
    group
        .wait_exact(WAIT, "all 6 on the survivor", 6, &[6])
        .await;
    group.halt().await;
}

/// The leader dies without resigning: once its session expires another
/// member leads, moves only the dead leader's items (the fewest), and no
/// store position ever shows an item under two members.
pub async fn leader_killed_another_leads(store: &dyn ClusterStore, root: &str) {
    let observer = store.connect(&layout(root)).await;
    let watch = DoubleOwnerWatch::start(observer.kv.clone(), &format!("{root}assignments/"));
    put_items(store, root, 12, 2).await;
    let mut group = Group::spawn(store, root, &["a", "b", "c"], |id| {
        member_config(store, root, id)
    })
    .await;
    let before = group.wait_exact(WAIT, "4/4/4", 12, &[4, 4, 4]).await;
    let leader = group.leader();
    group.members.remove(&leader).expect("leader").kill().await;
    let after = group
        .wait_exact(
            store.expiry_bound(),
            "6/6 after the leader died",
            12,
            &[6, 6],
        )
        .await;
    assert_kept(&before, &after, "lost items");
    assert!(
        group.members.values().any(MemberHandle::is_leader),
        "a survivor leads"
    );
    group.check_plans();
    watch.assert_clean();
    group.halt().await;
}
