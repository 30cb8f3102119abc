//! The member conformance suite every backend's tests run (feature
//! `conformance`): sessions, the election, fenced writes and whole members
//! spreading work, on the backend under test.
//!
//! A backend's test crate implements [`ClusterStore`] over a real server (or
//! the memory store) and calls each check with its own key root, so checks
//! can share a server. Waits are bounded; a check panics saying what it
//! waited for.
//!
//! The checks live by what they exercise: `election.rs` (sessions, the
//! election and fencing, leader hand-over and failover), `membership.rs`
//! (members spreading work, joining, leaving, restarting), `handoff.rs` (the
//! acknowledged handoff, throttled moves, stuck members) and `exclusive.rs`
//! (exclusive mode with members cut off); `checkers.rs` holds what watches a
//! check for an item held twice ([`DoubleOwnerWatch`], [`AckedLedger`]),
//! and `setup.rs` the set-up every check shares. All are re-exported here.
#![allow(clippy::missing_panics_doc)] // a test suite: every check panics when the store fails it

mod checkers;
mod election;
mod exclusive;
mod handoff;
mod membership;
pub mod replica_truth;
mod replicas;
mod setup;

use std::time::Duration;

use async_trait::async_trait;

use crate::layout::Layout;
use crate::member::{MemberConfig, MemberStore};

pub use checkers::{AckedLedger, DoubleOwnerWatch, LedgerFigures};
pub use election::{
    election_and_fencing, leader_halt_hands_over, leader_killed_another_leads,
    sessions_and_bound_keys,
};
pub use exclusive::{
    exclusive_cut_off_member_never_double_owns,
    exclusive_session_ended_while_cut_off_never_double_owns,
    with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns,
    without_exclusive_a_cut_off_member_double_owns,
};
pub use handoff::{
    a_stuck_member_has_its_session_ended_after_the_handoff_timeout, handoff_never_double_owns,
    moves_are_throttled, takeover_finds_an_item_under_two_members,
    without_handoff_a_drain_double_owns,
};
pub use membership::{
    large_values_are_cut_to_the_store_limits, members_spread_work,
    restart_within_rebalance_delay_moves_nothing, rolling_restart, rolling_restart_revoke_first,
    RollingRestart,
};
pub use replicas::replicas_survive_a_zone_outage;

/// What a backend gives the suite.
#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// A connection to the store as a new process would make one, its
    /// leader observation following `layout.leader`; each member of a check
    /// gets its own.
    async fn connect(&self, layout: &Layout) -> MemberStore;
    /// The session TTL to use (the store's minimum or a little above).
    fn ttl(&self) -> Duration;
    /// Bound on waiting for a killed member's session to expire and its
    /// items to settle elsewhere.
    fn expiry_bound(&self) -> Duration;
    /// Writes `key = value` with the store's own client.
    async fn put(&self, key: &str, value: &[u8]);
    /// Every key under `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> Vec<String>;
    /// Like [`connect`](Self::connect), through a link the check can cut
    /// (a fault proxy in front of a server; a switch for the memory store).
    async fn connect_cuttable(&self, layout: &Layout) -> (MemberStore, Box<dyn Link>);
    /// Ends `session` at once, as the store's own tools do (Consul
    /// `PUT /v1/session/destroy/<id>`, etcd `lease revoke`; memory:
    /// `MemoryStore::expire_session`).
    async fn end_session(&self, session: &str);
}

/// The link between one member and the store, which a check can cut (a
/// network partition: nothing gets through) and heal.
pub trait Link: Send + Sync {
    /// Nothing gets through from now on.
    fn cut(&self);
    /// Traffic flows again.
    fn heal(&self);
}

/// Bound on waits that involve no expiry.
pub const WAIT: Duration = Duration::from_secs(30);

/// The layout of a check: everything under `root`.
pub fn layout(root: &str) -> Layout {
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

/// A member config with the suite's short timings.
pub fn member_config(store: &dyn ClusterStore, root: &str, id: &str) -> MemberConfig {
    MemberConfig::new(id)
        .layout(layout(root))
        .ttl(store.ttl())
        .leader_soak(Duration::from_millis(300))
        .worker_timing(Duration::from_millis(100), Duration::from_millis(300))
}
