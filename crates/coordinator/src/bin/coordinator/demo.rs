//! `coordinator demo`: a whole cluster in one process on the memory backend.
//!
//! A simple leader spreads work items round-robin over the live members and
//! rewrites assignments whenever membership changes; members join and leave,
//! the leader fails over, and every member prints its settled workload as it
//! changes. The run checks at the end that every item is held by exactly one
//! live member, and exits 0 if so.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, MemoryStore, WorkerHandle, Workload};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::DemoArgs;

const PREFIX: &str = "demo/assignments/";

struct Cluster {
    store: MemoryStore,
    backend: Backend,
    items: Vec<String>,
    members: BTreeMap<String, WorkerHandle>,
    start: Instant,
    lines: mpsc::UnboundedSender<String>,
}

impl Cluster {
    fn say(&self, text: &str) {
        let _ = self.lines.send(format!(
            "[{:>5.1}s] {text}",
            self.start.elapsed().as_secs_f64()
        ));
    }

    fn join(&mut self, id: &str) {
        let mut config = Config::new(BackendKind::Memory, id);
        config.prefix = PREFIX.into();
        config.soak = Duration::from_millis(300);
        config.leader_settle = Duration::from_secs(1);
        let worker = self
            .backend
            .spawn_worker(&config)
            .expect("valid demo config");
        let mut changes = worker.changes();
        let (lines, start, id_owned) = (self.lines.clone(), self.start, id.to_owned());
        tokio::spawn(async move {
            let mut held = Workload::new();
            while let Some(c) = changes.next().await {
                c.apply_to(&mut held);
                let list = |v: Vec<&str>| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.join(" ")
                    }
                };
                let mut delta = Vec::new();
                delta.extend(c.added.iter().map(|(k, _)| format!("+{k}")));
                delta.extend(c.removed.iter().map(|k| format!("-{k}")));
                let _ = lines.send(format!(
                    "[{:>5.1}s]   {id_owned:<3} holds {:<40} {}",
                    start.elapsed().as_secs_f64(),
                    list(held.keys().map(|k| &**k).collect()),
                    if c.initial {
                        "(first sync)".to_owned()
                    } else {
                        delta.join(" ")
                    },
                ));
            }
        });
        self.say(&format!("{id} joins"));
        self.members.insert(id.to_owned(), worker);
    }

    async fn leave(&mut self, id: &str) {
        if let Some(w) = self.members.remove(id) {
            w.halt().await;
            self.say(&format!("{id} leaves"));
        }
    }

    /// The leader's job: item i goes to live member i mod n.
    fn expected(&self) -> BTreeMap<String, Vec<String>> {
        let ids: Vec<&String> = self.members.keys().collect();
        let mut plan: BTreeMap<String, Vec<String>> =
            ids.iter().map(|m| ((*m).clone(), Vec::new())).collect();
        for (i, item) in self.items.iter().enumerate() {
            plan.get_mut(ids[i % ids.len()])
                .expect("member")
                .push(item.clone());
        }
        plan
    }

    fn rebalance(&self, leader: &str) {
        let plan = self.expected();
        // Remove assignments that moved, then write the new ones.
        for key in self.store.keys(PREFIX) {
            let k = String::from_utf8_lossy(&key).into_owned();
            let rest = &k[PREFIX.len()..];
            let keep = rest.split_once('/').is_some_and(|(m, w)| {
                plan.get(m)
                    .is_some_and(|items| items.iter().any(|i| i == w))
            });
            if !keep {
                self.store.delete(&key);
            }
        }
        for (member, items) in &plan {
            for item in items {
                let key = format!("{PREFIX}{member}/{item}");
                if self.store.get(&key).is_none() {
                    self.store.put(key, format!("assigned by {leader}"));
                }
            }
        }
        self.say(&format!(
            "{leader} rebalances {} items over {}",
            self.items.len(),
            plan.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }

    /// Waits until every live member holds exactly its planned items.
    async fn settle(&self) -> bool {
        let plan = self.expected();
        let all = async {
            for (id, worker) in &self.members {
                let mut watch = worker.watch();
                loop {
                    let held: Vec<String> = watch
                        .current()
                        .workload
                        .keys()
                        .map(ToString::to_string)
                        .collect();
                    if watch.current().ready && held == plan[id] {
                        break;
                    }
                    if watch.changed().await.is_err() {
                        return false;
                    }
                }
            }
            true
        };
        timeout(Duration::from_secs(15), all).await.unwrap_or(false)
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
    let mut c = Cluster {
        backend: Backend::memory(store.clone()),
        store,
        items: (1..=args.items).map(|i| format!("w{i:02}")).collect(),
        members: BTreeMap::new(),
        start: Instant::now(),
        lines: tx,
    };
    c.say("coordinator demo: one process, memory store, a leader and members that come and go");
    let mut ok = true;

    c.store.set_leader("leader-1");
    c.say("leader-1 elected");
    for m in ["m1", "m2", "m3"] {
        c.join(m);
    }
    c.rebalance("leader-1");
    ok &= c.settle().await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    c.store.put(format!("{PREFIX}m1/w99"), "oops");
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.store.delete(format!("{PREFIX}m1/w99"));
    c.say("leader-1 assigns w99 to m1 and takes it back within the soak: nothing is published");
    tokio::time::sleep(Duration::from_millis(800)).await;

    c.join("m4");
    c.rebalance("leader-1");
    ok &= c.settle().await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    c.leave("m2").await;
    c.rebalance("leader-1");
    ok &= c.settle().await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    c.store.clear_leader();
    c.say("leader-1 fails: no leader; members keep their settled work");
    c.join("m5");
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.store.set_leader("leader-2");
    c.say("leader-2 elected; members wait leader_settle (1s) before committing");
    c.rebalance("leader-2");
    ok &= c.settle().await;

    // Final check: each item is held by exactly one live member.
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, w) in &c.members {
        for item in w.workload().keys() {
            holders
                .entry(item.to_string())
                .or_default()
                .push(id.clone());
        }
    }
    let each_once = c
        .items
        .iter()
        .all(|i| holders.get(i).is_some_and(|h| h.len() == 1));
    ok &= each_once;
    c.say(&format!(
        "done: {} items over {} members, each held exactly once: {}",
        c.items.len(),
        c.members.len(),
        if each_once { "yes" } else { "NO" }
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
