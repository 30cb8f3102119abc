//! Consul backend of **coordinator**: implements [`KvWatch`] and [`LeaderWait`]
//! on a Consul agent's HTTP API, through the [`consulrs`] client.
//!
//! - Assignments are read with recursive blocking queries on the member prefix
//!   (`?recurse&index=N&wait=5m`), following `X-Consul-Index`, including the
//!   index of a 404 on an empty prefix. An index that goes backwards is
//!   reported as [`WatchEvent::Lost`](worker_core::WatchEvent::Lost) so the
//!   core relists; an index of 0 is sent as 1; queries that come back without
//!   a change are paced by a token bucket (burst 2, one per second).
//! - The leader is the Consul session holding the leader key (default
//!   `service/coordinator/leader`); a lock taken with `consul lock PREFIX …`
//!   counts when the leader key is `PREFIX/.lock`. All the observations of
//!   one backend and its clones share one chain of blocking queries on it (a
//!   background task, started by the first observation and stopped with the
//!   last), so W idle workers hold W + 1 queries.
//! - Answers are decoded straight into entries (no intermediate pair type),
//!   and whether one changed anything is told by a fingerprint (number of
//!   keys, highest and sum of `ModifyIndex`), not by comparing entries.
//! - The leader half ([`Membership`](worker_core::Membership),
//!   [`Election`](worker_core::Election), [`FencedWrite`](worker_core::FencedWrite),
//!   [`KvWrite`](worker_core::KvWrite)): TTL sessions with `behavior=delete`
//!   and no lock-delay, the leader key acquired by a session, and `/v1/txn`
//!   transactions fenced by a `check-session` on the leader key.
//! - ACL token (`X-Consul-Token`, never logged), HTTPS with a CA, and mutual
//!   TLS with a client certificate, all through rustls.
//!
//! See `docs/consul.md` for the semantics in detail.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backend_consul::{ConsulBackend, ConsulConfig};
//! use worker_core::{Worker, WorkerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ConsulConfig::new(vec!["http://127.0.0.1:8500".into()]);
//! config.token_file = Some("/etc/coordinator/consul-token".into());
//! let consul = ConsulBackend::new(config)?;
//! let worker = Worker::spawn(
//!     &WorkerConfig::new("m1"),
//!     Arc::new(consul.clone()),
//!     Arc::new(consul),
//! )?;
//! let workload = worker.ready().await?;
//! println!("assigned: {:?}", workload.keys().collect::<Vec<_>>());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//! None.

mod config;
mod coord;
mod decode;
mod error;
mod http;
mod leader;
mod ratelimit;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use worker_core::{
    KvStream, KvWatch, Leader, LeaderStream, LeaderWait, Revision, Snapshot, StoreError,
};

pub use config::{
    ConsulConfig, DEFAULT_LEADER_KEY, DEFAULT_TXN_MAX_BYTES, DEFAULT_VALUE_MAX_BYTES, DEFAULT_WAIT,
    MAX_WAIT,
};
pub use coord::{
    FENCE_OPS, LOCK_DELAY, MAX_SESSION_TTL, MAX_TXN_OPS, MIN_CHECK_TTL, MIN_SESSION_TTL,
    SESSION_NAME,
};
pub use error::ConsulError;

/// How many listed prefixes are remembered for the watches that follow them.
const LISTED_CAP: usize = 256;

/// A Consul agent as a coordinator store. Cheap to clone (the clones share
/// one HTTP client); `Send + Sync`, usable from many tasks and workers.
#[derive(Clone)]
pub struct ConsulBackend {
    inner: Arc<Inner>,
}

struct Inner {
    http: Arc<http::Http>,
    leader_key: String,
    /// What one fenced transaction may carry.
    limits: worker_core::TxnLimits,
    /// The fingerprints of recent lists, by prefix, so that the watch opened
    /// after a list knows what its caller holds and can keep quiet about
    /// answers that change nothing.
    listed: Mutex<HashMap<String, (Revision, decode::Fingerprint)>>,
    /// The one observation of the leader key shared by every [`LeaderStream`]
    /// of this backend and its clones, while there is one.
    leader_hub: Mutex<std::sync::Weak<leader::Hub>>,
    /// Sessions bound to an agent check ([`ConsulConfig::session_check`]).
    checks: coord::SessionChecks,
}

impl fmt::Debug for ConsulBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulBackend")
            .field("leader_key", &self.inner.leader_key)
            .field("wait", &self.inner.http.wait())
            .finish_non_exhaustive()
    }
}

impl ConsulBackend {
    /// Checks `config`, reads the token and certificate files it names, and
    /// builds the HTTP client. Does not contact Consul: an unreachable agent
    /// shows up later as [`StoreError::Unavailable`] and is retried.
    ///
    /// Fails with a [`ConsulError`] naming the setting at fault: no or a bad
    /// endpoint, an unreadable file, a certificate or key that does not parse,
    /// a `wait` out of range, or half of a client certificate pair.
    pub fn new(config: ConsulConfig) -> Result<Self, ConsulError> {
        if config.leader_key.is_empty() || config.leader_key.ends_with('/') {
            return Err(ConsulError::InvalidSetting {
                setting: "leader_key",
                reason: "must name a key (not empty, no trailing slash)",
            });
        }
        let http = http::Http::new(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http: Arc::new(http),
                leader_key: config.leader_key,
                limits: coord::txn_limits(config.txn_max_bytes, config.value_max_bytes),
                listed: Mutex::new(HashMap::new()),
                leader_hub: Mutex::new(std::sync::Weak::new()),
                checks: coord::SessionChecks::new(config.session_check),
            }),
        })
    }

    /// The key whose holder is the leader.
    pub fn leader_key(&self) -> &str {
        &self.inner.leader_key
    }
}

#[async_trait]
impl KvWatch for ConsulBackend {
    /// A recursive read of `prefix` (no blocking); the revision is the
    /// `X-Consul-Index` of the answer, also for a 404 (empty prefix).
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let (snapshot, fingerprint) = watch::list(&self.inner.http, prefix).await?;
        let mut listed = self
            .inner
            .listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if listed.len() >= LISTED_CAP {
            listed.clear();
        }
        listed.insert(prefix.to_owned(), (snapshot.revision, fingerprint));
        Ok(snapshot)
    }

    /// Opens a chain of blocking queries on `prefix` from index `after`. Does
    /// no I/O; errors come from [`KvStream::next`].
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError> {
        let seen = {
            let mut listed = self
                .inner
                .listed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match listed.remove(prefix) {
                Some((revision, fingerprint)) if revision == after => Some(fingerprint),
                _ => None,
            }
        };
        Ok(Box::new(watch::ConsulKvStream::new(
            self.inner.http.clone(),
            prefix,
            after,
            seen,
        )))
    }
}

#[async_trait]
impl LeaderWait for ConsulBackend {
    /// Reads the leader key once: the session holding it, if any.
    async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let (_, leader) = leader::read(&self.inner.http, &self.inner.leader_key, None).await?;
        Ok(leader)
    }

    /// Opens an observation of the leader key. All the observations of one
    /// backend (and its clones) share one chain of blocking queries, run by a
    /// task started with the first of them and stopped with the last; each
    /// observation reads the states that task publishes. Does no I/O itself;
    /// must be called within a tokio runtime (the task's).
    async fn observe(&self) -> Result<Box<dyn LeaderStream>, StoreError> {
        let hub = {
            let mut slot = self
                .inner
                .leader_hub
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(hub) = slot.upgrade().filter(|hub| hub.is_running()) {
                hub
            } else {
                let hub = leader::Hub::start(self.inner.http.clone(), &self.inner.leader_key)?;
                *slot = Arc::downgrade(&hub);
                hub
            }
        };
        Ok(Box::new(leader::SharedLeaderStream::new(hub)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<ConsulBackend>();
    }

    #[test]
    fn construction_never_contacts_the_agent() {
        // Nothing listens on port 1: construction must still succeed.
        let backend = ConsulBackend::new(ConsulConfig::new(vec!["http://127.0.0.1:1".into()]));
        assert!(backend.is_ok());
    }

    #[test]
    fn debug_redacts_the_token() {
        let mut config = ConsulConfig::new(vec!["http://127.0.0.1:1".into()]);
        config.token = Some("top-secret-token".into());
        assert!(!format!("{config:?}").contains("top-secret-token"));
        let backend = ConsulBackend::new(config).unwrap();
        assert!(!format!("{backend:?}").contains("top-secret-token"));
    }

    #[test]
    fn bad_leader_key_is_rejected() {
        let mut config = ConsulConfig::new(vec!["http://127.0.0.1:1".into()]);
        config.leader_key = "locks/".into();
        let err = ConsulBackend::new(config).unwrap_err();
        assert!(err.to_string().contains("leader_key"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_agent_is_unavailable() {
        let backend =
            ConsulBackend::new(ConsulConfig::new(vec!["http://127.0.0.1:1".into()])).unwrap();
        let err = backend.list("p/").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
}
