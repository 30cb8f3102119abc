//! Failover with every setting at its default: real `coordinator member`
//! processes (the program as an operator runs it, given only the store's
//! address and an instance id), one of them killed (SIGKILL), timed until the
//! survivors' printed workloads hold every item exactly once. A member that
//! does not lead is killed, then the leader (with a new item added right
//! after the kill); the killed member is started again between rounds.
//! Then the idle cost of 100 such members: their store requests (through a
//! counting proxy) and the store's CPU, with the defaults and with the
//! previous, slower ones (TTL 15 s, leader soak 3 s, plain Consul sessions).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::measure::{fmt_ms, other_process_cpu_ns};
use crate::proxy::{CountingProxy, Counts};
use crate::rt::Lane;
use crate::stores::{Kind, Op, Store, Writer};

/// The goal for a member or leader killed with SIGKILL, every setting at its default.
pub const GOAL: Duration = Duration::from_secs(10);

/// Longest wait for any one stage.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The work prefix of the default layout.
const WORK: &str = "service/coordinator/work/";

/// Settings of the failover scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Members of the failover cluster.
    pub members: usize,
    /// Work items of the failover cluster.
    pub items: usize,
    /// Kills of each kind (a member, the leader).
    pub rounds: usize,
    /// Members of the idle cluster.
    pub idle_members: usize,
    /// Work items of the idle cluster.
    pub idle_items: usize,
    /// Length of each idle window.
    pub idle: Duration,
}

/// The program this benchmark runs: `COORDINATOR_BIN`, else the
/// `coordinator` next to this executable (`cargo build --release -p
/// coordinator` puts it there).
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("COORDINATOR_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("coordinator")))
        .unwrap_or_else(|| PathBuf::from("coordinator"))
}

/// One kill, timed.
#[derive(Debug, Clone)]
pub struct Kill {
    /// The leader (true) or a member that does not lead.
    pub leader: bool,
    /// SIGKILL → every item settled exactly once on the survivors (for a
    /// leader kill, the item added right after the kill too).
    pub settled: Duration,
}

/// One idle window of `idle_members` members.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Which settings: "defaults" or "previous defaults".
    pub settings: &'static str,
    /// Members.
    pub members: usize,
    /// The members' store requests in the window.
    pub counts: Counts,
    /// Window length (s).
    pub secs: f64,
    /// Store CPU (cores busy on average).
    pub store_cpu: f64,
}

/// What one store gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The store.
    pub kind: Kind,
    /// The kills, or why they stopped.
    pub kills: Result<Vec<Kill>, String>,
    /// The idle windows, or why they stopped.
    pub idle: Result<Vec<Idle>, String>,
}

/// One JSON line of a member as it was read, or the end of a member's
/// process.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the line was read (or the process ended: SIGKILL sent, or its
    /// stdout closed).
    pub at: Instant,
    /// The member.
    pub member: String,
    /// The items the line shows as held as primaries: its `primary` list,
    /// else (a line without roles) its whole `workload`; empty at the end of
    /// the process.
    pub primary: BTreeSet<String>,
    /// The line as printed; empty at the end of the process.
    pub raw: String,
}

/// The members' printed workloads (and, with replicas, their roles), and
/// which members are alive.
#[derive(Default)]
pub struct Seen {
    /// Each live member's last printed `workload`.
    pub workloads: BTreeMap<String, BTreeSet<String>>,
    /// Each live member's last printed `primary` list (printed with replicas only).
    pub primaries: BTreeMap<String, BTreeSet<String>>,
    /// Each live member's last printed `secondary` list (printed with replicas only).
    pub secondaries: BTreeMap<String, BTreeSet<String>>,
    /// The items each member printed in `removed` since [`Cluster::forget_removed`].
    pub removed: BTreeMap<String, BTreeSet<String>>,
    /// The members started and not killed.
    pub alive: HashSet<String>,
    /// Every line read from a live member's current process, and the end of
    /// each process, in the order read.
    pub lines: Vec<Line>,
    /// Each member's current process (counted from 1 at its first start):
    /// what an earlier process of the member still prints is ignored.
    incarnation: BTreeMap<String, u64>,
}

impl Seen {
    /// The end of `id`'s current process, now: nothing it prints later
    /// counts, and it holds nothing.
    fn end(&mut self, id: &str) {
        if self.alive.remove(id) {
            self.lines.push(Line {
                at: Instant::now(),
                member: id.to_owned(),
                primary: BTreeSet::new(),
                raw: String::new(),
            });
        }
        *self.incarnation.entry(id.to_owned()).or_default() += 1;
        self.workloads.remove(id);
        self.primaries.remove(id);
        self.secondaries.remove(id);
    }
}

/// The strings of a JSON array field of `v`, if it has one.
fn strings(v: &serde_json::Value, field: &str) -> Option<BTreeSet<String>> {
    v.get(field).and_then(|w| w.as_array()).map(|w| {
        w.iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    })
}

/// `coordinator member` processes on one store.
pub struct Cluster {
    kind: Kind,
    endpoint: String,
    bin: PathBuf,
    logs: PathBuf,
    extra: Vec<String>,
    /// Flags given to one member only (its `--zone`).
    own: BTreeMap<String, Vec<String>>,
    procs: BTreeMap<String, Child>,
    /// The task reading each running member's stdout.
    readers: BTreeMap<String, JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Sender<u64>,
}

impl Cluster {
    /// A cluster whose members get `extra` after the store and their id.
    pub fn new(kind: Kind, endpoint: String, extra: &[&str], logs: &Path) -> Self {
        Self {
            kind,
            endpoint,
            bin: program(),
            logs: logs.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            own: BTreeMap::new(),
            procs: BTreeMap::new(),
            readers: BTreeMap::new(),
            seen: Arc::default(),
            changed: watch::channel(0).0,
        }
    }

    /// Flags for member `id` alone, after `extra`, each time it is started.
    pub fn own_flags(&mut self, id: &str, flags: &[&str]) {
        self.own.insert(
            id.to_owned(),
            flags.iter().map(|s| (*s).to_owned()).collect(),
        );
    }

    /// Reads what the members printed.
    pub fn read<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().expect("not poisoned"))
    }

    /// Forgets the items the members printed as removed so far.
    pub fn forget_removed(&self) {
        self.seen.lock().expect("not poisoned").removed.clear();
    }

    fn backend(&self) -> &'static str {
        match self.kind {
            Kind::Consul => "consul",
            Kind::Etcd => "etcd",
        }
    }

    /// The program with only the store, the id and `extra` given.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .args(["--backend", self.backend(), "--endpoints", &self.endpoint])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("COORDINATOR_")
                || k.starts_with("CONSUL_")
                || k.starts_with("ETCDCTL_")
            {
                c.env_remove(&*k);
            }
        }
        c
    }

    /// Starts member `id`; its JSON lines update [`Seen`].
    pub fn start(&mut self, id: &str) {
        // A member started again appends to its log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{id}.log")))
            .expect("member log");
        let mut c = self.command(&["member", "--instance-id", id]);
        c.args(&self.extra)
            .args(self.own.get(id).into_iter().flatten())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        let out = child.stdout.take().expect("piped stdout");
        let incarnation = {
            let mut seen = self.seen.lock().expect("not poisoned");
            seen.alive.insert(id.to_owned());
            let n = seen.incarnation.entry(id.to_owned()).or_default();
            *n += 1;
            *n
        };
        let (seen, changed, id_owned) = (self.seen.clone(), self.changed.clone(), id.to_owned());
        let reader = tokio::spawn(async move {
            let current =
                |seen: &Seen| seen.incarnation.get(&id_owned).copied() == Some(incarnation);
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let Some(set) = strings(&v, "workload") else {
                    continue;
                };
                {
                    let mut seen = seen.lock().expect("not poisoned");
                    if !current(&seen) {
                        continue;
                    }
                    seen.lines.push(Line {
                        at: Instant::now(),
                        member: id_owned.clone(),
                        primary: strings(&v, "primary").unwrap_or_else(|| set.clone()),
                        raw: line,
                    });
                    seen.workloads.insert(id_owned.clone(), set);
                    if let Some(p) = strings(&v, "primary") {
                        seen.primaries.insert(id_owned.clone(), p);
                    }
                    if let Some(s) = strings(&v, "secondary") {
                        seen.secondaries.insert(id_owned.clone(), s);
                    }
                    if let Some(r) = strings(&v, "removed").filter(|r| !r.is_empty()) {
                        seen.removed.entry(id_owned.clone()).or_default().extend(r);
                    }
                }
                changed.send_modify(|n| *n += 1);
            }
            // Its stdout closed: the process is ending, and holds nothing.
            {
                let mut seen = seen.lock().expect("not poisoned");
                if !current(&seen) {
                    return;
                }
                seen.end(&id_owned);
            }
            changed.send_modify(|n| *n += 1);
        });
        self.procs.insert(id.to_owned(), child);
        self.readers.insert(id.to_owned(), reader);
    }

    /// SIGKILL: no resignation, no session close. The member holds nothing
    /// from now on; what its process still prints is ignored.
    pub fn kill(&mut self, id: &str) {
        if let Some(mut child) = self.procs.remove(id) {
            let _ = child.start_kill();
        }
        self.readers.remove(id);
        self.seen.lock().expect("not poisoned").end(id);
    }

    /// SIGTERM (`coordinator member` drains, then exits 0), and the wait
    /// for the process to exit (at most `within`) and for its last lines to
    /// be read.
    pub async fn terminate(&mut self, id: &str, within: Duration) -> Result<(), String> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut child = self
            .procs
            .remove(id)
            .ok_or_else(|| format!("{id} is not running"))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| format!("{id} has already exited"))?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("SIGTERM {id}: {e}"))?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .map_err(|_| format!("{id} did not exit within {within:?} of SIGTERM"))?
            .map_err(|e| format!("{id}: {e}"))?;
        if let Some(reader) = self.readers.remove(id) {
            let _ = reader.await;
        }
        self.seen.lock().expect("not poisoned").end(id);
        if status.success() {
            Ok(())
        } else {
            Err(format!("{id} exited with {status} after SIGTERM"))
        }
    }

    /// Waits until the live members' workloads hold each of `items` exactly
    /// once (and, with `balanced`, each member at least its quota rounded
    /// down); the time it was first so.
    pub async fn settled(
        &self,
        items: &BTreeSet<String>,
        balanced: bool,
        within: Duration,
    ) -> Result<Instant, String> {
        self.until(
            |seen| check(seen, items, balanced).map_or(Ok(()), Err),
            within,
        )
        .await
        .map(|((), at)| at)
    }

    /// Waits until `ready` gives a value on what the members printed (else
    /// why not); the value and the time it was first so. `ready` is asked
    /// again after every line a member prints.
    pub async fn until<T>(
        &self,
        mut ready: impl FnMut(&Seen) -> Result<T, String>,
        within: Duration,
    ) -> Result<(T, Instant), String> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            rx.borrow_and_update();
            let why = {
                let seen = self.seen.lock().expect("not poisoned");
                ready(&seen)
            };
            match why {
                Ok(value) => return Ok((value, Instant::now())),
                Err(why) => {
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                    {
                        return Err(format!("not settled within {within:?}: {why}"));
                    }
                }
            }
        }
    }

    /// The leader's instance id, from `coordinator status --json`.
    pub async fn leader(&self) -> Result<String, String> {
        let out = self
            .command(&["status", "--json"])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "status --json: {e}: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        v.get("leader")
            .and_then(|l| l.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no leader in {v}"))
    }

    /// Kills every member and waits for each to exit.
    pub async fn stop(mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Why the workloads are not settled, or `None`.
pub fn check(seen: &Seen, items: &BTreeSet<String>, balanced: bool) -> Option<String> {
    let mut held = BTreeSet::new();
    let quota = items.len() / seen.alive.len().max(1);
    for id in &seen.alive {
        let Some(w) = seen.workloads.get(id) else {
            return Some(format!("{id} printed nothing yet"));
        };
        if balanced && w.len() < quota {
            return Some(format!("{id} holds {} of its {quota}", w.len()));
        }
        for item in w {
            if !held.insert(item.clone()) {
                return Some(format!("{item} is held twice"));
            }
        }
    }
    if &held != items {
        let missing = items.difference(&held).count();
        let extra = held.difference(items).count();
        return Some(format!("{missing} items unheld, {extra} unknown held"));
    }
    None
}

/// The instance ids of `n` members.
pub fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:03}")).collect()
}

/// Writes the work items `names`.
pub async fn put_items(writer: &Writer, names: &BTreeSet<String>) {
    let ops = names
        .iter()
        .map(|w| Op::Put(format!("{WORK}{w}"), String::new()))
        .collect();
    writer.bulk(ops).await;
}

/// The kills on one store.
async fn kills(
    kind: Kind,
    store: &Store,
    writer: &Writer,
    params: &Params,
    logs: &Path,
) -> Result<Vec<Kill>, String> {
    let mut items: BTreeSet<String> = (0..params.items).map(|i| format!("w{i:04}")).collect();
    put_items(writer, &items).await;
    let logs = logs.join("kills");
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut cluster = Cluster::new(kind, store.endpoint(), &[], &logs);
    for id in ids(params.members) {
        cluster.start(&id);
    }
    let mut out = Vec::new();
    let result = async {
        cluster.settled(&items, true, STAGE_TIMEOUT).await?;
        for round in 0..params.rounds * 2 {
            let leader_kill = round % 2 == 1;
            let leader = cluster.leader().await?;
            let victim = if leader_kill {
                leader
            } else {
                ids(params.members)
                    .into_iter()
                    .find(|id| *id != leader)
                    .expect("two members or more")
            };
            eprintln!(
                "[failover] {kind}: SIGKILL {} {victim}",
                if leader_kill { "leader" } else { "member" }
            );
            let t0 = Instant::now();
            cluster.kill(&victim);
            if leader_kill {
                let new = format!("new{round}");
                writer.put(&format!("{WORK}{new}"), "").await;
                items.insert(new);
            }
            let at = cluster.settled(&items, false, STAGE_TIMEOUT).await?;
            out.push(Kill {
                leader: leader_kill,
                settled: at.duration_since(t0),
            });
            cluster.start(&victim);
            cluster.settled(&items, true, STAGE_TIMEOUT).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    cluster.stop().await;
    result.map(|()| out)
}

/// One idle window: `idle_members` members with `extra` flags behind a
/// counting proxy, started, settled, then idle.
async fn idle_window(
    kind: Kind,
    settings: &'static str,
    extra: &[&str],
    params: &Params,
    lane: &Lane,
    logs: &Path,
) -> Result<Idle, String> {
    let store = Store::start(kind).await;
    let writer = store.writer(lane.clone()).await;
    let items: BTreeSet<String> = (0..params.idle_items).map(|i| format!("w{i:05}")).collect();
    put_items(&writer, &items).await;
    let (target, protocol) = store.proxy_target();
    let proxy = lane.run(CountingProxy::start(target, protocol)).await;
    let logs = logs.join(format!("idle-{}", settings.replace(' ', "-")));
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut cluster = Cluster::new(kind, proxy.url(), extra, &logs);
    for id in ids(params.idle_members) {
        cluster.start(&id);
    }
    let result = async {
        cluster.settled(&items, true, STAGE_TIMEOUT).await?;
        // Let the last plan's acknowledgements and the first renewals pass.
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!(
            "[failover] {kind}: {} members idle ({settings}) for {:?}",
            params.idle_members, params.idle
        );
        let pid = store.pid();
        let (c0, s0, t0) = (proxy.counts(), other_process_cpu_ns(pid), Instant::now());
        tokio::time::sleep(params.idle).await;
        let (c1, s1) = (proxy.counts(), other_process_cpu_ns(pid));
        let secs = t0.elapsed().as_secs_f64();
        Ok(Idle {
            settings,
            members: params.idle_members,
            counts: c1.since(c0),
            secs,
            store_cpu: s1.saturating_sub(s0) as f64 / 1e9 / secs,
        })
    }
    .await;
    cluster.stop().await;
    drop(proxy);
    drop(store);
    result
}

/// Runs the scenario on one store.
pub async fn run(kind: Kind, params: &Params, lane: &Lane) -> Outcome {
    let logs = std::env::temp_dir().join(format!(
        "coordinator-failover-{}-{}",
        kind.to_string().to_lowercase(),
        std::process::id()
    ));
    std::fs::create_dir_all(&logs).expect("log directory");
    eprintln!("[failover] {kind}: member logs in {}", logs.display());
    let store = Store::start(kind).await;
    let writer = store.writer(lane.clone()).await;
    let kills = kills(kind, &store, &writer, params, &logs).await;
    drop(store);
    let previous: &[&str] = match kind {
        Kind::Consul => &[
            "--ttl",
            "15s",
            "--leader-soak",
            "3s",
            "--session-check",
            "false",
        ],
        Kind::Etcd => &["--ttl", "15s", "--leader-soak", "3s"],
    };
    let mut idle = Vec::new();
    let mut idle_err = None;
    for (settings, extra) in [("defaults", &[][..]), ("previous defaults", previous)] {
        match idle_window(kind, settings, extra, params, lane, &logs).await {
            Ok(i) => idle.push(i),
            Err(e) => {
                idle_err = Some(e);
                break;
            }
        }
    }
    Outcome {
        kind,
        kills,
        idle: idle_err.map_or(Ok(idle), Err),
    }
}

/// Min, mean and max in milliseconds.
pub fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ms.iter().copied().fold(0.0, f64::max);
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    (min, mean, max)
}

/// The markdown tables.
pub fn table(all: &[Outcome], params: &Params) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "SIGKILL → every item settled exactly once on the survivors, {} `coordinator member` processes with {} items, every setting at its default; {} kills of each kind:\n",
        params.members, params.items, params.rounds
    );
    let _ = writeln!(s, "| store | killed | min | mean | max | goal |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for o in all {
        match &o.kills {
            Ok(kills) => {
                for leader in [false, true] {
                    let v = settle_times(kills, leader);
                    let (min, mean, max) = stats(&v);
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} |",
                        o.kind,
                        if leader {
                            "the leader (+ an item added after the kill)"
                        } else {
                            "a member"
                        },
                        fmt_ms(min),
                        fmt_ms(mean),
                        fmt_ms(max),
                        fmt_ms(GOAL.as_secs_f64() * 1e3)
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "| {} | — | failed: {e} | | | |", o.kind);
            }
        }
    }
    let _ = writeln!(
        s,
        "\nIdle: {} members, {} items, settled; the members' store requests through a counting proxy and the store's CPU:\n",
        params.idle_members, params.idle_items
    );
    let _ = writeln!(
        s,
        "| store | settings | requests/s | per member /s | store CPU |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for o in all {
        match &o.idle {
            Ok(windows) => {
                for i in windows {
                    let rps = i.counts.requests as f64 / i.secs;
                    let _ = writeln!(
                        s,
                        "| {} | {} | {rps:.1} | {:.2} | {:.1}% |",
                        o.kind,
                        i.settings,
                        rps / i.members as f64,
                        i.store_cpu * 100.0
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "| {} | — | failed: {e} | | |", o.kind);
            }
        }
    }
    s
}

/// How long each kill of one kind (the leader's or a member's) took to
/// settle.
fn settle_times(kills: &[Kill], leader: bool) -> Vec<Duration> {
    kills
        .iter()
        .filter(|k| k.leader == leader)
        .map(|k| k.settled)
        .collect()
}

/// One verdict per store and kind of kill: the slowest against [`GOAL`].
pub fn verdicts(all: &[Outcome]) -> Vec<String> {
    let mut out = Vec::new();
    for o in all {
        match &o.kills {
            Ok(kills) => {
                for leader in [false, true] {
                    let v = settle_times(kills, leader);
                    let (_, _, max) = stats(&v);
                    let ok = max <= GOAL.as_secs_f64() * 1e3;
                    out.push(format!(
                        "{}: {} killed → settled within {} with the defaults: slowest {} ({})",
                        o.kind,
                        if leader { "the leader" } else { "a member" },
                        fmt_ms(GOAL.as_secs_f64() * 1e3),
                        fmt_ms(max),
                        if ok { "met" } else { "NOT met" }
                    ));
                }
            }
            Err(e) => out.push(format!("{}: failover not measured: {e}", o.kind)),
        }
    }
    out
}
