//! Keeps a picture of everything under a prefix current: list, then watch
//! from the list's position; relist when the position is lost; reopen the
//! watch from the last position after an error, with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tracing::{debug, warn};
use worker_core::{Backoff, ErrorChain, KvChange, KvWatch, Revision, StoreError, WatchEvent};

/// Everything under a prefix: key -> value.
pub type PrefixMap = BTreeMap<Vec<u8>, Bytes>;

/// The receiving end: `None` until the first list succeeded.
pub type PrefixView = watch::Receiver<Option<Arc<PrefixMap>>>;

/// Starts following `prefix`; the task ends when every receiver is dropped.
pub fn spawn_follow(
    kv: Arc<dyn KvWatch>,
    prefix: String,
    backoff: (Duration, Duration),
) -> (PrefixView, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        tokio::select! {
            () = follow(kv.as_ref(), &prefix, &tx, backoff) => {}
            () = tx.closed() => {}
        }
    });
    (rx, task)
}

async fn pause(backoff: &mut Backoff, rng: &mut SmallRng, prefix: &str, e: &StoreError) {
    let delay = backoff.next_delay(rng);
    if backoff.failures() > 3 {
        warn!(prefix, error = %ErrorChain(e), retry_in = ?delay, "reading prefix failed");
    } else {
        debug!(prefix, error = %ErrorChain(e), retry_in = ?delay, "reading prefix failed");
    }
    tokio::time::sleep(delay).await;
}

async fn follow(
    kv: &dyn KvWatch,
    prefix: &str,
    tx: &watch::Sender<Option<Arc<PrefixMap>>>,
    (min, max): (Duration, Duration),
) {
    let mut backoff = Backoff::new(min, max);
    let mut rng = SmallRng::seed_from_u64(0x00f0_110e);
    loop {
        // List.
        let snapshot = match kv.list(prefix).await {
            Ok(s) => s,
            Err(e) => {
                pause(&mut backoff, &mut rng, prefix, &e).await;
                continue;
            }
        };
        let mut map: PrefixMap = snapshot
            .entries
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        let mut revision: Revision = snapshot.revision;
        publish(tx, &map);
        // Watch until the position is lost.
        'watch: loop {
            let mut stream = match kv.watch(prefix, revision).await {
                Ok(s) => s,
                Err(e) => {
                    pause(&mut backoff, &mut rng, prefix, &e).await;
                    continue 'watch;
                }
            };
            loop {
                match stream.next().await {
                    Ok(WatchEvent::Changes {
                        revision: r,
                        changes,
                    }) => {
                        backoff.reset();
                        revision = r;
                        for change in changes {
                            match change {
                                KvChange::Put(e) => {
                                    map.insert(e.key, e.value);
                                }
                                KvChange::Delete { key } => {
                                    map.remove(&key);
                                }
                            }
                        }
                        publish(tx, &map);
                    }
                    Ok(WatchEvent::Snapshot(s)) => {
                        backoff.reset();
                        revision = s.revision;
                        let next: PrefixMap =
                            s.entries.into_iter().map(|e| (e.key, e.value)).collect();
                        if next != map {
                            map = next;
                            publish(tx, &map);
                        }
                    }
                    Ok(WatchEvent::Progress { revision: r }) => {
                        backoff.reset();
                        revision = r;
                    }
                    Ok(WatchEvent::Lost { reason }) => {
                        debug!(prefix, reason, "position lost: relisting");
                        let e = StoreError::protocol(reason);
                        pause(&mut backoff, &mut rng, prefix, &e).await;
                        break 'watch;
                    }
                    Err(e) => {
                        pause(&mut backoff, &mut rng, prefix, &e).await;
                        continue 'watch;
                    }
                }
            }
        }
    }
}

fn publish(tx: &watch::Sender<Option<Arc<PrefixMap>>>, map: &PrefixMap) {
    tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(map) {
            false
        } else {
            *cur = Some(Arc::new(map.clone()));
            true
        }
    });
}
