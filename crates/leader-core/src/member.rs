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
//! [`MemberHandle::halt`] stops leading, resigns, halts the worker and
//! closes the session, so another member leads without waiting for a TTL.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};
use worker_core::{
    validate_instance_id, ConfigError, Election, ErrorChain, Fence, FencedWrite, KvWatch, KvWrite,
    LeaderStream, LeaderWait, Membership, SessionId, StoreError, Worker, WorkerConfig,
    WorkerHandle,
};

use crate::layout::{Layout, MemberMeta};
use crate::leader::{run_leader, LeaderCtx, LeaderExit};
use crate::machine::{LeaderTiming, PlanReport};
use crate::membership::{MemberAction, MemberMachine, MemberTiming};

/// The default session / lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// Settings of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// The worker's settings; its `instance_id` is the member's id and its
    /// `prefix` must equal `layout.assignments`.
    pub worker: WorkerConfig,
    /// Where the keys live. Default [`Layout::default`].
    pub layout: Layout,
    /// What the member key says (weight). Default weight 1.
    pub meta: MemberMeta,
    /// Session / lease TTL. Default [`DEFAULT_TTL`] (Consul's minimum is 10 s).
    pub ttl: Duration,
    /// The leader's soak and retry timing. Default 3 s soak.
    pub leader: LeaderTiming,
    /// Whether this member may lead. Default true.
    pub campaign: bool,
}

impl MemberConfig {
    /// A member `instance_id` with every other setting at its default.
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self {
            worker: WorkerConfig::new(instance_id),
            layout: Layout::default(),
            meta: MemberMeta::default(),
            ttl: DEFAULT_TTL,
            leader: LeaderTiming::default(),
            campaign: true,
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
        let worker = Worker::spawn(&config.worker, store.kv.clone(), store.leader.clone())?;
        let (leading_tx, leading_rx) = watch::channel(None);
        crate::metrics::follow_leading(config.instance_id(), leading_rx.clone());
        let (plans, _) = broadcast::channel(64);
        let (halt_tx, halt_rx) = oneshot::channel();
        let span = tracing::info_span!("member", instance_id = %config.instance_id());
        let task = tokio::spawn(
            MemberTask {
                config: config.clone(),
                store: store.clone(),
                leading: leading_tx,
                plans: plans.clone(),
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
        })
    }
}

fn seed(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A running member.
#[derive(Debug)]
pub struct MemberHandle {
    /// Always `Some` until `halt` / `kill` consume the handle.
    worker: Option<WorkerHandle>,
    leading: watch::Receiver<Option<Fence>>,
    plans: broadcast::Sender<PlanReport>,
    halt: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
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

    /// Leaves cleanly: stops leading and resigns, halts the worker, closes
    /// the session (the member key goes with it). Returns once all of it is
    /// done or, for the store calls, has failed (a session that cannot be
    /// closed expires by its TTL).
    pub async fn halt(mut self) {
        if let Some(tx) = self.halt.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(worker) = self.worker.take() {
            worker.halt().await;
        }
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
    /// Opens a session and writes the member key bound to it.
    fn register(&self) -> Call<SessionId> {
        let membership = self.store.membership.clone();
        let (ttl, key, meta) = (
            self.config.ttl,
            self.config.layout.member_key(self.config.instance_id()),
            self.config.meta.to_bytes(),
        );
        Box::pin(async move {
            let session = membership.open_session(ttl).await?;
            match membership.put_bound(&session, &key, meta).await {
                Ok(true) => Ok(session),
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
            timing: self.config.leader,
            fence: fence.clone(),
            kv: self.store.kv.clone(),
            writer: self.store.writer.clone(),
            plans: self.plans.clone(),
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
            info!(term = l.fence.term(), "no longer leading");
        }
        if let Some(fence) = resign {
            if let Err(e) = self.store.election.resign(&fence).await {
                debug!(error = %ErrorChain(&e), "resigning failed");
            }
        }
    }

    /// Carries out what the [`MemberMachine`] asks for and feeds it what
    /// happens, with one timer.
    #[allow(clippy::too_many_lines)] // one select loop; its arms read best together
    async fn run(self, mut halt: oneshot::Receiver<()>) {
        let timing = MemberTiming {
            ttl: self.config.ttl,
            backoff_min: self.config.worker.backoff_min,
            backoff_max: self.config.worker.backoff_max,
        };
        let mut machine = MemberMachine::new(
            timing,
            self.config.campaign,
            seed(self.config.instance_id()),
        );
        let election = self.config.layout.leader.clone();
        let instance_id = self.config.instance_id().to_owned();
        let mut registering: Option<Call<SessionId>> = None;
        let mut renewing: Option<Call<bool>> = None;
        let mut campaigning: Option<Call<Option<Fence>>> = None;
        let mut opening: Option<Call<Box<dyn LeaderStream>>> = None;
        let mut stream: Option<Box<dyn LeaderStream>> = None;
        let mut leading: Option<Leading> = None;
        let mut halting = false;
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            while let Some(action) = machine.poll() {
                match action {
                    MemberAction::Register => registering = Some(self.register()),
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
                    MemberAction::Close(session) => {
                        if let Err(e) = self.store.membership.close_session(&session).await {
                            debug!(error = %ErrorChain(&e), "closing the session failed; it expires by its TTL");
                        }
                    }
                    MemberAction::Halted => return,
                }
            }
            let deadline = machine.poll_timeout();
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                _ = &mut halt, if !halting => {
                    halting = true;
                    machine.halt();
                }
                result = in_flight(&mut registering), if registering.is_some() => {
                    registering = None;
                    crate::metrics::store_result(&instance_id, "register", &result);
                    match &result {
                        Ok(session) => info!(%session, "registered"),
                        Err(e) => warn!(error = %ErrorChain(e), "registering failed"),
                    }
                    machine.handle_registered(Instant::now(), result);
                }
                result = in_flight(&mut renewing), if renewing.is_some() => {
                    renewing = None;
                    crate::metrics::renewed(&instance_id, &result);
                    match &result {
                        Ok(true) => {}
                        Ok(false) => warn!("session expired: registering again"),
                        Err(e) => debug!(error = %ErrorChain(e), "renewing failed"),
                    }
                    machine.handle_renewed(Instant::now(), result);
                }
                result = in_flight(&mut campaigning), if campaigning.is_some() => {
                    campaigning = None;
                    crate::metrics::store_result(&instance_id, "campaign", &result);
                    if let Err(e) = &result {
                        debug!(error = %ErrorChain(e), "campaign failed");
                    }
                    machine.handle_campaign(Instant::now(), result);
                }
                result = in_flight(&mut opening), if opening.is_some() => {
                    opening = None;
                    match result {
                        Ok(s) => stream = Some(s),
                        Err(e) => {
                            debug!(error = %ErrorChain(&e), "observing leadership failed");
                            machine.handle_observed(Instant::now(), Err(e));
                        }
                    }
                }
                seen = async { stream.as_mut().expect("guarded").next().await }, if stream.is_some() => {
                    if let Err(e) = &seen {
                        debug!(error = %ErrorChain(e), "leadership observation failed");
                        stream = None;
                    }
                    machine.handle_observed(Instant::now(), seen);
                }
                exit = async { (&mut leading.as_mut().expect("guarded").task).await }, if leading.is_some() => {
                    if let Some(l) = leading.take() {
                        self.leading.send_replace(None);
                        if matches!(exit, Ok(LeaderExit::Fenced)) {
                            info!(term = l.fence.term(), "stepped down");
                        }
                    }
                    machine.handle_leader_ended(Instant::now());
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    machine.handle_timeout(Instant::now());
                }
            }
        }
    }
}
