//! `coordinator member --exec ... --metrics-addr ...` as real processes
//! against a real Consul agent: the example handler
//! (`crates/coordinator/examples/exec-handler.sh`) runs once per settled
//! change, in order, a failing one is logged with its status and the member
//! goes on; a Prometheus scrape of the member shows its figures after items
//! were placed, a second member joined and items moved. The first endpoint
//! given is dead, so the scrape also shows the store errors it caused.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
use coordinator_e2e::process::{lines_of, store_flags, terminate, FAST};
use serde_json::Value;
use test_support::ConsulAgent;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(40);
const HANDLER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/coordinator/examples/exec-handler.sh"
);

/// A running member: its JSON lines and its stderr lines.
struct Member {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Member {
    fn start(id: &str, store: &[String], extra: &[&str], log: &Path) -> Self {
        let mut child = Command::new(coordinator_bin())
            .args(["member", "--instance-id", id, "--ttl", "10s"])
            .args(FAST)
            .args(store)
            .args(extra)
            .env("RUST_LOG", "info,coordinator=debug")
            .env("HANDLER_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn coordinator member");
        Self {
            stdout: lines_of(child.stdout.take().unwrap()),
            stderr: lines_of(child.stderr.take().unwrap()),
            child,
            seen: Vec::new(),
        }
    }

    /// The next JSON line whose workload is `want`; the lines before it are skipped.
    async fn holding(&mut self, want: &[&str]) -> Value {
        let want: BTreeSet<&str> = want.iter().copied().collect();
        let reading = async {
            loop {
                let line = self.stdout.recv().await.expect("stdout open");
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                let held: BTreeSet<&str> = v["workload"]
                    .as_array()
                    .expect("workload")
                    .iter()
                    .map(|x| x.as_str().expect("id"))
                    .collect();
                if held == want {
                    return v;
                }
            }
        };
        timeout(WAIT, reading)
            .await
            .unwrap_or_else(|_| panic!("never held {want:?} within {WAIT:?}"))
    }

    /// The next JSON line, whatever it holds.
    async fn line(&mut self) -> Value {
        let line = timeout(WAIT, self.stdout.recv())
            .await
            .expect("a JSON line in time")
            .expect("stdout open");
        serde_json::from_str(&line).expect("a JSON line")
    }

    /// The outcome line of the next handler run.
    async fn handler_outcome(&mut self) -> String {
        let wait = async {
            loop {
                let line = self.stderr.recv().await.expect("stderr open");
                self.seen.push(line.clone());
                if line.contains("handler done") || line.contains("handler failed") {
                    return line;
                }
            }
        };
        let outcome = timeout(WAIT, wait).await;
        outcome.unwrap_or_else(|_| panic!("no handler outcome within {WAIT:?}: {:?}", self.seen))
    }

    async fn terminate(mut self) {
        let status = terminate(&mut self.child, WAIT, "the member").await;
        assert_eq!(status.code(), Some(0));
    }
}

async fn cli(store: &[String], args: &[&str]) {
    let out = Command::new(coordinator_bin())
        .args(args)
        .args(store)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run coordinator");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name and labels) in a Prometheus page, as written.
fn text<'a>(page: &'a str, series: &str) -> &'a str {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{page}"))
        .trim()
}

/// The value of the sample `series` as a number.
fn sample(page: &str, series: &str) -> f64 {
    let v = text(page, series);
    v.parse().unwrap_or_else(|e| panic!("{series} {v}: {e}"))
}

/// Scrapes `addr` until `ready` holds for the page (the figures are updated
/// by the member's tasks, a moment after the line they go with).
async fn scrape_until(addr: &str, ready: impl Fn(&str) -> bool) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{addr}/metrics");
    let (client, url, ready) = (&client, &url, &ready);
    test_support::poll_until("the metrics page", WAIT, || async move {
        let page = client.get(url).send().await.ok()?.text().await.ok()?;
        ready(&page).then_some(page)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_metrics_on_consul() {
    let agent = ConsulAgent::start_dev().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = store_flags("consul", &agent.http_addr());
    // The members are given a dead endpoint first: they fail over to the agent.
    let mut with_dead = store.clone();
    with_dead[3] = format!("http://127.0.0.1:{dead},{}", agent.http_addr());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("m1.log");
    let metrics_addr = format!("127.0.0.1:{}", test_support::free_port());
    for w in ["w1", "w2", "w3"] {
        cli(&store, &["work", "put", w]).await;
    }
    let mut m1 = Member::start(
        "m1",
        &with_dead,
        &["--metrics-addr", &metrics_addr, "--exec", "sh", HANDLER],
        &log,
    );
    let first = m1.holding(&["w1", "w2", "w3"]).await;
    // Every line before it had its handler run, in order; wait for its own.
    loop {
        let outcome = m1.handler_outcome().await;
        assert!(outcome.contains("handler done"), "{outcome}");
        if outcome.contains(&format!("revision={}", first["revision"])) {
            break;
        }
    }

    // An item the handler refuses: logged with its status, not fatal.
    cli(&store, &["work", "put", "fail-1"]).await;
    let refused = m1.line().await;
    assert_eq!(refused["added"], serde_json::json!(["fail-1"]));
    let outcome = m1.handler_outcome().await;
    assert!(
        outcome.contains("WARN") && outcome.contains("exit status: 3"),
        "{outcome}"
    );
    assert!(
        outcome.contains(&format!("revision={}", refused["revision"])),
        "{outcome}"
    );
    // The next change is handled.
    cli(&store, &["work", "put", "w4"]).await;
    let next = m1.line().await;
    assert_eq!(next["added"], serde_json::json!(["w4"]));
    let outcome = m1.handler_outcome().await;
    assert!(outcome.contains("handler done"), "{outcome}");
    check_handler_log(&log);

    // A second member: the leader (m1, alone until now) moves items to it.
    let m2 = Member::start("m2", &with_dead, &[], &dir.path().join("m2.log"));
    let kept = timeout(WAIT, async {
        loop {
            let v = m1.line().await;
            let n = v["workload"].as_array().map_or(0, Vec::len);
            if n < 5 {
                return n;
            }
        }
    })
    .await
    .expect("m1 gives items to m2");
    assert!(kept == 2 || kept == 3, "m1 kept {kept} of 5");

    let id = "{instance_id=\"m1\"}";
    let settled = format!("coordinator_settled_items{id}");
    let page = scrape_until(&metrics_addr, |p| {
        p.contains("coordinator_leader_items_moved_total{instance_id=\"m1\"} ")
            && p.lines().any(|l| l == format!("{settled} {kept}").as_str())
    })
    .await;
    check_metrics(&page, kept);
    m2.terminate().await;
    m1.terminate().await;
}

/// What m1's page must show after the scenario: `kept` items of 5 left
/// after m2 joined.
fn check_metrics(page: &str, kept: usize) {
    let id = "{instance_id=\"m1\"}";
    let moved = sample(page, &format!("coordinator_leader_items_moved_total{id}"));
    assert!(moved >= 5.0 - kept as f64, "{page}");
    assert!(
        sample(page, &format!("coordinator_leader_items_placed_total{id}")) >= 5.0,
        "{page}"
    );
    assert!(
        sample(page, &format!("coordinator_leader_plans_total{id}")) >= 2.0,
        "{page}"
    );
    assert_eq!(
        text(page, &format!("coordinator_member_is_leader{id}")),
        "1"
    );
    assert_eq!(
        text(page, &format!("coordinator_leader_fenced_writes_total{id}")),
        "0"
    );
    assert!(
        sample(page, &format!("coordinator_publications_total{id}")) >= 4.0,
        "{page}"
    );
    assert!(
        sample(page, &format!("coordinator_leader_changes_total{id}")) >= 1.0,
        "{page}"
    );
    assert_eq!(text(page, &format!("coordinator_relists_total{id}")), "0");
    let expired = "coordinator_member_renew_failures_total{instance_id=\"m1\",reason=\"expired\"}";
    assert_eq!(text(page, expired), "0");
    let delays = sample(
        page,
        &format!("coordinator_publication_delay_seconds_count{id}"),
    );
    let sum = sample(
        page,
        &format!("coordinator_publication_delay_seconds_sum{id}"),
    );
    assert!(delays >= 4.0, "{page}");
    assert!(
        (0.1..20.0).contains(&(sum / delays)),
        "mean delay {}s\n{page}",
        sum / delays
    );
    // The dead first endpoint: refused connections, counted as `unavailable`.
    let refused_total: f64 = page
        .lines()
        .filter(|l| {
            l.starts_with("coordinator_store_errors_total{")
                && l.contains("instance_id=\"m1\"")
                && l.contains("kind=\"unavailable\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused_total >= 1.0, "{page}");
    assert!(
        page.contains("# TYPE coordinator_publication_delay_seconds histogram"),
        "{page}"
    );
    assert!(page.contains("# HELP coordinator_settled_items "), "{page}");
}

/// The handler's own record: one line per change, revisions increasing, the
/// last two the refused item and the one after it.
fn check_handler_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let runs: Vec<&str> = text.lines().collect();
    let revisions: Vec<u64> = runs
        .iter()
        .map(|r| {
            r.strip_prefix("revision=")
                .and_then(|r| r.split(' ').next())
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("{r}"))
        })
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{text}");
    let tail = &runs[runs.len() - 2..];
    assert!(tail[0].contains(" added=fail-1 "), "{text}");
    assert!(
        tail[1].contains(" added=w4 removed= workload=fail-1,w1,w2,w3,w4 "),
        "{text}"
    );
}
