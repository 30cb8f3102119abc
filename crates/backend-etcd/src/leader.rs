//! Leadership from an etcd v3 election.
//!
//! `etcdctl elect NAME PROPOSAL` (and every client of etcd's `concurrency`
//! package) campaigns by creating the key `NAME/<lease id in hex>` with the
//! proposal as value, attached to its session lease; the leader is the key with
//! the lowest create revision under `NAME/`. Resigning (or the lease expiring)
//! deletes the key. This module reads that directly: a prefix GET sorted by
//! create revision, and a prefix watch that triggers a new GET on a change
//! that can change the leader (the leader key deleted or re-created, or any
//! change while there is none). Another candidate joining or leaving cannot:
//! with N members campaigning, a read on every change would cost each
//! member's observation N reads of N keys as they join.
//! (The election service's `Observe` call fails while there is no leader, which
//! is exactly the state the worker must wait in.)
//!
//! One backend value (with its clones) runs **one** such observation for all
//! its [`observe`](worker_core::LeaderWait::observe) streams: an
//! [`ElectionHub`] task publishes each state, or error, on a `tokio::sync::watch`
//! channel, and stops when no stream is left.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{EventType, GetOptions, SortOrder, SortTarget};
use tokio::sync::{watch, Notify};
use tracing::debug;
use worker_core::{ErrorChain, Leader, LeaderStream, StoreError};

use crate::error::{naming, store_error};
use crate::pool::Pool;
use crate::watch::{to_revision, Watcher};

/// The identity of a leadership term: the leader key and its create revision.
/// A `Proclaim` rewrites the key's value, never these.
type TermId = (Vec<u8>, i64);

/// The id each term is reported with: the proposal its leader key held when
/// this backend first saw the term. A `Proclaim` by the same leader (same key,
/// same create revision, new value) thus changes nothing a worker sees, however
/// often the observation is restarted.
#[derive(Debug, Default)]
pub(crate) struct Terms(Mutex<Option<(TermId, String)>>);

impl Terms {
    /// The leader for key `key` created at `create_revision`, holding `value` now.
    fn leader(&self, key: &[u8], create_revision: i64, value: &[u8]) -> Leader {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = match &*last {
            Some(((k, r), id)) if k == key && *r == create_revision => id.clone(),
            _ => {
                let id = String::from_utf8_lossy(value).into_owned();
                *last = Some(((key.to_vec(), create_revision), id.clone()));
                id
            }
        };
        Leader {
            id,
            term: to_revision(create_revision),
            name: None,
        }
    }
}

/// The current leader of the election whose keys start with `prefix` (with
/// its term's identity), and the revision the read was made at.
pub(crate) async fn current_leader(
    pool: &Pool,
    prefix: &[u8],
    terms: &Terms,
) -> Result<(Option<(TermId, Leader)>, i64), StoreError> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let (response, _) = pool
        .run(|mut client| {
            let (key, options) = (prefix.to_vec(), options.clone());
            async move { client.get(key, Some(options)).await.map_err(store_error) }
        })
        .await
        .map_err(|e| {
            naming(e, || {
                format!(
                    "read on the prefix {:?} (the election)",
                    String::from_utf8_lossy(prefix)
                )
            })
        })?;
    let revision = response
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    let leader = response.kvs().first().map(|kv| {
        let leader = terms.leader(kv.key(), kv.create_revision(), kv.value());
        ((kv.key().to_vec(), kv.create_revision()), leader)
    });
    Ok((leader, revision))
}

/// One observation of an election prefix: reads, then a watch that triggers
/// new reads. Its `next` returns each state whose presence or term (leader key
/// and create revision) differs from the last.
pub(crate) struct Observation {
    pool: Arc<Pool>,
    prefix: Vec<u8>,
    terms: Arc<Terms>,
    /// The term last returned (`None`: nothing returned yet).
    // The three states (nothing returned / no leader / a leader) are all needed.
    #[allow(clippy::option_option)]
    last: Option<Option<TermId>>,
    watcher: Option<Watcher>,
    /// The election keys changed since the last read.
    dirty: bool,
}

impl Observation {
    pub(crate) fn new(pool: Arc<Pool>, prefix: Vec<u8>, terms: Arc<Terms>) -> Self {
        Self {
            pool,
            prefix,
            terms,
            last: None,
            watcher: None,
            dirty: true,
        }
    }

    /// One read or one watch message; `Some(state)` when there is a state to return.
    // As for `last`: "nothing to return" differs from "no leader".
    #[allow(clippy::option_option)]
    async fn step(&mut self) -> Result<Option<Option<Leader>>, StoreError> {
        if self.dirty || self.watcher.is_none() {
            let (leader, revision) = current_leader(&self.pool, &self.prefix, &self.terms).await?;
            if self.watcher.is_none() {
                let watcher =
                    Watcher::open(self.pool.clone(), &self.prefix, revision.saturating_add(1))
                        .await?;
                self.watcher = Some(watcher);
            }
            self.dirty = false;
            let (term, leader) = match leader {
                Some((term, leader)) => (Some(term), Some(leader)),
                None => (None, None),
            };
            if self.last.as_ref() != Some(&term) {
                self.last = Some(term);
                return Ok(Some(leader));
            }
            return Ok(None);
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return Ok(None);
        };
        let response = match watcher.next_response().await {
            Ok(r) => r,
            Err(e) => {
                self.watcher = None;
                return Err(e);
            }
        };
        if response.canceled() || response.compact_revision() > 0 {
            // Read afresh and watch again from there.
            self.watcher = None;
        } else if response
            .events()
            .iter()
            .any(|event| self.may_change_leader(event))
        {
            self.dirty = true;
        }
        Ok(None)
    }

    /// Whether `event` may change who leads: the leader is the key with the
    /// lowest create revision, so only the leader key's own deletion (or a
    /// put that re-created it), or anything while no leader is known, can. A
    /// new candidate's key is created after the leader's; another
    /// candidate's deletion leaves the lowest in place.
    fn may_change_leader(&self, event: &etcd_client::Event) -> bool {
        let Some(Some((key, created))) = &self.last else {
            return true;
        };
        let Some(kv) = event.kv() else {
            return true;
        };
        match event.event_type() {
            EventType::Delete => kv.key() == key.as_slice(),
            EventType::Put => {
                kv.create_revision() <= *created
                    && !(kv.key() == key.as_slice() && kv.create_revision() == *created)
            }
        }
    }
}

impl Observation {
    /// The next state that differs from the last one returned (the first call:
    /// the current state). Cancel safe.
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        loop {
            if let Some(state) = self.step().await? {
                return Ok(state);
            }
        }
    }
}

/// What the shared observation last found.
#[derive(Clone, Debug)]
enum Observed {
    /// Nothing read yet.
    Pending,
    /// The election's state.
    Known(Option<Leader>),
    /// The last attempt failed; the task tries again when a stream asks.
    Failed(Arc<StoreError>),
}

/// Least time between two attempts of the shared observation after a failure.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// The one election observation of a backend value and its clones.
///
/// After a failure the task does not retry on a timer of its own: it waits
/// until a stream asks (a stream's first `next`, i.e. a worker reopening after
/// its own backoff), so the workers' backoff still paces the retries and a
/// reopened stream gets a fresh answer, as if it had read on its own.
pub(crate) struct ElectionHub {
    pool: Arc<Pool>,
    prefix: Arc<[u8]>,
    /// The id of each term, kept across restarts of the observation.
    terms: Arc<Terms>,
    /// The running task's channel (the task holds the only strong reference, so a
    /// task that ended, even with its runtime, is never subscribed to).
    running: Mutex<Weak<watch::Sender<Observed>>>,
    /// A stream wants a new attempt after a failure.
    retry: Notify,
}

impl std::fmt::Debug for ElectionHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionHub")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

impl ElectionHub {
    pub(crate) fn new(pool: Arc<Pool>, prefix: Arc<[u8]>) -> Self {
        Self {
            pool,
            prefix,
            terms: Arc::default(),
            running: Mutex::new(Weak::new()),
            retry: Notify::new(),
        }
    }

    /// The ids of the terms seen by this backend value.
    pub(crate) fn terms(&self) -> &Terms {
        &self.terms
    }

    /// A stream on the shared observation, starting its task if none runs.
    pub(crate) fn subscribe(self: &Arc<Self>) -> EtcdLeaderStream {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = if let Some(tx) = running.upgrade() {
            tx.subscribe()
        } else {
            let (tx, rx) = watch::channel(Observed::Pending);
            let tx = Arc::new(tx);
            *running = Arc::downgrade(&tx);
            tokio::spawn(Arc::clone(self).run(tx));
            rx
        };
        EtcdLeaderStream {
            hub: Arc::clone(self),
            rx,
            last: None,
            failed: false,
        }
    }

    /// Whether the task may end: no stream is left. Decided under the lock that
    /// [`subscribe`](Self::subscribe) takes, so no stream joins a task that ends.
    fn release(&self, tx: &Arc<watch::Sender<Observed>>) -> bool {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tx.receiver_count() > 0 {
            return false;
        }
        if running.upgrade().is_some_and(|r| Arc::ptr_eq(&r, tx)) {
            *running = Weak::new();
        }
        true
    }

    /// Waits until all streams are gone (`true`: the task must end).
    async fn unused(&self, tx: &Arc<watch::Sender<Observed>>) -> bool {
        loop {
            tx.closed().await;
            if self.release(tx) {
                return true;
            }
        }
    }

    async fn run(self: Arc<Self>, tx: Arc<watch::Sender<Observed>>) {
        let mut observation =
            Observation::new(self.pool.clone(), self.prefix.to_vec(), self.terms.clone());
        loop {
            let result = tokio::select! {
                biased;
                _ = self.unused(&tx) => return,
                r = observation.next() => r,
            };
            match result {
                Ok(state) => {
                    tx.send_replace(Observed::Known(state));
                }
                Err(e) => {
                    let failed_at = tokio::time::Instant::now();
                    debug!(error = %ErrorChain(&e), "etcd election observation failed");
                    tx.send_replace(Observed::Failed(Arc::new(e)));
                    // Start afresh, so that the next state is published even if
                    // it equals the one before the failure.
                    observation = Observation::new(
                        self.pool.clone(),
                        self.prefix.to_vec(),
                        self.terms.clone(),
                    );
                    tokio::select! {
                        biased;
                        _ = self.unused(&tx) => return,
                        () = async {
                            self.retry.notified().await;
                            tokio::time::sleep_until(failed_at + RETRY_MIN).await;
                        } => {}
                    }
                }
            }
        }
    }
}

/// [`LeaderStream`] on a backend's shared election observation.
pub(crate) struct EtcdLeaderStream {
    hub: Arc<ElectionHub>,
    rx: watch::Receiver<Observed>,
    /// What the last call returned (`None`: nothing returned yet).
    #[allow(clippy::option_option)]
    last: Option<Option<Leader>>,
    /// The last call returned an error.
    failed: bool,
}

#[async_trait]
impl LeaderStream for EtcdLeaderStream {
    /// The first call (and the first after an error) looks at once: it returns
    /// the current state, or, when the shared observation has failed (or not
    /// read yet), the outcome of a new attempt. Other calls wait for a
    /// different state or a new failure. Cancel safe.
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        let result = self.next_inner().await;
        self.failed = result.is_err();
        result
    }
}

impl EtcdLeaderStream {
    async fn next_inner(&mut self) -> Result<Option<Leader>, StoreError> {
        let mut look_now = self.last.is_none() || self.failed;
        loop {
            if !look_now && self.rx.changed().await.is_err() {
                return Err(StoreError::unavailable(
                    "the etcd election observation stopped",
                ));
            }
            let fresh = look_now;
            look_now = false;
            let observed = self.rx.borrow_and_update().clone();
            match observed {
                Observed::Pending => {}
                Observed::Known(state) => {
                    if self.last.as_ref() != Some(&state) {
                        self.last = Some(state.clone());
                        return Ok(state);
                    }
                }
                // A failure from before this call: ask for a new attempt and
                // return its outcome.
                Observed::Failed(_) if fresh => self.hub.retry.notify_one(),
                Observed::Failed(e) => return Err(replicate(&e)),
            }
        }
    }
}

/// A copy of a shared error, of the same kind and with the same message chain.
fn replicate(e: &Arc<StoreError>) -> StoreError {
    let shared = || Box::new(SharedSource(Arc::clone(e)));
    match &**e {
        StoreError::Timeout(bound) => StoreError::Timeout(*bound),
        StoreError::Unavailable(_) => StoreError::Unavailable(shared()),
        StoreError::PermissionDenied(_) => StoreError::PermissionDenied(shared()),
        _ => StoreError::Protocol(shared()),
    }
}

/// The source of a shared [`StoreError`], as the source of a copy of it.
#[derive(Debug)]
struct SharedSource(Arc<StoreError>);

impl std::fmt::Display for SharedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(source) => std::fmt::Display::fmt(source, f),
            None => std::fmt::Display::fmt(&*self.0, f),
        }
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(std::error::Error::source)
    }
}
