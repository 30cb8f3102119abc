//! The leader-half traits on etcd: sessions are leases, the election is etcd's
//! v3 election protocol, fenced writes are transactions comparing the leader
//! key's create revision.
//!
//! Every request goes through the backend's [`Pool`](crate::pool::Pool)
//! (failover, request timeout, authentication), like the worker's reads.
//!
//! - **Sessions**: a lease granted with the TTL in whole seconds, rounded up.
//!   etcd raises a TTL below its minimum (`ceil(1.5 × --election-timeout)`,
//!   2 s with the default 1 s election timeout) to that minimum. A
//!   [`SessionId`] is the lease id in lowercase hexadecimal, as `etcdctl lease
//!   list` and the election keys name it. Renewing sends one request on the
//!   lease's long-lived `LeaseKeepAlive` stream and reads one answer (see
//!   [`keepalive`](crate::keepalive)).
//! - **Election** (compatible with `etcdctl elect NAME PROPOSAL` and etcd's
//!   `concurrency` package): a candidate creates `NAME/<lease id in hex>`
//!   bound to its lease, if absent; the leader is the key under `NAME/` with
//!   the lowest create revision, and the term is that create revision. A
//!   candidate that is not first keeps its key (it is queued, as
//!   `Campaign` queues) and leads once every older key is gone.
//! - **Fenced writes**: one transaction whose only compare is
//!   `create_revision(leader key) == term`; a key deleted (resigned, lease
//!   ended) and created again has a new create revision, so a deposed leader
//!   can never match.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOpResponse, TxnResponse};
use worker_core::{
    ConsistentRead, Election, Fence, FencedWrite, KeyVersion, KvEntry, KvWrite, Membership,
    Revision, SessionId, StoreError, TxnLimits, TxnOp, TxnOutcome,
};

use crate::error::{is_missing_permission, naming, store_error};
use crate::leader::{current_leader, Terms};
use crate::watch::to_revision;
use crate::EtcdBackend;

/// Operations per fenced transaction: etcd's default `--max-txn-ops` (128)
/// less one, the slot the fence takes under the core's convention. (etcd
/// counts the compares and each branch separately, so this leaves room.)
pub const MAX_TXN_OPS: usize = 127;

/// The lease TTL asked of etcd for a session TTL: whole seconds, rounded up,
/// at least 1 (etcd itself raises it to its minimum, 2 s by default).
pub fn lease_ttl(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// The lease behind a session id (`None`: not one of ours, so no such lease).
fn lease_of(session: &SessionId) -> Option<i64> {
    i64::from_str_radix(&session.0, 16)
        .ok()
        .filter(|id| *id > 0)
}

/// The session id of a lease: its id in lowercase hex, as etcd's election
/// keys (`fmt.Sprintf("%s/%x", name, lease)`) and `etcdctl` print it.
fn session_of(lease: i64) -> SessionId {
    SessionId(format!("{lease:x}"))
}

/// This lease's candidate key in `election`: `<election>/<lease in hex>`.
fn candidate_key(election: &str, lease: i64) -> String {
    format!("{election}/{lease:x}")
}

/// Whether etcd answered "requested lease not found" (gRPC `NotFound`).
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound && s.message().contains("lease not found")
        }
        // etcd-client's `lease_keep_alive` turns an answer with TTL 0 (what
        // etcd sends for a lease that does not exist) into this error.
        etcd_client::Error::LeaseKeepAliveError(m) => m == "lease not found",
        _ => false,
    }
}

/// The term as etcd stores revisions.
fn revision_i64(term: u64) -> i64 {
    i64::try_from(term).unwrap_or(i64::MAX)
}

impl EtcdBackend {
    /// Runs `txn` through the pool; `Ok(None)` when etcd says a lease it names
    /// does not exist.
    async fn txn_unless_lease_gone(&self, txn: Txn) -> Result<Option<TxnResponse>, StoreError> {
        let (response, _) = self
            .pool
            .run(|mut client| {
                let txn = txn.clone();
                async move {
                    match client.txn(txn).await {
                        Ok(r) => Ok(Some(r)),
                        Err(e) if is_lease_not_found(&e) => Ok(None),
                        Err(e) => Err(store_error(e)),
                    }
                }
            })
            .await?;
        Ok(response)
    }

    /// The term ids of `election`: this backend's own (shared with its
    /// [`LeaderWait`](worker_core::LeaderWait)) when it is the backend's
    /// election, so that a fence reports the leader exactly as the
    /// observation does; fresh ones otherwise.
    fn with_terms<'a>(&'a self, prefix: &[u8], fresh: &'a Terms) -> &'a Terms {
        if prefix == &*self.election_prefix {
            self.election.terms()
        } else {
            fresh
        }
    }
}

#[async_trait]
impl Membership for EtcdBackend {
    /// A lease grant with `ttl` in whole seconds, rounded up (see
    /// [`lease_ttl`]; etcd raises it to its minimum). Cancel safe (a dropped
    /// call may leave a lease that expires by its TTL).
    async fn open_session(&self, ttl: Duration) -> Result<SessionId, StoreError> {
        let secs = lease_ttl(ttl);
        let (response, _) =
            self.pool
                .run(|mut client| async move {
                    client.lease_grant(secs, None).await.map_err(store_error)
                })
                .await?;
        if response.id() <= 0 {
            return Err(StoreError::protocol(format!(
                "etcd granted a lease with id {}",
                response.id()
            )));
        }
        Ok(session_of(response.id()))
    }

    /// One keep-alive request on the lease's `LeaseKeepAlive` stream (opened
    /// by the first renewal, kept open, replaced when it fails or its endpoint
    /// does) and its answer; `Ok(false)` when etcd answers TTL 0 (the lease
    /// does not exist). Each endpoint is tried once, within the request
    /// timeout each. Cancel safe.
    async fn renew_session(&self, session: &SessionId) -> Result<bool, StoreError> {
        let Some(lease) = lease_of(session) else {
            return Ok(false);
        };
        self.keep_alives.renew(&self.pool, lease).await
    }

    /// A lease revoke (etcd deletes the lease's keys, and with them its
    /// election candidacy); a lease that is already gone is not an error.
    /// Cancel safe.
    async fn close_session(&self, session: &SessionId) -> Result<(), StoreError> {
        let Some(lease) = lease_of(session) else {
            return Ok(());
        };
        self.keep_alives.forget(lease);
        self.pool
            .run(|mut client| async move {
                match client.lease_revoke(lease).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_lease_not_found(&e) => Ok(()),
                    Err(e) => Err(store_error(e)),
                }
            })
            .await
            .map_err(|e| {
                naming(e, || {
                    format!(
                        "write on the keys bound to lease {} (a lease revoke needs write on \
                         every key bound to it: member keys and election keys)",
                        session.0
                    )
                })
            })?;
        Ok(())
    }

    /// One transaction: if `key` does not exist, or is already bound to this
    /// lease, put it bound to the lease; otherwise nothing (`Ok(false)`). A
    /// lease that no longer exists gives `Ok(false)`. Cancel safe.
    async fn put_bound(
        &self,
        session: &SessionId,
        key: &str,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        let Some(lease) = lease_of(session) else {
            return Ok(false);
        };
        let put = || {
            etcd_client::TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        // The else branch is a nested transaction (etcd >= 3.3): one round trip.
        let ours = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([put()]);
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put()])
            .or_else([etcd_client::TxnOp::txn(ours)]);
        let Some(response) = self
            .txn_unless_lease_gone(txn)
            .await
            .map_err(|e| naming(e, || format!("write on the key {key:?}")))?
        else {
            return Ok(false);
        };
        if response.succeeded() {
            return Ok(true);
        }
        Ok(response
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, TxnOpResponse::Txn(inner) if inner.succeeded())))
    }
}

#[async_trait]
impl Election for EtcdBackend {
    /// Campaigns as etcd's `concurrency` package does: creates
    /// `<election>/<lease in hex>` with `value`, bound to the lease, if absent
    /// (a transaction on create revision 0), then reads the key with the
    /// lowest create revision under `<election>/`. Ours: the fence, with the
    /// leader as this backend's [`LeaderWait`](worker_core::LeaderWait)
    /// reports it. Another: `None`, and our key stays queued. A lease that is
    /// gone: `None`. Cancel safe (a dropped call may leave our key queued,
    /// which the next call finds).
    async fn try_lead(
        &self,
        election: &str,
        session: &SessionId,
        value: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let Some(lease) = lease_of(session) else {
            return Ok(None);
        };
        let key = candidate_key(election, lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([etcd_client::TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        if self
            .txn_unless_lease_gone(txn)
            .await
            .map_err(|e| naming(e, || format!("write on the key {key:?} (the election)")))?
            .is_none()
        {
            return Ok(None);
        }
        let prefix = format!("{election}/");
        let fresh = Terms::default();
        let terms = self.with_terms(prefix.as_bytes(), &fresh);
        let (leader, _) = current_leader(&self.pool, prefix.as_bytes(), terms).await?;
        Ok(match leader {
            Some(((leader_key, _), leader)) if leader_key == key.as_bytes() => {
                let revision = leader.term;
                Some(Fence::new(session.clone(), key, leader, revision))
            }
            _ => None,
        })
    }

    /// The value of the key with the lowest create revision under
    /// `<election>/` (an outside campaigner's proposal as it is now). Cancel
    /// safe.
    async fn leader_value(&self, election: &str) -> Result<Option<String>, StoreError> {
        let prefix = format!("{election}/");
        let (leader, _) = current_leader(&self.pool, prefix.as_bytes(), &Terms::default()).await?;
        Ok(leader.map(|(_, leader)| leader.id))
    }

    /// Deletes the fence's key if it still has the fence's create revision
    /// (a transaction, as etcd's `Resign`); nothing when it is gone. The lease
    /// is kept (the member's key stays). Cancel safe.
    async fn resign(&self, fence: &Fence) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                fence.key(),
                CompareOp::Equal,
                revision_i64(fence.revision()),
            )])
            .and_then([etcd_client::TxnOp::delete(fence.key(), None)]);
        self.txn_unless_lease_gone(txn).await.map_err(|e| {
            naming(e, || {
                format!("write on the key {:?} (the election)", fence.key())
            })
        })?;
        Ok(())
    }
}

/// What a fenced transaction costs besides its operations (the fence's
/// compare, the guards' envelope): kept free of the request limit.
const TXN_RESERVE: usize = 1024;
/// What one operation costs besides its key and value (protobuf tags and
/// lengths, a guard's compare), with room to spare.
const OP_OVERHEAD: usize = 32;

/// The limits of a fenced transaction on a server with `--max-request-bytes`
/// `max_request_bytes` and `--max-txn-ops` `max_txn_ops`.
pub(crate) fn txn_limits(max_request_bytes: usize, max_txn_ops: usize) -> TxnLimits {
    TxnLimits {
        // One is left for the inner transaction that holds guarded writes.
        max_ops: max_txn_ops.saturating_sub(1).max(3),
        max_bytes: max_request_bytes.saturating_sub(TXN_RESERVE),
        max_value: max_request_bytes.saturating_sub(TXN_RESERVE),
        op_overhead: OP_OVERHEAD,
        base64_values: false,
    }
}

impl EtcdBackend {
    /// Sends `txn` through the pool; the answer and the revision of its
    /// header.
    async fn run_txn(&self, txn: &Txn) -> Result<(TxnResponse, Revision), StoreError> {
        let (response, _) = self
            .pool
            .run(|client| {
                let txn = txn.clone();
                // The leader's consistent read returns every assignment in
                // one answer: past etcd-client's 4 MiB default at about
                // 50,000 assignments.
                async move {
                    client
                        .kv_client()
                        .max_decoding_message_size(crate::MAX_MESSAGE)
                        .txn(txn)
                        .await
                        .map_err(store_error)
                }
            })
            .await?;
        let revision = response
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| StoreError::protocol("etcd answered a txn without a header"))?;
        Ok((response, to_revision(revision)))
    }

    /// `e` (a transaction refused for a missing permission, which etcd does
    /// not name) with the reads (`(key, is_prefix)`) and writes of that
    /// transaction the user may not do named: each is tried alone, a read as
    /// a one-key range read, a write inside a transaction whose guard never
    /// holds (etcd checks the permissions of both branches, and writes
    /// nothing). Writes are tried once per parent (`a/b/` for `a/b/c`): roles
    /// grant prefixes. Only on this error path; nothing is written.
    async fn name_refused(
        &self,
        e: StoreError,
        reads: &[(&str, bool)],
        writes: &[&str],
    ) -> StoreError {
        let parent = |key: &str| {
            key.rfind('/')
                .map_or(String::new(), |i| key[..=i].to_owned())
        };
        let mut refused = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for &(key, prefix) in reads {
            if !seen.insert(("read", key.to_owned())) {
                continue;
            }
            let options = GetOptions::new().with_keys_only().with_limit(1);
            let options = if prefix {
                options.with_prefix()
            } else {
                options
            };
            let probe = self
                .pool
                .run(|mut client| {
                    let options = options.clone();
                    async move { client.get(key, Some(options)).await.map_err(store_error) }
                })
                .await;
            if probe.as_ref().is_err_and(is_missing_permission) {
                refused.push(if prefix {
                    format!("read on the prefix {key:?}")
                } else {
                    format!("read on the key {key:?}")
                });
            }
        }
        for &key in writes {
            if !seen.insert(("write", parent(key))) {
                continue;
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Less, 0)])
                .and_then([etcd_client::TxnOp::put(key, "", None)]);
            if self
                .run_txn(&txn)
                .await
                .as_ref()
                .is_err_and(is_missing_permission)
            {
                refused.push(format!("write on the key {key:?}"));
            }
        }
        if refused.is_empty() {
            let all: Vec<String> = reads
                .iter()
                .map(|(k, _)| *k)
                .chain(writes.iter().copied())
                .map(|k| format!("{k:?}"))
                .collect();
            let more = all.len().saturating_sub(6);
            refused.push(format!(
                "one of the transaction's permissions (it reads and writes {}{})",
                all[..all.len().min(6)].join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        naming(e, || refused.join(", and "))
    }
}

#[async_trait]
impl FencedWrite for EtcdBackend {
    /// `--max-txn-ops` less one (127 by default).
    fn max_ops(&self) -> usize {
        self.limits.max_ops
    }

    /// `--max-txn-ops` less one; `--max-request-bytes` less a reserve for
    /// the fence.
    fn limits(&self) -> TxnLimits {
        self.limits
    }

    /// One transaction: `create_revision(fence.key()) == fence.term` then the
    /// puts and deletes, else nothing ([`TxnOutcome::Fenced`]). The guards
    /// ([`TxnOp::Absent`]: `version == 0`; [`TxnOp::Sequence`]:
    /// `mod_revision == index`, and a put of the key) go in an inner
    /// transaction, so that a failed guard ([`TxnOutcome::Conflict`]) is told
    /// from a lost fence. Applied: the revision of the answer's header, which
    /// is the `mod_revision` of every key the transaction wrote (the
    /// sequence key's included). More than [`MAX_TXN_OPS`] operations
    /// is refused before sending. Not cancel safe in the sense that a dropped
    /// call may or may not have been applied (as for any error).
    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        if ops.len() > self.limits.max_ops {
            return Err(StoreError::protocol(format!(
                "a fenced transaction of {} operations exceeds etcd's limit of {}",
                ops.len(),
                self.limits.max_ops
            )));
        }
        let then: Vec<etcd_client::TxnOp> = ops
            .iter()
            .filter_map(|op| match op {
                TxnOp::Put { key, value } | TxnOp::Sequence { key, value, .. } => {
                    Some(etcd_client::TxnOp::put(key.as_str(), value.to_vec(), None))
                }
                TxnOp::Delete { key } => Some(etcd_client::TxnOp::delete(key.as_str(), None)),
                TxnOp::Absent { .. } => None,
            })
            .collect();
        let fence_compare = Compare::create_revision(
            fence.key(),
            CompareOp::Equal,
            revision_i64(fence.revision()),
        );
        let guards: Vec<Compare> = ops
            .iter()
            .filter_map(|op| match op {
                TxnOp::Absent { key } => Some(Compare::version(key.as_str(), CompareOp::Equal, 0)),
                TxnOp::Sequence { key, index, .. } => Some(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision_i64(*index),
                )),
                // No wildcard: a guard added to `TxnOp` must be translated here.
                TxnOp::Put { .. } | TxnOp::Delete { .. } => None,
            })
            .collect();
        // Guards go in an inner transaction, so that the answer tells a lost
        // fence (outer `succeeded` false) from a failed guard (inner false).
        let guarded = !guards.is_empty();
        let txn = if guarded {
            Txn::new()
                .when([fence_compare])
                .and_then([etcd_client::TxnOp::txn(
                    Txn::new().when(guards).and_then(then),
                )])
        } else {
            Txn::new().when([fence_compare]).and_then(then)
        };
        let (response, revision) = match self.run_txn(&txn).await {
            Err(e) if is_missing_permission(&e) => {
                let mut reads = vec![(fence.key(), false)];
                let mut writes = Vec::new();
                for op in ops {
                    match op {
                        TxnOp::Absent { key } => reads.push((key.as_str(), false)),
                        TxnOp::Sequence { key, .. } => {
                            reads.push((key.as_str(), false));
                            writes.push(key.as_str());
                        }
                        TxnOp::Put { key, .. } | TxnOp::Delete { key } => writes.push(key.as_str()),
                    }
                }
                return Err(self.name_refused(e, &reads, &writes).await);
            }
            result => result?,
        };
        if !response.succeeded() {
            return Ok(TxnOutcome::Fenced);
        }
        if guarded {
            let inner = response.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Txn(t) => Some(t.succeeded()),
                _ => None,
            });
            if inner != Some(true) {
                return Ok(TxnOutcome::Conflict);
            }
        }
        Ok(TxnOutcome::Applied { revision })
    }

    /// One transaction without compares whose operations are a range read
    /// per prefix and a read per key: etcd serves them all at the header's
    /// revision. Cancel safe.
    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError> {
        let reads: Vec<etcd_client::TxnOp> = prefixes
            .iter()
            .map(|p| etcd_client::TxnOp::get(*p, Some(GetOptions::new().with_prefix())))
            .chain(keys.iter().map(|k| etcd_client::TxnOp::get(*k, None)))
            .collect();
        let (response, revision) = match self.run_txn(&Txn::new().and_then(reads)).await {
            Err(e) if is_missing_permission(&e) => {
                let reads: Vec<(&str, bool)> = prefixes
                    .iter()
                    .map(|p| (*p, true))
                    .chain(keys.iter().map(|k| (*k, false)))
                    .collect();
                return Err(self.name_refused(e, &reads, &[]).await);
            }
            result => result?,
        };
        let mut gets = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => Ok(g),
            _ => Err(StoreError::protocol(
                "etcd answered a read with another operation",
            )),
        });
        let mut read = ConsistentRead {
            revision,
            ..ConsistentRead::default()
        };
        for _ in prefixes {
            let get = gets
                .next()
                .ok_or_else(|| StoreError::protocol("etcd answered fewer reads than asked"))??;
            read.prefixes.push(
                get.kvs()
                    .iter()
                    .map(|kv| {
                        KvEntry::at(
                            kv.key(),
                            kv.value().to_vec(),
                            to_revision(kv.create_revision()),
                        )
                    })
                    .collect(),
            );
        }
        for _ in keys {
            let get = gets
                .next()
                .ok_or_else(|| StoreError::protocol("etcd answered fewer reads than asked"))??;
            read.keys.push(get.kvs().first().map(|kv| KeyVersion {
                value: kv.value().to_vec().into(),
                modified: to_revision(kv.mod_revision()),
            }));
        }
        Ok(read)
    }
}

#[async_trait]
impl KvWrite for EtcdBackend {
    /// A plain put (no lease). Cancel safe.
    async fn put_key(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        self.pool
            .run(|mut client| {
                let value = value.to_vec();
                async move {
                    client
                        .put(key, value, None)
                        .await
                        .map(|_| ())
                        .map_err(store_error)
                }
            })
            .await
            .map_err(|e| naming(e, || format!("write on the key {key:?}")))?;
        Ok(())
    }

    /// A plain delete; `Ok(false)` when the key did not exist. Cancel safe.
    async fn delete_key(&self, key: &str) -> Result<bool, StoreError> {
        let (deleted, _) = self
            .pool
            .run(|mut client| async move {
                client
                    .delete(key, None)
                    .await
                    .map(|r| r.deleted() > 0)
                    .map_err(store_error)
            })
            .await
            .map_err(|e| naming(e, || format!("write on the key {key:?}")))?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_ttl(Duration::from_secs(3)), 3);
        assert_eq!(lease_ttl(Duration::from_millis(2_001)), 3);
        assert_eq!(lease_ttl(Duration::from_millis(300)), 1);
        assert_eq!(lease_ttl(Duration::ZERO), 1);
    }

    #[test]
    fn sessions_and_candidate_keys_use_lowercase_hex() {
        let lease = 0x694d_77aa_9e38_260f;
        assert_eq!(session_of(lease).0, "694d77aa9e38260f");
        assert_eq!(lease_of(&session_of(lease)), Some(lease));
        assert_eq!(candidate_key("e/leader", 0xab), "e/leader/ab");
        assert_eq!(lease_of(&SessionId("mem-1".into())), None);
        assert_eq!(lease_of(&SessionId("0".into())), None);
    }
}
