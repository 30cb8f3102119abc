//! The leader as a pure state machine: no I/O, no clock, no tasks.
//!
//! Time arrives as a `now` argument; the driver (`leader.rs`) feeds the
//! machine what it reads from the store and carries out what [`LeaderMachine::poll`]
//! returns, re-arming one timer at [`LeaderMachine::poll_timeout`].
//!
//! Inputs: the members and work items under their prefixes (whole pictures,
//! as a [`PrefixFollower`](crate::follow::PrefixFollower) keeps them), the
//! assignment keys read once on taking office, and the outcome of each fenced
//! write. Outputs: the order to read the assignments, fenced transactions to
//! apply (revoke-first, split to the store's limit), a report of each plan,
//! keys skipped, and the order to step down.
//!
//! | state | input | next |
//! |---|---|---|
//! | new | — | read the assignments ([`Action::ListAssignments`]) |
//! | reading the assignments | an error | after a backoff: read them again |
//! | any | members / items / assignments differ from what was known | soak (re)starts: due at `min(last change + soak, first change + max_soak)` |
//! | soaking, all three read | timeout past the due time | plan; the difference becomes transactions; the first is sent |
//! | writing | `Applied` | the chunk is recorded as written; the next is sent, or idle |
//! | writing | error | the same chunk is sent again after a backoff (puts and deletes are idempotent) |
//! | any | `Fenced` | step down: nothing more is written |

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;
use worker_core::{revoke_first_chunks, Backoff, TxnOp, TxnOutcome, WorkId};

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
    /// Transactions the writes take.
    pub transactions: usize,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read every key under the assignments prefix, then hand the answer to
    /// [`LeaderMachine::handle_assignments`] or
    /// [`LeaderMachine::handle_assignments_error`]. The first action of a
    /// new machine, and again after a failed read and a backoff.
    ListAssignments,
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
pub struct LeaderMachine {
    layout: Layout,
    timing: LeaderTiming,
    max_ops: usize,
    members: Option<BTreeMap<MemberId, u32>>,
    items: Option<BTreeMap<WorkId, Bytes>>,
    /// The assignment keys in the store: (member, work) -> value.
    current: Option<BTreeMap<(MemberId, WorkId), Bytes>>,
    soak: Option<Soak>,
    chunks: VecDeque<Vec<TxnOp>>,
    in_flight: bool,
    retry_at: Option<Instant>,
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
    /// Members that left within `rebalance_delay`: weight and until when
    /// their items stay theirs.
    departed: BTreeMap<MemberId, (u32, Instant)>,
    /// When this leader took office, until the owners found then without a
    /// member key were given their delay (at the first plan).
    took_office: Option<Instant>,
}

impl LeaderMachine {
    /// A machine for a leader that took office at `now`. `max_ops` is the
    /// store's limit of operations per fenced transaction.
    pub fn new(layout: Layout, timing: LeaderTiming, max_ops: usize, now: Instant) -> Self {
        Self {
            layout,
            timing,
            max_ops: max_ops.max(1),
            members: None,
            items: None,
            current: None,
            // Taking office counts as a change: members that are starting up
            // get a soak's time to register before the first plan.
            soak: Some(Soak {
                first: now,
                last: now,
            }),
            chunks: VecDeque::new(),
            in_flight: false,
            retry_at: None,
            backoff: Backoff::new(timing.backoff_min, timing.backoff_max),
            rng: SmallRng::seed_from_u64(0x5eed_1ead),
            reading: Reading::InFlight,
            list_backoff: Backoff::new(timing.backoff_min, timing.backoff_max),
            list_rng: SmallRng::seed_from_u64(0x1ead),
            reported: BTreeSet::new(),
            stepped_down: false,
            out: std::iter::once(Action::ListAssignments).collect(),
            revoke_first: true,
            departed: BTreeMap::new(),
            took_office: Some(now),
        }
    }

    /// For the simulator only: turns safeguards off to prove it notices.
    #[doc(hidden)]
    pub fn set_safeguards(&mut self, safeguards: worker_core::Safeguards) {
        self.revoke_first = safeguards.revoke_first;
    }

    /// True once the machine stepped down.
    pub fn stepped_down(&self) -> bool {
        self.stepped_down
    }

    /// True while fenced transactions of a plan are still to be applied.
    pub fn writing(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// The live members with their effective weights, once read.
    pub fn members(&self) -> Option<&BTreeMap<MemberId, u32>> {
        self.members.as_ref()
    }

    /// The assignment as this leader knows it is in the store, once read.
    pub fn assignment(&self) -> Option<&BTreeMap<(MemberId, WorkId), Bytes>> {
        self.current.as_ref()
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

    /// The members prefix as it is now (every key and value under it).
    pub fn handle_members<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) {
        if self.stepped_down {
            return;
        }
        let mut members = BTreeMap::new();
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
        }
        if self.members.as_ref() == Some(&members) {
            return;
        }
        let before = self.effective();
        if !self.timing.rebalance_delay.is_zero() {
            if let Some(old) = &self.members {
                for (id, weight) in old {
                    if !members.contains_key(id) {
                        let until = now + self.timing.rebalance_delay;
                        self.departed.insert(id.clone(), (*weight, until));
                    }
                }
            }
        }
        for id in members.keys() {
            self.departed.remove(id);
        }
        self.members = Some(members);
        // A member that left within the delay, or came back within it,
        // changes nothing a plan would see: no soak, no plan, no move.
        if self.effective() != before {
            self.changed(now);
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
    }

    /// The assignment keys as read from the store: the answer to
    /// [`Action::ListAssignments`].
    pub fn handle_assignments<'a>(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (&'a [u8], &'a Bytes)>,
    ) {
        if self.stepped_down {
            return;
        }
        self.reading = Reading::Done;
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
        if self.current.as_ref() != Some(&current) {
            self.current = Some(current);
            self.changed(now);
        }
    }

    /// [`Action::ListAssignments`] failed: the read is asked for again after
    /// a backoff. Returns the delay (for the driver's log), or `None` if no
    /// read was awaited.
    pub fn handle_assignments_error(&mut self, now: Instant) -> Option<Duration> {
        if self.stepped_down || self.reading != Reading::InFlight {
            return None;
        }
        let delay = self.list_backoff.next_delay(&mut self.list_rng);
        self.reading = Reading::RetryAt(now + delay);
        Some(delay)
    }

    /// The outcome of the transaction last returned by [`Action::Write`];
    /// `Err` carries nothing the machine needs (the driver logs it).
    #[allow(clippy::needless_pass_by_value)] // the driver hands over the outcome it got
    pub fn handle_write<E>(&mut self, now: Instant, outcome: Result<TxnOutcome, E>) {
        if self.stepped_down || !self.in_flight {
            return;
        }
        self.in_flight = false;
        match outcome {
            Ok(TxnOutcome::Applied { .. }) => {
                self.backoff.reset();
                if let (Some(chunk), Some(current)) = (self.chunks.pop_front(), &mut self.current) {
                    for op in chunk {
                        let parsed = self.layout.parse_assignment(op.key().as_bytes());
                        let Ok((member, work)) = parsed else { continue };
                        let key = crate::layout::ids(member, work);
                        match op {
                            TxnOp::Put { value, .. } => {
                                current.insert(key, value);
                            }
                            TxnOp::Delete { .. } => {
                                current.remove(&key);
                            }
                        }
                    }
                }
                self.send_next();
            }
            Ok(TxnOutcome::Fenced) => {
                self.stepped_down = true;
                self.chunks.clear();
                self.soak = None;
                self.retry_at = None;
                self.reading = Reading::Done;
                self.out.push_back(Action::StepDown);
            }
            Err(_) => {
                let delay = self.backoff.next_delay(&mut self.rng);
                self.retry_at = Some(now + delay);
            }
        }
    }

    fn send_next(&mut self) {
        if let Some(chunk) = self.chunks.front() {
            self.in_flight = true;
            self.out.push_back(Action::Write(chunk.clone()));
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
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        if !self.chunks.is_empty() || !self.ready() {
            return None;
        }
        let rejoin = self.departed.values().map(|(_, until)| *until).min();
        match (self.due(), rejoin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once members, items and assignments have all been read.
    fn ready(&self) -> bool {
        self.members.is_some() && self.items.is_some() && self.current.is_some()
    }

    /// Time passed: reads the assignments again after a failed read, retries
    /// a failed write, or plans when the soak is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stepped_down {
            return;
        }
        if matches!(self.reading, Reading::RetryAt(at) if now >= at) {
            self.reading = Reading::InFlight;
            self.out.push_back(Action::ListAssignments);
        }
        if let Some(at) = self.retry_at {
            if now >= at {
                self.retry_at = None;
                self.send_next();
            }
            return;
        }
        if self.chunks.is_empty() {
            let before = self.departed.len();
            self.departed.retain(|_, (_, until)| *until > now);
            if self.departed.len() != before {
                // Their delay is over: their items go to the others.
                self.changed(now);
            }
        }
        if self.chunks.is_empty() && self.due().is_some_and(|d| now >= d) {
            self.plan_now(now);
        }
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
        // smallest id among equals; extra keys are deleted by the diff below.
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
        let ids: BTreeSet<WorkId> = items.keys().cloned().collect();
        let p = plan(&ids, members, &owners);
        let min = min_moves(&ids, members, &owners);
        let mut ops = Vec::new();
        let mut desired: BTreeMap<(MemberId, WorkId), &Bytes> = BTreeMap::new();
        for (work, member) in &p.assignment {
            if let Some(value) = items.get(work) {
                desired.insert((member.clone(), work.clone()), value);
            }
        }
        for key in current.keys() {
            if !desired.contains_key(key) {
                ops.push(TxnOp::Delete {
                    key: self.layout.assignment_key(&key.0, &key.1),
                });
            }
        }
        let mut puts = 0;
        for (key, value) in &desired {
            if current.get(key) != Some(*value) {
                puts += 1;
                ops.push(TxnOp::Put {
                    key: self.layout.assignment_key(&key.0, &key.1),
                    value: (*value).clone(),
                });
            }
        }
        let revokes = ops.len() - puts;
        let chunks = if self.revoke_first {
            revoke_first_chunks(ops, self.max_ops)
        } else {
            // Simulator only (safeguard off): every assign before any revoke.
            let (mut puts, deletes): (Vec<TxnOp>, Vec<TxnOp>) = ops
                .into_iter()
                .partition(|op| matches!(op, TxnOp::Put { .. }));
            puts.extend(deletes);
            puts.chunks(self.max_ops).map(<[TxnOp]>::to_vec).collect()
        };
        self.out.push_back(Action::Planned(PlanReport {
            members: members.len(),
            items: items.len(),
            moved: p.moved,
            placed: p.placed,
            min_moves: min,
            revokes,
            puts,
            transactions: chunks.len(),
        }));
        self.chunks = chunks.into();
        self.send_next();
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}
