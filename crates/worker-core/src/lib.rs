//! Backend-neutral core of **coordinator**: lets every replica of a clustered
//! service know which pieces of work are assigned to it.
//!
//! A leader writes assignment keys `<prefix><member_id>/<work_id>` into a
//! consistent KV store. Each member runs a [`Worker`]: it waits until a leader
//! exists, watches its own keys, lets changes soak until they stop moving, and
//! only then publishes the settled set to the application.
//!
//! This crate holds:
//! - the store traits [`KvWatch`] and [`LeaderWait`] that backends implement,
//!   and those of the leader half: [`Membership`], [`Election`], [`FencedWrite`];
//! - the tracking + soak logic as a pure state machine ([`machine::Machine`]);
//! - the tokio driver ([`Worker`], [`WorkerHandle`]);
//! - the in-process [`MemoryStore`] backend;
//! - behind the `conformance` feature, the suite every backend's tests run.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use worker_core::{MemoryStore, Worker, WorkerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new();
//! store.set_leader("leader-1");
//! store.put("service/coordinator/assignments/m1/w1", "params");
//!
//! let config = WorkerConfig::new("m1").soak(Duration::from_millis(10));
//! let worker = Worker::spawn(&config, Arc::new(store.clone()), Arc::new(store.clone())).unwrap();
//! let workload = worker.ready().await.unwrap();
//! assert!(workload.contains_key("w1"));
//! worker.halt().await;
//! # }
//! ```
//!
//! # Feature flags
//! - `conformance`: the [`conformance`] module, the suite each backend's tests run.

mod backoff;
mod coord;
mod envelope;
mod error;
mod keys;
pub mod machine;
mod memory;
pub mod metrics;
mod traits;
mod types;
pub mod worker;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backoff::Backoff;
pub use coord::{
    revoke_first_chunks, ConsistentRead, Election, Fence, FencedWrite, KeyVersion, KvWrite,
    Membership, SessionId, TxnLimits, TxnOp, TxnOutcome,
};
pub use envelope::{Envelope, EnvelopeError, Role, ENVELOPE_MAGIC, MAX_REPLICAS};
pub use error::{BoxError, ConfigError, ErrorChain, InjectedFault, MissingPermission, StoreError};
pub use keys::{validate_instance_id, AssignmentKeys, ForeignReason, MAX_INSTANCE_ID_LEN};
#[doc(hidden)]
pub use machine::Safeguards;
pub use memory::{MemoryStats, MemoryStore};
pub use traits::{KvStream, KvWatch, LeaderStream, LeaderWait, LeaderWaitExt};
pub use types::{
    KvChange, KvEntry, Leader, Revision, Snapshot, WatchEvent, WorkId, Workload, WorkloadChange,
};
pub use worker::{
    Changes, Halted, ReleaseSwitch, Settled, StoreContact, Worker, WorkerConfig, WorkerHandle,
    WorkerObserver, WorkloadWatch, CHANGES_QUEUE, DEFAULT_PREFIX,
};
