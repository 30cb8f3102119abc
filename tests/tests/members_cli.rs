//! `coordinator member`, `coordinator work` and `coordinator status` as real
//! processes against real Consul and etcd servers: three members spread 30
//! items 10/10/10; a member killed with SIGKILL loses its items to the
//! survivors once its session / lease expires, and the survivors keep every
//! item they had.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
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
    members: BTreeMap<String, Child>,
    logs: BTreeMap<String, tempfile::NamedTempFile>,
    holdings: Holdings,
    changed: Arc<Notify>,
}

impl Cluster {
    fn new(store: Vec<String>) -> Self {
        Self {
            store,
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
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(coordinator_bin())
            .args(["member", "--instance-id", id, "--ttl", ttl])
            .args([
                "--soak",
                "100ms",
                "--leader-settle",
                "500ms",
                "--leader-soak",
                "500ms",
            ])
            .args(&self.store)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("reopen log"))
            .kill_on_drop(true)
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
        self.logs
            .iter()
            .map(|(id, f)| {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {id}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the live members hold `counts` (sorted) of 30 items, disjoint.
    async fn wait_counts(
        &self,
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
            (c == counts && union.len() == 30).then(|| {
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
            let pid = child.id().expect("running").to_string();
            let ok = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill");
            assert!(ok.success());
            let status = timeout(WAIT, child.wait())
                .await
                .expect("exit after SIGTERM")
                .expect("wait");
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
    let mut c = Cluster::new(store);
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
    let store = vec![
        "--backend".into(),
        "consul".into(),
        "--endpoints".into(),
        agent.http_addr(),
    ];
    // Consul invalidates a session between TTL and 2 x TTL after the last renewal.
    scenario(store, "10s", Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_etcd() {
    let server = EtcdServer::start().await;
    let store = vec![
        "--backend".into(),
        "etcd".into(),
        "--endpoints".into(),
        server.client_url(),
    ];
    scenario(store, "2s", Duration::from_secs(30)).await;
}
