//! Fenced transactions ([`FencedWrite`]): the `/v1/txn` encoding of each
//! operation behind the fence's `check-session` and `check-index`, the
//! limits of one transaction, the naming of what a refused operation needed,
//! and the consistent read of several prefixes and keys at one position.

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tracing::debug;
use worker_core::{
    ConsistentRead, Fence, FencedWrite, KeyVersion, KvEntry, MissingPermission, Revision,
    StoreError, TxnLimits, TxnOp, TxnOutcome,
};

use super::request::send;
use crate::error::{ProtocolError, ACL_HOLDER};
use crate::http::Http;
use crate::ConsulBackend;

/// Operations in one Consul 1.8 transaction (`/v1/txn`), the fence included.
pub const MAX_TXN_OPS: usize = 64;
/// Operations of the fence in each transaction: `check-session` and
/// `check-index` on the leader key.
pub const FENCE_OPS: usize = 2;

/// What a rolled-back transaction operation refused by the ACLs needed:
/// the fence's two checks (indexes 0 and 1) read the fence's key, then
/// `ops[i - FENCE_OPS]`.
fn op_needs(fence_key: &str, ops: &[TxnOp], index: usize) -> String {
    match index.checked_sub(FENCE_OPS).map(|i| ops.get(i)) {
        None => format!("key read on {fence_key:?} (the leader key)"),
        Some(Some(TxnOp::Absent { key })) => format!("key read on {key:?}"),
        Some(Some(
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Sequence { key, .. },
        )) => format!("key write on {key:?}"),
        Some(None) => format!("the permission of transaction operation {index}"),
    }
}

/// One error of a failed transaction.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TxnError {
    /// The index of the operation that failed.
    pub(super) op_index: usize,
    /// Consul's message.
    pub(super) what: String,
}

/// A transaction's answer (both the 200 and the 409 shapes).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct TxnAnswer {
    /// The results, one per operation (200).
    results: Option<Vec<TxnResult>>,
    /// The errors (409).
    errors: Option<Vec<TxnError>>,
}

/// One result of a transaction.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TxnResult {
    /// The entry a KV operation read or wrote.
    #[serde(rename = "KV")]
    kv: Option<TxnKv>,
}

/// An entry in a transaction's result.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TxnKv {
    /// The key.
    key: String,
    /// The value, base64-encoded (none for a write).
    value: Option<String>,
    /// `CreateIndex`.
    create_index: u64,
    /// `ModifyIndex`.
    modify_index: u64,
}

impl TxnKv {
    /// The value, decoded.
    fn value(&self) -> Result<Bytes, StoreError> {
        match &self.value {
            None => Ok(Bytes::new()),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(Bytes::from)
                .map_err(StoreError::protocol),
        }
    }
}

/// Whether a rolled-back operation's error is Consul refusing the token
/// (`Permission denied`, `ACL not found`): not a lost leadership, nor a
/// failed guard, but an error to report.
pub(super) fn denied(error: &TxnError) -> bool {
    let what = error.what.to_ascii_lowercase();
    what.contains("permission denied") || what.contains("acl not found")
}

/// The JSON operation of `op` in a `/v1/txn` body.
fn txn_op(op: &TxnOp) -> serde_json::Value {
    match op {
        TxnOp::Put { key, value } => json!({"KV": {
            "Verb": "set",
            "Key": key,
            "Value": base64::engine::general_purpose::STANDARD.encode(value),
        }}),
        TxnOp::Delete { key } => json!({"KV": {"Verb": "delete", "Key": key}}),
        TxnOp::Absent { key } => json!({"KV": {"Verb": "check-not-exists", "Key": key}}),
        // `cas` with index 0 creates the key only if it does not exist.
        TxnOp::Sequence { key, index, value } => json!({"KV": {
            "Verb": "cas",
            "Key": key,
            "Index": index,
            "Value": base64::engine::general_purpose::STANDARD.encode(value),
        }}),
    }
}

/// Sends a transaction; `Ok(Err(errors))` when Consul rolled it back (409).
pub(super) async fn txn(
    http: &Http,
    ops: &[serde_json::Value],
) -> Result<Result<(Option<Revision>, TxnAnswer), Vec<TxnError>>, StoreError> {
    let body = serde_json::to_vec(ops).map_err(StoreError::protocol)?;
    let answer = send(http, http::Method::PUT, &["txn"], "", &[], body, |s, _| {
        s == 409
    })
    .await?;
    let decoded: TxnAnswer = serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
    if answer.status == 409 {
        return Ok(Err(decoded.errors.unwrap_or_default()));
    }
    Ok(Ok((answer.index, decoded)))
}

/// What a fenced transaction costs besides its operations (the fence's
/// operations, the JSON array): kept free of the request limit.
const TXN_RESERVE: usize = 1024;
/// What one operation costs besides its key and base64 value:
/// `{"KV":{"Verb":"delete","Key":"","Value":""}},` and room for escapes.
const OP_OVERHEAD: usize = 64;

/// The limits of a fenced transaction on an agent whose request limit is
/// `txn_max_bytes` and whose value limit is `value_max_bytes`.
pub(crate) fn txn_limits(txn_max_bytes: usize, value_max_bytes: usize) -> TxnLimits {
    TxnLimits {
        max_ops: MAX_TXN_OPS - FENCE_OPS,
        max_bytes: txn_max_bytes.saturating_sub(TXN_RESERVE),
        max_value: value_max_bytes,
        op_overhead: OP_OVERHEAD,
        base64_values: true,
    }
}

#[async_trait]
impl FencedWrite for ConsulBackend {
    /// 62: Consul 1.8 takes 64 operations per transaction, two of them the
    /// fence.
    fn max_ops(&self) -> usize {
        MAX_TXN_OPS - FENCE_OPS
    }

    /// 62 operations, the agent's request limit less a reserve for the fence
    /// (values count base64-encoded, as they travel), its value limit.
    fn limits(&self) -> TxnLimits {
        self.inner.limits
    }

    /// `PUT /v1/txn`: a `check-session` of the fence's key and session and a
    /// `check-index` of its `ModifyIndex` first, then a `set`, `delete`,
    /// `check-not-exists` or `cas` ([`TxnOp::Sequence`]) per operation.
    /// Consul applies all of it or nothing. A rollback caused by the fence
    /// (another session holds the key, or none does) is
    /// [`TxnOutcome::Fenced`]; one caused by a guard (`check-not-exists`,
    /// `cas`) [`TxnOutcome::Conflict`]; a refused token (`Permission
    /// denied`, also on the fence's operations) is
    /// [`StoreError::PermissionDenied`], anything else a protocol error.
    ///
    /// The revision is the `ModifyIndex` the results report for the
    /// sequence key when the transaction has a [`TxnOp::Sequence`] (every
    /// key a transaction writes gets its Raft index), else the answer's
    /// `X-Consul-Index`, else the highest `ModifyIndex` among the results.
    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        if ops.len() > self.max_ops() {
            return Err(StoreError::protocol(ProtocolError(format!(
                "{} operations in one transaction; Consul takes at most {} besides the fence",
                ops.len(),
                self.max_ops()
            ))));
        }
        let mut body = Vec::with_capacity(ops.len() + 1);
        body.push(json!({"KV": {
            "Verb": "check-session",
            "Key": fence.key(),
            "Session": fence.session().0,
        }}));
        // The key unchanged since this leadership began: a session that
        // resigned and won the key again has a newer ModifyIndex.
        body.push(json!({"KV": {
            "Verb": "check-index",
            "Key": fence.key(),
            "Index": fence.revision(),
        }}));
        body.extend(ops.iter().map(txn_op));
        match txn(&self.inner.http, &body).await? {
            Ok((index, answer)) => {
                let results = answer.results.unwrap_or_default();
                let kvs = || results.iter().filter_map(|r| r.kv.as_ref());
                let highest = kvs().map(|kv| kv.modify_index).max().unwrap_or(0);
                let sequence = ops.iter().find_map(|op| match op {
                    TxnOp::Sequence { key, .. } => Some(key),
                    _ => None,
                });
                let revision = match sequence {
                    Some(key) => kvs()
                        .find(|kv| kv.key == *key)
                        .map(|kv| kv.modify_index)
                        .ok_or_else(|| {
                            StoreError::protocol(ProtocolError(
                                "the transaction's answer has no result for the sequence key"
                                    .into(),
                            ))
                        })?,
                    None => index.unwrap_or(highest),
                };
                Ok(TxnOutcome::Applied { revision })
            }
            Err(errors) if errors.iter().any(denied) => {
                let mut lacks: Vec<String> = errors
                    .iter()
                    .filter(|e| denied(e))
                    .map(|e| op_needs(fence.key(), ops, e.op_index))
                    .collect();
                lacks.dedup();
                Err(StoreError::PermissionDenied(Box::new(MissingPermission {
                    holder: ACL_HOLDER,
                    needs: lacks.join(", and "),
                    source: Box::new(ProtocolError(format!(
                        "transaction refused: {}",
                        errors
                            .iter()
                            .map(|e| format!("op {}: {}", e.op_index, e.what))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))),
                })))
            }
            Err(errors) if !errors.is_empty() && errors.iter().any(|e| e.op_index < FENCE_OPS) => {
                debug!(key = %fence.key(), error = %errors[0].what, "fenced write rejected");
                Ok(TxnOutcome::Fenced)
            }
            Err(errors)
                if !errors.is_empty()
                    && errors.iter().all(|e| {
                        matches!(
                            ops.get(e.op_index - FENCE_OPS),
                            Some(TxnOp::Absent { .. } | TxnOp::Sequence { .. })
                        )
                    }) =>
            {
                debug!(error = %errors[0].what, "fenced write: a guard failed");
                Ok(TxnOutcome::Conflict)
            }
            Err(errors) => Err(StoreError::protocol(ProtocolError(format!(
                "transaction rolled back: {}",
                errors
                    .iter()
                    .map(|e| format!("op {}: {}", e.op_index, e.what))
                    .collect::<Vec<_>>()
                    .join("; ")
            )))),
        }
    }

    /// One read-only `PUT /v1/txn?consistent` of a `get-tree` per prefix and
    /// per key (a `get` would roll the read back for a missing key; the
    /// results of a key's `get-tree` are filtered to the key itself).
    /// Consul serves a read-only transaction from one snapshot of its state,
    /// so everything is read at one position. The revision is the highest
    /// `ModifyIndex` read (Consul sends no index for such a read).
    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError> {
        let body: Vec<serde_json::Value> = prefixes
            .iter()
            .chain(keys)
            .map(|k| json!({"KV": {"Verb": "get-tree", "Key": k}}))
            .collect();
        let body = serde_json::to_vec(&body).map_err(StoreError::protocol)?;
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["txn"],
            "",
            &[("consistent", "")],
            body,
            |_, _| false,
        )
        .await?;
        let decoded: TxnAnswer =
            serde_json::from_slice(&answer.body).map_err(StoreError::protocol)?;
        // By key: a key under several of the prefixes (or the keys) read
        // comes once per `get-tree` that found it.
        let kvs: std::collections::BTreeMap<String, TxnKv> = decoded
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        let mut read = ConsistentRead {
            revision: kvs.values().map(|kv| kv.modify_index).max().unwrap_or(0),
            ..ConsistentRead::default()
        };
        for prefix in prefixes {
            let mut entries = Vec::new();
            for kv in kvs.values().filter(|kv| kv.key.starts_with(prefix)) {
                entries.push(KvEntry::at(kv.key.as_bytes(), kv.value()?, kv.create_index));
            }
            read.prefixes.push(entries);
        }
        for key in keys {
            let found = kvs.get(*key);
            read.keys.push(match found {
                Some(kv) => Some(KeyVersion {
                    value: kv.value()?,
                    modified: kv.modify_index,
                }),
                None => None,
            });
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ops_encode_values_in_base64() {
        let op = txn_op(&TxnOp::Put {
            key: "a/b".into(),
            value: Bytes::from_static(b"hi"),
        });
        assert_eq!(op["KV"]["Verb"], "set");
        assert_eq!(op["KV"]["Value"], "aGk=");
        let op = txn_op(&TxnOp::Delete { key: "a/b".into() });
        assert_eq!(op["KV"]["Verb"], "delete");
    }
}
