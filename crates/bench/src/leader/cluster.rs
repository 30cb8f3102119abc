//! The cluster: each member's own connection (one backend value per member,
//! as N processes would have), its id, the threads the bench and the leader
//! run on, and the feeds of the members' settled workloads and plans.

use std::sync::Arc;

use backend_consul::{ConsulBackend, ConsulConfig};
use backend_etcd::{EtcdBackend, EtcdConfig};
use leader_core::{Layout, MemberHandle, MemberStore, PlanReport};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;

use super::recording::{Recording, SentLog};
use crate::rt::Lane;
use crate::stores::Kind;

/// A member's own connection to `endpoint` (one backend value per member),
/// its fenced transactions noted in `log` if given.
pub(super) async fn member_store(
    kind: Kind,
    endpoint: String,
    layout: &Layout,
    log: Option<&SentLog>,
) -> MemberStore {
    let mut store = match kind {
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
    };
    if let Some(log) = log {
        store.writer = Arc::new(Recording {
            inner: store.writer,
            log: log.clone(),
        });
    }
    store
}

/// The id of the `j`th member: `m000`, `m001`, …
pub(super) fn member_id(j: usize) -> String {
    format!("m{j:03}")
}

/// The bench's own threads, whose CPU is not the members'.
#[derive(Debug, Clone)]
pub struct Lanes {
    /// The plain writer.
    pub writer: Lane,
    /// The observers.
    pub observe: Lane,
    /// The first member, which leads: a thread of its own, as its own
    /// process would have (the other members share the bench's runtime);
    /// the bare loop runs on it too. Not one of the bench's own threads.
    pub leader: Lane,
}

impl Lanes {
    /// CPU the bench's own threads (writer, observers) used so far (µs).
    pub(super) async fn cpu_us(&self) -> u64 {
        self.writer.cpu_us().await + self.observe.cpu_us().await
    }
}

/// Forwards every settled-workload change of `m` to `notify`.
pub(super) fn forward(m: &MemberHandle, notify: &Arc<Notify>) -> JoinHandle<()> {
    let mut w = m.worker().watch();
    let notify = notify.clone();
    tokio::spawn(async move {
        while w.changed().await.is_ok() {
            notify.notify_waiters();
        }
    })
}

/// The plan reports the members' leaders sent since the last drain.
pub(super) fn drain(rxs: &mut [broadcast::Receiver<PlanReport>]) -> Vec<PlanReport> {
    let mut all = Vec::new();
    for rx in rxs {
        while let Ok(p) = rx.try_recv() {
            all.push(p);
        }
    }
    all
}
