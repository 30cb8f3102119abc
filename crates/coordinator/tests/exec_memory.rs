//! `coordinator worker --exec` and `--metrics-addr` (the alias of
//! `--http-addr`) on the memory backend, as a real process running the real
//! example handler (`examples/exec-handler.sh`): one handler per change, in order, the JSON
//! line on stdin and the change in the environment; a failing handler is
//! logged with its status and the next change is handled; the metrics
//! endpoint answers with the worker's figures.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;

use common::{feed, free_port, lines_of, terminate, Scratch, BIN, WAIT};

const HANDLER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/exec-handler.sh");

/// A running `coordinator worker --backend memory`, its stdout and stderr
/// read line by line into channels.
struct Program {
    child: Child,
    stdin: ChildStdin,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    seen_stderr: Vec<String>,
}

impl Program {
    fn start(extra: &[&str], log: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["worker", "--backend", "memory", "--instance-id", "m1"])
            .args(["--soak", "100ms", "--prefix", "p/"])
            .args(extra)
            .env("RUST_LOG", "warn,coordinator=debug")
            .env("HANDLER_LOG", log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            stdin: child.stdin.take().unwrap(),
            stdout: lines_of(child.stdout.take().unwrap()),
            stderr: lines_of(child.stderr.take().unwrap()),
            child,
            seen_stderr: Vec::new(),
        }
    }

    async fn feed(&mut self, commands: &str) {
        feed(&mut self.stdin, commands).await;
    }

    /// The next JSON line on stdout.
    async fn line(&mut self) -> serde_json::Value {
        let line = timeout(WAIT, self.stdout.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no JSON line within {WAIT:?}; stderr: {:?}",
                    self.seen_stderr
                )
            })
            .expect("stdout open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The outcome of the next handler run: its stderr line.
    async fn handler_outcome(&mut self) -> String {
        let wait = async {
            loop {
                let line = self.stderr.recv().await.expect("stderr open");
                self.seen_stderr.push(line.clone());
                if line.contains("handler done") || line.contains("handler failed") {
                    return line;
                }
            }
        };
        let outcome = timeout(WAIT, wait).await;
        outcome.unwrap_or_else(|_| {
            panic!("no handler outcome within {WAIT:?}: {:?}", self.seen_stderr)
        })
    }

    async fn terminate(mut self) {
        let status = terminate(&mut self.child).await;
        assert_eq!(status.code(), Some(0), "{:?}", self.seen_stderr);
    }
}

/// `GET /metrics` over a plain TCP connection; the body.
async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics endpoint accepts connections");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(WAIT, s.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_each_change_in_order_and_survives_a_failing_handler() {
    let scratch = Scratch::new("exec-memory");
    let log = scratch.path("handler.log");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = Program::start(&["--metrics-addr", &addr, "--exec", "sh", HANDLER], &log);

    // 1. The first sync (empty): a line, and the handler for it.
    let first = p.line().await;
    assert_eq!(first["workload"], serde_json::json!([]));
    let outcome = p.handler_outcome().await;
    assert!(outcome.contains("handler done"), "{outcome}");

    // 2. Two items.
    p.feed("put p/m1/w2 b\nput p/m1/w1 a\n").await;
    let second = p.line().await;
    assert_eq!(second["added"], serde_json::json!(["w1", "w2"]));
    let outcome = p.handler_outcome().await;
    assert!(outcome.contains("handler done"), "{outcome}");

    // 3. An item the handler refuses: exit status 3, logged, not fatal.
    p.feed("put p/m1/fail-1\n").await;
    let third = p.line().await;
    assert_eq!(third["added"], serde_json::json!(["fail-1"]));
    let outcome = p.handler_outcome().await;
    assert!(
        outcome.contains("WARN") && outcome.contains("handler failed"),
        "{outcome}"
    );
    assert!(outcome.contains("exit status: 3"), "{outcome}");
    assert!(
        outcome.contains(&format!("revision={}", third["revision"])),
        "{outcome}"
    );

    // 4. The next change is handled as usual.
    p.feed("del p/m1/w1\n").await;
    let fourth = p.line().await;
    assert_eq!(fourth["removed"], serde_json::json!(["w1"]));
    let outcome = p.handler_outcome().await;
    assert!(outcome.contains("handler done"), "{outcome}");

    // What each handler run saw: in order, the JSON line on stdin, the
    // change in the environment.
    let text = std::fs::read_to_string(&log).unwrap();
    let runs: Vec<&str> = text.lines().collect();
    assert_eq!(runs.len(), 4, "{text}");
    let lines = [&first, &second, &third, &fourth];
    for (run, line) in runs.iter().zip(lines) {
        assert!(
            run.starts_with(&format!("revision={} ", line["revision"])),
            "{run} vs {line}"
        );
        let json = run.split_once(" json=").expect("json=").1;
        let stdin: serde_json::Value = serde_json::from_str(json).expect("the JSON line");
        assert_eq!(&stdin, line, "{run}");
    }
    assert!(
        runs[0].contains("initial=true added= removed= workload= "),
        "{}",
        runs[0]
    );
    assert!(
        runs[1].contains("initial=false added=w1,w2 removed= workload=w1,w2 "),
        "{}",
        runs[1]
    );
    assert!(
        runs[2].contains("added=fail-1 removed= workload=fail-1,w1,w2 "),
        "{}",
        runs[2]
    );
    assert!(
        runs[3].contains("added= removed=w1 workload=fail-1,w2 "),
        "{}",
        runs[3]
    );

    // The handler's own output went to stderr, never into the JSON lines.
    for said in [
        "m1: starting w1",
        "m1: cannot start fail-1",
        "m1: stopping w1",
    ] {
        assert!(
            p.seen_stderr.iter().any(|l| l == said),
            "{said}: {:?}",
            p.seen_stderr
        );
    }

    // The metrics endpoint: the worker's figures after those changes.
    check_metrics(&scrape(port).await);
    p.terminate().await;
}

/// The worker's figures after the four changes of the test above.
fn check_metrics(page: &str) {
    let id = "{instance_id=\"m1\"}";
    assert_eq!(
        sample(page, &format!("coordinator_settled_items{id}")),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(page, &format!("coordinator_publications_total{id}")),
        Some(4.0),
        "{page}"
    );
    let delays = sample(
        page,
        &format!("coordinator_publication_delay_seconds_count{id}"),
    );
    assert_eq!(delays, Some(4.0), "{page}");
    let sum = sample(
        page,
        &format!("coordinator_publication_delay_seconds_sum{id}"),
    )
    .unwrap();
    assert!(
        (0.3..40.0).contains(&sum),
        "4 publications after a 100ms soak took {sum}s"
    );
    assert_eq!(
        sample(page, &format!("coordinator_leader_changes_total{id}")),
        Some(1.0),
        "{page}"
    );
    assert!(
        page.contains("# TYPE coordinator_publication_delay_seconds histogram"),
        "{page}"
    );
}

#[tokio::test]
async fn a_handler_that_cannot_start_is_logged_and_the_worker_goes_on() {
    let scratch = Scratch::new("exec-missing");
    // Executable, so the start-up check passes, but its interpreter is
    // missing: starting it fails every time.
    let handler = scratch.path("handler");
    std::fs::write(&handler, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(
        &handler,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut p = Program::start(
        &["--exec", handler.to_str().unwrap()],
        &scratch.path("unused.log"),
    );
    p.line().await;
    let outcome = p.handler_outcome().await;
    assert!(outcome.contains("cannot start the handler"), "{outcome}");
    p.feed("put p/m1/w1\n").await;
    assert_eq!(p.line().await["added"], serde_json::json!(["w1"]));
    p.handler_outcome().await;
    p.terminate().await;
}

/// `--exec-timeout`: a handler that runs longer is killed and logged, and
/// the next change is handled.
#[tokio::test]
async fn a_handler_past_exec_timeout_is_killed_and_the_worker_goes_on() {
    let scratch = Scratch::new("exec-timeout");
    let mut p = Program::start(
        &["--exec-timeout", "300ms", "--exec", "sleep", "600"],
        &scratch.path("unused.log"),
    );
    p.line().await;
    let outcome = p.handler_outcome().await;
    assert!(outcome.contains("WARN"), "{outcome}");
    assert!(
        outcome.contains("ran longer than --exec-timeout (300ms) and was killed"),
        "{outcome}"
    );
    p.feed("put p/m1/w1\n").await;
    assert_eq!(p.line().await["added"], serde_json::json!(["w1"]));
    let outcome = p.handler_outcome().await;
    assert!(outcome.contains("killed"), "{outcome}");
    p.terminate().await;
}

#[test]
fn bad_exec_and_metrics_flags_exit_2_naming_the_flag() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["worker", "--backend", "memory", "--instance-id", "m1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--exec"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--exec"), "{err}");
    // `--metrics-addr` is an alias of `--http-addr`: the message names the
    // flag as the operator wrote it.
    let (code, err) = run(&["--metrics-addr", "nowhere"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--metrics-addr"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, err) = run(&["--http-addr", ":http"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--http-addr"), "{err}");
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for flag in ["--http-addr", "--metrics-addr"] {
        let (code, err) = run(&[flag, &addr]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!("invalid {flag}")) && err.contains(&addr),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
