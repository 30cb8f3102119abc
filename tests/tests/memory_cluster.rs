//! A cluster of workers on one memory store through the `coordinator` crate:
//! reassignments move work without an item held twice once settled.

use std::collections::BTreeMap;
use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, MemoryStore, WorkerHandle};
use tokio::time::timeout;

const P: &str = "cluster/assignments/";

fn assign(store: &MemoryStore, plan: &BTreeMap<&str, Vec<String>>) {
    for key in store.keys(P) {
        store.delete(key);
    }
    for (m, items) in plan {
        for i in items {
            store.put(format!("{P}{m}/{i}"), "v");
        }
    }
}

async fn settled_to(w: &WorkerHandle, want: &[String]) {
    let mut watch = w.watch();
    timeout(Duration::from_secs(30), async {
        loop {
            let s = watch.current();
            let held: Vec<String> = s.workload.keys().map(ToString::to_string).collect();
            if s.ready && held == want {
                return;
            }
            watch.changed().await.expect("worker halted");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("did not settle to {want:?}; holds {:?}", w.workload()));
}

#[tokio::test(start_paused = true)]
async fn work_moves_when_a_member_leaves() {
    let store = MemoryStore::new();
    store.set_leader("leader");
    let backend = Backend::memory(store.clone());
    let members = ["m1", "m2", "m3"];
    let mut workers: BTreeMap<&str, WorkerHandle> = BTreeMap::new();
    for m in members {
        let mut c = Config::new(BackendKind::Memory, m);
        c.prefix = P.into();
        workers.insert(m, backend.spawn_worker(&c).unwrap());
    }
    let items: Vec<String> = (0..30).map(|i| format!("w{i:02}")).collect();
    let plan = |live: &[&'static str]| {
        let mut p: BTreeMap<&str, Vec<String>> = live.iter().map(|m| (*m, Vec::new())).collect();
        for (i, item) in items.iter().enumerate() {
            p.get_mut(live[i % live.len()]).unwrap().push(item.clone());
        }
        for v in p.values_mut() {
            v.sort();
        }
        p
    };
    let p = plan(&members);
    assign(&store, &p);
    for (m, w) in &workers {
        settled_to(w, &p[m]).await;
    }
    workers.remove("m2").unwrap().halt().await;
    let p = plan(&["m1", "m3"]);
    assign(&store, &p);
    for (m, w) in &workers {
        settled_to(w, &p[m]).await;
    }
    let mut all: Vec<String> = workers
        .values()
        .flat_map(|w| {
            w.workload()
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort();
    assert_eq!(all, items, "every item held exactly once");
}
