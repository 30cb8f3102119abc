//! The `coordinator` program's contract (SPEC §5) on the memory backend.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

mod common;

use common::{kill, Scratch, BIN, WAIT};

fn worker(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("worker").args(args).kill_on_drop(true);
    c
}

async fn usage_error(args: &[&str]) -> String {
    let out = timeout(WAIT, worker(args).stdin(Stdio::null()).output())
        .await
        .expect("bad flags must exit at once")
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "args {args:?}: {out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

#[tokio::test]
async fn bad_flags_exit_2_with_one_line_naming_them() {
    let base = ["--backend", "memory", "--instance-id", "m1"];
    let with = |extra: &[&'static str]| {
        base.iter()
            .copied()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>()
    };
    assert!(usage_error(&with(&["--soak", "fast"]))
        .await
        .contains("--soak"));
    assert!(usage_error(&with(&["--max-soak", "1h", "--soak", "2h"]))
        .await
        .contains("--max-soak"));
    assert!(usage_error(&with(&["--leader-settle", "-1s"]))
        .await
        .contains("--leader-settle"));
    assert!(usage_error(&with(&["--bogus"])).await.contains("--bogus"));
    assert!(usage_error(&with(&["--consul-wait", "0s"]))
        .await
        .contains("--consul-wait"));
    assert!(usage_error(&with(&["--etcd-keepalive", "1ms"]))
        .await
        .contains("--etcd-keepalive"));
    assert!(usage_error(&with(&["--client-cert", "c.pem"]))
        .await
        .contains("--client-key"));
    assert!(usage_error(&["--backend", "zk", "--instance-id", "m1"])
        .await
        .contains("--backend"));
    assert!(usage_error(&["--backend", "memory"])
        .await
        .contains("--instance-id"));
    for bad in ["", "a/b", "a\tb", &"x".repeat(10_000)] {
        let e = usage_error(&["--backend", "memory", "--instance-id", bad]).await;
        assert!(e.contains("--instance-id"), "{e}");
    }
    assert!(usage_error(&[
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--endpoints",
        "127.0.0.1:1"
    ])
    .await
    .contains("--endpoints"));
}

/// Bad member and drain flags: one line naming the flag, exit 2, before any
/// store is contacted.
#[tokio::test]
async fn bad_member_and_drain_flags_exit_2_naming_them() {
    async fn run(args: &[&str]) -> String {
        let out = timeout(
            WAIT,
            Command::new(BIN)
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("bad flags must exit at once")
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "args {args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        err
    }
    // Nothing is connected: every one of these is refused before that.
    let member = ["member", "--backend", "consul", "--instance-id", "m1"];
    let with = |extra: &[&'static str]| {
        member
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>()
    };
    let e = run(&with(&["--exclusive-margin", "1s"])).await;
    assert!(e.contains("--exclusive-margin"), "{e}");
    let e = run(&with(&[
        "--exclusive",
        "--exclusive-margin",
        "10s",
        "--ttl",
        "15s",
    ]))
    .await;
    assert!(
        e.contains("--exclusive-margin") && e.contains("half"),
        "{e}"
    );
    let e = run(&with(&["--max-moves-in-flight", "0"])).await;
    assert!(e.contains("--max-moves-in-flight"), "{e}");
    let e = run(&with(&["--drain-timeout", "soon"])).await;
    assert!(e.contains("--drain-timeout"), "{e}");
    let e = run(&with(&["--handoff-timeout", "0s"])).await;
    assert!(e.contains("--handoff-timeout"), "{e}");
    let e = run(&with(&["--exec-timeout", "later"])).await;
    assert!(e.contains("--exec-timeout"), "{e}");
    let e = run(&[
        "drain",
        "a/b",
        "--backend",
        "consul",
        "--endpoints",
        "127.0.0.1:1",
    ])
    .await;
    assert!(e.contains("member id"), "{e}");
    let e = run(&["drain", "m1", "--backend", "memory"]).await;
    assert!(e.contains("--backend"), "{e}");
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>) -> String {
    timeout(WAIT, lines.next_line())
        .await
        .expect("timed out waiting for a JSON line")
        .unwrap()
        .expect("stdout closed")
}

async fn next_json(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>) -> Value {
    let line = next_line(lines).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The top-level field names of a JSON line in the order they appear in its
/// text (a `serde_json::Value` map would sort them).
fn field_order(line: &str) -> Vec<String> {
    let fields = [
        "instance_id",
        "revision",
        "workload",
        "added",
        "removed",
        "changed",
    ];
    let mut found: Vec<(usize, String)> = fields
        .iter()
        .filter_map(|f| {
            line.find(&format!("\"{f}\":"))
                .map(|i| (i, (*f).to_owned()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, f)| f).collect()
}

/// Starts `coordinator worker ARGS` with stdin and stdout piped (stderr dropped).
fn start(args: &[&str]) -> (Child, ChildStdin, tokio::io::Lines<BufReader<ChildStdout>>) {
    let mut child = worker(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdin, lines)
}

/// Sends `signal` (e.g. `-TERM`) and checks that the program exits 0.
async fn signal_exits_0(mut child: Child, signal: &str) {
    kill(&child, signal);
    let status = timeout(WAIT, child.wait())
        .await
        .expect("exit after the signal")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn json_lines_and_sigterm_exit_0() {
    let (child, mut stdin, mut lines) = start(&[
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--soak",
        "100ms",
        "--prefix",
        "svc.a+b/(x)/",
    ]);

    let first = next_line(&mut lines).await;
    assert_eq!(
        first,
        r#"{"instance_id":"m1","revision":0,"workload":[],"added":[],"removed":[],"changed":[]}"#,
        "first sync of an empty store, fields in the order of SPEC §5"
    );
    stdin
        .write_all(b"put svc.a+b/(x)/m1/w2 a\nput svc.a+b/(x)/m1/w1 b\nput svc.a+b/(x)/m10/w9 c\n")
        .await
        .unwrap();
    let text = next_line(&mut lines).await;
    assert_eq!(
        field_order(&text),
        [
            "instance_id",
            "revision",
            "workload",
            "added",
            "removed",
            "changed"
        ],
        "field order of the line as printed: {text}"
    );
    let l: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        l["workload"],
        serde_json::json!(["w1", "w2"]),
        "sorted: {l}"
    );
    assert_eq!(l["added"], serde_json::json!(["w1", "w2"]));
    assert_eq!(l["removed"], serde_json::json!([]));
    assert!(l["revision"].as_u64().unwrap() >= 2);

    stdin.write_all(b"del svc.a+b/(x)/m1/w2\n").await.unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(l["workload"], serde_json::json!(["w1"]));
    assert_eq!(l["removed"], serde_json::json!(["w2"]));
    assert_eq!(l["changed"], serde_json::json!([]));

    // A change of values only: a line of its own, naming what changed.
    stdin
        .write_all(b"put svc.a+b/(x)/m1/w1 new-value\n")
        .await
        .unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(l["workload"], serde_json::json!(["w1"]));
    assert_eq!(l["added"], serde_json::json!([]));
    assert_eq!(l["removed"], serde_json::json!([]));
    assert_eq!(l["changed"], serde_json::json!(["w1"]));

    signal_exits_0(child, "-TERM").await;
}

#[tokio::test]
async fn sigint_exits_0() {
    let (child, _stdin, mut lines) = start(&[
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--soak",
        "10ms",
    ]);
    next_json(&mut lines).await;
    signal_exits_0(child, "-INT").await;
}

#[tokio::test]
async fn no_leader_holds_then_settles() {
    let (child, mut stdin, mut lines) = start(&[
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--soak",
        "50ms",
        "--leader-settle",
        "200ms",
    ]);
    next_json(&mut lines).await;
    stdin
        .write_all(b"no-leader\nput service/coordinator/assignments/m1/a 1\n")
        .await
        .unwrap();
    // Without a leader nothing is printed (a bound on a non-event).
    assert!(timeout(Duration::from_secs(1), lines.next_line())
        .await
        .is_err());
    stdin.write_all(b"leader L2\n").await.unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(l["added"], serde_json::json!(["a"]));
    signal_exits_0(child, "-TERM").await;
}

#[tokio::test]
async fn demo_runs_and_exits_0_within_a_minute() {
    let out = timeout(
        Duration::from_secs(60),
        Command::new(BIN).arg("demo").kill_on_drop(true).output(),
    )
    .await
    .expect("demo must end by itself within a minute")
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(" drains: "), "{text}");
    assert!(text.contains(" left (Drained)"), "{text}");
    assert!(text.contains("each held exactly once: yes"), "{text}");
    assert!(text.contains("(first sync)"), "{text}");
}

#[tokio::test]
async fn demo_with_100_items_ends_by_itself_and_exits_0() {
    let started = std::time::Instant::now();
    let out = timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .args(["demo", "--items", "100"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("demo --items 100 must end by itself within a minute")
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("each held exactly once: yes"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "well under a minute: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_replicas_configured_every_line_names_the_roles() {
    let dir = Scratch::new("roles-line");
    let config = dir.file("c.toml", "replicas = 2\n");
    let (child, mut stdin, mut lines) = start(&[
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--soak",
        "100ms",
        "--config",
        &config,
    ]);
    assert_eq!(
        next_line(&mut lines).await,
        r#"{"instance_id":"m1","revision":0,"workload":[],"added":[],"removed":[],"changed":[],"primary":[],"secondary":[]}"#,
        "replicas > 1: primary and secondary from the first line, after changed"
    );
    stdin
        .write_all(b"put service/coordinator/assignments/m1/w2 a\nput service/coordinator/assignments/m1/w1 b\n")
        .await
        .unwrap();
    let text = next_line(&mut lines).await;
    assert!(
        text.ends_with(r#""workload":["w1","w2"],"added":["w1","w2"],"removed":[],"changed":[],"primary":["w1","w2"],"secondary":[]}"#),
        "{text}"
    );
    signal_exits_0(child, "-TERM").await;
}
