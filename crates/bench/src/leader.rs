//! Scenario 4: the leader half on a real store. N full members (each with a
//! connection of its own, as N processes would have) spread the work items;
//! one member that does not lead is killed (no resignation, no session close:
//! its session / lease expires as after SIGKILL) and the way its items reach
//! the survivors is timed in four parts; then a member joins; then the whole
//! cluster idles while its store requests and CPU are counted.
//!
//! Two observers of the bench's own (not counted, on their own thread) follow
//! the members prefix and the assignments prefix and time-stamp every change
//! of their key sets; the members' settled workloads are read from their
//! workers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use leader_core::{Layout, Member, MemberConfig, MemberHandle, MemberStore, PlanReport};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use worker_core::{KvChange, KvWatch, WatchEvent};

use crate::measure::{fmt_ms, other_process_cpu_ns, process_cpu_us};
use crate::proxy::{CountingProxy, Counts, Protocol};
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
    /// The leader's soak.
    pub leader_soak: Duration,
    /// The workers' soak.
    pub worker_soak: Duration,
    /// The workers' wait after a new leader appears.
    pub leader_settle: Duration,
    /// Length of the idle window.
    pub idle: Duration,
}

impl Params {
    fn ttl(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Consul => self.consul_ttl,
            Kind::Etcd => self.etcd_ttl,
        }
    }

    /// The documented bound on a dead member's detection (docs/leader.md):
    /// etcd, the TTL (rounded up to whole seconds); Consul, 2 × TTL.
    fn detection_bound(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Consul => self.consul_ttl * 2,
            Kind::Etcd => Duration::from_secs(self.etcd_ttl.as_secs_f64().ceil() as u64),
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
    /// bench's own threads (observers, proxy, writer) subtracted.
    pub members_cpu: f64,
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
            let ok = loads.len() == live.len()
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

/// A member's own connection to `endpoint` (one backend value per member).
async fn member_store(kind: Kind, endpoint: String, layout: &Layout) -> MemberStore {
    match kind {
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
    }
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
    /// The counting proxy.
    pub proxy: Lane,
}

impl Lanes {
    async fn cpu_us(&self) -> u64 {
        self.writer.cpu_us().await + self.observe.cpu_us().await + self.proxy.cpu_us().await
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
    let ttl = params.ttl(kind);
    let mut outcome = Outcome {
        kind,
        members: n,
        items,
        ttl,
        detection_bound: params.detection_bound(kind),
        startup: Err("not reached".to_owned()),
        kill: Err("not reached".to_owned()),
        join: Err("not reached".to_owned()),
        idle: Err("not reached".to_owned()),
        soaks: (params.leader_soak, params.worker_soak),
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
    let target: SocketAddr = store
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("store address");
    let protocol = match kind {
        Kind::Consul => Protocol::Http1,
        Kind::Etcd => Protocol::Http2,
    };
    let proxy = lanes
        .proxy
        .run(CountingProxy::start(target, protocol))
        .await;
    let pid = store.pid();
    let kv = observer_kv(kind, store.endpoint(), &lanes.observe).await;
    let mut members_obs = Observer::start(kv.clone(), &layout.members, &lanes.observe).await;
    let mut assign_obs = Observer::start(kv, &layout.assignments, &lanes.observe).await;

    let config = |id: &str| {
        MemberConfig::new(id)
            .layout(layout.clone())
            .ttl(ttl)
            .leader_soak(params.leader_soak)
            .worker_timing(params.worker_soak, params.leader_settle)
    };
    let notify = Arc::new(Notify::new());
    let mut forwarders = Vec::new();
    let mut members = BTreeMap::new();
    let mut plans = Vec::new();
    let t0 = Instant::now();
    for j in 0..n {
        let id = member_id(j);
        let m = Member::spawn(
            &config(&id),
            &member_store(kind, proxy.url(), &layout).await,
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
            &member_store(kind, proxy.url(), &layout).await,
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
    }

    if outcome.join.is_ok() {
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
    for (_, m) in members {
        m.kill().await;
    }
    drop(members_obs);
    drop(assign_obs);
    drop(proxy);
    drop(store);
    outcome
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
    s
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
