//! The bench's own observers of a prefix (on their own thread, not counted):
//! each follows the key set under its prefix through a connection of its own
//! and time-stamps every change of it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use worker_core::{KvChange, KvWatch, WatchEvent};

use super::STAGE_TIMEOUT;
use crate::rt::Lane;
use crate::stores::Kind;

/// What an [`Observer`] has seen.
#[derive(Debug, Default)]
struct Observed {
    /// The key set under the prefix.
    keys: BTreeSet<String>,
    /// When the key set last changed.
    last_at: Option<Instant>,
    /// When each change of the key set was seen.
    log: Vec<Instant>,
}

/// Follows the key set under a prefix, time-stamping each change.
pub(super) struct Observer {
    state: Arc<Mutex<Observed>>,
    bump: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Observer {
    /// Starts following `prefix` through `kv` on `lane`; returns once the
    /// first list is in.
    pub(super) async fn start(kv: Arc<dyn KvWatch>, prefix: &str, lane: &Lane) -> Self {
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
    pub(super) async fn wait_for(
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
    pub(super) fn first_change_after(&self, t: Instant) -> Option<Instant> {
        let s = self.state.lock().expect("observer state");
        s.log.iter().copied().find(|&at| at > t)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Notes `keys` as the key set seen now, if it changed (or is the first).
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

/// The observers' connection (direct, not counted), made on `lane`.
pub(super) async fn observer_kv(kind: Kind, endpoint: String, lane: &Lane) -> Arc<dyn KvWatch> {
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
