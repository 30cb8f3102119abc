//! The deploy kit's least-privilege access, on real stores with access control on, through
//! the real `coordinator` program: a Consul agent with ACLs (`default_policy = "deny"`) and
//! tokens made from `deploy/consul/member-policy.hcl` and `deploy/consul/worker-policy.hcl`;
//! an etcd server with auth on and the roles that `deploy/etcd/roles.sh` creates.
//!
//! With exactly that access a member gets its settled workload after `coordinator work put`
//! and drains on SIGTERM, and a read-only worker sees the same workload. With one needed
//! permission taken away, the program says which key or prefix and which operation it lacks.
//! One store per store kind, shared by the cases of its test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
use coordinator_e2e::process::FAST;
use serde_json::Value;
use test_support::{ConsulAgent, EtcdServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Bound on every wait for an event.
const WAIT: Duration = Duration::from_secs(45);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A running `coordinator` process: its JSON lines and its stderr as they come.
struct Program {
    what: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Program {
    fn spawn(what: &str, args: &[&str]) -> Program {
        let mut child = Command::new(coordinator_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn coordinator");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Program {
            what: what.to_owned(),
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a JSON line whose workload is `want`.
    async fn wait_workload(&mut self, want: &[&str]) {
        let result = timeout(WAIT, async {
            while let Some(v) = self.lines.recv().await {
                let got: Vec<&str> = v["workload"]
                    .as_array()
                    .expect("workload")
                    .iter()
                    .map(|x| x.as_str().expect("a work id"))
                    .collect();
                if got == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            result == Ok(true),
            "{}: no workload {want:?} ({result:?}); stderr:\n{}",
            self.what,
            self.stderr()
        );
    }

    /// Waits until a WARN line of stderr holds every one of `needles`, and returns it.
    async fn wait_warning(&self, needles: &[&str]) -> String {
        let found = timeout(WAIT, async {
            loop {
                let text = self.stderr();
                if let Some(line) = text
                    .lines()
                    .find(|l| l.contains("WARN") && needles.iter().all(|n| l.contains(n)))
                {
                    return line.to_owned();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "{}: no warning naming {needles:?} within {WAIT:?}; stderr:\n{}",
                self.what,
                self.stderr()
            )
        })
    }

    /// SIGTERM, then the exit status must be 0 (a member drains first).
    async fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = timeout(WAIT, self.child.wait())
            .await
            .expect("exit after SIGTERM")
            .expect("wait");
        assert_eq!(
            status.code(),
            Some(0),
            "{} after SIGTERM; stderr:\n{}",
            self.what,
            self.stderr()
        );
    }
}

/// Runs `coordinator ARGS` to completion; panics unless it exits 0.
async fn admin(args: &[&str]) {
    let out = timeout(
        WAIT,
        Command::new(coordinator_bin())
            .args(args)
            .env_remove("CONSUL_HTTP_TOKEN")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("coordinator admin command in time")
    .expect("run coordinator");
    assert!(
        out.status.success(),
        "coordinator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The policy file's text with the one line holding `rule` left out.
fn without_rule(policy: &str, rule: &str) -> String {
    let kept: Vec<&str> = policy.lines().filter(|l| !l.contains(rule)).collect();
    assert_eq!(
        kept.len() + 1,
        policy.lines().count(),
        "exactly one line of the policy holds {rule:?}"
    );
    kept.join("\n")
}

/// Creates a policy named `name` with `rules` and a token for it; returns the token's file.
async fn consul_token(agent: &ConsulAgent, dir: &Path, name: &str, rules: &str) -> PathBuf {
    let secret = agent.acl_token(name, rules).await;
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, secret).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one agent, one rule taken away after another
async fn consul_policies_are_enough_and_each_rule_is_named_when_missing() {
    let agent = ConsulAgent::builder()
        .acl_master_token("deploy-acl-master")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let member_policy =
        std::fs::read_to_string(root.join("deploy/consul/member-policy.hcl")).unwrap();
    let worker_policy =
        std::fs::read_to_string(root.join("deploy/consul/worker-policy.hcl")).unwrap();
    let member_token = consul_token(&agent, dir.path(), "member", &member_policy).await;
    let worker_token = consul_token(&agent, dir.path(), "worker", &worker_policy).await;
    let master = dir.path().join("master.token");
    std::fs::write(&master, "deploy-acl-master").unwrap();

    let addr = agent.http_addr();
    let store = |token: &Path| -> Vec<String> {
        vec![
            "--backend".into(),
            "consul".into(),
            "--endpoints".into(),
            addr.clone(),
            "--token-file".into(),
            token.display().to_string(),
        ]
    };
    let args = |cmd: &str, id: &str, token: &Path| -> Vec<String> {
        let mut a = vec![cmd.to_owned(), "--instance-id".into(), id.to_owned()];
        a.extend(store(token));
        a.extend(FAST.iter().map(|s| (*s).to_owned()));
        if cmd == "worker" {
            // The worker has no leader soak.
            a.truncate(a.len() - 2);
        }
        a
    };

    // The operator puts work with the master token; a member with exactly the member policy
    // gets it all.
    for w in ["w1", "w2"] {
        let mut a = vec!["work", "put", w, "{}"];
        let s = store(&master);
        a.extend(refs(&s));
        admin(&a).await;
    }
    let mut m1_args = args("member", "m1", &member_token);
    m1_args.push("--session-check".into());
    let mut member = Program::spawn("member m1", &refs(&m1_args));
    member.wait_workload(&["w1", "w2"]).await;
    // The policy lets it bind its session to a check on the agent.
    let log = member.stderr();
    assert!(
        log.contains("sessions bound to the agent check service:coordinator-m1"),
        "{log}"
    );
    assert!(!log.contains("falling back"), "{log}");

    // A read-only worker with the worker policy sees the same assignments.
    let mut worker = Program::spawn("worker m1", &refs(&args("worker", "m1", &worker_token)));
    worker.wait_workload(&["w1", "w2"]).await;
    worker.terminate().await;

    // Without the rule on the leader key, a worker is refused and says which key and what.
    let no_leader = consul_token(
        &agent,
        dir.path(),
        "worker-no-leader",
        &without_rule(&worker_policy, r#"key "service/coordinator/leader""#),
    )
    .await;
    let worker = Program::spawn("worker m1", &refs(&args("worker", "m1", &no_leader)));
    let line = worker
        .wait_warning(&["lacks key read on \"service/coordinator/leader\""])
        .await;
    eprintln!("worker without the leader rule: {line}");
    drop(worker);

    // A member without write on the members prefix cannot register, and says so.
    let no_members = consul_token(
        &agent,
        dir.path(),
        "member-no-members",
        &without_rule(&member_policy, "service/coordinator/members/"),
    )
    .await;
    let m2 = Program::spawn("member m2", &refs(&args("member", "m2", &no_members)));
    let line = m2
        .wait_warning(&["lacks key write on \"service/coordinator/members/m2\""])
        .await;
    eprintln!("member without the members rule: {line}");
    drop(m2);

    // Without service write on "coordinator", a member asked for a session check falls back to
    // a plain session TTL, says so, and works.
    let no_service = consul_token(
        &agent,
        dir.path(),
        "member-no-service",
        &without_rule(&member_policy, r#"service "coordinator""#),
    )
    .await;
    let mut m4_args = args("member", "m4", &no_service);
    m4_args.push("--session-check".into());
    let m4 = Program::spawn("member m4", &refs(&m4_args));
    let line = m4
        .wait_warning(&["falling back to a plain session TTL", "service:write"])
        .await;
    eprintln!("member without service write: {line}");
    drop(m4);

    // A member without session write cannot register either.
    let no_session = consul_token(
        &agent,
        dir.path(),
        "member-no-session",
        &without_rule(&member_policy, "session_prefix"),
    )
    .await;
    let m3 = Program::spawn("member m3", &refs(&args("member", "m3", &no_session)));
    let line = m3.wait_warning(&["lacks session write"]).await;
    eprintln!("member without session write: {line}");
    drop(m3);

    // SIGTERM drains the member with exactly its policy, and it exits 0.
    member.terminate().await;

    // A lone member without write on the sequence key leads, but its fenced writes are
    // refused, naming the key.
    let no_sequence = consul_token(
        &agent,
        dir.path(),
        "member-no-sequence",
        &without_rule(&member_policy, r#"key "service/coordinator/sequence""#),
    )
    .await;
    let m4 = Program::spawn("member m4", &refs(&args("member", "m4", &no_sequence)));
    let line = m4
        .wait_warning(&["lacks key write on \"service/coordinator/sequence\""])
        .await;
    eprintln!("member without the sequence rule: {line}");
    drop(m4);
}

/// An etcd server with auth on (root's password `deploy-acl-root`), the roles of
/// `deploy/etcd/roles.sh` made by the script itself, and users `m1`, `m2` (member role) and
/// `reader` (worker role) whose password is in the returned file; root's is in the other one.
async fn etcd_with_roles(dir: &Path) -> (EtcdServer, PathBuf, PathBuf) {
    let mut server = EtcdServer::start().await;
    server.enable_auth("root", "deploy-acl-root").await;
    let root = repo_root();
    // The roles, made by the script as an operator would run it.
    let out = timeout(
        WAIT,
        Command::new("bash")
            .arg(root.join("deploy/etcd/roles.sh"))
            .env("ETCDCTL", test_support::etcdctl_bin())
            .env("ETCDCTL_ENDPOINTS", server.client_url())
            .env("ETCDCTL_USER", "root:deploy-acl-root")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("roles.sh in time")
    .expect("run roles.sh");
    assert!(
        out.status.success(),
        "roles.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let password = dir.join("password");
    std::fs::write(&password, "user-pw").unwrap();
    for (user, role) in [
        ("m1", "coordinator-member"),
        ("m2", "coordinator-member"),
        ("reader", "coordinator-worker"),
    ] {
        server
            .ctl([
                "user",
                "add",
                user,
                "--new-user-password=user-pw",
                "--interactive=false",
            ])
            .await;
        server.ctl(["user", "grant-role", user, role]).await;
    }
    let root_password = dir.join("root-password");
    std::fs::write(&root_password, "deploy-acl-root").unwrap();
    (server, password, root_password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_roles_are_enough_and_each_range_is_named_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, password, root_password) = etcd_with_roles(dir.path()).await;

    let url = server.client_url();
    let args = |cmd: &str, id: &str, user: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            cmd,
            "--instance-id",
            id,
            "--backend",
            "etcd",
            "--endpoints",
            &url,
            "--user",
            user,
            "--password-file",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.push(password.display().to_string());
        a.extend(["--soak", "100ms", "--leader-settle", "500ms"].map(str::to_owned));
        if cmd == "member" {
            a.extend(["--leader-soak", "500ms", "--ttl", "2s"].map(str::to_owned));
        }
        a
    };

    for w in ["w1", "w2"] {
        let root_file = root_password.display().to_string();
        admin(&[
            "work",
            "put",
            w,
            "{}",
            "--backend",
            "etcd",
            "--endpoints",
            &url,
            "--user",
            "root",
            "--password-file",
            &root_file,
        ])
        .await;
    }
    let mut member = Program::spawn("member m1", &refs(&args("member", "m1", "m1")));
    member.wait_workload(&["w1", "w2"]).await;
    let mut worker = Program::spawn("worker m1", &refs(&args("worker", "m1", "reader")));
    worker.wait_workload(&["w1", "w2"]).await;
    worker.terminate().await;
    member.terminate().await;

    // Each case takes one range away from a role, runs the program, and gives it back.
    let cases: [(&str, &str, &str, &str, &[&str]); 3] = [
        (
            "coordinator-worker",
            "service/coordinator/leader/",
            "read",
            "worker",
            &["lack read on the prefix \"service/coordinator/leader/\""],
        ),
        (
            "coordinator-member",
            "service/coordinator/members/",
            "readwrite",
            "member",
            &["lack", "\"service/coordinator/members/m2"],
        ),
        (
            "coordinator-member",
            "service/coordinator/work/",
            "read",
            "member",
            &["lack read on the prefix \"service/coordinator/work/\""],
        ),
    ];
    for (role, prefix, permission, cmd, needles) in cases {
        server
            .ctl(["role", "revoke-permission", role, prefix, "--prefix"])
            .await;
        let user = if cmd == "worker" { "reader" } else { "m2" };
        let program = Program::spawn(
            &format!("{cmd} without {prefix}"),
            &refs(&args(cmd, "m2", user)),
        );
        let line = program.wait_warning(needles).await;
        eprintln!("{cmd} without {permission} on {prefix}: {line}");
        drop(program);
        server
            .ctl([
                "role",
                "grant-permission",
                role,
                permission,
                prefix,
                "--prefix",
            ])
            .await;
    }
}
