//! Bad input on the real stores, each with the behaviour a user would expect: odd keys are
//! ignored (logged once at debug, naming the key) or taken verbatim; big values and big
//! workloads pass; a prefix with regex metacharacters works; bad settings are a clear error
//! naming the input; an unreachable store, a wrong token or password and a bad certificate
//! are retried with backoff and logged at warn with a message that says what is wrong.
//!
//! Library-level through `coordinator::Config` + `Backend::connect` (what applications
//! use), plus a few runs of the `coordinator` program (see `coordinator_e2e::coordinator_bin`).

use std::process::Stdio;
use std::time::Duration;

use coordinator::{Backend, BackendKind, Config, WorkerHandle};
use coordinator_e2e::capture::{self, Captured};
use coordinator_e2e::stores::{assignment_prefix, leader_name};
use coordinator_e2e::{bounded, coordinator_bin, Harness, Path, StoreKind, StoreServer};
use test_support::{ConsulAgent, EtcdCluster, TestPki};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

async fn start(kind: StoreKind) -> StoreServer {
    coordinator_e2e::faults::start_store(kind, false).await
}

fn backend_kind(kind: StoreKind) -> BackendKind {
    match kind {
        StoreKind::Consul => BackendKind::Consul,
        StoreKind::Etcd => BackendKind::Etcd,
    }
}

/// A library config for `kind` aimed at `endpoints`, under namespace `ns`.
fn config(kind: StoreKind, endpoints: Vec<String>, ns: &str, id: &str) -> Config {
    let mut c = Config::new(backend_kind(kind), id);
    c.endpoints = endpoints;
    c.prefix = assignment_prefix(ns);
    c.leader = leader_name(ns);
    c.soak = Duration::from_millis(100);
    c.leader_settle = Some(Duration::from_millis(200));
    c
}

async fn spawn(c: &Config) -> WorkerHandle {
    capture::init();
    let backend = Backend::connect(c).await.expect("connect");
    backend.spawn_worker(c).expect("spawn")
}

fn ignored_key_logs(instance_id: &str, since: Instant, key: &str) -> usize {
    let needle = format!(" key={key} reason=");
    capture::of_worker(instance_id, since)
        .iter()
        .filter(|c| c.is_warn() && c.text.starts_with("ignoring key") && c.text.contains(&needle))
        .count()
}

// ---------------------------------------------------------------------------------------
// Keys

/// Valid odd work ids are taken verbatim; keys nested deeper than member/work, with an
/// empty segment or (etcd) not UTF-8 are ignored and logged at warn once each, however often the
/// member's keys are read again.
async fn odd_keys(kind: StoreKind) {
    let store = start(kind).await;
    let ns = format!("odd-{}", kind.name());
    let id = "m1";
    store.take_leadership(&ns, "leader-1").await;
    let member = format!("{}{id}/", assignment_prefix(&ns));
    let valid = [
        "100%",
        "a%2Fb",
        "with space",
        "ünïcødé-工作",
        "q?x#y",
        "+plus",
    ];
    let mut foreign: Vec<Vec<u8>> = vec![
        format!("{member}deeper/nested").into_bytes(),
        member.clone().into_bytes(),
        format!("{member}/empty-segment").into_bytes(),
        format!("{member}trailing/").into_bytes(),
    ];
    if kind == StoreKind::Etcd {
        let mut non_utf8 = member.clone().into_bytes();
        non_utf8.extend_from_slice(&[0xff, 0xfe, b'x']);
        foreign.push(non_utf8);
    }
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = valid
        .iter()
        .map(|w| (format!("{member}{w}").into_bytes(), b"v".to_vec()))
        .collect();
    entries.extend(foreign.iter().map(|k| (k.clone(), b"v".to_vec())));
    // A member whose id starts with ours must stay invisible.
    entries.push((
        format!("{}{id}0/other", assignment_prefix(&ns)).into_bytes(),
        b"v".to_vec(),
    ));
    store.put_many(&entries).await;

    let since = Instant::now();
    let w = spawn(&config(kind, vec![store.url()], &ns, id)).await;
    let first = bounded("first sync", w.ready()).await.unwrap();
    let mut want: Vec<String> = valid.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let got: Vec<String> = first.keys().map(ToString::to_string).collect();
    assert_eq!(got, want);

    // Another change makes the worker read (Consul: the whole prefix) again.
    let mut changes = w.changes();
    changes.next().await.unwrap(); // the initial state
    store.put(&format!("{member}later"), "v").await;
    store
        .put_many(&[(format!("{member}later/nested").into_bytes(), b"v".to_vec())])
        .await;
    let next = bounded("the next change", changes.next()).await.unwrap();
    let added: Vec<String> = next.added.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(added, ["later"], "{next:?}");
    assert!(next.removed.is_empty());
    for key in &foreign {
        let key = String::from_utf8_lossy(key);
        assert_eq!(
            ignored_key_logs(id, since, &key),
            1,
            "{key:?} must be logged once at warn; log: {:#?}",
            capture::of_worker(id, since)
        );
    }
    w.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_consul() {
    odd_keys(StoreKind::Consul).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_etcd() {
    odd_keys(StoreKind::Etcd).await;
}

/// A prefix with regex metacharacters works as written.
async fn regex_prefix(kind: StoreKind) {
    let store = start(kind).await;
    let ns = format!("svc.a+b/(x)[y]*?^$|{}", kind.name());
    // A key that a regex built from the prefix would match.
    store
        .put(&format!("svcXaab/(x)[y]/assign/{ns}-m1/decoy"), "v")
        .await;
    let mut h = Harness::start(
        store,
        &ns,
        Path::Direct(vec![]),
        &[("w1", "1"), ("w2", "2")],
    )
    .await;
    h.put("w3", "3").await;
    let since = h.started;
    h.await_converged(since, coordinator_e2e::EVENT_TIMEOUT)
        .await;
    h.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_with_regex_metacharacters_consul() {
    regex_prefix(StoreKind::Consul).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_with_regex_metacharacters_etcd() {
    regex_prefix(StoreKind::Etcd).await;
}

// ---------------------------------------------------------------------------------------
// Sizes

const MIB: usize = 1024 * 1024;

/// 1 MiB values reach the application intact. (Consul's default `kv_max_value_size` is
/// 512 KiB: the agent is configured for 2 MiB, see docs/operations.md.)
async fn large_values(store: StoreServer) {
    let kind = store.kind();
    let ns = format!("big-{}", kind.name());
    let big = "x".repeat(MIB);
    let mut h = Harness::start(store, &ns, Path::Direct(vec![]), &[("small", "1")]).await;
    let since = Instant::now();
    h.put("big1", &big).await;
    h.put("big2", &format!("{}y", &big[1..])).await;
    let p = h
        .await_converged(since, coordinator_e2e::EVENT_TIMEOUT)
        .await;
    assert_eq!(p.set["big1"].len(), MIB);
    let w = h.worker().workload();
    assert_eq!(w["big2"].len(), MIB);
    assert!(w["big2"].ends_with(b"y"));
    h.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_values_consul() {
    let agent = ConsulAgent::builder()
        .extra_json(r#"{"limits": {"kv_max_value_size": 2097152}}"#)
        .start()
        .await;
    large_values(StoreServer::Consul(agent)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_values_etcd() {
    large_values(start(StoreKind::Etcd).await).await;
}

/// 100,000 keys under one member: the first sync and a later change go through. Keys are
/// of a realistic length (~60 bytes: the default prefix, a member id, a work id).
async fn many_keys(kind: StoreKind) {
    const N: usize = 100_000;
    let store = start(kind).await;
    let ns = format!("many-{}/service/coordinator", kind.name());
    let id = "worker-0001";
    store.take_leadership(&ns, "leader-1").await;
    let member = format!("{}{id}/", assignment_prefix(&ns));
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..N)
        .map(|i| {
            (
                format!("{member}work-item-{i:06}").into_bytes(),
                b"v".to_vec(),
            )
        })
        .collect();
    let t = Instant::now();
    store.put_many(&entries).await;
    eprintln!("{}: wrote {N} keys in {:?}", kind.name(), t.elapsed());

    let t = Instant::now();
    let w = spawn(&config(kind, vec![store.url()], &ns, id)).await;
    let first = tokio::time::timeout(Duration::from_secs(90), w.ready())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no first sync of {N} keys within 90 s; worker log: {:#?}",
                capture::of_worker(id, t)
                    .iter()
                    .filter(|c| c.is_warn())
                    .take(3)
                    .collect::<Vec<_>>()
            )
        })
        .unwrap();
    assert_eq!(first.len(), N);
    eprintln!(
        "{}: first sync of {N} keys after {:?}",
        kind.name(),
        t.elapsed()
    );

    let mut changes = w.changes();
    changes.next().await.unwrap();
    let t = Instant::now();
    store.put(&format!("{member}zz-new"), "v").await;
    let c = bounded("the change after 100k keys", changes.next())
        .await
        .unwrap();
    assert_eq!(c.added.len(), 1);
    assert_eq!(&*c.added[0].0, "zz-new");
    assert_eq!(w.workload().len(), N + 1);
    eprintln!(
        "{}: one more key published after {:?}",
        kind.name(),
        t.elapsed()
    );
    w.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keys_under_one_member_consul() {
    many_keys(StoreKind::Consul).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keys_under_one_member_etcd() {
    many_keys(StoreKind::Etcd).await;
}

// ---------------------------------------------------------------------------------------
// Settings

#[tokio::test]
async fn bad_instance_ids_are_a_clear_error_naming_the_input() {
    let long = "x".repeat(10 * 1024);
    for kind in [StoreKind::Consul, StoreKind::Etcd] {
        for bad in ["", "a/b", "a\u{1}b", "tab\there", long.as_str()] {
            let c = config(kind, vec!["http://127.0.0.1:1".into()], "ids", bad);
            let e = Backend::connect(&c).await.unwrap_err();
            assert!(e.to_string().contains("instance_id"), "{bad:?}: {e}");
            // Also when the backend was set up with a good config first.
            let good = config(kind, vec!["http://127.0.0.1:1".into()], "ids", "ok");
            let backend = Backend::connect(&good).await.unwrap();
            let e = backend.spawn_worker(&c).unwrap_err();
            assert!(e.to_string().contains("instance_id"), "{bad:?}: {e}");
        }
    }
}

#[tokio::test]
async fn bad_backend_settings_are_a_clear_error_naming_the_input() {
    use backend_consul::{ConsulBackend, ConsulConfig};
    use backend_etcd::{EtcdBackend, EtcdConfig};
    for wait in [Duration::ZERO, Duration::from_secs(11 * 60)] {
        let mut c = ConsulConfig::new(vec!["http://127.0.0.1:1".into()]);
        c.wait = wait;
        let e = ConsulBackend::new(c).unwrap_err();
        assert!(e.to_string().contains("wait"), "{e}");
    }
    let e = ConsulBackend::new(ConsulConfig::new(vec!["ftp://x".into()])).unwrap_err();
    assert!(e.to_string().contains("ftp://x"), "{e}");
    let mut c = ConsulConfig::new(vec!["http://127.0.0.1:1".into()]);
    c.token_file = Some("/nonexistent/token".into());
    let e = ConsulBackend::new(c).unwrap_err();
    assert!(e.to_string().contains("token_file"), "{e}");

    let e = EtcdBackend::connect(
        EtcdConfig::new(vec!["http://127.0.0.1:1".into()]).with_keepalive(Duration::ZERO),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("keepalive"), "{e}");
    let e = EtcdBackend::connect(
        EtcdConfig::new(vec!["https://127.0.0.1:1".into()]).with_ca_cert("/nonexistent/ca.pem"),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("ca_cert"), "{e}");

    // Through the coordinator config: a bad endpoint and half a certificate pair.
    for kind in [StoreKind::Consul, StoreKind::Etcd] {
        let c = config(kind, vec!["127.0.0.1:1:2".into()], "s", "m1");
        let e = Backend::connect(&c).await.unwrap_err();
        assert!(e.to_string().contains("endpoints"), "{e}");
        let mut c = config(kind, vec!["https://127.0.0.1:1".into()], "s", "m1");
        c.client_cert = Some("/tmp/cert.pem".into());
        let e = Backend::connect(&c).await.unwrap_err();
        assert!(e.to_string().contains("client_cert"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Unreachable store, credentials, certificates: retried, logged at warn, saying what is wrong.

/// Spawns a worker with `c`, waits for its first warning (which must satisfy `says`), checks
/// that it is not ready and that it retries with backoff (not in a loop), and halts it.
async fn warns_and_backs_off(c: &Config, says: impl Fn(&str) -> bool, what: &str) -> Captured {
    let since = Instant::now();
    let w = spawn(c).await;
    let id = c.instance_id.clone();
    let first = coordinator_e2e::bounded(&format!("a warning about {what}"), async {
        loop {
            if let Some(c) = capture::of_worker(&id, since)
                .into_iter()
                .find(Captured::is_warn)
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        says(&first.text.to_ascii_lowercase()),
        "the warning must say what is wrong ({what}): {}",
        first.text
    );
    // Hold for a few seconds: retries continue, spaced by the backoff.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!w.is_ready(), "ready without a store?");
    let warnings = capture::of_worker(&id, since)
        .into_iter()
        .filter(Captured::is_warn)
        .count();
    // Two streams (assignments, leader), backoff from 100 ms doubling: ~6 tries each in 4 s.
    assert!(
        (2..=30).contains(&warnings),
        "{warnings} warnings in ~4 s: not backing off?"
    );
    w.halt().await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_retried_and_logged() {
    for (kind, id) in [(StoreKind::Consul, "unr-c"), (StoreKind::Etcd, "unr-e")] {
        let c = config(kind, vec!["http://127.0.0.1:1".into()], "unr", id);
        let w = warns_and_backs_off(
            &c,
            |t| t.contains("unreachable") || t.contains("refused"),
            "an unreachable store",
        )
        .await;
        eprintln!("{}: {}", kind.name(), w.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_consul_token_is_a_clear_warning() {
    let agent = ConsulAgent::builder()
        .acl_master_token("the-right-token")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "a-wrong-token\n").unwrap();
    let mut c = config(StoreKind::Consul, vec![agent.http_addr()], "acl", "acl-m1");
    c.token_file = Some(file);
    let w = warns_and_backs_off(
        &c,
        |t| t.contains("permission denied") || t.contains("acl"),
        "the token",
    )
    .await;
    eprintln!("consul wrong token: {}", w.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_etcd_password_is_a_clear_warning() {
    let mut cluster = EtcdCluster::start(1).await;
    cluster.enable_auth("coord", "the-right-password").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "a-wrong-password\n").unwrap();
    let mut c = config(StoreKind::Etcd, cluster.client_urls(), "auth", "auth-m1");
    c.user = Some("coord".into());
    c.password_file = Some(file);
    let w = warns_and_backs_off(
        &c,
        |t| t.contains("permission denied") && t.contains("authentication failed"),
        "the password",
    )
    .await;
    assert!(
        !w.text.contains("a-wrong-password"),
        "password logged: {}",
        w.text
    );
    eprintln!("etcd wrong password: {}", w.text);
}

fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    (dir, pki)
}

/// A server presenting an expired, or untrusted, certificate: the warning says so.
async fn bad_server_certificate(kind: StoreKind, expired: bool) {
    let (_dir, pki) = pki();
    let files = if expired {
        pki.expired_server_tls_files()
    } else {
        pki.untrusted_server_tls_files()
    };
    let (_consul, _etcd, url) = match kind {
        StoreKind::Consul => {
            let a = ConsulAgent::builder().tls(files, false).start().await;
            let url = a.http_addr();
            (Some(a), None, url)
        }
        StoreKind::Etcd => {
            let e = EtcdCluster::builder()
                .tls(files, false)
                .start_cluster(1)
                .await;
            let url = e.client_url(0);
            (None, Some(e), url)
        }
    };
    let id = format!("tls-{}-{expired}", kind.name());
    let mut c = config(kind, vec![url], "tls", &id);
    c.ca_cert = Some(pki.ca_cert.clone());
    let what = if expired { "expired" } else { "untrusted" };
    let w = warns_and_backs_off(
        &c,
        |t| {
            t.contains("certificate")
                && if expired {
                    t.contains("expired")
                } else {
                    t.contains("unknownissuer") || t.contains("unknown issuer")
                }
        },
        &format!("the {what} certificate"),
    )
    .await;
    eprintln!("{} {what} certificate: {}", kind.name(), w.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_server_certificate_consul() {
    bad_server_certificate(StoreKind::Consul, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_server_certificate_consul() {
    bad_server_certificate(StoreKind::Consul, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_server_certificate_etcd() {
    bad_server_certificate(StoreKind::Etcd, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_server_certificate_etcd() {
    bad_server_certificate(StoreKind::Etcd, false).await;
}

// ---------------------------------------------------------------------------------------
// The program.

fn program(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(coordinator_bin());
    cmd.arg("worker")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn program_bad_values_exit_2_naming_them() {
    let cases: &[(&[&str], &str)] = &[
        (&["--instance-id", ""], "instance"),
        (&["--instance-id", "a/b"], "instance"),
        (&["--instance-id", "a\u{7}b"], "instance"),
        (&["--instance-id", "m1", "--soak", "5parsecs"], "--soak"),
        (&["--instance-id", "m1", "--soak", "-1s"], "--soak"),
        (
            &["--instance-id", "m1", "--leader-settle", "1 fortnight"],
            "--leader-settle",
        ),
        (&["--instance-id", "m1", "--bogus"], "--bogus"),
        (
            &["--instance-id", "m1", "--endpoints", "ftp://127.0.0.1:1"],
            "endpoints",
        ),
    ];
    let long = "x".repeat(10 * 1024);
    let mut all: Vec<(Vec<&str>, &str)> = cases.iter().map(|(a, w)| (a.to_vec(), *w)).collect();
    all.push((vec!["--instance-id", long.as_str()], "instance"));
    for backend in ["consul", "etcd"] {
        for (args, names) in &all {
            let mut full = vec!["--backend", backend];
            full.extend(args);
            let out = tokio::time::timeout(Duration::from_secs(30), program(&full).output())
                .await
                .expect("the program must exit at once")
                .expect("run coordinator");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{full:?}: {stderr}");
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{full:?}: one line: {stderr}"
            );
            assert!(
                stderr.to_ascii_lowercase().contains(names),
                "{full:?}: must name {names}: {stderr}"
            );
        }
    }
}

/// The program keeps running against an unreachable store, says so at warn, and exits 0 on
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_keeps_running_when_the_store_is_unreachable() {
    for backend in ["consul", "etcd"] {
        let mut child = program(&[
            "--backend",
            backend,
            "--endpoints",
            "http://127.0.0.1:1",
            "--instance-id",
            "m1",
        ])
        .spawn()
        .expect("spawn coordinator");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let warn = bounded("a WARN line", async {
            loop {
                let line = lines.next_line().await.unwrap().expect("stderr ended");
                if line.contains("WARN") {
                    return line;
                }
            }
        })
        .await;
        assert!(warn.to_ascii_lowercase().contains("unreachable"), "{warn}");
        // Still running a while later.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(child.try_wait().unwrap().is_none(), "{backend}: exited");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = bounded("exit after SIGTERM", child.wait()).await.unwrap();
        assert_eq!(status.code(), Some(0), "{backend}");
    }
}
