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
//! | idle, `max_soak` after the last read or write | timeout | read again ([`Action::ListAssignments`]): writes the leader did not make are found and repaired |
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
use worker_core::{Backoff, KvEntry, Revision, TxnOp, TxnOutcome, WorkId};

use crate::layout::{BadKey, Layout, MemberMeta};
use crate::plan::{min_moves, plan, Assignment, MemberId};

/// The leader's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTiming {
    /// Quiet time after a member or item change before planning. Default 3 s.
    pub soak: Duration,
    /// Longest a plan waits while changes keep coming. Default 10 × soak.
    pub max_soak: Duration,
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
    /// to another member only `margin` after the leader saw the member's key
    /// vanish, and only if the key is still absent then (the member released
    /// its workload `margin` before its own lease deadline). `None`: the
    /// items of a member that is gone are reassigned at once.
    pub exclusive: Option<Duration>,
}

impl Default for LeaderTiming {
    fn default() -> Self {
        Self::with_soak(Duration::from_secs(3))
    }
}

impl LeaderTiming {
    /// Default timing with `soak` (and `max_soak` = 10 × soak).
    pub fn with_soak(soak: Duration) -> Self {
        Self {
            soak,
            max_soak: soak.saturating_mul(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            rebalance_delay: Duration::ZERO,
            max_moves_in_flight: usize::MAX,
            exclusive: None,
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
    /// and every `max_soak` while idle.
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
    /// A key was skipped; reported once per key.
    BadKey {
        /// The key, lossily decoded.
        key: String,
        /// Why it was skipped.
        reason: BadKey,
    },
    /// A member key holds metadata that is not valid JSON; the member counts
    /// with the default weight. Reported once per key and value.
    BadMemberValue {
        /// The member id.
        member: String,
        /// The parse error.
        error: String,
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
    max_ops: usize,
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
    /// The last plan: item -> member.
    desired: Option<BTreeMap<WorkId, MemberId>>,
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
    reported: BTreeSet<Vec<u8>>,
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
}

/// Whether an owed item may go to another member.
enum Clear {
    Wait,
    Go,
    /// Go, guarded on this member's key being absent.
    Guard(MemberId),
}

impl LeaderMachine {
    /// A machine for a leader that took office at `now`. `max_ops` is the
    /// store's limit of operations per fenced transaction
    /// ([`FencedWrite::max_ops`](worker_core::FencedWrite::max_ops)); one of
    /// them is each transaction's sequence check, and the plan's share is at
    /// least 3 (a move's two operations and a guard).
    pub fn new(layout: Layout, timing: LeaderTiming, max_ops: usize, now: Instant) -> Self {
        Self {
            layout,
            timing,
            // One operation is the sequence check; room for a move's two
            // operations (revoke + record, assign + record).
            max_ops: max_ops.saturating_sub(1).max(3),
            members: None,
            acks: BTreeMap::new(),
            items: None,
            current: None,
            records: BTreeSet::new(),
            owed: BTreeMap::new(),
            desired: None,
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
            reported: BTreeSet::new(),
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
        }
    }

    /// For the simulator only: turns safeguards off to prove it notices.
    #[doc(hidden)]
    pub fn set_safeguards(&mut self, safeguards: worker_core::Safeguards) {
        self.revoke_first = safeguards.revoke_first;
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
        let (Some(desired), Some(current), Some(items)) =
            (&self.desired, &self.current, &self.items)
        else {
            return false;
        };
        let wanted = desired
            .iter()
            .filter_map(|(w, m)| items.get(w).map(|v| ((m, w), v)));
        current.len()
            != desired
                .iter()
                .filter(|(w, _)| items.contains_key(*w))
                .count()
            || wanted
                .into_iter()
                .any(|((m, w), v)| current.get(&(m.clone(), w.clone())) != Some(v))
    }

    /// The live members with their effective weights, once read.
    pub fn members(&self) -> Option<&BTreeMap<MemberId, u32>> {
        self.members.as_ref()
    }

    /// The assignment as this leader knows it is in the store, once read.
    pub fn assignment(&self) -> Option<&BTreeMap<(MemberId, WorkId), Bytes>> {
        self.current.as_ref()
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

    fn report_bad(&mut self, key: &[u8], reason: BadKey) {
        if self.reported.insert(key.to_vec()) {
            self.out.push_back(Action::BadKey {
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            });
        }
    }

    fn tick(&mut self, now: Instant) {
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
        self.tick(now);
        self.set_members(now, entries);
        self.pump(now);
    }

    fn set_members<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) {
        let mut members = BTreeMap::new();
        let mut acks = BTreeMap::new();
        for (key, value) in entries {
            let id = match self.layout.parse_member(key) {
                Ok(id) => id,
                Err(reason) => {
                    self.report_bad(key, reason);
                    continue;
                }
            };
            let meta = MemberMeta::parse(value).unwrap_or_else(|e| {
                let mut marker = key.to_vec();
                marker.push(0);
                marker.extend_from_slice(value);
                if self.reported.insert(marker) {
                    self.out.push_back(Action::BadMemberValue {
                        member: id.to_owned(),
                        error: e.to_string(),
                    });
                }
                MemberMeta::default()
            });
            members.insert(MemberId::from(id), meta.effective_weight());
            acks.insert(MemberId::from(id), meta.acked);
        }
        self.acks = acks;
        if self.members.as_ref() != Some(&members) {
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
        for (key, value) in entries {
            match self.layout.parse_work(key) {
                Ok(id) => {
                    items.insert(WorkId::from(id), value.clone());
                }
                Err(reason) => self.report_bad(key, reason),
            }
        }
        if self.items.as_ref() != Some(&items) {
            self.items = Some(items);
            self.changed(now);
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
            self.set_members(
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
        self.verify_at = Some(now + self.timing.max_soak);
        let mut current = BTreeMap::new();
        for (key, value) in entries {
            match self.layout.parse_assignment(key) {
                Ok((member, work)) => {
                    let (m, w) = crate::layout::ids(member, work);
                    current.insert((m, w), value.clone());
                }
                Err(reason) => self.report_bad(key, reason),
            }
        }
        self.records.clear();
        self.owed.clear();
        // This read has every record with its creation position.
        self.handoffs_stale = false;
        for (key, value, revision) in records {
            let work = match self.layout.parse_handoff(key) {
                Ok(w) => WorkId::from(w),
                Err(reason) => {
                    self.report_bad(key, reason);
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
        if self.current.as_ref() != Some(&current) {
            self.current = Some(current);
            self.changed(now);
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
        self.tick(now);
        match outcome {
            Ok(TxnOutcome::Applied { revision }) => {
                self.backoff.reset();
                // The sequence key's new position: what the next
                // transaction expects.
                self.sequence = revision;
                self.verify_at = Some(now + self.timing.max_soak);
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
                        drop_owed(&mut self.owed, &work);
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
                    drop_owed(&mut self.owed, &key.1);
                    current.insert(key, value);
                }
                TxnOp::Delete { .. } => {
                    current.remove(&key);
                }
                TxnOp::Absent { .. } | TxnOp::Sequence { .. } => {}
            }
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
        // Exclusive mode: when the margin of a member that is gone runs out.
        let fenced = self.timing.exclusive.into_iter().flat_map(|margin| {
            self.owed
                .keys()
                .filter(|(_, from)| !self.is_live(from))
                .map(move |(_, from)| self.absent_from(from) + margin)
                .filter(|at| *at > self.last_now)
        });
        self.due()
            .into_iter()
            .chain(rejoin)
            .chain(fenced)
            .chain(self.handoffs_retry_at)
            // Not while the handoff records are read: the read comes after.
            .chain(self.verify_at.filter(|_| !self.handoffs_reading))
            .min()
    }

    /// True once members, items and assignments have all been read.
    fn ready(&self) -> bool {
        self.members.is_some() && self.items.is_some() && self.current.is_some()
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

    /// May an item revoked from `from` at `revoked_at` go to another member?
    fn clearance(&self, from: &MemberId, revoked_at: Option<u64>, now: Instant) -> Clear {
        if let Some(acked) = self.acks.get(from) {
            return match (acked, revoked_at) {
                // It does not report: nothing to wait for.
                (None, _) => Clear::Go,
                (Some(a), Some(r)) if *a >= r => Clear::Go,
                _ => Clear::Wait,
            };
        }
        match self.timing.exclusive {
            None => Clear::Go,
            Some(margin) if now >= self.absent_from(from) + margin => Clear::Guard(from.clone()),
            Some(_) => Clear::Wait,
        }
    }

    /// Sends the next transaction if none is in flight and one is due.
    fn pump(&mut self, now: Instant) {
        if self.stepped_down
            || self.in_flight.is_some()
            || self.reading != Reading::Done
            || !self.ready()
            || self.desired.is_none()
        {
            return;
        }
        let ops = if self.revoke_first {
            self.next_revokes()
                .or_else(|| self.next_assigns(now))
                .or_else(|| self.next_cleanup(now))
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
    }

    /// Revokes of keys the plan does not want, with handoff records for
    /// moves, at most `max_moves_in_flight` moves at once.
    fn next_revokes(&mut self) -> Option<Vec<TxnOp>> {
        let (desired, current) = (self.desired.as_ref()?, self.current.as_ref()?);
        let live_owed: BTreeSet<&WorkId> = self
            .owed
            .keys()
            .filter(|(_, from)| self.is_live(from))
            .map(|(w, _)| w)
            .collect();
        let mut moves = live_owed.len();
        let mut ops = Vec::new();
        let mut new_owed = Vec::new();
        for (member, work) in current.keys() {
            let target = desired.get(work);
            if target == Some(member) {
                continue;
            }
            let live = self.is_live(member);
            let reports = self.acks.get(member).is_some_and(Option::is_some);
            let record = reports || (!live && self.timing.exclusive.is_some());
            if live && target.is_some() && !live_owed.contains(work) {
                if moves >= self.timing.max_moves_in_flight {
                    continue;
                }
                moves += 1;
            }
            if ops.len() + 1 + usize::from(record) > self.max_ops {
                break;
            }
            ops.push(TxnOp::Delete {
                key: self.layout.assignment_key(member, work),
            });
            if record {
                ops.push(TxnOp::Put {
                    key: self.layout.handoff_key(work),
                    value: Bytes::copy_from_slice(member.as_bytes()),
                });
                new_owed.push((work.clone(), member.clone()));
            }
        }
        for key in new_owed {
            self.owed.entry(key).or_insert(None);
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Assigns whose handoff is clear, and clean-up of handoff records no
    /// longer needed.
    fn next_assigns(&mut self, now: Instant) -> Option<Vec<TxnOp>> {
        let (desired, current, items) = (
            self.desired.as_ref()?,
            self.current.as_ref()?,
            self.items.as_ref()?,
        );
        let mut owners: BTreeMap<&WorkId, Vec<&MemberId>> = BTreeMap::new();
        for (m, w) in current.keys() {
            owners.entry(w).or_default().push(m);
        }
        let mut ops = Vec::new();
        let mut guards: BTreeSet<MemberId> = BTreeSet::new();
        for (work, target) in desired {
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
                    .is_some_and(|o| o.iter().any(|m| *m != target));
                if others {
                    continue; // its revoke comes first
                }
                let (wait, needs) = self.owed_state(work, Some(target), now);
                if wait {
                    continue;
                }
                let new_guards: Vec<MemberId> =
                    needs.into_iter().filter(|m| !guards.contains(m)).collect();
                let extra = 1 + usize::from(self.records.contains(work)) + new_guards.len();
                if ops.len() + extra > self.max_ops {
                    break;
                }
                for m in new_guards {
                    ops.push(TxnOp::Absent {
                        key: self.layout.member_key(&m),
                    });
                    guards.insert(m);
                }
                if self.records.contains(work) {
                    ops.push(TxnOp::Delete {
                        key: self.layout.handoff_key(work),
                    });
                }
            } else if ops.len() + 1 > self.max_ops {
                break;
            }
            ops.push(TxnOp::Put {
                key: self.layout.assignment_key(target, work),
                value: value.clone(),
            });
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Handoff records no longer needed: items no longer wanted, or already
    /// with their target, once clear.
    fn next_cleanup(&mut self, now: Instant) -> Option<Vec<TxnOp>> {
        let (desired, current, items) = (
            self.desired.as_ref()?,
            self.current.as_ref()?,
            self.items.as_ref()?,
        );
        let owned: BTreeSet<&WorkId> = current.keys().map(|(_, w)| w).collect();
        let mut ops = Vec::new();
        let mut done_owed: Vec<WorkId> = Vec::new();
        let owed_works: BTreeSet<WorkId> = self.owed.keys().map(|(w, _)| w.clone()).collect();
        for work in owed_works {
            let target = desired.get(&work).filter(|_| items.contains_key(&work));
            let settled = match target {
                None => !owned.contains(&work),
                Some(t) => current.contains_key(&(t.clone(), work.clone())),
            };
            if !settled {
                continue;
            }
            // No assign follows, so no guard is needed: a clear owner (one
            // that is gone, past the margin) is enough.
            let (wait, _) = self.owed_state(&work, target, now);
            if wait {
                continue;
            }
            if self.records.contains(&work) {
                if ops.len() + 1 > self.max_ops {
                    break;
                }
                ops.push(TxnOp::Delete {
                    key: self.layout.handoff_key(&work),
                });
            } else {
                done_owed.push(work);
            }
        }
        for work in done_owed {
            drop_owed(&mut self.owed, &work);
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Whether the owed entries of `work` (other than from `target`) are
    /// clear: (some must still wait, guards needed).
    fn owed_state(
        &self,
        work: &WorkId,
        target: Option<&MemberId>,
        now: Instant,
    ) -> (bool, Vec<MemberId>) {
        let mut wait = false;
        let mut needs = Vec::new();
        for ((_, from), at) in self
            .owed
            .range((work.clone(), MemberId::from(""))..)
            .take_while(|((w, _), _)| w == work)
        {
            if Some(from) == target {
                continue;
            }
            match self.clearance(from, *at, now) {
                Clear::Wait => wait = true,
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
        ops.truncate(self.max_ops);
        (!ops.is_empty()).then_some(ops)
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
                if !owners.contains_key(work)
                    && members.contains_key(member)
                    && self.owed.keys().any(|(w, _)| w == work)
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
        let per = self.max_ops.max(1);
        self.out.push_back(Action::Planned(PlanReport {
            members: members.len(),
            items: items.len(),
            moved: p.moved,
            placed: p.placed,
            min_moves: min,
            revokes,
            puts,
            transactions: revokes.div_ceil(per) + puts.div_ceil(per),
        }));
        self.desired = Some(desired);
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}

fn drop_owed(owed: &mut BTreeMap<(WorkId, MemberId), Option<u64>>, work: &WorkId) {
    owed.retain(|(w, _), _| w != work);
}
