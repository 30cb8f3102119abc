//! `MemberConfig::validate` refuses settings that contradict each other,
//! naming the setting, whether they were set through the builder or field by
//! field; `Member::spawn` also refuses a TTL the store would round up.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use leader_core::{Member, MemberConfig, MemberStore};
use worker_core::{Membership, MemoryStore, SessionId, StoreError};

fn field(c: &MemberConfig) -> String {
    c.validate().expect_err("refused").field.to_string()
}

#[test]
fn the_builder_gives_a_valid_config() {
    let c = MemberConfig::new("m1").exclusive(Duration::from_secs(1));
    c.validate().expect("valid");
    MemberConfig::new("m1")
        .max_moves_in_flight(2)
        .validate()
        .expect("valid");
}

#[test]
fn exclusive_mode_set_in_one_place_only_is_refused() {
    // The member is exclusive, its worker does not start released: the
    // application would get the workload before the member holds a lease.
    let mut c = MemberConfig::new("m1");
    c.exclusive = Some(Duration::from_secs(3));
    c.leader.exclusive = Some(Duration::from_secs(3));
    assert_eq!(field(&c), "exclusive");
    // The reverse: a worker that starts released would never be restored.
    let mut c = MemberConfig::new("m1");
    c.worker.start_released = true;
    assert_eq!(field(&c), "exclusive");
    // The leader's wait and the member's self-fencing disagree.
    let mut c = MemberConfig::new("m1").exclusive(Duration::from_secs(3));
    c.leader.exclusive = None;
    assert_eq!(field(&c), "exclusive");
}

#[test]
fn other_contradictions_name_their_setting() {
    let mut c = MemberConfig::new("m1");
    c.leader.max_moves_in_flight = 0;
    assert_eq!(field(&c), "max_moves_in_flight");

    let mut c = MemberConfig::new("m1").exclusive(Duration::from_secs(3));
    c.exclusive = Some(c.ttl);
    c.leader.exclusive = Some(c.ttl);
    assert_eq!(field(&c), "exclusive_margin", "a margin as long as the TTL");

    let mut c = MemberConfig::new("m1");
    c.leader.max_soak = Duration::from_millis(1);
    assert_eq!(field(&c), "leader_soak");

    let mut c = MemberConfig::new("m1");
    c.leader.backoff_min = Duration::ZERO;
    assert_eq!(field(&c), "leader.backoff_min");
}

#[tokio::test(start_paused = true)]
async fn spawn_refuses_what_validate_refuses() {
    let store = MemberStore::from_backend(MemoryStore::new());
    let mut c = MemberConfig::new("m1");
    c.leader.max_moves_in_flight = 0;
    let e = Member::spawn(&c, &store).expect_err("refused");
    assert_eq!(e.field, "max_moves_in_flight");
}

/// The memory store with Consul's shortest session TTL.
struct TenSecondSessions(MemoryStore);

#[async_trait]
impl Membership for TenSecondSessions {
    fn min_ttl(&self) -> Duration {
        Duration::from_secs(10)
    }
    async fn open_session(&self, ttl: Duration) -> Result<SessionId, StoreError> {
        self.0.open_session(ttl).await
    }
    async fn renew_session(&self, session: &SessionId) -> Result<bool, StoreError> {
        self.0.renew_session(session).await
    }
    async fn close_session(&self, session: &SessionId) -> Result<(), StoreError> {
        self.0.close_session(session).await
    }
    async fn put_bound(
        &self,
        session: &SessionId,
        key: &str,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        self.0.put_bound(session, key, value).await
    }
}

#[tokio::test(start_paused = true)]
async fn spawn_refuses_a_ttl_the_store_would_round_up() {
    let memory = MemoryStore::new();
    let mut store = MemberStore::from_backend(memory.clone());
    store.membership = Arc::new(TenSecondSessions(memory));
    let c = MemberConfig::new("m1").ttl(Duration::from_secs(5));
    let e = Member::spawn(&c, &store).expect_err("refused");
    assert_eq!(e.field, "ttl");
    let ok = Member::spawn(
        &MemberConfig::new("m1").ttl(Duration::from_secs(10)),
        &store,
    )
    .expect("10s is enough");
    ok.halt().await;
}

/// A member's zone travels in its member key, and keys written without one
/// (by older members) still parse.
#[test]
fn the_zone_is_published_in_the_member_key() {
    use leader_core::MemberMeta;
    let config = MemberConfig::new("m1").zone("eu-west-1a");
    config.validate().expect("a valid zone");
    let meta = config.meta.clone();
    let json = String::from_utf8(meta.to_bytes().to_vec()).expect("utf-8");
    assert!(json.contains(r#""zone":"eu-west-1a""#), "{json}");
    assert_eq!(MemberMeta::parse(json.as_bytes()).expect("parses"), meta);
    let old = MemberMeta::parse(br#"{"weight":2,"acked":5}"#).expect("parses");
    assert_eq!(old.zone, None);
    let none = String::from_utf8(MemberMeta::default().to_bytes().to_vec()).expect("utf-8");
    assert!(!none.contains("zone"), "{none}");
    for bad in ["", "  ", "a\nb"] {
        let e = MemberConfig::new("m1").zone(bad).validate().unwrap_err();
        assert!(e.to_string().contains("zone"), "{e}");
    }
    let long = "z".repeat(leader_core::MAX_ZONE_LEN + 1);
    assert!(MemberConfig::new("m1").zone(long).validate().is_err());
}
