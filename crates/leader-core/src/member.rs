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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};
use worker_core::{
    validate_instance_id, ConfigError, Election, ErrorChain, Fence, FencedWrite, KvWatch, KvWrite,
    LeaderStream, LeaderWait, Membership, ReleaseSwitch, Revision, SessionId, StoreContact,
    StoreError, WorkId, Worker, WorkerConfig, WorkerHandle, WorkerObserver, WorkloadWatch,
};

use crate::layout::{Layout, MemberMeta};
use crate::leader::{run_leader, LeaderCtx, LeaderExit};
use crate::machine::{LeaderTiming, PlanReport};
use crate::membership::{MemberAction, MemberMachine, MemberTiming};
use crate::plan::MemberId;

/// The default session / lease TTL: 5 s. With the default leader soak
/// ([`DEFAULT_LEADER_SOAK`](crate::DEFAULT_LEADER_SOAK)) and worker soak, a
/// dead member's items are settled on the others within 10 s; the member
/// renews every TTL/3, so three renewals in a row must fail before a live
/// member is taken for dead. On Consul it needs sessions bound to an agent
/// check (below 10 s a plain session TTL is refused); see `docs/leader.md`,
/// "Failover with the defaults".
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The default `leader_settle` of a member's worker: 2 s, the default leader
/// soak and a second more. A new leader plans once its soak is over and its
/// writes are fenced, so a member's worker need not wait the 5 s a worker
/// following an unknown leader waits ([`WorkerConfig::new`]).
pub const DEFAULT_MEMBER_LEADER_SETTLE: Duration = Duration::from_secs(2);

/// The default drain timeout.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// The worker's settings; its `instance_id` is the member's id and its
    /// `prefix` must equal `layout.assignments`. Its `leader_settle`
    /// defaults to [`DEFAULT_MEMBER_LEADER_SETTLE`].
    pub worker: WorkerConfig,
    /// Where the keys live. Default [`Layout::default`].
    pub layout: Layout,
    /// What the member key says (weight). Default weight 1.
    pub meta: MemberMeta,
    /// Session / lease TTL. Default [`DEFAULT_TTL`] (on Consul, below 10 s
    /// only with sessions bound to an agent check).
    pub ttl: Duration,
    /// The leader's soak and retry timing. Default
    /// [`DEFAULT_LEADER_SOAK`](crate::DEFAULT_LEADER_SOAK).
    pub leader: LeaderTiming,
    /// Whether this member may lead. Default true.
    pub campaign: bool,
    /// Exclusive mode: `Some(margin)`. See [`MemberConfig::exclusive`].
    pub exclusive: Option<Duration>,
    /// How long a drain waits for the items to move away before the member
    /// leaves anyway. Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// The application acknowledges settled changes itself
    /// ([`MemberHandle::ack`]); otherwise a change counts as applied once
    /// published. Default false.
    pub manual_ack: bool,
    /// Take part in the acknowledged handoff (report `acked`). With false,
    /// moves away from this member do not wait for it: faster, but the old
    /// and the new owner may both hold an item for a moment. Default true.
    pub handoff: bool,
}

impl MemberConfig {
    /// A member `instance_id` with every other setting at its default.
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self {
            worker: WorkerConfig::new(instance_id).leader_settle(DEFAULT_MEMBER_LEADER_SETTLE),
            layout: Layout::default(),
            meta: MemberMeta::default(),
            ttl: DEFAULT_TTL,
            leader: LeaderTiming::default(),
            campaign: true,
            exclusive: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            manual_ack: false,
            handoff: true,
        }
    }

    /// The member's id.
    pub fn instance_id(&self) -> &str {
        &self.worker.instance_id
    }

    /// Sets the key layout (and the worker's prefix with it).
    #[must_use]
    pub fn layout(mut self, layout: Layout) -> Self {
        self.worker.prefix.clone_from(&layout.assignments);
        self.layout = layout;
        self
    }

    /// Sets the member's weight.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.meta.weight = weight;
        self
    }

    /// Sets the session TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long a departed member's items stay assigned to it (see
    /// [`LeaderTiming::rebalance_delay`]).
    #[must_use]
    pub fn rebalance_delay(mut self, delay: Duration) -> Self {
        self.leader.rebalance_delay = delay;
        self
    }

    /// Sets how many items may be in handoff at once (see
    /// [`LeaderTiming::max_moves_in_flight`]).
    #[must_use]
    pub fn max_moves_in_flight(mut self, n: usize) -> Self {
        self.leader.max_moves_in_flight = n.max(1);
        self
    }

    /// Exclusive mode with a safety `margin`: an item is never in two
    /// members' acknowledged workloads at once. This member releases its
    /// whole workload `margin` before its lease deadline unless it renewed
    /// (and starts released until registered) or at once when it learns its
    /// session is gone; as leader, it gives the items of a member that is
    /// gone to another only that member's whole TTL after its key vanished
    /// (the store may end a session early while the member, cut off, still
    /// believes in it). Every member of a cluster must use the same setting.
    #[must_use]
    pub fn exclusive(mut self, margin: Duration) -> Self {
        self.exclusive = Some(margin);
        self.leader.exclusive = Some(margin);
        self.worker.start_released = true;
        self
    }

    /// Sets how long a move from a live member may wait for its
    /// acknowledgement before the leader ends that member's session (see
    /// [`LeaderTiming::handoff_timeout`]).
    #[must_use]
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.leader.handoff_timeout = timeout;
        self
    }

    /// Sets the drain timeout.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The application acknowledges settled changes with
    /// [`MemberHandle::ack`] (for example after it applied them).
    #[must_use]
    pub fn manual_ack(mut self, manual: bool) -> Self {
        self.manual_ack = manual;
        self
    }

    /// Whether to take part in the acknowledged handoff (see
    /// [`MemberConfig::handoff`](Self#structfield.handoff)).
    #[must_use]
    pub fn handoff(mut self, on: bool) -> Self {
        self.handoff = on;
        self
    }

    /// Sets the leader's soak (and max soak = 10 × soak).
    #[must_use]
    pub fn leader_soak(mut self, soak: Duration) -> Self {
        let t = self.leader;
        self.leader = LeaderTiming {
            soak,
            max_soak: soak.saturating_mul(10),
            ..t
        };
        self
    }

    /// Sets the worker's soak and leader settle.
    #[must_use]
    pub fn worker_timing(mut self, soak: Duration, leader_settle: Duration) -> Self {
        self.worker = self.worker.soak(soak).leader_settle(leader_settle);
        self
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_instance_id(self.instance_id())?;
        self.layout.validate()?;
        if self.worker.prefix != self.layout.assignments {
            return Err(ConfigError::new(
                "prefix",
                "the worker's prefix must be the layout's assignments prefix",
            ));
        }
        if self.ttl < Duration::from_millis(30) {
            return Err(ConfigError::new("ttl", "must be at least 30ms"));
        }
        if self.leader.max_moves_in_flight == 0 {
            return Err(ConfigError::new(
                "max_moves_in_flight",
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        if self.leader.max_soak < self.leader.soak {
            return Err(ConfigError::new(
                "leader_soak",
                format!(
                    "the leader's max soak ({:?}) is shorter than its soak ({:?})",
                    self.leader.max_soak, self.leader.soak
                ),
            ));
        }
        if self.leader.backoff_min.is_zero() || self.leader.backoff_min > self.leader.backoff_max {
            return Err(ConfigError::new(
                "leader.backoff_min",
                "must be more than 0 and at most leader.backoff_max",
            ));
        }
        // Exclusive mode is one setting seen in three places: the member
        // (self-fencing), its worker (starts released) and its leader (waits
        // before giving a gone member's items away). `exclusive()` sets all
        // three; fields set one by one must agree.
        if self.leader.exclusive != self.exclusive {
            return Err(ConfigError::new(
                "exclusive",
                format!(
                    "the member's exclusive margin ({:?}) and its leader's ({:?}) differ; set both with MemberConfig::exclusive",
                    self.exclusive, self.leader.exclusive
                ),
            ));
        }
        if self.exclusive.is_some() != self.worker.start_released {
            let why = if self.exclusive.is_some() {
                "exclusive mode needs the worker to start released (worker.start_released = true); set it with MemberConfig::exclusive"
            } else {
                "worker.start_released is only for exclusive mode: a member's worker that starts released would never be restored"
            };
            return Err(ConfigError::new("exclusive", why));
        }
        if self.leader.handoff_timeout.is_zero() {
            return Err(ConfigError::new("handoff_timeout", "must be more than 0"));
        }
        if self.exclusive.is_some() && !self.handoff {
            return Err(ConfigError::new(
                "exclusive",
                "needs the acknowledged handoff (handoff = true)",
            ));
        }
        if let Some(margin) = self.exclusive {
            if margin.is_zero() || margin >= self.ttl / 2 {
                return Err(ConfigError::new(
                    "exclusive_margin",
                    format!(
                        "{margin:?} must be more than 0 and less than half the TTL ({:?})",
                        self.ttl / 2
                    ),
                ));
            }
        }
        self.worker.timing()?;
        Ok(())
    }
}

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
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberStore")
    }
}

/// Spawns members.
#[derive(Debug)]
pub struct Member;

impl Member {
    /// Starts a member on the current tokio runtime.
    pub fn spawn(config: &MemberConfig, store: &MemberStore) -> Result<MemberHandle, ConfigError> {
        config.validate()?;
        let min_ttl = store.membership.min_ttl();
        if config.ttl < min_ttl {
            return Err(ConfigError::new(
                "ttl",
                format!(
                    "{:?} is below this store's shortest session TTL ({min_ttl:?}): the store would round it up, and the member would be wrong about its lease",
                    config.ttl
                ),
            ));
        }
        // The release switch stays with the member (its self-fencing); the
        // application's handle can release the workload but not restore it.
        let (worker, switch) = Worker::spawn_with_switch(
            &config.worker,
            store.kv.clone(),
            store.leader.clone(),
            rand::random(),
        )?;
        let (leading_tx, leading_rx) = watch::channel(None);
        crate::metrics::follow_leading(config.instance_id(), leading_rx.clone());
        let (plans, _) = broadcast::channel(64);
        let (halt_tx, halt_rx) = watch::channel(Stop::Running);
        let (ack_tx, ack_rx) = watch::channel(0);
        let (acked_tx, acked_rx) = watch::channel(None);
        let (contact_tx, contact_rx) = watch::channel(StoreContact::Unknown);
        let (handoffs_tx, handoffs_rx) = watch::channel(Arc::from([]));
        let (draining_tx, draining_rx) = watch::channel(false);
        let observer = MemberObserver {
            worker: worker.observer(),
            leading: leading_rx.clone(),
            acked: acked_rx.clone(),
            contact: contact_rx,
            handoffs: handoffs_rx,
            draining: draining_rx,
        };
        let span = tracing::info_span!("member", instance_id = %config.instance_id());
        let task = tokio::spawn(
            MemberTask {
                config: config.clone(),
                store: store.clone(),
                leading: leading_tx,
                plans: plans.clone(),
                position: worker.position(),
                settled: worker.watch(),
                switch,
                app_ack: ack_rx,
                acked: acked_tx,
                contact: contact_tx,
                handoffs: handoffs_tx,
                draining: draining_tx,
            }
            .run(halt_rx)
            .instrument(span),
        );
        Ok(MemberHandle {
            worker: Some(worker),
            leading: leading_rx,
            plans,
            halt: Some(halt_tx),
            task: Some(task),
            outcome: None,
            ack: Acker(Arc::new(ack_tx)),
            acked: acked_rx,
            observer,
        })
    }
}

fn seed(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What the member task is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    Drain,
    Halt,
}

/// How a member left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It left at once (halt), or was stopped before it could drain.
    Halted,
    /// It drained: it held nothing, acknowledged, then left.
    Drained,
    /// The drain timeout ran out first; it left holding what it still held.
    DrainTimedOut,
}

/// A running member.
#[derive(Debug)]
pub struct MemberHandle {
    /// Always `Some` until `halt` / `kill` consume the handle.
    worker: Option<WorkerHandle>,
    leading: watch::Receiver<Option<Fence>>,
    plans: broadcast::Sender<PlanReport>,
    halt: Option<watch::Sender<Stop>>,
    task: Option<JoinHandle<Left>>,
    outcome: Option<Left>,
    ack: Acker,
    acked: watch::Receiver<Option<Revision>>,
    observer: MemberObserver,
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

/// A read-only view of a running member; from [`MemberHandle::observer`].
///
/// Cheap to clone and to query: each getter reads a `watch` channel the
/// member's tasks update as things happen; nothing asks the store. It does
/// not keep the member running; once its tasks end the getters keep the last
/// values and [`is_running`](Self::is_running) turns false.
#[derive(Debug, Clone)]
pub struct MemberObserver {
    worker: WorkerObserver,
    leading: watch::Receiver<Option<Fence>>,
    acked: watch::Receiver<Option<Revision>>,
    contact: watch::Receiver<StoreContact>,
    handoffs: watch::Receiver<Arc<[Handoff]>>,
    draining: watch::Receiver<bool>,
}

impl MemberObserver {
    /// The member's worker: settled workload, readiness, the leader it
    /// sees, its store contact.
    pub fn worker(&self) -> &WorkerObserver {
        &self.worker
    }

    /// True while the member task and its worker's task both run.
    pub fn is_running(&self) -> bool {
        !self.leading.is_closed() && self.worker.is_running()
    }

    /// True while this member leads.
    pub fn is_leader(&self) -> bool {
        self.leading.borrow().is_some()
    }

    /// The acknowledged position as last written to the store (see
    /// [`MemberHandle::acked`]).
    pub fn acked(&self) -> Option<Revision> {
        *self.acked.borrow()
    }

    /// How the member task's latest store request went: registering,
    /// renewing the session, writing the member key, campaigning, observing
    /// the leadership. Its worker's requests are in
    /// [`worker().store_contact()`](WorkerObserver::store_contact).
    pub fn store_contact(&self) -> StoreContact {
        self.contact.borrow().clone()
    }

    /// While this member leads: every move in flight (revoked from its old
    /// owner, not yet given to the new one), by item. Empty otherwise: a
    /// member that does not lead does not read the handoff records.
    pub fn handoffs(&self) -> Arc<[Handoff]> {
        self.handoffs.borrow().clone()
    }

    /// True once the member drains (asked by [`MemberHandle::start_drain`]
    /// or a drain request key) until it leaves.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// Acknowledges settled changes for a member; from [`MemberHandle::acker`].
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Acker(Arc<watch::Sender<Revision>>);

impl Acker {
    /// See [`MemberHandle::ack`].
    pub fn ack(&self, revision: Revision) {
        self.0.send_if_modified(|cur| {
            let newer = revision > *cur;
            if newer {
                *cur = revision;
            }
            newer
        });
    }
}

impl MemberHandle {
    /// The member's worker: its settled workload, changes, readiness.
    pub fn worker(&self) -> &WorkerHandle {
        self.worker.as_ref().expect("present until halt")
    }

    /// True while this member leads.
    pub fn is_leader(&self) -> bool {
        self.leading.borrow().is_some()
    }

    /// Follows whether this member leads (`Some(fence)` while it does).
    pub fn leading(&self) -> watch::Receiver<Option<Fence>> {
        self.leading.clone()
    }

    /// Every plan this member makes while it leads.
    pub fn plans(&self) -> broadcast::Receiver<PlanReport> {
        self.plans.subscribe()
    }

    /// With [`MemberConfig::manual_ack`]: the application has applied every
    /// settled change up to the one at `revision` (its
    /// [`WorkloadChange::revision`](worker_core::WorkloadChange)). The member
    /// reports it in its member key; the leader moves an item away from this
    /// member only once the report reaches the revoke. Acknowledging the
    /// latest change also covers any later position at which nothing changed.
    pub fn ack(&self, revision: Revision) {
        self.ack.ack(revision);
    }

    /// A cheap handle that acknowledges for this member (see
    /// [`ack`](Self::ack)), for a task of the application.
    pub fn acker(&self) -> Acker {
        self.ack.clone()
    }

    /// The acknowledged position as last written to the store (`None` until
    /// the first write).
    pub fn acked(&self) -> watch::Receiver<Option<Revision>> {
        self.acked.clone()
    }

    /// A cheap, read-only view of this member (and its worker) that other
    /// tasks can keep, for a health or status endpoint; see
    /// [`MemberObserver`].
    pub fn observer(&self) -> MemberObserver {
        self.observer.clone()
    }

    /// Asks the member to drain and leave, without waiting: it marks itself
    /// draining in its member key, so that the leader moves its items to the
    /// others through the acknowledged handoff; once it holds nothing and has
    /// acknowledged that (or after [`MemberConfig::drain_timeout`]) it leaves
    /// as [`halt`](Self::halt) does. Await [`left`](Self::left) for the end.
    pub fn start_drain(&self) {
        if let Some(tx) = &self.halt {
            tx.send_if_modified(|s| {
                let running = *s == Stop::Running;
                if running {
                    *s = Stop::Drain;
                }
                running
            });
        }
    }

    /// Waits until the member has left (after a drain, a halt, or its task
    /// ended otherwise) and says how. Cancel safe.
    pub async fn left(&mut self) -> Left {
        if let Some(task) = &mut self.task {
            let left = task.await.unwrap_or(Left::Halted);
            self.task = None;
            self.outcome = Some(left);
        }
        self.outcome.unwrap_or(Left::Halted)
    }

    /// Leaves cleanly: stops leading and resigns, halts the worker, closes
    /// the session (the member key goes with it). Returns once all of it is
    /// done or, for the store calls, has failed (a session that cannot be
    /// closed expires by its TTL). Cuts a drain short.
    pub async fn halt(mut self) -> Left {
        if let Some(tx) = &self.halt {
            let _ = tx.send(Stop::Halt);
        }
        self.finish().await
    }

    /// [`start_drain`](Self::start_drain), then waits until the member has
    /// left and its worker halted.
    pub async fn drain(mut self) -> Left {
        self.start_drain();
        self.finish().await
    }

    async fn finish(&mut self) -> Left {
        let left = self.left().await;
        if let Some(worker) = self.worker.take() {
            worker.halt().await;
        }
        left
    }

    /// Stops everything at once without leaving: no resignation, no session
    /// close, as if the process had been killed. The session expires by its
    /// TTL. For tests and simulations.
    pub async fn kill(mut self) {
        // Abort first: dropping the halt sender while the task runs (on
        // another worker thread) would let it see the closed channel as a
        // halt and destroy its session before the abort lands.
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.halt.take();
        if let Some(worker) = self.worker.take() {
            worker.halt().await;
        }
    }
}

impl Drop for MemberHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct MemberTask {
    config: MemberConfig,
    store: MemberStore,
    leading: watch::Sender<Option<Fence>>,
    plans: broadcast::Sender<PlanReport>,
    /// The worker's settled position.
    position: watch::Receiver<Revision>,
    /// The worker's settled state (its revision, and whether it is empty).
    settled: WorkloadWatch,
    switch: ReleaseSwitch,
    /// What the application acknowledged (manual ack).
    app_ack: watch::Receiver<Revision>,
    /// The acknowledged position written to the store.
    acked: watch::Sender<Option<Revision>>,
    /// How the member task's latest store request went.
    contact: watch::Sender<StoreContact>,
    /// The moves in flight while leading (the leader loop writes them).
    handoffs: watch::Sender<Arc<[Handoff]>>,
    /// Whether the member drains.
    draining: watch::Sender<bool>,
}

struct Leading {
    fence: Fence,
    stop: watch::Sender<bool>,
    task: JoinHandle<LeaderExit>,
}

type Call<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Awaits an optional in-flight call (never ready when there is none).
async fn in_flight<T>(call: &mut Option<Call<T>>) -> Result<T, StoreError> {
    match call.as_mut() {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

impl MemberTask {
    /// Closes the sessions given up on (best effort), then opens a session
    /// and writes the member key, naming it, bound to it.
    fn register(
        &self,
        mut meta: MemberMeta,
        stale: Vec<SessionId>,
    ) -> Call<(SessionId, MemberMeta)> {
        let membership = self.store.membership.clone();
        let (ttl, key) = (
            self.config.ttl,
            self.config.layout.member_key(self.config.instance_id()),
        );
        Box::pin(async move {
            for old in stale {
                // On Consul a lingering session would hold the member key
                // (and the leader key) until it expires, up to 2 × TTL.
                if let Err(e) = membership.close_session(&old).await {
                    debug!(session = %old, error = %ErrorChain(&e), "closing the old session failed; it expires by its TTL");
                }
            }
            let session = membership.open_session(ttl).await?;
            meta.session = Some(session.0.clone());
            match membership.put_bound(&session, &key, meta.to_bytes()).await {
                Ok(true) => Ok((session, meta)),
                other => {
                    let _ = membership.close_session(&session).await;
                    Err(other.err().unwrap_or_else(|| {
                        StoreError::protocol(format!("member key {key} is held by another session"))
                    }))
                }
            }
        })
    }

    fn start_leading(&self, fence: Fence) -> Leading {
        let (stop, stop_rx) = watch::channel(false);
        let ctx = LeaderCtx {
            layout: self.config.layout.clone(),
            timing: LeaderTiming {
                member_ttl: self.config.ttl,
                ..self.config.leader
            },
            fence: fence.clone(),
            kv: self.store.kv.clone(),
            writer: self.store.writer.clone(),
            membership: self.store.membership.clone(),
            plans: self.plans.clone(),
            handoffs: self.handoffs.clone(),
            instance_id: self.config.instance_id().to_owned(),
        };
        let task = tokio::spawn(run_leader(ctx, stop_rx).in_current_span());
        self.leading.send_replace(Some(fence.clone()));
        Leading { fence, stop, task }
    }

    async fn stop_leading(&self, leading: &mut Option<Leading>, resign: Option<Fence>) {
        if let Some(l) = leading.take() {
            let _ = l.stop.send(true);
            let _ = l.task.await;
            self.leading.send_replace(None);
            self.clear_handoffs();
            info!(term = l.fence.term(), "no longer leading");
        }
        if let Some(fence) = resign {
            if let Err(e) = self.store.election.resign(&fence).await {
                debug!(error = %ErrorChain(&e), "resigning failed");
            }
        }
    }

    /// Not leading: no moves in flight known.
    fn clear_handoffs(&self) {
        self.handoffs.send_if_modified(|h| {
            let had = !h.is_empty();
            *h = Arc::from([]);
            had
        });
        // The leader's gauges say nothing once this member no longer leads:
        // a stale count would page someone about another leader's cluster.
        let id = self.config.instance_id();
        crate::metrics::handoffs(id, 0);
        crate::metrics::refused(id, 0);
        crate::metrics::unowned(id, 0);
    }

    /// Records the outcome of a completed store request of the member task
    /// (`Some(error)`: it failed).
    fn contact(&self, error: Option<&StoreError>) {
        let next = match error {
            None => StoreContact::Reachable,
            Some(e) => StoreContact::Unreachable(ErrorChain(e).to_string().into()),
        };
        self.contact.send_if_modified(|cur| {
            let modified = *cur != next;
            if modified {
                *cur = next;
            }
            modified
        });
    }

    /// Waits (at most the margin) until the worker has published its release.
    async fn wait_released(&self) {
        let mut settled = self.settled.clone();
        let bound = self.config.exclusive.unwrap_or_default();
        let published = async {
            while !settled.current().workload.is_empty() {
                if settled.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(bound, published).await;
    }

    /// The member key's value as it should be now, for `session`.
    fn meta_now(&self, draining: bool, session: Option<&SessionId>) -> MemberMeta {
        let mut meta = self.config.meta.clone();
        meta.draining = draining;
        meta.session = session.map(|s| s.0.clone());
        meta.ttl_ms = Some(u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX));
        meta.acked = self.config.handoff.then(|| self.effective_ack());
        meta
    }

    /// How far the application has applied its assignments.
    fn effective_ack(&self) -> Revision {
        let position = *self.position.borrow();
        if !self.config.manual_ack {
            return position;
        }
        let app = *self.app_ack.borrow();
        let published = self.settled.current().revision;
        if app >= published {
            // The latest change is applied: so is every later position at
            // which nothing changed.
            position.max(app)
        } else {
            app
        }
    }

    /// Carries out what the [`MemberMachine`] asks for and feeds it what
    /// happens, with one timer.
    #[allow(clippy::too_many_lines)] // one select loop; its arms read best together
    async fn run(mut self, mut stop: watch::Receiver<Stop>) -> Left {
        let timing = MemberTiming {
            ttl: self.config.ttl,
            backoff_min: self.config.worker.backoff_min,
            backoff_max: self.config.worker.backoff_max,
            exclusive: self.config.exclusive,
        };
        let mut machine = MemberMachine::new(
            timing,
            self.config.campaign,
            seed(self.config.instance_id()),
            Instant::now(),
        );
        let election = self.config.layout.leader.clone();
        let instance_id = self.config.instance_id().to_owned();
        let member_key = self.config.layout.member_key(&instance_id);
        let drain_key = self.config.layout.drain_key(&instance_id);
        let backoff = (
            self.config.worker.backoff_min,
            self.config.worker.backoff_max,
        );
        let (mut drain_requests, drain_task) =
            crate::follow::spawn_follow(self.store.kv.clone(), drain_key.clone(), backoff);
        let _drain_task = AbortOnDrop(drain_task);
        // Its own member key: a session the store ended (an operator, a node
        // deregistration) shows as the key vanishing.
        let (mut own_key, own_task) =
            crate::follow::spawn_follow(self.store.kv.clone(), member_key.clone(), backoff);
        let _own_task = AbortOnDrop(own_task);
        // The live session as last seen in the member key.
        let mut seen_key: Option<SessionId> = None;
        // Sessions given up on, closed before the next registration.
        let mut stale: Vec<SessionId> = Vec::new();
        let mut registering: Option<Call<(SessionId, MemberMeta)>> = None;
        let mut renewing: Option<Call<bool>> = None;
        let mut campaigning: Option<Call<Option<Fence>>> = None;
        let mut opening: Option<Call<Box<dyn LeaderStream>>> = None;
        let mut stream: Option<Box<dyn LeaderStream>> = None;
        let mut leading: Option<Leading> = None;
        let mut meta_write: Option<Call<(bool, MemberMeta, SessionId)>> = None;
        let mut meta_retry_at: Option<Instant> = None;
        // What the store holds in the member key for the live session.
        let mut written: Option<MemberMeta> = None;
        let mut draining: Option<Instant> = None;
        let mut drain_requested = false;
        let mut left = Left::Halted;
        let mut halting = false;
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            while let Some(action) = machine.poll() {
                match action {
                    MemberAction::Register => {
                        written = None;
                        meta_write = None;
                        seen_key = None;
                        let meta = self.meta_now(draining.is_some(), None);
                        registering = Some(self.register(meta, std::mem::take(&mut stale)));
                    }
                    MemberAction::Renew(session) => {
                        let membership = self.store.membership.clone();
                        renewing =
                            Some(Box::pin(
                                async move { membership.renew_session(&session).await },
                            ));
                    }
                    MemberAction::Observe => {
                        stream = None;
                        let leader = self.store.leader.clone();
                        opening = Some(Box::pin(async move { leader.observe().await }));
                    }
                    MemberAction::Campaign(session) => {
                        let (e, name, id) = (
                            self.store.election.clone(),
                            election.clone(),
                            instance_id.clone(),
                        );
                        campaigning =
                            Some(Box::pin(
                                async move { e.try_lead(&name, &session, &id).await },
                            ));
                    }
                    MemberAction::Lead(fence) => {
                        self.stop_leading(&mut leading, None).await;
                        leading = Some(self.start_leading(fence));
                    }
                    MemberAction::StopLeading { resign } => {
                        self.stop_leading(&mut leading, resign).await;
                    }
                    MemberAction::Close(session) if !machine.halted() => {
                        // Given up on: closed before the next registration.
                        stale.push(session);
                    }
                    MemberAction::Close(session) => {
                        // Halting: a release (exclusive) reaches the
                        // application before the session ends.
                        if self.switch.is_released() {
                            self.wait_released().await;
                        }
                        if let Err(e) = self.store.membership.close_session(&session).await {
                            debug!(error = %ErrorChain(&e), "closing the session failed; it expires by its TTL");
                        }
                    }
                    MemberAction::Release => {
                        warn!("exclusive: the lease may end before it is renewed; releasing the whole workload");
                        self.switch.release();
                        crate::metrics::released(&instance_id);
                    }
                    MemberAction::Restore { resync } => {
                        info!(
                            resync,
                            "exclusive: the lease is renewed; restoring the workload"
                        );
                        self.switch.restore(resync);
                    }
                    MemberAction::Halted => return left,
                }
            }
            // The member key: keep it as it should be (acknowledged position,
            // draining), one write at a time.
            let now = Instant::now();
            let meta = self.meta_now(draining.is_some(), machine.session());
            if let Some(session) = machine.session() {
                if !halting
                    && registering.is_none()
                    && meta_write.is_none()
                    && meta_retry_at.is_none_or(|t| now >= t)
                    && written.as_ref() != Some(&meta)
                {
                    meta_retry_at = None;
                    let (membership, session, key) = (
                        self.store.membership.clone(),
                        session.clone(),
                        member_key.clone(),
                    );
                    let m = meta.clone();
                    meta_write = Some(Box::pin(async move {
                        let ok = membership.put_bound(&session, &key, m.to_bytes()).await?;
                        Ok((ok, m, session))
                    }));
                }
            }
            // Draining: leave once nothing is held and that is acknowledged,
            // or at the timeout.
            if let (Some(since), false) = (draining, halting) {
                let empty = self.settled.current().workload.is_empty();
                let reported = written.as_ref() == Some(&meta);
                // Released (exclusive), the empty set says nothing of the
                // assignments: wait for the restore or the timeout.
                let outcome = if empty && reported && !self.switch.is_released() {
                    Some(Left::Drained)
                } else if empty && machine.session().is_none() && registering.is_none() {
                    // Not registered (never, or the session is gone) and
                    // holding nothing: there is nothing to hand over, and no
                    // leader counts this member in. Waiting would only hold
                    // up the stop.
                    Some(Left::Drained)
                } else if now >= since + self.config.drain_timeout {
                    Some(Left::DrainTimedOut)
                } else {
                    None
                };
                if let Some(outcome) = outcome {
                    if outcome == Left::Drained {
                        info!("drained: holding nothing; leaving");
                    } else {
                        warn!(
                            timeout = ?self.config.drain_timeout,
                            "drain timed out; leaving with what is still held"
                        );
                    }
                    if drain_requested {
                        let kv_write = self.store.kv_write.clone();
                        let key = drain_key.clone();
                        let bound = self.config.ttl;
                        match tokio::time::timeout(bound, kv_write.delete_key(&key)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                warn!(key, error = %ErrorChain(&e), "could not delete the drain request");
                            }
                            Err(_) => warn!(key, "deleting the drain request timed out"),
                        }
                    }
                    left = outcome;
                    halting = true;
                    machine.halt();
                    continue;
                }
            }
            let deadline = [
                machine.poll_timeout(),
                // A retry time already passed waits for a session, not the timer.
                meta_retry_at.filter(|t| *t > now),
                draining.map(|since| since + self.config.drain_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                changed = stop.changed(), if !halting => {
                    let how = if changed.is_err() { Stop::Halt } else { *stop.borrow_and_update() };
                    match how {
                        Stop::Halt => {
                            halting = true;
                            machine.halt();
                        }
                        Stop::Drain if draining.is_none() => {
                            info!("draining: asking the leader to move this member's items away");
                            draining = Some(Instant::now());
                            self.draining.send_replace(true);
                        }
                        Stop::Drain | Stop::Running => {}
                    }
                }
                Ok(()) = drain_requests.changed() => {
                    let requested = drain_requests
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|m| m.contains_key(drain_key.as_bytes()));
                    if requested && draining.is_none() && !halting {
                        info!(key = drain_key, "drain requested: asking the leader to move this member's items away");
                        draining = Some(Instant::now());
                        self.draining.send_replace(true);
                        drain_requested = true;
                    }
                }
                Ok(()) = own_key.changed() => {
                    let value = own_key
                        .borrow_and_update()
                        .as_ref()
                        .map(|m| m.get(member_key.as_bytes()).cloned());
                    // `None`: not read yet. Then the session the key names.
                    if let Some(value) = value {
                        let named = value
                            .and_then(|v| MemberMeta::parse(&v).ok())
                            .and_then(|m| m.session)
                            .map(SessionId);
                        let live = machine.session().cloned();
                        if named.is_some() && named == live {
                            seen_key = named;
                        } else if let Some(session) = seen_key.take().filter(|s| Some(s) == live.as_ref()) {
                            warn!(%session, "the member key vanished: the store ended the session; registering again");
                            crate::metrics::renewed(&instance_id, &Ok(false));
                            machine.handle_session_gone(Instant::now(), &session);
                        }
                    }
                }
                result = in_flight(&mut registering), if registering.is_some() => {
                    registering = None;
                    self.contact(result.as_ref().err());
                    crate::metrics::store_result(&instance_id, "register", &result);
                    let result = match result {
                        Ok((session, meta)) => {
                            info!(%session, "registered");
                            // The member key written with the session is a
                            // write of the acknowledged position too.
                            self.acked.send_replace(meta.acked);
                            written = Some(meta);
                            Ok(session)
                        }
                        Err(e) => {
                            warn!(error = %ErrorChain(&e), "registering failed");
                            Err(e)
                        }
                    };
                    machine.handle_registered(Instant::now(), result);
                }
                result = in_flight(&mut renewing), if renewing.is_some() => {
                    renewing = None;
                    self.contact(result.as_ref().err());
                    crate::metrics::renewed(&instance_id, &result);
                    match &result {
                        Ok(true) => {}
                        Ok(false) => warn!("session expired: registering again"),
                        Err(e) => debug!(error = %ErrorChain(e), "renewing failed"),
                    }
                    machine.handle_renewed(Instant::now(), result);
                }
                result = in_flight(&mut meta_write), if meta_write.is_some() => {
                    meta_write = None;
                    self.contact(result.as_ref().err());
                    match result {
                        Ok((true, m, _)) => {
                            self.acked.send_replace(m.acked);
                            written = Some(m);
                        }
                        Ok((false, _, session)) => {
                            warn!(%session, "the member key could not be written: the session is gone; registering again");
                            meta_retry_at = Some(Instant::now() + self.config.worker.backoff_min);
                            crate::metrics::renewed(&instance_id, &Ok(false));
                            machine.handle_session_gone(Instant::now(), &session);
                        }
                        Err(e) => {
                            debug!(error = %ErrorChain(&e), "writing the member key failed");
                            meta_retry_at = Some(Instant::now() + self.config.worker.backoff_min);
                        }
                    }
                }
                result = in_flight(&mut campaigning), if campaigning.is_some() => {
                    campaigning = None;
                    self.contact(result.as_ref().err());
                    crate::metrics::store_result(&instance_id, "campaign", &result);
                    match &result {
                        // A refusal is the operator's to fix (the token's or
                        // user's permissions); anything else is retried quietly.
                        Err(e @ StoreError::PermissionDenied(_)) => {
                            warn!(error = %ErrorChain(e), "campaign failed");
                        }
                        Err(e) => debug!(error = %ErrorChain(e), "campaign failed"),
                        Ok(_) => {}
                    }
                    machine.handle_campaign(Instant::now(), result);
                }
                result = in_flight(&mut opening), if opening.is_some() => {
                    opening = None;
                    match result {
                        Ok(s) => stream = Some(s),
                        Err(e) => {
                            self.contact(Some(&e));
                            debug!(error = %ErrorChain(&e), "observing leadership failed");
                            machine.handle_observed(Instant::now(), Err(e));
                        }
                    }
                }
                seen = async { stream.as_mut().expect("guarded").next().await }, if stream.is_some() => {
                    self.contact(seen.as_ref().err());
                    if let Err(e) = &seen {
                        debug!(error = %ErrorChain(e), "leadership observation failed");
                        stream = None;
                    }
                    machine.handle_observed(Instant::now(), seen);
                }
                exit = async { (&mut leading.as_mut().expect("guarded").task).await }, if leading.is_some() => {
                    if let Some(l) = leading.take() {
                        self.leading.send_replace(None);
                        self.clear_handoffs();
                        if matches!(exit, Ok(LeaderExit::Fenced)) {
                            info!(term = l.fence.term(), "stepped down");
                        }
                    }
                    machine.handle_leader_ended(Instant::now());
                }
                Ok(()) = self.position.changed() => {}
                Ok(()) = self.app_ack.changed() => {}
                Ok(_) = self.settled.changed() => {}
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    machine.handle_timeout(Instant::now());
                }
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
