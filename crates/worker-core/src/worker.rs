//! The tokio driver: runs a [`Machine`] against a store and publishes what settles.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::error::{ConfigError, ErrorChain, StoreError};
use crate::keys::ForeignReason;
use crate::machine::{Action, Machine, Timing};
use crate::traits::{KvStream, KvWatch, LeaderStream, LeaderWait};
use crate::types::{Leader, Revision, Snapshot, WatchEvent, WorkId, Workload, WorkloadChange};

/// The default assignment prefix.
pub const DEFAULT_PREFIX: &str = "service/coordinator/assignments/";

/// Settings of one worker.
///
/// ```
/// use std::time::Duration;
/// use worker_core::WorkerConfig;
///
/// let config = WorkerConfig::new("m1")
///     .prefix("svc/assignments/")
///     .soak(Duration::from_millis(200));
/// assert_eq!(config.timing().unwrap().max_soak, Duration::from_secs(2));
/// ```
///
/// Non-exhaustive: build one with [`WorkerConfig::new`] and its setters (or
/// set the public fields of one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// This member's id (non-empty, no `/`, no control characters, at most 128 bytes).
    pub instance_id: String,
    /// Assignment prefix; keys are `<prefix><instance_id>/<work_id>`.
    /// Default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// Quiet time before a changed workload is committed. Default 500 ms.
    pub soak: Duration,
    /// Longest a candidate may wait while changes keep coming. Default `10 × soak`.
    pub max_soak: Option<Duration>,
    /// Wait after a leader appears or changes before committing, so the new
    /// leader can rewrite assignments. Default 5 s.
    pub leader_settle: Duration,
    /// First retry delay after a store error. Default 100 ms.
    pub backoff_min: Duration,
    /// Largest retry delay. Default 10 s.
    pub backoff_max: Duration,
    /// Start released (see [`WorkerHandle::release`]): nothing is published
    /// until [`ReleaseSwitch::restore`]. Exclusive members start so, until
    /// their session is registered. Default false.
    pub start_released: bool,
}

impl WorkerConfig {
    /// A config for `instance_id` with every other setting at its default.
    pub fn new(instance_id: impl Into<String>) -> Self {
        let t = Timing::default();
        Self {
            instance_id: instance_id.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            soak: t.soak,
            max_soak: None,
            leader_settle: t.leader_settle,
            backoff_min: t.backoff_min,
            backoff_max: t.backoff_max,
            start_released: false,
        }
    }

    /// Sets the assignment prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the soak time.
    #[must_use]
    pub fn soak(mut self, soak: Duration) -> Self {
        self.soak = soak;
        self
    }

    /// Sets the starvation cap (default `10 × soak`).
    #[must_use]
    pub fn max_soak(mut self, max_soak: Duration) -> Self {
        self.max_soak = Some(max_soak);
        self
    }

    /// Sets the leader settle time.
    #[must_use]
    pub fn leader_settle(mut self, settle: Duration) -> Self {
        self.leader_settle = settle;
        self
    }

    /// Sets the retry delays after store errors.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// The resolved timers, validated.
    pub fn timing(&self) -> Result<Timing, ConfigError> {
        let t = Timing {
            soak: self.soak,
            max_soak: self.max_soak.unwrap_or(self.soak * 10),
            leader_settle: self.leader_settle,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        };
        t.validate()?;
        Ok(t)
    }
}

/// The settled state a worker publishes.
///
/// The roles of its items (with replicas) are read apart:
/// [`WorkerHandle::secondaries`], [`WorkerObserver::secondaries`],
/// [`WorkloadWatch::secondaries`].
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// The settled workload.
    pub workload: Arc<Workload>,
    /// The store position it was observed at.
    pub revision: Revision,
    /// False until the first sync.
    pub ready: bool,
}

/// How the worker's store requests have been going lately: what a readiness
/// check needs to know about the store (see [`WorkerHandle::store_contact`]).
///
/// It follows the outcome of the worker's most recent completed request,
/// reading its assignments or observing the leader. A request that merely
/// waits (a blocking query or a watch with nothing to report) completes
/// nothing, so a healthy, idle worker keeps the outcome of its last answer.
/// After an outage the first answer of either kind sets it back to
/// [`Reachable`](Self::Reachable): the leader observation answers at once
/// when it resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreContact {
    /// No request has completed yet.
    #[default]
    Unknown,
    /// The most recent request succeeded.
    Reachable,
    /// The most recent request failed (the worker retries with backoff):
    /// the error with its causes, on one line.
    Unreachable(Arc<str>),
}

impl StoreContact {
    /// True when the most recent request succeeded.
    pub fn is_reachable(&self) -> bool {
        matches!(self, Self::Reachable)
    }
}

/// The worker has been halted; no more changes will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the worker has halted")]
pub struct Halted;

/// The most changes a [`Changes`] subscriber's queue holds. A subscriber
/// that falls further behind does not make the worker hold more: the newest
/// queued change and the next one are coalesced into one
/// ([`WorkloadChange::then`]), so applying the queue in order still ends at
/// the settled workload, with fewer, larger steps.
pub const CHANGES_QUEUE: usize = 64;

/// One subscriber's queue, shared by the worker task and its [`Changes`].
#[derive(Default)]
struct Subscription {
    queue: Mutex<SubQueue>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct SubQueue {
    /// The changes queued, each with when the worker published it.
    items: std::collections::VecDeque<(WorkloadChange, tokio::time::Instant)>,
    closed: bool,
}

impl Subscription {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `change`, coalescing it into the newest queued one when the
    /// queue is full.
    fn push(&self, change: WorkloadChange, at: tokio::time::Instant) {
        let mut q = self.lock();
        if q.items.len() >= CHANGES_QUEUE {
            if let Some((last, _)) = q.items.pop_back() {
                q.items.push_back((last.then(change), at));
            }
        } else {
            q.items.push_back((change, at));
        }
        drop(q);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

/// The change subscribers; `closed` once the worker task has ended.
#[derive(Default)]
struct Subscribers {
    closed: bool,
    list: Vec<Arc<Subscription>>,
}

type SharedSubscribers = Arc<Mutex<Subscribers>>;

fn lock(subs: &SharedSubscribers) -> std::sync::MutexGuard<'_, Subscribers> {
    subs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the settled-state channel holds: the settled state and the roles of
/// its items, published together.
#[derive(Debug, Clone, Default)]
struct State {
    settled: Settled,
    /// The items of `settled.workload` held as secondaries.
    secondaries: Arc<BTreeSet<WorkId>>,
}

/// What the worker task publishes through. Only the task owns it, so when the
/// task ends in any way (halt, handle dropped, or a panic unwinding it) the
/// senders drop: [`WorkerHandle::ready`], [`WorkloadWatch::changed`] and
/// [`Changes::next`] then end instead of waiting forever.
struct Shared {
    state: watch::Sender<State>,
    leader: watch::Sender<Option<Leader>>,
    contact: watch::Sender<StoreContact>,
    subscribers: SharedSubscribers,
}

impl Shared {
    fn publish(&self, change: &WorkloadChange) {
        let mut subs = lock(&self.subscribers);
        self.state.send_modify(|s| {
            change.apply_to(Arc::make_mut(&mut s.settled.workload));
            change.apply_roles_to(Arc::make_mut(&mut s.secondaries));
            s.settled.revision = change.revision;
            s.settled.ready = true;
        });
        // A subscription whose `Changes` was dropped is held here only.
        subs.list.retain(|sub| Arc::strong_count(sub) > 1);
        let at = tokio::time::Instant::now();
        for sub in &subs.list {
            sub.push(change.clone(), at);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut subs = lock(&self.subscribers);
        subs.closed = true;
        for sub in subs.list.drain(..) {
            sub.close();
        }
    }
}

/// Starts workers.
#[derive(Debug, Clone, Copy)]
pub struct Worker;

impl Worker {
    /// Validates `config` and spawns the worker on the current tokio runtime.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn(
        config: &WorkerConfig,
        kv: Arc<dyn KvWatch>,
        leader: Arc<dyn LeaderWait>,
    ) -> Result<WorkerHandle, ConfigError> {
        Self::spawn_seeded(config, kv, leader, rand::random())
    }

    /// Like [`spawn`](Self::spawn) with a fixed seed for the backoff jitter.
    ///
    /// # Panics
    /// Outside a tokio runtime, as [`spawn`](Self::spawn).
    pub fn spawn_seeded(
        config: &WorkerConfig,
        kv: Arc<dyn KvWatch>,
        leader: Arc<dyn LeaderWait>,
        seed: u64,
    ) -> Result<WorkerHandle, ConfigError> {
        Self::spawn_with_switch(config, kv, leader, seed).map(|(handle, _)| handle)
    }

    /// Like [`spawn_seeded`](Self::spawn_seeded), and also returns the
    /// worker's [`ReleaseSwitch`]: the only way to end a release
    /// ([`WorkerHandle::release`], or [`WorkerConfig::start_released`]).
    /// Whoever holds the switch decides when the workload comes back; a full
    /// member keeps it for its self-fencing and never hands it out, so an
    /// application cannot undo the member's own fencing.
    ///
    /// # Panics
    /// Outside a tokio runtime, as [`spawn`](Self::spawn).
    pub fn spawn_with_switch(
        config: &WorkerConfig,
        kv: Arc<dyn KvWatch>,
        leader: Arc<dyn LeaderWait>,
        seed: u64,
    ) -> Result<(WorkerHandle, ReleaseSwitch), ConfigError> {
        let machine = Machine::new(&config.prefix, &config.instance_id, config.timing()?, seed)?;
        let (state, rx) = watch::channel(State::default());
        let (leader_tx, leader_rx) = watch::channel(None);
        let (contact_tx, contact_rx) = watch::channel(StoreContact::Unknown);
        let (position_tx, position_rx) = watch::channel(0);
        let (hold_tx, hold_rx) = watch::channel(Hold {
            held: config.start_released,
            resync: 0,
        });
        let subscribers = SharedSubscribers::default();
        let shared = Shared {
            state,
            leader: leader_tx,
            contact: contact_tx,
            subscribers: subscribers.clone(),
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let span = tracing::info_span!("worker", instance_id = %config.instance_id);
        let task = tokio::spawn(
            Driver {
                metrics: crate::metrics::WorkerMetrics::new(&config.instance_id),
                machine,
                kv,
                leader,
                shared,
                position: position_tx,
                hold: hold_rx,
                held: config.start_released,
                restoring: None,
                resync_seen: 0,
                resync_owed: false,
            }
            .run(cancel_rx)
            .instrument(span),
        );
        let switch = ReleaseSwitch(Arc::new(hold_tx));
        let handle = WorkerHandle {
            rx,
            leader_rx,
            contact: contact_rx,
            position: position_rx,
            hold: switch.clone(),
            subscribers,
            cancel: Some(cancel_tx),
            task: Some(task),
        };
        Ok((handle, switch))
    }
}

/// Controls a running worker and reads what it settled.
///
/// Dropping the handle stops the worker (without waiting); call
/// [`halt`](Self::halt) to wait until it has stopped.
pub struct WorkerHandle {
    rx: watch::Receiver<State>,
    leader_rx: watch::Receiver<Option<Leader>>,
    contact: watch::Receiver<StoreContact>,
    position: watch::Receiver<Revision>,
    hold: ReleaseSwitch,
    subscribers: SharedSubscribers,
    cancel: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// The current settled workload (empty before the first sync). Cheap: an `Arc` clone.
    pub fn workload(&self) -> Arc<Workload> {
        self.rx.borrow().settled.workload.clone()
    }

    /// The items of the current settled workload held as secondaries
    /// (standbys); every other item is a primary. Empty without replicas.
    /// Cheap: an `Arc` clone. For the workload and its roles at one instant,
    /// apply the [`changes`](Self::changes) to a workload
    /// ([`WorkloadChange::apply_to`]) and a set
    /// ([`WorkloadChange::apply_roles_to`]).
    pub fn secondaries(&self) -> Arc<BTreeSet<WorkId>> {
        self.rx.borrow().secondaries.clone()
    }

    /// The current settled state: workload, revision and whether the first sync happened.
    pub fn settled(&self) -> Settled {
        self.rx.borrow().settled.clone()
    }

    /// The leader as this worker last saw it (`None`: none, or not known yet).
    pub fn leader(&self) -> Option<Leader> {
        self.leader_rx.borrow().clone()
    }

    /// How the worker's latest store request went (see [`StoreContact`]).
    pub fn store_contact(&self) -> StoreContact {
        self.contact.borrow().clone()
    }

    /// A cheap, read-only view of this worker that other tasks can keep
    /// (a health or status endpoint, for instance); see [`WorkerObserver`].
    pub fn observer(&self) -> WorkerObserver {
        WorkerObserver {
            settled: self.rx.clone(),
            leader: self.leader_rx.clone(),
            contact: self.contact.clone(),
            hold: self.hold.0.subscribe(),
        }
    }

    /// A receiver of the leader as this worker sees it, to await its changes.
    pub fn leader_watch(&self) -> watch::Receiver<Option<Leader>> {
        let mut rx = self.leader_rx.clone();
        rx.mark_unchanged();
        rx
    }

    /// The settled position: the store position up to which every change of
    /// this member's assignments has been published to the application
    /// (it moves on even when a change settles to nothing new). What a
    /// member acknowledges. Starts at 0.
    pub fn position(&self) -> watch::Receiver<Revision> {
        self.position.clone()
    }

    /// Releases the whole workload: publishes the empty set (the
    /// application stops every item) and holds further changes back until
    /// restored. Exclusive mode's self-fencing uses it.
    pub fn release(&self) {
        self.hold.release();
    }

    /// True while the workload is released (see [`release`](Self::release)).
    pub fn is_released(&self) -> bool {
        self.hold.is_released()
    }

    /// True once the first settled workload was published.
    pub fn is_ready(&self) -> bool {
        self.rx.borrow().settled.ready
    }

    /// Waits for the first sync and returns the settled workload.
    ///
    /// Cancel safe. Errors when the worker halted before its first sync, or
    /// its task ended otherwise (a panic).
    pub async fn ready(&self) -> Result<Arc<Workload>, Halted> {
        let mut rx = self.rx.clone();
        let s = rx.wait_for(|s| s.settled.ready).await.map_err(|_| Halted)?;
        Ok(s.settled.workload.clone())
    }

    /// A receiver that can await each change of the settled state.
    pub fn watch(&self) -> WorkloadWatch {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        WorkloadWatch { rx }
    }

    /// Every settled change from now on, as `added` / `removed` / `changed`.
    ///
    /// If the first sync already happened, the first item is the whole current
    /// workload as `added` (its secondaries in `added_secondaries`) with
    /// `initial` set, so a consumer that applies the
    /// items in order always holds the settled workload. The stream ends when
    /// the worker halts or its task ends otherwise (a panic); from a worker
    /// that has already ended it is empty. Items queue until read, at most
    /// [`CHANGES_QUEUE`] of them: a subscriber that falls further behind gets
    /// the newest changes coalesced into one ([`WorkloadChange::then`]).
    pub fn changes(&self) -> Changes {
        let sub = Arc::new(Subscription::default());
        let mut subs = lock(&self.subscribers);
        if subs.closed {
            sub.close();
            return Changes::new(sub);
        }
        let State {
            settled: s,
            secondaries,
        } = self.rx.borrow().clone();
        if s.ready {
            sub.push(
                WorkloadChange {
                    revision: s.revision,
                    added: s
                        .workload
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    added_secondaries: secondaries.iter().cloned().collect(),
                    initial: true,
                    ..WorkloadChange::default()
                },
                tokio::time::Instant::now(),
            );
        }
        subs.list.push(sub.clone());
        Changes::new(sub)
    }

    /// Stops the worker: cancels the in-flight store request and the soak
    /// timer, and returns once the background task has ended. Nothing is
    /// published after it returns.
    pub async fn halt(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
        if let Some(t) = self.task.take() {
            if let Err(e) = t.await {
                if e.is_panic() {
                    tracing::error!("the worker task had panicked");
                }
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Releases and restores a worker's workload; from
/// [`Worker::spawn_with_switch`]. Cheap to clone.
///
/// A [`WorkerHandle`] can release its workload but not restore it: only the
/// holder of the switch can. A full member holds its worker's switch for its
/// self-fencing (exclusive mode) and hands it to nobody, so an application
/// that holds the member's [`WorkerHandle`] cannot publish a workload the
/// member has fenced.
#[derive(Debug, Clone)]
pub struct ReleaseSwitch(Arc<watch::Sender<Hold>>);

impl ReleaseSwitch {
    /// Publishes the empty set and holds further changes back.
    pub fn release(&self) {
        self.0
            .send_if_modified(|h| !std::mem::replace(&mut h.held, true));
    }

    /// Ends a release: publishes the settled workload again. With `resync`,
    /// first reads the assignments afresh and lets them settle, so that
    /// nothing revoked while released comes back.
    pub fn restore(&self, resync: bool) {
        self.0.send_modify(|h| {
            h.held = false;
            if resync {
                h.resync += 1;
            }
        });
    }

    /// True while released.
    pub fn is_released(&self) -> bool {
        self.0.borrow().held
    }
}

/// A read-only view of a running worker; from [`WorkerHandle::observer`].
///
/// Cheap to clone and to query (each getter reads a `watch` channel the
/// worker task updates as things happen; nothing asks the store). It does not
/// keep the worker running: once the worker task ends (halt, the handle
/// dropped, or a panic), [`is_running`](Self::is_running) turns false and the
/// getters keep the last values.
#[derive(Debug, Clone)]
pub struct WorkerObserver {
    settled: watch::Receiver<State>,
    leader: watch::Receiver<Option<Leader>>,
    contact: watch::Receiver<StoreContact>,
    hold: watch::Receiver<Hold>,
}

impl WorkerObserver {
    /// True while the worker task runs (it has not halted, been dropped or
    /// panicked).
    pub fn is_running(&self) -> bool {
        !self.settled.is_closed()
    }

    /// The current settled state (see [`WorkerHandle::settled`]).
    pub fn settled(&self) -> Settled {
        self.settled.borrow().settled.clone()
    }

    /// The items of the current settled workload held as secondaries (see
    /// [`WorkerHandle::secondaries`]).
    pub fn secondaries(&self) -> Arc<BTreeSet<WorkId>> {
        self.settled.borrow().secondaries.clone()
    }

    /// True once the first settled workload was published.
    pub fn is_ready(&self) -> bool {
        self.settled.borrow().settled.ready
    }

    /// The leader as this worker last saw it (see [`WorkerHandle::leader`]).
    pub fn leader(&self) -> Option<Leader> {
        self.leader.borrow().clone()
    }

    /// How the worker's latest store request went (see [`StoreContact`]).
    pub fn store_contact(&self) -> StoreContact {
        self.contact.borrow().clone()
    }

    /// True while the workload is released (see [`WorkerHandle::release`]).
    pub fn is_released(&self) -> bool {
        self.hold.borrow().held
    }
}

/// Awaits changes of a worker's settled state; from [`WorkerHandle::watch`].
#[derive(Debug, Clone)]
pub struct WorkloadWatch {
    rx: watch::Receiver<State>,
}

impl WorkloadWatch {
    /// Waits until the settled state changes and returns it. Cancel safe.
    pub async fn changed(&mut self) -> Result<Settled, Halted> {
        self.rx.changed().await.map_err(|_| Halted)?;
        Ok(self.rx.borrow_and_update().settled.clone())
    }

    /// The current settled state.
    pub fn current(&self) -> Settled {
        self.rx.borrow().settled.clone()
    }

    /// The items of the current settled workload held as secondaries (see
    /// [`WorkerHandle::secondaries`]).
    pub fn secondaries(&self) -> Arc<BTreeSet<WorkId>> {
        self.rx.borrow().secondaries.clone()
    }
}

/// The stream of settled changes; from [`WorkerHandle::changes`].
///
/// A [`futures_core::Stream`] of [`WorkloadChange`], so the combinators of
/// `StreamExt` apply; [`Changes::next`] reads one without them.
pub struct Changes {
    sub: Arc<Subscription>,
    /// The wait for the next change, kept between polls.
    wait: Option<BoxFut<()>>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("queued", &self.sub.lock().items.len())
            .finish_non_exhaustive()
    }
}

impl Changes {
    fn new(sub: Arc<Subscription>) -> Self {
        Self { sub, wait: None }
    }

    /// The next change, or `None` once the worker halted (or its task ended
    /// otherwise) and every queued change was read. Cancel safe.
    pub async fn next(&mut self) -> Option<WorkloadChange> {
        self.next_at().await.map(|(change, _)| change)
    }

    /// Like [`next`](Self::next), with the instant the worker published the
    /// change (for changes coalesced in a full queue, the newest's): what a
    /// subscriber that is slow to run measures timings from. Cancel safe.
    pub async fn next_at(&mut self) -> Option<(WorkloadChange, tokio::time::Instant)> {
        std::future::poll_fn(|cx| self.poll_next_at(cx)).await
    }

    /// A change already queued, without waiting.
    pub fn try_next(&mut self) -> Option<WorkloadChange> {
        self.sub.lock().items.pop_front().map(|(change, _)| change)
    }

    /// Polls for the next change and when it was published.
    fn poll_next_at(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<(WorkloadChange, tokio::time::Instant)>> {
        use std::task::Poll;
        loop {
            {
                let mut q = self.sub.lock();
                if let Some(item) = q.items.pop_front() {
                    return Poll::Ready(Some(item));
                }
                if q.closed {
                    self.wait = None;
                    return Poll::Ready(None);
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a change
            // queued between the check above and this wait is not missed.
            let wait = self.wait.get_or_insert_with(|| {
                let sub = Arc::clone(&self.sub);
                Box::pin(async move { sub.ready.notified().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => self.wait = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl futures_core::Stream for Changes {
    type Item = WorkloadChange;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WorkloadChange>> {
        self.get_mut()
            .poll_next_at(cx)
            .map(|item| item.map(|(change, _)| change))
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The release switch: held, and how many resyncing restores were asked.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    held: bool,
    resync: u64,
}

/// A restore that reads afresh first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restoring {
    /// Waiting for the list asked for.
    Listing,
    /// Listed: waiting for what it showed to settle.
    Settling,
}

enum KvDone {
    Listed(Result<Snapshot, StoreError>),
    Opened(Result<Box<dyn KvStream>, StoreError>),
    Event(Box<dyn KvStream>, Result<WatchEvent, StoreError>),
}

enum LeaderDone {
    Opened(Result<Box<dyn LeaderStream>, StoreError>),
    Next(Box<dyn LeaderStream>, Result<Option<Leader>, StoreError>),
}

fn next_event(mut stream: Box<dyn KvStream>) -> BoxFut<KvDone> {
    Box::pin(async move {
        let r = stream.next().await;
        KvDone::Event(stream, r)
    })
}

fn next_leader(mut stream: Box<dyn LeaderStream>) -> BoxFut<LeaderDone> {
    Box::pin(async move {
        let r = stream.next().await;
        LeaderDone::Next(stream, r)
    })
}

async fn maybe<T>(op: &mut Option<BoxFut<T>>) -> T {
    match op {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

struct Driver {
    metrics: crate::metrics::WorkerMetrics,
    machine: Machine,
    kv: Arc<dyn KvWatch>,
    leader: Arc<dyn LeaderWait>,
    shared: Shared,
    position: watch::Sender<Revision>,
    hold: watch::Receiver<Hold>,
    /// The application holds nothing (released, or restoring).
    held: bool,
    restoring: Option<Restoring>,
    resync_seen: u64,
    /// A resync was asked for and a release cut it short.
    resync_owed: bool,
}

impl Driver {
    async fn run(mut self, mut cancel: oneshot::Receiver<()>) {
        info!(prefix = self.machine.member_prefix(), "worker started");
        let prefix: Arc<str> = Arc::from(self.machine.member_prefix());
        let mut kv_op: Option<BoxFut<KvDone>> = None;
        let mut leader_op: Option<BoxFut<LeaderDone>> = None;
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<std::time::Instant> = None;
        loop {
            while let Some(action) = self.machine.poll() {
                match action {
                    Action::List => {
                        let (kv, p) = (self.kv.clone(), prefix.clone());
                        kv_op = Some(Box::pin(async move { KvDone::Listed(kv.list(&p).await) }));
                    }
                    Action::Watch { after } => {
                        let (kv, p) = (self.kv.clone(), prefix.clone());
                        kv_op = Some(Box::pin(async move {
                            KvDone::Opened(kv.watch(&p, after).await)
                        }));
                    }
                    Action::ObserveLeader => {
                        let l = self.leader.clone();
                        leader_op = Some(Box::pin(
                            async move { LeaderDone::Opened(l.observe().await) },
                        ));
                    }
                    Action::Publish(change) if self.held => {
                        debug!(
                            revision = change.revision,
                            "workload settled while released: held back"
                        );
                    }
                    Action::Publish(change) => self.publish(&change),
                    Action::IgnoredKey { key, reason } => {
                        let key = String::from_utf8_lossy(&key);
                        if reason == ForeignReason::OtherPrefix {
                            debug!(%key, %reason, "ignoring key that is not an assignment");
                        } else {
                            // Under this member's own prefix: somebody meant it
                            // for this member, and it will never be published.
                            warn!(%key, %reason, "ignoring key under this member's prefix: it is not an assignment");
                        }
                    }
                }
            }
            if self.restoring == Some(Restoring::Settling)
                && self.machine.settled_position().is_some()
            {
                self.restoring = None;
                self.held = false;
                self.publish_to(&self.machine.settled(), &self.machine.settled_secondaries());
                info!("workload restored after a fresh read");
            }
            if let Some(p) = self.machine.settled_position() {
                self.position.send_if_modified(|cur| {
                    let newer = p > *cur;
                    if newer {
                        *cur = p;
                    }
                    newer
                });
            }
            self.metrics.pending(self.machine.is_pending());
            let deadline = self.machine.poll_timeout();
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(Instant::from_std(d));
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                _ = &mut cancel => break,
                Ok(()) = self.hold.changed() => {
                    let hold = *self.hold.borrow_and_update();
                    self.on_hold(hold);
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.machine.handle_timeout(now());
                }
                done = maybe(&mut leader_op) => {
                    leader_op = None;
                    self.on_leader(done, &mut leader_op);
                }
                done = maybe(&mut kv_op) => {
                    kv_op = None;
                    self.on_kv(done, &mut kv_op);
                }
            }
        }
        self.machine.halt();
        info!("worker halted");
    }

    fn on_hold(&mut self, hold: Hold) {
        // A resync asked for and not finished still applies to the next
        // restore, even one that does not ask for it.
        let resync = hold.resync != self.resync_seen || self.resync_owed;
        self.resync_seen = hold.resync;
        if hold.held {
            if self.restoring.is_some() || resync {
                self.resync_owed = true;
            }
            self.restoring = None;
            if !self.held {
                self.held = true;
                warn!("releasing the whole workload");
                self.publish_to(&Workload::new(), &BTreeSet::new());
            }
        } else if resync {
            self.resync_owed = false;
            self.restoring = Some(Restoring::Listing);
            self.machine.resync();
        } else if self.held && self.restoring.is_none() {
            self.held = false;
            self.publish_to(&self.machine.settled(), &self.machine.settled_secondaries());
            info!("workload restored");
        }
    }

    /// Publishes what turns the application's workload into `target`, with
    /// the items of `secondaries` held as secondaries.
    fn publish_to(&mut self, target: &Workload, secondaries: &BTreeSet<WorkId>) {
        let (current, current_secondaries, ready) = {
            let s = self.shared.state.borrow();
            (
                s.settled.workload.clone(),
                s.secondaries.clone(),
                s.settled.ready,
            )
        };
        let mut change = WorkloadChange {
            revision: self.machine.observed_revision(),
            initial: !ready,
            ..WorkloadChange::default()
        };
        for (id, v) in target {
            let secondary = secondaries.contains(id);
            match current.get(id) {
                None => {
                    if secondary {
                        change.added_secondaries.push(id.clone());
                    }
                    change.added.push((id.clone(), v.clone()));
                }
                Some(old) => {
                    match (current_secondaries.contains(id), secondary) {
                        (true, false) => change.promoted.push(id.clone()),
                        (false, true) => change.demoted.push(id.clone()),
                        _ => {}
                    }
                    if old != v {
                        change.changed.push((id.clone(), v.clone()));
                    }
                }
            }
        }
        for id in current.keys() {
            if !target.contains_key(id) {
                change.removed.push(id.clone());
            }
        }
        if !change.is_empty() || (!ready && self.machine.is_synced()) {
            self.publish(&change);
        }
    }

    /// Hands `change` to the application: logged, published, counted.
    fn publish(&mut self, change: &WorkloadChange) {
        info!(
            revision = change.revision,
            added = change.added.len(),
            removed = change.removed.len(),
            changed = change.changed.len(),
            promoted = change.promoted.len(),
            demoted = change.demoted.len(),
            initial = change.initial,
            "workload settled"
        );
        self.shared.publish(change);
        let settled_items = self.shared.state.borrow().settled.workload.len();
        self.metrics.published(settled_items);
    }

    /// Records the outcome of a completed store request (`Some(error)`: it
    /// failed). Opening a stream is not one: it may not have asked anything.
    fn contact(&self, error: Option<&StoreError>) {
        self.shared.contact.send_if_modified(|cur| {
            let next = match error {
                None => StoreContact::Reachable,
                Some(e) => StoreContact::Unreachable(ErrorChain(e).to_string().into()),
            };
            let modified = *cur != next;
            if modified {
                *cur = next;
            }
            modified
        });
    }

    fn on_leader(&mut self, done: LeaderDone, op: &mut Option<BoxFut<LeaderDone>>) {
        let result = match done {
            LeaderDone::Opened(Ok(stream)) => {
                *op = Some(next_leader(stream));
                return;
            }
            LeaderDone::Next(stream, Ok(l)) => {
                *op = Some(next_leader(stream));
                Ok(l)
            }
            LeaderDone::Opened(Err(e)) | LeaderDone::Next(_, Err(e)) => Err(e),
        };
        match result {
            Ok(l) => {
                self.contact(None);
                let before = self.machine.leader().cloned();
                if before != l {
                    self.metrics.leader_changed();
                    if let Some(l) = &l {
                        info!(leader = %l.id, term = l.term, "leader present");
                    } else {
                        info!("no leader: holding the settled workload until one exists");
                    }
                }
                self.shared.leader.send_if_modified(|cur| {
                    let modified = *cur != l;
                    cur.clone_from(&l);
                    modified
                });
                self.machine.handle_leader(now(), l);
            }
            Err(e) => {
                self.contact(Some(&e));
                self.metrics.store_error("leader", &e);
                let delay = self.machine.handle_leader_error(now());
                warn!(error = %ErrorChain(&e), retry_in = ?delay, "leader observation failed");
            }
        }
    }

    fn on_kv(&mut self, done: KvDone, op: &mut Option<BoxFut<KvDone>>) {
        let error = match done {
            KvDone::Listed(Ok(snapshot)) => {
                self.contact(None);
                if self.restoring == Some(Restoring::Listing) {
                    self.restoring = Some(Restoring::Settling);
                }
                debug!(
                    revision = snapshot.revision,
                    keys = snapshot.entries.len(),
                    "listed"
                );
                self.machine.handle_list(now(), &snapshot);
                return;
            }
            KvDone::Opened(Ok(stream)) => {
                *op = Some(next_event(stream));
                return;
            }
            KvDone::Event(stream, Ok(event)) => {
                self.contact(None);
                if let WatchEvent::Lost { reason } = &event {
                    info!(%reason, "watch position lost: relisting");
                    self.metrics.relist();
                } else {
                    // Keep reading unless the machine asks for something else
                    // (a List or Watch action replaces this future).
                    *op = Some(next_event(stream));
                }
                self.machine.handle_watch(now(), event);
                return;
            }
            KvDone::Listed(Err(e)) | KvDone::Opened(Err(e)) | KvDone::Event(_, Err(e)) => e,
        };
        self.contact(Some(&error));
        self.metrics.store_error("assignments", &error);
        let delay = self.machine.handle_kv_error(now());
        warn!(
            error = %ErrorChain(&error),
            retry_in = ?delay,
            failures = self.machine.kv_failures(),
            "reading assignments failed; keeping the settled workload"
        );
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}
