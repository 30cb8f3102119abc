//! `--http-addr` on `coordinator worker --backend memory`, as a real process
//! fed store commands on stdin: `/readyz` is 503 before the first settled
//! workload and 200 after, `/healthz` 200, `/status` shows the workload and
//! the leader, `/metrics` the worker's figures, other paths 404, other
//! methods 405; `:PORT` listens on every interface (reached here through
//! 127.0.0.1); `--metrics-addr` still works.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{timeout, Instant};

mod common;

use common::{feed, free_port, terminate, BIN, WAIT};

/// One answer: status code and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// `METHOD path` to 127.0.0.1:`port`, one request per connection; `None`
/// while nothing listens yet.
async fn request(port: u16, method: &str, path: &str) -> Option<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = String::new();
    timeout(WAIT, s.read_to_string(&mut raw))
        .await
        .expect("an answer in time")
        .ok()?;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    Some(Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// `GET path`, waiting (bounded) for the listener.
async fn get(port: u16, path: &str) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(a) = request(port, "GET", path).await {
            return a;
        }
        assert!(Instant::now() < deadline, "nothing answers on port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET path` until `want` holds for the answer (bounded).
async fn get_until(port: u16, path: &str, want: impl Fn(&Answer) -> bool) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = get(port, path).await;
        if want(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "GET {path}: still {a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_json(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.headers.contains("content-type: application/json"),
        "{a:?}"
    );
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
}

/// The worker's figures after it settled two items: with the `prometheus`
/// feature the page, without it 501.
fn check_metrics(metrics: &Answer) {
    if !cfg!(feature = "prometheus") {
        assert_eq!(metrics.status, 501, "{metrics:?}");
        assert!(metrics.body.contains("`prometheus` feature"), "{metrics:?}");
        return;
    }
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers.contains("content-type: text/plain"),
        "{metrics:?}"
    );
    for want in [
        "coordinator_settled_items{instance_id=\"m1\"} 2",
        "# TYPE coordinator_publication_delay_seconds histogram",
        // One of the buckets the program sets.
        "coordinator_publication_delay_seconds_bucket{instance_id=\"m1\",le=\"0.025\"}",
    ] {
        assert!(metrics.body.contains(want), "{want}: {}", metrics.body);
    }
}

struct Program {
    child: Child,
    stdin: ChildStdin,
}

impl Program {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["worker", "--backend", "memory", "--instance-id", "m1"])
            .args(["--prefix", "p/", "--soak", "1s", "--leader-settle", "200ms"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            stdin: child.stdin.take().unwrap(),
            child,
        }
    }

    async fn feed(&mut self, commands: &str) {
        feed(&mut self.stdin, commands).await;
    }

    async fn terminate(mut self) {
        let status = terminate(&mut self.child).await;
        assert_eq!(status.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_a_worker() {
    let port = free_port();
    let mut p = Program::start(&["--http-addr", &format!("127.0.0.1:{port}")]);
    // The program starts as its own leader; take it away at once (well
    // within the 1 s soak), so that nothing settles until a leader returns.
    p.feed("no-leader\n").await;

    let not_ready = get(port, "/readyz").await;
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert!(not_ready.body.starts_with("not ready: "), "{not_ready:?}");
    let status = status_json(&get(port, "/status").await);
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(status["revision"], Value::Null, "{status}");
    assert_eq!(get(port, "/healthz").await.status, 200);

    p.feed("put p/m1/w2 b\nput p/m1/w1 a\nput p/m10/x c\nleader boss\n")
        .await;
    let ready = get_until(port, "/readyz", |a| a.status == 200).await;
    assert_eq!(ready.body, "ready\n");
    let status = status_json(&get(port, "/status").await);
    assert_eq!(status["instance_id"], "m1");
    assert_eq!(status["command"], "worker");
    assert_eq!(status["backend"], "memory");
    assert_eq!(status["running"], true);
    assert_eq!(status["ready"], true);
    assert_eq!(status["not_ready"], Value::Null);
    assert_eq!(status["leader"], "boss");
    assert_eq!(status["workload"], serde_json::json!(["w1", "w2"]));
    assert_eq!(status["secondary"], serde_json::json!([]));
    assert!(
        status["revision"].as_u64().is_some_and(|r| r > 0),
        "{status}"
    );
    assert_eq!(status["store"]["reachable"], true);
    assert_eq!(status["is_leader"], Value::Null);
    assert_eq!(status["acked_revision"], Value::Null);
    assert_eq!(status["pending_handoffs"], Value::Null);

    // No leader: the settled workload is kept; the status says so.
    p.feed("no-leader\nput p/m1/w3 c\n").await;
    let status = status_json(
        &get_until(port, "/status", |a| {
            a.status == 200 && serde_json::from_str::<Value>(&a.body).unwrap()["leader"].is_null()
        })
        .await,
    );
    assert_eq!(status["workload"], serde_json::json!(["w1", "w2"]));

    check_metrics(&get(port, "/metrics").await);

    for path in ["/nope", "/", "/metrics/x", "/healthz/"] {
        let a = get(port, path).await;
        assert_eq!(a.status, 404, "{path}: {a:?}");
    }
    let a = get(port, "/healthz?verbose=1").await;
    assert_eq!(a.status, 200, "a query string is ignored: {a:?}");
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let a = request(port, method, "/status").await.expect("an answer");
        assert_eq!(a.status, 405, "{method}: {a:?}");
        assert!(a.headers.contains("allow: get"), "{a:?}");
    }
    p.terminate().await;
}

/// `:PORT` listens on every interface (reached here through 127.0.0.1), and
/// `--metrics-addr` is still accepted for `--http-addr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_only_and_the_old_flag() {
    let port = free_port();
    let p = Program::start(&["--http-addr", &format!(":{port}")]);
    get_until(port, "/readyz", |a| a.status == 200).await;
    let status = status_json(&get(port, "/status").await);
    assert_eq!(status["leader"], "local");
    assert_eq!(status["workload"], serde_json::json!([]));
    p.terminate().await;

    let port = free_port();
    let p = Program::start(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(get(port, "/healthz").await.status, 200);
    #[cfg(feature = "prometheus")]
    get_until(port, "/metrics", |a| {
        a.body
            .contains("coordinator_publications_total{instance_id=\"m1\"} 1")
    })
    .await;
    get_until(port, "/readyz", |a| a.status == 200).await;
    p.terminate().await;
}
