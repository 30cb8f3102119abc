//! What goes in and out of the machine besides members and items: the
//! actions it asks of its driver ([`Action`]), the consistent read it asks
//! for ([`LeaderRead`]), and what it reports ([`PlanReport`], [`Footprint`]).

use std::time::Duration;

use worker_core::{KvEntry, Revision, TxnLimits, TxnOp};

use crate::layout::BadKey;
use crate::plan::MemberId;

/// What one plan did, for logs, metrics and the demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanReport {
    /// Live members the plan counted (weight 0 included).
    pub members: usize,
    /// Work items.
    pub items: usize,
    /// Items taken from a live owner and given to another (with replicas:
    /// primaries that changed, plus secondaries moved).
    pub moved: usize,
    /// Items that had no live owner and were given one.
    pub placed: usize,
    /// The fewest moves any balanced plan could make (what `moved` is held
    /// to). With replicas, `moved` itself: the replica planner's own minimum
    /// is checked against brute force by its tests.
    pub min_moves: usize,
    /// With replicas: items whose new primary held no replica of them
    /// before (0 with one replica per item).
    pub cold_primaries: usize,
    /// With replicas: items whose new primary was a secondary.
    pub promotions: usize,
    /// With replicas: secondaries placed on members that held no replica of
    /// the item.
    pub secondaries_moved: usize,
    /// Assignment keys deleted.
    pub revokes: usize,
    /// Assignment keys written.
    pub puts: usize,
    /// Transactions the writes take if none waits for a handoff.
    pub transactions: usize,
    /// How long the call into the machine that made this plan ran (the
    /// plan, the move bound, the reindex and the first transaction built),
    /// as the driver measured it around that call: the leader's CPU for
    /// one plan, on its thread. The machine has no clock of its own and
    /// leaves it zero.
    pub took: Duration,
}

/// The sizes of what a [`LeaderMachine`] remembers beyond the store's
/// picture ([`LeaderMachine::footprint`]).
///
/// [`LeaderMachine`]: super::LeaderMachine
/// [`LeaderMachine::footprint`]: super::LeaderMachine::footprint
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Members that are not live whose departure time is kept (while they
    /// still own keys or a move waits for them).
    pub absent: usize,
    /// Bad keys and member values reported once and still in the store.
    pub reported: usize,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Read the members, assignments and handoff prefixes and the sequence
    /// key in **one consistent snapshot**
    /// ([`FencedWrite::read_consistent`](worker_core::FencedWrite::read_consistent)),
    /// then hand the answer to [`LeaderMachine::handle_read`] or
    /// [`LeaderMachine::handle_assignments_error`]. The first action of a
    /// new machine, again after a failed read or write (after a backoff),
    /// and every [`LeaderTiming::verify_every`] while idle.
    ///
    /// [`LeaderMachine::handle_read`]: super::LeaderMachine::handle_read
    /// [`LeaderMachine::handle_assignments_error`]: super::LeaderMachine::handle_assignments_error
    /// [`LeaderTiming::verify_every`]: super::LeaderTiming::verify_every
    ListAssignments,
    /// Read every handoff record (with the position each was created at),
    /// then hand the answer to [`LeaderMachine::handle_handoffs`] or
    /// [`LeaderMachine::handle_handoffs_error`]. Asked after each transaction
    /// that wrote records: a record's creation position is the revoke's,
    /// whatever happened to the replies.
    ///
    /// [`LeaderMachine::handle_handoffs`]: super::LeaderMachine::handle_handoffs
    /// [`LeaderMachine::handle_handoffs_error`]: super::LeaderMachine::handle_handoffs_error
    ListHandoffs,
    /// Apply these operations in one fenced transaction, then report the
    /// outcome with [`LeaderMachine::handle_write`].
    ///
    /// [`LeaderMachine::handle_write`]: super::LeaderMachine::handle_write
    Write(Vec<TxnOp>),
    /// A plan was made (it may write nothing).
    Planned(PlanReport),
    /// A move from `member` waited longer than
    /// [`LeaderTiming::handoff_timeout`] for its acknowledgement: end
    /// `session` (Consul session destroy, etcd lease revoke), which fences
    /// the member; the move then proceeds as for a gone member. Nothing is
    /// reported back: the member key vanishing is the outcome.
    ///
    /// [`LeaderTiming::handoff_timeout`]: super::LeaderTiming::handoff_timeout
    EndSession {
        /// The member that does not acknowledge.
        member: MemberId,
        /// Its session, as its member key names it.
        session: String,
    },
    /// A key was skipped; reported once per key.
    BadKey {
        /// The key, lossily decoded.
        key: String,
        /// Why it was skipped.
        reason: BadKey,
    },
    /// A member key holds metadata that does not parse (or is empty): the
    /// member counts with the default weight and as one that reports
    /// acknowledgements and has acknowledged nothing, so moves away from it
    /// wait (fail safe). Reported once per key and value.
    BadMemberValue {
        /// The member id.
        member: String,
        /// The parse error.
        error: String,
    },
    /// A work item whose value cannot be assigned: a transaction that
    /// assigns it would exceed the store's limits. It is left out of plans
    /// (if it is assigned already, it keeps the value it has) until its value
    /// fits. Reported once per item and size.
    Refused {
        /// The work id.
        work: String,
        /// The bytes its assignment takes in a transaction (worst case).
        bytes: usize,
        /// The store's limits.
        limits: TxnLimits,
    },
    /// The fence no longer holds: stop leading. Nothing more comes.
    StepDown,
}

/// The answer to [`Action::ListAssignments`]: one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderRead {
    /// Every key under the members prefix.
    pub members: Vec<KvEntry>,
    /// Every key under the assignments prefix.
    pub assignments: Vec<KvEntry>,
    /// Every handoff record, each with its creation position.
    pub records: Vec<KvEntry>,
    /// The sequence key's modify position (0: it does not exist).
    pub sequence: Revision,
}
