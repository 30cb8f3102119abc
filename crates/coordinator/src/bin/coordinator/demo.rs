//! `coordinator demo`: a whole cluster in one process on the memory backend.
//!
//! Real members (the same code `coordinator member` runs) register, elect a
//! leader, and the leader spreads the work items; members join, leave
//! cleanly, and the leader is killed without resigning. For each plan the
//! demo prints how many items moved against the fewest possible, and each
//! member prints its settled workload as it changes. After each step it
//! waits until every item is held by exactly one live member with balanced
//! counts, and exits 0 if every step settled so.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, MemberHandle, MemoryStore, Workload};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::DemoArgs;

const ROOT: &str = "demo/";
const TTL: Duration = Duration::from_secs(2);

struct Cluster {
    store: MemoryStore,
    backend: Backend,
    items: usize,
    members: BTreeMap<String, MemberHandle>,
    start: Instant,
    lines: mpsc::UnboundedSender<String>,
}

fn list(v: &[&str]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(" ")
    }
}

impl Cluster {
    fn say(&self, text: &str) {
        let _ = self.lines.send(format!(
            "[{:>5.1}s] {text}",
            self.start.elapsed().as_secs_f64()
        ));
    }

    fn config(id: &str) -> Config {
        let mut c = Config::new(BackendKind::Memory, id);
        c.prefix = format!("{ROOT}assignments/");
        c.members_prefix = format!("{ROOT}members/");
        c.work_prefix = format!("{ROOT}work/");
        c.leader = format!("{ROOT}leader");
        c.soak = Duration::from_millis(200);
        c.leader_settle = Some(Duration::from_millis(500));
        c.leader_soak = Duration::from_millis(500);
        c.ttl = TTL;
        c
    }

    fn join(&mut self, id: &str) {
        let member = self
            .backend
            .spawn_member(&Self::config(id))
            .expect("valid demo config");
        let mut changes = member.worker().changes();
        let mut plans = member.plans();
        let (lines, start, who) = (self.lines.clone(), self.start, id.to_owned());
        tokio::spawn(async move {
            let mut held = Workload::new();
            while let Some(c) = changes.next().await {
                c.apply_to(&mut held);
                let mut delta = Vec::new();
                delta.extend(c.added.iter().map(|(k, _)| format!("+{k}")));
                delta.extend(c.removed.iter().map(|k| format!("-{k}")));
                let _ = lines.send(format!(
                    "[{:>5.1}s]   {who:<3} holds {:>3}: {} {}",
                    start.elapsed().as_secs_f64(),
                    held.len(),
                    list(&held.keys().map(|k| &**k).collect::<Vec<_>>()),
                    if c.initial {
                        "(first sync)".to_owned()
                    } else {
                        format!("({})", delta.join(" "))
                    },
                ));
            }
        });
        let (lines, who) = (self.lines.clone(), id.to_owned());
        tokio::spawn(async move {
            while let Ok(p) = plans.recv().await {
                let _ = lines.send(format!(
                    "[{:>5.1}s] {who} (leader) plans {} items over {} members: moved {} (fewest possible {}), placed {}, {} transaction(s)",
                    start.elapsed().as_secs_f64(),
                    p.items,
                    p.members,
                    p.moved,
                    p.min_moves,
                    p.placed,
                    p.transactions,
                ));
            }
        });
        self.say(&format!("{id} joins"));
        self.members.insert(id.to_owned(), member);
    }

    async fn leave(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            let leading = m.is_leader();
            m.halt().await;
            self.say(&format!(
                "{id} leaves cleanly{}",
                if leading {
                    " (it led: it resigned first)"
                } else {
                    ""
                }
            ));
        }
    }

    async fn drain(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            self.say(&format!(
                "{id} drains: the leader moves its items away, each only after {id} acknowledged letting it go"
            ));
            let left = m.drain().await;
            self.say(&format!("{id} left ({left:?})"));
        }
    }

    async fn kill_leader(&mut self) -> Option<String> {
        let id = self
            .members
            .iter()
            .find(|(_, m)| m.is_leader())
            .map(|(id, _)| id.clone())?;
        let m = self.members.remove(&id)?;
        m.kill().await;
        self.say(&format!(
            "{id} (the leader) is killed: no resignation; its session expires after {TTL:?}"
        ));
        Some(id)
    }

    /// True when every item is held by exactly one live member and counts
    /// differ by at most one.
    fn settled(&self) -> bool {
        let mut holders: BTreeMap<String, usize> = BTreeMap::new();
        let mut counts = Vec::new();
        for m in self.members.values() {
            let w = m.worker().watch().current();
            if !w.ready {
                return false;
            }
            counts.push(w.workload.len());
            for item in w.workload.keys() {
                *holders.entry(item.to_string()).or_default() += 1;
            }
        }
        let balanced = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1;
        holders.len() == self.items && holders.values().all(|n| *n == 1) && balanced
    }

    /// Waits until the cluster is [`settled`](Self::settled).
    async fn settle(&self, step: &str) -> bool {
        let wait = async {
            let mut watches: Vec<_> = self.members.values().map(|m| m.worker().watch()).collect();
            while !self.settled() {
                let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
                let (result, _, _) = futures_util::future::select_all(changed).await;
                if result.is_err() {
                    return false;
                }
            }
            true
        };
        let ok = timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or(false);
        self.say(&format!(
            "{step}: {}",
            if ok {
                "settled, every item held by exactly one member"
            } else {
                "did NOT settle"
            }
        ));
        ok
    }
}

pub async fn run(args: DemoArgs) -> ExitCode {
    let store = MemoryStore::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let printer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            println!("{line}");
        }
    });
    let items = args.items as usize;
    let mut c = Cluster {
        backend: Backend::memory(store.clone()),
        store,
        items,
        members: BTreeMap::new(),
        start: Instant::now(),
        lines: tx,
    };
    c.say("coordinator demo: one process, memory store, real members electing a leader that spreads the work");
    let width = items.to_string().len();
    for i in 1..=items {
        c.store
            .put(format!("{ROOT}work/w{i:0width$}"), format!("params-{i}"));
    }
    c.say(&format!("{items} work items put under {ROOT}work/"));
    let mut ok = true;

    for m in ["m1", "m2", "m3"] {
        c.join(m);
    }
    ok &= c.settle("3 members").await;

    c.join("m4");
    ok &= c.settle("m4 joined (it takes only its share)").await;

    let follower = c
        .members
        .iter()
        .find(|(_, m)| !m.is_leader())
        .map(|(id, _)| id.clone());
    if let Some(id) = follower {
        c.drain(&id).await;
        ok &= c.settle(&format!("{id} drained")).await;
    }

    if c.kill_leader().await.is_some() {
        ok &= c.settle("a new leader took over").await;
    }

    c.join("m5");
    ok &= c.settle("m5 joined").await;

    c.say(&format!(
        "done: {} items over {} members, each held exactly once: {}",
        c.items,
        c.members.len(),
        if ok { "yes" } else { "NO" }
    ));
    let members: Vec<String> = c.members.keys().cloned().collect();
    for m in members {
        c.leave(&m).await;
    }
    drop(c);
    let _ = printer.await;
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("coordinator demo: the cluster did not settle as planned");
        ExitCode::FAILURE
    }
}
