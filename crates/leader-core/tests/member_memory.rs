//! The member conformance suite on the memory store, on tokio's paused clock
//! (TTL expiry, soaks and settles advance virtually).

use std::time::Duration;

use async_trait::async_trait;
use leader_core::conformance::{self, ClusterStore};
use leader_core::{Layout, MemberStore};
use worker_core::MemoryStore;

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
