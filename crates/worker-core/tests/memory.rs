//! The memory store's watches: a write costs what it touches.

use std::time::Duration;

use tokio::time::timeout;
use worker_core::{KvChange, KvWatch, MemoryStore, WatchEvent};

const BOUND: Duration = Duration::from_secs(10);

fn keys(ev: &WatchEvent) -> Vec<String> {
    match ev {
        WatchEvent::Changes { changes, .. } => changes
            .iter()
            .map(|c| match c {
                KvChange::Put(e) => String::from_utf8_lossy(&e.key).into_owned(),
                KvChange::Delete { key } => String::from_utf8_lossy(key).into_owned(),
            })
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// A write under `p/m2/` must not wake a watch of `p/m1/` (no rescan of
/// history either); a write under `p/m1/` wakes it once.
#[tokio::test(start_paused = true)]
async fn a_write_wakes_only_watches_of_its_prefix() {
    let store = MemoryStore::new();
    let mut m1 = store.watch("p/m1/", store.revision()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let ev = m1.next().await.unwrap();
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    // Let the reader start waiting.
    tokio::task::yield_now().await;
    for i in 0..50 {
        store.put(format!("p/m2/w{i}"), "x");
        store.put(format!("p/m10/w{i}"), "x");
        tokio::task::yield_now().await;
    }
    store.put("p/m1/a", "1");
    let ev = timeout(BOUND, rx.recv()).await.unwrap().unwrap();
    assert_eq!(keys(&ev), ["p/m1/a"]);
    assert_eq!(
        store.stats().watch_wakeups,
        1,
        "only the write under p/m1/ woke the watch"
    );
    assert!(rx.try_recv().is_err(), "nothing else delivered");
    reader.abort();
}

/// Events written while nobody reads are queued and delivered in one batch at
/// the store's revision; a watch behind the compaction point is lost.
#[tokio::test]
async fn queued_events_and_compaction() {
    let store = MemoryStore::new();
    let mut w = store.watch("p/m1/", 0).await.unwrap();
    store.put("p/m1/a", "1");
    store.put("p/m2/b", "1");
    store.delete("p/m1/a");
    let ev = timeout(BOUND, w.next()).await.unwrap().unwrap();
    assert_eq!(keys(&ev), ["p/m1/a", "p/m1/a"]);
    assert!(
        matches!(ev, WatchEvent::Changes { revision: 3, .. }),
        "{ev:?}"
    );

    // Opened behind the current revision: the backlog from history.
    let mut late = store.watch("p/m1/", 0).await.unwrap();
    let ev = timeout(BOUND, late.next()).await.unwrap().unwrap();
    assert_eq!(keys(&ev), ["p/m1/a", "p/m1/a"]);

    // Compaction past a watch's position: lost, even with events queued.
    store.put("p/m1/c", "1");
    store.compact(store.revision());
    let ev = timeout(BOUND, w.next()).await.unwrap().unwrap();
    assert!(matches!(ev, WatchEvent::Lost { .. }), "{ev:?}");
    assert!(matches!(
        timeout(BOUND, store.watch("p/m1/", 1).await.unwrap().next())
            .await
            .unwrap(),
        Ok(WatchEvent::Lost { .. })
    ));

    // Faults reach open streams.
    let mut w = store.watch("p/m1/", store.revision()).await.unwrap();
    store.set_unavailable("down");
    assert!(timeout(BOUND, w.next()).await.unwrap().is_err());
    store.set_available();
    store.put("p/m1/d", "1");
    let ev = timeout(BOUND, w.next()).await.unwrap().unwrap();
    assert_eq!(keys(&ev), ["p/m1/d"]);
}
