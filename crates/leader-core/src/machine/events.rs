//! Event handling: the machine's inputs (items, the consistent read, write
//! outcomes, handoff records, time) and when it next needs the time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use std::time::Instant;
use worker_core::{TxnOp, TxnOutcome, WorkId};

use super::{Action, LeaderMachine, LeaderRead, Reading, Source};
use crate::plan::MemberId;

impl LeaderMachine {
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

    /// The common half of [`handle_read`](Self::handle_read) and
    /// [`handle_assignments`](Self::handle_assignments): takes in the assignment
    /// keys and the handoff records (replacing the moves known), then pumps.
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

    /// Asks to read the handoff records ([`Action::ListHandoffs`]) when some
    /// were written since the last read and none is in flight or waiting to
    /// be retried.
    fn read_handoffs_if_stale(&mut self) {
        if self.handoffs_stale && !self.handoffs_reading && self.handoffs_retry_at.is_none() {
            self.handoffs_stale = false;
            self.handoffs_reading = true;
            self.out.push_back(Action::ListHandoffs);
        }
    }

    /// Records an applied transaction's operations in the machine's picture
    /// of the store (assignment keys, handoff records, the indexes), and
    /// forgets the moves it ended.
    fn record_applied(&mut self, ops: Vec<TxnOp>) {
        let Some(current) = &mut self.current else {
            return;
        };
        let mut touched = Vec::new();
        let mut forget = Vec::new();
        let mut staged = Vec::new();
        let mut written: BTreeSet<MemberId> = BTreeSet::new();
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
            written.insert(key.0.clone());
            match op {
                TxnOp::Put { value, .. } => {
                    // A primary's assign ends the item's moves; a
                    // secondary's (a demotion among them) does not.
                    if super::indexes::is_primary(&value) {
                        forget.push(key.1.clone());
                    }
                    staged.push((key.clone(), value.clone()));
                    let existed = current.insert(key.clone(), value).is_some();
                    touched.push((key, existed));
                }
                TxnOp::Delete { .. } => {
                    let existed = current.remove(&key).is_some();
                    touched.push((key, existed));
                    self.track_due = true;
                }
                TxnOp::Absent { .. } | TxnOp::Sequence { .. } => {}
            }
        }
        for ((member, work), existed) in touched {
            self.idx.key_changed(
                &member,
                &work,
                existed,
                current,
                self.desired.as_ref(),
                self.items.as_ref(),
            );
        }
        for work in forget {
            self.forget_owed(&work);
        }
        for ((member, work), value) in staged {
            self.staged_put(&member, &work, &value);
        }
        let sequence = self.sequence;
        for member in written {
            self.unacked_writes.insert(member, sequence);
        }
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
            .chain(self.staged_timeout())
            .chain(rejoin)
            .chain(fenced)
            .chain(timeouts)
            .chain(self.handoffs_retry_at)
            // Not while the handoff records are read: the read comes after.
            .chain(self.verify_at.filter(|_| !self.handoffs_reading))
            .min()
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
}
