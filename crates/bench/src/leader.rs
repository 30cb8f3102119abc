//! Scenario 4: the leader half on a real store. N full members (each with a
//! connection of its own, as N processes would have) spread the work items;
//! the leader's start-up transactions are replayed by a bare loop of
//! `FencedWrite::apply` calls for a rate to compare with; one member that
//! does not lead is killed (no resignation, no session close: its session /
//! lease expires as after SIGKILL) and the way its items reach the survivors
//! is timed in four parts; then a member joins; then a tenth more items are
//! added at once; then the whole cluster idles while its store requests and
//! CPU are counted; last, the followers are killed at once to weigh them and
//! the leader.
//!
//! Two observers of the bench's own (not counted, on their own thread) follow
//! the members prefix and the assignments prefix and time-stamp every change
//! of their key sets; the members' settled workloads are read from their
//! workers; every fenced transaction a member sends is timed by a wrapper
//! around its writer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use leader_core::{Layout, Member, MemberConfig, MemberHandle, MemberStore, PlanReport};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use worker_core::{
    ConsistentRead, Fence, FencedWrite, KvChange, KvWatch, StoreError, TxnLimits, TxnOp,
    TxnOutcome, WatchEvent,
};

use crate::measure::{fmt_bytes, fmt_ms, other_process_cpu_ns, process_cpu_us, rss_bytes, Allocs};
use crate::proxy::{ChildProxy, Counts};
use crate::rt::Lane;
use crate::stores::{Kind, Op, Store};

/// Longest wait for any one stage.
const STAGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of the leader scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// (members, items) pairs, each run on a fresh store.
    pub sizes: Vec<(usize, usize)>,
    /// Consul session TTL (Consul's minimum is 10 s).
    pub consul_ttl: Duration,
    /// etcd lease TTL.
    pub etcd_ttl: Duration,
    /// The TTL on both stores from [`LARGE_MEMBERS`] members on (at least).
    pub large_ttl: Duration,
    /// The leader's soak.
    pub leader_soak: Duration,
    /// The workers' soak.
    pub worker_soak: Duration,
    /// The workers' wait after a new leader appears.
    pub leader_settle: Duration,
    /// Length of the idle window.
    pub idle: Duration,
}

/// How often etcd's lessor looks for expired leases: a lease is revoked up
/// to this long after its TTL ran out.
pub const ETCD_LESSOR_CHECK: Duration = Duration::from_millis(500);

/// The start-up the write-rate bound (≥ 0.8 × the bare loop) is set for;
/// smaller start-ups (8 to 164 transactions) are printed, not judged.
pub const WRITES_BOUND_ITEMS: usize = 100_000;

/// From this many members on, the TTL is [`Params::large_ttl`]: with 1,000
/// members, the store and the bench on two cores, a 3 s etcd lease expires
/// during start-up (renewals every second wait behind the registrations).
pub const LARGE_MEMBERS: usize = 1000;

impl Params {
    fn ttl(&self, kind: Kind, members: usize) -> Duration {
        let ttl = match kind {
            Kind::Consul => self.consul_ttl,
            Kind::Etcd => self.etcd_ttl,
        };
        if members >= LARGE_MEMBERS {
            ttl.max(self.large_ttl)
        } else {
            ttl
        }
    }

    /// The documented bound on a dead member's detection (docs/etcd.md,
    /// docs/leader.md): etcd, the TTL (rounded up to whole seconds) plus
    /// the 500 ms of its lessor's expiry check; Consul with a plain session,
    /// 2 × TTL.
    fn detection_bound(&self, kind: Kind, members: usize) -> Duration {
        let ttl = self.ttl(kind, members);
        match kind {
            Kind::Consul => ttl * 2,
            Kind::Etcd => Duration::from_secs(ttl.as_secs_f64().ceil() as u64) + ETCD_LESSOR_CHECK,
        }
    }
}

/// One membership change, timed in four parts.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The event → the members prefix shows it (kill: member key deleted;
    /// join: member key written).
    pub detection: Duration,
    /// → the first assignment write after that.
    pub leader_soak: Duration,
    /// → the last assignment write of the plan (the store holds the new,
    /// balanced assignment).
    pub writes: Duration,
    /// → every live member's settled workload is its new assignment.
    pub worker_soak: Duration,
    /// The event → all settled.
    pub total: Duration,
    /// Plans made after the event.
    pub plans: Vec<PlanReport>,
}

impl Change {
    fn moved(&self) -> usize {
        self.plans.iter().map(|p| p.moved).sum()
    }
    fn min_moves(&self) -> usize {
        self.plans.iter().map(|p| p.min_moves).sum()
    }
    fn placed(&self) -> usize {
        self.plans.iter().map(|p| p.placed).sum()
    }
}

/// The idle window's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    /// Length (s).
    pub secs: f64,
    /// The members' store requests, counted by the proxy.
    pub counts: Counts,
    /// Store CPU (cores busy on average).
    pub store_cpu: f64,
    /// The members' CPU in this process (cores busy on average), the
    /// bench's own threads (observers, writer) subtracted; the proxy runs
    /// in a process of its own.
    pub members_cpu: f64,
}

/// Throughput of a run of fenced transactions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    /// Transactions applied.
    pub txns: usize,
    /// Keys written or deleted (the sequence check and guards not counted).
    pub keys: usize,
    /// The time they spanned, first sent → last answered, pauses longer than
    /// [`PAUSE`] (soaks, waits for acknowledgements) left out.
    pub busy: Duration,
    /// Of which inside `apply` (the round trips to the store).
    pub in_apply: Duration,
}

/// A gap between two transactions longer than this is a pause (a soak, a
/// wait for an acknowledgement), not write time.
pub const PAUSE: Duration = Duration::from_millis(100);

impl Rate {
    /// Keys per second of busy time.
    pub fn per_sec(&self) -> f64 {
        self.keys as f64 / self.busy.as_secs_f64()
    }

    /// The rate of the applied transactions in `sent` (in the order sent).
    fn of(sent: &[Sent]) -> Self {
        let mut rate = Self::default();
        let mut run: Option<(Instant, Instant)> = None;
        for t in sent.iter().filter(|t| t.applied) {
            rate.txns += 1;
            rate.keys += t
                .ops
                .iter()
                .filter(|op| matches!(op, TxnOp::Put { .. } | TxnOp::Delete { .. }))
                .count();
            rate.in_apply += t.ended.duration_since(t.started);
            run = match run {
                Some((from, to)) if t.started.saturating_duration_since(to) <= PAUSE => {
                    Some((from, t.ended.max(to)))
                }
                Some((from, to)) => {
                    rate.busy += to.duration_since(from);
                    Some((t.started, t.ended))
                }
                None => Some((t.started, t.ended)),
            };
        }
        if let Some((from, to)) = run {
            rate.busy += to.duration_since(from);
        }
        rate
    }
}

/// The leader's start-up writes next to a bare loop of the same transactions.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    /// The leader's.
    pub leader: Rate,
    /// The same transactions sent by a plain loop through the same backend
    /// and proxy: the assignment puts to the very keys, with the very
    /// values; the fence and anything else under a prefix of its own (see
    /// `bare_op`).
    pub bare: Rate,
}

impl Writes {
    /// The leader's rate over the bare loop's.
    pub fn ratio(&self) -> f64 {
        self.leader.per_sec() / self.bare.per_sec()
    }
}

/// A bulk add of work items, timed in four parts.
#[derive(Debug, Clone, Default)]
pub struct Bulk {
    /// Items added.
    pub added: usize,
    /// The bench's own write of the new items (plain transactions at the
    /// store's limit).
    pub store_write: Duration,
    /// End of that write → the leader's first transaction.
    pub leader_soak: Duration,
    /// → the leader's last transaction answered.
    pub writes: Duration,
    /// → every member's settled workload is its new assignment.
    pub worker_soak: Duration,
    /// Start of the bench's write → all settled.
    pub total: Duration,
    /// The leader's transactions.
    pub rate: Rate,
    /// Plans made after the write started.
    pub plans: Vec<PlanReport>,
}

/// Memory and descriptors of the cluster in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS` after start-up settled less `VmRSS` before the first member
    /// was spawned.
    pub rss_growth: u64,
    /// Live heap (counting allocator) over the same window.
    pub heap_growth: i64,
    /// Live heap freed by killing every follower at once, per follower.
    pub follower_heap: f64,
    /// Live heap freed by killing the leader's member after the followers:
    /// its member, its leader state and its proxy connection.
    pub leader_heap: i64,
    /// Connections the proxy accepted during start-up, per member.
    pub conns_per_member: f64,
    /// Open descriptors of this process after start-up.
    pub fds: usize,
    /// Open descriptors of the store's process after start-up.
    pub store_fds: usize,
}

/// What one size on one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// Members at start.
    pub members: usize,
    /// Work items.
    pub items: usize,
    /// Session / lease TTL.
    pub ttl: Duration,
    /// Documented detection bound for that TTL.
    pub detection_bound: Duration,
    /// Spawn of every member → every item settled exactly once, balanced.
    pub startup: Result<Duration, String>,
    /// A follower killed.
    pub kill: Result<Change, String>,
    /// A member joining.
    pub join: Result<Change, String>,
    /// Everything settled, nothing happening.
    pub idle: Result<Idle, String>,
    /// Leader soak and worker soak used.
    pub soaks: (Duration, Duration),
    /// Plans made during start-up.
    pub startup_plans: Vec<PlanReport>,
    /// The leader's start-up writes against a bare loop.
    pub writes: Result<Writes, String>,
    /// A tenth more items added at once.
    pub bulk: Result<Bulk, String>,
    /// Memory and descriptors.
    pub memory: Result<Memory, String>,
}

// ---------------------------------------------------------------------------
// Observers of a prefix.

#[derive(Debug, Default)]
struct Observed {
    keys: BTreeSet<String>,
    /// When the key set last changed.
    last_at: Option<Instant>,
    /// When each change of the key set was seen.
    log: Vec<Instant>,
}

/// Follows the key set under a prefix, time-stamping each change.
struct Observer {
    state: Arc<Mutex<Observed>>,
    bump: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Observer {
    async fn start(kv: Arc<dyn KvWatch>, prefix: &str, lane: &Lane) -> Self {
        let state = Arc::new(Mutex::new(Observed::default()));
        let (tx, bump) = watch::channel(0u64);
        let prefix = prefix.to_owned();
        let st = state.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = lane.spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                let Ok(snapshot) = kv.list(&prefix).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let keys: BTreeSet<String> = snapshot
                    .entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.key).into_owned())
                    .collect();
                record(&st, &tx, keys);
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                let Ok(mut stream) = kv.watch(&prefix, snapshot.revision).await else {
                    continue;
                };
                loop {
                    match stream.next().await {
                        Ok(WatchEvent::Snapshot(s)) => {
                            let keys = s
                                .entries
                                .iter()
                                .map(|e| String::from_utf8_lossy(&e.key).into_owned())
                                .collect();
                            record(&st, &tx, keys);
                        }
                        Ok(WatchEvent::Changes { changes, .. }) => {
                            let mut keys = st.lock().expect("observer state").keys.clone();
                            for c in changes {
                                match c {
                                    KvChange::Put(e) => {
                                        keys.insert(String::from_utf8_lossy(&e.key).into_owned());
                                    }
                                    KvChange::Delete { key } => {
                                        keys.remove(String::from_utf8_lossy(&key).as_ref());
                                    }
                                }
                            }
                            record(&st, &tx, keys);
                        }
                        Ok(WatchEvent::Progress { .. }) => {}
                        Ok(WatchEvent::Lost { .. }) | Err(_) => break,
                    }
                }
            }
        });
        let _ = ready_rx.await;
        Self { state, bump, task }
    }

    /// Waits until `ok` holds for the observed key set; returns when the key
    /// set last changed (the change that made it hold).
    async fn wait_for(
        &mut self,
        what: &str,
        ok: impl Fn(&BTreeSet<String>) -> bool,
    ) -> Result<Instant, String> {
        let fut = async {
            loop {
                {
                    let s = self.state.lock().expect("observer state");
                    if ok(&s.keys) {
                        return s.last_at.unwrap_or_else(Instant::now);
                    }
                }
                if self.bump.changed().await.is_err() {
                    return Instant::now();
                }
            }
        };
        tokio::time::timeout(STAGE_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{what}: not within {STAGE_TIMEOUT:?}"))
    }

    /// The first change seen after `t`, if any.
    fn first_change_after(&self, t: Instant) -> Option<Instant> {
        let s = self.state.lock().expect("observer state");
        s.log.iter().copied().find(|&at| at > t)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(state: &Mutex<Observed>, tx: &watch::Sender<u64>, keys: BTreeSet<String>) {
    let now = Instant::now();
    let mut s = state.lock().expect("observer state");
    if s.keys != keys || s.last_at.is_none() {
        s.keys = keys;
        s.last_at = Some(now);
        s.log.push(now);
        drop(s);
        tx.send_modify(|n| *n += 1);
    }
}

// ---------------------------------------------------------------------------
// The members' fenced transactions, timed.

/// One fenced transaction as a member's writer sent it.
#[derive(Debug, Clone)]
struct Sent {
    started: Instant,
    ended: Instant,
    ops: Vec<TxnOp>,
    applied: bool,
}

type SentLog = Arc<Mutex<Vec<Sent>>>;

/// A member's writer that notes every transaction it sends (only a leader
/// sends any).
struct Recording {
    inner: Arc<dyn FencedWrite>,
    log: SentLog,
}

#[async_trait]
impl FencedWrite for Recording {
    fn max_ops(&self) -> usize {
        self.inner.max_ops()
    }

    fn limits(&self) -> TxnLimits {
        self.inner.limits()
    }

    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        let started = Instant::now();
        let outcome = self.inner.apply(fence, ops).await;
        let ended = Instant::now();
        self.log.lock().expect("sent log").push(Sent {
            started,
            ended,
            ops: ops.to_vec(),
            applied: matches!(outcome, Ok(TxnOutcome::Applied { .. })),
        });
        outcome
    }

    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError> {
        self.inner.read_consistent(prefixes, keys).await
    }
}

fn take_log(log: &SentLog) -> Vec<Sent> {
    std::mem::take(&mut *log.lock().expect("sent log"))
}

/// The bare loop's keys other than the assignments: the leader's with
/// `coordinator/` replaced by this (same length), so that its fence and
/// anything it deletes stay apart from the cluster's.
const BARE_SEGMENT: &str = "benchbarekv/";

fn bare_key(key: &str) -> String {
    key.replacen("coordinator/", BARE_SEGMENT, 1)
}

/// `value` changed, at the same length: its first byte replaced (an
/// identical put wakes no watcher on Consul, which skips writing an entry
/// equal to the one it holds).
fn changed_value(value: &bytes::Bytes) -> bytes::Bytes {
    let mut v = value.to_vec();
    match v.first_mut() {
        Some(b) => *b = if *b == b'~' { b'!' } else { b'~' },
        None => v.push(b'~'),
    }
    v.into()
}

/// What the bare loop writes for the leader's `op`. An assignment put goes
/// to the very key, with the value changed at the same length if `change`
/// (then restored by a second pass without it): every member's watch sees
/// the change and its worker settles and acknowledges it, as under the
/// leader: the same transactions, watched and answered the same. Anything
/// else goes under [`bare_key`].
fn bare_op(layout: &Layout, op: &TxnOp, change: bool) -> TxnOp {
    match op {
        TxnOp::Put { key, value } if key.starts_with(&layout.assignments) => TxnOp::Put {
            key: key.clone(),
            value: if change {
                changed_value(value)
            } else {
                value.clone()
            },
        },
        TxnOp::Put { key, value } => TxnOp::Put {
            key: bare_key(key),
            value: value.clone(),
        },
        TxnOp::Delete { key } => TxnOp::Delete { key: bare_key(key) },
        TxnOp::Absent { key } => TxnOp::Absent { key: bare_key(key) },
        TxnOp::Sequence { key, index, value } => TxnOp::Sequence {
            key: bare_key(key),
            index: *index,
            value: value.clone(),
        },
    }
}

/// Sends `txns` (the leader's, keys moved by [`bare_key`]) one after the
/// other through a fresh backend on `endpoint`, fenced on an election of its
/// own, each with the sequence check at the position the previous one
/// returned: what the leader does, without the leader.
async fn bare_loop(
    kind: Kind,
    endpoint: String,
    layout: &Layout,
    ttl: Duration,
    txns: &[Vec<TxnOp>],
    change: bool,
) -> Result<Rate, String> {
    let store = member_store(kind, endpoint, layout, None).await;
    let session = store
        .membership
        .open_session(ttl)
        .await
        .map_err(|e| format!("bare loop: session: {e}"))?;
    let fence = store
        .election
        .try_lead(&bare_key(&layout.leader), &session, "bench-bare-loop")
        .await
        .map_err(|e| format!("bare loop: election: {e}"))?
        .ok_or("bare loop: not leading its own election")?;
    let txns: Vec<Vec<TxnOp>> = txns
        .iter()
        .map(|ops| ops.iter().map(|op| bare_op(layout, op, change)).collect())
        .collect();
    let mut sequence = 0;
    let mut sent = Vec::with_capacity(txns.len());
    for mut ops in txns {
        for op in &mut ops {
            if let TxnOp::Sequence { index, .. } = op {
                *index = sequence;
            }
        }
        let started = Instant::now();
        let outcome = store.writer.apply(&fence, &ops).await;
        let ended = Instant::now();
        match outcome {
            Ok(TxnOutcome::Applied { revision }) => sequence = revision,
            other => return Err(format!("bare loop: {other:?}")),
        }
        sent.push(Sent {
            started,
            ended,
            ops,
            applied: true,
        });
    }
    let _ = store.membership.close_session(&session).await;
    Ok(Rate::of(&sent))
}

// ---------------------------------------------------------------------------
// Balance checks.

/// True when `holdings` (member → its items) hold exactly `items` distinct
/// items, only on `live` members, each at `floor` or `ceil` of items / live.
fn balanced<'a>(
    holdings: impl Iterator<Item = (&'a str, &'a str)>,
    live: &BTreeSet<String>,
    items: usize,
) -> bool {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (member, item) in holdings {
        if !live.contains(member) {
            return false;
        }
        *counts.entry(member).or_default() += 1;
        seen.insert(item);
        total += 1;
    }
    let (lo, hi) = (items / live.len(), items.div_ceil(live.len()));
    total == items
        && seen.len() == items
        && live
            .iter()
            .all(|m| (lo..=hi).contains(counts.get(m.as_str()).unwrap_or(&0)))
}

/// The observed assignment keys as (member, item) pairs.
fn assignment_pairs<'a>(
    keys: &'a BTreeSet<String>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    keys.iter()
        .filter_map(move |k| k.strip_prefix(prefix).and_then(|rest| rest.split_once('/')))
}

/// Waits until the settled workloads of `live` members are balanced.
async fn workers_balanced(
    members: &BTreeMap<String, MemberHandle>,
    live: &BTreeSet<String>,
    items: usize,
    notify: &Notify,
    what: &str,
) -> Result<Instant, String> {
    let fut = async {
        loop {
            let notified = notify.notified();
            let loads: Vec<(&str, Arc<worker_core::Workload>)> = live
                .iter()
                .filter_map(|id| {
                    members
                        .get(id)
                        .map(|m| (id.as_str(), m.worker().workload()))
                })
                .collect();
            // Counts first (cheap); the item-by-item check only when they fit.
            let (lo, hi) = (items / live.len(), items.div_ceil(live.len()));
            let ok = loads.len() == live.len()
                && loads.iter().map(|(_, w)| w.len()).sum::<usize>() == items
                && loads.iter().all(|(_, w)| (lo..=hi).contains(&w.len()))
                && balanced(
                    loads
                        .iter()
                        .flat_map(|(id, w)| w.keys().map(move |k| (*id, k.as_ref()))),
                    live,
                    items,
                );
            if ok {
                return Instant::now();
            }
            notified.await;
        }
    };
    tokio::time::timeout(STAGE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("{what}: not within {STAGE_TIMEOUT:?}"))
}

/// Waits until every member's settled workload holds the values the
/// assignment puts of `txns` wrote for its items.
async fn workloads_hold(
    members: &BTreeMap<String, MemberHandle>,
    layout: &Layout,
    txns: &[Vec<TxnOp>],
    notify: &Notify,
) -> Result<(), String> {
    let written: BTreeMap<&str, &bytes::Bytes> = txns
        .iter()
        .flatten()
        .filter_map(|op| match op {
            TxnOp::Put { key, value } if key.starts_with(&layout.assignments) => {
                Some((key.as_str(), value))
            }
            _ => None,
        })
        .collect();
    let fut = async {
        loop {
            let notified = notify.notified();
            let held = members.iter().all(|(id, m)| {
                m.worker().workload().iter().all(|(work, value)| {
                    written
                        .get(layout.assignment_key(id, work).as_str())
                        .is_none_or(|v| *v == value)
                })
            });
            if held {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(STAGE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("workloads not back within {STAGE_TIMEOUT:?}"))
}

/// Forwards every settled-workload change of `m` to `notify`.
fn forward(m: &MemberHandle, notify: &Arc<Notify>) -> JoinHandle<()> {
    let mut w = m.worker().watch();
    let notify = notify.clone();
    tokio::spawn(async move {
        while w.changed().await.is_ok() {
            notify.notify_waiters();
        }
    })
}

fn drain(rxs: &mut [broadcast::Receiver<PlanReport>]) -> Vec<PlanReport> {
    let mut all = Vec::new();
    for rx in rxs {
        while let Ok(p) = rx.try_recv() {
            all.push(p);
        }
    }
    all
}

// ---------------------------------------------------------------------------
// Connections.

/// A member's own connection to `endpoint` (one backend value per member),
/// its fenced transactions noted in `log` if given.
async fn member_store(
    kind: Kind,
    endpoint: String,
    layout: &Layout,
    log: Option<&SentLog>,
) -> MemberStore {
    let mut store = match kind {
        Kind::Consul => {
            let mut config = ConsulConfig::new(vec![endpoint]);
            config.leader_key.clone_from(&layout.leader);
            MemberStore::from_backend(ConsulBackend::new(config).expect("Consul backend"))
        }
        Kind::Etcd => MemberStore::from_backend(
            EtcdBackend::connect(EtcdConfig::new(vec![endpoint]).with_election(&layout.leader))
                .await
                .expect("etcd backend"),
        ),
    };
    if let Some(log) = log {
        store.writer = Arc::new(Recording {
            inner: store.writer,
            log: log.clone(),
        });
    }
    store
}

/// The observers' connection (direct, not counted), made on `lane`.
async fn observer_kv(kind: Kind, endpoint: String, lane: &Lane) -> Arc<dyn KvWatch> {
    lane.run(async move {
        let kv: Arc<dyn KvWatch> = match kind {
            Kind::Consul => Arc::new(
                ConsulBackend::new(ConsulConfig::new(vec![endpoint])).expect("Consul backend"),
            ),
            Kind::Etcd => Arc::new(
                EtcdBackend::connect(EtcdConfig::new(vec![endpoint]))
                    .await
                    .expect("etcd backend"),
            ),
        };
        kv
    })
    .await
}

fn member_id(j: usize) -> String {
    format!("m{j:03}")
}

/// The bench's own threads, whose CPU is not the members'.
#[derive(Debug, Clone)]
pub struct Lanes {
    /// The plain writer.
    pub writer: Lane,
    /// The observers.
    pub observe: Lane,
    /// The first member, which leads: a thread of its own, as its own
    /// process would have (the other members share the bench's runtime);
    /// the bare loop runs on it too. Not one of the bench's own threads.
    pub leader: Lane,
}

impl Lanes {
    async fn cpu_us(&self) -> u64 {
        self.writer.cpu_us().await + self.observe.cpu_us().await
    }
}

// ---------------------------------------------------------------------------
// The scenario.

/// Runs one size on a fresh store.
#[allow(clippy::too_many_lines)] // One straight sequence of measurements, easier to follow whole.
pub async fn run(
    kind: Kind,
    (n, items): (usize, usize),
    params: &Params,
    lanes: &Lanes,
) -> Outcome {
    let ttl = params.ttl(kind, n);
    let mut outcome = Outcome {
        kind,
        members: n,
        items,
        ttl,
        detection_bound: params.detection_bound(kind, n),
        startup: Err("not reached".to_owned()),
        kill: Err("not reached".to_owned()),
        join: Err("not reached".to_owned()),
        idle: Err("not reached".to_owned()),
        soaks: (params.leader_soak, params.worker_soak),
        startup_plans: Vec::new(),
        writes: Err("not reached".to_owned()),
        bulk: Err("not reached".to_owned()),
        memory: Err("not reached".to_owned()),
    };
    eprintln!("[leader] {kind}: {n} members, {items} items: starting the store");
    let store = Store::start(kind).await;
    let layout = Layout::default();
    let writer = store.writer(lanes.writer.clone()).await;
    writer
        .bulk(
            (0..items)
                .map(|k| Op::Put(format!("{}w{k:05}", layout.work), format!("p{k}")))
                .collect(),
        )
        .await;
    let (target, protocol) = store.proxy_target();
    // In a process of its own: 1,000 members on Consul hold about 5,000
    // connections, and the proxy two descriptors for each.
    let proxy = ChildProxy::start(target, protocol);
    let pid = store.pid();
    let kv = observer_kv(kind, store.endpoint(), &lanes.observe).await;
    // Before anything that lives as long as the members.
    let (heap0, rss0) = (Allocs::now().live, rss_bytes());
    let mut members_obs = Observer::start(kv.clone(), &layout.members, &lanes.observe).await;

    let config = |id: &str| {
        MemberConfig::new(id)
            .layout(layout.clone())
            .ttl(ttl)
            .leader_soak(params.leader_soak)
            .worker_timing(params.worker_soak, params.leader_settle)
    };
    let log: SentLog = Arc::default();
    let notify = Arc::new(Notify::new());
    let mut forwarders = Vec::new();
    let mut members = BTreeMap::new();
    let mut plans = Vec::new();
    let t0 = Instant::now();
    // The first member alone, on its own thread, until it leads.
    let first = {
        let (config, url, layout, log) = (
            config(&member_id(0)),
            proxy.url(),
            layout.clone(),
            log.clone(),
        );
        lanes
            .leader
            .run(async move {
                Member::spawn(&config, &member_store(kind, url, &layout, Some(&log)).await)
            })
            .await
            .expect("member config")
    };
    let mut leading = first.leading();
    if tokio::time::timeout(STAGE_TIMEOUT, leading.wait_for(Option::is_some))
        .await
        .is_err()
    {
        eprintln!("[leader] {kind}: the first member does not lead");
    }
    plans.push(first.plans());
    forwarders.push(forward(&first, &notify));
    members.insert(member_id(0), first);
    for j in 1..n {
        let id = member_id(j);
        let m = Member::spawn(
            &config(&id),
            &member_store(kind, proxy.url(), &layout, Some(&log)).await,
        )
        .expect("member config");
        plans.push(m.plans());
        forwarders.push(forward(&m, &notify));
        members.insert(id, m);
    }
    let mut live: BTreeSet<String> = members.keys().cloned().collect();
    outcome.startup = workers_balanced(&members, &live, items, &notify, "startup")
        .await
        .map(|at| at.duration_since(t0));
    eprintln!(
        "[leader] {kind}: {n}×{items}: startup {:?}",
        outcome.startup
    );
    heap_note(kind, "after start-up");
    let mut memory = Memory {
        rss_growth: rss_bytes().saturating_sub(rss0),
        heap_growth: Allocs::now().live - heap0,
        conns_per_member: proxy.counts().connections as f64 / n as f64,
        fds: open_fds("self"),
        store_fds: open_fds(&pid.to_string()),
        ..Memory::default()
    };

    if outcome.startup.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        outcome.startup_plans = drain(&mut plans);
        let sent = take_log(&log);
        let leader = Rate::of(&sent);
        let txns: Vec<Vec<TxnOp>> = sent
            .into_iter()
            .filter(|t| t.applied)
            .map(|t| t.ops)
            .collect();
        eprintln!(
            "[leader] {kind}: bare loop of the leader's {} start-up transactions",
            txns.len()
        );
        let (url, bare_layout, bare_txns) = (proxy.url(), layout.clone(), txns.clone());
        outcome.writes = lanes
            .leader
            .run(async move { bare_loop(kind, url, &bare_layout, ttl, &bare_txns, true).await })
            .await
            .map(|bare| Writes { leader, bare });
        // The bare loop's own keys (not the assignments) go as they came, a
        // transaction at a time (one delete of 100,000 keys holds etcd's
        // apply loop for seconds, long enough for the members' leases to
        // expire); then the values go back as the leader wrote them (not
        // timed, its fence anew), and every worker settles on them again.
        let bare_own: BTreeSet<String> = txns
            .iter()
            .flatten()
            .filter(|op| !matches!(op, TxnOp::Absent { .. }))
            .map(|op| bare_op(&layout, op, false).key().to_owned())
            .filter(|key| key.contains(BARE_SEGMENT))
            .collect();
        writer
            .bulk(bare_own.iter().cloned().map(Op::Del).collect())
            .await;
        let (url, bare_layout, bare_txns) = (proxy.url(), layout.clone(), txns.clone());
        let restored = lanes
            .leader
            .run(async move { bare_loop(kind, url, &bare_layout, ttl, &bare_txns, false).await })
            .await;
        let settled = match restored {
            Ok(_) => workloads_hold(&members, &layout, &txns, &notify).await,
            Err(e) => Err(e),
        };
        if let Err(e) = settled {
            outcome.writes = Err(format!("restoring after the bare loop: {e}"));
        }
        writer
            .bulk(bare_own.into_iter().map(Op::Del).collect())
            .await;
        eprintln!("[leader] {kind}: writes: {:?}", outcome.writes);
        heap_note(kind, "after the bare loop");
    }
    // Started only now: on Consul each change of the assignments makes it
    // read them all, which would weigh on the store during start-up.
    let mut assign_obs = Observer::start(kv, &layout.assignments, &lanes.observe).await;

    if outcome.startup.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&mut plans);
        // Kill a member that does not lead.
        let victim = members
            .iter()
            .find(|(_, m)| !m.is_leader())
            .map(|(id, _)| id.clone())
            .expect("a follower");
        let victim_key = format!("{}{victim}", layout.members);
        live.remove(&victim);
        let handle = members.remove(&victim).expect("victim");
        eprintln!("[leader] {kind}: killing {victim}");
        let t = Instant::now();
        handle.kill().await;
        outcome.kill = async {
            let detected = members_obs
                .wait_for("kill: member key deleted", |k| !k.contains(&victim_key))
                .await?;
            let written = assign_obs
                .wait_for("kill: assignments balanced", |k| {
                    balanced(assignment_pairs(k, &layout.assignments), &live, items)
                })
                .await?;
            let first = assign_obs
                .first_change_after(detected)
                .ok_or("kill: no assignment write seen")?;
            let settled =
                workers_balanced(&members, &live, items, &notify, "kill: workers").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, String>(Change {
                detection: detected.duration_since(t),
                leader_soak: first.duration_since(detected),
                writes: written.duration_since(first),
                worker_soak: settled.saturating_duration_since(written),
                total: settled.duration_since(t),
                plans: drain(&mut plans),
            })
        }
        .await;
        eprintln!("[leader] {kind}: kill: {:?}", outcome.kill);
        heap_note(kind, "after the kill");
    }

    if outcome.kill.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&mut plans);
        let id = member_id(n);
        let key = format!("{}{id}", layout.members);
        eprintln!("[leader] {kind}: {id} joins");
        let t = Instant::now();
        let m = Member::spawn(
            &config(&id),
            &member_store(kind, proxy.url(), &layout, Some(&log)).await,
        )
        .expect("member config");
        plans.push(m.plans());
        forwarders.push(forward(&m, &notify));
        members.insert(id.clone(), m);
        live.insert(id);
        outcome.join = async {
            let detected = members_obs
                .wait_for("join: member key written", |k| k.contains(&key))
                .await?;
            let written = assign_obs
                .wait_for("join: assignments balanced", |k| {
                    balanced(assignment_pairs(k, &layout.assignments), &live, items)
                })
                .await?;
            let first = assign_obs
                .first_change_after(detected)
                .ok_or("join: no assignment write seen")?;
            let settled =
                workers_balanced(&members, &live, items, &notify, "join: workers").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, String>(Change {
                detection: detected.duration_since(t),
                leader_soak: first.duration_since(detected),
                writes: written.duration_since(first),
                worker_soak: settled.saturating_duration_since(written),
                total: settled.duration_since(t),
                plans: drain(&mut plans),
            })
        }
        .await;
        eprintln!("[leader] {kind}: join: {:?}", outcome.join);
        heap_note(kind, "after the join");
    }
    // The bulk add is timed by the leader's transactions; the observer
    // would only weigh on the store.
    drop(assign_obs);

    if outcome.join.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&mut plans);
        take_log(&log);
        let added = (items / 10).max(1);
        eprintln!("[leader] {kind}: adding {added} items");
        let t = Instant::now();
        writer
            .bulk(
                (items..items + added)
                    .map(|k| Op::Put(format!("{}w{k:05}", layout.work), format!("p{k}")))
                    .collect(),
            )
            .await;
        let wrote = Instant::now();
        let all_items = items + added;
        outcome.bulk = async {
            let settled =
                workers_balanced(&members, &live, all_items, &notify, "bulk: workers").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sent = take_log(&log);
            let applied: Vec<&Sent> = sent.iter().filter(|s| s.applied).collect();
            let (first, last) = match (applied.first(), applied.last()) {
                (Some(f), Some(l)) => (f.started, l.ended),
                _ => return Err("bulk: no leader transaction seen".to_owned()),
            };
            Ok::<_, String>(Bulk {
                added,
                store_write: wrote.duration_since(t),
                leader_soak: first.saturating_duration_since(wrote),
                writes: last.duration_since(first),
                worker_soak: settled.saturating_duration_since(last),
                total: settled.duration_since(t),
                rate: Rate::of(&sent),
                plans: drain(&mut plans),
            })
        }
        .await;
        eprintln!("[leader] {kind}: bulk: {:?}", outcome.bulk);
        heap_note(kind, "after the bulk add");
    }

    if outcome.bulk.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("[leader] {kind}: idle for {:?}", params.idle);
        let (c0, s0, p0, l0, at0) = (
            proxy.counts(),
            other_process_cpu_ns(pid),
            process_cpu_us(),
            lanes.cpu_us().await,
            Instant::now(),
        );
        tokio::time::sleep(params.idle).await;
        let (c1, s1, p1, l1, at1) = (
            proxy.counts(),
            other_process_cpu_ns(pid),
            process_cpu_us(),
            lanes.cpu_us().await,
            Instant::now(),
        );
        let secs = at1.duration_since(at0).as_secs_f64();
        let moved_after = drain(&mut plans);
        outcome.idle = if moved_after.iter().any(|p| p.moved + p.placed > 0) {
            Err(format!("plans moved items while idle: {moved_after:?}"))
        } else {
            Ok(Idle {
                secs,
                counts: c1.since(c0),
                store_cpu: s1.saturating_sub(s0) as f64 / 1e9 / secs,
                members_cpu: (p1.saturating_sub(p0)).saturating_sub(l1.saturating_sub(l0)) as f64
                    / 1e6
                    / secs,
            })
        };
    }

    for f in forwarders {
        f.abort();
    }
    if outcome.startup.is_ok() {
        // Every follower at once, within the TTL (before the leader notices
        // and plans): what they held is freed; the leader alone is left.
        heap_note(kind, "after idle");
        let before = Allocs::now().live;
        let followers: Vec<String> = members
            .iter()
            .filter(|(_, m)| !m.is_leader())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &followers {
            if let Some(m) = members.remove(id) {
                m.kill().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = Allocs::now().live;
        heap_note(kind, "the leader alone");
        let left = members.len();
        // Then the leader: what it frees is its member with its leader state.
        for (_, m) in std::mem::take(&mut members) {
            m.kill().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let none = Allocs::now().live;
        heap_note(kind, "no member");
        memory.follower_heap = (before - after) as f64 / followers.len().max(1) as f64;
        memory.leader_heap = after - none;
        outcome.memory = if left == 1 {
            Ok(memory)
        } else {
            Err(format!("{left} members left, not 1"))
        };
    }
    drop(members_obs);
    for (_, m) in members {
        m.kill().await;
    }
    drop(proxy);
    drop(store);
    outcome
}

/// Open descriptors of process `pid` (`self` for this one).
fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Progress: the live heap and RSS of this process at `stage`.
fn heap_note(kind: Kind, stage: &str) {
    eprintln!(
        "[leader] {kind}: {stage}: live heap {}, RSS {}",
        fmt_bytes(Allocs::now().live as f64),
        fmt_bytes(rss_bytes() as f64)
    );
}

// ---------------------------------------------------------------------------
// Output.

fn ms(d: Duration) -> String {
    fmt_ms(d.as_secs_f64() * 1e3)
}

fn change_cells(c: &Result<Change, String>) -> String {
    match c {
        Ok(c) => format!(
            "{} | {} | {} | {} | **{}** | {} / {} / {} ({} plan{})",
            ms(c.detection),
            ms(c.leader_soak),
            ms(c.writes),
            ms(c.worker_soak),
            ms(c.total),
            c.placed(),
            c.moved(),
            c.min_moves(),
            c.plans.len(),
            if c.plans.len() == 1 { "" } else { "s" },
        ),
        Err(e) => format!("FAILED: {e} | | | | | "),
    }
}

/// The scenario's tables, in markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Member killed (no leave; its session / lease expires as after SIGKILL):\n"
    );
    let _ = writeln!(
        s,
        "| store | members × items | TTL | startup: all settled | detection | leader soak | writes | worker soak | total | placed / moved / min moves |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for o in outcomes {
        let startup = o
            .startup
            .as_ref()
            .map_or_else(|e| format!("FAILED: {e}"), |d| ms(*d));
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} s | {startup} | {} |",
            o.kind,
            o.members,
            o.items,
            o.ttl.as_secs(),
            change_cells(&o.kill)
        );
    }
    let _ = writeln!(s, "\nMember joining, then idle:\n");
    let _ = writeln!(
        s,
        "| store | members × items | registered | leader soak | writes | worker soak | total | placed / moved / min moves | idle: requests/s | idle: store CPU | idle: members' CPU |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for o in outcomes {
        let idle = match &o.idle {
            Ok(i) => format!(
                "{:.1}{} | {:.1} % | {:.1} %",
                i.counts.requests as f64 / i.secs,
                if i.counts.pings > 0 {
                    format!(" (+{} pings)", i.counts.pings)
                } else {
                    String::new()
                },
                i.store_cpu * 100.0,
                i.members_cpu * 100.0
            ),
            Err(e) => format!("FAILED: {e} | | "),
        };
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} | {idle} |",
            o.kind,
            o.members,
            o.items,
            change_cells(&o.join),
        );
    }
    writes_table(&mut s, outcomes);
    plans_table(&mut s, outcomes);
    s
}

/// The start-up writes against the bare loop, and the bulk add.
fn writes_table(s: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(
        s,
        "\nThe leader's start-up writes next to a bare loop of the same transactions, then a bulk add of a tenth more items:\n"
    );
    let _ = writeln!(
        s,
        "| store | members × items | start-up: leader's writes | bare loop | leader ÷ bare | bulk add | bench's write | leader soak | writes | worker soak | total | placed / moved / min moves |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for o in outcomes {
        let writes = match &o.writes {
            Ok(w) => format!(
                "{} | {} | **{:.2}**",
                rate_cell(&w.leader),
                rate_cell(&w.bare),
                w.ratio()
            ),
            Err(e) => format!("FAILED: {e} | | "),
        };
        let bulk = match &o.bulk {
            Ok(b) => format!(
                "{} | {} | {} | {} ({}) | {} | **{}** | {} / {} / {} ({} plan{})",
                b.added,
                ms(b.store_write),
                ms(b.leader_soak),
                ms(b.writes),
                rate_cell(&b.rate),
                ms(b.worker_soak),
                ms(b.total),
                b.plans.iter().map(|p| p.placed).sum::<usize>(),
                b.plans.iter().map(|p| p.moved).sum::<usize>(),
                b.plans.iter().map(|p| p.min_moves).sum::<usize>(),
                b.plans.len(),
                if b.plans.len() == 1 { "" } else { "s" },
            ),
            Err(e) => format!("FAILED: {e} | | | | | | "),
        };
        let _ = writeln!(
            s,
            "| {} | {} × {} | {writes} | {bulk} |",
            o.kind, o.members, o.items
        );
    }
}

/// Time per plan, memory and descriptors.
fn plans_table(s: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(
        s,
        "\nThe leader's time per plan (the machine call that planned), memory and descriptors:\n"
    );
    let _ = writeln!(
        s,
        "| store | members × items | plan: start-up | kill | join | bulk add | RSS growth at start-up (÷ members) | live heap growth at start-up (÷ members) | live heap per follower | leader's member, live heap | connections per member | open files: bench / store |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let plan_ms = |plans: &[PlanReport]| match plans.iter().map(|p| p.took).max() {
            Some(d) if plans.len() > 1 => format!("{} (max of {})", ms(d), plans.len()),
            Some(d) => ms(d),
            None => "–".to_owned(),
        };
        let none: &[PlanReport] = &[];
        let mem = match &o.memory {
            Ok(m) => format!(
                "{} ({}) | {} ({}) | {} | {} | {:.1} | {} / {}",
                fmt_bytes(m.rss_growth as f64),
                fmt_bytes(m.rss_growth as f64 / o.members as f64),
                fmt_bytes(m.heap_growth as f64),
                fmt_bytes(m.heap_growth as f64 / o.members as f64),
                fmt_bytes(m.follower_heap),
                fmt_bytes(m.leader_heap as f64),
                m.conns_per_member,
                m.fds,
                m.store_fds
            ),
            Err(e) => format!("FAILED: {e} | | | | | "),
        };
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} | {} | {} | {} | {mem} |",
            o.kind,
            o.members,
            o.items,
            plan_ms(&o.startup_plans),
            plan_ms(o.kill.as_ref().map_or(none, |c| c.plans.as_slice())),
            plan_ms(o.join.as_ref().map_or(none, |c| c.plans.as_slice())),
            plan_ms(o.bulk.as_ref().map_or(none, |b| b.plans.as_slice())),
        );
    }
}

/// `keys/s (keys in txns, mean round trip)`.
fn rate_cell(r: &Rate) -> String {
    format!(
        "{:.0} keys/s ({} in {} txns, {} each in `apply`)",
        r.per_sec(),
        r.keys,
        r.txns,
        ms(r.in_apply / u32::try_from(r.txns.max(1)).unwrap_or(u32::MAX))
    )
}

/// Each figure against its bound (docs/leader.md).
pub fn verdicts(outcomes: &[Outcome]) -> Vec<String> {
    let mut v = Vec::new();
    for o in outcomes {
        let (ls, ws) = o.soaks;
        if let Ok(k) = &o.kill {
            let bound = o.detection_bound + ls + k.writes + ws;
            v.push(format!(
                "leader {} {}×{} kill: detection {} (bound {}), total {} vs expiry + leader soak + writes + worker soak = {} — {}; moved {} = min {} — {}",
                o.kind,
                o.members,
                o.items,
                ms(k.detection),
                ms(o.detection_bound),
                ms(k.total),
                ms(bound),
                if k.total <= bound { "within" } else { "ABOVE" },
                k.moved(),
                k.min_moves(),
                if k.moved() == k.min_moves() { "met" } else { "MISSED" }
            ));
        }
        if let Ok(j) = &o.join {
            v.push(format!(
                "leader {} {}×{} join: total {}; moved {} = min {} — {}",
                o.kind,
                o.members,
                o.items,
                ms(j.total),
                j.moved(),
                j.min_moves(),
                if j.moved() == j.min_moves() {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
        if let Ok(w) = &o.writes {
            v.push(format!(
                "leader {} {}×{} start-up writes: leader {:.0} keys/s vs bare loop {:.0} keys/s = {:.2}× (bound ≥ 0.80×) — {}",
                o.kind,
                o.members,
                o.items,
                w.leader.per_sec(),
                w.bare.per_sec(),
                w.ratio(),
                if o.items < WRITES_BOUND_ITEMS {
                    "not judged below 100,000 items (a few dozen transactions: noise)"
                } else if w.ratio() >= 0.8 {
                    "met"
                } else {
                    "BELOW"
                }
            ));
        }
        if let Ok(b) = &o.bulk {
            let placed: usize = b.plans.iter().map(|p| p.placed).sum();
            let moved: usize = b.plans.iter().map(|p| p.moved).sum();
            let min: usize = b.plans.iter().map(|p| p.min_moves).sum();
            v.push(format!(
                "leader {} {}×{} bulk add of {}: total {} (bench's write {} + leader soak {} + writes {} + worker soak {}); placed {} = added {}, moved {} = min {} — {}",
                o.kind,
                o.members,
                o.items,
                b.added,
                ms(b.total),
                ms(b.store_write),
                ms(b.leader_soak),
                ms(b.writes),
                ms(b.worker_soak),
                placed,
                b.added,
                moved,
                min,
                if placed == b.added && moved == min {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn balanced_needs_every_item_once_on_live_members_within_one() {
        let two = live(&["a", "b"]);
        assert!(balanced(
            [("a", "1"), ("a", "2"), ("b", "3")].into_iter(),
            &two,
            3
        ));
        // An item twice.
        assert!(!balanced(
            [("a", "1"), ("b", "1"), ("b", "3")].into_iter(),
            &two,
            3
        ));
        // Off balance.
        assert!(!balanced(
            [("a", "1"), ("a", "2"), ("a", "3"), ("b", "4")].into_iter(),
            &two,
            4
        ));
        // On a member that is not live.
        assert!(!balanced(
            [("a", "1"), ("c", "2"), ("b", "3")].into_iter(),
            &two,
            3
        ));
    }

    #[test]
    fn assignment_keys_split_into_member_and_item() {
        let keys: BTreeSet<String> = ["p/m1/w1", "p/m2/w2", "other/m1/w3"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let pairs: Vec<_> = assignment_pairs(&keys, "p/").collect();
        assert_eq!(pairs, vec![("m1", "w1"), ("m2", "w2")]);
    }
}
