//! The scenario itself, one size on a fresh store: start-up, the bare loop,
//! a follower killed, a member joining, a bulk add, the idle window, and
//! last the followers and the leader killed to weigh them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leader_core::{Layout, Member, MemberConfig};
use tokio::sync::Notify;
use worker_core::TxnOp;

use super::balance::{assignment_pairs, balanced, workers_balanced, workloads_hold};
use super::bare::{bare_loop, bare_op, BARE_SEGMENT};
use super::cluster::{drain, forward, member_id, member_store, Lanes};
use super::observer::{observer_kv, Observer};
use super::outcome::{Bulk, Change, Idle, Memory, Outcome, Rate, Writes};
use super::recording::{take_log, Sent, SentLog};
use super::settings::Params;
use super::STAGE_TIMEOUT;
use crate::measure::{fmt_bytes, other_process_cpu_ns, process_cpu_us, rss_bytes, Allocs};
use crate::proxy::ChildProxy;
use crate::stores::{Kind, Op, Store};

/// Runs one size on a fresh store.
#[allow(clippy::too_many_lines)] // One straight sequence of measurements, easier to follow whole.
pub async fn run(
    kind: Kind,
    (n, items): (usize, usize),
    params: &Params,
    lanes: &Lanes,
) -> Outcome {
    let ttl = params.ttl(kind, n);
    let mut outcome = Outcome {
        kind,
        members: n,
        items,
        ttl,
        detection_bound: params.detection_bound(kind, n),
        startup: Err("not reached".to_owned()),
        kill: Err("not reached".to_owned()),
        join: Err("not reached".to_owned()),
        idle: Err("not reached".to_owned()),
        soaks: (params.leader_soak, params.worker_soak),
        startup_plans: Vec::new(),
        writes: Err("not reached".to_owned()),
        bulk: Err("not reached".to_owned()),
        memory: Err("not reached".to_owned()),
    };
    eprintln!("[leader] {kind}: {n} members, {items} items: starting the store");
    let store = Store::start(kind).await;
    let layout = Layout::default();
    let writer = store.writer(lanes.writer.clone()).await;
    writer
        .bulk(
            (0..items)
                .map(|k| Op::Put(format!("{}w{k:05}", layout.work), format!("p{k}")))
                .collect(),
        )
        .await;
    let (target, protocol) = store.proxy_target();
    // In a process of its own: 1,000 members on Consul hold about 5,000
    // connections, and the proxy two descriptors for each.
    let proxy = ChildProxy::start(target, protocol);
    let pid = store.pid();
    let kv = observer_kv(kind, store.endpoint(), &lanes.observe).await;
    // Before anything that lives as long as the members.
    let (heap0, rss0) = (Allocs::now().live, rss_bytes());
    let mut members_obs = Observer::start(kv.clone(), &layout.members, &lanes.observe).await;

    let config = |id: &str| {
        MemberConfig::new(id)
            .layout(layout.clone())
            .ttl(ttl)
            .leader_soak(params.leader_soak)
            .worker_timing(params.worker_soak, params.leader_settle)
    };
    let log: SentLog = Arc::default();
    let notify = Arc::new(Notify::new());
    let mut forwarders = Vec::new();
    let mut members = BTreeMap::new();
    let mut plans = Vec::new();
    let t0 = Instant::now();
    // The first member alone, on its own thread, until it leads.
    let first = {
        let (config, url, layout, log) = (
            config(&member_id(0)),
            proxy.url(),
            layout.clone(),
            log.clone(),
        );
        lanes
            .leader
            .run(async move {
                Member::spawn(&config, &member_store(kind, url, &layout, Some(&log)).await)
            })
            .await
            .expect("member config")
    };
    let mut leading = first.leading();
    if tokio::time::timeout(STAGE_TIMEOUT, leading.wait_for(Option::is_some))
        .await
        .is_err()
    {
        eprintln!("[leader] {kind}: the first member does not lead");
    }
    plans.push(first.plans());
    forwarders.push(forward(&first, &notify));
    members.insert(member_id(0), first);
    for j in 1..n {
        let id = member_id(j);
        let m = Member::spawn(
            &config(&id),
            &member_store(kind, proxy.url(), &layout, Some(&log)).await,
        )
        .expect("member config");
        plans.push(m.plans());
        forwarders.push(forward(&m, &notify));
        members.insert(id, m);
    }
    let mut live: BTreeSet<String> = members.keys().cloned().collect();
    outcome.startup = workers_balanced(&members, &live, items, &notify, "startup")
        .await
        .map(|at| at.duration_since(t0));
    eprintln!(
        "[leader] {kind}: {n}×{items}: startup {:?}",
        outcome.startup
    );
    heap_note(kind, "after start-up");
    let mut memory = Memory {
        rss_growth: rss_bytes().saturating_sub(rss0),
        heap_growth: Allocs::now().live - heap0,
        conns_per_member: proxy.counts().connections as f64 / n as f64,
        fds: open_fds("self"),
        store_fds: open_fds(&pid.to_string()),
        ..Memory::default()
    };

    if outcome.startup.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        outcome.startup_plans = drain(&mut plans);
        let sent = take_log(&log);
        let leader = Rate::of(&sent);
        let txns: Vec<Vec<TxnOp>> = sent
            .into_iter()
            .filter(|t| t.applied)
            .map(|t| t.ops)
            .collect();
        eprintln!(
            "[leader] {kind}: bare loop of the leader's {} start-up transactions",
            txns.len()
        );
        let (url, bare_layout, bare_txns) = (proxy.url(), layout.clone(), txns.clone());
        outcome.writes = lanes
            .leader
            .run(async move { bare_loop(kind, url, &bare_layout, ttl, &bare_txns, true).await })
            .await
            .map(|bare| Writes { leader, bare });
        // The bare loop's own keys (not the assignments) go as they came, a
        // transaction at a time (one delete of 100,000 keys holds etcd's
        // apply loop for seconds, long enough for the members' leases to
        // expire); then the values go back as the leader wrote them (not
        // timed, its fence anew), and every worker settles on them again.
        let bare_own: BTreeSet<String> = txns
            .iter()
            .flatten()
            .filter(|op| !matches!(op, TxnOp::Absent { .. }))
            .map(|op| bare_op(&layout, op, false).key().to_owned())
            .filter(|key| key.contains(BARE_SEGMENT))
            .collect();
        writer
            .bulk(bare_own.iter().cloned().map(Op::Del).collect())
            .await;
        let (url, bare_layout, bare_txns) = (proxy.url(), layout.clone(), txns.clone());
        let restored = lanes
            .leader
            .run(async move { bare_loop(kind, url, &bare_layout, ttl, &bare_txns, false).await })
            .await;
        let settled = match restored {
            Ok(_) => workloads_hold(&members, &layout, &txns, &notify).await,
            Err(e) => Err(e),
        };
        if let Err(e) = settled {
            outcome.writes = Err(format!("restoring after the bare loop: {e}"));
        }
        writer
            .bulk(bare_own.into_iter().map(Op::Del).collect())
            .await;
        eprintln!("[leader] {kind}: writes: {:?}", outcome.writes);
        heap_note(kind, "after the bare loop");
    }
    // Started only now: on Consul each change of the assignments makes it
    // read them all, which would weigh on the store during start-up.
    let mut assign_obs = Observer::start(kv, &layout.assignments, &lanes.observe).await;

    if outcome.startup.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&mut plans);
        // Kill a member that does not lead.
        let victim = members
            .iter()
            .find(|(_, m)| !m.is_leader())
            .map(|(id, _)| id.clone())
            .expect("a follower");
        let victim_key = format!("{}{victim}", layout.members);
        live.remove(&victim);
        let handle = members.remove(&victim).expect("victim");
        eprintln!("[leader] {kind}: killing {victim}");
        let t = Instant::now();
        handle.kill().await;
        outcome.kill = async {
            let detected = members_obs
                .wait_for("kill: member key deleted", |k| !k.contains(&victim_key))
                .await?;
            let written = assign_obs
                .wait_for("kill: assignments balanced", |k| {
                    balanced(assignment_pairs(k, &layout.assignments), &live, items)
                })
                .await?;
            let first = assign_obs
                .first_change_after(detected)
                .ok_or("kill: no assignment write seen")?;
            let settled =
                workers_balanced(&members, &live, items, &notify, "kill: workers").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, String>(Change {
                detection: detected.duration_since(t),
                leader_soak: first.duration_since(detected),
                writes: written.duration_since(first),
                worker_soak: settled.saturating_duration_since(written),
                total: settled.duration_since(t),
                plans: drain(&mut plans),
            })
        }
        .await;
        eprintln!("[leader] {kind}: kill: {:?}", outcome.kill);
        heap_note(kind, "after the kill");
    }

    if outcome.kill.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&mut plans);
        let id = member_id(n);
        let key = format!("{}{id}", layout.members);
        eprintln!("[leader] {kind}: {id} joins");
        let t = Instant::now();
        let m = Member::spawn(
            &config(&id),
            &member_store(kind, proxy.url(), &layout, Some(&log)).await,
        )
        .expect("member config");
        plans.push(m.plans());
        forwarders.push(forward(&m, &notify));
        members.insert(id.clone(), m);
        live.insert(id);
        outcome.join = async {
            let detected = members_obs
                .wait_for("join: member key written", |k| k.contains(&key))
                .await?;
            let written = assign_obs
                .wait_for("join: assignments balanced", |k| {
                    balanced(assignment_pairs(k, &layout.assignments), &live, items)
                })
                .await?;
            let first = assign_obs
                .first_change_after(detected)
                .ok_or("join: no assignment write seen")?;
            let settled =
                workers_balanced(&members, &live, items, &notify, "join: workers").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, String>(Change {
                detection: detected.duration_since(t),
                leader_soak: first.duration_since(detected),
                writes: written.duration_since(first),
                worker_soak: settled.saturating_duration_since(written),
                total: settled.duration_since(t),
                plans: drain(&mut plans),
            })
        }
        .await;
        eprintln!("[leader] {kind}: join: {:?}", outcome.join);
        heap_note(kind, "after the join");
    }
    // The bulk add is timed by the leader's transactions; the observer
    // would only weigh on the store.
    drop(assign_obs);

    if outcome.join.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&mut plans);
        take_log(&log);
        let added = (items / 10).max(1);
        eprintln!("[leader] {kind}: adding {added} items");
        let t = Instant::now();
        writer
            .bulk(
                (items..items + added)
                    .map(|k| Op::Put(format!("{}w{k:05}", layout.work), format!("p{k}")))
                    .collect(),
            )
            .await;
        let wrote = Instant::now();
        let all_items = items + added;
        outcome.bulk = async {
            let settled =
                workers_balanced(&members, &live, all_items, &notify, "bulk: workers").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sent = take_log(&log);
            let applied: Vec<&Sent> = sent.iter().filter(|s| s.applied).collect();
            let (first, last) = match (applied.first(), applied.last()) {
                (Some(f), Some(l)) => (f.started, l.ended),
                _ => return Err("bulk: no leader transaction seen".to_owned()),
            };
            Ok::<_, String>(Bulk {
                added,
                store_write: wrote.duration_since(t),
                leader_soak: first.saturating_duration_since(wrote),
                writes: last.duration_since(first),
                worker_soak: settled.saturating_duration_since(last),
                total: settled.duration_since(t),
                rate: Rate::of(&sent),
                plans: drain(&mut plans),
            })
        }
        .await;
        eprintln!("[leader] {kind}: bulk: {:?}", outcome.bulk);
        heap_note(kind, "after the bulk add");
    }

    if outcome.bulk.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("[leader] {kind}: idle for {:?}", params.idle);
        let (c0, s0, p0, l0, at0) = (
            proxy.counts(),
            other_process_cpu_ns(pid),
            process_cpu_us(),
            lanes.cpu_us().await,
            Instant::now(),
        );
        tokio::time::sleep(params.idle).await;
        let (c1, s1, p1, l1, at1) = (
            proxy.counts(),
            other_process_cpu_ns(pid),
            process_cpu_us(),
            lanes.cpu_us().await,
            Instant::now(),
        );
        let secs = at1.duration_since(at0).as_secs_f64();
        let moved_after = drain(&mut plans);
        outcome.idle = if moved_after.iter().any(|p| p.moved + p.placed > 0) {
            Err(format!("plans moved items while idle: {moved_after:?}"))
        } else {
            Ok(Idle {
                secs,
                counts: c1.since(c0),
                store_cpu: s1.saturating_sub(s0) as f64 / 1e9 / secs,
                members_cpu: (p1.saturating_sub(p0)).saturating_sub(l1.saturating_sub(l0)) as f64
                    / 1e6
                    / secs,
            })
        };
    }

    for f in forwarders {
        f.abort();
    }
    if outcome.startup.is_ok() {
        // Every follower at once, within the TTL (before the leader notices
        // and plans): what they held is freed; the leader alone is left.
        heap_note(kind, "after idle");
        let before = Allocs::now().live;
        let followers: Vec<String> = members
            .iter()
            .filter(|(_, m)| !m.is_leader())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &followers {
            if let Some(m) = members.remove(id) {
                m.kill().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = Allocs::now().live;
        heap_note(kind, "the leader alone");
        let left = members.len();
        // Then the leader: what it frees is its member with its leader state.
        for (_, m) in std::mem::take(&mut members) {
            m.kill().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let none = Allocs::now().live;
        heap_note(kind, "no member");
        memory.follower_heap = (before - after) as f64 / followers.len().max(1) as f64;
        memory.leader_heap = after - none;
        outcome.memory = if left == 1 {
            Ok(memory)
        } else {
            Err(format!("{left} members left, not 1"))
        };
    }
    drop(members_obs);
    for (_, m) in members {
        m.kill().await;
    }
    drop(proxy);
    drop(store);
    outcome
}

/// Open descriptors of process `pid` (`self` for this one).
fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Progress: the live heap and RSS of this process at `stage`.
fn heap_note(kind: Kind, stage: &str) {
    eprintln!(
        "[leader] {kind}: {stage}: live heap {}, RSS {}",
        fmt_bytes(Allocs::now().live as f64),
        fmt_bytes(rss_bytes() as f64)
    );
}
