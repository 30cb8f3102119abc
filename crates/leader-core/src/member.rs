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

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};
use worker_core::{
    validate_instance_id, Backoff, ConfigError, Election, ErrorChain, Fence, FencedWrite, KvWatch,
    KvWrite, LeaderStream, LeaderWait, Membership, SessionId, StoreError, Worker, WorkerConfig,
    WorkerHandle,
};

use crate::layout::{Layout, MemberMeta};
use crate::leader::{run_leader, LeaderCtx, LeaderExit};
use crate::machine::{LeaderTiming, PlanReport};

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
        let (plans, _) = broadcast::channel(64);
        let (halt_tx, halt_rx) = oneshot::channel();
        let span = tracing::info_span!("member", instance_id = %config.instance_id());
        let task = tokio::spawn(
            MemberTask {
                config: config.clone(),
                store: store.clone(),
                leading: leading_tx,
                plans: plans.clone(),
                rng: SmallRng::seed_from_u64(seed(config.instance_id())),
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
    rng: SmallRng,
}

struct Leading {
    fence: Fence,
    stop: watch::Sender<bool>,
    task: JoinHandle<LeaderExit>,
}

type ObserveFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Box<dyn LeaderStream>, StoreError>> + Send>,
>;

impl MemberTask {
    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.config.worker.backoff_min,
            self.config.worker.backoff_max,
        )
    }

    /// Opens a session and writes the member key; retries with backoff.
    async fn register(&mut self) -> SessionId {
        let mut backoff = self.backoff();
        let key = self.config.layout.member_key(self.config.instance_id());
        loop {
            let result = async {
                let session = self.store.membership.open_session(self.config.ttl).await?;
                let bound = self
                    .store
                    .membership
                    .put_bound(&session, &key, self.config.meta.to_bytes())
                    .await;
                match bound {
                    Ok(true) => Ok(Some(session)),
                    other => {
                        let _ = self.store.membership.close_session(&session).await;
                        other.map(|_| None)
                    }
                }
            }
            .await;
            match result {
                Ok(Some(session)) => {
                    info!(%session, key, "registered");
                    return session;
                }
                Ok(None) => {
                    let delay = backoff.next_delay(&mut self.rng);
                    warn!(key, retry_in = ?delay, "member key is held by another session");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    let delay = backoff.next_delay(&mut self.rng);
                    warn!(error = %ErrorChain(&e), retry_in = ?delay, "registering failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
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

    async fn stop_leading(&self, leading: &mut Option<Leading>, resign: bool) {
        if let Some(l) = leading.take() {
            let _ = l.stop.send(true);
            let _ = l.task.await;
            self.leading.send_replace(None);
            if resign {
                if let Err(e) = self.store.election.resign(&l.fence).await {
                    debug!(error = %ErrorChain(&e), "resigning failed");
                }
            }
            info!(term = l.fence.term(), "no longer leading");
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn run(mut self, mut halt: oneshot::Receiver<()>) {
        let ttl = self.config.ttl;
        let renew_every = ttl / 3;
        let mut session: Option<SessionId> = None;
        let mut renewed_at = Instant::now();
        let mut renew_backoff = self.backoff();
        let mut leading: Option<Leading> = None;
        let mut observe_backoff = self.backoff();
        let mut elect_backoff = self.backoff();
        let mut observing: Option<ObserveFuture> = None;
        let mut stream: Option<Box<dyn LeaderStream>> = None;
        let mut observe_at: Option<Instant> = Some(Instant::now());
        let mut elect_at: Option<Instant> = None;
        let renew = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(renew);

        loop {
            if session.is_none() {
                let registering = self.register();
                tokio::pin!(registering);
                let s = tokio::select! {
                    s = &mut registering => s,
                    _ = &mut halt => break,
                };
                renewed_at = Instant::now();
                renew.as_mut().reset(renewed_at + renew_every);
                session = Some(s);
                elect_at = Some(Instant::now());
            }
            let Some(current) = session.clone() else {
                continue;
            };
            if observing.is_none()
                && stream.is_none()
                && observe_at.is_some_and(|t| t <= Instant::now())
            {
                observe_at = None;
                let leader = self.store.leader.clone();
                observing = Some(Box::pin(async move { leader.observe().await }));
            }
            // Try to lead when asked to (after an observation change).
            if self.config.campaign
                && leading.is_none()
                && elect_at.is_some_and(|t| t <= Instant::now())
            {
                elect_at = None;
                let election = &self.config.layout.leader;
                match self
                    .store
                    .election
                    .try_lead(election, &current, self.config.instance_id())
                    .await
                {
                    Ok(Some(fence)) => {
                        elect_backoff.reset();
                        leading = Some(self.start_leading(fence));
                    }
                    Ok(None) => elect_backoff.reset(),
                    Err(e) => {
                        let delay = elect_backoff.next_delay(&mut self.rng);
                        debug!(error = %ErrorChain(&e), retry_in = ?delay, "campaign failed");
                        elect_at = Some(Instant::now() + delay);
                    }
                }
            }
            let wake = [observe_at, elect_at].into_iter().flatten().min();
            let wake_sleep = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + ttl));
            tokio::pin!(wake_sleep);
            tokio::select! {
                biased;
                _ = &mut halt => break,
                () = &mut renew => {
                    match self.store.membership.renew_session(&current).await {
                        Ok(true) => {
                            renew_backoff.reset();
                            renewed_at = Instant::now();
                            renew.as_mut().reset(renewed_at + renew_every);
                        }
                        Ok(false) => {
                            warn!(session = %current, "session expired: registering again");
                            self.stop_leading(&mut leading, false).await;
                            session = None;
                        }
                        Err(e) => {
                            let now = Instant::now();
                            if now >= renewed_at + ttl {
                                warn!(error = %ErrorChain(&e), "session not renewed for a whole TTL: registering again");
                                self.stop_leading(&mut leading, false).await;
                                session = None;
                            } else {
                                let delay = renew_backoff.next_delay(&mut self.rng).min(ttl / 10);
                                debug!(error = %ErrorChain(&e), retry_in = ?delay, "renewing failed");
                                renew.as_mut().reset(now + delay);
                            }
                        }
                    }
                }
                opened = async { observing.as_mut().expect("guarded").await }, if observing.is_some() => {
                    observing = None;
                    match opened {
                        Ok(s) => stream = Some(s),
                        Err(e) => {
                            let delay = observe_backoff.next_delay(&mut self.rng);
                            debug!(error = %ErrorChain(&e), retry_in = ?delay, "observing leadership failed");
                            observe_at = Some(Instant::now() + delay);
                        }
                    }
                }
                seen = async { stream.as_mut().expect("guarded").next().await }, if stream.is_some() => {
                    match seen {
                        Ok(observed) => {
                            observe_backoff.reset();
                            if let Some(l) = &leading {
                                let same = observed.as_ref().is_some_and(|o| o.term == l.fence.term());
                                // A stale observation must not end a leadership
                                // the store still grants: ask the election.
                                let still = same || self
                                    .store
                                    .election
                                    .try_lead(&self.config.layout.leader, &current, self.config.instance_id())
                                    .await
                                    .is_ok_and(|f| f.is_some_and(|f| f.term() == l.fence.term()));
                                if !still {
                                    warn!(term = l.fence.term(), observed = ?observed, "leadership lost");
                                    self.stop_leading(&mut leading, false).await;
                                }
                            }
                            if leading.is_none() {
                                elect_at = Some(Instant::now());
                            }
                        }
                        Err(e) => {
                            stream = None;
                            let delay = observe_backoff.next_delay(&mut self.rng);
                            debug!(error = %ErrorChain(&e), retry_in = ?delay, "leadership observation failed");
                            observe_at = Some(Instant::now() + delay);
                        }
                    }
                }
                exit = async { (&mut leading.as_mut().expect("guarded").task).await }, if leading.is_some() => {
                    let l = leading.take().expect("guarded");
                    self.leading.send_replace(None);
                    if matches!(exit, Ok(LeaderExit::Fenced)) {
                        info!(term = l.fence.term(), "stepped down");
                    }
                    elect_at = Some(Instant::now() + self.config.worker.backoff_min);
                }
                () = &mut wake_sleep, if wake.is_some() => {}
            }
        }
        // Halt: resign first, then close the session.
        self.stop_leading(&mut leading, true).await;
        if let Some(s) = session {
            if let Err(e) = self.store.membership.close_session(&s).await {
                debug!(error = %ErrorChain(&e), "closing the session failed; it expires by its TTL");
            }
        }
    }
}
