//! The member task: its session (opened, renewed, opened anew), its member
//! key with the acknowledged position, its candidacy and the leader loop
//! while it leads, draining, and the release switch of its worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};
use worker_core::{
    ErrorChain, Fence, LeaderStream, ReleaseSwitch, Revision, SessionId, StoreContact, StoreError,
    WorkloadWatch,
};

use super::{Handoff, Left, MemberConfig, MemberStore, Stop};
use crate::layout::MemberMeta;
use crate::leader::{run_leader, LeaderCtx, LeaderExit};
use crate::machine::{LeaderTiming, PlanReport};
use crate::membership::{MemberAction, MemberMachine, MemberTiming};

/// A seed for the member's jitter, from its id (FNV-1a).
fn seed(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The member task: what it drives and what it reports through.
pub(super) struct MemberTask {
    /// The member's settings.
    pub(super) config: MemberConfig,
    /// The store.
    pub(super) store: MemberStore,
    /// The fence while this member leads.
    pub(super) leading: watch::Sender<Option<Fence>>,
    /// The plans this member makes while it leads.
    pub(super) plans: broadcast::Sender<PlanReport>,
    /// The worker's settled position.
    pub(super) position: watch::Receiver<Revision>,
    /// The worker's settled state (its revision, and whether it is empty).
    pub(super) settled: WorkloadWatch,
    /// The worker's release switch ([`ReleaseSwitch`]).
    pub(super) switch: ReleaseSwitch,
    /// What the application acknowledged (manual ack).
    pub(super) app_ack: watch::Receiver<Revision>,
    /// The acknowledged position written to the store.
    pub(super) acked: watch::Sender<Option<Revision>>,
    /// How the member task's latest store request went.
    pub(super) contact: watch::Sender<StoreContact>,
    /// The moves in flight while leading (the leader loop writes them).
    pub(super) handoffs: watch::Sender<Arc<[Handoff]>>,
    /// While leading: whether a member has not acknowledged the leader's
    /// last write to its keys (the leader loop writes it).
    pub(super) awaiting_acks: watch::Sender<bool>,
    /// Whether the member drains.
    pub(super) draining: watch::Sender<bool>,
}

/// The leader loop while this member leads.
struct Leading {
    /// The term it leads under.
    fence: Fence,
    /// Tells the leader loop to stop.
    stop: watch::Sender<bool>,
    /// The leader loop.
    task: JoinHandle<LeaderExit>,
}

/// How often a drained member reads the handoff records again while one
/// still names it.
const DRAIN_RECORDS_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// A store call in flight.
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

    /// Starts the leader loop under `fence`.
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
            awaiting_acks: self.awaiting_acks.clone(),
            instance_id: self.config.instance_id().to_owned(),
        };
        let task = tokio::spawn(run_leader(ctx, stop_rx).in_current_span());
        self.leading.send_replace(Some(fence.clone()));
        Leading { fence, stop, task }
    }

    /// Stops the leader loop, if one runs, then resigns `resign` if given.
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
    pub(super) async fn run(mut self, mut stop: watch::Receiver<Stop>) -> Left {
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
            crate::clock::now(),
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
        // Draining: once it holds nothing, acknowledged, it reads the
        // handoff records and leaves only when none names it (the leader saw
        // the acknowledgement of every move away from it: it deletes a record
        // with the assign it clears). Leaving earlier, its key could vanish
        // before the leader saw the acknowledgement, and the leader would
        // treat it as gone (in exclusive mode: wait its whole TTL). A read,
        // not a watch: a watch of a prefix that is mostly empty may be
        // paced (Consul) and miss a record for a while.
        let mut records_read: Option<Call<bool>> = None;
        let mut records_clear = false;
        let mut records_again_at: Option<Instant> = None;
        // The moves this member's leader loop has in flight: a draining
        // leader finishes them before it leaves, so that the next leader
        // does not find an item mid-move.
        let mut moves = self.handoffs.subscribe();
        let mut awaiting = self.awaiting_acks.subscribe();
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
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
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
            let now = crate::clock::now();
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
                // Leading, it also waits until the members acknowledged
                // what it wrote to them: seeing the leader go first, their
                // workers would hold it back for `leader_settle`.
                let moving =
                    leading.is_some() && (!moves.borrow().is_empty() || *awaiting.borrow());
                if empty
                    && reported
                    && !moving
                    && !records_clear
                    && records_read.is_none()
                    && records_again_at.is_none_or(|t| now >= t)
                {
                    records_again_at = None;
                    let (kv, prefix, id) = (
                        self.store.kv.clone(),
                        self.config.layout.handoff.clone(),
                        instance_id.clone(),
                    );
                    records_read = Some(Box::pin(async move {
                        let records = kv.list(&prefix).await?;
                        Ok(!records
                            .entries
                            .iter()
                            .any(|e| e.value.as_ref() == id.as_bytes()))
                    }));
                }
                let reported = reported && records_clear && !moving;
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
                records_again_at.filter(|t| *t > now),
            ]
            .into_iter()
            .flatten()
            .min();
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(tokio::time::Instant::from_std(d));
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
                            draining = Some(crate::clock::now());
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
                        draining = Some(crate::clock::now());
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
                            machine.handle_session_gone(crate::clock::now(), &session);
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
                    machine.handle_registered(crate::clock::now(), result);
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
                    machine.handle_renewed(crate::clock::now(), result);
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
                            meta_retry_at = Some(crate::clock::now() + self.config.worker.backoff_min);
                            crate::metrics::renewed(&instance_id, &Ok(false));
                            machine.handle_session_gone(crate::clock::now(), &session);
                        }
                        Err(e) => {
                            debug!(error = %ErrorChain(&e), "writing the member key failed");
                            meta_retry_at = Some(crate::clock::now() + self.config.worker.backoff_min);
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
                    machine.handle_campaign(crate::clock::now(), result);
                }
                result = in_flight(&mut opening), if opening.is_some() => {
                    opening = None;
                    match result {
                        Ok(s) => stream = Some(s),
                        Err(e) => {
                            self.contact(Some(&e));
                            debug!(error = %ErrorChain(&e), "observing leadership failed");
                            machine.handle_observed(crate::clock::now(), Err(e));
                        }
                    }
                }
                seen = async { stream.as_mut().expect("guarded").next().await }, if stream.is_some() => {
                    self.contact(seen.as_ref().err());
                    if let Err(e) = &seen {
                        debug!(error = %ErrorChain(e), "leadership observation failed");
                        stream = None;
                    }
                    machine.handle_observed(crate::clock::now(), seen);
                }
                exit = async { (&mut leading.as_mut().expect("guarded").task).await }, if leading.is_some() => {
                    if let Some(l) = leading.take() {
                        self.leading.send_replace(None);
                        self.clear_handoffs();
                        if matches!(exit, Ok(LeaderExit::Fenced)) {
                            info!(term = l.fence.term(), "stepped down");
                        }
                    }
                    machine.handle_leader_ended(crate::clock::now());
                }
                Ok(()) = self.position.changed() => {}
                result = in_flight(&mut records_read), if records_read.is_some() => {
                    records_read = None;
                    match result {
                        Ok(clear) => records_clear = clear,
                        Err(e) => debug!(error = %ErrorChain(&e), "reading the handoff records failed"),
                    }
                    if !records_clear {
                        records_again_at = Some(crate::clock::now() + DRAIN_RECORDS_EVERY);
                    }
                }
                Ok(()) = moves.changed() => {}
                Ok(()) = awaiting.changed() => {}
                Ok(()) = self.app_ack.changed() => {}
                Ok(_) = self.settled.changed() => {}
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    machine.handle_timeout(crate::clock::now());
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    /// Aborts the task.
    fn drop(&mut self) {
        self.0.abort();
    }
}
