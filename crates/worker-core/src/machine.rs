//! The tracking + soak state machine: pure, no I/O, no clock.
//!
//! Time arrives as a `now` argument and randomness (for backoff jitter) from a
//! seeded generator, so every rule of the worker can be tested by plain
//! `#[test]`s. The tokio driver in [`crate::worker`] feeds it store results and
//! timer expiries, and carries out the [`Action`]s it asks for.
//!
//! Shape (after quinn-proto): `handle_*` take inputs, [`Machine::poll`] drains
//! actions after every input, [`Machine::poll_timeout`] says when to call
//! [`Machine::handle_timeout`] next.
//!
//! The machine holds the newest observation of the member's keys (`observed`)
//! and, per key, how the settled workload differs from it (`delta`), so that a
//! single-key change costs O(log n) and a commit O(changed keys), whatever the
//! workload's size. The settled workload itself lives with the application
//! (the driver applies each published [`WorkloadChange`] to it).
//!
//! Roles travel in the values ([`Envelope`]): the machine
//! keeps each value in one canonical form (a primary's without an envelope, a
//! secondary's with exactly `role=secondary`), so that two values differ
//! exactly when the role or the application's bytes differ. A role change is
//! then a change of value like any other: it soaks, and the settled position
//! covers it once published; but a pending promotion (a held secondary now
//! primary, same bytes) publishes at once, with whatever else is pending. The
//! envelope comes off when a change is published.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::backoff::Backoff;
use crate::envelope::{Envelope, Role, ENVELOPE_MAGIC};
use crate::error::ConfigError;
use crate::keys::{AssignmentKeys, ForeignReason};
use crate::types::{
    KvChange, KvEntry, Leader, Revision, WatchEvent, WorkId, Workload, WorkloadChange,
};

/// The timers of the state machine. See [`crate::WorkerConfig`] for defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Quiet time an observation must stay unchanged before it is committed.
    pub soak: Duration,
    /// Longest time a candidate may be pending before the newest one is committed.
    pub max_soak: Duration,
    /// Extra wait after a leader appears (or changes) before committing.
    pub leader_settle: Duration,
    /// First retry delay after a store error.
    pub backoff_min: Duration,
    /// Largest retry delay after repeated store errors.
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        let soak = Duration::from_millis(500);
        Self {
            soak,
            max_soak: soak * 10,
            leader_settle: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl Timing {
    /// Checks that the timers make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_soak < self.soak {
            return Err(ConfigError::new(
                "max_soak",
                format!(
                    "{:?} is shorter than soak {:?}; it must be at least soak",
                    self.max_soak, self.soak
                ),
            ));
        }
        if self.backoff_min.is_zero() {
            return Err(ConfigError::new("backoff_min", "must be greater than zero"));
        }
        if self.backoff_max < self.backoff_min {
            return Err(ConfigError::new(
                "backoff_max",
                "must be at least backoff_min",
            ));
        }
        Ok(())
    }
}

/// Safety mechanisms that only the simulator (`crates/sim`) turns off, one at a
/// time, to prove that it notices their absence. Not a feature: the product
/// never changes them, and every constructor starts with [`Default`] (all on).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Independent switches, on purpose.
#[allow(clippy::struct_excessive_bools)]
pub struct Safeguards {
    /// The store checks the fence of every leader transaction (the simulator's
    /// store model reads this one; no product code does).
    pub fence: bool,
    /// The leader writes every revoke before any assign.
    pub revoke_first: bool,
    /// The worker relists after a lost position (off: it resumes as after an error).
    pub relist_on_lost: bool,
    /// The leader cuts transactions by bytes as well as operations (off: by
    /// operations only, as before byte limits were known).
    pub txn_bytes: bool,
    /// Exclusive mode: the leader waits a member's whole TTL after seeing its
    /// session end before giving its items away (off: only the margin, which
    /// holds only when the store never ends a session before its TTL).
    pub lease_wait: bool,
    /// Every leader transaction carries the sequence check
    /// ([`TxnOp::Sequence`](crate::TxnOp::Sequence)); off, the leader sends
    /// none, and a transaction whose outcome it did not learn can land after
    /// a later one of the same term.
    pub sequence: bool,
    /// Make-before-break moves of the default mode: the old primary's key is
    /// revoked only once the new primary acknowledged its promotion (off:
    /// with the promotion, and nobody may be active for a moment).
    pub overlap_wait: bool,
    /// Every leader transaction writes a new value to the sequence key (the
    /// position it expects); off, the same value all term, which Consul
    /// leaves in place without moving its `ModifyIndex`: the check then
    /// never moves there.
    pub sequence_moves: bool,
}

impl Default for Safeguards {
    fn default() -> Self {
        Self {
            fence: true,
            revoke_first: true,
            relist_on_lost: true,
            txn_bytes: true,
            lease_wait: true,
            sequence: true,
            overlap_wait: true,
            sequence_moves: true,
        }
    }
}

/// What the machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Read the whole member prefix (drop any open watch first).
    List,
    /// Open a watch of the member prefix after `after` (drop any open one first).
    Watch {
        /// The position to resume after.
        after: Revision,
    },
    /// (Re)open the leader observation.
    ObserveLeader,
    /// Publish a settled change to the application.
    Publish(WorkloadChange),
    /// A key under the member prefix is not an assignment; reported once per key.
    IgnoredKey {
        /// The key as read.
        key: Vec<u8>,
        /// Why it is not an assignment.
        reason: ForeignReason,
    },
}

/// Where the machine stands with leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderPhase {
    /// No answer from the leader observation yet.
    Unknown,
    /// The store reports no leader: nothing is committed.
    Absent,
    /// A leader appeared or changed; committing resumes at `until`.
    Settling {
        /// When the settle period ends.
        until: Instant,
    },
    /// A leader exists and has settled: commits are allowed.
    Present,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KvPhase {
    Listing,
    Watching,
    BackingOff { until: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaderLink {
    Observing,
    BackingOff { until: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// When the observation first differed from the settled workload.
    since: Instant,
    /// When the observation last changed.
    last_change: Instant,
}

/// The tracking + soak state machine of one worker.
#[derive(Debug)]
// The flags are independent facts (listed, relist due, synced, halted), not a state enum in disguise.
#[allow(clippy::struct_excessive_bools)]
pub struct Machine {
    timing: Timing,
    keys: AssignmentKeys,
    rng: SmallRng,

    leader: Option<Leader>,
    leader_phase: LeaderPhase,
    /// When commits last became allowed.
    ready_at: Option<Instant>,
    leader_link: LeaderLink,
    leader_backoff: Backoff,

    kv: KvPhase,
    kv_backoff: Backoff,
    listed: bool,
    relist: bool,
    lost_streak: u32,

    observed: Workload,
    observed_rev: Revision,
    /// Settled value of each key where it differs from `observed` (`None`: not settled).
    delta: BTreeMap<WorkId, Option<Bytes>>,
    /// How many entries of `delta` are promotions (a held secondary now
    /// primary with the same bytes): while one is, the change is published
    /// without a soak.
    promotions: usize,
    candidate_rev: Revision,
    synced: bool,
    pending: Option<Pending>,
    ignored: HashSet<Vec<u8>>,

    halted: bool,
    actions: VecDeque<Action>,
    /// Simulator-only switch; always true in the product.
    relist_on_lost: bool,
}

impl Machine {
    /// A machine for `instance_id`'s keys under `prefix`. It starts by asking
    /// for a leader observation and a list. `seed` seeds the backoff jitter.
    pub fn new(
        prefix: &str,
        instance_id: &str,
        timing: Timing,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        timing.validate()?;
        let keys = AssignmentKeys::new(prefix, instance_id)?;
        let mut actions = VecDeque::new();
        actions.push_back(Action::ObserveLeader);
        actions.push_back(Action::List);
        Ok(Self {
            timing,
            keys,
            rng: SmallRng::seed_from_u64(seed),
            leader: None,
            leader_phase: LeaderPhase::Unknown,
            ready_at: None,
            leader_link: LeaderLink::Observing,
            leader_backoff: Backoff::new(timing.backoff_min, timing.backoff_max),
            kv: KvPhase::Listing,
            kv_backoff: Backoff::new(timing.backoff_min, timing.backoff_max),
            listed: false,
            relist: false,
            lost_streak: 0,
            observed: Workload::new(),
            observed_rev: 0,
            delta: BTreeMap::new(),
            promotions: 0,
            candidate_rev: 0,
            synced: false,
            pending: None,
            ignored: HashSet::new(),
            halted: false,
            actions,
            relist_on_lost: true,
        })
    }

    /// For the simulator only: turns safeguards off to prove it notices.
    #[doc(hidden)]
    pub fn set_safeguards(&mut self, safeguards: Safeguards) {
        self.relist_on_lost = safeguards.relist_on_lost;
    }

    // ----- getters -----

    /// The member prefix being watched (`<prefix><instance_id>/`).
    pub fn member_prefix(&self) -> &str {
        self.keys.member_prefix()
    }

    /// The newest observation of the member's keys. The values are the
    /// keys' values in their canonical form: a secondary's keeps its
    /// envelope (see the [module docs](self)).
    pub fn observed(&self) -> &Workload {
        &self.observed
    }

    /// The settled workload as published: the application's bytes, roles
    /// taken off (see [`settled_secondaries`](Self::settled_secondaries)).
    /// Rebuilt from the observation and the delta (O(n); for restores, tests
    /// and diagnostics).
    pub fn settled(&self) -> Workload {
        self.settled_raw()
            .into_iter()
            .map(|(id, v)| {
                let payload = decode(&v).1;
                (id, payload)
            })
            .collect()
    }

    /// The items of the [`settled`](Self::settled) workload held as
    /// secondaries; the others are primaries. O(n).
    pub fn settled_secondaries(&self) -> BTreeSet<WorkId> {
        self.settled_raw()
            .into_iter()
            .filter(|(_, v)| decode(v).0 == Role::Secondary)
            .map(|(id, _)| id)
            .collect()
    }

    /// The settled workload with the values in their canonical form.
    fn settled_raw(&self) -> Workload {
        let mut w = self.observed.clone();
        for (id, settled) in &self.delta {
            match settled {
                Some(v) => {
                    w.insert(id.clone(), v.clone());
                }
                None => {
                    w.remove(id);
                }
            }
        }
        w
    }

    /// True once the first settled workload has been published.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// True while a candidate differs from the settled workload (or the first
    /// sync is due).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Where the machine stands with leadership.
    pub fn leader_phase(&self) -> LeaderPhase {
        self.leader_phase
    }

    /// The last leader reported by the store.
    pub fn leader(&self) -> Option<&Leader> {
        self.leader.as_ref()
    }

    /// The newest store position seen.
    pub fn observed_revision(&self) -> Revision {
        self.observed_rev
    }

    /// The store position up to which the settled workload is the
    /// observation (nothing soaking): every change of the member's keys up to
    /// it has been published. `None` before the first sync or while a change
    /// soaks.
    pub fn settled_position(&self) -> Option<Revision> {
        (self.synced && self.delta.is_empty() && self.pending.is_none())
            .then_some(self.observed_rev)
    }

    /// Reads the member's keys afresh (a list, then a watch from it), as
    /// after a lost position but without counting as a loss. The settled
    /// workload is kept; what the list shows soaks as usual.
    pub fn resync(&mut self) {
        if self.halted {
            return;
        }
        self.relist = true;
        match self.kv {
            KvPhase::BackingOff { .. } => {} // its retry lists, `relist` being set
            KvPhase::Listing | KvPhase::Watching => {
                self.kv = KvPhase::Listing;
                self.actions.push_back(Action::List);
            }
        }
    }

    /// Consecutive store errors on the key watch since the last success.
    pub fn kv_failures(&self) -> u32 {
        self.kv_backoff.failures()
    }

    /// True once [`halt`](Self::halt) was called.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    // ----- outputs -----

    /// The next action for the driver; call until `None` after every input.
    pub fn poll(&mut self) -> Option<Action> {
        if self.halted {
            return None;
        }
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted {
            return None;
        }
        [
            match self.leader_phase {
                LeaderPhase::Settling { until } => Some(until),
                _ => None,
            },
            match self.leader_link {
                LeaderLink::BackingOff { until } => Some(until),
                LeaderLink::Observing => None,
            },
            match self.kv {
                KvPhase::BackingOff { until } => Some(until),
                _ => None,
            },
            self.commit_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn commit_deadline(&self) -> Option<Instant> {
        if self.leader_phase != LeaderPhase::Present {
            return None;
        }
        let p = self.pending?;
        let start = match self.ready_at {
            Some(r) if r > p.since => r,
            _ => p.since,
        };
        // A promotion is published at once, with whatever else is pending:
        // the leader promotes a secondary only once the old primary
        // released (or is gone), so the item is active nowhere until then.
        // (The soak is against churn, not a safeguard: publishing the rest
        // early costs nothing but a change the application may see undone.)
        if self.promotions > 0 && self.synced {
            return Some(start);
        }
        Some((p.last_change + self.timing.soak).min(start + self.timing.max_soak))
    }

    // ----- inputs -----

    /// Stops the machine: no action, timer or publication after this.
    pub fn halt(&mut self) {
        self.halted = true;
        self.actions.clear();
    }

    /// The leader observation reported a state.
    pub fn handle_leader(&mut self, now: Instant, leader: Option<Leader>) {
        if self.halted {
            return;
        }
        self.leader_backoff.reset();
        self.leader_link = LeaderLink::Observing;
        match leader {
            None => {
                self.leader_phase = LeaderPhase::Absent;
                self.ready_at = None;
                self.leader = None;
            }
            Some(l) => {
                let same = self.leader.as_ref() == Some(&l);
                match self.leader_phase {
                    // A leader was already there when we first looked: no wait.
                    LeaderPhase::Unknown => self.become_ready(now),
                    LeaderPhase::Present | LeaderPhase::Settling { .. } if same => {}
                    _ => {
                        self.ready_at = None;
                        if self.timing.leader_settle.is_zero() {
                            self.become_ready(now);
                        } else {
                            self.leader_phase = LeaderPhase::Settling {
                                until: now + self.timing.leader_settle,
                            };
                        }
                    }
                }
                self.leader = Some(l);
            }
        }
        self.try_commit(now);
    }

    /// The leader observation failed; returns the delay before it is reopened.
    /// The leader state is kept as last reported.
    pub fn handle_leader_error(&mut self, now: Instant) -> Duration {
        if self.halted {
            return Duration::ZERO;
        }
        let delay = self.leader_backoff.next_delay(&mut self.rng);
        self.leader_link = LeaderLink::BackingOff { until: now + delay };
        delay
    }

    /// A list of the member prefix succeeded.
    pub fn handle_list(&mut self, now: Instant, snapshot: &crate::types::Snapshot) {
        if self.halted {
            return;
        }
        // A list that follows a lost position is not progress yet: the backoff
        // of a watch that keeps being lost must keep growing until the new
        // watch delivers something.
        if self.lost_streak == 0 {
            self.kv_backoff.reset();
        }
        let first = !self.listed;
        self.listed = true;
        self.relist = false;
        let changed = self.apply_snapshot(snapshot.revision, &snapshot.entries);
        if first && !self.synced && self.pending.is_none() {
            self.candidate_rev = snapshot.revision;
            self.pending = Some(Pending {
                since: now,
                last_change: now,
            });
        }
        self.after_observation(now, changed);
        self.kv = KvPhase::Watching;
        self.actions.push_back(Action::Watch {
            after: self.observed_rev,
        });
    }

    /// A watch event arrived.
    pub fn handle_watch(&mut self, now: Instant, event: WatchEvent) {
        if self.halted {
            return;
        }
        if !matches!(event, WatchEvent::Lost { .. }) {
            // Real progress: the watch is alive at its position.
            self.kv_backoff.reset();
            self.lost_streak = 0;
        }
        match event {
            WatchEvent::Changes { revision, changes } => {
                let mut changed = false;
                for change in changes {
                    changed |= match change {
                        KvChange::Put(KvEntry { key, value, .. }) => {
                            self.apply_key(&key, Some(&value))
                        }
                        KvChange::Delete { key } => self.apply_key(&key, None),
                    };
                }
                self.observed_rev = self.observed_rev.max(revision);
                if changed {
                    self.candidate_rev = self.observed_rev;
                }
                self.after_observation(now, changed);
            }
            WatchEvent::Snapshot(s) => {
                let changed = self.apply_snapshot(s.revision, &s.entries);
                self.after_observation(now, changed);
            }
            WatchEvent::Progress { revision } => {
                self.observed_rev = self.observed_rev.max(revision);
            }
            WatchEvent::Lost { .. } if !self.relist_on_lost => {
                // Simulator only (safeguard off): resume as after an error.
                self.handle_kv_error(now);
            }
            WatchEvent::Lost { .. } => {
                self.relist = true;
                self.lost_streak += 1;
                if self.lost_streak == 1 {
                    self.kv = KvPhase::Listing;
                    self.actions.push_back(Action::List);
                } else {
                    // Lost again before any progress: do not spin. The
                    // backoff was not reset since the streak began, so the
                    // delay grows with every loss.
                    let delay = self.kv_backoff.next_delay(&mut self.rng);
                    self.kv = KvPhase::BackingOff { until: now + delay };
                }
            }
        }
    }

    /// A list, watch open or watch read failed; returns the retry delay.
    /// The observation and the settled workload are kept.
    pub fn handle_kv_error(&mut self, now: Instant) -> Duration {
        if self.halted {
            return Duration::ZERO;
        }
        let delay = self.kv_backoff.next_delay(&mut self.rng);
        self.kv = KvPhase::BackingOff { until: now + delay };
        delay
    }

    /// Time has reached [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.halted {
            return;
        }
        if let LeaderPhase::Settling { until } = self.leader_phase {
            if now >= until {
                self.become_ready(now);
            }
        }
        if let LeaderLink::BackingOff { until } = self.leader_link {
            if now >= until {
                self.leader_link = LeaderLink::Observing;
                self.actions.push_back(Action::ObserveLeader);
            }
        }
        if let KvPhase::BackingOff { until } = self.kv {
            if now >= until {
                if self.listed && !self.relist {
                    self.kv = KvPhase::Watching;
                    self.actions.push_back(Action::Watch {
                        after: self.observed_rev,
                    });
                } else {
                    self.kv = KvPhase::Listing;
                    self.actions.push_back(Action::List);
                }
            }
        }
        self.try_commit(now);
    }

    // ----- internals -----

    fn become_ready(&mut self, now: Instant) {
        self.leader_phase = LeaderPhase::Present;
        self.ready_at = Some(now);
    }

    fn try_commit(&mut self, now: Instant) {
        if self.commit_deadline().is_some_and(|d| now >= d) {
            self.commit();
        }
    }

    fn commit(&mut self) {
        let mut change = WorkloadChange {
            revision: self.candidate_rev,
            initial: !self.synced,
            ..WorkloadChange::default()
        };
        // `delta` is in work-id order, so every list comes out sorted.
        self.promotions = 0;
        for (id, settled) in std::mem::take(&mut self.delta) {
            match (self.observed.get(&id), settled) {
                (Some(v), None) => {
                    let (role, payload) = decode(v);
                    if role == Role::Secondary {
                        change.added_secondaries.push(id.clone());
                    }
                    change.added.push((id, payload));
                }
                (None, Some(_)) => change.removed.push(id),
                (Some(new), Some(old)) => {
                    let ((role, payload), (old_role, old_payload)) = (decode(new), decode(&old));
                    match (old_role, role) {
                        (Role::Secondary, Role::Primary) => change.promoted.push(id.clone()),
                        (Role::Primary, Role::Secondary) => change.demoted.push(id.clone()),
                        _ => {}
                    }
                    if payload != old_payload {
                        change.changed.push((id, payload));
                    }
                }
                (None, None) => {}
            }
        }
        self.synced = true;
        self.pending = None;
        self.actions.push_back(Action::Publish(change));
    }

    /// Updates `pending` after an observation; `changed` tells whether the
    /// observation differed from the previous one.
    fn after_observation(&mut self, now: Instant, changed: bool) {
        if changed {
            if self.synced && self.delta.is_empty() {
                // Back to the settled workload (flip-back): nothing to publish.
                self.pending = None;
            } else {
                let since = self.pending.map_or(now, |p| p.since);
                self.pending = Some(Pending {
                    since,
                    last_change: now,
                });
            }
        }
        self.try_commit(now);
    }

    fn apply_snapshot(&mut self, revision: Revision, entries: &[KvEntry]) -> bool {
        let mut fresh: Vec<(&str, Bytes)> = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(id) = self.parse_key(&e.key) {
                fresh.push((id, canonical(&e.value)));
            }
        }
        // Stores answer in key order, which is work-id order under one member
        // prefix: then one merge pass against the (sorted) observation finds the
        // differences. Otherwise sort first.
        if !fresh.windows(2).all(|w| w[0].0 < w[1].0) {
            fresh.sort_unstable_by(|a, b| a.0.cmp(b.0));
            fresh.dedup_by(|later, earlier| later.0 == earlier.0);
        }
        let mut edits: Vec<(WorkId, Option<Bytes>)> = Vec::new();
        let mut old = self.observed.iter().peekable();
        for (id, value) in fresh {
            while let Some((k, _)) = old.next_if(|(k, _)| &***k < id) {
                edits.push((k.clone(), None));
            }
            match old.next_if(|(k, _)| &***k == id) {
                Some((k, v)) => {
                    if *v != value {
                        edits.push((k.clone(), Some(value)));
                    }
                }
                None => edits.push((Arc::from(id), Some(value))),
            }
        }
        edits.extend(old.map(|(k, _)| (k.clone(), None)));
        let changed = !edits.is_empty();
        for (id, v) in edits {
            self.apply_work(id, v);
        }
        self.observed_rev = revision;
        if changed {
            self.candidate_rev = revision;
        }
        changed
    }

    fn parse_key<'k>(&mut self, key: &'k [u8]) -> Option<&'k str> {
        match self.keys.parse(key) {
            Ok(id) => Some(id),
            Err(reason) => {
                if self.ignored.len() < 10_000 && self.ignored.insert(key.to_vec()) {
                    self.actions.push_back(Action::IgnoredKey {
                        key: key.to_vec(),
                        reason,
                    });
                }
                None
            }
        }
    }

    fn apply_key(&mut self, key: &[u8], value: Option<&Bytes>) -> bool {
        let Some(id) = self.parse_key(key) else {
            return false;
        };
        let id: WorkId = match self.observed.get_key_value(id) {
            Some((k, _)) => k.clone(),
            None => match self.delta.get_key_value(id) {
                Some((k, _)) => k.clone(),
                None => Arc::from(id),
            },
        };
        self.apply_work(id, value.map(canonical))
    }

    /// Sets one work id in the observation and keeps `delta` in step.
    /// Returns false when nothing changed.
    fn apply_work(&mut self, id: WorkId, value: Option<Bytes>) -> bool {
        if self.observed.get(&id) == value.as_ref() {
            return false;
        }
        let settled = match self.delta.get(&id) {
            Some(s) => s.clone(),
            None => self.observed.get(&id).cloned(),
        };
        let back_to_settled = settled == value;
        if self.delta.contains_key(&id) && is_promotion(settled.as_ref(), self.observed.get(&id)) {
            self.promotions -= 1;
        }
        if !back_to_settled && is_promotion(settled.as_ref(), value.as_ref()) {
            self.promotions += 1;
        }
        match value {
            Some(v) => self.observed.insert(id.clone(), v),
            None => self.observed.remove(&id),
        };
        if back_to_settled {
            self.delta.remove(&id);
        } else {
            self.delta.entry(id).or_insert(settled);
        }
        true
    }
}

/// A value in the machine's canonical form: a primary's without an envelope,
/// a secondary's with exactly [`Envelope::secondary`]'s, anything else (no
/// envelope, or one that does not parse) as it is.
fn canonical(value: &Bytes) -> Bytes {
    if !value.starts_with(ENVELOPE_MAGIC) {
        return value.clone();
    }
    match Envelope::role_of(value) {
        (Role::Primary, payload) => value.slice_ref(payload),
        (Role::Secondary, payload) => {
            let c = Envelope::secondary(payload);
            if c == *value {
                value.clone()
            } else {
                c
            }
        }
    }
}

/// Whether going from the settled value `settled` to the observed `observed`
/// (both canonical) is a promotion alone: a secondary's value before, the
/// primary's with the same bytes after.
fn is_promotion(settled: Option<&Bytes>, observed: Option<&Bytes>) -> bool {
    let (Some(before), Some(after)) = (settled, observed) else {
        return false;
    };
    before.starts_with(ENVELOPE_MAGIC)
        && !after.starts_with(ENVELOPE_MAGIC)
        && Envelope::role_of(before) == (Role::Secondary, after.as_ref())
}

/// The role a value gives its holder, and the application's bytes.
fn decode(value: &Bytes) -> (Role, Bytes) {
    let (role, payload) = Envelope::role_of(value);
    (role, value.slice_ref(payload))
}
