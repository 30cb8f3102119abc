//! etcd v3 backend of **coordinator**: implements the core's [`KvWatch`] and
//! [`LeaderWait`] over etcd's gRPC API (through the `etcd-client` crate).
//!
//! - **Assignments**: a prefix GET gives the snapshot and its header revision;
//!   a prefix watch from revision + 1 follows it. A watch that etcd cancels, or
//!   whose start revision was compacted, is reported as [`WatchEvent::Lost`]
//!   (the core relists). A connection that goes silent is found by HTTP/2
//!   keep-alive pings (no store request while idle) and its watches reported
//!   broken within [`EtcdConfig::keepalive`]; below 10 s, which pings cannot
//!   meet, silent watches also send progress requests.
//! - **Leader**: the etcd v3 election named by [`EtcdConfig::election`]
//!   (`etcdctl elect NAME PROPOSAL` makes a leader): the key with the lowest
//!   create revision under `NAME/`; its value is the leader id, its create
//!   revision the term.
//!   One observation (reads and one watch) serves every `observe()` stream of a
//!   backend value and its clones.
//! - **Several endpoints**: requests go to one member; when it fails (down,
//!   silent, without a raft leader) the backend reconnects and moves on to the
//!   next one.
//! - **Leader half**: [`Membership`](worker_core::Membership) on leases,
//!   [`Election`](worker_core::Election) in etcd's v3 election protocol
//!   (interoperates with `etcdctl elect`), [`FencedWrite`](worker_core::FencedWrite)
//!   as transactions comparing the leader key's create revision (at most
//!   [`MAX_TXN_OPS`] operations), and plain [`KvWrite`](worker_core::KvWrite).
//! - **Security**: user/password authentication, HTTPS with a CA file, client
//!   certificates. The password is never logged.
//!
//! [`EtcdBackend::connect`] does no network I/O: an unreachable etcd shows up as
//! errors of [`list`](KvWatch::list)/[`watch`](KvWatch::watch), which the worker
//! retries with backoff.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backend_etcd::{EtcdBackend, EtcdConfig};
//! use worker_core::{Worker, WorkerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]);
//! let etcd = EtcdBackend::connect(config).await?;
//! let worker = Worker::spawn(
//!     &WorkerConfig::new("m1"),
//!     Arc::new(etcd.clone()),
//!     Arc::new(etcd),
//! )?;
//! let workload = worker.ready().await?;
//! println!("{workload:?}");
//! # Ok(())
//! # }
//! ```
//!
//! # Building
//! `etcd-client` compiles etcd's `.proto` files at build time: it needs `protoc`
//! and the well-known `.proto` files (Debian: `protobuf-compiler` and
//! `libprotobuf-dev`), or `PROTOC` set to a `protoc` binary.
//!
//! # Feature flags
//! None: TLS (rustls with the ring provider, and the system trust store for
//! HTTPS endpoints given without a CA file) is always built in.

mod config;
mod coord;
mod error;
mod keepalive;
mod leader;
mod pool;
mod watch;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::GetOptions;
use worker_core::{
    KvEntry, KvStream, KvWatch, Leader, LeaderStream, LeaderWait, Revision, Snapshot, StoreError,
};

pub use config::{
    EtcdConfig, DEFAULT_ELECTION, DEFAULT_ENDPOINT, DEFAULT_KEEPALIVE, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS, MIN_KEEPALIVE,
};
pub use coord::{lease_ttl, MAX_TXN_OPS};
pub use error::EtcdError;
#[doc(no_inline)]
pub use worker_core::WatchEvent;

use crate::error::{naming, store_error};
use crate::keepalive::KeepAlives;
use crate::leader::{current_leader, ElectionHub};
use crate::pool::Pool;
use crate::watch::{to_revision, EtcdKvStream, Watcher};

/// The etcd backend: a [`KvWatch`] and a [`LeaderWait`].
///
/// Cheap to clone (the clones share the connections); `Send + Sync`, usable
/// from many tasks and workers at once.
#[derive(Clone, Debug)]
pub struct EtcdBackend {
    pool: Arc<Pool>,
    election_prefix: Arc<[u8]>,
    /// The one election observation shared by every `observe()` stream.
    election: Arc<ElectionHub>,
    /// What one fenced transaction may carry.
    limits: worker_core::TxnLimits,
    /// One `LeaseKeepAlive` stream per lease being renewed.
    keep_alives: Arc<KeepAlives>,
}

impl EtcdBackend {
    /// Builds the backend: checks the settings, reads the TLS files, and
    /// prepares one client per endpoint.
    ///
    /// Does not connect: an unreachable etcd is not an error here (requests
    /// fail later, and the worker retries them). Fails only on a bad setting:
    /// no endpoint, an endpoint that is not a URL, an unreadable or non-PEM TLS
    /// file, a user without a password, a client certificate without its key,
    /// a keepalive below [`MIN_KEEPALIVE`]; the error names the setting.
    pub async fn connect(config: EtcdConfig) -> Result<Self, EtcdError> {
        let pool = Pool::new(&config).await?;
        let pool = Arc::new(pool);
        let election_prefix: Arc<[u8]> = format!("{}/", config.election).into_bytes().into();
        let election = Arc::new(ElectionHub::new(pool.clone(), election_prefix.clone()));
        Ok(Self {
            pool,
            election_prefix,
            election,
            limits: coord::txn_limits(config.max_request_bytes, config.max_txn_ops),
            keep_alives: Arc::default(),
        })
    }

    /// The endpoint requests go to now (it changes when a member fails).
    pub fn current_endpoint(&self) -> String {
        self.pool.current_url().to_owned()
    }

    /// How many times etcd refused the auth token of a new watch (it expired, or
    /// the user's password or roles changed) and the backend authenticated
    /// again and reopened the watch from the same revision. Always 0 without a
    /// user and password.
    pub fn token_refreshes(&self) -> u64 {
        self.pool.token_refreshes()
    }

    /// How many `LeaseKeepAlive` streams this backend (and its clones) opened
    /// so far: one per lease renewed, plus one per stream that failed and was
    /// replaced (see `docs/etcd.md`, "Leases").
    pub fn keep_alive_streams_opened(&self) -> u64 {
        self.keep_alives.opened()
    }

    /// The key prefix of the election (`<election>/`).
    pub fn election_prefix(&self) -> &[u8] {
        &self.election_prefix
    }
}

/// Keys per page when listing a member's prefix.
pub const LIST_PAGE: i64 = 5_000;

/// Largest gRPC message the backend accepts (etcd-client's default is 4 MiB,
/// too small for a page of large values or a watch catching up on a big
/// transaction). Everything read is kept in memory anyway.
pub(crate) const MAX_MESSAGE: usize = 1 << 30;

/// The end of the key range holding every key that starts with `prefix`
/// (etcd's `--prefix` rule: increment the last byte that is not 0xff).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return end;
        }
        end.pop();
    }
    // Every byte was 0xff (or the prefix is empty): to the end of the keyspace.
    vec![0]
}

#[async_trait]
impl KvWatch for EtcdBackend {
    /// A linearizable prefix read in pages of [`LIST_PAGE`] keys, every page at
    /// the first page's revision, so that large members (100,000 keys) are read
    /// without one giant answer; the snapshot's revision is that revision.
    /// Cancel safe.
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let end = prefix_range_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut revision: Option<i64> = None;
        let mut entries = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(r) = revision {
                options = options.with_revision(r);
            }
            let (response, _) = self
                .pool
                .run(|client| {
                    let (from, options) = (from.clone(), options.clone());
                    async move {
                        client
                            .kv_client()
                            .max_decoding_message_size(MAX_MESSAGE)
                            .get(from, Some(options))
                            .await
                            .map_err(store_error)
                    }
                })
                .await
                .map_err(|e| naming(e, || format!("read on the prefix {prefix:?}")))?;
            let header = response
                .header()
                .map(etcd_client::ResponseHeader::revision)
                .ok_or_else(|| StoreError::protocol("etcd answered a GET without a header"))?;
            revision.get_or_insert(header);
            entries.extend(response.kvs().iter().map(|kv| {
                KvEntry::at(
                    kv.key().to_vec(),
                    Bytes::copy_from_slice(kv.value()),
                    to_revision(kv.mod_revision()),
                )
            }));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Snapshot {
            revision: to_revision(revision.unwrap_or(0)),
            entries,
        })
    }

    /// Opens a prefix watch from `after + 1` and waits until etcd confirms it.
    /// Cancel safe.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn KvStream>, StoreError> {
        let start = i64::try_from(after.saturating_add(1)).unwrap_or(i64::MAX);
        let watcher = Watcher::open(self.pool.clone(), prefix.as_bytes(), start).await?;
        Ok(Box::new(EtcdKvStream { watcher }))
    }
}

#[async_trait]
impl LeaderWait for EtcdBackend {
    /// The election's leader now: the term is the leader key's create
    /// revision, the id the proposal this backend value saw when the term began
    /// (a `Proclaim` changes neither). Cancel safe.
    async fn leader(&self) -> Result<Option<Leader>, StoreError> {
        let (leader, _) =
            current_leader(&self.pool, &self.election_prefix, self.election.terms()).await?;
        Ok(leader.map(|(_, leader)| leader))
    }

    /// A stream on the backend's one shared observation of the election (one
    /// read-and-watch for every worker using this value or its clones, started
    /// on first use, stopped when no stream is left). Its first `next` returns
    /// the current state (waiting for the first read if there is none yet);
    /// failures reach every stream. Cancel safe.
    async fn observe(&self) -> Result<Box<dyn LeaderStream>, StoreError> {
        Ok(Box::new(self.election.subscribe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_ends() {
        assert_eq!(prefix_range_end(b"p/m1/"), b"p/m10".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[tokio::test]
    async fn connect_does_not_touch_the_network() {
        // Nothing listens on port 1; connect must still succeed at once.
        let config = EtcdConfig::new(vec!["http://127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        let backend = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            EtcdBackend::connect(config),
        )
        .await
        .expect("connect hung")
        .expect("connect failed");
        assert_eq!(backend.current_endpoint(), "http://127.0.0.1:1");
        assert_eq!(backend.election_prefix(), b"service/coordinator/leader/");
    }

    #[tokio::test]
    async fn connect_with_credentials_does_not_touch_the_network() {
        let config = EtcdConfig::new(vec!["http://127.0.0.1:1".into()]).with_user("u", "p");
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            EtcdBackend::connect(config),
        )
        .await
        .expect("connect hung")
        .expect("connect failed");
    }

    #[tokio::test]
    async fn unreachable_store_is_unavailable_not_a_hang() {
        let config = EtcdConfig::new(vec!["http://127.0.0.1:1".into()])
            .with_keepalive(std::time::Duration::from_secs(2));
        let backend = EtcdBackend::connect(config).await.unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), backend.list("p/"))
            .await
            .expect("list hung")
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(_) | StoreError::Timeout(_)),
            "{e:?}"
        );
        // Each cause once: "store unreachable: gRPC status …: … Connection refused …".
        let chain = worker_core::ErrorChain(&e).to_string();
        eprintln!("{chain}");
        for cause in chain.split(": ") {
            assert_eq!(
                chain.matches(cause).count(),
                1,
                "{cause:?} repeated in {chain}"
            );
        }
    }

    #[tokio::test]
    async fn bad_settings_name_the_setting() {
        let e = EtcdBackend::connect(EtcdConfig::new(vec!["http://exa mple:1".into()]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("endpoints"), "{e}");
        let e = EtcdBackend::connect(
            EtcdConfig::new(vec!["https://127.0.0.1:1".into()]).with_ca_cert("/nonexistent/ca.pem"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("ca_cert"), "{e}");
        let e = EtcdBackend::connect(
            EtcdConfig::new(vec!["http://127.0.0.1:1".into()]).with_ca_cert("/nonexistent/ca.pem"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("endpoints"), "{e}");
        let e = EtcdBackend::connect(EtcdConfig::new(vec!["ftp://127.0.0.1:1".into()]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("endpoints"), "{e}");
    }
}
