//! The member conformance suite on the memory store, on tokio's paused clock
//! (TTL expiry, soaks and settles advance virtually).

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use leader_core::conformance::{self, ClusterStore, Link};
use leader_core::{Layout, MemberStore};
use tokio::sync::watch;
use worker_core::{
    Election, Fence, FencedWrite, KvStream, KvWatch, KvWrite, Leader, LeaderStream, LeaderWait,
    Membership, MemoryStore, Revision, SessionId, Snapshot, StoreError, TxnOp, TxnOutcome,
    WatchEvent,
};

struct Memory(MemoryStore);

#[async_trait]
impl ClusterStore for Memory {
    async fn connect(&self, _layout: &Layout) -> MemberStore {
        MemberStore::from_backend(self.0.clone())
    }
    fn ttl(&self) -> Duration {
        Duration::from_secs(3)
    }
    fn expiry_bound(&self) -> Duration {
        Duration::from_secs(30)
    }
    async fn put(&self, key: &str, value: &[u8]) {
        self.0.put(key, value.to_vec());
    }
    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.0
            .keys(prefix)
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
    async fn connect_cuttable(&self, _layout: &Layout) -> (MemberStore, Box<dyn Link>) {
        let (tx, rx) = watch::channel(false);
        let store = Cut {
            inner: self.0.clone(),
            cut: rx,
        };
        (
            MemberStore::from_backend(store),
            Box::new(Switch(Arc::new(tx))),
        )
    }
    async fn end_session(&self, session: &str) {
        assert!(
            self.0.expire_session(&SessionId(session.to_owned())),
            "no session {session}"
        );
    }
}

/// The memory store behind a switch: while cut, every call and every open
/// stream fails as an unreachable server's would.
#[derive(Clone)]
struct Cut {
    inner: MemoryStore,
    cut: watch::Receiver<bool>,
}

struct Switch(Arc<watch::Sender<bool>>);

impl Link for Switch {
    fn cut(&self) {
        self.0.send_replace(true);
    }
    fn heal(&self) {
        self.0.send_replace(false);
    }
}

impl Cut {
    fn check(&self) -> Result<(), StoreError> {
        if *self.cut.borrow() {
            Err(StoreError::unavailable("cut off (test link)"))
        } else {
            Ok(())
        }
    }
}

/// Fails once the link is cut, whatever `next` was waiting for.
async fn until_cut<T>(
    mut cut: watch::Receiver<bool>,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    // The cut first: nothing gets through once it is made, not even an
    // event that became ready at the same instant.
    tokio::select! {
        biased;
        _ = cut.wait_for(|c| *c) => Err(StoreError::unavailable("cut off (test link)")),
        r = fut => r,
    }
}

struct CutKvStream(Box<dyn KvStream>, watch::Receiver<bool>);

#[async_trait]
impl KvStream for CutKvStream {
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        until_cut(self.1.clone(), self.0.next()).await
    }
}

struct CutLeaderStream(Box<dyn LeaderStream>, watch::Receiver<bool>);

#[async_trait]
impl LeaderStream for CutLeaderStream {
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        until_cut(self.1.clone(), self.0.next()).await
    }
}

#[async_trait]
impl KvWatch for Cut {
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.check()?;
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError> {
        self.check()?;
        let s = self.inner.watch(prefix, after).await?;
        Ok(Box::new(CutKvStream(s, self.cut.clone())))
    }
}

#[async_trait]
impl LeaderWait for Cut {
    async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        self.check()?;
        self.inner.leader().await
    }
    async fn observe(&self) -> Result<Box<dyn LeaderStream>, StoreError> {
        self.check()?;
        let s = self.inner.observe().await?;
        Ok(Box::new(CutLeaderStream(s, self.cut.clone())))
    }
}

#[async_trait]
impl Membership for Cut {
    async fn open_session(&self, ttl: Duration) -> Result<SessionId, StoreError> {
        self.check()?;
        self.inner.open_session(ttl).await
    }
    async fn renew_session(&self, session: &SessionId) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.renew_session(session).await
    }
    async fn close_session(&self, session: &SessionId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.close_session(session).await
    }
    async fn put_bound(
        &self,
        session: &SessionId,
        key: &str,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.put_bound(session, key, value).await
    }
}

#[async_trait]
impl Election for Cut {
    async fn try_lead(
        &self,
        election: &str,
        session: &SessionId,
        value: &str,
    ) -> Result<Option<Fence>, StoreError> {
        self.check()?;
        self.inner.try_lead(election, session, value).await
    }
    async fn leader_value(&self, election: &str) -> Result<Option<String>, StoreError> {
        self.check()?;
        self.inner.leader_value(election).await
    }
    async fn resign(&self, fence: &Fence) -> Result<(), StoreError> {
        self.check()?;
        self.inner.resign(fence).await
    }
}

#[async_trait]
impl FencedWrite for Cut {
    fn max_ops(&self) -> usize {
        self.inner.max_ops()
    }
    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        self.check()?;
        self.inner.apply(fence, ops).await
    }
    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<worker_core::ConsistentRead, StoreError> {
        self.check()?;
        self.inner.read_consistent(prefixes, keys).await
    }
}

#[async_trait]
impl KvWrite for Cut {
    async fn put_key(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_key(key, value).await
    }
    async fn delete_key(&self, key: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete_key(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn sessions_and_bound_keys() {
    conformance::sessions_and_bound_keys(&Memory(MemoryStore::new()), "s/").await;
}

#[tokio::test(start_paused = true)]
async fn election_and_fencing() {
    conformance::election_and_fencing(&Memory(MemoryStore::new()), "e/").await;
}

#[tokio::test(start_paused = true)]
async fn members_spread_work() {
    conformance::members_spread_work(&Memory(MemoryStore::new()), "m/").await;
}

#[tokio::test(start_paused = true)]
async fn leader_halt_hands_over() {
    conformance::leader_halt_hands_over(&Memory(MemoryStore::new()), "h/").await;
}

#[tokio::test(start_paused = true)]
async fn leader_killed_another_leads() {
    conformance::leader_killed_another_leads(&Memory(MemoryStore::new()), "k/").await;
}

#[tokio::test(start_paused = true)]
async fn restart_within_rebalance_delay_moves_nothing() {
    conformance::restart_within_rebalance_delay_moves_nothing(&Memory(MemoryStore::new()), "r/")
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_session_expires_without_renewal() {
    use worker_core::Membership;
    let store = MemoryStore::new();
    let session = store.open_session(Duration::from_secs(2)).await.unwrap();
    assert!(store
        .put_bound(&session, "p/members/a", bytes::Bytes::new())
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        store.keys("p/members/").is_empty(),
        "expired session's key must be gone"
    );
    assert!(!store.renew_session(&session).await.unwrap());
    assert_eq!(store.expired_sessions(), 1);
}

/// A member whose session expired (an outage longer than the TTL) registers
/// again with a new session; a leader that loses its session stops leading at
/// once, and leads again (a new term) once registered again.
#[tokio::test(start_paused = true)]
async fn an_expired_session_is_replaced_and_its_leadership_ends() {
    use std::time::Duration;
    use worker_core::LeaderWait;
    let store = MemoryStore::new();
    let config = conformance::member_config(&Memory(store.clone()), "x/", "m1");
    let member = leader_core::Member::spawn(&config, &MemberStore::from_backend(store.clone()))
        .expect("spawn");
    let mut leading = member.leading();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(f) = leading.borrow_and_update().clone() {
                return f;
            }
            leading.changed().await.expect("member alive");
        }
    })
    .await
    .expect("m1 leads");
    assert_eq!(store.keys("x/members/").len(), 1);
    assert!(store.expire_session(first.session()));
    assert!(
        store.keys("x/members/").is_empty(),
        "the member key went with the session"
    );
    let second = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            leading.changed().await.expect("member alive");
            if let Some(f) = leading.borrow_and_update().clone() {
                return f;
            }
        }
    })
    .await
    .expect("m1 leads again after registering again");
    assert_ne!(second.session(), first.session(), "a new session");
    assert!(second.term() > first.term(), "a new term");
    assert_eq!(store.keys("x/members/"), vec![b"x/members/m1".to_vec()]);
    assert_eq!(
        store.leader().await.unwrap().map(|l| l.term),
        Some(second.term())
    );
    member.halt().await;
    assert!(
        store.keys("x/members/").is_empty(),
        "halt closes the session"
    );
    assert!(store.current_leader().is_none(), "halt resigns");
}

/// The double-owner watch the failover checks rely on does catch an item
/// under two members.
#[tokio::test(start_paused = true)]
async fn the_double_owner_watch_catches_an_item_under_two_members() {
    let store = MemoryStore::new();
    let watch = conformance::DoubleOwnerWatch::start(std::sync::Arc::new(store.clone()), "d/");
    store.put("d/a/w1", "");
    store.put("d/b/w2", "");
    store.put("d/b/w1", "");
    // Virtual time: each pause lets the watch task run; the bound is 5 s.
    tokio::time::timeout(Duration::from_secs(5), async {
        while watch.violations().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the watch reports w1 under two members");
    let v = watch.violations();
    assert!(
        v.iter().all(|x| x.starts_with("w1 under 2 members")),
        "{v:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn handoff_never_double_owns() {
    conformance::handoff_never_double_owns(&Memory(MemoryStore::new()), "ho/").await;
}

#[tokio::test(start_paused = true)]
async fn without_handoff_a_drain_double_owns() {
    conformance::without_handoff_a_drain_double_owns(&Memory(MemoryStore::new()), "nh/").await;
}

#[tokio::test(start_paused = true)]
async fn rolling_restart() {
    let r = conformance::rolling_restart(&Memory(MemoryStore::new()), "rr/", false).await;
    println!("memory: rolling restart: {r:?}");
}

#[tokio::test(start_paused = true)]
async fn rolling_restart_revoke_first() {
    let r = conformance::rolling_restart_revoke_first(&Memory(MemoryStore::new()), "rp/").await;
    println!("memory, prepare off: rolling restart: {r:?}");
}

#[tokio::test(start_paused = true)]
async fn rolling_restart_exclusive() {
    let r = conformance::rolling_restart(&Memory(MemoryStore::new()), "rx/", true).await;
    println!("memory, exclusive: rolling restart: {r:?}");
}

#[test]
fn the_ledger_sees_an_item_held_twice() {
    let ledger = conformance::AckedLedger::new();
    let t = tokio::time::Instant::now();
    let x = |v: &[&str]| v.iter().map(|s| worker_core::WorkId::from(*s)).collect();
    ledger.set("a", x(&["w1", "w2"]), t);
    ledger.set("b", x(&["w3"]), t);
    assert!(ledger.violations().is_empty());
    ledger.set("a", x(&["w2"]), t + Duration::from_millis(5));
    ledger.set("b", x(&["w1", "w3"]), t + Duration::from_millis(20));
    assert!(ledger.violations().is_empty());
    assert_eq!(ledger.moves(), 1);
    assert_eq!(ledger.longest_unowned(), Duration::from_millis(15));
    ledger.set("a", x(&["w2", "w3"]), t + Duration::from_millis(30));
    assert_eq!(ledger.violations().len(), 1, "{:?}", ledger.violations());
}

#[tokio::test(start_paused = true)]
async fn exclusive_cut_off_member_never_double_owns() {
    conformance::exclusive_cut_off_member_never_double_owns(&Memory(MemoryStore::new()), "x/")
        .await;
}

#[tokio::test(start_paused = true)]
async fn without_exclusive_a_cut_off_member_double_owns() {
    conformance::without_exclusive_a_cut_off_member_double_owns(&Memory(MemoryStore::new()), "nx/")
        .await;
}

#[tokio::test(start_paused = true)]
async fn exclusive_session_ended_while_cut_off_never_double_owns() {
    conformance::exclusive_session_ended_while_cut_off_never_double_owns(
        &Memory(MemoryStore::new()),
        "xe/",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns() {
    conformance::with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns(
        &Memory(MemoryStore::new()),
        "xm/",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stuck_member_has_its_session_ended_after_the_handoff_timeout() {
    conformance::a_stuck_member_has_its_session_ended_after_the_handoff_timeout(
        &Memory(MemoryStore::new()),
        "st/",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn moves_are_throttled() {
    conformance::moves_are_throttled(&Memory(MemoryStore::new()), "t/").await;
}

#[tokio::test(start_paused = true)]
async fn takeover_finds_an_item_under_two_members() {
    conformance::takeover_finds_an_item_under_two_members(&Memory(MemoryStore::new()), "two/")
        .await;
}

#[tokio::test(start_paused = true)]
async fn large_values_are_cut_to_the_store_limits() {
    // The memory store playing a Consul agent with its default limits.
    let store = MemoryStore::new();
    store.set_txn_limits(worker_core::TxnLimits {
        max_ops: 62,
        max_bytes: 512 * 1024 - 1024,
        max_value: 512 * 1024,
        op_overhead: 64,
        base64_values: true,
    });
    conformance::large_values_are_cut_to_the_store_limits(
        &Memory(store),
        "big/",
        130,
        15 * 1024,
        400 * 1024,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn replicas_survive_a_zone_outage() {
    let gap =
        conformance::replicas_survive_a_zone_outage(&Memory(MemoryStore::new()), "r/", false).await;
    println!("memory: longest time an item had no acknowledged primary: {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn exclusive_replicas_survive_a_zone_outage() {
    let gap =
        conformance::replicas_survive_a_zone_outage(&Memory(MemoryStore::new()), "rx/", true).await;
    println!("memory, exclusive: longest time an item had no acknowledged primary: {gap:?}");
}
