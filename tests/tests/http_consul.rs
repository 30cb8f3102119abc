//! `coordinator member --http-addr` as a real process on a real Consul agent,
//! reaching it through a fault proxy: `/status` shows the leader, the
//! workload and the acknowledged revision; `/readyz` turns 503 (naming the
//! store) when the proxy resets every connection and 200 again once it
//! passes traffic; `/healthz` stays 200 throughout.

use std::process::Stdio;
use std::time::Duration;

use coordinator_e2e::coordinator_bin;
use serde_json::Value;
use test_support::{poll_until, ConsulAgent, FaultProxy, ProxyMode};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(60);

/// `GET http://addr/path`: status and body; `None` while nothing answers.
async fn get(client: &reqwest::Client, addr: &str, path: &str) -> Option<(u16, String)> {
    let r = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Polls `GET path` until `want` holds (bounded); the last answer.
async fn get_until(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let want = &want;
    poll_until(what, WAIT, || async move {
        let (status, body) = get(client, addr, path).await?;
        want(status, &body).then_some((status, body))
    })
    .await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn terminate(mut child: Child) {
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = timeout(WAIT, child.wait())
        .await
        .expect("exit after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `coordinator member m1` on `endpoint`, serving `--http-addr addr`.
fn start_member(endpoint: &str, addr: &str) -> Child {
    Command::new(coordinator_bin())
        .args(["member", "--backend", "consul", "--instance-id", "m1"])
        .args(["--endpoints", endpoint, "--http-addr", addr])
        .args(["--ttl", "10s", "--leader-soak", "500ms"])
        .args(["--soak", "100ms", "--leader-settle", "500ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_endpoints_follow_the_store() {
    let agent = ConsulAgent::start_dev().await;
    let target = format!("127.0.0.1:{}", agent.port()).parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    for w in ["w1", "w2", "w3"] {
        let out = Command::new(coordinator_bin())
            .args(["work", "put", w, "--backend", "consul"])
            .args(["--endpoints", &agent.http_addr()])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let addr = format!("127.0.0.1:{}", test_support::free_port());
    let child = start_member(&proxy.http_url(), &addr);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = &client;

    // Leading, holding the three items, its change acknowledged.
    let (_, body) = get_until(
        client,
        &addr,
        "/status",
        "m1 holds 3, acknowledged",
        |s, b| {
            let v: Value = serde_json::from_str(b).unwrap_or_default();
            s == 200
                && v["workload"] == serde_json::json!(["w1", "w2", "w3"])
                && v["acked_revision"].is_u64()
                && v["acked_revision"] == v["revision"]
        },
    )
    .await;
    let status = json(&body);
    assert_eq!(status["command"], "member");
    assert_eq!(status["backend"], "consul");
    assert_eq!(status["is_leader"], true, "{status}");
    assert!(
        status["leader"].as_str().is_some_and(|l| !l.is_empty()),
        "{status}"
    );
    assert_eq!(status["draining"], false);
    assert_eq!(
        status["pending_handoffs"],
        serde_json::json!({"unacknowledged": [], "moves_in_flight": []})
    );
    let (code, body) = get_until(client, &addr, "/readyz", "ready", |s, _| s == 200).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // The store goes away: not ready, and the reason names it; still alive.
    proxy.set_mode(ProxyMode::Reset);
    let (_, body) = get_until(
        client,
        &addr,
        "/readyz",
        "not ready in the outage",
        |s, _| s == 503,
    )
    .await;
    assert!(body.starts_with("not ready: store unreachable"), "{body}");
    assert_eq!(
        get(client, &addr, "/healthz").await,
        Some((200, "ok\n".to_owned()))
    );
    let status = json(&get(client, &addr, "/status").await.unwrap().1);
    assert_eq!(status["ready"], false);
    assert_eq!(status["store"]["reachable"], false, "{status}");
    assert!(status["store"]["error"].is_string(), "{status}");
    assert_eq!(
        status["workload"],
        serde_json::json!(["w1", "w2", "w3"]),
        "the workload is kept"
    );

    // It comes back: ready again.
    proxy.set_mode(ProxyMode::PassThrough);
    get_until(
        client,
        &addr,
        "/readyz",
        "ready after the outage",
        |s, _| s == 200,
    )
    .await;
    let status = json(&get(client, &addr, "/status").await.unwrap().1);
    assert_eq!(
        status["store"],
        serde_json::json!({"reachable": true, "error": null})
    );
    assert_eq!(status["workload"], serde_json::json!(["w1", "w2", "w3"]));
    let (code, page) = get(client, &addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("coordinator_member_is_leader{instance_id=\"m1\"} 1"),
        "{page}"
    );
    terminate(child).await;
}
