//! The scenario's settings: [`Params`] as `main` fills them from the
//! command line, the TTL each size runs with, and the detection bound that
//! TTL documents.

use std::time::Duration;

use crate::stores::Kind;

/// Settings of the leader scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// (members, items) pairs, each run on a fresh store.
    pub sizes: Vec<(usize, usize)>,
    /// Consul session TTL (Consul's minimum is 10 s).
    pub consul_ttl: Duration,
    /// etcd lease TTL.
    pub etcd_ttl: Duration,
    /// The TTL on both stores from [`LARGE_MEMBERS`] members on (at least).
    pub large_ttl: Duration,
    /// The leader's soak.
    pub leader_soak: Duration,
    /// The workers' soak.
    pub worker_soak: Duration,
    /// The workers' wait after a new leader appears.
    pub leader_settle: Duration,
    /// Length of the idle window.
    pub idle: Duration,
}

/// How often etcd's lessor looks for expired leases: a lease is revoked up
/// to this long after its TTL ran out.
pub const ETCD_LESSOR_CHECK: Duration = Duration::from_millis(500);

/// The start-up the write-rate bound (≥ 0.8 × the bare loop) is set for;
/// smaller start-ups (8 to 164 transactions) are printed, not judged.
pub const WRITES_BOUND_ITEMS: usize = 100_000;

/// From this many members on, the TTL is [`Params::large_ttl`]: with 1,000
/// members, the store and the bench on two cores, a 3 s etcd lease expires
/// during start-up (renewals every second wait behind the registrations).
pub const LARGE_MEMBERS: usize = 1000;

impl Params {
    /// The session / lease TTL of `members` members on `kind`: the store's,
    /// at least [`Params::large_ttl`] from [`LARGE_MEMBERS`] members on.
    pub(super) fn ttl(&self, kind: Kind, members: usize) -> Duration {
        let ttl = match kind {
            Kind::Consul => self.consul_ttl,
            Kind::Etcd => self.etcd_ttl,
        };
        if members >= LARGE_MEMBERS {
            ttl.max(self.large_ttl)
        } else {
            ttl
        }
    }

    /// The documented bound on a dead member's detection (docs/etcd.md,
    /// docs/leader.md): etcd, the TTL (rounded up to whole seconds) plus
    /// the 500 ms of its lessor's expiry check; Consul with a plain session,
    /// 2 × TTL.
    pub(super) fn detection_bound(&self, kind: Kind, members: usize) -> Duration {
        let ttl = self.ttl(kind, members);
        match kind {
            Kind::Consul => ttl * 2,
            Kind::Etcd => Duration::from_secs(ttl.as_secs_f64().ceil() as u64) + ETCD_LESSOR_CHECK,
        }
    }
}
