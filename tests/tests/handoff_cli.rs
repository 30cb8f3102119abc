//! Exclusive mode with real `coordinator member` processes on real Consul and
//! etcd servers. A checker follows every member's acknowledged workload from
//! its JSON lines (each line is acknowledged once printed; it counts from
//! the moment the test reads it) and fails if an item is ever held by two
//! members while: members join, a member is drained with `coordinator drain
//! ID`, a member drains on SIGTERM, a member is cut off from the store (a
//! fault proxy in front of it, silent) for longer than its TTL while the
//! others go on, and the leader is killed with SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
use coordinator_e2e::process::{log_tails, logged_command, signal, store_flags, Log, FAST};
use leader_core::conformance::AckedLedger;
use serde_json::Value;
use test_support::{ConsulAgent, EtcdServer, FaultProxy, ProxyMode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use worker_core::WorkId;

const WAIT: Duration = Duration::from_secs(40);

struct Cluster {
    backend: &'static str,
    endpoint: String,
    ttl: &'static str,
    members: BTreeMap<String, Child>,
    logs: BTreeMap<String, Log>,
    ledger: AckedLedger,
}

impl Cluster {
    fn store_args(&self, endpoint: &str) -> Vec<String> {
        store_flags(self.backend, endpoint)
    }

    async fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(coordinator_bin())
            .args(args)
            .args(self.store_args(&self.endpoint))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run coordinator")
    }

    /// Starts member `id` in exclusive mode, reaching the store at `endpoint`.
    fn start(&mut self, id: &str, endpoint: &str) {
        let log = Log::new();
        let mut child = logged_command(&log)
            .args([
                "member",
                "--instance-id",
                id,
                "--ttl",
                self.ttl,
                "--exclusive",
            ])
            .args(FAST)
            .args(["--drain-timeout", "30s"])
            .args(self.store_args(endpoint))
            .spawn()
            .expect("spawn coordinator member");
        let stdout = child.stdout.take().expect("stdout");
        let (ledger, who) = (self.ledger.clone(), id.to_owned());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = tokio::time::Instant::now();
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                assert_eq!(v["instance_id"], who.as_str());
                // Active: the primaries (the line's `primary` list once
                // the process has held a secondary, a preparing one
                // included), else the whole workload.
                let active = if v["primary"].is_array() {
                    &v["primary"]
                } else {
                    &v["workload"]
                };
                let set: BTreeSet<WorkId> = active
                    .as_array()
                    .expect("workload")
                    .iter()
                    .map(|x| WorkId::from(x.as_str().expect("id")))
                    .collect();
                ledger.set(&who, set, at);
            }
            // The process is gone: it holds nothing.
            ledger.set(&who, BTreeSet::new(), tokio::time::Instant::now());
        });
        self.members.insert(id.to_owned(), child);
        self.logs.insert(id.to_owned(), log);
    }

    fn logs(&self) -> String {
        log_tails(&self.logs, 20)
    }

    /// Waits until the acknowledged workloads are `counts` of `items` items.
    async fn wait_spread(&self, items: usize, counts: &[usize], bound: Duration, what: &str) {
        let mut want = counts.to_vec();
        want.sort_unstable();
        let ok = |h: &BTreeMap<String, BTreeSet<WorkId>>| {
            let held: Vec<&BTreeSet<WorkId>> = h.values().filter(|w| !w.is_empty()).collect();
            let all: BTreeSet<&WorkId> = held.iter().copied().flatten().collect();
            let mut c: Vec<usize> = held.iter().map(|w| w.len()).collect();
            c.sort_unstable();
            all.len() == items && c == want
        };
        let waited = self.ledger.try_wait(bound, ok).await;
        assert!(
            waited,
            "timed out after {bound:?} waiting for {what}: {:?}\n{}",
            self.ledger.holdings(),
            self.logs()
        );
    }

    /// Waits for member `id` to exit and checks it exited 0.
    async fn exited(&mut self, id: &str) {
        let mut child = self.members.remove(id).expect("member");
        let status = timeout(WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{id} did not exit:\n{}", self.logs()))
            .expect("wait");
        assert_eq!(status.code(), Some(0), "{id}:\n{}", self.logs());
    }

    async fn leader(&self) -> String {
        let out = self.cli(&["status", "--json"]).await;
        let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
        v["leader"].as_str().expect("a leader").to_owned()
    }
}

async fn scenario(
    backend: &'static str,
    endpoint: String,
    target: std::net::SocketAddr,
    ttl: &'static str,
    expiry_bound: Duration,
) {
    let mut c = Cluster {
        backend,
        endpoint,
        ttl,
        members: BTreeMap::new(),
        logs: BTreeMap::new(),
        ledger: AckedLedger::new(),
    };
    for i in 0..12 {
        let out = c.cli(&["work", "put", &format!("w{i:02}")]).await;
        assert!(out.status.success(), "{out:?}");
    }
    let endpoint = c.endpoint.clone();
    c.start("m1", &endpoint);
    c.start("m2", &endpoint);
    c.wait_spread(12, &[6, 6], WAIT, "6/6").await;

    // Joins, each through a proxy the test can cut.
    let mut proxies = BTreeMap::new();
    for id in ["m3", "m4"] {
        let proxy = FaultProxy::start(target).await;
        c.start(id, &proxy.http_url());
        proxies.insert(id, proxy);
    }
    c.wait_spread(12, &[3, 3, 3, 3], WAIT, "3/3/3/3 after two joins")
        .await;

    // An operator drains m1; it hands its items over and exits 0.
    let out = c.cli(&["drain", "m1", "--timeout", "60s"]).await;
    assert!(out.status.success(), "drain m1: {out:?}\n{}", c.logs());
    c.exited("m1").await;
    c.wait_spread(12, &[4, 4, 4], WAIT, "4/4/4 after draining m1")
        .await;

    // SIGTERM drains m2.
    signal(&c.members["m2"], nix::sys::signal::Signal::SIGTERM);
    c.exited("m2").await;
    c.wait_spread(12, &[6, 6], WAIT, "6/6 after m2 drained on SIGTERM")
        .await;

    // The member that does not lead is cut off longer than its TTL: it
    // releases its workload, the leader takes its items, an item added
    // meanwhile is placed; healed, it comes back and takes its share again.
    let leader = c.leader().await;
    let victim = if leader == "m3" { "m4" } else { "m3" };
    proxies[victim].set_mode(ProxyMode::BlackHole);
    let out = c.cli(&["work", "put", "w12"]).await;
    assert!(out.status.success(), "{out:?}");
    c.wait_spread(
        13,
        &[13],
        expiry_bound,
        "all 13 on the leader while the other is cut off",
    )
    .await;
    proxies[victim].set_mode(ProxyMode::PassThrough);
    c.wait_spread(
        13,
        &[6, 7],
        expiry_bound,
        "the cut-off member back with its share",
    )
    .await;

    // The leader dies.
    let leader = c.leader().await;
    let mut child = c.members.remove(&leader).expect("leader");
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    c.wait_spread(13, &[13], expiry_bound, "all 13 on the survivor")
        .await;

    let violations = c.ledger.violations();
    assert!(
        violations.is_empty(),
        "items held by two members: {violations:?}\n{}",
        c.logs()
    );
    println!(
        "{backend}: longest time an item was held by nobody: {:?}",
        c.ledger.longest_unowned()
    );
    let ids: Vec<String> = c.members.keys().cloned().collect();
    for id in ids {
        signal(&c.members[&id], nix::sys::signal::Signal::SIGINT);
        c.exited(&id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_members_on_consul() {
    let agent = ConsulAgent::start_dev().await;
    let target = ([127, 0, 0, 1], agent.port()).into();
    // Consul invalidates a session between TTL and 2 x TTL after the last
    // renewal; the leader then waits a whole TTL.
    scenario(
        "consul",
        agent.http_addr(),
        target,
        "10s",
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_members_on_etcd() {
    let server = EtcdServer::start().await;
    let url = server.client_url();
    let target = url
        .split("://")
        .nth(1)
        .unwrap_or(&url)
        .parse()
        .expect("host:port");
    scenario("etcd", url, target, "3s", Duration::from_secs(30)).await;
}
