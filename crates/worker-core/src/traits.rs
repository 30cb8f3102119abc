//! The two traits a store backend implements.
//!
//! Both are object safe (`Arc<dyn KvWatch>`, `Arc<dyn LeaderWait>`) so that the
//! backend can be chosen at run time from configuration; the cost is one boxed
//! future per call, negligible next to a network round trip. They take `&self`
//! and are `Send + Sync`, so one backend value serves many workers and tasks.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::types::{Leader, Revision, Snapshot, WatchEvent};

/// Reads a key prefix and follows it from a store position.
///
/// The model fits both stores: Consul answers a blocking query with a whole new
/// picture of the prefix ([`WatchEvent::Snapshot`]); etcd streams incremental
/// changes ([`WatchEvent::Changes`]). Either way the stream must report
/// [`WatchEvent::Lost`] when it cannot resume from its position (Consul index
/// going backwards, etcd compaction, a cancelled watch), so that the core
/// relists instead of silently missing changes.
#[async_trait]
pub trait KvWatch: Send + Sync + 'static {
    /// Reads every key under `prefix` and the position the read was made at.
    ///
    /// Cancel safe: dropping the future abandons the request and changes nothing.
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError>;

    /// Opens a watch of `prefix` that yields what happens after position `after`.
    ///
    /// Keys outside `prefix` must not produce events (member `m1` watching
    /// `p/m1/` is not woken by `p/m10/x`). Cancel safe.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError>;
}

/// An open watch, created by [`KvWatch::watch`].
#[async_trait]
pub trait KvStream: Send {
    /// Waits for the next event.
    ///
    /// Returns an error when the stream broke; the caller then reopens from the
    /// last position it saw (after a backoff). A backend must detect a stream
    /// that went silently dead (no answer within its keep-alive bound) and
    /// return an error for it rather than wait forever.
    ///
    /// Cancel safe: if the future is dropped before it completes, no event is
    /// lost, and the next call resumes where the stream was.
    async fn next(&mut self) -> Result<WatchEvent, StoreError>;
}

/// Tells whether a leader exists and waits for leadership to change.
#[async_trait]
pub trait LeaderWait: Send + Sync + 'static {
    /// The leader right now, or `None` when there is none. Cancel safe.
    async fn leader(&self) -> Result<Option<Leader>, StoreError>;

    /// Opens an observation of leadership. Cancel safe.
    async fn observe(&self) -> Result<Box<dyn LeaderStream>, StoreError>;
}

/// An open observation of leadership, created by [`LeaderWait::observe`].
#[async_trait]
pub trait LeaderStream: Send {
    /// The first call returns the current state at once; each later call waits
    /// until the state differs from the one last returned (a leader appears,
    /// goes away, or is replaced by another id or term) and returns it.
    ///
    /// Errors end nothing: the caller reopens the observation after a backoff.
    /// Cancel safe.
    async fn next(&mut self) -> Result<Option<Leader>, StoreError>;
}

/// Conveniences for every [`LeaderWait`].
#[async_trait]
pub trait LeaderWaitExt: LeaderWait {
    /// Waits until a leader exists and returns it. Cancel safe.
    async fn wait_for_leader(&self) -> Result<Leader, StoreError> {
        let mut stream = self.observe().await?;
        loop {
            if let Some(leader) = stream.next().await? {
                return Ok(leader);
            }
        }
    }
}

impl<T: LeaderWait + ?Sized> LeaderWaitExt for T {}
