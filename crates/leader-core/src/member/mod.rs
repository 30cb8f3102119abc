//! A full member: registers with a TTL, campaigns, leads while elected, and
//! runs the worker that follows its own assignments.
//!
//! The member task keeps three things going:
//! - **its session**: opened with the TTL, the member key written bound to
//!   it, renewed every TTL/3; when a renewal says the session is gone (or no
//!   renewal succeeded for a whole TTL) a new one is opened and the member key
//!   written again;
//! - **its candidacy**: it tries to lead whenever the observed leadership
//!   changes (the first observation included); while it leads, the leader
//!   loop runs, and it stops at once when the observation shows another term
//!   or no leader, when the session is lost, or when a write is fenced;
//! - **its worker** ([`worker_core::Worker`]), independent of the session.
//!
//! It also reports, in its member key, how far its application has applied
//! its assignments (`acked`, a store position), so that the leader moves an
//! item away from it only once the revoke is applied (the acknowledged
//! handoff). By default a settled change counts as applied once it is
//! published; with [`MemberConfig::manual_ack`] the application says so
//! itself with [`MemberHandle::ack`].
//!
//! [`MemberHandle::halt`] stops leading, resigns, halts the worker and
//! closes the session, so another member leads without waiting for a TTL.
//! [`MemberHandle::drain`] (or a drain request key, `coordinator drain ID`)
//! first marks the member draining, waits until the leader has moved all of
//! its items away through the handoff (or the drain timeout), then halts.
//!
//! The code: the store and the types the parts share here; `config.rs` the
//! member's settings; `handle.rs` spawning a member and the handle on it;
//! `task.rs` the member task that drives the session, the candidacy and the
//! leader loop.

mod config;
mod handle;
mod task;

use std::sync::Arc;

use worker_core::{Election, FencedWrite, KvWatch, KvWrite, LeaderWait, Membership, WorkId};

use crate::plan::MemberId;

pub use config::{MemberConfig, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MEMBER_LEADER_SETTLE, DEFAULT_TTL};
pub use handle::{Acker, Member, MemberHandle, MemberObserver};

/// The store, as the member half needs it: one value per trait, usually the
/// same backend behind each.
#[derive(Clone)]
pub struct MemberStore {
    /// Reads and watches prefixes.
    pub kv: Arc<dyn KvWatch>,
    /// Observes leadership.
    pub leader: Arc<dyn LeaderWait>,
    /// Sessions and bound keys.
    pub membership: Arc<dyn Membership>,
    /// The election.
    pub election: Arc<dyn Election>,
    /// Fenced transactions.
    pub writer: Arc<dyn FencedWrite>,
    /// Plain writes (operators' tools).
    pub kv_write: Arc<dyn KvWrite>,
}

impl MemberStore {
    /// Uses one backend value for every trait.
    pub fn from_backend<B>(backend: B) -> Self
    where
        B: KvWatch + LeaderWait + Membership + Election + FencedWrite + KvWrite + Clone,
    {
        Self {
            kv: Arc::new(backend.clone()),
            leader: Arc::new(backend.clone()),
            membership: Arc::new(backend.clone()),
            election: Arc::new(backend.clone()),
            writer: Arc::new(backend.clone()),
            kv_write: Arc::new(backend),
        }
    }
}

impl std::fmt::Debug for MemberStore {
    /// Names the type only: the trait objects say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberStore")
    }
}

/// What the member task is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Keep going.
    Running,
    /// Drain, then halt.
    Drain,
    /// Halt at once.
    Halt,
}

/// How a member left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Left {
    /// It left at once (halt), or was stopped before it could drain.
    Halted,
    /// It drained: it held nothing, acknowledged, then left.
    Drained,
    /// The drain timeout ran out first; it left holding what it still held.
    DrainTimedOut,
}

/// A move in flight as the leader sees it: an item revoked from `from` and
/// not yet given to its new owner (see `docs/handoff.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The item.
    pub work: WorkId,
    /// The member it was revoked from, whose acknowledgement (or departure)
    /// the move waits for.
    pub from: MemberId,
}
