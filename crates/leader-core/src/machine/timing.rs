//! The leader's timing ([`LeaderTiming`]) and its defaults.

use std::time::Duration;

/// The leader's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderTiming {
    /// Quiet time after a member or item change before planning. Default
    /// [`DEFAULT_LEADER_SOAK`].
    pub soak: Duration,
    /// Longest a plan waits while changes keep coming. Default 10 × soak.
    pub max_soak: Duration,
    /// How long the leader stays idle (no read, no write) before it reads
    /// the assignments again to find and repair writes it did not make.
    /// Default [`DEFAULT_VERIFY_EVERY`], whatever the soak: at 100,000 items
    /// each such read is a few megabytes.
    pub verify_every: Duration,
    /// First retry delay after a failed write. Default 100 ms.
    pub backoff_min: Duration,
    /// Largest retry delay. Default 10 s.
    pub backoff_max: Duration,
    /// How long the items of a member that left stay assigned to it, so that
    /// a member restarted with the same id within it gets them back and
    /// nothing moves. Default 0 (its items are placed at the next plan).
    pub rebalance_delay: Duration,
    /// At most this many moves (revoked from a live member, not yet assigned
    /// to the new one) at once. Default `usize::MAX` (unlimited).
    pub max_moves_in_flight: usize,
    /// Exclusive mode: `Some(margin)`. An item of a member that is gone goes
    /// to another member only a whole TTL of that member (its `ttl_ms`, else
    /// [`member_ttl`](Self::member_ttl)) after the leader saw the member's key
    /// vanish, and only if the key is still absent then: the store may end a
    /// session early (an operator, a node deregistration), while the member,
    /// cut off, still believes in its lease until `deadline − margin`. `None`:
    /// the items of a member that is gone are reassigned at once.
    pub exclusive: Option<Duration>,
    /// The session TTL assumed for a member whose key does not say (its
    /// `ttl_ms`). `Member` sets it to its own TTL. Default 15 s (longer
    /// than any default TTL: the safe side for a key that does not say).
    pub member_ttl: Duration,
    /// A move from a live member that has not acknowledged its revoke after
    /// this long ends that member's session (the leader closes it, which
    /// fences the member); the move then proceeds as for a gone member. Such
    /// a move no longer counts against `max_moves_in_flight`. Default
    /// [`DEFAULT_HANDOFF_TIMEOUT`].
    pub handoff_timeout: Duration,
    /// Replicas per item: one primary and `replicas − 1` secondaries on
    /// distinct members, spread over the members' zones
    /// ([`plan_replicas`](crate::plan_replicas)). A work item's
    /// [envelope](worker_core::Envelope) may ask for another count. Default
    /// 1: one owner per item, planned by [`plan()`](crate::plan()).
    pub replicas: u32,
    /// Make-before-break moves: a planned move of an item's primary role
    /// from a live member to another (a drain, a join's rebalance, a weight
    /// change), both acknowledging, first gives the new member the item as
    /// a secondary (preparing) and moves the primary role once that member
    /// acknowledged it. In exclusive mode the old primary then releases
    /// before the new one is promoted; otherwise the new one is promoted
    /// first and the old one released once the promotion is acknowledged.
    /// Default `true`: the application must tell a secondary (preparing,
    /// not active) from a primary. `false`: every move is revoke,
    /// acknowledgement, assign, and no secondary appears unless `replicas`
    /// asks for them.
    pub prepare: bool,
    /// Tests only (the conformance suite's control): `false` waits only the
    /// margin after a gone member's key vanished, as before the store's
    /// early session ends were covered. Always true in the product.
    #[doc(hidden)]
    pub lease_wait: bool,
}

/// The default [`LeaderTiming::handoff_timeout`]: 5 minutes, far above what
/// a handoff takes (the old owner's soak, one member-key write and the
/// leader's watch: seconds) and above what an application or `--exec`
/// handler should need to stop an item, yet short enough that a hung member
/// does not keep its items from the cluster for long.
pub const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(300);

/// The default [`LeaderTiming::soak`]: 1 s. Members that start together
/// register within it; a dead member's items wait for it once, after the
/// store noticed the death (see `docs/leader.md`, "Failover with the
/// defaults").
pub const DEFAULT_LEADER_SOAK: Duration = Duration::from_secs(1);

/// The default [`LeaderTiming::verify_every`]: 30 s.
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(30);

impl Default for LeaderTiming {
    /// [`LeaderTiming::with_soak`] with [`DEFAULT_LEADER_SOAK`].
    fn default() -> Self {
        Self::with_soak(DEFAULT_LEADER_SOAK)
    }
}

impl LeaderTiming {
    /// Default timing with `soak` (and `max_soak` = 10 × soak).
    pub fn with_soak(soak: Duration) -> Self {
        Self {
            soak,
            max_soak: soak.saturating_mul(10),
            verify_every: DEFAULT_VERIFY_EVERY,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            rebalance_delay: Duration::ZERO,
            max_moves_in_flight: usize::MAX,
            replicas: 1,
            prepare: true,
            exclusive: None,
            member_ttl: Duration::from_secs(15),
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
            lease_wait: true,
        }
    }
}
