//! `coordinator member`, `coordinator work` and `coordinator status` as real
//! processes against real Consul and etcd servers: three members spread 30
//! items 10/10/10; a member killed with SIGKILL loses its items to the
//! survivors once its session / lease expires, and the survivors keep every
//! item they had. The leader killed with SIGKILL is replaced and the work
//! carries on; a leader paused (SIGSTOP) past its TTL is deposed and, resumed,
//! writes nothing stale; an outside lock holder (`consul lock`, `etcdctl
//! elect`) keeps members from leading until it lets go. A watcher on the whole
//! assignment prefix runs through the failover tests and fails them if any
//! store revision shows an item under two members.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
use coordinator_e2e::process::{
    log_tails, logged_command, signal, store_flags, terminate, Log, FAST,
};
use leader_core::conformance::DoubleOwnerWatch;
use serde_json::Value;
use test_support::{ConsulAgent, EtcdServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(40);

type Holdings = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

struct Cluster {
    store: Vec<String>,
    /// Flags for the members only (not the admin commands).
    member_flags: Vec<String>,
    members: BTreeMap<String, Child>,
    logs: BTreeMap<String, Log>,
    holdings: Holdings,
    changed: Arc<Notify>,
}

impl Cluster {
    fn new(store: Vec<String>) -> Self {
        Self {
            store,
            member_flags: Vec::new(),
            members: BTreeMap::new(),
            logs: BTreeMap::new(),
            holdings: Holdings::default(),
            changed: Arc::new(Notify::new()),
        }
    }

    async fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(coordinator_bin())
            .args(args)
            .args(&self.store)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run coordinator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(0),
            "coordinator {args:?} failed: {stderr}"
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn start(&mut self, id: &str, ttl: &str) {
        let log = Log::new();
        let mut child = logged_command(&log)
            .args(["member", "--instance-id", id, "--ttl", ttl])
            .args(FAST)
            .args(&self.store)
            .args(&self.member_flags)
            .spawn()
            .expect("spawn coordinator member");
        let stdout = child.stdout.take().expect("stdout");
        let (holdings, changed, who) = (self.holdings.clone(), self.changed.clone(), id.to_owned());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                assert_eq!(v["instance_id"], who.as_str());
                let set = v["workload"]
                    .as_array()
                    .expect("workload")
                    .iter()
                    .map(|x| x.as_str().expect("id").to_owned())
                    .collect();
                holdings.lock().unwrap().insert(who.clone(), set);
                changed.notify_waiters();
            }
        });
        self.members.insert(id.to_owned(), child);
        self.logs.insert(id.to_owned(), log);
    }

    fn logs(&self) -> String {
        log_tails(&self.logs, 15)
    }

    /// Waits until the live members hold `counts` (sorted) of 30 items, disjoint.
    async fn wait_counts(
        &self,
        counts: &[usize],
        bound: Duration,
    ) -> BTreeMap<String, BTreeSet<String>> {
        self.wait_spread(30, counts, bound).await
    }

    /// Waits until the live members hold `counts` (sorted) of `items` items, disjoint.
    async fn wait_spread(
        &self,
        items: usize,
        counts: &[usize],
        bound: Duration,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let live: BTreeSet<String> = self.members.keys().cloned().collect();
        let check = || {
            let h = self.holdings.lock().unwrap();
            let mut c: Vec<usize> = live
                .iter()
                .map(|id| h.get(id).map_or(0, BTreeSet::len))
                .collect();
            c.sort_unstable();
            let union: BTreeSet<&String> =
                live.iter().filter_map(|id| h.get(id)).flatten().collect();
            (c == counts && union.len() == items).then(|| {
                live.iter()
                    .map(|id| (id.clone(), h.get(id).cloned().unwrap_or_default()))
                    .collect()
            })
        };
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if let Some(h) = check() {
                    return h;
                }
                notified.await;
            }
        };
        match timeout(bound, wait).await {
            Ok(h) => h,
            Err(elapsed) => panic!(
                "{elapsed} ({bound:?}) waiting for counts {counts:?}; holdings {:?}\n{}",
                self.holdings.lock().unwrap(),
                self.logs()
            ),
        }
    }

    async fn status(&self) -> Value {
        let (_, out) = self.cli(&["status", "--json"]).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    async fn terminate_all(&mut self) {
        for (id, mut child) in std::mem::take(&mut self.members) {
            let status = terminate(&mut child, WAIT, &id).await;
            assert_eq!(
                status.code(),
                Some(0),
                "{id} after SIGTERM:\n{}",
                self.logs()
            );
        }
    }
}

async fn scenario(store: Vec<String>, ttl: &str, expiry_bound: Duration) {
    scenario_with(store, &[], ttl, expiry_bound).await;
}

async fn scenario_with(
    store: Vec<String>,
    member_flags: &[&str],
    ttl: &str,
    expiry_bound: Duration,
) {
    let mut c = Cluster::new(store);
    c.member_flags = member_flags.iter().map(|f| (*f).to_owned()).collect();
    for i in 0..30 {
        c.cli(&["work", "put", &format!("w{i:02}"), &format!("p{i}")])
            .await;
    }
    let (_, ls) = c.cli(&["work", "ls"]).await;
    assert_eq!(ls.lines().count(), 30, "{ls}");
    assert!(ls.starts_with("w00\tp0\n"), "{ls}");
    for id in ["m1", "m2", "m3"] {
        c.start(id, ttl);
    }
    let before = c.wait_counts(&[10, 10, 10], WAIT).await;
    let status = c.status().await;
    let leader = status["leader"].as_str().expect("a leader").to_owned();
    assert!(before.contains_key(&leader), "{status}");
    for id in ["m1", "m2", "m3"] {
        assert_eq!(status["members"][id]["count"], 10, "{status}");
        assert_eq!(status["members"][id]["live"], true, "{status}");
    }
    assert_eq!(
        status["unassigned"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );

    // SIGKILL a member that does not lead.
    let victim = ["m1", "m2", "m3"]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let mut child = c.members.remove(victim).expect("victim");
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let after = c.wait_counts(&[15, 15], expiry_bound).await;
    for (id, held) in &after {
        assert!(
            before[id].is_subset(held),
            "{id} lost items: {:?} -> {held:?}",
            before[id]
        );
    }
    let status = c.status().await;
    assert!(
        status["members"]
            .get(victim)
            .is_none_or(|m| m["count"] == 0),
        "{status}"
    );

    // A bad work id is refused with a clear message and exit 2.
    let out = Command::new(coordinator_bin())
        .args(["work", "put", "a/b"])
        .args(&c.store)
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("work id"),
        "{out:?}"
    );
    c.terminate_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_consul() {
    let agent = ConsulAgent::start_dev().await;
    let store = store_flags("consul", &agent.http_addr());
    // Consul invalidates a session between TTL and 2 x TTL after the last renewal.
    scenario(store, "10s", Duration::from_secs(60)).await;
}

/// With `--session-check`, a `SIGKILL`ed member's session ends when its agent
/// check's TTL (10 s) passes without a renewal: its items are settled on the
/// others within 15 s of the kill, where a plain session takes 16.7 to 20 s
/// to expire before the leader even sees the member go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_consul_with_session_checks() {
    let agent = ConsulAgent::start_dev().await;
    let store = store_flags("consul", &agent.http_addr());
    scenario_with(store, &["--session-check"], "10s", Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_etcd() {
    let server = EtcdServer::start().await;
    let store = store_flags("etcd", &server.client_url());
    scenario(store, "2s", Duration::from_secs(30)).await;
}

const ASSIGNMENTS: &str = "service/coordinator/assignments/";

/// A backend for the test's own observations (the assignment watcher, leadership).
async fn test_backend(
    kind: coordinator::BackendKind,
    endpoint: &str,
    leader: &str,
) -> coordinator::Backend {
    let mut config = coordinator::Config::new(kind, "observer");
    config.endpoints = vec![endpoint.to_owned()];
    config.leader = leader.to_owned();
    coordinator::Backend::connect(&config)
        .await
        .expect("connect the observer")
}

/// Waits until the observed leadership is another term than `old`.
async fn wait_new_leader(
    backend: &coordinator::Backend,
    old: &coordinator::Leader,
    bound: Duration,
) {
    let mut stream = backend.leader_wait().observe().await.expect("observe");
    timeout(bound, async {
        loop {
            if let Some(l) = stream.next().await.expect("observe") {
                if l.term != old.term {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: no new leader after {old:?}"));
}

/// Leader failover and fencing with real processes.
async fn failover_and_fencing(
    store: Vec<String>,
    backend: coordinator::Backend,
    ttl: &str,
    expiry_bound: Duration,
) {
    let watch = DoubleOwnerWatch::start(backend.kv(), ASSIGNMENTS);
    let mut c = Cluster::new(store);
    // Revoke-first moves: the watch checks that no item is ever under two
    // members' primary keys, which the default mode's make-before-break
    // moves hold for a moment (the join below moves items).
    c.member_flags = vec!["--prepare".to_owned(), "false".to_owned()];
    for i in 0..30 {
        c.cli(&["work", "put", &format!("w{i:02}"), &format!("p{i}")])
            .await;
    }
    for id in ["m1", "m2", "m3"] {
        c.start(id, ttl);
    }
    let before = c.wait_counts(&[10, 10, 10], WAIT).await;

    // SIGKILL the leader: another member leads and carries on.
    let leader = c.status().await["leader"]
        .as_str()
        .expect("a leader")
        .to_owned();
    let mut child = c.members.remove(&leader).expect("the leader's process");
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let after = c.wait_counts(&[15, 15], expiry_bound).await;
    for (id, held) in &after {
        assert!(
            before[id].is_subset(held),
            "{id} lost items: {:?} -> {held:?}",
            before[id]
        );
    }
    let next = c.status().await["leader"]
        .as_str()
        .expect("a new leader")
        .to_owned();
    assert_ne!(next, leader);
    assert!(after.contains_key(&next), "{next} is a survivor");

    // Pause the leader past its TTL (SIGSTOP) while a new item is to be placed.
    c.start("m4", ttl);
    c.wait_counts(&[10, 10, 10], WAIT).await;
    let paused_id = c.status().await["leader"]
        .as_str()
        .expect("a leader")
        .to_owned();
    let term = backend
        .leader_wait()
        .leader()
        .await
        .expect("leader")
        .expect("a leader");
    let paused = c.members.remove(&paused_id).expect("the leader's process");
    // The new item is put just before the pause: the leader is still soaking
    // it when it stops, so on resuming it has a plan to write.
    c.cli(&["work", "put", "w30", "p30"]).await;
    signal(&paused, nix::sys::signal::Signal::SIGSTOP);
    wait_new_leader(&backend, &term, expiry_bound).await;
    c.wait_spread(31, &[15, 16], expiry_bound).await;

    // Resumed, the deposed leader writes nothing stale, steps down, and
    // comes back as a plain member that gets its share again.
    signal(&paused, nix::sys::signal::Signal::SIGCONT);
    c.members.insert(paused_id.clone(), paused);
    c.wait_spread(31, &[10, 10, 11], expiry_bound).await;
    let log = c.logs[&paused_id].text();
    // Which way it learned it was deposed: a write rejected by the fence, or
    // its renewal finding the session gone (both are correct; the store
    // decides which comes first).
    let how = if log.contains("write rejected by the fence") {
        "its write was rejected by the fence"
    } else {
        "its renewal found the session gone"
    };
    eprintln!("deposed leader {paused_id}: {how}");
    assert!(
        log.contains("stepping down")
            || log.contains("leadership lost")
            || log.contains("session expired")
            || log.contains("no longer leading"),
        "the deposed leader did not step down:\n{log}"
    );
    let status = c.status().await;
    assert_ne!(
        status["leader"].as_str(),
        Some(paused_id.as_str()),
        "{status}"
    );
    assert_eq!(status["items"], 31, "{status}");
    assert_eq!(
        status["unassigned"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    watch.assert_clean();
    c.terminate_all().await;
    watch.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_fencing_on_consul() {
    let agent = ConsulAgent::start_dev().await;
    let store = store_flags("consul", &agent.http_addr());
    let backend = test_backend(
        coordinator::BackendKind::Consul,
        &agent.http_addr(),
        "service/coordinator/leader",
    )
    .await;
    failover_and_fencing(store, backend, "10s", Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_fencing_on_etcd() {
    let server = EtcdServer::start().await;
    let store = store_flags("etcd", &server.client_url());
    let backend = test_backend(
        coordinator::BackendKind::Etcd,
        &server.client_url(),
        "service/coordinator/leader",
    )
    .await;
    failover_and_fencing(store, backend, "2s", Duration::from_secs(30)).await;
}

/// An outside holder of the election keeps members from leading until it lets go.
async fn outside_holder(store: Vec<String>, release: impl std::future::Future<Output = ()>) {
    let mut c = Cluster::new(store);
    for i in 0..6 {
        c.cli(&["work", "put", &format!("w{i}")]).await;
    }
    for id in ["m1", "m2"] {
        c.start(id, "10s");
    }
    // Both members made their first sync: they saw the outside leader.
    timeout(WAIT, async {
        loop {
            let notified = c.changed.notified();
            if c.holdings.lock().unwrap().len() == 2 {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("first syncs under the outside leader");
    // A window for a non-event: three leader soaks in which a member that
    // wrongly led would have planned and written.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = c.status().await;
    assert!(
        !matches!(status["leader"].as_str(), Some("m1" | "m2")),
        "a member leads while an outside holder does: {status}"
    );
    assert_eq!(
        status["unassigned"].as_array().map(Vec::len),
        Some(6),
        "{status}"
    );
    release.await;
    c.wait_spread(6, &[3, 3], WAIT).await;
    c.terminate_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_lock_keeps_members_from_leading() {
    let agent = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let lock = agent
        .command([
            "lock",
            "locks/svc",
            &format!("while [ ! -e '{}' ]; do sleep 0.05; done", stop.display()),
        ])
        .spawn()
        .expect("run consul lock");
    let backend = test_backend(
        coordinator::BackendKind::Consul,
        &agent.http_addr(),
        "locks/svc/.lock",
    )
    .await;
    timeout(WAIT, async {
        let mut s = backend.leader_wait().observe().await.expect("observe");
        while s.next().await.expect("observe").is_none() {}
    })
    .await
    .expect("consul lock holds the key");
    let store = vec![
        "--backend".into(),
        "consul".into(),
        "--endpoints".into(),
        agent.http_addr(),
        "--leader".into(),
        "locks/svc/.lock".into(),
    ];
    outside_holder(store, async {
        std::fs::write(&stop, "").unwrap();
        let out = timeout(WAIT, lock.wait_with_output())
            .await
            .expect("consul lock exits")
            .unwrap();
        // After releasing, `consul lock` deletes its key unless someone else
        // already holds it; a member that took the key at once makes that
        // clean-up fail (exit 1, "Existing key does not match lock use").
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("Existing key does not match lock use"),
            "consul lock: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcdctl_campaign_keeps_members_from_leading() {
    let server = EtcdServer::start().await;
    let mut elect = server
        .cluster()
        .etcdctl(["elect", "svc-election", "outsider"])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn etcdctl elect");
    let stdout = elect.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    timeout(WAIT, lines.next_line())
        .await
        .expect("etcdctl elect: elected in time")
        .expect("read etcdctl output")
        .expect("etcdctl elect was elected");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let store = vec![
        "--backend".into(),
        "etcd".into(),
        "--endpoints".into(),
        server.client_url(),
        "--leader".into(),
        "svc-election".into(),
    ];
    outside_holder(store, async {
        // etcdctl resigns and closes its session on SIGINT.
        signal(&elect, nix::sys::signal::Signal::SIGINT);
        let _ = timeout(WAIT, elect.wait())
            .await
            .expect("etcdctl elect exits");
    })
    .await;
}
