//! The tokio driver of [`LeaderMachine`]: follows the members and work
//! prefixes, reads the members, assignments, handoff records and sequence
//! key in one consistent snapshot when the machine asks (on taking office,
//! after a failed read or write, and periodically while idle), applies the
//! machine's fenced transactions, and re-arms one timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};
use worker_core::{
    ErrorChain, Fence, FencedWrite, KvWatch, Membership, SessionId, Snapshot, StoreError, TxnOp,
    TxnOutcome,
};

use crate::follow::{spawn_follow, PrefixMap};
use crate::layout::Layout;
use crate::machine::{Action, LeaderMachine, LeaderRead, LeaderTiming, PlanReport};
use crate::member::Handoff;

/// Why a leader loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaderExit {
    /// Asked to stop (leadership lost as observed, or the member halts).
    Stopped,
    /// A fenced write was rejected: the store says this is no longer the leader.
    Fenced,
}

/// What the leader loop needs.
pub(crate) struct LeaderCtx {
    pub layout: Layout,
    pub timing: LeaderTiming,
    pub fence: Fence,
    pub kv: Arc<dyn KvWatch>,
    pub writer: Arc<dyn FencedWrite>,
    /// Ends the session of a member whose handoff timed out.
    pub membership: Arc<dyn Membership>,
    pub plans: broadcast::Sender<PlanReport>,
    /// The moves in flight, for [`MemberObserver::handoffs`](crate::MemberObserver::handoffs).
    pub handoffs: watch::Sender<Arc<[Handoff]>>,
    /// Whether a member has not acknowledged this leader's last write to
    /// its keys ([`LeaderMachine::awaiting_acks`]), for a drain.
    pub awaiting_acks: watch::Sender<bool>,
    pub instance_id: String,
}

type WriteFuture = Pin<Box<dyn Future<Output = Result<TxnOutcome, StoreError>> + Send>>;
type HandoffFuture = Pin<Box<dyn Future<Output = Result<Snapshot, StoreError>> + Send>>;
type ListFuture = Pin<Box<dyn Future<Output = Result<LeaderRead, StoreError>> + Send>>;

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn entries(map: &PrefixMap) -> impl Iterator<Item = (&[u8], &bytes::Bytes)> {
    map.iter().map(|(k, v)| (k.as_ref(), v))
}

/// How often, at most, the leader counts the items no live member holds
/// (`coordinator_leader_items_unowned`).
const UNOWNED_EVERY: Duration = Duration::from_secs(1);

/// Leads until `stop` turns true or a write is fenced.
#[allow(clippy::too_many_lines)] // one select loop; its arms read best together
pub(crate) async fn run_leader(ctx: LeaderCtx, mut stop: watch::Receiver<bool>) -> LeaderExit {
    let LeaderCtx {
        layout,
        timing,
        fence,
        kv,
        writer,
        membership,
        plans,
        handoffs: in_flight,
        awaiting_acks: ctx_awaiting,
        instance_id,
    } = ctx;
    // Sessions being ended; aborted when the leader loop ends.
    let mut ending = tokio::task::JoinSet::new();
    let backoff = (timing.backoff_min, timing.backoff_max);
    let (mut members, members_task) = spawn_follow(kv.clone(), layout.members.clone(), backoff);
    let (mut items, items_task) = spawn_follow(kv.clone(), layout.work.clone(), backoff);
    let _tasks = (AbortOnDrop(members_task), AbortOnDrop(items_task));
    let mut machine = LeaderMachine::new(
        layout.clone(),
        timing,
        writer.max_ops(),
        crate::clock::now(),
    )
    .with_limits(writer.limits());
    machine.set_sequence_value(bytes::Bytes::from(format!(
        "{{\"leader\":{},\"term\":{}}}",
        serde_json::Value::from(instance_id.as_str()),
        fence.term()
    )));
    info!(instance_id, term = fence.term(), "leading");

    let mut listing: Option<ListFuture> = None;
    let mut handoffs: Option<HandoffFuture> = None;
    let mut write: Option<WriteFuture> = None;
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let mut unowned_at: Option<Instant> = None;
    let mut shown_generation: Option<u64> = None;
    // How long the last call into the machine ran: a plan it made reports it.
    let mut took = Duration::ZERO;

    loop {
        // Carry out what the machine asks for.
        while let Some(action) = machine.poll() {
            match action {
                Action::ListAssignments => {
                    let (writer, layout) = (writer.clone(), layout.clone());
                    listing = Some(Box::pin(async move { read(&*writer, &layout).await }));
                }
                Action::ListHandoffs => {
                    let (kv, prefix) = (kv.clone(), layout.handoff.clone());
                    handoffs = Some(Box::pin(async move { kv.list(&prefix).await }));
                }
                Action::Write(ops) => {
                    let writer = writer.clone();
                    let fence = fence.clone();
                    write = Some(Box::pin(async move { apply(&*writer, &fence, &ops).await }));
                }
                Action::Planned(mut report) => {
                    report.took = took;
                    info!(
                        members = report.members,
                        items = report.items,
                        moved = report.moved,
                        min_moves = report.min_moves,
                        placed = report.placed,
                        revokes = report.revokes,
                        puts = report.puts,
                        transactions = report.transactions,
                        took = ?report.took,
                        "planned"
                    );
                    crate::metrics::planned(&instance_id, &report);
                    let _ = plans.send(report);
                }
                Action::EndSession { member, session } => {
                    warn!(
                        member = %member,
                        session,
                        timeout = ?timing.handoff_timeout,
                        "handoff timed out: ending the member's session"
                    );
                    let membership = membership.clone();
                    ending.spawn(async move {
                        let session = SessionId(session);
                        if let Err(e) = membership.close_session(&session).await {
                            warn!(member = %member, %session, error = %ErrorChain(&e), "ending the session failed; asked again after another timeout");
                        }
                    });
                }
                Action::BadKey { key, reason } => {
                    warn!(key, %reason, "skipping key");
                }
                Action::BadMemberValue { member, error } => {
                    warn!(
                        member,
                        error,
                        "member metadata does not parse; counting weight 1, and moves away from it wait for its acknowledgement"
                    );
                }
                Action::Refused {
                    work,
                    bytes,
                    limits,
                } => {
                    error!(
                        work,
                        bytes,
                        max_bytes = limits.max_bytes,
                        max_value = limits.max_value,
                        "work item refused: assigning it would exceed the store's transaction limits; it is left out until its value is smaller"
                    );
                }
                Action::StepDown => {
                    crate::metrics::fenced(&instance_id);
                    warn!(
                        instance_id,
                        term = fence.term(),
                        "write rejected by the fence: stepping down"
                    );
                    return LeaderExit::Fenced;
                }
            }
        }
        // The moves in flight, shown only when they may have changed (each
        // showing is O(moves in flight)).
        if shown_generation != Some(machine.handoffs_generation()) {
            shown_generation = Some(machine.handoffs_generation());
            crate::metrics::handoffs(&instance_id, machine.handoffs().count());
            in_flight.send_if_modified(|cur| {
                let same = cur
                    .iter()
                    .map(|h| (&h.work, &h.from))
                    .eq(machine.handoffs());
                if !same {
                    *cur = machine
                        .handoffs()
                        .map(|(work, from)| Handoff {
                            work: work.clone(),
                            from: from.clone(),
                        })
                        .collect();
                }
                !same
            });
        }
        ctx_awaiting.send_if_modified(|cur| {
            let now = machine.awaiting_acks();
            let changed = *cur != now;
            *cur = now;
            changed
        });
        crate::metrics::refused(&instance_id, machine.refused().len());
        // The unowned count costs a pass over every item: at most once per
        // UNOWNED_EVERY, and once more after the last change (no wake-ups
        // while nothing changes).
        let now = crate::clock::now();
        let unowned_stale = if unowned_at.is_none_or(|t| now >= t + UNOWNED_EVERY) {
            crate::metrics::unowned(&instance_id, machine.unowned());
            unowned_at = Some(now);
            false
        } else {
            true
        };
        // One timer: the machine's deadline, or the unowned count's.
        let deadline = [
            machine.poll_timeout(),
            unowned_at
                .filter(|_| unowned_stale)
                .map(|t| t + UNOWNED_EVERY),
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
        // Biased: the answers of the store first. The machine sends one
        // transaction at a time, so the next one goes out as soon as the
        // last is answered, and new pictures of the members and items (each
        // a pass over all of them) are taken in while it is in flight, not
        // between two transactions.
        tokio::select! {
            biased;
            changed = stop.changed() => {
                // The member dropped its end (it was aborted): stop too.
                if changed.is_err() || *stop.borrow() {
                    return LeaderExit::Stopped;
                }
            }
            result = async { listing.as_mut().expect("guarded").await }, if listing.is_some() => {
                listing = None;
                match result {
                    Ok(read) => timed(&mut took, || machine.handle_read(crate::clock::now(), &read)),
                    Err(e) => {
                        crate::metrics::store_error(&instance_id, "leader_list", &e);
                        if let Some(delay) = timed(&mut took, || machine.handle_assignments_error(crate::clock::now())) {
                            // A refusal is the operator's to fix (the token's or
                            // user's permissions); anything else is retried quietly.
                            if matches!(e, StoreError::PermissionDenied(_)) {
                                warn!(error = %ErrorChain(&e), retry_in = ?delay, "reading assignments failed");
                            } else {
                                debug!(error = %ErrorChain(&e), retry_in = ?delay, "reading assignments failed");
                            }
                        }
                    }
                }
            }
            result = async { handoffs.as_mut().expect("guarded").await }, if handoffs.is_some() => {
                handoffs = None;
                match result {
                    Ok(snapshot) => {
                        let records = snapshot
                            .entries
                            .iter()
                            .map(|e| (e.key.as_slice(), &e.value, e.revision));
                        timed(&mut took, || machine.handle_handoffs(crate::clock::now(), records));
                    }
                    Err(e) => {
                        debug!(error = %ErrorChain(&e), "reading the handoff records failed");
                        timed(&mut took, || machine.handle_handoffs_error(crate::clock::now()));
                    }
                }
            }
            result = async { write.as_mut().expect("guarded").await }, if write.is_some() => {
                write = None;
                match &result {
                    Err(e) => {
                        crate::metrics::store_error(&instance_id, "leader_write", e);
                        warn!(error = %ErrorChain(e), "fenced write failed; reading the store again");
                    }
                    Ok(TxnOutcome::Conflict) => {
                        info!("a member that was gone is back: deciding its items anew");
                    }
                    Ok(_) => {}
                }
                timed(&mut took, || machine.handle_write(crate::clock::now(), result));
            }
            Ok(()) = members.changed() => {
                let view = members.borrow_and_update().clone();
                if let Some(map) = view {
                    timed(&mut took, || machine.handle_members(crate::clock::now(), entries(&map)));
                }
            }
            Ok(()) = items.changed() => {
                let view = items.borrow_and_update().clone();
                if let Some(map) = view {
                    timed(&mut took, || machine.handle_items(crate::clock::now(), entries(&map)));
                }
            }
            () = &mut timer, if armed.is_some() => {
                armed = None;
                timed(&mut took, || machine.handle_timeout(crate::clock::now()));
            }
            Some(_) = ending.join_next(), if !ending.is_empty() => {}
        }
    }
}

/// Runs `f` (a call into the machine), recording in `took` how long it ran
/// on this thread (`std::time`, not tokio's clock: a paused test clock would
/// read zero).
fn timed<R>(took: &mut Duration, f: impl FnOnce() -> R) -> R {
    let started = std::time::Instant::now();
    let r = f();
    *took = started.elapsed();
    r
}

/// The leader's consistent read: members, assignments, handoff records and
/// the sequence key at one store position.
async fn read(writer: &dyn FencedWrite, layout: &Layout) -> Result<LeaderRead, StoreError> {
    let prefixes = [
        layout.members.as_str(),
        layout.assignments.as_str(),
        layout.handoff.as_str(),
    ];
    let mut read = writer
        .read_consistent(&prefixes, &[layout.sequence.as_str()])
        .await?;
    let mut prefixes = std::mem::take(&mut read.prefixes).into_iter();
    let mut next = || prefixes.next().unwrap_or_default();
    let (members, assignments, records) = (next(), next(), next());
    let sequence = read
        .keys
        .first()
        .and_then(Option::as_ref)
        .map_or(0, |k| k.modified);
    Ok(LeaderRead {
        members,
        assignments,
        records,
        sequence,
    })
}

async fn apply(
    writer: &dyn FencedWrite,
    fence: &Fence,
    ops: &[TxnOp],
) -> Result<TxnOutcome, StoreError> {
    writer.apply(fence, ops).await
}
