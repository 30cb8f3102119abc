//! Bad input on the memory backend: odd keys are ignored or taken verbatim,
//! large values and large workloads pass, and the settled workload is never lost.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coordinator::{MemoryStore, Worker, WorkerConfig, WorkerHandle};
use tokio::time::timeout;

const P: &str = "bad/";

fn spawn(store: &MemoryStore) -> WorkerHandle {
    let c = WorkerConfig::new("m1")
        .prefix(P)
        .soak(Duration::from_millis(100));
    Worker::spawn(&c, Arc::new(store.clone()), Arc::new(store.clone())).unwrap()
}

fn ids(w: &coordinator::Workload) -> Vec<String> {
    w.keys().map(ToString::to_string).collect()
}

#[tokio::test(start_paused = true)]
async fn odd_but_valid_work_ids_are_taken_verbatim() {
    let store = MemoryStore::new();
    store.set_leader("L");
    for id in ["100%", "a%2Fb", "with space", "ünïcødé-工作", "tab\there"] {
        store.put(format!("{P}m1/{id}"), "v");
    }
    let w = spawn(&store);
    let got = ids(&w.ready().await.unwrap());
    let mut want = vec!["100%", "a%2Fb", "tab\there", "with space", "ünïcødé-工作"];
    want.sort_unstable();
    assert_eq!(got, want);
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn foreign_keys_are_ignored_and_never_disturb_the_settled_set() {
    let store = MemoryStore::new();
    store.set_leader("L");
    store.put(format!("{P}m1/good"), "v");
    let w = spawn(&store);
    assert_eq!(ids(&w.ready().await.unwrap()), ["good"]);
    let mut changes = w.changes();
    changes.next().await.unwrap();

    let mut non_utf8 = format!("{P}m1/").into_bytes();
    non_utf8.extend_from_slice(&[0xff, 0xfe, b'x']);
    store.put(non_utf8, "v");
    store.put(format!("{P}m1/deeper/nested"), "v");
    store.put(format!("{P}m1/"), "v");
    store.put(format!("{P}m1//x"), "v");
    store.put(format!("{P}m10/x"), "v");
    store.put(format!("{P}/m1/x"), "v");
    // Nothing of that is an assignment: nothing is published and the set is kept.
    assert!(timeout(Duration::from_secs(30), changes.next())
        .await
        .is_err());
    assert_eq!(ids(&w.workload()), ["good"]);
    // A real change still comes through afterwards.
    store.put(format!("{P}m1/next"), "v");
    let c = timeout(Duration::from_secs(30), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.added.len(), 1);
    assert_eq!(&*c.added[0].0, "next");
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn one_mebibyte_values_pass_through() {
    let store = MemoryStore::new();
    store.set_leader("L");
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    store.put(format!("{P}m1/big"), big.clone());
    let w = spawn(&store);
    let got = w.ready().await.unwrap();
    assert_eq!(got.get("big"), Some(&big));
    w.halt().await;
}

#[tokio::test(start_paused = true)]
async fn one_hundred_thousand_keys_under_one_member() {
    let store = MemoryStore::new();
    store.set_leader("L");
    for i in 0..100_000 {
        store.put(format!("{P}m1/w{i:06}"), "v");
    }
    let w = spawn(&store);
    let mut changes = w.changes();
    assert_eq!(w.ready().await.unwrap().len(), 100_000);
    let first = changes.next().await.unwrap();
    assert_eq!(first.added.len(), 100_000);
    store.delete(format!("{P}m1/w000007"));
    let c = changes.next().await.unwrap();
    assert_eq!(c.removed.len(), 1);
    assert_eq!(w.workload().len(), 99_999);
    w.halt().await;
}
