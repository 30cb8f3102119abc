//! Sessions bound to an agent check (`ConsulConfig::session_check`) on a
//! real agent: the session names the check and `serfHealth`, lives while
//! renewals pass the check, and ends once the check's TTL passes without
//! one — on time, where a plain session TTL (10 s at least) would take 1 to
//! 2 × TTL. Where the ACL token may not register the check, sessions fall
//! back to a plain TTL.

mod common;

use std::time::{Duration, Instant};

use backend_consul::ConsulBackend;
use common::{config_for, init_tracing};
use serde_json::Value;
use test_support::ConsulAgent;
use worker_core::{Membership, SessionId};

/// The session's record, or `None` once it is gone.
async fn session_info(
    agent: &ConsulAgent,
    token: Option<&str>,
    session: &SessionId,
) -> Option<Value> {
    let url = format!("{}/v1/session/info/{}", agent.http_addr(), session.0);
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.header("X-Consul-Token", t);
    }
    let body = request
        .send()
        .await
        .expect("session info")
        .bytes()
        .await
        .expect("body");
    let infos: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    infos.into_iter().next()
}

fn service_checks(info: &Value) -> Vec<String> {
    info["ServiceChecks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["ID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_bound_to_its_check_ends_once_the_check_is_not_passed() {
    init_tracing();
    let agent = ConsulAgent::start_dev().await;
    let mut config = config_for(&agent);
    config.session_check = Some("coordinator-m1".to_owned());
    let backend = ConsulBackend::new(config).expect("backend");
    let ttl = Duration::from_secs(2);
    let session = backend.open_session(ttl).await.expect("open");
    let info = session_info(&agent, None, &session)
        .await
        .expect("the session");
    assert_eq!(service_checks(&info), ["service:coordinator-m1"], "{info}");
    assert_eq!(
        info["NodeChecks"],
        serde_json::json!(["serfHealth"]),
        "{info}"
    );
    assert_eq!(
        info["TTL"], "10s",
        "the plain TTL stays as a backstop: {info}"
    );

    // Renewals (each passes the check) keep it alive past the check's TTL.
    let started = Instant::now();
    while started.elapsed() < ttl * 2 {
        assert!(backend.renew_session(&session).await.expect("renew"));
        tokio::time::sleep(ttl / 4).await; // the renewal cadence, not a wait for an event
    }
    assert!(session_info(&agent, None, &session).await.is_some());

    // The process stops renewing (as if killed): the agent turns the check
    // critical after its TTL and the session ends with it, well before the
    // 10 s session TTL could.
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(8);
    while session_info(&agent, None, &session).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the session outlived its check's TTL ({ttl:?}) by more than 6 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(8), "ended after {took:?}");
    // The member restarted with the same id (a new process, nothing passed
    // in between): the agent keeps the critical status of a check registered
    // again, and would refuse a session bound to it; the backend passes it.
    let mut restarted = config_for(&agent);
    restarted.session_check = Some("coordinator-m1".to_owned());
    let restarted = ConsulBackend::new(restarted).expect("backend");
    let fresh = restarted
        .open_session(ttl)
        .await
        .expect("a restarted member opens its session at once");
    assert!(restarted.renew_session(&fresh).await.expect("renew"));
    restarted.close_session(&fresh).await.expect("close");
    // The next renewal says it is gone; a new session registers the check again.
    assert!(!backend.renew_session(&session).await.expect("renew"));
    let again = backend.open_session(ttl).await.expect("open again");
    assert!(backend.renew_session(&again).await.expect("renew"));
    backend.close_session(&again).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_service_write_sessions_fall_back_to_a_plain_ttl() {
    init_tracing();
    let agent = ConsulAgent::builder()
        .acl_master_token("session-check-master")
        .start()
        .await;
    let sessions_only = agent
        .acl_token(
            "sessions-only",
            "session_prefix \"\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"read\" }\n",
        )
        .await;
    let with_service = agent
        .acl_token(
            "with-service",
            "session_prefix \"\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"read\" }\nservice \"coordinator\" { policy = \"write\" }\n",
        )
        .await;
    let master = agent.token().map(str::to_owned);

    for (secret, bound) in [(sessions_only, false), (with_service, true)] {
        let mut config = config_for(&agent);
        config.token = Some(secret);
        config.session_check = Some(format!("coordinator-{bound}"));
        let backend = ConsulBackend::new(config).expect("backend");
        let session = backend
            .open_session(Duration::from_secs(10))
            .await
            .expect("a session either way");
        assert!(backend.renew_session(&session).await.expect("renew"));
        let info = session_info(&agent, master.as_deref(), &session)
            .await
            .expect("the session");
        if bound {
            assert_eq!(
                service_checks(&info),
                ["service:coordinator-true"],
                "{info}"
            );
        } else {
            assert!(service_checks(&info).is_empty(), "{info}");
            // Tried once: later sessions do not ask again.
            let second = backend
                .open_session(Duration::from_secs(10))
                .await
                .expect("open");
            backend.close_session(&second).await.expect("close");
        }
        backend.close_session(&session).await.expect("close");
    }
}
