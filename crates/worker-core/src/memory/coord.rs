//! The leader-half traits on the memory store: sessions with a TTL on tokio's
//! clock, a leader slot won by a session, and fenced transactions.
//!
//! A session expires when it is not renewed within its TTL (checked on every
//! call and by one timer task per session, so it also expires while nobody
//! calls). Keys bound to it are deleted at that moment, and a leader slot it
//! holds is freed. A leader set with [`MemoryStore::set_leader`] belongs to no
//! session: it stands for an outside holder (like `consul lock`) and keeps
//! members from leading until [`MemoryStore::clear_leader`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{MemoryStore, State};
use crate::coord::{
    ConsistentRead, Election, Fence, FencedWrite, KeyVersion, KvWrite, Membership, SessionId,
    TxnLimits, TxnOp, TxnOutcome,
};
use crate::error::StoreError;
use crate::types::{KvChange, KvEntry, Leader};

/// Sessions and the leader slot's owner.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    next: u64,
    live: BTreeMap<u64, Session>,
    /// Which session holds each bound key.
    owners: BTreeMap<Vec<u8>, u64>,
    /// The session holding the leader slot, when a member holds it.
    leader_session: Option<u64>,
    /// Sessions that expired (not closed), for tests.
    pub(super) expired: u64,
    /// Set by [`MemoryStore::hold_next_txn`]: the next fenced transaction is
    /// kept, not applied, and its caller gets a timeout.
    hold_next: bool,
    /// Transactions kept that way, oldest first.
    held: Vec<(Fence, Vec<TxnOp>)>,
}

#[derive(Debug)]
struct Session {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<Vec<u8>>,
}

/// Operations per fenced transaction on the memory store (as etcd's default).
const MAX_TXN_OPS: usize = 127;

fn parse(session: &SessionId) -> Option<u64> {
    session.0.strip_prefix("mem-")?.parse().ok()
}

impl Sessions {
    /// Called when a leader is set from outside: no session holds it.
    pub(super) fn leader_set_externally(&mut self) {
        self.leader_session = None;
    }
}

impl MemoryStore {
    /// Ends session `id` now: deletes its keys, frees the leader slot.
    /// Returns whether anything changed (the caller wakes watchers).
    fn end_session(s: &mut State, id: u64) -> bool {
        let Some(session) = s.sessions.live.remove(&id) else {
            return false;
        };
        for key in session.keys {
            s.sessions.owners.remove(&key);
            if s.data.remove(&key).is_some() {
                Self::record(s, KvChange::Delete { key });
            }
        }
        if s.sessions.leader_session == Some(id) {
            s.sessions.leader_session = None;
            s.leader = None;
        }
        true
    }

    /// Expires every session whose deadline passed. Returns whether any did.
    fn expire_sessions(s: &mut State, now: Instant) -> bool {
        let due: Vec<u64> = s
            .sessions
            .live
            .iter()
            .filter(|(_, v)| v.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut changed = false;
        for id in due {
            s.sessions.expired += 1;
            changed |= Self::end_session(s, id);
        }
        changed
    }

    /// Runs `f` on the state after expiring due sessions; wakes watchers when
    /// anything changed.
    fn with_sessions<T>(&self, f: impl FnOnce(&mut State) -> (T, bool)) -> T {
        let (out, changed) = {
            let mut s = self.lock();
            let expired = Self::expire_sessions(&mut s, Instant::now());
            let (out, changed) = f(&mut s);
            (out, changed || expired)
        };
        if changed {
            self.wake();
        }
        out
    }

    /// Expires a session at once, as if its TTL had run out (for tests: a
    /// member that died).
    pub fn expire_session(&self, session: &SessionId) -> bool {
        let Some(id) = parse(session) else {
            return false;
        };
        self.with_sessions(|s| {
            let ended = Self::end_session(s, id);
            if ended {
                s.sessions.expired += 1;
            }
            (ended, ended)
        })
    }

    /// The sessions alive now.
    pub fn live_sessions(&self) -> Vec<SessionId> {
        self.with_sessions(|s| {
            let ids = s
                .sessions
                .live
                .keys()
                .map(|id| SessionId(format!("mem-{id}")))
                .collect();
            (ids, false)
        })
    }

    /// Makes the next fenced transaction ([`FencedWrite::apply`]) behave as
    /// one whose reply never came: its caller gets
    /// [`StoreError::Timeout`] at once and nothing is applied, until
    /// [`apply_held`](Self::apply_held) applies it, later, as a store does
    /// with a request the client already gave up on. For tests.
    pub fn hold_next_txn(&self) {
        self.lock().sessions.hold_next = true;
    }

    /// How many transactions [`hold_next_txn`](Self::hold_next_txn) keeps
    /// now.
    pub fn held_txns(&self) -> usize {
        self.lock().sessions.held.len()
    }

    /// Applies the oldest transaction kept by
    /// [`hold_next_txn`](Self::hold_next_txn), with every check as of now;
    /// `None` when none is kept.
    pub fn apply_held(&self) -> Option<TxnOutcome> {
        self.with_sessions(|s| {
            if s.sessions.held.is_empty() {
                return (None, false);
            }
            let (fence, ops) = s.sessions.held.remove(0);
            let (outcome, changed) = Self::apply_now(s, &fence, &ops);
            (Some(outcome), changed)
        })
    }

    /// A fenced transaction, checked and applied under the lock.
    fn apply_now(s: &mut State, fence: &Fence, ops: &[TxnOp]) -> (TxnOutcome, bool) {
        let id = parse(fence.session());
        let holds = id.is_some()
            && s.sessions.leader_session == id
            && s.leader
                .as_ref()
                .is_some_and(|l| l.term == fence.revision());
        if !holds {
            s.stats.fenced += 1;
            return (TxnOutcome::Fenced, false);
        }
        let guards_hold = ops.iter().all(|op| match op {
            TxnOp::Absent { key } => !s.data.contains_key(key.as_bytes()),
            TxnOp::Sequence { key, index, .. } => {
                s.modified.get(key.as_bytes()).copied().unwrap_or(0) == *index
            }
            _ => true,
        });
        if !guards_hold {
            return (TxnOutcome::Conflict, false);
        }
        let put = |s: &mut State, key: &str, value: &Bytes| {
            let key = key.as_bytes().to_vec();
            s.data.insert(key.clone(), value.clone());
            Self::record(s, KvChange::Put(KvEntry::new(key, value.clone())));
        };
        for op in ops {
            match op {
                TxnOp::Put { key, value } => put(s, key, value),
                TxnOp::Delete { key } => {
                    let key = key.as_bytes().to_vec();
                    if s.data.remove(&key).is_some() {
                        Self::record(s, KvChange::Delete { key });
                    }
                }
                TxnOp::Absent { .. } | TxnOp::Sequence { .. } => {}
            }
        }
        // The sequence key last, so that the outcome's revision is its
        // modify position.
        for op in ops {
            if let TxnOp::Sequence { key, value, .. } = op {
                put(s, key, value);
            }
        }
        s.stats.txns += 1;
        (
            TxnOutcome::Applied {
                revision: s.revision,
            },
            !ops.is_empty(),
        )
    }

    /// How many sessions expired (rather than being closed) so far.
    pub fn expired_sessions(&self) -> u64 {
        self.lock().sessions.expired
    }

    fn spawn_reaper(&self, id: u64) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let deadline = {
                    let Some(inner) = weak.upgrade() else { return };
                    let store = MemoryStore { inner };
                    let s = store.lock();
                    match s.sessions.live.get(&id) {
                        Some(session) => session.deadline,
                        None => return,
                    }
                };
                tokio::time::sleep_until(deadline).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = MemoryStore { inner };
                let gone = store.with_sessions(|s| (!s.sessions.live.contains_key(&id), false));
                if gone {
                    return;
                }
            }
        });
    }
}

#[async_trait]
impl Membership for MemoryStore {
    async fn open_session(&self, ttl: Duration) -> Result<SessionId, StoreError> {
        let id = self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            s.sessions.next += 1;
            let id = s.sessions.next;
            s.sessions.live.insert(
                id,
                Session {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            (Ok(id), false)
        })?;
        self.spawn_reaper(id);
        Ok(SessionId(format!("mem-{id}")))
    }

    async fn renew_session(&self, session: &SessionId) -> Result<bool, StoreError> {
        let id = parse(session);
        self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            let live = id.and_then(|id| s.sessions.live.get_mut(&id));
            match live {
                Some(session) => {
                    session.deadline = Instant::now() + session.ttl;
                    (Ok(true), false)
                }
                None => (Ok(false), false),
            }
        })
    }

    async fn close_session(&self, session: &SessionId) -> Result<(), StoreError> {
        let id = parse(session);
        self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            let changed = id.is_some_and(|id| Self::end_session(s, id));
            (Ok(()), changed)
        })
    }

    async fn put_bound(
        &self,
        session: &SessionId,
        key: &str,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        let id = parse(session);
        self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            let Some(id) = id.filter(|id| s.sessions.live.contains_key(id)) else {
                return (Ok(false), false);
            };
            let key = key.as_bytes().to_vec();
            if s.sessions.owners.get(&key).is_some_and(|o| *o != id) {
                return (Ok(false), false);
            }
            s.sessions.owners.insert(key.clone(), id);
            if let Some(session) = s.sessions.live.get_mut(&id) {
                session.keys.insert(key.clone());
            }
            s.data.insert(key.clone(), value.clone());
            Self::record(s, KvChange::Put(KvEntry::new(key, value)));
            (Ok(true), true)
        })
    }
}

#[async_trait]
impl Election for MemoryStore {
    async fn try_lead(
        &self,
        election: &str,
        session: &SessionId,
        value: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let id = parse(session);
        self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            let Some(id) = id.filter(|id| s.sessions.live.contains_key(id)) else {
                return (Ok(None), false);
            };
            let fence = |leader: Leader| {
                let revision = leader.term;
                Fence::new(session.clone(), election, leader, revision)
            };
            match (&s.leader, s.sessions.leader_session) {
                (Some(leader), Some(holder)) if holder == id => {
                    (Ok(Some(fence(leader.clone()))), false)
                }
                (Some(_), _) => (Ok(None), false),
                (None, _) => {
                    s.terms += 1;
                    let leader = Leader {
                        id: value.to_owned(),
                        term: s.terms,
                        name: None,
                    };
                    s.leader = Some(leader.clone());
                    s.sessions.leader_session = Some(id);
                    (Ok(Some(fence(leader))), true)
                }
            }
        })
    }

    async fn leader_value(&self, _election: &str) -> Result<Option<String>, StoreError> {
        self.with_sessions(|s| {
            (
                s.check().map(|()| s.leader.as_ref().map(|l| l.id.clone())),
                false,
            )
        })
    }

    async fn resign(&self, fence: &Fence) -> Result<(), StoreError> {
        let id = parse(fence.session());
        self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            let holds = id.is_some()
                && s.sessions.leader_session == id
                && s.leader
                    .as_ref()
                    .is_some_and(|l| l.term == fence.revision());
            if holds {
                s.leader = None;
                s.sessions.leader_session = None;
            }
            (Ok(()), holds)
        })
    }
}

impl MemoryStore {
    /// Sets what one fenced transaction may carry (default: 127 operations,
    /// no byte limit), so that tests can play a store with smaller limits.
    /// A transaction past them is refused as a real store refuses it.
    pub fn set_txn_limits(&self, limits: TxnLimits) {
        self.lock().txn_limits = Some(limits);
    }
}

#[async_trait]
impl FencedWrite for MemoryStore {
    fn max_ops(&self) -> usize {
        self.limits().max_ops
    }

    fn limits(&self) -> TxnLimits {
        self.lock()
            .txn_limits
            .unwrap_or_else(|| TxnLimits::ops(MAX_TXN_OPS))
    }

    /// Applies `ops` if the fence holds and every guard is met. Like etcd, it
    /// refuses (an error, nothing applied) a transaction past its
    /// [`limits`](FencedWrite::limits) or one that names a key twice.
    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        let limits = self.limits();
        if !limits.fit(ops) {
            return Err(StoreError::protocol(format!(
                "transaction of {} operations and {} bytes exceeds the limits {limits:?}",
                ops.len(),
                limits.bytes(ops)
            )));
        }
        let mut keys = BTreeSet::new();
        if let Some(op) = ops.iter().find(|op| !keys.insert(op.key())) {
            return Err(StoreError::protocol(format!(
                "duplicate key given in txn request: {}",
                op.key()
            )));
        }
        self.with_sessions(|s| {
            if let Err(e) = s.check() {
                return (Err(e), false);
            }
            if std::mem::take(&mut s.sessions.hold_next) {
                s.sessions.held.push((fence.clone(), ops.to_vec()));
                return (Err(StoreError::Timeout(Duration::ZERO)), false);
            }
            let (outcome, changed) = Self::apply_now(s, fence, ops);
            (Ok(outcome), changed)
        })
    }

    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError> {
        let mut s = self.lock();
        s.check()?;
        s.stats.lists += 1;
        let prefixes = prefixes
            .iter()
            .map(|p| {
                let p = p.as_bytes();
                s.data
                    .range(p.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(p))
                    .map(|(k, v)| {
                        let rev = s.created.get(k).copied().unwrap_or(0);
                        KvEntry::at(k.clone(), v.clone(), rev)
                    })
                    .collect()
            })
            .collect();
        let keys = keys
            .iter()
            .map(|k| {
                let k = k.as_bytes();
                s.data.get(k).map(|v| KeyVersion {
                    value: v.clone(),
                    modified: s.modified.get(k).copied().unwrap_or(0),
                })
            })
            .collect();
        Ok(ConsistentRead {
            revision: s.revision,
            prefixes,
            keys,
        })
    }
}

#[async_trait]
impl KvWrite for MemoryStore {
    async fn put_key(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        self.lock().check()?;
        self.put(key, value);
        Ok(())
    }

    async fn delete_key(&self, key: &str) -> Result<bool, StoreError> {
        self.lock().check()?;
        Ok(self.delete(key).is_some())
    }
}
