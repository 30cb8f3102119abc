//! The store's transaction limits: what one transaction of the plan may
//! carry, the items refused because their value cannot be assigned within
//! the limits ([`refusal`]), and filling a transaction ([`fits`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use std::time::Instant;
use worker_core::{Envelope, TxnLimits, TxnOp, WorkId, ENVELOPE_MAGIC, MAX_INSTANCE_ID_LEN};

use super::{Action, LeaderMachine, Source};
use crate::layout::{BadKey, Layout};

impl LeaderMachine {
    /// Cuts transactions to `limits` (operations, bytes, value length), the
    /// store's ([`FencedWrite::limits`](worker_core::FencedWrite::limits)).
    #[must_use]
    pub fn with_limits(mut self, limits: TxnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// What the plan's operations of one transaction may take: the store's
    /// limits less the sequence check's share, and at least 3 operations (a
    /// move's guard, record and assignment).
    pub(super) fn plan_limits(&self) -> TxnLimits {
        let sequence = self.sequence_op();
        TxnLimits {
            max_ops: self
                .limits
                .max_ops
                .saturating_sub(usize::from(sequence.is_some()))
                .max(3),
            max_bytes: self
                .limits
                .max_bytes
                .saturating_sub(sequence.map_or(0, |op| self.limits.op_bytes(&op))),
            ..self.limits
        }
    }

    /// The sequence check each transaction carries (with the value this
    /// leader writes), unless switched off (simulator only).
    fn sequence_op(&self) -> Option<TxnOp> {
        self.sequence_check.then(|| TxnOp::Sequence {
            key: self.layout.sequence.clone(),
            index: self.sequence,
            value: self.sequence_bytes(),
        })
    }

    /// The sequence key's value for the next transaction: the driver's
    /// value with the position the transaction expects (`"after":N`).
    /// Every transaction so writes a value the key does not hold: Consul
    /// keeps a key's `ModifyIndex` when a write leaves its value as it was,
    /// and the check would then not move (a late transaction of the term
    /// would pass it). `SEQUENCE_VALUE_MAX` leaves room for it.
    pub(super) fn sequence_bytes(&self) -> Bytes {
        self.sequence_bytes_after(self.sequence)
    }

    /// [`sequence_bytes`](Self::sequence_bytes) for the position `after`.
    fn sequence_bytes_after(&self, after: u64) -> Bytes {
        if !self.sequence_moves {
            return self.sequence_value.clone();
        }
        let base = &self.sequence_value[..];
        let text = if base.is_empty() || base == b"{}" {
            format!("{{\"after\":{after}}}")
        } else if let Some(head) = base.strip_suffix(b"}") {
            format!("{},\"after\":{after}}}", String::from_utf8_lossy(head))
        } else {
            format!("{} after {after}", String::from_utf8_lossy(base))
        };
        Bytes::from(text)
    }

    /// Items refused because their value cannot be assigned within the
    /// store's limits, with the bytes their assignment would take.
    pub fn refused(&self) -> &BTreeMap<WorkId, usize> {
        &self.refused
    }

    /// The bytes the largest transaction that assigns `work` with `value`
    /// takes (a guard on a member key, the handoff record's delete, the
    /// assignment), with member ids of the longest length allowed; `None`
    /// when it fits within the limits.
    pub(super) fn refusal(&self, work: &str, value: &Bytes) -> Option<usize> {
        // Sized with the longest position the sequence value can name, so
        // that an item is not refused or taken back as the position grows
        // a digit.
        let sequence = self.sequence_check.then(|| TxnOp::Sequence {
            key: self.layout.sequence.clone(),
            index: 0,
            value: self.sequence_bytes_after(u64::MAX),
        });
        refusal_with(&self.layout, &self.limits, sequence.as_ref(), work, value)
    }

    /// The items plans use: those whose value fits; a refused one only while
    /// it is assigned, with the value it has.
    pub(super) fn refresh_items(&mut self, now: Instant) {
        let Some(raw) = &self.raw_items else {
            return;
        };
        let mut items = BTreeMap::new();
        let mut refused = BTreeMap::new();
        let mut kept = BTreeMap::new();
        let mut report = Vec::new();
        let mut replicas = BTreeMap::new();
        let mut bad = BTreeSet::new();
        for (work, raw_value) in raw {
            let (value, wanted) = match item_payload(raw_value) {
                Ok((value, wanted)) => (value, wanted),
                Err(reason) => {
                    let key = self.layout.work_key(work).into_bytes();
                    if !self
                        .reported
                        .get(&Source::Items)
                        .is_some_and(|r| r.contains(&key))
                    {
                        report.push(Action::BadKey {
                            key: String::from_utf8_lossy(&key).into_owned(),
                            reason: BadKey::BadEnvelope(reason),
                        });
                    }
                    bad.insert(key);
                    continue;
                }
            };
            if let Some(n) = wanted {
                replicas.insert(work.clone(), n);
            }
            // With secondaries, the largest value written is a secondary's.
            let largest = if wanted.unwrap_or(self.timing.replicas) > 1 {
                Envelope::secondary(&value)
            } else {
                value.clone()
            };
            let Some(bytes) = self.refusal(work, &largest) else {
                items.insert(work.clone(), value);
                continue;
            };
            if self.refused.get(work) != Some(&bytes) {
                report.push(Action::Refused {
                    work: work.to_string(),
                    bytes,
                    limits: self.limits,
                });
            }
            refused.insert(work.clone(), bytes);
            let assigned = self.kept.get(work).cloned().or_else(|| {
                let first = self.idx.owners.get(work)?.first()?;
                let v = self.current.as_ref()?.get(&(first.clone(), work.clone()))?;
                Some(v.slice_ref(Envelope::role_of(v).1))
            });
            if let Some(v) = assigned.filter(|v| self.refusal(work, v).is_none()) {
                items.insert(work.clone(), v.clone());
                kept.insert(work.clone(), v);
            }
        }
        self.out.extend(report);
        // Bad values are reported once while they stay (with the bad keys
        // of the items picture).
        self.reported.entry(Source::Items).or_default().extend(bad);
        if self.item_replicas != replicas {
            self.item_replicas = replicas;
            self.changed(now);
        }
        self.refused = refused;
        self.kept = kept;
        if self.items.as_ref() != Some(&items) {
            self.items = Some(items);
            self.reindex();
            self.changed(now);
        }
    }
}

/// A work item's value without its envelope, with the replica count the
/// envelope asks for; `Err` when the envelope does not parse, names a role,
/// or the bytes left would themselves read as an envelope (a primary's key
/// holds them as they are).
fn item_payload(raw: &Bytes) -> Result<(Bytes, Option<u32>), String> {
    let (env, payload) = Envelope::split(raw).map_err(|e| e.to_string())?;
    if env.role.is_some() {
        return Err("a work item's envelope names a role (only assignment keys carry one)".into());
    }
    if payload.starts_with(ENVELOPE_MAGIC) {
        return Err("the bytes after the envelope begin with another envelope".into());
    }
    Ok((raw.slice_ref(payload), env.replicas))
}

/// Whether `ops` plus `add` fit in one transaction within `limits`, `used`
/// being the bytes of `ops`; when they do, `add`'s bytes are counted in
/// `used` (the caller adds `add`). The running count keeps filling a
/// transaction linear: summing `ops` again for each addition made it
/// quadratic in the operations per transaction.
pub(super) fn fits(limits: &TxnLimits, used: &mut usize, ops: &[TxnOp], add: &[TxnOp]) -> bool {
    let bytes = limits.bytes(add);
    let fit =
        ops.len() + add.len() <= limits.max_ops && used.saturating_add(bytes) <= limits.max_bytes;
    if fit {
        *used += bytes;
    }
    fit
}

/// A bound on the value a leader writes to the sequence key (its id, term
/// and the position the transaction expects as JSON: an instance id of at
/// most 128 bytes, about 200 bytes in all), which
/// [`refusal`] keeps free in each transaction.
pub const SEQUENCE_VALUE_MAX: usize = 300;

/// Whether a leader refuses work item `work` with `value` on a store with
/// `limits`: `Some(bytes)` when the largest transaction that assigns it (the
/// sequence check with a value of [`SEQUENCE_VALUE_MAX`] bytes, a guard on
/// a member key, the handoff record's delete, the assignment, with member
/// ids of the longest length allowed) takes `bytes` and does not fit
/// `limits`; `None` when it fits. `coordinator status` shows the items it
/// refuses.
pub fn refusal(layout: &Layout, limits: &TxnLimits, work: &str, value: &Bytes) -> Option<usize> {
    let sequence = TxnOp::Sequence {
        key: layout.sequence.clone(),
        index: 0,
        value: Bytes::from(vec![b'x'; SEQUENCE_VALUE_MAX]),
    };
    refusal_with(layout, limits, Some(&sequence), work, value)
}

/// [`refusal`] with the sequence check a leader actually sends (or none).
fn refusal_with(
    layout: &Layout,
    limits: &TxnLimits,
    sequence: Option<&TxnOp>,
    work: &str,
    value: &Bytes,
) -> Option<usize> {
    let id = "m".repeat(MAX_INSTANCE_ID_LEN);
    let assign = [
        TxnOp::Absent {
            key: layout.member_key(&id),
        },
        TxnOp::Delete {
            key: layout.handoff_key(work),
        },
        TxnOp::Put {
            key: layout.assignment_key(&id, work),
            value: value.clone(),
        },
    ];
    let worst: Vec<TxnOp> = sequence.into_iter().cloned().chain(assign).collect();
    (!limits.fit(&worst)).then(|| limits.bytes(&worst))
}
