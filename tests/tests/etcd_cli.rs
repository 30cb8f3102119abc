//! The `coordinator worker --backend etcd` program against a real etcd (SPEC §5):
//! JSON lines for the first sync and each settled change, SIGTERM exits 0.
//!
//! The binary is the workspace's `coordinator` built with the `etcd` feature:
//! `$COORDINATOR_BIN`, else `<target dir>/debug/coordinator` next to this test's
//! own directory (built by `cargo test --workspace --all-features`, as
//! `scripts/test` runs it, or by `cargo build -p kv-coordinator --features etcd`).

use std::process::Stdio;
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
use coordinator_e2e::process::{logged_command, terminate, Log};
use serde_json::{json, Value};
use test_support::{EtcdCluster, EtcdServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

/// A running `coordinator worker`, its stdout lines and its stderr log file.
struct Program {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    log: Log,
}

impl Program {
    fn start(args: &[&str]) -> Self {
        let log = Log::new();
        let mut child = logged_command(&log)
            .arg("worker")
            .args(args)
            .spawn()
            .expect("spawn coordinator");
        let stdout = child.stdout.take().expect("stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.text()
    }

    async fn next_json(&mut self, what: &str) -> Value {
        let line = match timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "no JSON line for {what} ({other:?}); stderr:\n{}",
                self.log()
            ),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    /// SIGTERM; the program must halt and exit 0.
    async fn terminate(mut self) {
        let status = terminate(&mut self.child, WAIT, "the worker").await;
        assert_eq!(status.code(), Some(0), "stderr:\n{}", self.log());
    }
}

/// `etcdctl elect NAME PROPOSAL`, waited for until elected (killed on drop).
async fn elect(cluster: &EtcdCluster, name: &str, proposal: &str) -> Child {
    let mut child = cluster
        .etcdctl(["elect", name, proposal])
        .spawn()
        .expect("spawn etcdctl elect");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(WAIT, lines.next_line())
        .await
        .expect("etcdctl elect: not elected in time")
        .expect("read etcdctl output");
    assert!(line.is_some(), "etcdctl elect exited without being elected");
    // Keep draining so etcdctl never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn without_revision(mut v: Value) -> (u64, Value) {
    let rev = v["revision"].as_u64().expect("revision is a number");
    v.as_object_mut().expect("an object").remove("revision");
    (rev, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_prints_settled_changes_from_etcd() {
    let server = EtcdServer::start().await;
    let prefix = "cli/assignments/";
    server.put(&format!("{prefix}m1/w1"), "1").await;
    let _leader = elect(server.cluster(), "cli/leader", "leader-1").await;
    let url = server.client_url();
    let mut program = Program::start(&[
        "--backend",
        "etcd",
        "--endpoints",
        &url,
        "--instance-id",
        "m1",
        "--prefix",
        prefix,
        "--leader",
        "cli/leader",
        "--soak",
        "100ms",
        "--leader-settle",
        "300ms",
    ]);

    let (first_rev, first) = without_revision(program.next_json("the first sync").await);
    assert_eq!(
        first,
        json!({"instance_id": "m1", "workload": ["w1"], "added": ["w1"], "removed": [], "changed": []})
    );

    server.put(&format!("{prefix}m10/x"), "not mine").await;
    let put_rev = server.put(&format!("{prefix}m1/w2"), "2").await;
    let (rev, line) = without_revision(program.next_json("w2 added").await);
    assert_eq!(
        line,
        json!({"instance_id": "m1", "workload": ["w1", "w2"], "added": ["w2"], "removed": [], "changed": []})
    );
    assert!(
        rev >= u64::try_from(put_rev).unwrap() && rev > first_rev,
        "{rev}"
    );

    server.del(&format!("{prefix}m1/w1")).await;
    let (_, line) = without_revision(program.next_json("w1 removed").await);
    assert_eq!(
        line,
        json!({"instance_id": "m1", "workload": ["w2"], "added": [], "removed": ["w1"], "changed": []})
    );
    program.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_etcd_user_and_password_file() {
    let mut server = EtcdServer::start().await;
    server.enable_auth("coordinator", "pw-from-file").await;
    let prefix = "cliauth/assignments/";
    server.put(&format!("{prefix}m1/w1"), "1").await;
    let _leader = elect(server.cluster(), "cliauth/leader", "leader-1").await;
    let mut password = tempfile::NamedTempFile::new().expect("password file");
    std::io::Write::write_all(&mut password, b"pw-from-file\n").expect("write password");
    let url = server.client_url();
    let password_path = password.path().to_str().expect("utf-8 path").to_owned();
    let mut program = Program::start(&[
        "--backend",
        "etcd",
        "--endpoints",
        &url,
        "--instance-id",
        "m1",
        "--prefix",
        prefix,
        "--leader",
        "cliauth/leader",
        "--soak",
        "100ms",
        "--leader-settle",
        "300ms",
        "--user",
        "coordinator",
        "--password-file",
        &password_path,
    ]);
    let (_, first) = without_revision(program.next_json("the first sync with auth").await);
    assert_eq!(
        first,
        json!({"instance_id": "m1", "workload": ["w1"], "added": ["w1"], "removed": [], "changed": []})
    );
    assert!(
        !program.log().contains("pw-from-file"),
        "password in the log:\n{}",
        program.log()
    );
    program.terminate().await;
}

/// Runs an admin command with only etcdctl's own variables saying where
/// etcd is and who we are, as `etcdctl` would read them.
async fn admin_with_etcdctl_env(
    args: &[&str],
    endpoints: &str,
    user: &str,
) -> std::process::Output {
    let mut c = Command::new(coordinator_bin());
    c.args(args)
        .args(["--backend", "etcd"])
        .env_remove("COORDINATOR_ENDPOINTS")
        .env("ETCDCTL_ENDPOINTS", endpoints)
        .env("ETCDCTL_USER", user)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    timeout(WAIT, c.output())
        .await
        .expect("the command ends")
        .expect("run coordinator")
}

/// `ETCDCTL_ENDPOINTS` (without a scheme, as etcdctl takes it) and
/// `ETCDCTL_USER=name:password` reach a real etcd with auth on; `work ls
/// --json` lists what `work put` wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_read_etcdctl_variables_and_list_json() {
    let mut server = EtcdServer::start().await;
    server.enable_auth("coordinator", "pw-env").await;
    let bare = server.client_url().trim_start_matches("http://").to_owned();
    let user = "coordinator:pw-env";
    for (id, value) in [("w2", "two"), ("w1", "one")] {
        let o = admin_with_etcdctl_env(&["work", "put", id, value], &bare, user).await;
        assert!(o.status.success(), "{o:?}");
    }
    let o = admin_with_etcdctl_env(&["work", "ls", "--json"], &bare, user).await;
    assert!(o.status.success(), "{o:?}");
    let listed: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(
        listed,
        json!({"items": [{"id": "w1", "value": "one"}, {"id": "w2", "value": "two"}]})
    );
    // A wrong password is the store's refusal, not "unreachable".
    let o = admin_with_etcdctl_env(&["work", "ls"], &bare, "coordinator:wrong").await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("pw-env") && !err.contains("wrong"), "{err}");
}
