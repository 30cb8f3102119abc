//! The bare loop: the leader's start-up transactions sent again by a plain
//! loop of `FencedWrite::apply` calls through the same backend and proxy,
//! for a rate to compare the leader's with.

use std::time::{Duration, Instant};

use leader_core::Layout;
use worker_core::{TxnOp, TxnOutcome};

use super::cluster::member_store;
use super::outcome::Rate;
use super::recording::Sent;
use crate::stores::Kind;

/// The bare loop's keys other than the assignments: the leader's with
/// `coordinator/` replaced by this (same length), so that its fence and
/// anything it deletes stay apart from the cluster's.
pub(super) const BARE_SEGMENT: &str = "benchbarekv/";

/// `key` moved out of the cluster's keys: its `coordinator/` segment
/// replaced by [`BARE_SEGMENT`].
fn bare_key(key: &str) -> String {
    key.replacen("coordinator/", BARE_SEGMENT, 1)
}

/// `value` changed, at the same length: its first byte replaced (an
/// identical put wakes no watcher on Consul, which skips writing an entry
/// equal to the one it holds).
fn changed_value(value: &bytes::Bytes) -> bytes::Bytes {
    let mut v = value.to_vec();
    match v.first_mut() {
        Some(b) => *b = if *b == b'~' { b'!' } else { b'~' },
        None => v.push(b'~'),
    }
    v.into()
}

/// What the bare loop writes for the leader's `op`. An assignment put goes
/// to the very key, with the value changed at the same length if `change`
/// (then restored by a second pass without it): every member's watch sees
/// the change and its worker settles and acknowledges it, as under the
/// leader: the same transactions, watched and answered the same. Anything
/// else goes under [`bare_key`].
pub(super) fn bare_op(layout: &Layout, op: &TxnOp, change: bool) -> TxnOp {
    match op {
        TxnOp::Put { key, value } if key.starts_with(&layout.assignments) => TxnOp::Put {
            key: key.clone(),
            value: if change {
                changed_value(value)
            } else {
                value.clone()
            },
        },
        TxnOp::Put { key, value } => TxnOp::Put {
            key: bare_key(key),
            value: value.clone(),
        },
        TxnOp::Delete { key } => TxnOp::Delete { key: bare_key(key) },
        TxnOp::Absent { key } => TxnOp::Absent { key: bare_key(key) },
        TxnOp::Sequence { key, index, value } => TxnOp::Sequence {
            key: bare_key(key),
            index: *index,
            value: value.clone(),
        },
    }
}

/// Sends `txns` (the leader's, keys moved by [`bare_key`]) one after the
/// other through a fresh backend on `endpoint`, fenced on an election of its
/// own, each with the sequence check at the position the previous one
/// returned: what the leader does, without the leader.
pub(super) async fn bare_loop(
    kind: Kind,
    endpoint: String,
    layout: &Layout,
    ttl: Duration,
    txns: &[Vec<TxnOp>],
    change: bool,
) -> Result<Rate, String> {
    let store = member_store(kind, endpoint, layout, None).await;
    let session = store
        .membership
        .open_session(ttl)
        .await
        .map_err(|e| format!("bare loop: session: {e}"))?;
    let fence = store
        .election
        .try_lead(&bare_key(&layout.leader), &session, "bench-bare-loop")
        .await
        .map_err(|e| format!("bare loop: election: {e}"))?
        .ok_or("bare loop: not leading its own election")?;
    let txns: Vec<Vec<TxnOp>> = txns
        .iter()
        .map(|ops| ops.iter().map(|op| bare_op(layout, op, change)).collect())
        .collect();
    let mut sequence = 0;
    let mut sent = Vec::with_capacity(txns.len());
    for mut ops in txns {
        for op in &mut ops {
            if let TxnOp::Sequence { index, .. } = op {
                *index = sequence;
            }
        }
        let started = Instant::now();
        let outcome = store.writer.apply(&fence, &ops).await;
        let ended = Instant::now();
        match outcome {
            Ok(TxnOutcome::Applied { revision }) => sequence = revision,
            other => return Err(format!("bare loop: {other:?}")),
        }
        sent.push(Sent {
            started,
            ended,
            ops,
            applied: true,
        });
    }
    let _ = store.membership.close_session(&session).await;
    Ok(Rate::of(&sent))
}
