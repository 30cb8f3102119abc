//! Writes the leader did not see land: a transaction whose reply never came
//! and that the store applies later, and an operator's hand-written
//! assignment. On the memory store, on tokio's paused clock.

use std::collections::BTreeSet;
use std::time::Duration;

use leader_core::{Layout, Member, MemberConfig, MemberStore};
use worker_core::{KvWatch, MemoryStore, TxnOutcome};

const ROOT: &str = "late/";
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(30);

fn layout(root: &str) -> Layout {
    Layout {
        members: format!("{root}members/"),
        leader: format!("{root}leader"),
        work: format!("{root}work/"),
        assignments: format!("{root}assignments/"),
        handoff: format!("{root}handoff/"),
        drain: format!("{root}drain/"),
        sequence: format!("{root}sequence"),
    }
}

fn config(id: &str) -> MemberConfig {
    MemberConfig::new(id)
        .layout(layout(ROOT))
        .ttl(Duration::from_secs(3))
        .leader_soak(Duration::from_millis(300))
        .worker_timing(Duration::from_millis(100), Duration::from_millis(300))
}

/// The assignment keys as `member/work`.
fn assignments(store: &MemoryStore) -> BTreeSet<String> {
    let prefix = format!("{ROOT}assignments/");
    store
        .keys(&prefix)
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect()
}

/// Waits (at most [`WAIT`]) until `ok` holds of the store, woken by its writes.
async fn wait_store(store: &MemoryStore, what: &str, ok: impl Fn(&MemoryStore) -> bool) {
    let mut stream = store.watch("", store.revision()).await.expect("watch");
    let done = tokio::time::timeout(WAIT, async {
        while !ok(store) {
            stream.next().await.expect("watch event");
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "timed out waiting for {what}: {:?}",
        assignments(store)
    );
}

/// T1 = the first plan's transaction (items on m1 and m2) gets no reply and
/// waits at the store. The leader reads again and sees none of it; the
/// other member leaves; T2 puts every item on the leader. Then T1 lands: it must be rejected (the
/// sequence key moved with T2), or the items on m2 would be under two
/// members for the rest of the term.
#[tokio::test(start_paused = true)]
async fn a_transaction_that_lands_after_a_later_one_is_rejected() {
    let store = MemoryStore::new();
    for i in 0..4 {
        store.put(format!("{ROOT}work/w{i}"), format!("v{i}"));
    }
    store.hold_next_txn();
    let backend = MemberStore::from_backend(store.clone());
    let m1 = Member::spawn(&config("m1"), &backend).expect("m1");
    let m2 = Member::spawn(&config("m2"), &backend).expect("m2");
    wait_store(&store, "the first transaction held", |s| s.held_txns() == 1).await;
    assert!(assignments(&store).is_empty(), "T1 is held, not applied");
    let (leader, other, id) = if m1.is_leader() {
        (m1, m2, "m1")
    } else {
        (m2, m1, "m2")
    };
    other.halt().await;
    let all_on_leader: BTreeSet<String> = (0..4).map(|i| format!("{id}/w{i}")).collect();
    wait_store(&store, "every item on the leader (T2)", |s| {
        assignments(s) == all_on_leader
    })
    .await;
    assert_eq!(
        store.apply_held(),
        Some(TxnOutcome::Conflict),
        "the late T1 must fail its sequence check"
    );
    assert_eq!(
        assignments(&store),
        all_on_leader,
        "no item under two members"
    );
    leader.halt().await;
}

/// An operator writes an assignment by hand (an item on a member that is not
/// there, and a second owner of an assigned item): the leader's periodic
/// read finds it and the reconcile loop deletes both.
#[tokio::test(start_paused = true)]
async fn hand_written_assignments_are_repaired() {
    let store = MemoryStore::new();
    store.put(format!("{ROOT}work/w1"), "v1");
    let backend = MemberStore::from_backend(store.clone());
    let mut c = config("m1");
    // The periodic read comes 3 s after the last read or write (30 s by
    // default), within the wait.
    c.leader.verify_every = Duration::from_secs(3);
    let m1 = Member::spawn(&c, &backend).expect("m1");
    wait_store(&store, "w1 on m1", |s| {
        assignments(s) == BTreeSet::from(["m1/w1".to_owned()])
    })
    .await;
    store.put(format!("{ROOT}assignments/m9/w1"), "v1");
    store.put(format!("{ROOT}assignments/m9/w2"), "x");
    wait_store(&store, "the hand-written keys gone", |s| {
        assignments(s) == BTreeSet::from(["m1/w1".to_owned()])
    })
    .await;
    m1.halt().await;
}
