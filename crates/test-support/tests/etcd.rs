//! Real etcd servers started by the harness.

use std::time::Duration;

use test_support::{poll_until, EtcdCluster, EtcdServer, TestPki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_put_del_compact_restart() {
    let mut etcd = EtcdServer::start().await;
    assert!(etcd.client_url().starts_with("http://127.0.0.1:"));

    let r1 = etcd.put("svc/m1/w1", "v1").await;
    let r2 = etcd.put("svc/m1/w2", "-starts-with-dash").await;
    assert!(r2 > r1);
    assert_eq!(etcd.get_revision().await, r2);
    assert_eq!(
        etcd.get("svc/m1/w2").await.as_deref(),
        Some("-starts-with-dash")
    );

    assert_eq!(etcd.del("svc/m1/w1").await, 1);
    assert_eq!(etcd.del("svc/m1/w1").await, 0);
    let r3 = etcd.get_revision().await;
    etcd.compact(r3).await;
    // History before the compaction is gone.
    let old = etcd
        .etcdctl(["get", "--rev", &r1.to_string(), "svc/m1/w1"])
        .output()
        .await
        .unwrap();
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("compacted"));

    etcd.kill();
    etcd.restart().await;
    assert_eq!(
        etcd.get("svc/m1/w2").await.as_deref(),
        Some("-starts-with-dash")
    );
    assert_eq!(etcd.get_revision().await, r3);
    assert_eq!(etcd.del_prefix("svc/").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_requires_credentials() {
    let mut etcd = EtcdServer::start().await;
    etcd.enable_auth("app", "app-password").await;
    assert_eq!(
        etcd.credentials(),
        Some(("app".to_owned(), "app-password".to_owned()))
    );
    // The harness acts as root.
    etcd.put("a/k", "v").await;
    etcd.compact(etcd.get_revision().await).await;

    // Without credentials: refused.
    let mut anonymous = tokio::process::Command::new(test_support::etcdctl_bin());
    let out = anonymous
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", etcd.client_url()),
            "--command-timeout=10s",
            "get",
            "a/k",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());

    // As the application user: allowed.
    let mut as_app = tokio::process::Command::new(test_support::etcdctl_bin());
    let out = as_app
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", etcd.client_url()),
            "--user=app:app-password",
            "--command-timeout=10s",
            "put",
            "a/k2",
            "v2",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(etcd.get("a/k2").await.as_deref(), Some("v2"));

    etcd.restart().await;
    assert_eq!(etcd.get("a/k2").await.as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_survives_one_member() {
    let mut cluster = EtcdCluster::start(3).await;
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.endpoints().len(), 3);
    let r1 = cluster.put("c/k", "1").await;

    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader);
    assert!(!cluster.is_running(leader));
    // The other two keep quorum and elect a new leader.
    let new_leader = poll_until("new leader", Duration::from_secs(30), || {
        let cluster = &cluster;
        async move { cluster.leader().await.filter(|l| *l != leader) }
    })
    .await;
    assert_ne!(new_leader, leader);
    let r2 = cluster.put("c/k", "2").await;
    assert!(r2 > r1);

    cluster.restart(leader).await;
    // The restarted member catches up.
    let out = cluster
        .etcdctl_member(leader, ["get", "--print-value-only", "c/k"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_cert_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let etcd = EtcdServer::builder()
        .tls(pki.tls_files(), true)
        .start_server()
        .await;
    let url = etcd.client_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    etcd.put("t/k", "v").await;
    assert_eq!(etcd.get("t/k").await.as_deref(), Some("v"));

    let client = |identity: bool| {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .timeout(Duration::from_secs(15))
            .add_root_certificate(reqwest::Certificate::from_pem(&pki.ca_pem()).unwrap());
        if identity {
            b = b.identity(reqwest::Identity::from_pem(&pki.client_identity_pem()).unwrap());
        }
        b.build().unwrap()
    };
    let health = client(true)
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(health.contains("true"), "{health}");
    assert!(client(false)
        .get(format!("{url}/health"))
        .send()
        .await
        .is_err());
}
