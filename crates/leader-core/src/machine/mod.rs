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
//!
//! The code, by what it does: the machine itself and its accessors here;
//! `events.rs` the inputs (items, the read, write outcomes, handoff records,
//! time); `members.rs` the members pictures; `reconcile.rs` the plan and the
//! reconcile loop that turns it into writes; `handoff.rs` the moves waiting
//! for acknowledgements; `indexes.rs` the indexes kept on every change and
//! their check; `limits.rs` the store's transaction limits and the items
//! refused; `timing.rs` and `action.rs` the settings, actions and reports.

mod action;
mod events;
mod handoff;
mod indexes;
mod limits;
mod members;
mod prepare;
mod reconcile;
mod timing;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::Instant;
use worker_core::{Backoff, Revision, TxnLimits, TxnOp, WorkId};

use crate::layout::{BadKey, Layout};
use crate::plan::MemberId;
use crate::replicas::{ReplicaAssignment, ReplicaMember};

/// What [`plan_replicas`](crate::plan_replicas) was given: items with their
/// replica counts, members, the replicas before.
pub type ReplicaInput = (
    BTreeMap<WorkId, u32>,
    BTreeMap<MemberId, ReplicaMember>,
    ReplicaAssignment,
);

pub use action::{Action, Footprint, LeaderRead, PlanReport};
pub use limits::{refusal, SEQUENCE_VALUE_MAX};
pub use timing::{
    LeaderTiming, DEFAULT_HANDOFF_TIMEOUT, DEFAULT_LEADER_SOAK, DEFAULT_VERIFY_EVERY,
};

use handoff::{Ending, OwedTimes};
use indexes::Indexes;
use members::ParsedMember;

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
    /// The members prefix.
    Members,
    /// The work-items prefix.
    Items,
    /// The assignments and handoff records.
    Stored,
}

#[derive(Debug, Clone, Copy)]
/// A soak in progress: when its first and its last change came.
struct Soak {
    /// The first change since the last plan.
    first: Instant,
    /// The latest change.
    last: Instant,
}

/// The leader's logic. See the [module docs](self).
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent flags of one machine
pub struct LeaderMachine {
    /// Where the keys are.
    layout: Layout,
    /// The leader's timing.
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
    /// The items plans use (see [`refresh_items`](Self::refresh_items)).
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
    /// The last plan: item -> its replicas (with one replica per item, a
    /// primary alone).
    desired: Option<indexes::Desired>,
    /// Members' zones, as their keys said (members without one are absent).
    zones: BTreeMap<MemberId, std::sync::Arc<str>>,
    /// Items whose envelope asks for their own replica count.
    item_replicas: BTreeMap<WorkId, u32>,
    /// The input of the last replica plan, when small (see
    /// [`last_replica_input`](Self::last_replica_input)).
    last_replica_input: Option<ReplicaInput>,
    /// Indexes over `current`, `desired` and `items`, kept on every change
    /// so that a pump costs what changed, not what exists.
    idx: Indexes,
    /// The soak in progress, if a change waits for a plan.
    soak: Option<Soak>,
    /// The transaction being applied.
    in_flight: Option<Vec<TxnOp>>,
    /// Handoff records were written since the last read of them.
    handoffs_stale: bool,
    /// A read of the handoff records is in flight.
    handoffs_reading: bool,
    /// The last read of the handoff records failed: read again then.
    handoffs_retry_at: Option<Instant>,
    /// The backoff after a failed write.
    backoff: Backoff,
    /// The jitter of [`backoff`](Self::backoff).
    rng: SmallRng,
    /// Where the read of the assignments stands.
    reading: Reading,
    /// The backoff after a failed read.
    list_backoff: Backoff,
    /// The jitter of [`list_backoff`](Self::list_backoff).
    list_rng: SmallRng,
    /// Keys (and member values) reported as bad, by where they were read:
    /// each whole picture of a source keeps only what it still holds, so the
    /// set does not grow as keys come and go.
    reported: BTreeMap<Source, BTreeSet<Vec<u8>>>,
    stepped_down: bool,
    /// The actions not yet polled.
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
    /// Live members' sessions, as their keys said.
    sessions: BTreeMap<MemberId, String>,
    /// Members' TTLs, as their keys said (`ttl_ms`).
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
    /// Simulator-only switch; always true in the product: in a
    /// make-before-break move of the default mode, the old primary's key is
    /// revoked only once the new primary acknowledged its promotion.
    overlap_wait: bool,
    /// Simulator-only switch; always true in the product: every
    /// transaction writes a new value to the sequence key.
    sequence_moves: bool,
    /// Make-before-break moves in progress (see `prepare.rs`).
    preparing: BTreeMap<WorkId, prepare::Prep>,
    /// Moves whenever `preparing` may have changed.
    staged_generation: u64,
    /// Per member, the position of this leader's last applied write to
    /// its assignment keys, while the member (live, reporting) has not
    /// acknowledged it.
    unacked_writes: BTreeMap<MemberId, u64>,
    /// Staged moves whose target already held a secondary's key: it is
    /// written again, for a position the target acknowledges.
    touch: BTreeSet<WorkId>,
    /// A plan changed the target of an overlapping move, which goes on as
    /// it was: plan again once it is over.
    replan_after_overlap: bool,
    /// The smallest member id (empty), kept to look up the owed entries of
    /// one item by range without allocating one per lookup.
    no_member: MemberId,
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
            zones: BTreeMap::new(),
            item_replicas: BTreeMap::new(),
            last_replica_input: None,
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
            overlap_wait: true,
            sequence_moves: true,
            preparing: BTreeMap::new(),
            staged_generation: 0,
            touch: BTreeSet::new(),
            unacked_writes: BTreeMap::new(),
            replan_after_overlap: false,
            no_member: MemberId::from(""),
        }
    }

    /// For the simulator only: the input of the last plan, when it was a
    /// replica plan small enough for a brute force (`n·M ≤ 32` and
    /// `M^n ≤ 4,096`): (items with their counts, members, replicas before).
    #[doc(hidden)]
    pub fn last_replica_input(&self) -> Option<&ReplicaInput> {
        self.last_replica_input.as_ref()
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
        self.overlap_wait = safeguards.overlap_wait;
        self.sequence_moves = safeguards.sequence_moves;
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
    /// in handoff, refused, or under a member that left; with replicas: no
    /// live member holds as primary): 0 once everything is placed. `O(items + assignments)`: call it now and then (the
    /// leader's metric does, at most once a second), not per event.
    pub fn unowned(&self) -> usize {
        let (Some(items), Some(current), Some(members)) =
            (&self.items, &self.current, &self.members)
        else {
            return 0;
        };
        let owned: BTreeSet<&WorkId> = current
            .iter()
            .filter(|((m, _), v)| members.contains_key(m) && indexes::is_primary(v))
            .map(|((_, w), _)| w)
            .collect();
        items.keys().filter(|w| !owned.contains(w)).count()
    }

    /// Whether some live member that reports acknowledgements has not yet
    /// acknowledged this leader's last write to its assignment keys: a
    /// leader that drains waits for them before it leaves, so that their
    /// workers publish what it wrote before they see the leader change
    /// (and wait `leader_settle`). `O(members written to)`.
    pub fn awaiting_acks(&self) -> bool {
        self.unacked_writes.iter().any(|(m, at)| {
            self.is_live(m) && self.acks.get(m).copied().flatten().is_some_and(|a| a < *at)
        })
    }

    /// A number that changes whenever the moves in flight
    /// ([`handoffs`](Self::handoffs)) may have changed: a driver that shows
    /// them compares this, `O(1)`, instead of the whole list on every event.
    pub fn handoffs_generation(&self) -> u64 {
        self.owed_generation.wrapping_add(self.staged_generation)
    }

    /// Moves in flight, each with the member the item leaves: items revoked
    /// from a member and not yet assigned to their new owner, then
    /// make-before-break moves from their start (the new owner preparing)
    /// until the old primary's key is gone.
    pub fn handoffs(&self) -> impl Iterator<Item = (&WorkId, &MemberId)> {
        self.owed.keys().map(|(w, m)| (w, m)).chain(
            self.preparing
                .iter()
                .filter(|(w, _)| !self.is_owed(w))
                .map(|(w, p)| (w, &p.from)),
        )
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

    /// Something a plan would see changed at `now`: the soak (re)starts.
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

    /// Every input: the scans may find something again, and `now` is the
    /// latest time seen.
    fn tick(&mut self, now: Instant) {
        self.track_due = true;
        self.quiet = None;
        if now > self.last_now {
            self.last_now = now;
        }
    }

    /// True once members, items and assignments have all been read.
    fn ready(&self) -> bool {
        self.members.is_some() && self.items.is_some() && self.current.is_some()
    }

    /// When the soak in progress is over: `min(last change + soak, first
    /// change + max_soak)`.
    fn due(&self) -> Option<Instant> {
        let s = self.soak?;
        Some((s.last + self.timing.soak).min(s.first + self.timing.max_soak))
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}
