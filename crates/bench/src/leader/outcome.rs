//! What the scenario measures: one membership change timed in four parts
//! ([`Change`]), the idle window ([`Idle`]), the rate of a run of fenced
//! transactions ([`Rate`]) and the start-up writes against the bare loop
//! ([`Writes`]), the bulk add ([`Bulk`]), memory ([`Memory`]), and all of it
//! for one size on one store ([`Outcome`]).

use std::time::{Duration, Instant};

use leader_core::PlanReport;
use worker_core::TxnOp;

use super::recording::Sent;
use crate::proxy::Counts;
use crate::stores::Kind;

/// One membership change, timed in four parts.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The event → the members prefix shows it (kill: member key deleted;
    /// join: member key written).
    pub detection: Duration,
    /// → the first assignment write after that.
    pub leader_soak: Duration,
    /// → the last assignment write of the plan (the store holds the new,
    /// balanced assignment).
    pub writes: Duration,
    /// → every live member's settled workload is its new assignment.
    pub worker_soak: Duration,
    /// The event → all settled.
    pub total: Duration,
    /// Plans made after the event.
    pub plans: Vec<PlanReport>,
}

impl Change {
    /// Items the plans moved.
    pub(super) fn moved(&self) -> usize {
        self.plans.iter().map(|p| p.moved).sum()
    }
    /// The fewest moves the plans could have made.
    pub(super) fn min_moves(&self) -> usize {
        self.plans.iter().map(|p| p.min_moves).sum()
    }
    /// Items the plans placed (they had no member).
    pub(super) fn placed(&self) -> usize {
        self.plans.iter().map(|p| p.placed).sum()
    }
}

/// The idle window's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    /// Length (s).
    pub secs: f64,
    /// The members' store requests, counted by the proxy.
    pub counts: Counts,
    /// Store CPU (cores busy on average).
    pub store_cpu: f64,
    /// The members' CPU in this process (cores busy on average), the
    /// bench's own threads (observers, writer) subtracted; the proxy runs
    /// in a process of its own.
    pub members_cpu: f64,
}

/// Throughput of a run of fenced transactions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    /// Transactions applied.
    pub txns: usize,
    /// Keys written or deleted (the sequence check and guards not counted).
    pub keys: usize,
    /// The time they spanned, first sent → last answered, pauses longer than
    /// [`PAUSE`] (soaks, waits for acknowledgements) left out.
    pub busy: Duration,
    /// Of which inside `apply` (the round trips to the store).
    pub in_apply: Duration,
}

/// A gap between two transactions longer than this is a pause (a soak, a
/// wait for an acknowledgement), not write time.
pub const PAUSE: Duration = Duration::from_millis(100);

impl Rate {
    /// Keys per second of busy time.
    pub fn per_sec(&self) -> f64 {
        self.keys as f64 / self.busy.as_secs_f64()
    }

    /// The rate of the applied transactions in `sent` (in the order sent).
    pub(super) fn of(sent: &[Sent]) -> Self {
        let mut rate = Self::default();
        let mut run: Option<(Instant, Instant)> = None;
        for t in sent.iter().filter(|t| t.applied) {
            rate.txns += 1;
            rate.keys += t
                .ops
                .iter()
                .filter(|op| matches!(op, TxnOp::Put { .. } | TxnOp::Delete { .. }))
                .count();
            rate.in_apply += t.ended.duration_since(t.started);
            run = match run {
                Some((from, to)) if t.started.saturating_duration_since(to) <= PAUSE => {
                    Some((from, t.ended.max(to)))
                }
                Some((from, to)) => {
                    rate.busy += to.duration_since(from);
                    Some((t.started, t.ended))
                }
                None => Some((t.started, t.ended)),
            };
        }
        if let Some((from, to)) = run {
            rate.busy += to.duration_since(from);
        }
        rate
    }
}

/// The leader's start-up writes next to a bare loop of the same transactions.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    /// The leader's.
    pub leader: Rate,
    /// The same transactions sent by a plain loop through the same backend
    /// and proxy: the assignment puts to the very keys, with the very
    /// values; the fence and anything else under a prefix of its own (see
    /// `bare_op`).
    pub bare: Rate,
}

impl Writes {
    /// The leader's rate over the bare loop's.
    pub fn ratio(&self) -> f64 {
        self.leader.per_sec() / self.bare.per_sec()
    }
}

/// A bulk add of work items, timed in four parts.
#[derive(Debug, Clone, Default)]
pub struct Bulk {
    /// Items added.
    pub added: usize,
    /// The bench's own write of the new items (plain transactions at the
    /// store's limit).
    pub store_write: Duration,
    /// End of that write → the leader's first transaction.
    pub leader_soak: Duration,
    /// → the leader's last transaction answered.
    pub writes: Duration,
    /// → every member's settled workload is its new assignment.
    pub worker_soak: Duration,
    /// Start of the bench's write → all settled.
    pub total: Duration,
    /// The leader's transactions.
    pub rate: Rate,
    /// Plans made after the write started.
    pub plans: Vec<PlanReport>,
}

/// Memory and descriptors of the cluster in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS` after start-up settled less `VmRSS` before the first member
    /// was spawned.
    pub rss_growth: u64,
    /// Live heap (counting allocator) over the same window.
    pub heap_growth: i64,
    /// Live heap freed by killing every follower at once, per follower.
    pub follower_heap: f64,
    /// Live heap freed by killing the leader's member after the followers:
    /// its member, its leader state and its proxy connection.
    pub leader_heap: i64,
    /// Connections the proxy accepted during start-up, per member.
    pub conns_per_member: f64,
    /// Open descriptors of this process after start-up.
    pub fds: usize,
    /// Open descriptors of the store's process after start-up.
    pub store_fds: usize,
}

/// What one size on one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// Members at start.
    pub members: usize,
    /// Work items.
    pub items: usize,
    /// Session / lease TTL.
    pub ttl: Duration,
    /// Documented detection bound for that TTL.
    pub detection_bound: Duration,
    /// Spawn of every member → every item settled exactly once, balanced.
    pub startup: Result<Duration, String>,
    /// A follower killed.
    pub kill: Result<Change, String>,
    /// A member joining.
    pub join: Result<Change, String>,
    /// Everything settled, nothing happening.
    pub idle: Result<Idle, String>,
    /// Leader soak and worker soak used.
    pub soaks: (Duration, Duration),
    /// Plans made during start-up.
    pub startup_plans: Vec<PlanReport>,
    /// The leader's start-up writes against a bare loop.
    pub writes: Result<Writes, String>,
    /// A tenth more items added at once.
    pub bulk: Result<Bulk, String>,
    /// Memory and descriptors.
    pub memory: Result<Memory, String>,
}
