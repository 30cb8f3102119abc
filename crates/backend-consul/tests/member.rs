//! The leader half on a real Consul agent: the member conformance suite
//! (sessions, election, fenced writes, whole members spreading work) and
//! Consul-specific behaviour (TTL rounding, `consul lock` on the leader key,
//! fenced transactions at Consul's 64-operation limit).
//!
//! Every wait on an expected event is bounded; nothing sleeps to wait.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backend_consul::{ConsulBackend, FENCE_OPS, MAX_TXN_OPS, MIN_SESSION_TTL};
use bytes::Bytes;
use common::{bounded, config_for, init_tracing};
use leader_core::conformance::{self, ClusterStore, Link};
use leader_core::{Layout, MemberStore};
use test_support::{ConsulAgent, FaultProxy, ProxyMode};
use worker_core::{
    Election, FencedWrite, KvWrite, LeaderWait, Membership, SessionId, TxnOp, TxnOutcome,
};

/// The suite's view of one agent: each connection is a fresh backend whose
/// leader key is the layout's.
struct Consul {
    agent: Arc<ConsulAgent>,
}

impl Consul {
    async fn start() -> Self {
        init_tracing();
        Self {
            agent: Arc::new(ConsulAgent::start_dev().await),
        }
    }

    fn backend(&self, leader_key: &str) -> ConsulBackend {
        let mut config = config_for(&self.agent);
        leader_key.clone_into(&mut config.leader_key);
        ConsulBackend::new(config).expect("backend")
    }
}

#[async_trait]
impl ClusterStore for Consul {
    async fn connect(&self, layout: &Layout) -> MemberStore {
        MemberStore::from_backend(self.backend(&layout.leader))
    }
    fn ttl(&self) -> Duration {
        MIN_SESSION_TTL
    }
    /// Consul invalidates a session up to 2 x TTL after its last renewal;
    /// then the leader soaks and writes, the workers soak.
    fn expiry_bound(&self) -> Duration {
        2 * MIN_SESSION_TTL + Duration::from_secs(40)
    }
    async fn put(&self, key: &str, value: &[u8]) {
        self.agent.kv_put(key, value).await;
    }
    async fn keys(&self, prefix: &str) -> Vec<String> {
        keys(&self.agent, prefix).await
    }
    async fn connect_cuttable(&self, layout: &Layout) -> (MemberStore, Box<dyn Link>) {
        let proxy = FaultProxy::start(([127, 0, 0, 1], self.agent.port()).into()).await;
        let mut config = config_for(&self.agent);
        config.endpoints = vec![proxy.http_url()];
        layout.leader.clone_into(&mut config.leader_key);
        let backend = ConsulBackend::new(config).expect("backend");
        (
            MemberStore::from_backend(backend),
            Box::new(ProxyLink(proxy)),
        )
    }
    /// `consul session destroy`: `PUT /v1/session/destroy/<id>`, with a
    /// plain HTTP client.
    async fn end_session(&self, session: &str) {
        let url = format!("{}/v1/session/destroy/{session}", self.agent.http_addr());
        let response = reqwest::Client::new()
            .put(url)
            .send()
            .await
            .expect("session destroy");
        assert!(response.status().is_success(), "{}", response.status());
    }
}

/// A fault proxy as the suite's cuttable link: cut is a silent partition.
struct ProxyLink(FaultProxy);

impl Link for ProxyLink {
    fn cut(&self) {
        self.0.set_mode(ProxyMode::BlackHole);
    }
    fn heal(&self) {
        self.0.set_mode(ProxyMode::PassThrough);
    }
}

/// Every key under `prefix`, sorted, read with a plain HTTP client (not the
/// backend under test).
async fn keys(agent: &ConsulAgent, prefix: &str) -> Vec<String> {
    let mut url = reqwest::Url::parse(&agent.http_addr()).expect("address");
    url.path_segments_mut()
        .expect("base")
        .extend(["v1", "kv"])
        .extend(prefix.split('/'));
    url.query_pairs_mut().append_pair("keys", "true");
    let response = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("list keys");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Vec::new();
    }
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.bytes().await.expect("keys");
    let mut keys: Vec<String> = serde_json::from_slice(&body).expect("keys JSON");
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_bound_keys() {
    let store = Consul::start().await;
    conformance::sessions_and_bound_keys(&store, "s/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_and_fencing() {
    let store = Consul::start().await;
    conformance::election_and_fencing(&store, "e/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_spread_work() {
    let store = Consul::start().await;
    conformance::members_spread_work(&store, "m/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_halt_hands_over() {
    let store = Consul::start().await;
    conformance::leader_halt_hands_over(&store, "h/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_another_leads() {
    let store = Consul::start().await;
    conformance::leader_killed_another_leads(&store, "k/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_within_rebalance_delay_moves_nothing() {
    let store = Consul::start().await;
    conformance::restart_within_rebalance_delay_moves_nothing(&store, "r/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_never_double_owns() {
    let store = Consul::start().await;
    conformance::handoff_never_double_owns(&store, "ho/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() {
    let store = Consul::start().await;
    let r = conformance::rolling_restart(&store, "rr/", false).await;
    println!("consul: rolling restart: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_exclusive() {
    let store = Consul::start().await;
    let r = conformance::rolling_restart(&store, "rx/", true).await;
    println!("consul, exclusive: rolling restart: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_are_throttled() {
    let store = Consul::start().await;
    conformance::moves_are_throttled(&store, "t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_cut_off_member_never_double_owns() {
    let store = Consul::start().await;
    conformance::exclusive_cut_off_member_never_double_owns(&store, "x/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_session_ended_while_cut_off_never_double_owns() {
    let store = Consul::start().await;
    conformance::exclusive_session_ended_while_cut_off_never_double_owns(&store, "xs/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns() {
    let store = Consul::start().await;
    conformance::with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns(&store, "xm/")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_member_has_its_session_ended_after_the_handoff_timeout() {
    let store = Consul::start().await;
    conformance::a_stuck_member_has_its_session_ended_after_the_handoff_timeout(&store, "st/")
        .await;
}

/// The session Consul created: TTL rounded up to 10 s, `delete`, no
/// lock-delay, no node checks; a bound key of a gone session is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_have_the_documented_settings() {
    let store = Consul::start().await;
    let backend = store.backend("x/leader");
    let session = backend
        .open_session(Duration::from_secs(3))
        .await
        .expect("open");
    let info = session_info(&store.agent, &session).await;
    assert_eq!(info["TTL"], "10s", "{info}");
    assert_eq!(info["Behavior"], "delete", "{info}");
    assert_eq!(info["LockDelay"], 0, "{info}");
    let checks: usize = ["Checks", "NodeChecks", "ServiceChecks"]
        .iter()
        .filter_map(|field| info.get(*field).and_then(serde_json::Value::as_array))
        .map(Vec::len)
        .sum();
    assert_eq!(checks, 0, "no node health checks: {info}");

    // Another session cannot take a bound key; a gone session binds nothing.
    let other = backend
        .open_session(Duration::from_secs(10))
        .await
        .expect("open");
    assert!(backend
        .put_bound(&session, "x/members/a", Bytes::from_static(b"{}"))
        .await
        .expect("put_bound"));
    assert!(!backend
        .put_bound(&other, "x/members/a", Bytes::from_static(b"{}"))
        .await
        .expect("put_bound"));
    backend.close_session(&session).await.expect("close");
    assert!(!backend
        .put_bound(&session, "x/members/b", Bytes::from_static(b"{}"))
        .await
        .expect("put_bound with a gone session"));
    assert!(keys(&store.agent, "x/members/").await.is_empty());
    assert_eq!(
        backend
            .try_lead("x/leader", &session, "gone")
            .await
            .expect("try_lead"),
        None,
        "a gone session does not lead"
    );
    backend.close_session(&other).await.expect("close");
}

async fn session_info(agent: &ConsulAgent, session: &SessionId) -> serde_json::Value {
    let url = format!("{}/v1/session/info/{}", agent.http_addr(), session.0);
    let body = reqwest::get(url)
        .await
        .expect("session info")
        .bytes()
        .await
        .expect("session info");
    let infos: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("session info JSON");
    infos.into_iter().next().expect("the session exists")
}

/// A full transaction (62 operations and the two-operation fence, Consul's 64) applies;
/// one more operation is refused before it is sent; the fence follows the
/// leader key's holder, `leader_value` its value, and plain writes report
/// whether a key existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_transactions_fill_consuls_limit() {
    let store = Consul::start().await;
    let backend = store.backend("t/leader");
    assert_eq!(backend.max_ops(), MAX_TXN_OPS - FENCE_OPS);
    let session = backend.open_session(MIN_SESSION_TTL).await.expect("open");
    assert_eq!(backend.leader_value("t/leader").await.expect("value"), None);
    let fence = backend
        .try_lead("t/leader", &session, "m1")
        .await
        .expect("try_lead")
        .expect("a free key is won");
    assert_eq!(fence.key(), "t/leader");
    assert_eq!(
        backend.leader().await.expect("leader").as_ref(),
        Some(fence.leader()),
        "the fence's leader is what LeaderWait reports"
    );
    assert_eq!(
        backend.leader_value("t/leader").await.expect("value"),
        Some("m1".to_owned())
    );

    let ops: Vec<TxnOp> = (0..backend.max_ops())
        .map(|i| TxnOp::Put {
            key: format!("t/a/m1/w{i:02}"),
            value: Bytes::from(format!("p{i}")),
        })
        .collect();
    let TxnOutcome::Applied { revision } = backend.apply(&fence, &ops).await.expect("apply") else {
        panic!("the leader's transaction was fenced");
    };
    assert!(revision >= store.agent.kv_index("t/a/m1/w00").await);
    assert_eq!(keys(&store.agent, "t/a/").await.len(), backend.max_ops());
    assert_eq!(
        store.agent.kv_get("t/a/m1/w07").await.as_deref(),
        Some(&b"p7"[..])
    );
    let mut too_many = ops.clone();
    too_many.push(TxnOp::Delete {
        key: "t/a/m1/w00".into(),
    });
    assert!(backend.apply(&fence, &too_many).await.is_err());
    assert_eq!(keys(&store.agent, "t/a/").await.len(), backend.max_ops());

    // Resigning frees the key at once (no lock-delay): the old fence is
    // rejected and another session leads with a higher term.
    backend.resign(&fence).await.expect("resign");
    assert_eq!(backend.leader_value("t/leader").await.expect("value"), None);
    let next = backend.open_session(MIN_SESSION_TTL).await.expect("open");
    let fence2 = backend
        .try_lead("t/leader", &next, "m2")
        .await
        .expect("try_lead")
        .expect("a released key is won at once");
    assert!(fence2.term() > fence.term());
    let delete_all: Vec<TxnOp> = (0..3)
        .map(|i| TxnOp::Delete {
            key: format!("t/a/m1/w{i:02}"),
        })
        .collect();
    assert_eq!(
        backend.apply(&fence, &delete_all).await.expect("apply"),
        TxnOutcome::Fenced
    );
    assert_eq!(keys(&store.agent, "t/a/").await.len(), backend.max_ops());

    backend
        .put_key("t/work/w1", Bytes::from_static(b"x"))
        .await
        .expect("put");
    assert_eq!(
        store.agent.kv_get("t/work/w1").await.as_deref(),
        Some(&b"x"[..])
    );
    assert!(backend.delete_key("t/work/w1").await.expect("delete"));
    assert!(!backend.delete_key("t/work/w1").await.expect("delete"));
    assert_eq!(store.agent.kv_get("t/work/w1").await, None);
    backend.close_session(&session).await.expect("close");
    backend.close_session(&next).await.expect("close");
}

/// A lock held with `consul lock` on the leader key keeps `try_lead` from
/// leading; once the lock is released, `try_lead` wins the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_lock_keeps_members_from_leading() {
    let store = Consul::start().await;
    let key = "locks/svc/.lock";
    let backend = store.backend(key);
    let session = backend.open_session(MIN_SESSION_TTL).await.expect("open");

    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    let mut lock = store
        .agent
        .command([
            "lock",
            "locks/svc",
            &format!("while [ ! -e '{}' ]; do sleep 0.05; done", stop.display()),
        ])
        .spawn()
        .expect("run consul lock");

    // Wait (bounded, on the leader key) until `consul lock` holds it.
    let mut observed = backend.observe().await.expect("observe");
    let holder = bounded("consul lock to hold the key", async {
        loop {
            if let Some(leader) = observed.next().await.expect("observe") {
                return leader;
            }
        }
    })
    .await;
    assert_ne!(holder.id, session.0);
    for _ in 0..3 {
        assert_eq!(
            backend
                .try_lead(key, &session, "m1")
                .await
                .expect("try_lead"),
            None,
            "a member must not lead while consul lock holds the key"
        );
    }
    assert!(backend
        .leader_value(key)
        .await
        .expect("leader value")
        .is_some());

    // The child ends: consul lock releases the key and exits.
    std::fs::write(&stop, "").expect("stop file");
    let status = bounded("consul lock to exit", lock.wait())
        .await
        .expect("wait");
    assert!(status.success(), "consul lock: {status}");
    let fence = bounded("try_lead to win the released key", async {
        loop {
            if let Some(fence) = backend
                .try_lead(key, &session, "m1")
                .await
                .expect("try_lead")
            {
                return fence;
            }
            observed.next().await.expect("observe");
        }
    })
    .await;
    assert!(fence.term() > holder.term, "a new term after the lock");
    assert_eq!(
        backend.leader_value(key).await.expect("value").as_deref(),
        Some("m1")
    );
    backend.close_session(&session).await.expect("close");
}

/// A session that resigned and won the key again has a new `ModifyIndex`: its
/// older fence stays rejected, the new one applies, and asking to lead again
/// while leading keeps the fence as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_fence_stays_rejected_when_the_same_session_leads_again() {
    let store = Consul::start().await;
    let backend = store.backend("r/leader");
    let session = backend.open_session(MIN_SESSION_TTL).await.expect("open");
    let first = backend
        .try_lead("r/leader", &session, "m1")
        .await
        .expect("try_lead")
        .expect("a free key is won");
    let again = backend
        .try_lead("r/leader", &session, "m1")
        .await
        .expect("try_lead")
        .expect("still leading");
    assert_eq!(again, first, "asking again while leading keeps the fence");
    let put = |k: &str| TxnOp::Put {
        key: format!("r/a/m1/{k}"),
        value: Bytes::from_static(b"v"),
    };
    assert!(matches!(
        backend.apply(&first, &[put("a")]).await.expect("apply"),
        TxnOutcome::Applied { .. }
    ));
    backend.resign(&first).await.expect("resign");
    let second = backend
        .try_lead("r/leader", &session, "m1")
        .await
        .expect("try_lead")
        .expect("the same session wins again");
    assert_ne!(second.revision(), first.revision());
    assert_eq!(
        backend.apply(&first, &[put("stale")]).await.expect("apply"),
        TxnOutcome::Fenced,
        "the older fence of the same session must be rejected"
    );
    assert!(store.agent.kv_get("r/a/m1/stale").await.is_none());
    assert!(matches!(
        backend
            .apply(&second, &[put("fresh")])
            .await
            .expect("apply"),
        TxnOutcome::Applied { .. }
    ));
    backend.close_session(&session).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_finds_an_item_under_two_members() {
    let store = Consul::start().await;
    conformance::takeover_finds_an_item_under_two_members(&store, "two/").await;
}

/// 130 values of 15 KiB (2.6 MB in base64, five times Consul's default
/// 512 KiB transaction) and one of 400 KiB (a KV value Consul takes, but no
/// transaction can carry in base64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_cut_to_the_store_limits() {
    let store = Consul::start().await;
    conformance::large_values_are_cut_to_the_store_limits(
        &store,
        "big/",
        130,
        15 * 1024,
        400 * 1024,
    )
    .await;
}

/// A token that may write the assignments and the sequence key but not read
/// the leader key: the fence's `check-session` is refused with `Permission
/// denied`. That is an error to report, not a lost leadership (`Fenced`
/// would make the leader step down and campaign again, in a loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_on_the_fence_is_an_error_not_fenced() {
    init_tracing();
    let agent = ConsulAgent::builder()
        .acl_master_token("master-token-for-tests")
        .start()
        .await;
    let rules = r#"key_prefix "acl8/a/" { policy = "write" }
key "acl8/sequence" { policy = "write" }
session_prefix "" { policy = "write" }"#;
    agent
        .cli([
            "acl",
            "policy",
            "create",
            "-name",
            "no-leader",
            "-rules",
            rules,
        ])
        .await;
    let out = agent
        .cli([
            "acl",
            "token",
            "create",
            "-policy-name",
            "no-leader",
            "-format",
            "json",
        ])
        .await;
    let token: serde_json::Value = serde_json::from_str(&out).expect("token json");
    let secret = token["SecretID"].as_str().expect("SecretID").to_owned();
    let with = |token: &str| {
        let mut config = backend_consul::ConsulConfig::new(vec![agent.http_addr()]);
        config.leader_key = "acl8/leader".into();
        config.token = Some(token.to_owned());
        ConsulBackend::new(config).expect("backend")
    };
    // The leadership itself, won with the master token.
    let admin = with("master-token-for-tests");
    let session = admin.open_session(MIN_SESSION_TTL).await.expect("open");
    let fence = admin
        .try_lead("acl8/leader", &session, "m1")
        .await
        .expect("try_lead")
        .expect("a free key is won");
    let limited = with(&secret);
    let ops = [
        TxnOp::Sequence {
            key: "acl8/sequence".into(),
            index: 0,
            value: Bytes::from_static(b"m1"),
        },
        TxnOp::Put {
            key: "acl8/a/m1/w1".into(),
            value: Bytes::from_static(b"v"),
        },
    ];
    let outcome = limited.apply(&fence, &ops).await;
    assert!(
        matches!(outcome, Err(worker_core::StoreError::PermissionDenied(_))),
        "{outcome:?}"
    );
    // With the master token the same transaction applies: the fence holds.
    assert!(matches!(
        admin.apply(&fence, &ops).await.expect("apply"),
        TxnOutcome::Applied { .. }
    ));
    admin.close_session(&session).await.expect("close");
}

/// The sequence key as `read_consistent` shows it (0: absent).
async fn sequence_of(backend: &ConsulBackend, key: &str) -> u64 {
    let read = backend
        .read_consistent(&[], &[key])
        .await
        .expect("read_consistent");
    read.keys[0].as_ref().map_or(0, |k| k.modified)
}

/// T1 (put `B/w`) times out at the client and waits on its way to Consul;
/// the leader reads again (no `B/w`, the sequence key where it was) and T2
/// puts `C/w`. Then Consul applies T1's request: its `cas` on the sequence
/// key fails (T2 moved it), so nothing of T1 applies and `w` stays under C
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_consul_applies_after_the_client_gave_up_fails_its_sequence_check() {
    let store = Consul::start().await;
    let direct = store.backend("late/leader");
    let proxy = FaultProxy::start(([127, 0, 0, 1], store.agent.port()).into()).await;
    let mut config = config_for(&store.agent);
    config.endpoints = vec![proxy.http_url()];
    config.leader_key = "late/leader".into();
    let slow = ConsulBackend::new(config).expect("backend");
    let session = direct.open_session(MIN_SESSION_TTL).await.expect("open");
    let fence = direct
        .try_lead("late/leader", &session, "m1")
        .await
        .expect("try_lead")
        .expect("a free key is won");
    // The test outlasts the session's TTL: keep it renewed.
    let renewer = {
        let (backend, session) = (direct.clone(), session.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = backend.renew_session(&session).await;
            }
        })
    };
    let seq = |index| TxnOp::Sequence {
        key: "late/sequence".into(),
        index,
        value: Bytes::from_static(b"m1"),
    };
    let put = |key: &str| TxnOp::Put {
        key: key.into(),
        value: Bytes::from_static(b"v"),
    };
    let s0 = sequence_of(&direct, "late/sequence").await;
    assert_eq!(s0, 0, "no sequence key yet");

    // The premise: without a sequence check, Consul applies a transaction
    // whose client gave up (it waits in the proxy longer than the client's
    // request timeout, 10 s).
    proxy.set_mode(ProxyMode::DelayLate(Duration::from_secs(12)));
    let before = proxy.bytes_from_target();
    let t0 = slow.apply(&fence, &[put("late/a/X/w")]).await;
    assert!(t0.is_err(), "the client gives up: {t0:?}");
    assert!(keys(&store.agent, "late/a/").await.is_empty());
    bounded(
        "Consul's answer to the late T0",
        proxy.target_sent_more_than(before),
    )
    .await;
    assert_eq!(
        keys(&store.agent, "late/a/").await,
        vec!["late/a/X/w".to_owned()],
        "Consul applied T0 after its client gave up"
    );
    direct
        .apply(
            &fence,
            &[TxnOp::Delete {
                key: "late/a/X/w".into(),
            }],
        )
        .await
        .expect("clean up");

    // T1, with the sequence check, waits the same way.
    let before = proxy.bytes_from_target();
    let t1 = slow.apply(&fence, &[seq(s0), put("late/a/B/w")]).await;
    assert!(t1.is_err(), "the client gives up: {t1:?}");
    // The leader reads again: T1 is not there; T2 expects the same position.
    assert!(keys(&store.agent, "late/a/").await.is_empty());
    let s1 = sequence_of(&direct, "late/sequence").await;
    assert_eq!(s1, s0);
    let TxnOutcome::Applied { revision } = direct
        .apply(&fence, &[seq(s1), put("late/a/C/w")])
        .await
        .expect("T2")
    else {
        panic!("T2 was not applied");
    };
    assert_eq!(
        revision,
        sequence_of(&direct, "late/sequence").await,
        "Applied.revision is the sequence key's new ModifyIndex"
    );
    // Consul gets T1 now, and answers it (a 409, which nobody reads).
    bounded(
        "Consul's answer to the late T1",
        proxy.target_sent_more_than(before),
    )
    .await;
    assert_eq!(
        keys(&store.agent, "late/a/").await,
        vec!["late/a/C/w".to_owned()]
    );
    assert_eq!(sequence_of(&direct, "late/sequence").await, revision);
    renewer.abort();
    direct.close_session(&session).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_a_zone_outage() {
    let store = Consul::start().await;
    let gap = conformance::replicas_survive_a_zone_outage(&store, "r/", false).await;
    println!("consul: longest time an item had no acknowledged primary: {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_replicas_survive_a_zone_outage() {
    let store = Consul::start().await;
    let gap = conformance::replicas_survive_a_zone_outage(&store, "rx/", true).await;
    println!("consul, exclusive: longest time an item had no acknowledged primary: {gap:?}");
}
