//! The traits of the leader half: membership, election and fenced writes.
//!
//! They sit next to [`KvWatch`](crate::KvWatch) and [`LeaderWait`](crate::LeaderWait)
//! and follow the same rules: object safe (`Arc<dyn Membership>` …) so the
//! backend is picked at run time, `&self` methods usable from many tasks, and
//! every method cancel safe in the sense that dropping its future leaves the
//! store in a state the next call handles (a dropped `open_session` may leave
//! a session behind that expires by its TTL).
//!
//! The model both stores share:
//! - a **session** (Consul session with `behavior=delete`, etcd lease) lives
//!   while it is renewed within its TTL; keys bound to it are deleted when it
//!   ends (expired, or closed on purpose);
//! - an **election** is won by at most one session at a time; the winner holds
//!   a [`Fence`] that names its term;
//! - a **fenced write** is a transaction that the store applies only while
//!   that fence still holds, all of it or nothing.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::types::{KvEntry, Leader, Revision};

/// A session (Consul) or lease (etcd) as the store names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub String);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Proof of leadership: what a fenced write compares against.
///
/// A fence has one meaning on every store: a [`FencedWrite`] built on it
/// applies only while the election key [`key`](Self::key) is still held by
/// [`session`](Self::session) at the store position
/// [`revision`](Self::revision) it had when this leadership was taken. A
/// session that resigned and won again holds a new fence, and the old one
/// never applies again. Backends build fences ([`Fence::new`]); applications
/// only read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    session: SessionId,
    key: String,
    leader: Leader,
    revision: u64,
}

impl Fence {
    /// A fence for `session` holding the election key `key`, seen by
    /// [`LeaderWait`](crate::LeaderWait) as `leader`, at the store position
    /// `revision` of that key when the election was won (Consul: the leader
    /// key's `ModifyIndex`; etcd: the candidate key's create revision, which
    /// is also the term; memory: the term). For backends.
    pub fn new(session: SessionId, key: impl Into<String>, leader: Leader, revision: u64) -> Self {
        Self {
            session,
            key: key.into(),
            leader,
            revision,
        }
    }

    /// The session that won the election.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The key whose ownership is leadership (Consul: the leader key; etcd:
    /// this candidate's key in the election; memory: the election name).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This leadership as [`LeaderWait`](crate::LeaderWait) reports it while
    /// it lasts: the same `term` (and, for the stores' own members, the same id).
    pub fn leader(&self) -> &Leader {
        &self.leader
    }

    /// The store position of [`key`](Self::key) when this leadership was
    /// taken: what every fenced write compares, on every store.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The term of this leadership.
    pub fn term(&self) -> u64 {
        self.leader.term
    }
}

/// One operation of a fenced transaction.
///
/// Exhaustive on purpose: every backend matches it without a wildcard, so
/// an operation added in a later release (a new guard, say) fails to compile
/// in a backend that does not translate it, instead of being skipped and
/// letting a transaction apply without its guard. Adding a variant is
/// therefore a breaking change of this crate.
#[derive(Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `key = value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Deletes `key` (no error if it does not exist).
    Delete {
        /// The key.
        key: String,
    },
    /// A guard, not a write: the whole transaction applies only if `key`
    /// does not exist; otherwise nothing is applied and the outcome is
    /// [`TxnOutcome::Conflict`] (Consul `check-not-exists`; etcd a compare
    /// of the key's version with 0).
    Absent {
        /// The key that must not exist.
        key: String,
    },
    /// A guard and a write: the whole transaction applies only if `key` was
    /// last written at store position `index` (0: the key does not exist),
    /// and then sets `key = value`; otherwise nothing is applied and the
    /// outcome is [`TxnOutcome::Conflict`]. Consul: the `cas` verb (index 0
    /// creates only); etcd: a compare of the key's `mod_revision` with
    /// `index`, and a put; memory: the same.
    ///
    /// The leader's **sequence key**: every leader transaction carries one,
    /// with the position its view of the store was read at or the position
    /// its last transaction took effect at. A transaction built on a view
    /// that another one has since changed can then never apply, however late
    /// it reaches the store. At most one per transaction; when present,
    /// [`TxnOutcome::Applied::revision`] is the key's new modify position.
    Sequence {
        /// The sequence key.
        key: String,
        /// The key's modify position the transaction expects (0: absent).
        index: Revision,
        /// What to write (for humans: who wrote it).
        value: Bytes,
    },
}

impl TxnOp {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. }
            | TxnOp::Delete { key }
            | TxnOp::Absent { key }
            | TxnOp::Sequence { key, .. } => key,
        }
    }
}

impl std::fmt::Debug for TxnOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnOp::Put { key, value } => write!(f, "Put({key}, {} bytes)", value.len()),
            TxnOp::Delete { key } => write!(f, "Delete({key})"),
            TxnOp::Absent { key } => write!(f, "Absent({key})"),
            TxnOp::Sequence { key, index, .. } => write!(f, "Sequence({key} at {index})"),
        }
    }
}

/// What the store did with a fenced transaction.
///
/// Exhaustive on purpose, like [`TxnOp`]: the leader must handle every
/// outcome a store can give, and a new one is a breaking change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation was applied.
    Applied {
        /// The store position of the transaction: the position every key it
        /// wrote was last modified at (etcd: the header's revision; Consul:
        /// the `ModifyIndex` the transaction's results report; memory: the
        /// revision of its last write). With a [`TxnOp::Sequence`] it is
        /// exactly the sequence key's new modify position, the `index` the
        /// writer's next transaction expects.
        revision: Revision,
    },
    /// The fence no longer holds (another leader, or the session is gone):
    /// nothing was applied. The writer must step down.
    Fenced,
    /// The fence holds but a guard ([`TxnOp::Absent`], [`TxnOp::Sequence`])
    /// failed: nothing was applied. The writer reads again and decides anew.
    Conflict,
}

/// A key's value and the store position it was last written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersion {
    /// The value.
    pub value: Bytes,
    /// The position of the key's last write (etcd `mod_revision`, Consul
    /// `ModifyIndex`): what a [`TxnOp::Sequence`] compares.
    pub modified: Revision,
}

/// Several prefixes and keys read at one store position
/// ([`FencedWrite::read_consistent`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistentRead {
    /// The position of the read, where the store reports one (0 otherwise).
    pub revision: Revision,
    /// The entries under each prefix asked for, in the order asked; each
    /// entry's `revision` is its creation position, as
    /// [`KvWatch::list`](crate::KvWatch::list) gives it.
    pub prefixes: Vec<Vec<KvEntry>>,
    /// Each key asked for, in the order asked: `None` when it does not exist.
    pub keys: Vec<Option<KeyVersion>>,
}

/// Sessions and the keys bound to them.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Opens a session that lives while it is renewed within `ttl`.
    ///
    /// Consul: a session with `TTL`, `Behavior=delete` and the backend's
    /// lock-delay; etcd: a lease grant. The store may round `ttl` (Consul: at
    /// least 10 s).
    async fn open_session(&self, ttl: Duration) -> Result<SessionId, StoreError>;

    /// The shortest session TTL the store honours (Consul: 10 s; it would
    /// silently round a shorter one up, and a member that counts on the
    /// shorter one would be wrong about its lease). A member with a shorter
    /// TTL is refused at start. Default: no minimum.
    fn min_ttl(&self) -> Duration {
        Duration::ZERO
    }

    /// Renews `session`. `Ok(false)` when the session no longer exists
    /// (expired or closed): its keys are gone and a new session is needed.
    async fn renew_session(&self, session: &SessionId) -> Result<bool, StoreError>;

    /// Ends `session` at once: keys bound to it are deleted, an election it
    /// won is given up. Ending a session that is already gone is not an error.
    async fn close_session(&self, session: &SessionId) -> Result<(), StoreError>;

    /// Writes `key = value` bound to `session`, so that the key is deleted when
    /// the session ends. `Ok(false)` when the session is gone or another
    /// session holds the key.
    async fn put_bound(
        &self,
        session: &SessionId,
        key: &str,
        value: Bytes,
    ) -> Result<bool, StoreError>;
}

/// An election, won by at most one session at a time.
#[async_trait]
pub trait Election: Send + Sync + 'static {
    /// Tries once, without waiting, to lead `election` with `session`,
    /// recording `value` (the instance id) as the leader's value.
    ///
    /// Returns the fence when `session` leads (now, or already), `None` when
    /// someone else does (another member, or an outside holder such as a
    /// `consul lock` / `etcdctl elect`). Calling it again later is how a
    /// candidate finds out it leads once the holder is gone (etcd queues the
    /// candidate; Consul and memory try to take the free key).
    async fn try_lead(
        &self,
        election: &str,
        session: &SessionId,
        value: &str,
    ) -> Result<Option<Fence>, StoreError>;

    /// The value (instance id) the current leader of `election` recorded,
    /// or `None` when nobody leads. For status displays; an outside holder
    /// reports whatever value it wrote.
    async fn leader_value(&self, election: &str) -> Result<Option<String>, StoreError>;

    /// Gives up the leadership `fence` names, so that another candidate leads
    /// without waiting for a TTL. Resigning a leadership already lost is not
    /// an error.
    async fn resign(&self, fence: &Fence) -> Result<(), StoreError>;
}

/// How much one fenced transaction may carry, as the store counts it, so
/// that a writer cuts its work into transactions the store accepts.
///
/// A transaction is at most [`max_ops`](Self::max_ops) operations and at most
/// [`max_bytes`](Self::max_bytes) as [`op_bytes`](Self::op_bytes) counts
/// them (the fence's own share already taken off); no value may be longer
/// than [`max_value`](Self::max_value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    /// Operations per transaction, the fence not counted.
    pub max_ops: usize,
    /// Request bytes per transaction, the fence not counted.
    pub max_bytes: usize,
    /// The longest value the store keeps.
    pub max_value: usize,
    /// What each operation costs besides its key and its value.
    pub op_overhead: usize,
    /// Values travel base64-encoded (Consul's JSON), a third longer.
    pub base64_values: bool,
}

impl TxnLimits {
    /// Limits of `max_ops` operations and no byte limit.
    pub fn ops(max_ops: usize) -> Self {
        Self {
            max_ops,
            max_bytes: usize::MAX,
            max_value: usize::MAX,
            op_overhead: 0,
            base64_values: false,
        }
    }

    /// The bytes `op` takes in a transaction request.
    pub fn op_bytes(&self, op: &TxnOp) -> usize {
        let value = match op {
            TxnOp::Put { value, .. } | TxnOp::Sequence { value, .. } if self.base64_values => {
                value.len().div_ceil(3) * 4
            }
            TxnOp::Put { value, .. } | TxnOp::Sequence { value, .. } => value.len(),
            TxnOp::Delete { .. } | TxnOp::Absent { .. } => 0,
        };
        self.op_overhead
            .saturating_add(op.key().len())
            .saturating_add(value)
    }

    /// The bytes `ops` take together.
    pub fn bytes(&self, ops: &[TxnOp]) -> usize {
        ops.iter()
            .map(|op| self.op_bytes(op))
            .fold(0, usize::saturating_add)
    }

    /// Whether `ops` fit in one transaction.
    pub fn fit(&self, ops: &[TxnOp]) -> bool {
        ops.len() <= self.max_ops
            && self.bytes(ops) <= self.max_bytes
            && ops.iter().all(|op| match op {
                TxnOp::Put { value, .. } | TxnOp::Sequence { value, .. } => {
                    value.len() <= self.max_value
                }
                TxnOp::Delete { .. } | TxnOp::Absent { .. } => true,
            })
    }
}

/// Transactions applied only while a leadership holds.
#[async_trait]
pub trait FencedWrite: Send + Sync + 'static {
    /// The most operations one [`apply`](Self::apply) may carry, the fence not
    /// counted (Consul 1.8: 62 of its 64; etcd: `--max-txn-ops` less one). A
    /// [`TxnOp::Sequence`] counts as one.
    fn max_ops(&self) -> usize;

    /// Everything that bounds one [`apply`](Self::apply): operations, bytes,
    /// value length. Default: [`max_ops`](Self::max_ops) and no byte limit.
    fn limits(&self) -> TxnLimits {
        TxnLimits::ops(self.max_ops())
    }

    /// Applies `ops` atomically if and only if `fence` still holds and every
    /// guard among them ([`TxnOp::Absent`], [`TxnOp::Sequence`]) is met.
    ///
    /// An error means the outcome is unknown: the request may have been
    /// applied, may be applied **later** (a request the client gave up on can
    /// still reach the store, or still be committed by it: Consul applies a
    /// transaction whose HTTP request timed out, etcd commits a proposal that
    /// is already in its log after "request timed out"), or never. Sending
    /// the same operations again is therefore not safe on its own: the first
    /// attempt may land after the second, or after a later transaction built
    /// on a newer view, and undo it. What makes a late landing harmless is a
    /// [`TxnOp::Sequence`] guard: once any later transaction bumped the
    /// sequence key, the stale one can only fail. So after an error the
    /// writer reads the store again ([`read_consistent`](Self::read_consistent),
    /// which also gives the sequence key's position) and decides anew with a
    /// new expected index; a transaction still in flight then either landed
    /// before that read (and the read shows it) or can never apply.
    ///
    /// An error of the fence operations themselves that is not a lost
    /// leadership (Consul: an ACL token that may not read the leader key) is
    /// an error (e.g. [`StoreError::PermissionDenied`]), not
    /// [`TxnOutcome::Fenced`].
    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError>;

    /// Reads every key under each of `prefixes`, and each of `keys`, at one
    /// store position: one consistent snapshot (Consul: one read-only
    /// `/v1/txn`; etcd: one transaction of range requests; memory: under one
    /// lock). Cancel safe: it changes nothing.
    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError>;
}

/// Plain writes, for operators' tools (`coordinator work put`): not fenced,
/// not bound to a session.
#[async_trait]
pub trait KvWrite: Send + Sync + 'static {
    /// Writes `key = value`.
    async fn put_key(&self, key: &str, value: Bytes) -> Result<(), StoreError>;
    /// Deletes `key`; `Ok(false)` when it did not exist.
    async fn delete_key(&self, key: &str) -> Result<bool, StoreError>;
}

/// Splits `ops` into transactions of at most `max_ops` operations, every
/// delete before any put (revoke-first): the returned chunks are to be
/// applied in order, each after the previous one succeeded. Guards
/// ([`TxnOp::Absent`]) go with the puts.
pub fn revoke_first_chunks(ops: Vec<TxnOp>, max_ops: usize) -> Vec<Vec<TxnOp>> {
    let max_ops = max_ops.max(1);
    let (deletes, puts): (Vec<TxnOp>, Vec<TxnOp>) = ops
        .into_iter()
        .partition(|op| matches!(op, TxnOp::Delete { .. }));
    let mut chunks = Vec::new();
    for group in [deletes, puts] {
        let mut it = group.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(max_ops).collect());
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> TxnOp {
        TxnOp::Put {
            key: k.into(),
            value: Bytes::new(),
        }
    }
    fn del(k: &str) -> TxnOp {
        TxnOp::Delete { key: k.into() }
    }

    #[test]
    fn chunks_put_every_delete_before_any_put_and_respect_the_limit() {
        let ops = vec![put("a"), del("b"), put("c"), del("d"), del("e"), put("f")];
        let chunks = revoke_first_chunks(ops, 2);
        assert_eq!(
            chunks,
            vec![
                vec![del("b"), del("d")],
                vec![del("e")],
                vec![put("a"), put("c")],
                vec![put("f")],
            ]
        );
        assert!(revoke_first_chunks(Vec::new(), 63).is_empty());
        assert_eq!(revoke_first_chunks(vec![put("a")], 0), vec![vec![put("a")]]);
    }
}
