//! **coordinator** lets every replica of a clustered service know, reliably and
//! quickly, which pieces of work are assigned to it.
//!
//! A leader writes assignment keys `<prefix><member_id>/<work_id>` into a
//! consistent KV store (Consul, etcd, or the in-process memory store). Each
//! member runs a worker that waits until a leader exists, watches its own keys,
//! lets changes soak until they stop moving, and only then hands the settled
//! set to the application.
//!
//! ```
//! use coordinator::{Backend, BackendKind, Config, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), coordinator::Error> {
//! // In production: `Config::from_toml_file(..)` or `Config::from_env()` with
//! // `backend = "consul"` or `"etcd"`; here the in-process store.
//! let store = MemoryStore::new();
//! store.set_leader("leader-1");
//! store.put("service/coordinator/assignments/m1/w1", "params");
//!
//! let mut config = Config::new(BackendKind::Memory, "m1");
//! config.soak = std::time::Duration::from_millis(10);
//! let worker = Backend::memory(store).spawn_worker(&config)?;
//! let mut changes = worker.changes();
//! let first = changes.next().await.unwrap();
//! assert_eq!(&*first.added[0].0, "w1");
//! worker.halt().await;
//! # Ok(())
//! # }
//! ```
//!
//! # A full member, acknowledging by hand
//!
//! A member registers, takes part in the election, leads while elected (it
//! spreads the items under `work_prefix` over the live members) and follows
//! its own assignments. With manual acknowledgement, the leader moves an item
//! away from a member only after the application said it let go of it.
//!
//! ```
//! use std::collections::BTreeSet;
//! use std::time::Duration;
//! use coordinator::{Backend, BackendKind, Config, MemoryStore, WorkId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), coordinator::Error> {
//! let store = MemoryStore::new();
//! let mut config = Config::new(BackendKind::Memory, "m1");
//! config.soak = Duration::from_millis(10);
//! config.leader_settle = Some(Duration::from_millis(10));
//! config.leader_soak = Duration::from_millis(10);
//! // The service's work items: one key each under `work_prefix`.
//! for item in ["item-1", "item-2"] {
//!     store.put(format!("{}{item}", config.work_prefix), "");
//! }
//!
//! let member = Backend::memory(store)
//!     .spawn_member_with(&config.member_config()?.manual_ack(true))?;
//! let mut changes = member.worker().changes();
//! let mut running: BTreeSet<WorkId> = BTreeSet::new();
//! while running.len() < 2 {
//!     let change = changes.next().await.expect("the member runs");
//!     for item in &change.removed {
//!         running.remove(item); // stop working on it
//!     }
//!     for (item, _value) in &change.added {
//!         running.insert(item.clone()); // start working on it
//!     }
//!     // Everything up to this change is applied: the leader may now move
//!     // the items this change removed to their new owner.
//!     member.ack(change.revision);
//! }
//! member.halt().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//! The backend features only decide which backends are compiled in; they are
//! additive, and the runtime [`Config`] picks one.
//! - `consul` (default): the Consul backend ([`consul`]).
//! - `etcd`: the etcd backend ([`etcd`]); building it needs `protoc`
//!   (Debian: `protobuf-compiler` and `libprotobuf-dev`).
//! - `prometheus` (default): the `coordinator` program's `GET /metrics` for
//!   Prometheus (`--http-addr`). The library never installs a metrics recorder.
//!
//! The memory backend is always there.
//!
//! # Metrics
//! Workers, members and leaders record their figures through the
//! [`metrics`](https://docs.rs/metrics) facade; install the exporter you like
//! before spawning them. The names are in [`metrics`](mod@metrics).

pub mod config;

/// The names of every metric the library records (the worker's and the
/// leader half's), for the exporter the application installs. Each carries
/// the label `instance_id`; `docs/operations.md` says what each one means.
pub mod metrics {
    pub use leader_core::metrics::{
        FENCED_WRITES, HANDOFFS, IS_LEADER, ITEMS_MOVED, ITEMS_PLACED, PLANS, RELEASES,
        RENEW_FAILURES,
    };
    pub use worker_core::metrics::{
        error_kind, LEADER_CHANGES, PUBLICATIONS, PUBLICATION_DELAY, RELISTS, SETTLED_ITEMS,
        STORE_ERRORS,
    };

    /// Bucket bounds (seconds) suited to [`PUBLICATION_DELAY`]: from a short
    /// soak to a leader settle plus a backoff cap.
    pub const PUBLICATION_DELAY_BUCKETS: &[f64] = &[
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];

    /// Describes every metric (type, unit, help text) to the installed
    /// recorder. Workers and members do it when they start; call it after
    /// installing a recorder to have the descriptions before that.
    pub fn describe() {
        worker_core::metrics::describe();
        leader_core::metrics::describe();
    }
}

use std::sync::Arc;

pub use config::{BackendKind, Config, LoadError, ParseBackendKindError, DEFAULT_LEADER};

// What applications use, named one by one: the worker and its changes, the
// full member, the errors, the memory store, and the two traits a custom
// backend implements for `Backend::from_parts`. Backends and tests that need
// more (the state machines, the leader-half traits, the planner) depend on
// the core crates themselves.
pub use leader_core::{
    Acker, Handoff, Layout, LeaderExit, Left, Member, MemberConfig, MemberHandle, MemberMeta,
    MemberObserver, MemberStore,
};
pub use worker_core::{
    validate_instance_id, BoxError, Changes, ConfigError, Envelope, EnvelopeError, ErrorChain,
    Halted, InjectedFault, KvWatch, Leader, LeaderWait, MemoryStore, Revision, Role, Settled,
    StoreContact, StoreError, WorkId, Worker, WorkerConfig, WorkerHandle, WorkerObserver, Workload,
    WorkloadChange, WorkloadWatch, CHANGES_QUEUE, DEFAULT_PREFIX, MAX_INSTANCE_ID_LEN,
    MAX_REPLICAS,
};

/// The Consul backend (feature `consul`).
#[cfg(feature = "consul")]
pub use backend_consul as consul;
/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use backend_etcd as etcd;

/// Why a backend or worker could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The backend rejected its settings (unreadable certificate, bad URL, ...).
    #[error("cannot set up the {backend} backend")]
    Backend {
        /// Which backend.
        backend: BackendKind,
        /// Why.
        #[source]
        source: BoxError,
    },
}

/// A connected backend: the two store traits, ready to run workers.
#[derive(Clone)]
pub struct Backend {
    kind: BackendKind,
    kv: Arc<dyn KvWatch>,
    leader: Arc<dyn LeaderWait>,
    member: Option<MemberStore>,
    memory: Option<MemoryStore>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Sets up the backend `config` chooses. Fails on bad settings (or a
    /// backend not compiled in), never because the store is unreachable: the
    /// worker retries that with backoff.
    #[allow(clippy::unused_async)] // async without the etcd feature too: one signature for every build
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        match config.backend {
            BackendKind::Memory => Ok(Self::memory(MemoryStore::new())),
            #[cfg(feature = "consul")]
            BackendKind::Consul => {
                let mut c = backend_consul::ConsulConfig::new(config.endpoints_or_default());
                c.token_file.clone_from(&config.token_file);
                c.ca_cert.clone_from(&config.ca_cert);
                c.client_cert.clone_from(&config.client_cert);
                c.client_key.clone_from(&config.client_key);
                c.leader_key.clone_from(&config.leader);
                if let Some(wait) = config.consul_wait {
                    c.wait = wait;
                }
                if let Some(n) = config.txn_max_bytes {
                    c.txn_max_bytes = n;
                }
                if let Some(n) = config.value_max_bytes {
                    c.value_max_bytes = n;
                }
                if config.session_check {
                    c.session_check = Some(format!("coordinator-{}", config.instance_id));
                }
                let b = Arc::new(backend_consul::ConsulBackend::new(c).map_err(|e| Error::Backend {
                    backend: BackendKind::Consul,
                    source: e.into(),
                })?);
                Ok(Self::from_parts(BackendKind::Consul, b.clone(), b.clone())
                    .with_member_store(member_store(&b)))
            }
            #[cfg(feature = "etcd")]
            BackendKind::Etcd => {
                let mut c = backend_etcd::EtcdConfig::new(config.endpoints_or_default());
                c.ca_cert.clone_from(&config.ca_cert);
                c.client_cert.clone_from(&config.client_cert);
                c.client_key.clone_from(&config.client_key);
                c.user.clone_from(&config.user);
                c.election.clone_from(&config.leader);
                if let Some(keepalive) = config.etcd_keepalive {
                    c.keepalive = keepalive;
                }
                if let Some(n) = config.txn_max_bytes {
                    c.max_request_bytes = n;
                }
                if let Some(n) = config.txn_max_ops {
                    c.max_txn_ops = n;
                }
                c.password.clone_from(&config.password);
                if let Some(path) = &config.password_file {
                    let password = std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::new(
                            "password_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    c.password = Some(password.trim_end_matches(['\r', '\n']).to_owned());
                }
                let b = Arc::new(backend_etcd::EtcdBackend::connect(c).await.map_err(|e| {
                    Error::Backend {
                        backend: BackendKind::Etcd,
                        source: e.into(),
                    }
                })?);
                Ok(Self::from_parts(BackendKind::Etcd, b.clone(), b.clone())
                    .with_member_store(member_store(&b)))
            }
            #[allow(unreachable_patterns)] // reachable when a backend feature is off
            other => Err(ConfigError::new(
                "backend",
                format!("{other} is not compiled into this build; enable the coordinator crate's `{other}` cargo feature"),
            )
            .into()),
        }
    }

    /// A backend over an existing memory store (shared with the code that writes to it).
    pub fn memory(store: MemoryStore) -> Self {
        Self {
            kind: BackendKind::Memory,
            kv: Arc::new(store.clone()),
            leader: Arc::new(store.clone()),
            member: Some(MemberStore::from_backend(store.clone())),
            memory: Some(store),
        }
    }

    /// A backend from any implementation of the two traits.
    pub fn from_parts(
        kind: BackendKind,
        kv: Arc<dyn KvWatch>,
        leader: Arc<dyn LeaderWait>,
    ) -> Self {
        Self {
            kind,
            kv,
            leader,
            member: None,
            memory: None,
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The memory store, for the memory backend.
    pub fn memory_store(&self) -> Option<&MemoryStore> {
        self.memory.as_ref()
    }

    /// The key watch.
    pub fn kv(&self) -> Arc<dyn KvWatch> {
        self.kv.clone()
    }

    /// The leader observation.
    pub fn leader_wait(&self) -> Arc<dyn LeaderWait> {
        self.leader.clone()
    }

    /// The leader-half traits of this backend, when it has them.
    pub fn member_store(&self) -> Option<&MemberStore> {
        self.member.as_ref()
    }

    /// Adds the leader-half traits (for backends built with [`from_parts`](Self::from_parts)).
    #[must_use]
    pub fn with_member_store(mut self, store: MemberStore) -> Self {
        self.member = Some(store);
        self
    }

    /// Starts a full member: registers, campaigns, leads while elected, and
    /// runs the worker that follows this member's assignments.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_member(&self, config: &Config) -> Result<MemberHandle, ConfigError> {
        let store = self.member.as_ref().ok_or_else(|| {
            ConfigError::new(
                "backend",
                format!("the {} backend cannot run a full member", self.kind),
            )
        })?;
        Member::spawn(&config.member_config()?, store)
    }

    /// Like [`spawn_member`](Self::spawn_member), with `member` (from
    /// [`Config::member_config`], adjusted: for example
    /// [`MemberConfig::manual_ack`]).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_member_with(&self, member: &MemberConfig) -> Result<MemberHandle, ConfigError> {
        let store = self.member.as_ref().ok_or_else(|| {
            ConfigError::new(
                "backend",
                format!("the {} backend cannot run a full member", self.kind),
            )
        })?;
        Member::spawn(member, store)
    }

    /// Spawns a worker with `config`'s worker settings on this backend.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_worker(&self, config: &Config) -> Result<WorkerHandle, ConfigError> {
        Worker::spawn(
            &config.worker_config(),
            self.kv.clone(),
            self.leader.clone(),
        )
    }
}

/// The leader-half traits of one shared backend value.
#[cfg(any(feature = "consul", feature = "etcd"))]
fn member_store<B>(b: &Arc<B>) -> MemberStore
where
    B: KvWatch
        + LeaderWait
        + worker_core::Membership
        + worker_core::Election
        + worker_core::FencedWrite
        + worker_core::KvWrite,
{
    MemberStore {
        kv: b.clone(),
        leader: b.clone(),
        membership: b.clone(),
        election: b.clone(),
        writer: b.clone(),
        kv_write: b.clone(),
    }
}
