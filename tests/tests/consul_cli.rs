//! `coordinator worker --backend consul` against a real dev agent: the JSON lines it prints.

use std::process::Stdio;
use std::time::Duration;

use coordinator_e2e::{bounded, coordinator_bin};
use serde_json::{json, Value};
use test_support::ConsulAgent;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> Value {
    let line = bounded(what, lines.next_line())
        .await
        .expect("read stdout")
        .unwrap_or_else(|| panic!("stdout ended while waiting for {what}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_prints_settled_workloads_from_consul() {
    let agent = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    // The leader: `consul lock` holds cli/.lock while its command runs.
    let mut lock = agent
        .command([
            "lock",
            "cli",
            &format!("while [ ! -e '{}' ]; do sleep 0.05; done", stop.display()),
        ])
        .spawn()
        .expect("run consul lock");
    agent.kv_put("cli/assign/m1/w1", "1").await;
    agent.kv_put("cli/assign/m10/x", "not mine").await;

    let mut worker = tokio::process::Command::new(coordinator_bin())
        .args(["worker", "--backend", "consul", "--endpoints"])
        .arg(agent.http_addr())
        .args([
            "--instance-id",
            "m1",
            "--prefix",
            "cli/assign/",
            "--leader",
            "cli/.lock",
        ])
        .args(["--soak", "100ms", "--leader-settle", "300ms"])
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run coordinator");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();

    let first = next_line(&mut lines, "the first sync").await;
    assert_eq!(first["instance_id"], "m1");
    assert_eq!(first["workload"], json!(["w1"]));
    assert_eq!(first["added"], json!(["w1"]));
    assert_eq!(first["removed"], json!([]));
    assert!(first["revision"].as_u64().unwrap() > 0);

    agent.kv_put("cli/assign/m10/y", "not mine").await;
    agent.kv_put("cli/assign/m1/w2", "2").await;
    let second = next_line(&mut lines, "w2 added").await;
    assert_eq!(second["workload"], json!(["w1", "w2"]));
    assert_eq!(second["added"], json!(["w2"]));
    assert!(second["revision"].as_u64() >= first["revision"].as_u64());

    agent.kv_delete("cli/assign/m1/w1").await;
    let third = next_line(&mut lines, "w1 removed").await;
    assert_eq!(third["workload"], json!(["w2"]));
    assert_eq!(third["removed"], json!(["w1"]));

    // SIGTERM: halt and exit 0.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(worker.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = bounded("the worker to exit", worker.wait()).await.unwrap();
    assert!(status.success(), "coordinator worker: {status}");

    std::fs::write(&stop, "").unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), lock.wait()).await;
}

/// `--ca-cert` with an `http://` endpoint would send the token in plain text: refused at
/// start (exit 2) with a message naming the flag and the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_cert_with_an_http_endpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A usable CA: the refusal is about the endpoint, not the file.
    let ca = test_support::TestPki::generate(dir.path())
        .tls_files()
        .ca_cert;
    let output = tokio::process::Command::new(coordinator_bin())
        .args(["worker", "--backend", "consul"])
        .args(["--endpoints", "http://127.0.0.1:1", "--instance-id", "m1"])
        .arg("--ca-cert")
        .arg(&ca)
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = bounded("the worker to refuse", output).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("--ca-cert"), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// `coordinator status` lists the work items a leader refuses because
/// their assignment cannot fit one Consul transaction (a 400 KiB value:
/// Consul stores it, but base64 in a transaction it is past 512 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_items_too_large_to_assign() {
    let agent = ConsulAgent::start_dev().await;
    agent
        .kv_put("service/coordinator/work/huge", &"h".repeat(400 * 1024))
        .await;
    agent.kv_put("service/coordinator/work/small", "s").await;
    let status = |json: bool| {
        let mut cmd = tokio::process::Command::new(coordinator_bin());
        cmd.args(["status", "--backend", "consul", "--endpoints"])
            .arg(agent.http_addr())
            .env_remove("CONSUL_HTTP_TOKEN")
            .stdin(Stdio::null());
        if json {
            cmd.arg("--json");
        }
        cmd.output()
    };
    let out = bounded("status --json", status(true)).await.expect("run");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let refused = v["refused"].as_object().expect("refused").clone();
    assert_eq!(refused.keys().collect::<Vec<_>>(), ["huge"], "{v}");
    assert!(refused["huge"].as_u64().expect("bytes") > 512 * 1024);
    let out = bounded("status", status(false)).await.expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("refused: huge"), "{text}");
}

/// `CONSUL_HTTP_ADDR` without a scheme, as `consul` takes it, is where the
/// admin commands go; `work ls --json` lists what `work put` wrote, and
/// `status --json` sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_read_consul_variables_and_list_json() {
    let agent = ConsulAgent::start_dev().await;
    let bare = agent.http_addr().trim_start_matches("http://").to_owned();
    let admin = |args: &[&str]| {
        let mut c = tokio::process::Command::new(coordinator_bin());
        c.args(args)
            .env_remove("COORDINATOR_ENDPOINTS")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env("CONSUL_HTTP_ADDR", &bare)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        async move {
            bounded("an admin command", c.output())
                .await
                .expect("run coordinator")
        }
    };
    for (id, value) in [("w2", "two"), ("w1", "one")] {
        let o = admin(&["work", "put", id, value]).await;
        assert!(o.status.success(), "{o:?}");
    }
    let o = admin(&["work", "ls", "--json"]).await;
    assert!(o.status.success(), "{o:?}");
    let listed: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(
        listed,
        json!({"items": [{"id": "w1", "value": "one"}, {"id": "w2", "value": "two"}]})
    );
    let o = admin(&["status", "--json"]).await;
    assert!(o.status.success(), "{o:?}");
    let status: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(status["items"], 2);
    assert_eq!(status["unassigned"], json!(["w1", "w2"]));
}
