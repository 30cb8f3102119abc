//! Real Consul agents started by the harness.

use std::time::Duration;

use test_support::{poll_until, ConsulAgent, TestPki};

fn https_client(pki: &TestPki, with_identity: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .timeout(Duration::from_secs(15))
        .add_root_certificate(reqwest::Certificate::from_pem(&pki.ca_pem()).unwrap());
    if with_identity {
        builder =
            builder.identity(reqwest::Identity::from_pem(&pki.client_identity_pem()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_kv_and_cli() {
    let agent = ConsulAgent::start_dev().await;
    assert!(agent.http_addr().starts_with("http://127.0.0.1:"));
    assert!(!agent.leader().await.is_empty());

    agent.kv_put("svc/a/m1/w1", "v1").await;
    agent.kv_put("svc/a/m1/w2", "").await;
    assert_eq!(
        agent.kv_get("svc/a/m1/w1").await.as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(agent.kv_get("svc/a/m1/w2").await.as_deref(), Some(&b""[..]));
    assert!(agent.kv_get("svc/a/m1/nope").await.is_none());

    let keys = agent
        .cli(["kv", "get", "-keys", "-separator=", "svc/a/"])
        .await;
    assert_eq!(
        keys.lines().collect::<Vec<_>>(),
        ["svc/a/m1/w1", "svc/a/m1/w2"]
    );

    let index_before = agent.kv_index("svc/a/").await;
    agent.kv_delete("svc/a/m1/w1").await;
    assert!(agent.kv_get("svc/a/m1/w1").await.is_none());
    assert!(agent.kv_index("svc/a/").await > index_before);
    agent.kv_delete_recurse("svc/a/").await;
    assert!(agent.kv_get("svc/a/m1/w2").await.is_none());

    // A key with characters that need escaping in a URL.
    agent.kv_put("svc.a+b/(x)/m 1/w?1", "odd").await;
    assert_eq!(
        agent.kv_get("svc.a+b/(x)/m 1/w?1").await.as_deref(),
        Some(&b"odd"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mode_restart_keeps_kv_and_kill_stops_serving() {
    let mut agent = ConsulAgent::builder().server_mode().start().await;
    let addr = agent.http_addr();
    agent.kv_put("keep/me", "1").await;

    agent.kill();
    assert!(!agent.is_running());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(
        client
            .get(format!("{addr}/v1/status/leader"))
            .send()
            .await
            .is_err(),
        "a killed agent must not answer"
    );

    agent.restart().await;
    assert_eq!(agent.http_addr(), addr, "restart keeps the port");
    assert_eq!(agent.kv_get("keep/me").await.as_deref(), Some(&b"1"[..]));

    agent.stop().await;
    assert!(!agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_default_deny() {
    let agent = ConsulAgent::builder()
        .acl_master_token("s3cr3t-master")
        .start()
        .await;
    assert_eq!(agent.token(), Some("s3cr3t-master"));
    agent.kv_put("acl/k", "v").await;

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let anonymous = client
        .put(format!("{}/v1/kv/acl/k", agent.http_addr()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::FORBIDDEN);

    // The CLI gets the token from the environment the harness sets.
    let value = agent.cli(["kv", "get", "acl/k"]).await;
    assert_eq!(value.trim(), "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let agent = ConsulAgent::builder()
        .tls(pki.tls_files(), true)
        .start()
        .await;
    let addr = agent.http_addr();
    assert!(addr.starts_with("https://127.0.0.1:"), "{addr}");
    agent.kv_put("tls/k", "v").await;

    // Verified against the test CA (IP SAN 127.0.0.1), with a client certificate.
    let ok = https_client(&pki, true)
        .get(format!("{addr}/v1/kv/tls/k?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "v");

    // verify_incoming: no client certificate, no answer.
    assert!(https_client(&pki, false)
        .get(format!("{addr}/v1/kv/tls/k?raw"))
        .send()
        .await
        .is_err());

    // Plain HTTP on the same port fails.
    let plain = addr.replace("https://", "http://");
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{plain}/v1/kv/tls/k"))
        .send()
        .await;
    assert!(plain.map_or(true, |r| !r.status().is_success()));

    assert_eq!(agent.cli(["kv", "get", "tls/k"]).await.trim(), "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expired_and_untrusted_server_certificates_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    for files in [
        pki.expired_server_tls_files(),
        pki.untrusted_server_tls_files(),
    ] {
        let agent = ConsulAgent::builder().tls(files, false).start().await;
        let result = https_client(&pki, true)
            .get(format!("{}/v1/status/leader", agent.http_addr()))
            .send()
            .await;
        assert!(result.is_err(), "bad server certificate accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_wakes_on_put() {
    let agent = ConsulAgent::start_dev().await;
    agent.kv_put("bq/m1/w1", "").await;
    let index = agent.kv_index("bq/m1/").await;
    let url = format!(
        "{}/v1/kv/bq/m1/?recurse&index={index}&wait=30s",
        agent.http_addr()
    );
    let waiter = tokio::spawn(async move {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    agent.kv_put("bq/m1/w2", "").await;
    let body = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("blocking query did not wake")
        .unwrap();
    assert!(body.contains("bq/m1/w2"), "{body}");
    poll_until("index to grow", Duration::from_secs(10), || {
        let agent = &agent;
        async move { (agent.kv_index("bq/m1/").await > index).then_some(()) }
    })
    .await;
}

/// Creates a session with the default checks (the node's `serfHealth`), as `consul lock` and
/// the tests' own helpers do; returns the HTTP status and body.
async fn create_session(agent: &ConsulAgent) -> (reqwest::StatusCode, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .put(format!("{}/v1/session/create", agent.http_addr()))
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

/// "Ready" means ready for what tests do: a session can be created right after start (the
/// agent's node is registered in the catalog), never `500 Missing node registration`; and
/// the same after a restart of a dev agent (a fresh agent on the same port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_agent_creates_sessions_at_once() {
    for _ in 0..4 {
        let mut agent = ConsulAgent::start_dev().await;
        let (status, body) = create_session(&agent).await;
        assert!(
            status.is_success(),
            "session right after start: {status}: {body}"
        );
        agent.restart().await;
        let (status, body) = create_session(&agent).await;
        assert!(
            status.is_success(),
            "session right after restart: {status}: {body}"
        );
    }
}
