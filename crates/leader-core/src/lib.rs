//! Backend-neutral leader half of coordinator.
//!
//! The leader spreads work items over the live members of a service. The heart of it is
//! [`plan()`], a pure, deterministic function from (items, members with weights, current
//! assignment) to a new assignment that is balanced (every member holds its weighted quota
//! rounded down or up) and moves the fewest items possible. See `docs/planner.md`.
//!
//! ```
//! use std::collections::{BTreeMap, BTreeSet};
//! use std::sync::Arc;
//! use leader_core::{plan, Assignment, MemberId};
//! use worker_core::WorkId;
//!
//! let items: BTreeSet<WorkId> = (0..30).map(|i| Arc::from(format!("item-{i:02}"))).collect();
//! let members: BTreeMap<MemberId, u32> =
//!     ["m1", "m2", "m3"].into_iter().map(|m| (Arc::from(m), 1)).collect();
//! let p = plan(&items, &members, &Assignment::new());
//! assert_eq!(p.assignment.len(), 30);
//! assert_eq!(p.placed, 30);
//! assert_eq!(p.moved, 0);
//! ```
//!
//! Its main use is a [`Member`]: it registers, takes part in the election,
//! runs the leader loop while elected and follows its own assignments with a
//! worker. Here on the in-process memory store, with manual acknowledgement:
//!
//! ```
//! use std::time::Duration;
//! use leader_core::{Member, MemberConfig, MemberStore};
//! use worker_core::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), worker_core::ConfigError> {
//! let store = MemoryStore::new();
//! let config = MemberConfig::new("m1")
//!     .worker_timing(Duration::from_millis(10), Duration::from_millis(10))
//!     .leader_soak(Duration::from_millis(10))
//!     .manual_ack(true);
//! for item in ["a", "b", "c"] {
//!     store.put(format!("{}{item}", config.layout.work), "");
//! }
//! let member = Member::spawn(&config, &MemberStore::from_backend(store))?;
//! let mut changes = member.worker().changes();
//! let mut held = 0;
//! while held < 3 {
//!     let change = changes.next().await.expect("the member runs");
//!     held += change.added.len();
//!     held -= change.removed.len();
//!     member.ack(change.revision); // applied: the leader may move what it removed
//! }
//! assert!(member.is_leader());
//! member.halt().await;
//! # Ok(())
//! # }
//! ```
//!
//! This crate has no feature flags.

pub mod plan;

pub use plan::{min_moves, plan, quotas, stable_hash, Assignment, MemberId, Plan};

pub mod replicas;

pub use replicas::{
    plan_replicas, replica_counts, ReplicaAssignment, ReplicaMember, ReplicaPlan, Replicas, Role,
};

mod clock;
pub mod follow;
pub mod layout;
mod leader;
pub mod machine;
mod member;
pub mod membership;
pub mod metrics;

pub use layout::{Layout, MemberMeta, MAX_ZONE_LEN};
pub use leader::LeaderExit;
pub use machine::{
    LeaderMachine, LeaderRead, LeaderTiming, PlanReport, DEFAULT_LEADER_SOAK, DEFAULT_VERIFY_EVERY,
};
pub use member::{
    Acker, Handoff, Left, Member, MemberConfig, MemberHandle, MemberObserver, MemberStore,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_MEMBER_LEADER_SETTLE, DEFAULT_TTL,
};
pub use membership::{MemberAction, MemberMachine, MemberTiming};

#[cfg(feature = "conformance")]
pub mod conformance;
