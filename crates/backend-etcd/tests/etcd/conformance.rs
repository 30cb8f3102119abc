//! The core's conformance suite, and member isolation, on a real etcd.

use std::sync::Arc;

use async_trait::async_trait;
use backend_etcd::{EtcdBackend, EtcdConfig};
use test_support::EtcdServer;
use worker_core::conformance::{run_all, ConformanceStore};
use worker_core::{KvChange, KvWatch, LeaderWait, WatchEvent};

use crate::common::{backend, campaign, init_tracing, plain_client, unique, WAIT};

struct EtcdConformance {
    backend: EtcdBackend,
    client: etcd_client::Client,
    election: String,
    lease: tokio::sync::Mutex<Option<i64>>,
}

#[async_trait]
impl ConformanceStore for EtcdConformance {
    fn kv(&self) -> Arc<dyn KvWatch> {
        Arc::new(self.backend.clone())
    }

    fn leader_wait(&self) -> Arc<dyn LeaderWait> {
        Arc::new(self.backend.clone())
    }

    async fn put(&self, key: &str, value: &[u8]) {
        self.client
            .clone()
            .put(key, value, None)
            .await
            .expect("put");
    }

    async fn delete(&self, key: &str) {
        self.client.clone().delete(key, None).await.expect("delete");
    }

    async fn take_leadership(&self, id: &str) {
        self.release_leadership().await;
        let lease = campaign(&self.client, &self.election, id).await;
        *self.lease.lock().await = Some(lease);
    }

    async fn release_leadership(&self) {
        if let Some(lease) = self.lease.lock().await.take() {
            self.client
                .clone()
                .lease_revoke(lease)
                .await
                .expect("revoke");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_etcd() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("conformance/leader");
    let store = EtcdConformance {
        backend: backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await,
        client: plain_client(&server.client_urls()).await,
        election,
        lease: tokio::sync::Mutex::new(None),
    };
    run_all(&store, &format!("{}/", unique("conf"))).await;
}

/// Writes under `m10/`, `m1x` and other prefixes produce no event on `m1`'s
/// watch: the first event it yields is the write to `m1/` made after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_watch_sees_only_its_own_keys() {
    init_tracing();
    let server = EtcdServer::start().await;
    let etcd = backend(EtcdConfig::new(server.client_urls())).await;
    let p = format!("{}/", unique("own"));
    let member = format!("{p}m1/");
    let snap = etcd.list(&member).await.expect("list");
    let mut stream = etcd.watch(&member, snap.revision).await.expect("watch");
    server.put(&format!("{p}m10/w1"), "x").await;
    server.put(&format!("{p}m1x"), "x").await;
    server.put(&format!("{p}m100/m1/w1"), "x").await;
    server.put("other/m1/w1", "x").await;
    let mine = format!("{member}w1");
    let rev = server.put(&mine, "v").await;
    let event = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await.expect("stream") {
                WatchEvent::Progress { .. } => {}
                other => return other,
            }
        }
    })
    .await
    .expect("no event for m1/w1");
    match event {
        WatchEvent::Changes { revision, changes } => {
            assert_eq!(revision, u64::try_from(rev).unwrap());
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert!(
                matches!(&changes[0], KvChange::Put(e) if e.key == mine.as_bytes() && &e.value[..] == b"v"),
                "{changes:?}"
            );
        }
        other => panic!("unexpected first event {other:?}"),
    }
}

/// A watch opened from a compacted revision reports `Lost` (the core relists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_revision_is_lost() {
    init_tracing();
    let server = EtcdServer::start().await;
    let etcd = backend(EtcdConfig::new(server.client_urls())).await;
    let member = format!("{}/m1/", unique("compact"));
    let snap = etcd.list(&member).await.expect("list");
    for i in 0..5 {
        server.put(&format!("{member}w{i}"), "v").await;
    }
    let rev = server.get_revision().await;
    server.compact(rev).await;
    let mut stream = etcd.watch(&member, snap.revision).await.expect("watch");
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no event")
        .expect("stream");
    assert!(matches!(event, WatchEvent::Lost { .. }), "{event:?}");
}

/// The leader is the election key with the lowest create revision; its value
/// is the id and its create revision the term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_is_oldest_campaigner() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("lead");
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await;
    assert_eq!(etcd.leader().await.expect("leader"), None);
    let client = plain_client(&server.client_urls()).await;
    let first = campaign(&client, &election, "first").await;
    let leader = etcd.leader().await.expect("leader").expect("a leader");
    assert_eq!(leader.id, "first");
    assert!(leader.term > 0);
    // A second campaigner waits behind the first.
    let c2 = client.clone();
    let election2 = election.clone();
    let second = tokio::spawn(async move { campaign(&c2, &election2, "second").await });
    let mut obs = etcd.observe().await.expect("observe");
    assert_eq!(obs.next().await.expect("observe").as_ref(), Some(&leader));
    // Wait until the second campaigner's key exists (it queues behind the first).
    test_support::poll_until("the second campaign key", WAIT, || {
        let mut c = client.clone();
        let prefix = format!("{election}/");
        async move {
            let r = c
                .get(
                    prefix,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .expect("count");
            (r.count() == 2).then_some(())
        }
    })
    .await;
    client.clone().lease_revoke(first).await.expect("revoke");
    let next = tokio::time::timeout(WAIT, obs.next())
        .await
        .expect("no leader change")
        .expect("observe")
        .expect("second leader");
    assert_eq!(next.id, "second");
    assert!(next.term > leader.term);
    let second = second.await.expect("campaign task");
    client.clone().lease_revoke(second).await.expect("revoke");
    let none = tokio::time::timeout(WAIT, obs.next())
        .await
        .expect("no leader change")
        .expect("observe");
    assert_eq!(none, None);
}
