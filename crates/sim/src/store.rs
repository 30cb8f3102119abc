//! The store model: one consistent KV store in one thread, on virtual time.
//!
//! It has the semantics both real stores share: every write gets the next
//! revision (one per transaction), history is kept from the compaction point
//! on, sessions live while renewed within their TTL and take their bound keys
//! with them when they end, one leader slot per election is won by a session
//! (the term is a fresh revision), and a leader's transaction is applied only
//! while its fence holds, all of it or nothing. Watches, latency and faults
//! live in the simulator ([`crate::sim`]); the store only answers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use worker_core::{
    Envelope, Fence, KvEntry, Leader, Role, SessionId, Snapshot, TxnOp, TxnOutcome, Workload,
};

/// Virtual time in nanoseconds since the start of a run.
pub type Nanos = u64;

/// The changes one write made, at one revision.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The revision of the write (unchanged store revision when nothing changed).
    pub rev: u64,
    /// Keys written (`Some`) or deleted (`None`).
    pub changes: Vec<(String, Option<Bytes>)>,
    /// Whether the leader slot changed hands.
    pub leader_changed: bool,
}

#[derive(Debug)]
struct Session {
    ttl: Nanos,
    deadline: Nanos,
    keys: BTreeSet<String>,
}

/// Which store's watch protocol the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Incremental changes (etcd watch).
    Etcd,
    /// A whole new picture of the prefix per answer (Consul blocking query).
    Consul,
}

/// The store model. See the [module docs](self).
#[derive(Debug)]
pub struct Store {
    /// The watch protocol.
    pub flavor: Flavor,
    /// Whether fenced transactions check their fence (a safeguard switch).
    pub fence_check: bool,
    assignments: String,
    election: String,
    data: BTreeMap<String, Bytes>,
    rev: u64,
    history: VecDeque<(u64, String, Option<Bytes>)>,
    compacted: u64,
    sessions: BTreeMap<u64, Session>,
    owners: BTreeMap<String, u64>,
    next_session: u64,
    leader: Option<(u64, Leader)>,
    /// Every version of every assignment key (never compacted): for checks.
    versions: BTreeMap<String, Vec<(u64, Option<Bytes>)>>,
    /// The revision at which each live key was created (etcd
    /// `create_revision`, Consul `CreateIndex`).
    written_at: BTreeMap<String, u64>,
    /// The revision at which each live key was last written (etcd
    /// `mod_revision`, Consul `ModifyIndex`): what a sequence check compares.
    modified: BTreeMap<String, u64>,
}

/// History kept for watches before the oldest changes are compacted anyway.
const HISTORY_LIMIT: usize = 20_000;

fn sid(s: &SessionId) -> Option<u64> {
    s.0.strip_prefix('s')?.parse().ok()
}

impl Store {
    /// An empty store; `assignments` is the assignment prefix (its versions
    /// are kept for the checks), `election` the leader key.
    pub fn new(flavor: Flavor, assignments: &str, election: &str) -> Self {
        Self {
            flavor,
            fence_check: true,
            assignments: assignments.to_owned(),
            election: election.to_owned(),
            data: BTreeMap::new(),
            rev: 1,
            history: VecDeque::new(),
            compacted: 0,
            sessions: BTreeMap::new(),
            owners: BTreeMap::new(),
            next_session: 0,
            leader: None,
            versions: BTreeMap::new(),
            written_at: BTreeMap::new(),
            modified: BTreeMap::new(),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.rev
    }

    /// The revision up to which history is gone.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Applies `changes` as one write: every put (even of the value a key
    /// already has) and every delete of a key that is there.
    fn write(&mut self, changes: Vec<(String, Option<Bytes>)>) -> Applied {
        let changes: Vec<_> = changes
            .into_iter()
            // etcd (and the memory store) give a put a new position even
            // when the value is the same, and watches see it; Consul leaves
            // such a key as it was (its ModifyIndex too: nothing to see).
            // Deleting a key that is not there writes nothing.
            .filter(|(k, v)| match v {
                Some(v) => self.flavor == Flavor::Etcd || self.data.get(k) != Some(v),
                None => self.data.contains_key(k),
            })
            .collect();
        if changes.is_empty() {
            return Applied {
                rev: self.rev,
                ..Applied::default()
            };
        }
        self.rev += 1;
        for (k, v) in &changes {
            if let Some(v) = v {
                self.data.insert(k.clone(), v.clone());
                self.written_at.entry(k.clone()).or_insert(self.rev);
                self.modified.insert(k.clone(), self.rev);
            } else {
                self.data.remove(k);
                self.written_at.remove(k);
                self.modified.remove(k);
            }
            self.history.push_back((self.rev, k.clone(), v.clone()));
            if k.starts_with(&self.assignments) {
                self.versions
                    .entry(k.clone())
                    .or_default()
                    .push((self.rev, v.clone()));
            }
        }
        while self.history.len() > HISTORY_LIMIT {
            if let Some((r, _, _)) = self.history.pop_front() {
                self.compacted = self.compacted.max(r);
            }
        }
        // Whole revisions only: drop the rest of a half-compacted revision.
        while self
            .history
            .front()
            .is_some_and(|(r, _, _)| *r <= self.compacted)
        {
            self.history.pop_front();
        }
        Applied {
            rev: self.rev,
            changes,
            leader_changed: false,
        }
    }

    /// An operator's plain write.
    pub fn put(&mut self, key: &str, value: Bytes) -> Applied {
        self.write(vec![(key.to_owned(), Some(value))])
    }

    /// An operator's plain delete.
    pub fn delete(&mut self, key: &str) -> Applied {
        self.write(vec![(key.to_owned(), None)])
    }

    /// Everything under `prefix`, at the current revision; each entry with
    /// the revision of its last write.
    pub fn list(&self, prefix: &str) -> Snapshot {
        Snapshot {
            revision: self.rev,
            entries: self
                .data
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| {
                    let at = self.written_at.get(k).copied().unwrap_or(0);
                    KvEntry::at(k.as_bytes().to_vec(), v.clone(), at)
                })
                .collect(),
        }
    }

    /// The revision of `key`'s last write (0: it does not exist).
    pub fn modified(&self, key: &str) -> u64 {
        self.modified.get(key).copied().unwrap_or(0)
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.data.get(key)
    }

    /// The keys under `prefix` with their values, now.
    pub fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Bytes)> + 'a {
        self.data
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// The changes under `prefix` after revision `after`, or `None` when
    /// `after` is behind the compaction point (the position is lost).
    pub fn changes_after(
        &self,
        prefix: &str,
        after: u64,
    ) -> Option<Vec<(u64, String, Option<Bytes>)>> {
        if after < self.compacted {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|(r, k, _)| *r > after && k.starts_with(prefix))
                .cloned()
                .collect(),
        )
    }

    /// Compacts history up to `to` (at most the current revision).
    pub fn compact(&mut self, to: u64) {
        self.compacted = self.compacted.max(to.min(self.rev));
        while self
            .history
            .front()
            .is_some_and(|(r, _, _)| *r <= self.compacted)
        {
            self.history.pop_front();
        }
    }

    // ----- sessions -----

    /// Opens a session with `ttl` at `now`.
    pub fn open_session(&mut self, ttl: Nanos, now: Nanos) -> SessionId {
        self.next_session += 1;
        self.sessions.insert(
            self.next_session,
            Session {
                ttl,
                deadline: now + ttl,
                keys: BTreeSet::new(),
            },
        );
        SessionId(format!("s{}", self.next_session))
    }

    /// The deadline of a live session.
    pub fn deadline(&self, session: &SessionId) -> Option<Nanos> {
        self.sessions.get(&sid(session)?).map(|s| s.deadline)
    }

    /// Whether `session` is live.
    pub fn session_live(&self, session: &SessionId) -> bool {
        sid(session).is_some_and(|id| self.sessions.contains_key(&id))
    }

    /// Renews `session`: `false` when it is gone.
    pub fn renew(&mut self, session: &SessionId, now: Nanos) -> bool {
        match sid(session).and_then(|id| self.sessions.get_mut(&id)) {
            Some(s) => {
                s.deadline = now + s.ttl;
                true
            }
            None => false,
        }
    }

    /// Writes `key` bound to `session`; `None` when the session is gone or
    /// another session holds the key.
    pub fn put_bound(&mut self, session: &SessionId, key: &str, value: Bytes) -> Option<Applied> {
        let id = sid(session).filter(|id| self.sessions.contains_key(id))?;
        if self.owners.get(key).is_some_and(|o| *o != id) {
            return None;
        }
        self.owners.insert(key.to_owned(), id);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.keys.insert(key.to_owned());
        }
        Some(self.write(vec![(key.to_owned(), Some(value))]))
    }

    /// Ends `session` (closed or expired): its keys go, its leadership too.
    pub fn end_session(&mut self, session: &SessionId) -> Option<Applied> {
        let id = sid(session)?;
        let s = self.sessions.remove(&id)?;
        for k in &s.keys {
            self.owners.remove(k);
        }
        let mut applied = self.write(s.keys.into_iter().map(|k| (k, None)).collect());
        if self.leader.as_ref().is_some_and(|(h, _)| *h == id) {
            self.leader = None;
            applied.leader_changed = true;
        }
        Some(applied)
    }

    /// Ends `session` if its deadline passed at `now`.
    pub fn expire_if_due(&mut self, session: &SessionId, now: Nanos) -> Option<Applied> {
        if self.deadline(session)? <= now {
            self.end_session(session)
        } else {
            None
        }
    }

    // ----- election -----

    /// The leader now.
    pub fn leader(&self) -> Option<Leader> {
        self.leader.as_ref().map(|(_, l)| l.clone())
    }

    /// The session holding the leader slot.
    pub fn leader_session(&self) -> Option<SessionId> {
        self.leader
            .as_ref()
            .map(|(id, _)| SessionId(format!("s{id}")))
    }

    /// Tries to lead with `session`, recording `value`.
    pub fn try_lead(&mut self, session: &SessionId, value: &str) -> (Option<Fence>, bool) {
        let Some(id) = sid(session).filter(|id| self.sessions.contains_key(id)) else {
            return (None, false);
        };
        let fence = |leader: Leader, key: &str| {
            let revision = leader.term;
            Fence::new(session.clone(), key, leader, revision)
        };
        match &self.leader {
            Some((holder, l)) if *holder == id => (Some(fence(l.clone(), &self.election)), false),
            Some(_) => (None, false),
            None => {
                // Taking the leader key is a write: the term is a fresh revision.
                self.rev += 1;
                let l = Leader {
                    id: value.to_owned(),
                    term: self.rev,
                    name: None,
                };
                self.leader = Some((id, l.clone()));
                (Some(fence(l, &self.election)), true)
            }
        }
    }

    /// Whether `fence` holds now: its session holds the slot with its term.
    pub fn holds(&self, fence: &Fence) -> bool {
        let id = sid(fence.session());
        self.leader
            .as_ref()
            .is_some_and(|(h, l)| Some(*h) == id && l.term == fence.term())
    }

    /// Gives up the leadership `fence` names; true when the slot changed.
    pub fn resign(&mut self, fence: &Fence) -> bool {
        if self.holds(fence) {
            self.leader = None;
            true
        } else {
            false
        }
    }

    /// A fenced transaction. Returns the outcome and what changed.
    pub fn txn(&mut self, fence: &Fence, ops: &[TxnOp]) -> (TxnOutcome, Applied) {
        if self.fence_check && !self.holds(fence) {
            return (TxnOutcome::Fenced, Applied::default());
        }
        let guards_hold = ops.iter().all(|op| match op {
            TxnOp::Absent { key } => !self.data.contains_key(key),
            TxnOp::Sequence { key, index, .. } => self.modified(key) == *index,
            _ => true,
        });
        if !guards_hold {
            return (TxnOutcome::Conflict, Applied::default());
        }
        let applied = self.write(
            ops.iter()
                .filter_map(|op| match op {
                    TxnOp::Put { key, value } | TxnOp::Sequence { key, value, .. } => {
                        Some((key.clone(), Some(value.clone())))
                    }
                    TxnOp::Delete { key } => Some((key.clone(), None)),
                    TxnOp::Absent { .. } => None,
                })
                .collect(),
        );
        // The backends answer the sequence key's modify position (etcd: the
        // header's revision, which is the same).
        let sequence = ops.iter().find_map(|op| match op {
            TxnOp::Sequence { key, .. } => Some(key.as_str()),
            _ => None,
        });
        let revision = sequence.map_or(self.rev, |key| self.modified(key));
        (TxnOutcome::Applied { revision }, applied)
    }

    // ----- for the checks -----

    /// The assignment keys under `member_prefix` at revision `rev`, as a
    /// workload (every version is kept for this, compaction or not).
    pub fn assigned_at(&self, member_prefix: &str, rev: u64) -> Workload {
        let mut w = Workload::new();
        for (k, versions) in self
            .versions
            .range(member_prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(member_prefix))
        {
            let at = versions.iter().rev().find(|(r, _)| *r <= rev);
            if let Some((_, Some(v))) = at {
                let id = &k[member_prefix.len()..];
                if !id.contains('/') {
                    w.insert(id.into(), canonical(v));
                }
            }
        }
        w
    }
}

/// A value as a worker keeps it: a primary's bytes, or a secondary's with
/// exactly [`Envelope::secondary`]'s header (however the store spells it).
fn canonical(v: &Bytes) -> Bytes {
    match Envelope::role_of(v) {
        (Role::Primary, payload) => v.slice_ref(payload),
        (Role::Secondary, payload) => Envelope::secondary(payload),
    }
}
