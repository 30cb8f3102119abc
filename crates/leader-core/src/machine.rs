//! The leader as a pure state machine: no I/O, no clock, no tasks.
//!
//! Time arrives as a `now` argument; the driver (`leader.rs`) feeds the
//! machine what it reads from the store and carries out what [`LeaderMachine::poll`]
//! returns, re-arming one timer at [`LeaderMachine::poll_timeout`].
//!
//! Inputs: the members and work items under their prefixes (whole pictures,
//! as a [`PrefixFollower`](crate::follow::PrefixFollower) keeps them; a
//! member key also carries how far that member acknowledged its
//! assignments), the assignment keys and handoff records read once on taking
//! office, and the outcome of each fenced write. Outputs: the order to read
//! the assignments, fenced transactions to apply, a report of each plan,
//! keys skipped, and the order to step down.
//!
//! Writing is a reconcile loop: after every input the machine compares the
//! store (as it knows it) with the last plan and sends the next transaction,
//! one at a time:
//! 1. **revokes** first: assignment keys the plan does not want. A revoke
//!    from a live member that acknowledges is a *move in flight*: it writes a
//!    handoff record (`<handoff><work>` = the old owner) in the same
//!    transaction, and at most `max_moves_in_flight` moves are in flight;
//! 2. then **assigns**: an item revoked from a member goes to its new owner
//!    only once that member's acknowledged position reaches the revoke (or it
//!    is gone: at once, or in exclusive mode after the self-fencing margin,
//!    guarded on its member key still being absent). The assign deletes the
//!    handoff record in the same transaction.
//!
//! | state | input | next |
//! |---|---|---|
//! | new | — | read the assignments and handoff records ([`Action::ListAssignments`]) |
//! | reading | an error | after a backoff: read them again |
//! | any | members / items / assignments differ from what was known | soak (re)starts: due at `min(last change + soak, first change + max_soak)` |
//! | soaking, all read, no write in flight | timeout past the due time | plan: the new target of the reconcile loop |
//! | idle | anything | the next transaction (revokes, then assigns whose handoff is clear), if any |
//! | writing | `Applied` | recorded as written; the next is sent; if it wrote handoff records, they are read back ([`Action::ListHandoffs`]) for the position each revoke took effect at |
//! | writing | error (outcome unknown) | after a backoff: read the assignments and records again, then decide anew |
//! | writing | `Conflict` (a guard failed: a member came back, or the sequence key moved) | the same: read again, decide anew |
//! | any | `Fenced` | step down: nothing more is written |
//! | idle, `verify_every` after the last read or write | timeout | read again ([`Action::ListAssignments`]): writes the leader did not make are found and repaired |
//!
//! **The sequence key.** Every transaction carries a
//! [`TxnOp::Sequence`] on [`Layout::sequence`] expecting the position the
//! machine last knew it at: from its read (one consistent snapshot of the
//! members, the assignments, the handoff records and the sequence key), then
//! from each `Applied { revision }`. A transaction whose outcome the machine
//! did not learn (an error) may still land later; once the machine has read
//! again and written anything, the sequence key has moved past what that
//! transaction expects, so it can only fail. See `docs/leader.md`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;
use worker_core::{
    Backoff, KvEntry, Revision, TxnLimits, TxnOp, TxnOutcome, WorkId, MAX_INSTANCE_ID_LEN,
};

use crate::layout::{BadKey, Layout, MemberMeta};
use crate::plan::{min_moves, plan, Assignment, MemberId};

/// The leader's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            exclusive: None,
            member_ttl: Duration::from_secs(15),
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
            lease_wait: true,
        }
    }
}

/// What one plan did, for logs, metrics and the demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanReport {
    /// Live members the plan counted (weight 0 included).
    pub members: usize,
    /// Work items.
    pub items: usize,
    /// Items taken from a live owner and given to another.
    pub moved: usize,
    /// Items that had no live owner and were given one.
    pub placed: usize,
    /// The fewest moves any balanced plan could make (what `moved` is held to).
    pub min_moves: usize,
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
pub enum Action {
    /// Read the members, assignments and handoff prefixes and the sequence
    /// key in **one consistent snapshot**
    /// ([`FencedWrite::read_consistent`](worker_core::FencedWrite::read_consistent)),
    /// then hand the answer to [`LeaderMachine::handle_read`] or
    /// [`LeaderMachine::handle_assignments_error`]. The first action of a
    /// new machine, again after a failed read or write (after a backoff),
    /// and every [`LeaderTiming::verify_every`] while idle.
    ListAssignments,
    /// Read every handoff record (with the position each was created at),
    /// then hand the answer to [`LeaderMachine::handle_handoffs`] or
    /// [`LeaderMachine::handle_handoffs_error`]. Asked after each transaction
    /// that wrote records: a record's creation position is the revoke's,
    /// whatever happened to the replies.
    ListHandoffs,
    /// Apply these operations in one fenced transaction, then report the
    /// outcome with [`LeaderMachine::handle_write`].
    Write(Vec<TxnOp>),
    /// A plan was made (it may write nothing).
    Planned(PlanReport),
    /// A move from `member` waited longer than
    /// [`LeaderTiming::handoff_timeout`] for its acknowledgement: end
    /// `session` (Consul session destroy, etcd lease revoke), which fences
    /// the member; the move then proceeds as for a gone member. Nothing is
    /// reported back: the member key vanishing is the outcome.
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

/// Where the read of the assignment keys stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A read was asked for; its answer is awaited.
    InFlight,
    /// The last read failed; read again at this time.
    RetryAt(Instant),
    /// Read (or nothing awaited).
    Done,
}

/// Where a reported key was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Members,
    Items,
    /// The assignments and handoff records.
    Stored,
}

#[derive(Debug, Clone, Copy)]
struct Soak {
    first: Instant,
    last: Instant,
}

/// The leader's logic. See the [module docs](self).
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent flags of one machine
pub struct LeaderMachine {
    layout: Layout,
    timing: LeaderTiming,
    /// What one transaction may carry (operations at least 3: room for a
    /// move's record and guard).
    limits: TxnLimits,
    /// Items whose value cannot be assigned within `limits`: work -> its
    /// worst-case transaction's bytes. Left out of plans (an item already
    /// assigned keeps the value it has).
    refused: BTreeMap<WorkId, usize>,
    /// The items as the work prefix has them (`items` is what plans use).
    raw_items: Option<BTreeMap<WorkId, Bytes>>,
    /// Refused items that are assigned: the value they keep.
    kept: BTreeMap<WorkId, Bytes>,
    /// Live members and their effective weights (0 while draining).
    members: Option<BTreeMap<MemberId, u32>>,
    /// Live members' acknowledged positions (`None`: not reported).
    acks: BTreeMap<MemberId, Option<u64>>,
    items: Option<BTreeMap<WorkId, Bytes>>,
    /// The assignment keys in the store: (member, work) -> value.
    current: Option<BTreeMap<(MemberId, WorkId), Bytes>>,
    /// The handoff records in the store.
    records: BTreeSet<WorkId>,
    /// Items revoked from a member and not yet with their new owner:
    /// (work, old owner) -> the revoke's position once applied.
    owed: BTreeMap<(WorkId, MemberId), Option<u64>>,
    /// Moves whenever the set of moves in flight may have changed, so that
    /// a driver need not compare [`handoffs`](Self::handoffs) on every event.
    owed_generation: u64,
    /// The last plan: item -> member.
    desired: Option<BTreeMap<WorkId, MemberId>>,
    /// Indexes over `current`, `desired` and `items`, kept on every change
    /// so that a pump costs what changed, not what exists.
    idx: Indexes,
    soak: Option<Soak>,
    /// The transaction being applied.
    in_flight: Option<Vec<TxnOp>>,
    /// Handoff records were written since the last read of them.
    handoffs_stale: bool,
    /// A read of the handoff records is in flight.
    handoffs_reading: bool,
    /// The last read of the handoff records failed: read again then.
    handoffs_retry_at: Option<Instant>,
    backoff: Backoff,
    rng: SmallRng,
    reading: Reading,
    list_backoff: Backoff,
    list_rng: SmallRng,
    /// Keys (and member values) reported as bad, by where they were read:
    /// each whole picture of a source keeps only what it still holds, so the
    /// set does not grow as keys come and go.
    reported: BTreeMap<Source, BTreeSet<Vec<u8>>>,
    stepped_down: bool,
    out: VecDeque<Action>,
    /// Simulator-only switch; always true in the product.
    revoke_first: bool,
    /// Simulator-only switch; always true in the product.
    sequence_check: bool,
    /// The sequence key's modify position as this leader last learned it:
    /// what its next transaction expects.
    sequence: Revision,
    /// The value written to the sequence key.
    sequence_value: Bytes,
    /// When to read the store again while idle, to find writes this leader
    /// did not make.
    verify_at: Option<Instant>,
    /// Members that left within `rebalance_delay`: weight and until when
    /// their items stay theirs.
    departed: BTreeMap<MemberId, (u32, Instant)>,
    /// When this leader took office, until the owners found then without a
    /// member key were given their delay (at the first plan).
    took_office: Option<Instant>,
    /// When this leader took office.
    office_at: Instant,
    /// When each member that is not live was last seen leaving.
    absent_since: BTreeMap<MemberId, Instant>,
    /// The latest `now` seen.
    last_now: Instant,
    /// Whether [`track_owed`](Self::track_owed) may find something to
    /// forget: set by every input, except that an applied write sets it only
    /// when it deleted a key or ended a move (puts make no member matter
    /// less). Saves two passes over the members per transaction.
    track_due: bool,
    /// Set when the last scan of assigns and clean-up found nothing to do
    /// and every move it passed waits for its old owner's acknowledgement:
    /// per old owner, the lowest position one of its moves waits for. Until
    /// an input changes something else, or an acknowledgement reaches such a
    /// position, the scans would find nothing again and are skipped: an
    /// acknowledgement that clears no move (50,000 moves waiting) costs what
    /// changed, not a pass over every waiting move.
    quiet: Option<BTreeMap<MemberId, u64>>,
    /// The members' keys of the last picture that parsed, with their values:
    /// a picture parses again only the values that changed.
    parsed_members: BTreeMap<Vec<u8>, ParsedMember>,
    /// The last members picture taken in, in key order, as
    /// [`members_delta`](Self::members_delta) compares the next one with it.
    last_members: Vec<(Vec<u8>, Bytes)>,
    /// Tests only: every members picture through `set_members`.
    whole_pictures: bool,
    /// Live members' sessions and every member's TTL, as their keys said.
    sessions: BTreeMap<MemberId, String>,
    ttls: BTreeMap<MemberId, Duration>,
    /// When each owed entry was first known to this leader, and when the
    /// leader saw the session it ended for it gone.
    owed_times: BTreeMap<(WorkId, MemberId), OwedTimes>,
    /// How many owed entries each old owner has (the members `owed` names).
    owed_by: BTreeMap<MemberId, usize>,
    /// The owed entries by when each was first known (`owed_times`' `since`).
    owed_since: BTreeSet<(Instant, WorkId, MemberId)>,
    /// The owed entries whose `owed_times` has `fenced`.
    owed_fenced: BTreeSet<(WorkId, MemberId)>,
    /// Sessions this leader ended for a handoff that timed out.
    ending: BTreeMap<MemberId, Ending>,
    /// Simulator-only switch; always true in the product.
    lease_wait: bool,
    /// The smallest member id (empty), kept to look up the owed entries of
    /// one item by range without allocating one per lookup.
    no_member: MemberId,
}

/// A session the leader ended because a handoff timed out.
#[derive(Debug, Clone)]
struct Ending {
    session: String,
    asked: Instant,
    /// The leader saw the session gone (the key absent or bound to another
    /// session).
    seen: bool,
}

#[derive(Debug, Clone, Copy)]
struct OwedTimes {
    since: Instant,
    /// When the leader saw the session of the old owner gone after it ended
    /// it for this move.
    fenced: Option<Instant>,
}

/// A member key's value as metadata, when it parses and is not blank (what
/// [`LeaderMachine::set_members`] counts as a good value).
fn parse_good(value: &[u8]) -> Option<MemberMeta> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    MemberMeta::parse(value).ok()
}

/// A member key's value as parsed, with the value it was parsed from.
#[derive(Debug)]
struct ParsedMember {
    value: Bytes,
    id: MemberId,
    meta: MemberMeta,
}

/// What the moves passed by a scan of assigns and clean-up wait for.
#[derive(Default)]
struct Waits {
    /// Per old owner that reports, the lowest position one of its moves
    /// waits for it to acknowledge.
    acks: BTreeMap<MemberId, u64>,
    /// Some move waits for something else (time: a margin, a fenced
    /// owner's wait).
    other: bool,
}

/// Whether an owed item may go to another member.
enum Clear {
    /// Wait, for a reason time or another input can end.
    Wait,
    /// Wait for the old owner, which reports, to acknowledge this position
    /// (`None`: a move whose revoke position is unknown, which no
    /// acknowledgement clears).
    AwaitAck(Option<u64>),
    Go,
    /// Go, guarded on this member's key being absent.
    Guard(MemberId),
}

/// What the reconcile loop asks of `current`, `desired` and `items` on every
/// event, kept up to date on each change of them (a read, an applied
/// transaction, a plan, an items picture) instead of recomputed per event.
/// [`Indexes::build`] is the slower truth the tests compare it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Indexes {
    /// The members holding an assignment key of each item.
    owners: BTreeMap<WorkId, BTreeSet<MemberId>>,
    /// How many assignment keys each member holds.
    held: BTreeMap<MemberId, usize>,
    /// Assignment keys the plan does not want (the item is not planned on
    /// that member), in `current`'s order.
    misplaced: BTreeSet<(MemberId, WorkId)>,
    /// Planned items (with a value) whose assignment key on their target is
    /// missing or holds another value, as (target, item): ordered by target,
    /// so that the assigns of one transaction go to as few members as
    /// possible. Each member then receives its new items in one or two
    /// changes (one soak, one acknowledgement), not a few at a time in every
    /// transaction of the write: at start-up, with the plan spreading
    /// neighbouring items over all members, that was every member waking,
    /// soaking and writing its acknowledgement again all through the write.
    unplaced: BTreeSet<(MemberId, WorkId)>,
    /// Planned items that have a value.
    wanted: usize,
}

type Current = BTreeMap<(MemberId, WorkId), Bytes>;
type Desired = BTreeMap<WorkId, MemberId>;
type Items = BTreeMap<WorkId, Bytes>;

impl Indexes {
    /// The indexes computed from scratch.
    fn build(current: Option<&Current>, desired: Option<&Desired>, items: Option<&Items>) -> Self {
        let mut idx = Self::default();
        if let Some(current) = current {
            for (m, w) in current.keys() {
                idx.owners.entry(w.clone()).or_default().insert(m.clone());
                *idx.held.entry(m.clone()).or_default() += 1;
                if desired.and_then(|d| d.get(w)) != Some(m) {
                    idx.misplaced.insert((m.clone(), w.clone()));
                }
            }
        }
        if let (Some(desired), Some(items)) = (desired, items) {
            for (w, m) in desired {
                let Some(v) = items.get(w) else { continue };
                idx.wanted += 1;
                if current.and_then(|c| c.get(&(m.clone(), w.clone()))) != Some(v) {
                    idx.unplaced.insert((m.clone(), w.clone()));
                }
            }
        }
        idx
    }

    /// Updates the indexes after `current`'s key `(member, work)` changed
    /// (written, rewritten or deleted).
    fn key_changed(
        &mut self,
        member: &MemberId,
        work: &WorkId,
        current: &Current,
        desired: Option<&Desired>,
        items: Option<&Items>,
    ) {
        let key = (member.clone(), work.clone());
        let present = current.contains_key(&key);
        let owners = self.owners.entry(work.clone()).or_default();
        let was = if present {
            !owners.insert(member.clone())
        } else {
            owners.remove(member)
        };
        if owners.is_empty() {
            self.owners.remove(work);
        }
        if present && !was {
            *self.held.entry(member.clone()).or_default() += 1;
        } else if !present && was {
            if let Some(n) = self.held.get_mut(member) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(member);
                }
            }
        }
        let target = desired.and_then(|d| d.get(work));
        if present && target != Some(member) {
            self.misplaced.insert(key);
        } else {
            self.misplaced.remove(&key);
        }
        let value = items.and_then(|i| i.get(work));
        if let (Some(t), Some(v)) = (target, value) {
            let planned = (t.clone(), work.clone());
            if current.get(&planned) == Some(v) {
                self.unplaced.remove(&planned);
            } else {
                self.unplaced.insert(planned);
            }
        }
    }
}

impl LeaderMachine {
    /// A machine for a leader that took office at `now`. `max_ops` is the
    /// store's limit of operations per fenced transaction
    /// ([`FencedWrite::max_ops`](worker_core::FencedWrite::max_ops)); one of
    /// them is each transaction's sequence check, and the plan's share is at
    /// least 3 (a move's two operations and a guard). See
    /// [`with_limits`](Self::with_limits) for byte limits.
    pub fn new(layout: Layout, timing: LeaderTiming, max_ops: usize, now: Instant) -> Self {
        Self {
            layout,
            timing,
            limits: TxnLimits::ops(max_ops),
            refused: BTreeMap::new(),
            raw_items: None,
            kept: BTreeMap::new(),
            members: None,
            acks: BTreeMap::new(),
            items: None,
            current: None,
            records: BTreeSet::new(),
            owed: BTreeMap::new(),
            owed_generation: 0,
            desired: None,
            idx: Indexes::default(),
            // Taking office counts as a change: members that are starting up
            // get a soak's time to register before the first plan.
            soak: Some(Soak {
                first: now,
                last: now,
            }),
            in_flight: None,
            handoffs_stale: false,
            handoffs_reading: false,
            handoffs_retry_at: None,
            backoff: Backoff::new(timing.backoff_min, timing.backoff_max),
            rng: SmallRng::seed_from_u64(0x5eed_1ead),
            reading: Reading::InFlight,
            list_backoff: Backoff::new(timing.backoff_min, timing.backoff_max),
            list_rng: SmallRng::seed_from_u64(0x1ead),
            reported: BTreeMap::new(),
            stepped_down: false,
            out: std::iter::once(Action::ListAssignments).collect(),
            revoke_first: true,
            sequence_check: true,
            sequence: 0,
            sequence_value: Bytes::new(),
            verify_at: None,
            departed: BTreeMap::new(),
            took_office: Some(now),
            office_at: now,
            absent_since: BTreeMap::new(),
            last_now: now,
            track_due: true,
            quiet: None,
            parsed_members: BTreeMap::new(),
            last_members: Vec::new(),
            whole_pictures: false,
            sessions: BTreeMap::new(),
            ttls: BTreeMap::new(),
            owed_times: BTreeMap::new(),
            owed_by: BTreeMap::new(),
            owed_since: BTreeSet::new(),
            owed_fenced: BTreeSet::new(),
            ending: BTreeMap::new(),
            lease_wait: timing.lease_wait,
            no_member: MemberId::from(""),
        }
    }

    /// For the simulator only: turns safeguards off to prove it notices.
    #[doc(hidden)]
    pub fn set_safeguards(&mut self, safeguards: worker_core::Safeguards) {
        self.revoke_first = safeguards.revoke_first;
        if !safeguards.txn_bytes {
            self.limits = TxnLimits::ops(self.limits.max_ops);
        }
        self.lease_wait = safeguards.lease_wait;
        self.sequence_check = safeguards.sequence;
    }

    /// The value written to the sequence key with every transaction (for
    /// humans reading the store: e.g. the leader's id and term). Default
    /// empty.
    pub fn set_sequence_value(&mut self, value: Bytes) {
        self.sequence_value = value;
    }

    /// The sequence key's position the next transaction expects.
    pub fn sequence(&self) -> Revision {
        self.sequence
    }

    /// True once the machine stepped down.
    pub fn stepped_down(&self) -> bool {
        self.stepped_down
    }

    /// True while the store differs from the last plan: a transaction is in
    /// flight or due, or a move waits for its handoff.
    pub fn writing(&self) -> bool {
        if self.in_flight.is_some() || !self.owed.is_empty() {
            return true;
        }
        let (Some(_), Some(current), Some(_)) = (&self.desired, &self.current, &self.items) else {
            return false;
        };
        // Every wanted key in place (none unplaced) and no other key.
        current.len() != self.idx.wanted || !self.idx.unplaced.is_empty()
    }

    /// Cuts transactions to `limits` (operations, bytes, value length), the
    /// store's ([`FencedWrite::limits`](worker_core::FencedWrite::limits)).
    #[must_use]
    pub fn with_limits(mut self, limits: TxnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// What the plan's operations of one transaction may take: the store's
    /// limits less the sequence check's share, and at least 3 operations (a
    /// move's guard, record and assignment).
    fn plan_limits(&self) -> TxnLimits {
        let sequence = self.sequence_op();
        TxnLimits {
            max_ops: self
                .limits
                .max_ops
                .saturating_sub(usize::from(sequence.is_some()))
                .max(3),
            max_bytes: self
                .limits
                .max_bytes
                .saturating_sub(sequence.map_or(0, |op| self.limits.op_bytes(&op))),
            ..self.limits
        }
    }

    /// The sequence check each transaction carries (with the value this
    /// leader writes), unless switched off (simulator only).
    fn sequence_op(&self) -> Option<TxnOp> {
        self.sequence_check.then(|| TxnOp::Sequence {
            key: self.layout.sequence.clone(),
            index: self.sequence,
            value: self.sequence_value.clone(),
        })
    }

    /// Items refused because their value cannot be assigned within the
    /// store's limits, with the bytes their assignment would take.
    pub fn refused(&self) -> &BTreeMap<WorkId, usize> {
        &self.refused
    }

    /// The bytes the largest transaction that assigns `work` with `value`
    /// takes (a guard on a member key, the handoff record's delete, the
    /// assignment), with member ids of the longest length allowed; `None`
    /// when it fits within the limits.
    fn refusal(&self, work: &str, value: &Bytes) -> Option<usize> {
        refusal_with(
            &self.layout,
            &self.limits,
            self.sequence_op().as_ref(),
            work,
            value,
        )
    }

    /// The items plans use: those whose value fits; a refused one only while
    /// it is assigned, with the value it has.
    fn refresh_items(&mut self, now: Instant) {
        let Some(raw) = &self.raw_items else {
            return;
        };
        let mut items = BTreeMap::new();
        let mut refused = BTreeMap::new();
        let mut kept = BTreeMap::new();
        let mut report = Vec::new();
        for (work, value) in raw {
            let Some(bytes) = self.refusal(work, value) else {
                items.insert(work.clone(), value.clone());
                continue;
            };
            if self.refused.get(work) != Some(&bytes) {
                report.push(Action::Refused {
                    work: work.to_string(),
                    bytes,
                    limits: self.limits,
                });
            }
            refused.insert(work.clone(), bytes);
            let assigned = self.kept.get(work).cloned().or_else(|| {
                let first = self.idx.owners.get(work)?.first()?;
                self.current
                    .as_ref()?
                    .get(&(first.clone(), work.clone()))
                    .cloned()
            });
            if let Some(v) = assigned.filter(|v| self.refusal(work, v).is_none()) {
                items.insert(work.clone(), v.clone());
                kept.insert(work.clone(), v);
            }
        }
        self.out.extend(report);
        self.refused = refused;
        self.kept = kept;
        if self.items.as_ref() != Some(&items) {
            self.items = Some(items);
            self.reindex();
            self.changed(now);
        }
    }

    /// How much the machine remembers beyond the store's picture, for tests
    /// and diagnostics: it must not grow as members and bad keys come and go.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            absent: self.absent_since.len(),
            reported: self.reported.values().map(BTreeSet::len).sum(),
        }
    }

    /// The live members with their effective weights, once read.
    pub fn members(&self) -> Option<&BTreeMap<MemberId, u32>> {
        self.members.as_ref()
    }

    /// The assignment as this leader knows it is in the store, once read.
    pub fn assignment(&self) -> Option<&BTreeMap<(MemberId, WorkId), Bytes>> {
        self.current.as_ref()
    }

    /// How many work items no live member holds in the store (unassigned,
    /// in handoff, refused, or under a member that left): 0 once everything
    /// is placed. `O(items + assignments)`: call it now and then (the
    /// leader's metric does, at most once a second), not per event.
    pub fn unowned(&self) -> usize {
        let (Some(items), Some(current), Some(members)) =
            (&self.items, &self.current, &self.members)
        else {
            return 0;
        };
        let owned: BTreeSet<&WorkId> = current
            .keys()
            .filter(|(m, _)| members.contains_key(m))
            .map(|(_, w)| w)
            .collect();
        items.keys().filter(|w| !owned.contains(w)).count()
    }

    /// A number that changes whenever the moves in flight
    /// ([`handoffs`](Self::handoffs)) may have changed: a driver that shows
    /// them compares this, `O(1)`, instead of the whole list on every event.
    pub fn handoffs_generation(&self) -> u64 {
        self.owed_generation
    }

    /// Moves in flight: each item revoked from a member and not yet assigned
    /// to its new owner, with that member.
    pub fn handoffs(&self) -> impl Iterator<Item = (&WorkId, &MemberId)> {
        self.owed.keys().map(|(w, m)| (w, m))
    }

    /// The members a plan counts: the live ones and those that left within
    /// `rebalance_delay` (their items stay theirs meanwhile).
    fn effective(&self) -> Option<BTreeMap<MemberId, u32>> {
        let live = self.members.as_ref()?;
        let mut all = live.clone();
        for (id, (weight, _)) in &self.departed {
            all.entry(id.clone()).or_insert(*weight);
        }
        Some(all)
    }

    fn changed(&mut self, now: Instant) {
        let first = self.soak.map_or(now, |s| s.first);
        self.soak = Some(Soak { first, last: now });
    }

    /// Reports a bad key once while it stays in `source`; `seen` collects
    /// what the current picture of `source` holds.
    fn report_bad(
        &mut self,
        source: Source,
        seen: &mut BTreeSet<Vec<u8>>,
        key: &[u8],
        reason: BadKey,
    ) {
        seen.insert(key.to_vec());
        if !self.reported.get(&source).is_some_and(|r| r.contains(key)) {
            self.out.push_back(Action::BadKey {
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            });
        }
    }

    fn tick(&mut self, now: Instant) {
        self.track_due = true;
        self.quiet = None;
        if now > self.last_now {
            self.last_now = now;
        }
    }

    /// The members prefix as it is now (every key and value under it).
    pub fn handle_members<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) {
        if self.stepped_down {
            return;
        }
        let quiet = self.quiet.take();
        let due = self.track_due;
        self.tick(now);
        let entries: Vec<(&[u8], &Bytes)> = entries.into_iter().collect();
        let moved = match self.members_delta(now, &entries) {
            // Acknowledgements make no member matter less to `track_owed`.
            Some(false) => {
                self.track_due = due;
                false
            }
            Some(true) => true,
            None => self.set_members(now, entries),
        };
        // Only acknowledgements moved, each short of what its moves wait
        // for: the scans would find nothing still.
        self.quiet = quiet.filter(|waits| {
            !moved
                && waits
                    .iter()
                    .all(|(m, lowest)| matches!(self.acks.get(m), Some(Some(a)) if a < lowest))
        });
        self.pump(now);
    }

    /// A members event taken in at the cost of what changed: `entries`
    /// compared with the last picture key by key (both in key order), and
    /// only the keys added, removed or with a new value dealt with, each as
    /// [`set_members`](Self::set_members) would. `None` (nothing changed)
    /// when the event needs the whole picture: a key or value that does not
    /// parse, now or before (their reports), or a session this leader ended
    /// not yet seen gone. Otherwise whether anything other than
    /// acknowledgements changed.
    fn members_delta(&mut self, now: Instant, entries: &[(&[u8], &Bytes)]) -> Option<bool> {
        if self.whole_pictures || self.members.is_none() || self.ending.values().any(|e| !e.seen) {
            return None;
        }
        let (upserts, removed, added) = self.picture_diff(entries)?;
        if upserts.is_empty() && removed.is_empty() {
            return Some(false);
        }
        let moved = self.apply_diff(now, entries, &upserts, &removed);
        // The last picture: kept entries moved over, new keys copied.
        if removed.is_empty() && !added {
            for (a, ..) in &upserts {
                self.last_members[*a].1 = entries[*a].1.clone();
            }
        } else {
            self.last_members = entries
                .iter()
                .map(|(key, value)| (key.to_vec(), (*value).clone()))
                .collect();
        }
        Some(moved)
    }

    /// What differs between `entries` and the last picture: the members
    /// with a new or changed value (index in `entries`, id, metadata), the
    /// removed ones (index in the last picture), and whether any key is
    /// new. `None` when one of them does not parse, now or before.
    #[allow(clippy::type_complexity)] // Three plain lists, named above.
    fn picture_diff(
        &self,
        entries: &[(&[u8], &Bytes)],
    ) -> Option<(Vec<(usize, MemberId, MemberMeta)>, Vec<usize>, bool)> {
        let mut upserts: Vec<(usize, MemberId, MemberMeta)> = Vec::new();
        let mut removed: Vec<usize> = Vec::new();
        let (mut a, mut b) = (0, 0);
        let mut added = false;
        let last = &self.last_members;
        while a < entries.len() || b < last.len() {
            let order = match (entries.get(a), last.get(b)) {
                (Some((key, _)), Some((last_key, _))) => (*key).cmp(last_key.as_slice()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Equal => {
                    let (key, value) = entries[a];
                    if *value != last[b].1 {
                        let old = self.parsed_members.get(key)?;
                        let meta = parse_good(value)?;
                        upserts.push((a, old.id.clone(), meta));
                    }
                    a += 1;
                    b += 1;
                }
                std::cmp::Ordering::Less => {
                    let (key, value) = entries[a];
                    let id = MemberId::from(self.layout.parse_member(key).ok()?);
                    upserts.push((a, id, parse_good(value)?));
                    added = true;
                    a += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.parsed_members.get(last[b].0.as_slice())?;
                    removed.push(b);
                    b += 1;
                }
            }
        }
        Some((upserts, removed, added))
    }

    /// Applies [`picture_diff`](Self::picture_diff)'s differences as
    /// [`set_members`](Self::set_members) would; whether anything other than
    /// acknowledgements changed.
    fn apply_diff(
        &mut self,
        now: Instant,
        entries: &[(&[u8], &Bytes)],
        upserts: &[(usize, MemberId, MemberMeta)],
        removed: &[usize],
    ) -> bool {
        let mut moved = false;
        let mut effective_changed = false;
        let members = self.members.as_mut().expect("checked above");
        for &b in removed {
            let parsed = self
                .parsed_members
                .remove(self.last_members[b].0.as_slice())
                .expect("checked above");
            let id = parsed.id;
            let weight = members.remove(&id).unwrap_or_default();
            self.acks.remove(&id);
            self.sessions.remove(&id);
            self.absent_since.insert(id.clone(), now);
            if self.timing.rebalance_delay.is_zero() {
                effective_changed = true;
            } else {
                let until = now + self.timing.rebalance_delay;
                self.departed.insert(id, (weight, until));
            }
            moved = true;
        }
        for (a, id, meta) in upserts {
            let weight = meta.effective_weight();
            if let Some(old) = members.insert(id.clone(), weight) {
                if old != weight {
                    moved = true;
                    effective_changed = true;
                }
            } else {
                moved = true;
                self.absent_since.remove(id);
                match self.departed.remove(id) {
                    Some((w, _)) if w == weight => {}
                    _ => effective_changed = true,
                }
            }
            self.acks.insert(id.clone(), meta.acked);
            if let Some(ms) = meta.ttl_ms {
                self.ttls.insert(id.clone(), Duration::from_millis(ms));
            }
            let session_before = match &meta.session {
                Some(s) => self.sessions.insert(id.clone(), s.clone()),
                None => self.sessions.remove(id),
            };
            if session_before != meta.session {
                moved = true;
            }
            let (key, value) = entries[*a];
            let parsed = ParsedMember {
                value: value.clone(),
                id: id.clone(),
                meta: meta.clone(),
            };
            match self.parsed_members.get_mut(key) {
                Some(p) => *p = parsed,
                None => {
                    self.parsed_members.insert(key.to_vec(), parsed);
                }
            }
        }
        if effective_changed {
            self.changed(now);
        }
        moved
    }

    /// Takes in a members picture; whether anything other than the members'
    /// acknowledgements changed (members, weights, sessions, a session this
    /// leader ended seen gone).
    fn set_members<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) -> bool {
        let mut members = BTreeMap::new();
        let mut acks = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut sessions = BTreeMap::new();
        // Values seen in the last picture are not parsed again.
        let mut cache = std::mem::take(&mut self.parsed_members);
        let mut last = Vec::new();
        for (key, value) in entries {
            last.push((key.to_vec(), value.clone()));
            if let Some((key, hit)) = cache.remove_entry(key).filter(|(_, p)| p.value == *value) {
                let (id, meta) = (hit.id.clone(), hit.meta.clone());
                self.parsed_members.insert(key, hit);
                members.insert(id.clone(), meta.effective_weight());
                acks.insert(id.clone(), meta.acked);
                if let Some(ms) = meta.ttl_ms {
                    self.ttls.insert(id.clone(), Duration::from_millis(ms));
                }
                if let Some(s) = meta.session {
                    sessions.insert(id, s);
                }
                continue;
            }
            let id = match self.layout.parse_member(key) {
                Ok(id) => id,
                Err(reason) => {
                    self.report_bad(Source::Members, &mut seen, key, reason);
                    continue;
                }
            };
            // Fail safe: a value that does not parse (another version, a
            // hand edit) or is empty says nothing of whether the member
            // reports acknowledgements, so it counts as one that reports and
            // has acknowledged nothing: moves away from it wait (until it
            // writes a value that parses, or the handoff timeout).
            let (meta, acked) = match MemberMeta::parse(value) {
                Ok(meta) if !value.iter().all(u8::is_ascii_whitespace) => {
                    self.parsed_members.insert(
                        key.to_vec(),
                        ParsedMember {
                            value: value.clone(),
                            id: MemberId::from(id),
                            meta: meta.clone(),
                        },
                    );
                    let acked = meta.acked;
                    (meta, acked)
                }
                parsed => {
                    let error = parsed
                        .err()
                        .map_or_else(|| "the value is empty".to_owned(), |e| e.to_string());
                    let mut marker = key.to_vec();
                    marker.push(0);
                    marker.extend_from_slice(value);
                    let known = self
                        .reported
                        .get(&Source::Members)
                        .is_some_and(|r| r.contains(&marker));
                    if !known {
                        self.out.push_back(Action::BadMemberValue {
                            member: id.to_owned(),
                            error,
                        });
                    }
                    seen.insert(marker);
                    (MemberMeta::default(), Some(0))
                }
            };
            members.insert(MemberId::from(id), meta.effective_weight());
            acks.insert(MemberId::from(id), acked);
            if let Some(ms) = meta.ttl_ms {
                self.ttls
                    .insert(MemberId::from(id), Duration::from_millis(ms));
            }
            if let Some(s) = meta.session {
                sessions.insert(MemberId::from(id), s);
            }
        }
        self.reported.insert(Source::Members, seen);
        self.last_members = last;
        self.acks = acks;
        self.members_sessions(now, members, sessions)
    }

    /// The second half of [`set_members`](Self::set_members): the new
    /// members and sessions; whether either changed.
    fn members_sessions(
        &mut self,
        now: Instant,
        members: BTreeMap<MemberId, u32>,
        sessions: BTreeMap<MemberId, String>,
    ) -> bool {
        let mut moved = self.sessions != sessions;
        // A session this leader ended is gone once its key is absent or
        // bound to another session.
        for (id, e) in &mut self.ending {
            if !e.seen && sessions.get(id) != Some(&e.session) {
                e.seen = true;
                moved = true;
                for (key, t) in &mut self.owed_times {
                    if &key.1 == id && t.since <= e.asked {
                        t.fenced.get_or_insert(now);
                        self.owed_fenced.insert(key.clone());
                    }
                }
            }
        }
        self.sessions = sessions;
        if self.members.as_ref() != Some(&members) {
            moved = true;
            let before = self.effective();
            if let Some(old) = &self.members {
                for (id, weight) in old {
                    if !members.contains_key(id) {
                        self.absent_since.insert(id.clone(), now);
                        if !self.timing.rebalance_delay.is_zero() {
                            let until = now + self.timing.rebalance_delay;
                            self.departed.insert(id.clone(), (*weight, until));
                        }
                    }
                }
            }
            for id in members.keys() {
                self.departed.remove(id);
                self.absent_since.remove(id);
            }
            self.members = Some(members);
            // A member that left within the delay, or came back within it,
            // changes nothing a plan would see: no soak, no plan, no move.
            if self.effective() != before {
                self.changed(now);
            }
        }
        moved
    }

    /// The work-items prefix as it is now.
    pub fn handle_items<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) {
        if self.stepped_down {
            return;
        }
        self.tick(now);
        let mut items = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (key, value) in entries {
            match self.layout.parse_work(key) {
                Ok(id) => {
                    items.insert(WorkId::from(id), value.clone());
                }
                Err(reason) => self.report_bad(Source::Items, &mut seen, key, reason),
            }
        }
        self.reported.insert(Source::Items, seen);
        if self.raw_items.as_ref() != Some(&items) {
            self.raw_items = Some(items);
            self.refresh_items(now);
        }
        self.pump(now);
    }

    /// The answer to [`Action::ListAssignments`]: members, assignments,
    /// handoff records and the sequence key's position, read at one store
    /// position.
    ///
    /// The read's members are the machine's picture only while the members
    /// follower has published none (on taking office): then the first
    /// decisions are made on members and assignments of one position. Once
    /// the follower publishes, its pictures alone drive the members: a
    /// snapshot is not known to be newer than the follower's last picture,
    /// and a picture replaced by an older one would stay until the next
    /// member change (an acknowledgement that went back, a member that
    /// seems gone).
    pub fn handle_read(&mut self, now: Instant, read: &LeaderRead) {
        if self.stepped_down || self.reading != Reading::InFlight {
            return;
        }
        self.tick(now);
        if self.members.is_none() {
            let _moved = self.set_members(
                now,
                read.members.iter().map(|e| (e.key.as_slice(), &e.value)),
            );
        }
        self.sequence = read.sequence;
        self.assignments_read(
            now,
            read.assignments
                .iter()
                .map(|e| (e.key.as_slice(), &e.value)),
            read.records
                .iter()
                .map(|e| (e.key.as_slice(), &e.value, e.revision)),
        );
    }

    /// A read of the assignment keys and the handoff records alone, with the
    /// sequence key absent: [`handle_read`](Self::handle_read) without the
    /// members, with sequence position 0 (for tests of the rest of the
    /// machine). A record is `(key, value, the position it was written at)`.
    pub fn handle_assignments<'a, 'b>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
        records: impl IntoIterator<Item = (&'b [u8], &'b Bytes, u64)>,
    ) {
        if self.stepped_down {
            return;
        }
        self.tick(now);
        self.sequence = 0;
        self.assignments_read(now, entries, records);
    }

    fn assignments_read<'a, 'b>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
        records: impl IntoIterator<Item = (&'b [u8], &'b Bytes, u64)>,
    ) {
        self.reading = Reading::Done;
        self.verify_at = Some(now + self.timing.verify_every);
        let mut current = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (key, value) in entries {
            match self.layout.parse_assignment(key) {
                Ok((member, work)) => {
                    let (m, w) = crate::layout::ids(member, work);
                    current.insert((m, w), value.clone());
                }
                Err(reason) => self.report_bad(Source::Stored, &mut seen, key, reason),
            }
        }
        self.records.clear();
        self.owed.clear();
        self.owed_generation += 1;
        // This read has every record with its creation position.
        self.handoffs_stale = false;
        for (key, value, revision) in records {
            let work = match self.layout.parse_handoff(key) {
                Ok(w) => WorkId::from(w),
                Err(reason) => {
                    self.report_bad(Source::Stored, &mut seen, key, reason);
                    continue;
                }
            };
            self.records.insert(work.clone());
            // The record was created with the revoke: the old owner must
            // acknowledge that position.
            if let Ok(from) = std::str::from_utf8(value) {
                if worker_core::validate_instance_id(from).is_ok() {
                    self.owed
                        .insert((work, MemberId::from(from)), Some(revision));
                }
            }
        }
        self.resync_owed(now);
        self.reported.insert(Source::Stored, seen);
        if self.current.as_ref() != Some(&current) {
            self.current = Some(current);
            self.reindex();
            self.changed(now);
            if !self.refused.is_empty() {
                // A refused item keeps the value it is assigned with.
                self.refresh_items(now);
            }
        }
        self.pump(now);
    }

    /// [`Action::ListAssignments`] failed: the read is asked for again after
    /// a backoff. Returns the delay (for the driver's log), or `None` if no
    /// read was awaited.
    pub fn handle_assignments_error(&mut self, now: Instant) -> Option<Duration> {
        if self.stepped_down || self.reading != Reading::InFlight {
            return None;
        }
        self.tick(now);
        let delay = self.list_backoff.next_delay(&mut self.list_rng);
        self.reading = Reading::RetryAt(now + delay);
        Some(delay)
    }

    /// The outcome of the transaction last returned by [`Action::Write`];
    /// `Err` carries nothing the machine needs (the driver logs it).
    #[allow(clippy::needless_pass_by_value)] // the driver hands over the outcome it got
    pub fn handle_write<E>(&mut self, now: Instant, outcome: Result<TxnOutcome, E>) {
        if self.stepped_down || self.in_flight.is_none() {
            return;
        }
        // What this write changes for `track_owed`, `record_applied` says.
        let due = self.track_due;
        self.tick(now);
        self.track_due = due;
        match outcome {
            Ok(TxnOutcome::Applied { revision }) => {
                self.backoff.reset();
                // The sequence key's new position: what the next
                // transaction expects.
                self.sequence = revision;
                self.verify_at = Some(now + self.timing.verify_every);
                let ops = self.in_flight.take().unwrap_or_default();
                self.record_applied(ops);
                self.read_handoffs_if_stale();
                self.pump(now);
            }
            Ok(TxnOutcome::Fenced) => {
                self.stepped_down = true;
                self.in_flight = None;
                self.soak = None;
                self.reading = Reading::Done;
                self.out.push_back(Action::StepDown);
            }
            // Not applied (a guard failed: a member came back), or not known
            // whether applied: read the store again, then decide anew. A
            // resend could land after a lost first attempt and hide the
            // position at which a revoke took effect.
            Ok(TxnOutcome::Conflict) | Err(_) => {
                self.in_flight = None;
                let delay = self.backoff.next_delay(&mut self.rng);
                self.reading = Reading::RetryAt(now + delay);
            }
        }
    }

    /// The handoff records as read from the store (key, value, creation
    /// position): the answer to [`Action::ListHandoffs`].
    pub fn handle_handoffs<'a>(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = (&'a [u8], &'a Bytes, u64)>,
    ) {
        if self.stepped_down || !self.handoffs_reading {
            return;
        }
        self.tick(now);
        self.handoffs_reading = false;
        for (key, value, created) in records {
            let Ok(work) = self.layout.parse_handoff(key) else {
                continue;
            };
            let Ok(from) = std::str::from_utf8(value) else {
                continue;
            };
            let entry = (WorkId::from(work), MemberId::from(from));
            if let Some(at) = self.owed.get_mut(&entry) {
                at.get_or_insert(created);
            }
        }
        self.read_handoffs_if_stale();
        self.pump(now);
    }

    /// [`Action::ListHandoffs`] failed: read again after a backoff.
    pub fn handle_handoffs_error(&mut self, now: Instant) {
        if self.stepped_down || !self.handoffs_reading {
            return;
        }
        self.tick(now);
        self.handoffs_reading = false;
        let delay = self.list_backoff.next_delay(&mut self.list_rng);
        self.handoffs_retry_at = Some(now + delay);
    }

    fn read_handoffs_if_stale(&mut self) {
        if self.handoffs_stale && !self.handoffs_reading && self.handoffs_retry_at.is_none() {
            self.handoffs_stale = false;
            self.handoffs_reading = true;
            self.out.push_back(Action::ListHandoffs);
        }
    }

    fn record_applied(&mut self, ops: Vec<TxnOp>) {
        let Some(current) = &mut self.current else {
            return;
        };
        let mut touched = Vec::new();
        let mut forget = Vec::new();
        for op in ops {
            if let Ok(work) = self.layout.parse_handoff(op.key().as_bytes()) {
                let work = WorkId::from(work);
                match op {
                    TxnOp::Put { .. } => {
                        self.records.insert(work);
                        self.handoffs_stale = true;
                    }
                    TxnOp::Delete { .. } => {
                        self.records.remove(&work);
                        forget.push(work);
                    }
                    TxnOp::Absent { .. } | TxnOp::Sequence { .. } => {}
                }
                continue;
            }
            let parsed = self.layout.parse_assignment(op.key().as_bytes());
            let Ok((member, work)) = parsed else { continue };
            let key = crate::layout::ids(member, work);
            match op {
                TxnOp::Put { value, .. } => {
                    forget.push(key.1.clone());
                    current.insert(key.clone(), value);
                    touched.push(key);
                }
                TxnOp::Delete { .. } => {
                    current.remove(&key);
                    touched.push(key);
                    self.track_due = true;
                }
                TxnOp::Absent { .. } | TxnOp::Sequence { .. } => {}
            }
        }
        for (member, work) in touched {
            self.idx.key_changed(
                &member,
                &work,
                current,
                self.desired.as_ref(),
                self.items.as_ref(),
            );
        }
        for work in forget {
            self.forget_owed(&work);
        }
    }

    fn due(&self) -> Option<Instant> {
        let s = self.soak?;
        Some((s.last + self.timing.soak).min(s.first + self.timing.max_soak))
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stepped_down {
            return None;
        }
        if let Reading::RetryAt(at) = self.reading {
            return Some(at);
        }
        if self.in_flight.is_some() || self.reading != Reading::Done || !self.ready() {
            // Nothing to plan or write before the answer comes.
            return self.handoffs_retry_at;
        }
        let rejoin = self.departed.values().map(|(_, until)| *until);
        // Exclusive mode: when the wait for a member that is gone runs out.
        // (The same time for every move from one member: one per member.)
        let fenced = self.timing.exclusive.into_iter().flat_map(|_| {
            self.owed_by
                .keys()
                .filter(|from| !self.is_live(from))
                .map(|from| self.absent_from(from) + self.gone_wait(from))
                .filter(|at| *at > self.last_now)
        });
        // Moves whose old owner's session this leader ended: when the wait
        // after it runs out; the others: when each times out (the earliest
        // is the first by `since` still ahead).
        let ended = self.owed_fenced.iter().filter_map(|k| {
            let f = self.owed_times.get(k)?.fenced?;
            Some(f + self.gone_wait(&k.1))
        });
        let timeout = self
            .owed_since
            .iter()
            .filter(|(_, w, m)| !self.owed_fenced.contains(&(w.clone(), m.clone())))
            .map(|(since, _, _)| *since + self.timing.handoff_timeout)
            .find(|at| *at > self.last_now);
        let timeouts = ended.chain(timeout).filter(|at| *at > self.last_now);
        self.due()
            .into_iter()
            .chain(rejoin)
            .chain(fenced)
            .chain(timeouts)
            .chain(self.handoffs_retry_at)
            // Not while the handoff records are read: the read comes after.
            .chain(self.verify_at.filter(|_| !self.handoffs_reading))
            .min()
    }

    /// True once members, items and assignments have all been read.
    fn ready(&self) -> bool {
        self.members.is_some() && self.items.is_some() && self.current.is_some()
    }

    /// Rebuilds the indexes: after a read, a plan or a new items picture
    /// (each `O(items)` already).
    fn reindex(&mut self) {
        self.idx = Indexes::build(
            self.current.as_ref(),
            self.desired.as_ref(),
            self.items.as_ref(),
        );
    }

    /// Tests only: take every members picture whole, as the slower truth
    /// the usual path (only what changed) is compared with.
    #[doc(hidden)]
    pub fn set_whole_pictures(&mut self, whole: bool) {
        self.whole_pictures = whole;
    }

    /// Tests only: whether the incremental indexes equal a recomputation
    /// from scratch (the slower truth); `Err` describes the first
    /// difference.
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        let truth = Indexes::build(
            self.current.as_ref(),
            self.desired.as_ref(),
            self.items.as_ref(),
        );
        if !self.owed.keys().eq(self.owed_times.keys()) {
            return Err("owed_times names other entries than owed".to_owned());
        }
        let owed = owed_indexes(&self.owed, &self.owed_times);
        if owed
            != (
                self.owed_by.clone(),
                self.owed_since.clone(),
                self.owed_fenced.clone(),
            )
        {
            return Err(format!(
                "owed indexes differ from a recomputation: kept {:?}, truth {owed:?}",
                (&self.owed_by, &self.owed_since, &self.owed_fenced)
            ));
        }
        // The members, acknowledgements and sessions as the whole last
        // picture says (the slower truth of `members_delta`).
        if let Some(kept) = &self.members {
            let (mut members, mut acks, mut sessions) =
                (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
            for (key, value) in &self.last_members {
                let Ok(id) = self.layout.parse_member(key) else {
                    continue;
                };
                let id = MemberId::from(id);
                let meta = parse_good(value).unwrap_or(MemberMeta {
                    acked: Some(0),
                    ..MemberMeta::default()
                });
                members.insert(id.clone(), meta.effective_weight());
                acks.insert(id.clone(), meta.acked);
                if let Some(s) = meta.session {
                    sessions.insert(id, s);
                }
            }
            if (&members, &acks, &sessions) != (kept, &self.acks, &self.sessions) {
                return Err(format!(
                    "members differ from the last picture's: kept {:?}, truth {:?}",
                    (kept, &self.acks, &self.sessions),
                    (&members, &acks, &sessions)
                ));
            }
        }
        if let Some(quiet) = &self.quiet {
            // The skipped scans would find nothing, and wait for no more
            // than was noted.
            let mut waits = Waits::default();
            let assigns = self.scan_assigns(self.last_now, &mut waits);
            let (cleanup, done) = self.scan_cleanup(self.last_now, &mut waits);
            if assigns.is_some() || !cleanup.is_empty() || !done.is_empty() || waits.other {
                return Err(format!(
                    "scans skipped as quiet would find: assigns {assigns:?}, clean-up \
                     {cleanup:?}, moves to forget {done:?}, other waits {}",
                    waits.other
                ));
            }
            if let Some((m, lowest)) = quiet
                .iter()
                .find(|(m, lowest)| !matches!(self.acks.get(*m), Some(Some(a)) if a < *lowest))
            {
                return Err(format!(
                    "quiet, yet {m}'s acknowledgement {:?} reached {lowest}",
                    self.acks.get(m)
                ));
            }
        }
        if truth == self.idx {
            return Ok(());
        }
        Err(format!(
            "indexes differ from a recomputation:\n kept: {:?}\n truth: {truth:?}",
            self.idx
        ))
    }

    /// Whether some move of `work` waits for its handoff.
    fn is_owed(&self, work: &WorkId) -> bool {
        self.owed
            .range((work.clone(), self.no_member.clone())..)
            .next()
            .is_some_and(|((w, _), _)| w == work)
    }

    /// Time passed: reads the assignments again after a failed read, retries
    /// a failed write, plans when the soak is over, or assigns an item whose
    /// handoff margin ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stepped_down {
            return;
        }
        self.tick(now);
        if matches!(self.reading, Reading::RetryAt(at) if now >= at) {
            self.reading = Reading::InFlight;
            self.out.push_back(Action::ListAssignments);
        }
        if self.handoffs_retry_at.is_some_and(|at| now >= at) {
            self.handoffs_retry_at = None;
            self.handoffs_stale = true;
            self.read_handoffs_if_stale();
        }
        if self.in_flight.is_some() || self.reading != Reading::Done {
            return;
        }
        let before = self.departed.len();
        self.departed.retain(|_, (_, until)| *until > now);
        if self.departed.len() != before {
            // Their delay is over: their items go to the others.
            self.changed(now);
        }
        if self.due().is_some_and(|d| now >= d) {
            self.plan_now(now);
        }
        self.pump(now);
        // Idle: read the store again, to find (and then repair) writes
        // under the assignments this leader did not make.
        if self.verify_at.is_some_and(|at| now >= at)
            && self.in_flight.is_none()
            && !self.handoffs_reading
        {
            self.verify_at = None;
            self.reading = Reading::InFlight;
            self.out.push_back(Action::ListAssignments);
        }
    }

    /// Forgets when a member left once nothing refers to it any more: it
    /// owns no assignment key, no move waits for it, and its
    /// `rebalance_delay` is over. Keeps the map as small as the members that
    /// still matter.
    fn prune_absent(&mut self) {
        if self.absent_since.is_empty() {
            return;
        }
        let mut needed: BTreeSet<&MemberId> = self.owed_by.keys().collect();
        needed.extend(self.departed.keys());
        needed.extend(self.idx.held.keys());
        let needed: BTreeSet<MemberId> = needed.into_iter().cloned().collect();
        self.absent_since.retain(|m, _| needed.contains(m));
    }

    fn is_live(&self, member: &MemberId) -> bool {
        self.members
            .as_ref()
            .is_some_and(|m| m.contains_key(member))
    }

    fn absent_from(&self, member: &MemberId) -> Instant {
        self.absent_since
            .get(member)
            .copied()
            .unwrap_or(self.office_at)
    }

    /// Exclusive mode: how long after the leader saw `member`'s session end
    /// the member may still believe in its lease: its whole TTL (it releases
    /// at `deadline − margin`, its deadline is the send time of its last
    /// successful renewal plus the TTL, and that send came before the store
    /// ended the session). The simulator's safeguard switch makes it the
    /// margin only, which holds only when sessions end at their TTL.
    fn gone_wait(&self, member: &MemberId) -> Duration {
        let margin = self.timing.exclusive.unwrap_or_default();
        if !self.lease_wait {
            return margin;
        }
        self.ttls
            .get(member)
            .copied()
            .unwrap_or(self.timing.member_ttl)
            .max(margin)
    }

    /// May the item `work`, revoked from `from` at `revoked_at`, go to
    /// another member?
    fn clearance(
        &self,
        work: &WorkId,
        from: &MemberId,
        revoked_at: Option<u64>,
        now: Instant,
    ) -> Clear {
        if let Some(acked) = self.acks.get(from) {
            match (acked, revoked_at) {
                // It does not report: nothing to wait for.
                (None, _) => return Clear::Go,
                (Some(a), Some(r)) if *a >= r => return Clear::Go,
                _ => {}
            }
        }
        // This leader ended its session after the revoke (the handoff timed
        // out): the member is fenced and, registered anew, reads its
        // assignments afresh, without this item.
        let key = (work.clone(), from.clone());
        if let Some(fenced) = self.owed_times.get(&key).and_then(|t| t.fenced) {
            return match self.timing.exclusive {
                Some(_) if now < fenced + self.gone_wait(from) => Clear::Wait,
                _ => Clear::Go,
            };
        }
        if self.acks.contains_key(from) {
            return Clear::AwaitAck(revoked_at);
        }
        match self.timing.exclusive {
            None => Clear::Go,
            Some(_) if now >= self.absent_from(from) + self.gone_wait(from) => {
                Clear::Guard(from.clone())
            }
            Some(_) => Clear::Wait,
        }
    }

    /// Handoffs from live, reporting members that timed out: asks to end
    /// those members' sessions (again only after another timeout).
    fn end_stuck_sessions(&mut self, now: Instant) {
        let timeout = self.timing.handoff_timeout;
        let mut stuck: Vec<MemberId> = Vec::new();
        // Only the moves known for a whole timeout, in `owed`'s order.
        let mut due: Vec<(WorkId, MemberId)> = self
            .owed_since
            .iter()
            .take_while(|(since, _, _)| now >= *since + timeout)
            .map(|(_, w, m)| (w.clone(), m.clone()))
            .collect();
        due.sort();
        for key in &due {
            let (Some(at), Some(t)) = (self.owed.get(key), self.owed_times.get(key)) else {
                continue;
            };
            let (work, from) = key;
            if t.fenced.is_some()
                || now < t.since + timeout
                || stuck.contains(from)
                || !self.acks.get(from).is_some_and(Option::is_some)
                || !matches!(
                    self.clearance(work, from, *at, now),
                    Clear::Wait | Clear::AwaitAck(_)
                )
            {
                continue;
            }
            stuck.push(from.clone());
        }
        for member in stuck {
            let Some(session) = self.sessions.get(&member).cloned() else {
                continue; // its key does not name its session
            };
            let asked = self
                .ending
                .get(&member)
                .is_some_and(|e| e.session == session && now < e.asked + timeout);
            if asked {
                continue;
            }
            self.ending.insert(
                member.clone(),
                Ending {
                    session: session.clone(),
                    asked: now,
                    seen: false,
                },
            );
            self.out.push_back(Action::EndSession { member, session });
        }
    }

    /// Forgets the sessions ended and TTLs of members that no longer
    /// matter: not live, owing no move, holding no key. `O(members)`.
    fn track_owed(&mut self) {
        if !self.track_due {
            return;
        }
        self.track_due = false;
        let (owed_by, held) = (&self.owed_by, &self.idx.held);
        let live = self.members.as_ref();
        let keep = |m: &MemberId| {
            owed_by.contains_key(m)
                || held.contains_key(m)
                || live.is_some_and(|l| l.contains_key(m))
        };
        self.ending.retain(|m, _| keep(m));
        self.ttls.retain(|m, _| keep(m));
    }

    /// A move of `key.0` from `key.1` is owed from now (if it is not yet).
    fn owe(&mut self, key: (WorkId, MemberId), now: Instant) {
        if self.owed.contains_key(&key) {
            return;
        }
        self.owed.insert(key.clone(), None);
        self.owed_generation += 1;
        self.quiet = None;
        *self.owed_by.entry(key.1.clone()).or_default() += 1;
        if !self.owed_times.contains_key(&key) {
            self.owed_since.insert((now, key.0.clone(), key.1.clone()));
            self.owed_times.insert(
                key,
                OwedTimes {
                    since: now,
                    fenced: None,
                },
            );
        }
    }

    /// Forgets the moves of `work`: `O(log owed)` for each, not a pass over
    /// every move.
    fn forget_owed(&mut self, work: &WorkId) {
        self.quiet = None;
        let keys: Vec<(WorkId, MemberId)> = self
            .owed
            .range((work.clone(), self.no_member.clone())..)
            .take_while(|((w, _), _)| w == work)
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            self.track_due = true;
        }
        for k in keys {
            self.owed.remove(&k);
            self.owed_generation += 1;
            if let Some(n) = self.owed_by.get_mut(&k.1) {
                *n -= 1;
                if *n == 0 {
                    self.owed_by.remove(&k.1);
                }
            }
            if let Some(t) = self.owed_times.remove(&k) {
                self.owed_since.remove(&(t.since, k.0.clone(), k.1.clone()));
            }
            self.owed_fenced.remove(&k);
        }
    }

    /// After a read replaced `owed`: the times of the entries still owed
    /// are kept, new ones are known from `now`; the indexes are rebuilt
    /// (`O(owed)`, as the read).
    fn resync_owed(&mut self, now: Instant) {
        self.owed_times.retain(|k, _| self.owed.contains_key(k));
        for k in self.owed.keys() {
            self.owed_times.entry(k.clone()).or_insert(OwedTimes {
                since: now,
                fenced: None,
            });
        }
        let (by, since, fenced) = owed_indexes(&self.owed, &self.owed_times);
        self.owed_by = by;
        self.owed_since = since;
        self.owed_fenced = fenced;
    }

    /// Sends the next transaction if none is in flight and one is due.
    fn pump(&mut self, now: Instant) {
        if !self.stepped_down {
            self.track_owed();
            self.end_stuck_sessions(now);
        }
        if self.stepped_down
            || self.in_flight.is_some()
            || self.reading != Reading::Done
            || !self.ready()
            || self.desired.is_none()
        {
            return;
        }
        let ops = if self.revoke_first {
            self.next_revokes(now).or_else(|| self.next_settles(now))
        } else {
            self.unguarded_write()
        };
        if let Some(mut ops) = ops {
            if self.sequence_check {
                ops.insert(
                    0,
                    TxnOp::Sequence {
                        key: self.layout.sequence.clone(),
                        index: self.sequence,
                        value: self.sequence_value.clone(),
                    },
                );
            }
            self.in_flight = Some(ops.clone());
            self.out.push_back(Action::Write(ops));
        }
        self.track_owed();
    }

    /// Revokes of keys the plan does not want, with handoff records for
    /// moves, at most `max_moves_in_flight` moves at once.
    fn next_revokes(&mut self, now: Instant) -> Option<Vec<TxnOp>> {
        let (desired, _) = (self.desired.as_ref()?, self.current.as_ref()?);
        // Moves in flight count only against a limit: without one
        // (the default), they are not counted (`O(owed)`).
        let limited = self.timing.max_moves_in_flight != usize::MAX;
        let owed = self.owed.keys().take(if limited { usize::MAX } else { 0 });
        let live_owed: BTreeSet<&WorkId> = owed
            .clone()
            .filter(|(_, from)| self.is_live(from))
            .map(|(w, _)| w)
            .collect();
        // A move stuck past the handoff timeout no longer holds up the others.
        let timeout = self.timing.handoff_timeout;
        let stuck = owed
            .filter(|k| self.is_live(&k.1))
            .filter(|k| {
                self.owed_times
                    .get(*k)
                    .is_some_and(|t| t.fenced.is_some() || now >= t.since + timeout)
            })
            .count();
        let mut moves = live_owed.len().saturating_sub(stuck);
        let mut ops = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        let mut new_owed = Vec::new();
        // Items that got a handoff record in this transaction: a
        // transaction names a key once (etcd refuses a txn that names one
        // twice; Consul would keep the first record's position).
        let mut recorded: BTreeSet<&WorkId> = BTreeSet::new();
        // The keys the plan does not want, in `current`'s order.
        for (member, work) in &self.idx.misplaced {
            let target = desired.get(work);
            let live = self.is_live(member);
            let reports = self.acks.get(member).is_some_and(Option::is_some);
            let record = reports || (!live && self.timing.exclusive.is_some());
            // An item under two members (found on taking office): one record
            // at a time. The next owner is revoked once the record of the
            // first is cleared (`next_cleanup`), with a record of its own.
            if record && (recorded.contains(work) || self.records.contains(work)) {
                continue;
            }
            if limited && live && target.is_some() && !live_owed.contains(work) {
                if moves >= self.timing.max_moves_in_flight {
                    continue;
                }
                moves += 1;
            }
            let mut add = vec![TxnOp::Delete {
                key: self.layout.assignment_key(member, work),
            }];
            if record {
                add.push(TxnOp::Put {
                    key: self.layout.handoff_key(work),
                    value: Bytes::copy_from_slice(member.as_bytes()),
                });
            }
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
            if record {
                recorded.insert(work);
                new_owed.push((work.clone(), member.clone()));
            }
        }
        for key in new_owed {
            self.owe(key, now);
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Assigns whose handoff is clear, then clean-up of handoff records no
    /// longer needed; nothing while [`quiet`](Self::quiet) holds, which a
    /// scan that finds nothing sets.
    fn next_settles(&mut self, now: Instant) -> Option<Vec<TxnOp>> {
        if self.quiet.is_some() {
            return None;
        }
        let mut waits = Waits::default();
        if let Some(ops) = self.scan_assigns(now, &mut waits) {
            return Some(ops);
        }
        let (ops, done) = self.scan_cleanup(now, &mut waits);
        for work in &done {
            self.forget_owed(work);
        }
        if !ops.is_empty() {
            return Some(ops);
        }
        if done.is_empty() && !waits.other {
            self.quiet = Some(waits.acks);
        }
        None
    }

    /// Assigns whose handoff is clear.
    fn scan_assigns(&self, now: Instant, waits: &mut Waits) -> Option<Vec<TxnOp>> {
        self.desired.as_ref()?;
        let (current, items) = (self.current.as_ref()?, self.items.as_ref()?);
        let owners = &self.idx.owners;
        let mut ops = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        let mut guards: BTreeSet<MemberId> = BTreeSet::new();
        // The planned items not in place, by target.
        for (target, work) in &self.idx.unplaced {
            let Some(value) = items.get(work) else {
                continue;
            };
            let key = (target.clone(), work.clone());
            let placed = current.get(&key);
            if placed == Some(value) {
                continue;
            }
            if placed.is_none() {
                let others = owners
                    .get(work)
                    .is_some_and(|o| o.iter().any(|m| m != target));
                if others {
                    continue; // its revoke comes first
                }
                let (wait, needs) = self.owed_state(work, Some(target), now, waits);
                if wait {
                    continue;
                }
                let new_guards: Vec<MemberId> =
                    needs.into_iter().filter(|m| !guards.contains(m)).collect();
                let mut add: Vec<TxnOp> = new_guards
                    .iter()
                    .map(|m| TxnOp::Absent {
                        key: self.layout.member_key(m),
                    })
                    .collect();
                if self.records.contains(work) {
                    add.push(TxnOp::Delete {
                        key: self.layout.handoff_key(work),
                    });
                }
                add.push(TxnOp::Put {
                    key: self.layout.assignment_key(target, work),
                    value: value.clone(),
                });
                if !fits(&limits, &mut used, &ops, &add) {
                    break;
                }
                guards.extend(new_guards);
                ops.extend(add);
                continue;
            }
            let add = [TxnOp::Put {
                key: self.layout.assignment_key(target, work),
                value: value.clone(),
            }];
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Handoff records no longer needed: items no longer wanted, or already
    /// with their target, once clear: (their deletes, the moves to forget
    /// that have no record).
    fn scan_cleanup(&self, now: Instant, waits: &mut Waits) -> (Vec<TxnOp>, Vec<WorkId>) {
        let (Some(desired), Some(_), Some(items)) = (
            self.desired.as_ref(),
            self.current.as_ref(),
            self.items.as_ref(),
        ) else {
            return (Vec::new(), Vec::new());
        };
        let owners = &self.idx.owners;
        let none = BTreeSet::new();
        let mut ops = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        let mut done_owed: Vec<WorkId> = Vec::new();
        // The owed items, each once (`owed` is ordered by item).
        let mut owed_works: Vec<&WorkId> = self.owed.keys().map(|(w, _)| w).collect();
        owed_works.dedup();
        // Records that name no member to wait for (their value is not a
        // member id): nothing waits on them; they go.
        for work in self.records.iter().filter(|w| !self.is_owed(w)) {
            let add = [TxnOp::Delete {
                key: self.layout.handoff_key(work),
            }];
            if !fits(&limits, &mut used, &ops, &add) {
                break;
            }
            ops.extend(add);
        }
        for work in owed_works {
            let target = desired.get(work).filter(|_| items.contains_key(work));
            let holders = owners.get(work).unwrap_or(&none);
            let settled = match target {
                None => holders.is_empty(),
                Some(t) => holders.contains(t),
            };
            // Still under another member that must be revoked first (an item
            // found under two members): once this record is clear it goes,
            // so that the next revoke can write its own.
            let blocked = holders.iter().any(|m| Some(m) != target);
            if !settled && !blocked {
                continue;
            }
            // No assign follows, so no guard is needed: a clear owner (one
            // that is gone, past the margin) is enough.
            let (wait, _) = self.owed_state(work, target, now, waits);
            if wait {
                continue;
            }
            if self.records.contains(work) {
                let add = [TxnOp::Delete {
                    key: self.layout.handoff_key(work),
                }];
                if !fits(&limits, &mut used, &ops, &add) {
                    break;
                }
                ops.extend(add);
            } else {
                done_owed.push(work.clone());
            }
        }
        (ops, done_owed)
    }

    /// Whether the owed entries of `work` (other than from `target`) are
    /// clear: (some must still wait, guards needed).
    fn owed_state(
        &self,
        work: &WorkId,
        target: Option<&MemberId>,
        now: Instant,
        waits: &mut Waits,
    ) -> (bool, Vec<MemberId>) {
        let mut wait = false;
        let mut needs = Vec::new();
        for ((_, from), at) in self
            .owed
            .range((work.clone(), self.no_member.clone())..)
            .take_while(|((w, _), _)| w == work)
        {
            if Some(from) == target {
                continue;
            }
            match self.clearance(work, from, *at, now) {
                Clear::Wait => {
                    wait = true;
                    waits.other = true;
                }
                Clear::AwaitAck(position) => {
                    wait = true;
                    let lowest = waits.acks.entry(from.clone()).or_insert(u64::MAX);
                    *lowest = (*lowest).min(position.unwrap_or(u64::MAX));
                }
                Clear::Go => {}
                Clear::Guard(m) => needs.push(m),
            }
        }
        (wait, needs)
    }

    /// Simulator only (revoke-first off): every assign before any revoke,
    /// no handoff.
    fn unguarded_write(&mut self) -> Option<Vec<TxnOp>> {
        let (desired, current, items) = (
            self.desired.as_ref()?,
            self.current.as_ref()?,
            self.items.as_ref()?,
        );
        let mut ops: Vec<TxnOp> = desired
            .iter()
            .filter_map(|(w, m)| {
                let v = items.get(w)?;
                (current.get(&(m.clone(), w.clone())) != Some(v)).then(|| TxnOp::Put {
                    key: self.layout.assignment_key(m, w),
                    value: v.clone(),
                })
            })
            .collect();
        if ops.is_empty() {
            ops = current
                .keys()
                .filter(|(m, w)| desired.get(w) != Some(m) || !items.contains_key(w))
                .map(|(m, w)| TxnOp::Delete {
                    key: self.layout.assignment_key(m, w),
                })
                .collect();
        }
        let mut fitting = Vec::new();
        let (limits, mut used) = (self.plan_limits(), 0);
        for op in ops {
            if !fits(&limits, &mut used, &fitting, std::slice::from_ref(&op)) {
                break;
            }
            fitting.push(op);
        }
        (!fitting.is_empty()).then_some(fitting)
    }

    fn plan_now(&mut self, now: Instant) {
        if !self.ready() {
            return; // planned as soon as everything is read
        }
        // On taking office, owners that are not live get the delay too,
        // counted from when this leader took office.
        if let Some(took_office) = self.took_office.take() {
            let until = took_office + self.timing.rebalance_delay;
            if until > now {
                let live = self.members.clone().unwrap_or_default();
                let owners: BTreeSet<MemberId> = self
                    .current
                    .iter()
                    .flat_map(|c| c.keys().map(|(m, _)| m.clone()))
                    .filter(|m| !live.contains_key(m))
                    .collect();
                for m in owners {
                    self.departed.entry(m).or_insert((1, until));
                }
            }
        }
        self.prune_absent();
        let members = self.effective().unwrap_or_default();
        let members = &members;
        let (Some(items), Some(current)) = (&self.items, &self.current) else {
            return;
        };
        self.soak = None;
        // One owner per item for the planner: a live owner first, the
        // smallest id among equals; extra keys are revoked by the reconcile
        // loop. An item in handoff counts as its target's.
        let mut owners = Assignment::new();
        for (member, work) in current.keys() {
            let live = members.contains_key(member);
            match owners.get(work) {
                Some(existing) if members.contains_key(existing) || !live => {}
                _ => {
                    owners.insert(work.clone(), member.clone());
                }
            }
        }
        if let Some(desired) = &self.desired {
            for (work, member) in desired {
                if !owners.contains_key(work) && members.contains_key(member) && self.is_owed(work)
                {
                    owners.insert(work.clone(), member.clone());
                }
            }
        }
        let ids: BTreeSet<WorkId> = items.keys().cloned().collect();
        let p = plan(&ids, members, &owners);
        let min = min_moves(&ids, members, &owners);
        let desired: BTreeMap<WorkId, MemberId> = p.assignment.clone().into_iter().collect();
        let revokes = current
            .keys()
            .filter(|(m, w)| desired.get(w) != Some(m))
            .count();
        let puts = desired
            .iter()
            .filter(|(w, m)| {
                items
                    .get(*w)
                    .is_some_and(|v| current.get(&((*m).clone(), (*w).clone())) != Some(v))
            })
            .count();
        let per = self.plan_limits().max_ops.max(1);
        self.out.push_back(Action::Planned(PlanReport {
            members: members.len(),
            items: items.len(),
            moved: p.moved,
            placed: p.placed,
            min_moves: min,
            revokes,
            puts,
            transactions: revokes.div_ceil(per) + puts.div_ceil(per),
            took: Duration::ZERO,
        }));
        self.desired = Some(desired);
        self.reindex();
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}

/// Whether `ops` plus `add` fit in one transaction within `limits`, `used`
/// being the bytes of `ops`; when they do, `add`'s bytes are counted in
/// `used` (the caller adds `add`). The running count keeps filling a
/// transaction linear: summing `ops` again for each addition made it
/// quadratic in the operations per transaction.
fn fits(limits: &TxnLimits, used: &mut usize, ops: &[TxnOp], add: &[TxnOp]) -> bool {
    let bytes = limits.bytes(add);
    let fit =
        ops.len() + add.len() <= limits.max_ops && used.saturating_add(bytes) <= limits.max_bytes;
    if fit {
        *used += bytes;
    }
    fit
}

/// A bound on the value a leader writes to the sequence key (its id and
/// term as JSON: an instance id of at most 128 bytes, escaped), which
/// [`refusal`] keeps free in each transaction.
pub const SEQUENCE_VALUE_MAX: usize = 300;

/// Whether a leader refuses work item `work` with `value` on a store with
/// `limits`: `Some(bytes)` when the largest transaction that assigns it (the
/// sequence check with a value of [`SEQUENCE_VALUE_MAX`] bytes, a guard on
/// a member key, the handoff record's delete, the assignment, with member
/// ids of the longest length allowed) takes `bytes` and does not fit
/// `limits`; `None` when it fits. `coordinator status` shows the items it
/// refuses.
pub fn refusal(layout: &Layout, limits: &TxnLimits, work: &str, value: &Bytes) -> Option<usize> {
    let sequence = TxnOp::Sequence {
        key: layout.sequence.clone(),
        index: 0,
        value: Bytes::from(vec![b'x'; SEQUENCE_VALUE_MAX]),
    };
    refusal_with(layout, limits, Some(&sequence), work, value)
}

/// [`refusal`] with the sequence check a leader actually sends (or none).
fn refusal_with(
    layout: &Layout,
    limits: &TxnLimits,
    sequence: Option<&TxnOp>,
    work: &str,
    value: &Bytes,
) -> Option<usize> {
    let id = "m".repeat(MAX_INSTANCE_ID_LEN);
    let assign = [
        TxnOp::Absent {
            key: layout.member_key(&id),
        },
        TxnOp::Delete {
            key: layout.handoff_key(work),
        },
        TxnOp::Put {
            key: layout.assignment_key(&id, work),
            value: value.clone(),
        },
    ];
    let worst: Vec<TxnOp> = sequence.into_iter().cloned().chain(assign).collect();
    (!limits.fit(&worst)).then(|| limits.bytes(&worst))
}

type OwedIndexes = (
    BTreeMap<MemberId, usize>,
    BTreeSet<(Instant, WorkId, MemberId)>,
    BTreeSet<(WorkId, MemberId)>,
);

/// The indexes of the owed entries computed from scratch: entries per old
/// owner, entries by `since`, entries fenced.
fn owed_indexes(
    owed: &BTreeMap<(WorkId, MemberId), Option<u64>>,
    times: &BTreeMap<(WorkId, MemberId), OwedTimes>,
) -> OwedIndexes {
    let mut by: BTreeMap<MemberId, usize> = BTreeMap::new();
    for (_, m) in owed.keys() {
        *by.entry(m.clone()).or_default() += 1;
    }
    let since = times
        .iter()
        .map(|((w, m), t)| (t.since, w.clone(), m.clone()))
        .collect();
    let fenced = times
        .iter()
        .filter(|(_, t)| t.fenced.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    (by, since, fenced)
}
