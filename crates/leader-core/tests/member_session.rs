//! Whole members on the memory store, on tokio's paused clock: a session
//! the store ends is noticed from the member key and released at once (in
//! exclusive mode); halt releases before it leaves; a member that never
//! acknowledges has its session ended by the leader after the handoff
//! timeout, and its items move on.

use std::time::Duration;

use leader_core::{Layout, Member, MemberConfig, MemberHandle, MemberStore};
use tokio::time::{timeout, Instant};
use worker_core::{MemoryStore, WorkloadChange};

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
    let session = m1.leading().borrow().clone().expect("m1 leads").session;
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
        &config("m1").weight(0).handoff_timeout(handoff_timeout),
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
