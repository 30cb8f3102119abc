//! The leader half on a real etcd: the member conformance suite, leases, and
//! the election against `etcdctl elect` campaigns.

use std::time::Duration;

use async_trait::async_trait;
use backend_etcd::{EtcdConfig, MAX_TXN_OPS};
use bytes::Bytes;
use etcd_client::{GetOptions, SortOrder, SortTarget};
use leader_core::conformance::{self, ClusterStore, Link};
use leader_core::{Layout, MemberStore};
use test_support::{EtcdServer, FaultProxy, ProxyMode};
use tokio::io::{AsyncBufReadExt, BufReader};
use worker_core::{Election, FencedWrite, LeaderWait, Membership, SessionId, TxnOp, TxnOutcome};

use crate::common::{addr_of, backend, init_tracing, plain_client, unique, WAIT};

/// The suite's store: a real etcd, a fresh backend per member.
struct EtcdMembers {
    urls: Vec<String>,
    client: etcd_client::Client,
}

impl EtcdMembers {
    async fn new(server: &EtcdServer) -> Self {
        Self {
            urls: server.client_urls(),
            client: plain_client(&server.client_urls()).await,
        }
    }
}

#[async_trait]
impl ClusterStore for EtcdMembers {
    async fn connect(&self, layout: &Layout) -> MemberStore {
        let etcd = backend(EtcdConfig::new(self.urls.clone()).with_election(&layout.leader)).await;
        MemberStore::from_backend(etcd)
    }
    fn ttl(&self) -> Duration {
        Duration::from_secs(3)
    }
    fn expiry_bound(&self) -> Duration {
        Duration::from_secs(30)
    }
    async fn put(&self, key: &str, value: &[u8]) {
        self.client
            .clone()
            .put(key, value, None)
            .await
            .expect("put");
    }
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let response = self
            .client
            .clone()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .expect("get");
        let mut keys: Vec<String> = response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        keys.sort();
        keys
    }
    async fn connect_cuttable(&self, layout: &Layout) -> (MemberStore, Box<dyn Link>) {
        let proxy = FaultProxy::start(addr_of(&self.urls[0])).await;
        let etcd =
            backend(EtcdConfig::new(vec![proxy.http_url()]).with_election(&layout.leader)).await;
        (MemberStore::from_backend(etcd), Box::new(ProxyLink(proxy)))
    }
    /// `etcdctl lease revoke`, with the plain client.
    async fn end_session(&self, session: &str) {
        let id = i64::from_str_radix(session, 16).expect("a session id is a lease id in hex");
        self.client
            .clone()
            .lease_revoke(id)
            .await
            .expect("lease revoke");
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

async fn suite() -> (EtcdServer, EtcdMembers, String) {
    init_tracing();
    let server = EtcdServer::start().await;
    let store = EtcdMembers::new(&server).await;
    let root = format!("{}/", unique("member"));
    (server, store, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_bound_keys() {
    let (_server, store, root) = suite().await;
    conformance::sessions_and_bound_keys(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_and_fencing() {
    let (_server, store, root) = suite().await;
    conformance::election_and_fencing(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_spread_work() {
    let (_server, store, root) = suite().await;
    conformance::members_spread_work(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_halt_hands_over() {
    let (_server, store, root) = suite().await;
    conformance::leader_halt_hands_over(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_another_leads() {
    let (_server, store, root) = suite().await;
    conformance::leader_killed_another_leads(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_within_rebalance_delay_moves_nothing() {
    let (_server, store, root) = suite().await;
    conformance::restart_within_rebalance_delay_moves_nothing(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_never_double_owns() {
    let (_server, store, root) = suite().await;
    conformance::handoff_never_double_owns(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() {
    let (_server, store, root) = suite().await;
    let r = conformance::rolling_restart(&store, &root, false).await;
    println!("etcd: rolling restart: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_exclusive() {
    let (_server, store, root) = suite().await;
    let r = conformance::rolling_restart(&store, &root, true).await;
    println!("etcd, exclusive: rolling restart: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_are_throttled() {
    let (_server, store, root) = suite().await;
    conformance::moves_are_throttled(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_cut_off_member_never_double_owns() {
    let (_server, store, root) = suite().await;
    conformance::exclusive_cut_off_member_never_double_owns(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_session_ended_while_cut_off_never_double_owns() {
    let (_server, store, root) = suite().await;
    conformance::exclusive_session_ended_while_cut_off_never_double_owns(&store, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns() {
    let (_server, store, root) = suite().await;
    conformance::with_the_margin_only_wait_a_session_ended_while_cut_off_double_owns(&store, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_member_has_its_session_ended_after_the_handoff_timeout() {
    let (_server, store, root) = suite().await;
    conformance::a_stuck_member_has_its_session_ended_after_the_handoff_timeout(&store, &root)
        .await;
}

/// The lease behind a session id (lowercase hex).
fn lease(session: &SessionId) -> i64 {
    i64::from_str_radix(&session.0, 16).expect("a session id is a lease id in hex")
}

/// Waits until `key` is deleted (a watch, so the deletion itself is the event).
async fn wait_deleted(client: &etcd_client::Client, key: &str, what: &str) {
    let mut client = client.clone();
    let mut stream = client.watch(key, None).await.expect("watch");
    if client.get(key, None).await.expect("get").kvs().is_empty() {
        return;
    }
    tokio::time::timeout(WAIT, async {
        loop {
            let response = stream.message().await.expect("watch").expect("watch open");
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == etcd_client::EventType::Delete)
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"));
}

/// Leases as sessions: the TTL is rounded up to whole seconds (and raised to
/// etcd's minimum), a bound key carries the lease, another lease cannot take
/// it, and a lease that expires takes its key and cannot be renewed or bound
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_hold_bound_keys_until_they_expire() {
    init_tracing();
    let server = EtcdServer::start().await;
    let etcd = backend(EtcdConfig::new(server.client_urls())).await;
    let mut client = plain_client(&server.client_urls()).await;
    let root = unique("lease");
    let key = format!("{root}/members/a");

    let rounded = etcd
        .open_session(Duration::from_millis(2_500))
        .await
        .expect("open");
    let ttl = client
        .lease_time_to_live(lease(&rounded), None)
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 3, "2.5 s rounds up to 3 s");
    let raised = etcd
        .open_session(Duration::from_millis(300))
        .await
        .expect("open");
    let ttl = client
        .lease_time_to_live(lease(&raised), None)
        .await
        .expect("ttl");
    assert!(
        ttl.granted_ttl() >= 2,
        "etcd raises a TTL below its minimum: {}",
        ttl.granted_ttl()
    );
    // etcdctl names sessions the way the backend does.
    let listed = server.ctl(["lease", "list"]).await;
    assert!(listed.contains(&rounded.0), "{rounded} not in {listed}");
    etcd.close_session(&rounded).await.expect("close");

    // `raised` holds the key; another lease cannot take it; the holder can
    // write it again.
    assert!(etcd
        .put_bound(&raised, &key, Bytes::from_static(b"{}"))
        .await
        .expect("put_bound"));
    let other = etcd
        .open_session(Duration::from_secs(30))
        .await
        .expect("open");
    assert!(!etcd
        .put_bound(&other, &key, Bytes::from_static(b"x"))
        .await
        .expect("put_bound"));
    assert!(etcd
        .put_bound(&raised, &key, Bytes::from_static(b"{\"weight\":2}"))
        .await
        .expect("put_bound again"));
    let got = client.get(key.as_str(), None).await.expect("get");
    let kv = &got.kvs()[0];
    assert_eq!(kv.lease(), lease(&raised));
    assert_eq!(kv.value(), b"{\"weight\":2}");
    assert!(etcd.renew_session(&raised).await.expect("renew"));

    // Not renewed: etcd expires the lease and deletes its key.
    wait_deleted(&client, &key, "the expired lease's key to go").await;
    assert!(!etcd.renew_session(&raised).await.expect("renew"));
    assert!(!etcd
        .put_bound(&raised, &key, Bytes::from_static(b"{}"))
        .await
        .expect("put_bound on an expired lease"));
    etcd.close_session(&raised)
        .await
        .expect("closing an expired lease is no error");
    // Now free: the other lease takes it.
    assert!(etcd
        .put_bound(&other, &key, Bytes::from_static(b"x"))
        .await
        .expect("put_bound"));
    etcd.close_session(&other).await.expect("close");
    assert_eq!(etcd.max_ops(), MAX_TXN_OPS);
}

/// `etcdctl elect NAME PROPOSAL` as a child process, killed when dropped.
struct Outsider {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Outsider {
    fn start(server: &EtcdServer, election: &str, proposal: &str) -> Self {
        let mut child = server
            .cluster()
            .etcdctl(["elect", election, proposal])
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl elect");
        let stdout = child.stdout.take().expect("stdout piped");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Waits until etcdctl prints the leader key (it was elected).
    async fn wait_elected(&mut self) {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("etcdctl elect: not elected in time")
            .expect("read etcdctl output");
        assert!(line.is_some(), "etcdctl elect exited without being elected");
    }
}

/// The keys under `<election>/`, oldest campaign first, with their leases.
async fn candidates(client: &etcd_client::Client, election: &str) -> Vec<(String, i64)> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let response = client
        .clone()
        .get(format!("{election}/"), Some(options))
        .await
        .expect("get");
    response
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect()
}

/// A campaign held by `etcdctl elect` keeps `try_lead` at `None` (our key
/// queued behind it), even after the etcdctl process is killed, as long as its
/// lease lives; once the lease is gone, `try_lead` leads, with the leader the
/// backend's `LeaderWait` reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcdctl_campaign_keeps_members_from_leading_until_its_lease_ends() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("outsider/leader");
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await;
    let client = plain_client(&server.client_urls()).await;

    let mut outsider = Outsider::start(&server, &election, "outsider");
    outsider.wait_elected().await;
    let session = etcd
        .open_session(Duration::from_secs(3))
        .await
        .expect("open");
    assert_eq!(
        etcd.try_lead(&election, &session, "m1").await.expect("try"),
        None,
        "led while etcdctl elect holds the election"
    );
    assert_eq!(
        etcd.leader_value(&election)
            .await
            .expect("value")
            .as_deref(),
        Some("outsider")
    );
    assert_eq!(
        etcd.leader()
            .await
            .expect("leader")
            .map(|l| l.id)
            .as_deref(),
        Some("outsider")
    );
    // Our candidacy is etcd's: `<election>/<lease in hex>`, on our lease,
    // queued behind the outsider's key.
    let ours = format!("{election}/{}", session.0);
    let queued = candidates(&client, &election).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!(queued[1], (ours.clone(), lease(&session)));
    let (outsider_key, outsider_lease) = queued[0].clone();
    assert_eq!(outsider_key, format!("{election}/{outsider_lease:x}"));

    // Killed, the process leaves its lease (etcdctl's session TTL is 60 s):
    // the campaign still holds.
    outsider.child.start_kill().expect("SIGKILL etcdctl");
    tokio::time::timeout(WAIT, outsider.child.wait())
        .await
        .expect("etcdctl did not die")
        .expect("wait etcdctl");
    assert!(etcd.renew_session(&session).await.expect("renew"));
    assert_eq!(
        etcd.try_lead(&election, &session, "m1").await.expect("try"),
        None,
        "led while the dead campaigner's lease lives"
    );
    assert_eq!(candidates(&client, &election).await.len(), 2);

    // Its lease ends (revoked here rather than waiting 60 s for the expiry):
    // the queued candidate leads.
    server
        .ctl(["lease", "revoke", &format!("{outsider_lease:x}")])
        .await;
    let mut stream = etcd.observe().await.expect("observe");
    let fence = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(f) = etcd.try_lead(&election, &session, "m1").await.expect("try") {
                return f;
            }
            assert!(etcd.renew_session(&session).await.expect("renew"));
            stream.next().await.expect("observe");
        }
    })
    .await
    .expect("the queued candidate did not lead after the outsider's lease ended");
    assert_eq!(fence.key(), ours);
    assert_eq!(fence.session(), &session);
    let observed = etcd.leader().await.expect("leader").expect("a leader");
    assert_eq!(
        *fence.leader(),
        observed,
        "the fence reports what LeaderWait does"
    );
    assert_eq!(observed.id, "m1");
    let created = client
        .clone()
        .get(ours.as_str(), None)
        .await
        .expect("get")
        .kvs()[0]
        .create_revision();
    assert_eq!(fence.term(), u64::try_from(created).unwrap());
    assert_eq!(
        fence.revision(),
        fence.term(),
        "etcd: the create revision is the term"
    );
    assert_eq!(
        etcd.leader_value(&election)
            .await
            .expect("value")
            .as_deref(),
        Some("m1")
    );
    etcd.close_session(&session).await.expect("close");
}

/// A member's leadership is an etcd election leadership: `etcdctl elect`
/// queues behind it and is elected when the member resigns; the member's old
/// fence is then rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_queues_behind_a_member_and_fences_it_after_resigning() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("queue/leader");
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await;
    let client = plain_client(&server.client_urls()).await;
    let root = unique("queue");
    let session = etcd
        .open_session(Duration::from_secs(30))
        .await
        .expect("open");
    let fence = etcd
        .try_lead(&election, &session, "m1")
        .await
        .expect("try")
        .expect("m1 leads a free election");

    let mut second = Outsider::start(&server, &election, "second");
    test_support::poll_until("etcdctl's queued campaign key", WAIT, || {
        let client = client.clone();
        let election = election.clone();
        async move { (candidates(&client, &election).await.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(
        etcd.try_lead(&election, &session, "m1").await.expect("try"),
        Some(fence.clone()),
        "a queued outsider does not end the member's term"
    );
    let put = |k: &str| TxnOp::Put {
        key: format!("{root}/assignments/{k}"),
        value: Bytes::from_static(b"v"),
    };
    assert!(matches!(
        etcd.apply(&fence, &[put("a")]).await.expect("apply"),
        TxnOutcome::Applied { .. }
    ));

    etcd.resign(&fence).await.expect("resign");
    second.wait_elected().await;
    assert_eq!(
        etcd.leader()
            .await
            .expect("leader")
            .map(|l| l.id)
            .as_deref(),
        Some("second")
    );
    assert_eq!(
        etcd.apply(&fence, &[put("stale")]).await.expect("apply"),
        TxnOutcome::Fenced
    );
    let stale = client
        .clone()
        .get(format!("{root}/assignments/stale"), None)
        .await
        .expect("get");
    assert!(stale.kvs().is_empty(), "a fenced write was applied");
    // Asking again queues behind etcdctl.
    assert_eq!(
        etcd.try_lead(&election, &session, "m1").await.expect("try"),
        None
    );
    etcd.close_session(&session).await.expect("close");
}

/// The fence is the leader key's create revision, not its name or lease: after
/// resigning, the same lease leads again under the same key name with a new
/// term, and the old fence stays rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_fence_stays_rejected_when_the_same_lease_leads_again() {
    init_tracing();
    let server = EtcdServer::start().await;
    let election = unique("again/leader");
    let etcd = backend(EtcdConfig::new(server.client_urls()).with_election(&election)).await;
    let client = plain_client(&server.client_urls()).await;
    let root = unique("again");
    let put = |k: &str| TxnOp::Put {
        key: format!("{root}/assignments/{k}"),
        value: Bytes::from_static(b"v"),
    };
    let session = etcd
        .open_session(Duration::from_secs(30))
        .await
        .expect("open");
    let first = etcd
        .try_lead(&election, &session, "m1")
        .await
        .expect("try")
        .expect("m1 leads a free election");
    etcd.resign(&first).await.expect("resign");
    let second = etcd
        .try_lead(&election, &session, "m1")
        .await
        .expect("try")
        .expect("m1 leads again");
    assert_eq!(second.key(), first.key(), "one candidate key per lease");
    assert!(second.term() > first.term(), "{second:?} after {first:?}");
    assert_eq!(
        etcd.apply(&first, &[put("stale")]).await.expect("apply"),
        TxnOutcome::Fenced,
        "a resigned term's fence must be rejected"
    );
    assert!(matches!(
        etcd.apply(&second, &[put("fresh")]).await.expect("apply"),
        TxnOutcome::Applied { .. }
    ));
    let stale = client
        .clone()
        .get(format!("{root}/assignments/stale"), None)
        .await
        .expect("get");
    assert!(stale.kvs().is_empty(), "a fenced write was applied");
    // A resignation with the old fence leaves the new term alone.
    etcd.resign(&first).await.expect("resign a lost term");
    assert_eq!(
        etcd.try_lead(&election, &session, "m1").await.expect("try"),
        Some(second)
    );
    etcd.close_session(&session).await.expect("close");
    assert_eq!(etcd.leader().await.expect("leader"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_finds_an_item_under_two_members() {
    let (_server, store, root) = suite().await;
    conformance::takeover_finds_an_item_under_two_members(&store, &root).await;
}

/// 130 values of 15 KiB (1.9 MB in 127 operations: more than etcd's
/// default 1.5 MiB request) and one value that etcd stores but no
/// transaction can assign with the fence and a handoff record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_cut_to_the_store_limits() {
    let (_server, store, root) = suite().await;
    conformance::large_values_are_cut_to_the_store_limits(
        &store,
        &root,
        130,
        15 * 1024,
        1_572_864 - 400,
    )
    .await;
}

/// The sequence key as `read_consistent` shows it (0: absent).
async fn sequence_of(backend: &backend_etcd::EtcdBackend, key: &str) -> u64 {
    let read = backend
        .read_consistent(&[], &[key])
        .await
        .expect("read_consistent");
    read.keys[0].as_ref().map_or(0, |k| k.modified)
}

/// T1 (put `B/w`) times out at the client while its request waits on the
/// way to etcd (the proxy drops the client's `RST_STREAM` and keeps etcd's
/// side of the connection open, as when the request is already in etcd's
/// queue); the leader reads again (no `B/w`, the sequence key where it was)
/// and T2 puts `C/w`. Then etcd gets T1: its `mod_revision` compare on the
/// sequence key fails (T2 moved it), so nothing of T1 applies. A T0 without
/// the sequence check first shows that etcd does apply such a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_etcd_applies_after_the_client_gave_up_fails_its_sequence_check() {
    let (server, store, root) = suite().await;
    let direct =
        backend(EtcdConfig::new(server.client_urls()).with_election(format!("{root}leader"))).await;
    let proxy = FaultProxy::start_h2(addr_of(&server.client_url())).await;
    let slow = backend(
        EtcdConfig::new(vec![proxy.http_url()])
            .with_election(format!("{root}leader"))
            .with_keepalive(Duration::from_secs(2)),
    )
    .await;
    let session = direct
        .open_session(Duration::from_secs(60))
        .await
        .expect("open");
    let election = format!("{root}leader");
    let fence = direct
        .try_lead(&election, &session, "m1")
        .await
        .expect("try_lead")
        .expect("a free election is won");
    let seq_key = format!("{root}sequence");
    let seq = |index| TxnOp::Sequence {
        key: seq_key.clone(),
        index,
        value: Bytes::from_static(b"m1"),
    };
    let put = |key: &str| TxnOp::Put {
        key: format!("{root}a/{key}"),
        value: Bytes::from_static(b"v"),
    };
    let prefix = format!("{root}a/");
    let assigned = || store.keys(&prefix);
    // The connection through the proxy is up before the delay starts.
    assert_eq!(sequence_of(&slow, &seq_key).await, 0);

    // The premise: etcd applies a request whose client gave up.
    proxy.set_mode(ProxyMode::DelayLate(Duration::from_secs(4)));
    let before = proxy.bytes_from_target();
    let t0 = slow.apply(&fence, &[put("X/w")]).await;
    assert!(t0.is_err(), "the client gives up: {t0:?}");
    assert!(assigned().await.is_empty());
    tokio::time::timeout(WAIT, proxy.target_sent_more_than(before))
        .await
        .expect("etcd's answer to the late T0");
    // The bytes may be a keepalive's answer that overtook T0's: wait for
    // T0's write itself, with a bound.
    let landed = tokio::time::timeout(WAIT, async {
        loop {
            let keys = assigned().await;
            if !keys.is_empty() {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("etcd applied T0 after its client gave up");
    assert_eq!(landed, vec![format!("{root}a/X/w")]);
    direct
        .apply(
            &fence,
            &[TxnOp::Delete {
                key: format!("{root}a/X/w"),
            }],
        )
        .await
        .expect("clean up");

    // T1, with the sequence check, waits the same way.
    let s0 = sequence_of(&direct, &seq_key).await;
    let before = proxy.bytes_from_target();
    let t1 = slow.apply(&fence, &[seq(s0), put("B/w")]).await;
    assert!(t1.is_err(), "the client gives up: {t1:?}");
    assert!(assigned().await.is_empty());
    let s1 = sequence_of(&direct, &seq_key).await;
    assert_eq!(s1, s0, "T1 has not landed yet");
    let TxnOutcome::Applied { revision } = direct
        .apply(&fence, &[seq(s1), put("C/w")])
        .await
        .expect("T2")
    else {
        panic!("T2 was not applied");
    };
    assert_eq!(
        revision,
        sequence_of(&direct, &seq_key).await,
        "Applied.revision is the sequence key's new mod_revision"
    );
    tokio::time::timeout(WAIT, proxy.target_sent_more_than(before))
        .await
        .expect("etcd's answer to the late T1");
    assert_eq!(assigned().await, vec![format!("{root}a/C/w")]);
    assert_eq!(sequence_of(&direct, &seq_key).await, revision);
    direct.close_session(&session).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_a_zone_outage() {
    let (_server, store, root) = suite().await;
    let gap = conformance::replicas_survive_a_zone_outage(&store, &root, false).await;
    println!("etcd: longest time an item had no acknowledged primary: {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_replicas_survive_a_zone_outage() {
    let (_server, store, root) = suite().await;
    let gap = conformance::replicas_survive_a_zone_outage(&store, &root, true).await;
    println!("etcd, exclusive: longest time an item had no acknowledged primary: {gap:?}");
}
