//! The `coordinator` program as a process: signals at any moment, a stdout
//! nobody reads, and what an operator sees on stderr by default.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

mod common;

use common::{free_port as closed_port, kill, BIN, WAIT};

/// SIGTERM while start-up is still in progress (here: reading the Consul token
/// from a FIFO nobody has written yet) halts and exits 0: the handlers are
/// registered before anything else.
#[tokio::test]
async fn sigterm_during_start_up_exits_0() {
    let dir = std::env::temp_dir().join(format!("coordinator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("token");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let port = closed_port();
    let mut child = Command::new(BIN)
        .args(["worker", "--backend", "consul", "--instance-id", "m1"])
        .args(["--endpoints", &format!("http://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Opening the FIFO for writing returns once the program opened it to read
    // the token: it is in the middle of starting up.
    let path = fifo.clone();
    let mut writer = timeout(
        WAIT,
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(path)),
    )
    .await
    .expect("the program reads its token file")
    .unwrap()
    .unwrap();
    kill(&child, "-TERM");
    // (A program killed by the signal has closed the FIFO: the write fails.)
    let _ = std::io::Write::write_all(&mut writer, b"token\n");
    drop(writer);
    let status = timeout(WAIT, child.wait())
        .await
        .expect("exit after the signal")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads stderr until `n` "workload settled" lines have passed.
async fn settled(stderr: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>, n: usize) {
    let mut seen = 0;
    while seen < n {
        let line = stderr.next_line().await.unwrap().expect("stderr open");
        if line.contains("workload settled") {
            seen += 1;
        }
    }
}

/// A stdout nobody reads must not keep SIGTERM from being handled.
#[tokio::test]
async fn sigterm_with_a_blocked_stdout_exits_0() {
    let mut child = Command::new(BIN)
        .args(["worker", "--backend", "memory", "--instance-id", "m1"])
        // A soak long enough for the 20,000 puts below to settle as one change.
        .args(["--soak", "300ms", "--prefix", "p/"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped()) // never read
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // Each line lists the whole workload: 20,000 items make a line of about
    // 400 kB, far more than a pipe holds.
    let feed: String = (0..20_000).fold(String::new(), |mut feed, i| {
        use std::fmt::Write as _;
        let _ = writeln!(feed, "put p/m1/w{i:05}");
        feed
    });
    // The first sync (empty) settles first, so that the big change is a
    // change of its own however slowly the program starts on a loaded machine.
    timeout(WAIT, settled(&mut stderr, 1))
        .await
        .expect("first sync settled");
    stdin.write_all(feed.as_bytes()).await.unwrap();
    // The big change settles; then one more, so the program has long been
    // writing the big line when the signal comes.
    timeout(WAIT, settled(&mut stderr, 1))
        .await
        .expect("big change settled");
    stdin.write_all(b"put p/m1/last\n").await.unwrap();
    timeout(WAIT, settled(&mut stderr, 1))
        .await
        .expect("one more change settled");
    kill(&child, "-TERM");
    let status = timeout(WAIT, child.wait())
        .await
        .expect("SIGTERM handled while stdout is blocked")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Default log level: no INFO chatter from HTTP dependencies, no ERROR from
/// them for answers the backend handles, and each cause of an error once.
#[tokio::test]
async fn default_logs_are_quiet_and_each_cause_is_printed_once() {
    let port = closed_port();
    let mut child = Command::new(BIN)
        .args(["worker", "--backend", "consul", "--instance-id", "m1"])
        .args(["--endpoints", &format!("http://127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Two failed reads (the first retry comes after about 100-200 ms).
    let warned = async {
        let mut warns = 0;
        while warns < 2 {
            let line = stderr.next_line().await.unwrap().expect("stderr open");
            if line.contains("reading assignments failed") {
                warns += 1;
            }
            seen.push(line);
        }
    };
    timeout(WAIT, warned)
        .await
        .expect("a warn line for the unreachable store");
    kill(&child, "-TERM");
    let status = timeout(WAIT, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let text = seen.join("\n");
    for line in &seen {
        assert!(
            !line.contains("rustify") && !line.contains("consulrs"),
            "dependency log at the default level: {line}\n{text}"
        );
        assert!(!line.contains(" ERROR "), "ERROR line: {line}\n{text}");
    }
    let warn = seen
        .iter()
        .find(|l| l.contains("reading assignments failed"))
        .unwrap();
    let error = warn
        .split("error=")
        .nth(1)
        .expect("error field")
        .split(" retry_in=")
        .next()
        .unwrap();
    let causes: Vec<&str> = error.split(": ").collect();
    for (i, c) in causes.iter().enumerate() {
        assert_eq!(
            causes.iter().filter(|o| *o == c).count(),
            1,
            "cause {i} ({c}) printed more than once: {warn}"
        );
    }
}
