//! Spawning a member ([`Member::spawn`]) and what the caller holds of it:
//! the handle ([`MemberHandle`]: halt, drain, kill, acknowledge), its
//! read-only view ([`MemberObserver`]) and the acknowledger ([`Acker`]).

use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use worker_core::{
    ConfigError, Fence, Revision, StoreContact, Worker, WorkerHandle, WorkerObserver,
};

use super::task::MemberTask;
use super::{Handoff, Left, MemberConfig, MemberStore, Stop};
use crate::machine::PlanReport;

/// Spawns members.
#[derive(Debug)]
pub struct Member;

impl Member {
    /// Starts a member on the current tokio runtime.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
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
        let (awaiting_tx, _) = watch::channel(false);
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
                awaiting_acks: awaiting_tx,
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

/// A running member.
#[derive(Debug)]
pub struct MemberHandle {
    /// Always `Some` until `halt` / `kill` consume the handle.
    worker: Option<WorkerHandle>,
    /// The fence while the member leads.
    leading: watch::Receiver<Option<Fence>>,
    /// The plans the member makes while it leads.
    plans: broadcast::Sender<PlanReport>,
    /// Asks the member task to drain or halt.
    halt: Option<watch::Sender<Stop>>,
    /// The member task, until it is awaited.
    task: Option<JoinHandle<Left>>,
    /// How the member left, once known.
    outcome: Option<Left>,
    /// Acknowledges settled changes (manual ack).
    ack: Acker,
    /// The acknowledged position written to the store.
    acked: watch::Receiver<Option<Revision>>,
    /// The read-only view handed out by [`observer`](Self::observer).
    observer: MemberObserver,
}

/// A read-only view of a running member; from [`MemberHandle::observer`].
///
/// Cheap to clone and to query: each getter reads a `watch` channel the
/// member's tasks update as things happen; nothing asks the store. It does
/// not keep the member running; once its tasks end the getters keep the last
/// values and [`is_running`](Self::is_running) turns false.
#[derive(Debug, Clone)]
pub struct MemberObserver {
    /// The worker's view.
    worker: WorkerObserver,
    /// The fence while the member leads.
    leading: watch::Receiver<Option<Fence>>,
    /// The acknowledged position written to the store.
    acked: watch::Receiver<Option<Revision>>,
    /// How the member task's latest store request went.
    contact: watch::Receiver<StoreContact>,
    /// The moves in flight while the member leads.
    handoffs: watch::Receiver<Arc<[Handoff]>>,
    /// Whether the member drains.
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
    ///
    /// # Panics
    /// Never in practice: the worker is there as long as the handle is
    /// (only [`halt`](Self::halt) and [`kill`](Self::kill), which consume
    /// the handle, take it out).
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

    /// How the member left, then its worker halted.
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
    /// Aborts the member task if it still runs (a handle dropped without
    /// `halt`, `drain` or `kill`).
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
