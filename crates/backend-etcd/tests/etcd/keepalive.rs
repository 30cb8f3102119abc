//! Lease renewals on one long-lived `LeaseKeepAlive` stream per lease, counted
//! both by the backend and by etcd itself (`/metrics` on the client URL:
//! `grpc_server_started_total{grpc_method="LeaseKeepAlive"}`), and re-opened
//! when a fault breaks the stream or its endpoint dies.

use std::time::Duration;

use backend_etcd::EtcdConfig;
use test_support::{EtcdServer, FaultProxy, ProxyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use worker_core::{Membership, StoreError};

use crate::common::{addr_of, backend, init_tracing, WAIT};

/// How many `LeaseKeepAlive` calls the etcd serving `client_url` has started.
async fn keep_alive_calls(client_url: &str) -> u64 {
    let mut tcp = tokio::net::TcpStream::connect(addr_of(client_url))
        .await
        .expect("connect to etcd's client URL");
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await
        .expect("ask /metrics");
    let mut body = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut body))
        .await
        .expect("/metrics timed out")
        .expect("read /metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total{")
                && l.contains("grpc_method=\"LeaseKeepAlive\"")
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("not a counter line: {l}"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_renewals_of_one_lease_use_one_stream() {
    init_tracing();
    let server = EtcdServer::start().await;
    let url = server.client_url();
    let a = backend(EtcdConfig::new(server.client_urls())).await;
    let b = backend(EtcdConfig::new(server.client_urls())).await;
    let ttl = Duration::from_secs(3);
    let sa = a.open_session(ttl).await.expect("open a");
    let sb = b.open_session(ttl).await.expect("open b");
    let before = keep_alive_calls(&url).await;
    for _ in 0..30 {
        assert!(a.renew_session(&sa).await.expect("renew a"));
        assert!(b.renew_session(&sb).await.expect("renew b"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each member (its own backend) has its own stream, and only one.
    assert_eq!(a.keep_alive_streams_opened(), 1);
    assert_eq!(b.keep_alive_streams_opened(), 1);
    assert_eq!(
        keep_alive_calls(&url).await - before,
        2,
        "etcd started calls"
    );

    // A closed lease answers "gone" and its stream is not reused; a new lease
    // gets a new stream.
    a.close_session(&sa).await.expect("close");
    assert!(!a.renew_session(&sa).await.expect("renew a closed lease"));
    let sa2 = a.open_session(ttl).await.expect("open a again");
    for _ in 0..5 {
        assert!(a.renew_session(&sa2).await.expect("renew the new lease"));
    }
    assert_eq!(a.keep_alive_streams_opened(), 3);
    assert_eq!(keep_alive_calls(&url).await - before, 4);

    // A lease that expires while its stream is open: TTL 0 on that stream.
    let short = a.open_session(Duration::from_secs(1)).await.expect("open");
    assert!(a.renew_session(&short).await.expect("renew"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!a
        .renew_session(&short)
        .await
        .expect("renew an expired lease"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_is_reopened_and_renewals_go_on() {
    init_tracing();
    let server = EtcdServer::start().await;
    let url = server.client_url();
    let proxy = FaultProxy::start(addr_of(&url)).await;
    let keepalive = Duration::from_secs(2);
    let m = backend(EtcdConfig::new(vec![proxy.http_url()]).with_keepalive(keepalive)).await;
    let session = m.open_session(Duration::from_secs(30)).await.expect("open");
    let before = keep_alive_calls(&url).await;
    for _ in 0..5 {
        assert!(m.renew_session(&session).await.expect("renew"));
    }
    assert_eq!(m.keep_alive_streams_opened(), 1);

    // The connection is reset between two renewals: the next one finds its
    // stream broken and opens another.
    proxy.set_mode(ProxyMode::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set_mode(ProxyMode::PassThrough);
    let mut renewed = false;
    for _ in 0..10 {
        match m.renew_session(&session).await {
            Ok(alive) => {
                assert!(alive);
                renewed = true;
                break;
            }
            Err(e) => {
                eprintln!("renewal after the reset: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(renewed, "renewals go on after the reset");
    let after_reset = m.keep_alive_streams_opened();
    assert!(after_reset >= 2, "a new stream: {after_reset}");
    for _ in 0..5 {
        assert!(m.renew_session(&session).await.expect("renew"));
    }
    assert_eq!(m.keep_alive_streams_opened(), after_reset, "and it is kept");

    // A silent connection: the renewal gets no answer and fails within the
    // request timeout (`keepalive`); once the network is back, a new stream.
    proxy.set_mode(ProxyMode::BlackHole);
    let started = tokio::time::Instant::now();
    let e = m.renew_session(&session).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Timeout(_) | StoreError::Unavailable(_)),
        "{e:?}"
    );
    assert!(started.elapsed() < keepalive * 2, "{:?}", started.elapsed());
    proxy.set_mode(ProxyMode::PassThrough);
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.renew_session(&session).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewals never resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reopened = m.keep_alive_streams_opened();
    assert!(reopened > after_reset, "{reopened}");
    for _ in 0..5 {
        assert!(m.renew_session(&session).await.expect("renew"));
    }
    assert_eq!(m.keep_alive_streams_opened(), reopened);
    let started_calls = keep_alive_calls(&url).await - before;
    assert!(
        started_calls <= reopened,
        "etcd started {started_calls} calls, the backend opened {reopened}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_dead_endpoint_is_replaced_on_the_next() {
    init_tracing();
    let server = EtcdServer::start().await;
    let url = server.client_url();
    // Two endpoints to the same etcd: through a proxy (to be cut), and direct.
    let proxy = FaultProxy::start(addr_of(&url)).await;
    let keepalive = Duration::from_secs(2);
    let m = backend(EtcdConfig::new(vec![proxy.http_url(), url.clone()]).with_keepalive(keepalive))
        .await;
    let session = m.open_session(Duration::from_secs(30)).await.expect("open");
    assert!(m.renew_session(&session).await.expect("renew"));
    assert_eq!(m.current_endpoint(), proxy.http_url());
    assert_eq!(m.keep_alive_streams_opened(), 1);

    proxy.set_mode(ProxyMode::BlackHole);
    let started = tokio::time::Instant::now();
    assert!(m
        .renew_session(&session)
        .await
        .expect("renewed on the other endpoint"));
    assert!(started.elapsed() < keepalive * 3, "{:?}", started.elapsed());
    assert_eq!(m.current_endpoint(), url);
    assert_eq!(m.keep_alive_streams_opened(), 2);
    for _ in 0..5 {
        assert!(m.renew_session(&session).await.expect("renew"));
    }
    assert_eq!(m.keep_alive_streams_opened(), 2, "the new stream is kept");
}
