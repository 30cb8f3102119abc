//! A whole sharded service in one process, on the memory store.
//!
//! Each replica of the "service" runs a full coordinator member and
//! processes the work items assigned to it: one task per item, started when
//! the item arrives in the replica's settled workload and stopped when it
//! leaves. Replicas join, one leaves cleanly and the leader is killed; after
//! each step the example waits until every item is processed by exactly one
//! live replica with balanced counts, and prints which items moved.
//!
//! ```text
//! cargo run -p kv-coordinator --example sharded_service
//! ```
//!
//! It ends by itself in a few seconds (exit 0, or 1 if a step did not settle).
//! `crates/coordinator/tests/examples.rs` runs the same code.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, MemberHandle, MemoryStore, WorkId};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const ROOT: &str = "shop/";
/// Work items the service holds.
pub const ITEMS: usize = 24;
/// Session TTL: how long a killed replica keeps its items.
const TTL: Duration = Duration::from_secs(2);
/// Bound on each step's wait for the service to settle.
const STEP_BOUND: Duration = Duration::from_secs(20);

/// Who processes what: item -> replicas running a processor for it, and how
/// many rounds each item was processed in all.
#[derive(Default)]
struct Board {
    running: BTreeMap<WorkId, BTreeSet<String>>,
    processed: BTreeMap<WorkId, u64>,
}

/// The board, shared with every replica, and a bell rung at every change.
#[derive(Clone, Default)]
struct Shared {
    board: Arc<Mutex<Board>>,
    bell: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One replica: its member and the task applying its changes.
struct Replica {
    member: MemberHandle,
    task: JoinHandle<()>,
}

/// One settled step: its name, each replica's item count, and what moved.
#[derive(Debug, Clone)]
pub struct Step {
    /// What happened before it settled.
    pub what: String,
    /// Items per live replica.
    pub counts: BTreeMap<String, usize>,
    /// Items that changed owner: (item, from, to).
    pub moves: Vec<(String, String, String)>,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Each step, in order.
    pub steps: Vec<Step>,
    /// Rounds of processing per item over the whole run.
    pub processed: BTreeMap<String, u64>,
}

fn config(id: &str) -> Config {
    let mut c = Config::new(BackendKind::Memory, id);
    c.prefix = format!("{ROOT}assignments/");
    c.members_prefix = format!("{ROOT}members/");
    c.work_prefix = format!("{ROOT}work/");
    c.leader = format!("{ROOT}leader");
    c.soak = Duration::from_millis(100);
    c.leader_settle = Some(Duration::from_millis(300));
    c.leader_soak = Duration::from_millis(300);
    c.ttl = TTL;
    c
}

/// Processes `item` for replica `who` until aborted: one round every 50 ms.
fn process(shared: Shared, who: String, item: WorkId) -> JoinHandle<()> {
    {
        let mut b = shared.lock();
        b.running.entry(item.clone()).or_default().insert(who);
    }
    shared.bell.notify_waiters();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            *shared.lock().processed.entry(item.clone()).or_default() += 1;
        }
    })
}

/// Stops the processor of `item` in replica `who`.
fn stop(shared: &Shared, who: &str, item: &WorkId, task: &JoinHandle<()>) {
    task.abort();
    let mut b = shared.lock();
    if let Some(set) = b.running.get_mut(item) {
        set.remove(who);
        if set.is_empty() {
            b.running.remove(item);
        }
    }
    drop(b);
    shared.bell.notify_waiters();
}

struct Service {
    backend: Backend,
    shared: Shared,
    replicas: BTreeMap<String, Replica>,
    start: Instant,
    verbose: bool,
    owners: BTreeMap<String, String>,
    report: Report,
}

impl Service {
    fn say(&self, text: &str) {
        if self.verbose {
            println!("[{:>5.1}s] {text}", self.start.elapsed().as_secs_f64());
        }
    }

    /// Starts replica `id`: a member, and a task that starts and stops a
    /// processor for each item as its settled workload changes.
    fn join(&mut self, id: &str) {
        let member = self
            .backend
            .spawn_member(&config(id))
            .expect("a valid config");
        let mut changes = member.worker().changes();
        let (shared, who) = (self.shared.clone(), id.to_owned());
        let task = tokio::spawn(async move {
            let mut running: BTreeMap<WorkId, JoinHandle<()>> = BTreeMap::new();
            while let Some(change) = changes.next().await {
                for item in &change.removed {
                    if let Some(t) = running.remove(item) {
                        stop(&shared, &who, item, &t);
                    }
                }
                for (item, _params) in &change.added {
                    let t = process(shared.clone(), who.clone(), item.clone());
                    running.insert(item.clone(), t);
                }
            }
            // The worker halted: this replica processes nothing any more.
            for (item, t) in std::mem::take(&mut running) {
                stop(&shared, &who, &item, &t);
            }
        });
        self.replicas
            .insert(id.to_owned(), Replica { member, task });
        self.say(&format!("{id} joins"));
    }

    /// Replica `id` leaves cleanly (resigns if it leads, closes its session).
    async fn leave(&mut self, id: &str) {
        if let Some(r) = self.replicas.remove(id) {
            r.member.halt().await;
            let _ = r.task.await;
            self.say(&format!("{id} leaves cleanly"));
        }
    }

    /// The leader dies without a word: its items wait for its session to expire.
    async fn kill_leader(&mut self) -> Option<String> {
        let id = self
            .replicas
            .iter()
            .find(|(_, r)| r.member.is_leader())
            .map(|(id, _)| id.clone())?;
        let r = self.replicas.remove(&id)?;
        r.member.kill().await;
        let _ = r.task.await;
        self.say(&format!(
            "{id}, the leader, is killed; its session expires after {TTL:?}"
        ));
        Some(id)
    }

    /// Who processes what, when every item is processed by exactly one live
    /// replica and the counts differ by at most one.
    fn settled(&self) -> Option<BTreeMap<String, String>> {
        let b = self.shared.lock();
        if b.running.len() != ITEMS {
            return None;
        }
        let mut owners = BTreeMap::new();
        let mut counts: BTreeMap<&str, usize> =
            self.replicas.keys().map(|id| (id.as_str(), 0)).collect();
        for (item, who) in &b.running {
            let [one] = who.iter().collect::<Vec<_>>()[..] else {
                return None;
            };
            *counts.get_mut(one.as_str())? += 1;
            owners.insert(item.to_string(), one.clone());
        }
        let (min, max) = (counts.values().min()?, counts.values().max()?);
        (max - min <= 1).then_some(owners)
    }

    /// Waits until [`settled`](Self::settled), then records the step.
    async fn settle(&mut self, what: &str) -> bool {
        let wait = async {
            loop {
                let rung = self.shared.bell.notified();
                if let Some(owners) = self.settled() {
                    return owners;
                }
                rung.await;
            }
        };
        let Ok(owners) = timeout(STEP_BOUND, wait).await else {
            self.say(&format!("{what}: did NOT settle within {STEP_BOUND:?}"));
            return false;
        };
        let moves: Vec<(String, String, String)> = owners
            .iter()
            .filter_map(|(item, to)| {
                let from = self.owners.get(item)?;
                (from != to).then(|| (item.clone(), from.clone(), to.clone()))
            })
            .collect();
        let mut counts: BTreeMap<String, usize> =
            self.replicas.keys().map(|id| (id.clone(), 0)).collect();
        for who in owners.values() {
            *counts.entry(who.clone()).or_default() += 1;
        }
        self.say(&format!(
            "{what}: settled, each item processed by exactly one replica: {counts:?}"
        ));
        for (item, from, to) in &moves {
            self.say(&format!("    {item}: {from} -> {to}"));
        }
        self.owners = owners;
        self.report.steps.push(Step {
            what: what.to_owned(),
            counts,
            moves,
        });
        true
    }
}

/// Runs the whole scenario; `verbose` prints what happens. `Err` names the
/// step that did not settle.
pub async fn run(verbose: bool) -> Result<Report, String> {
    let store = MemoryStore::new();
    for i in 0..ITEMS {
        store.put(
            format!("{ROOT}work/order-{i:02}"),
            format!("{{\"shard\":{i}}}"),
        );
    }
    let mut s = Service {
        backend: Backend::memory(store),
        shared: Shared::default(),
        replicas: BTreeMap::new(),
        start: Instant::now(),
        verbose,
        owners: BTreeMap::new(),
        report: Report::default(),
    };
    s.say(&format!("{ITEMS} items; three replicas start"));
    for id in ["r1", "r2", "r3"] {
        s.join(id);
    }
    let mut step = "three replicas".to_owned();
    let mut ok = s.settle(&step).await;
    if ok {
        s.join("r4");
        step = "r4 joined".into();
        ok = s.settle(&step).await;
    }
    if ok {
        let follower = s
            .replicas
            .iter()
            .find(|(_, r)| !r.member.is_leader())
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        s.leave(&follower).await;
        step = format!("{follower} left");
        ok = s.settle(&step).await;
    }
    if ok {
        let leader = s.kill_leader().await.unwrap_or_default();
        step = format!("{leader} (the leader) was killed");
        ok = s.settle(&step).await;
    }
    let ids: Vec<String> = s.replicas.keys().cloned().collect();
    for id in ids {
        s.leave(&id).await;
    }
    s.report.processed = s
        .shared
        .lock()
        .processed
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    if !ok {
        return Err(format!(
            "step {step:?} did not settle within {STEP_BOUND:?}"
        ));
    }
    s.say(&format!(
        "done: {} steps, every item processed ({} rounds in all)",
        s.report.steps.len(),
        s.report.processed.values().sum::<u64>()
    ));
    Ok(s.report)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(true).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sharded_service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
