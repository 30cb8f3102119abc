//! The leader machine with replicas, against a small in-test store, with an
//! explicit `now`: roles in the assignment keys' values, zones spread,
//! promotion of a secondary when a primary's member dies (no cold primary),
//! a demotion that waits for its acknowledgement before the new primary is
//! written (exclusive mode: never two primaries), per-item replica counts,
//! one replica per item writing exactly what it always wrote, and
//! make-before-break moves (a secondary first, promoted once ready; in the
//! default mode the old primary goes only after the promotion is
//! acknowledged, in exclusive mode before it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use leader_core::machine::{Action, LeaderMachine, LeaderRead, LeaderTiming, PlanReport};
use leader_core::{Layout, MemberMeta};
use worker_core::{Envelope, KvEntry, Role, TxnOp, TxnOutcome};

const SOAK: Duration = Duration::from_millis(500);

/// A store of keys, the leader machine, and members that acknowledge what
/// they hold when asked.
struct World {
    layout: Layout,
    m: LeaderMachine,
    kv: BTreeMap<String, (Bytes, u64)>,
    rev: u64,
    now: Instant,
    /// Live members: zone, acked position.
    members: BTreeMap<String, (Option<String>, u64)>,
    /// Members that acknowledge every write at once.
    auto_ack: bool,
    plans: Vec<PlanReport>,
    /// Every write applied, in order.
    log: Vec<Vec<TxnOp>>,
    /// The most primaries any item had at once, over every write.
    max_primaries: usize,
    /// Sessions the machine asked to end, by member.
    ended: Vec<String>,
}

impl World {
    fn new(timing: LeaderTiming) -> Self {
        let now = Instant::now();
        let layout = Layout::default();
        let m = LeaderMachine::new(layout.clone(), timing, 64, now);
        Self {
            layout,
            m,
            kv: BTreeMap::new(),
            rev: 1,
            now,
            members: BTreeMap::new(),
            auto_ack: true,
            plans: Vec::new(),
            log: Vec::new(),
            max_primaries: 0,
            ended: Vec::new(),
        }
    }

    fn put(&mut self, key: String, value: Bytes) {
        self.rev += 1;
        let created = self.kv.get(&key).map_or(self.rev, |(_, c)| *c);
        self.kv.insert(key, (value, created));
    }

    fn add_items(&mut self, n: usize, value: &Bytes) {
        for i in 0..n {
            self.put(self.layout.work_key(&format!("w{i:02}")), value.clone());
        }
        self.feed_items();
    }

    fn feed_items(&mut self) {
        let items: Vec<(Vec<u8>, Bytes)> = self.prefix(&self.layout.work.clone());
        self.m
            .handle_items(self.now, items.iter().map(|(k, v)| (k.as_slice(), v)));
    }

    fn prefix(&self, prefix: &str) -> Vec<(Vec<u8>, Bytes)> {
        self.kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone().into_bytes(), v.clone()))
            .collect()
    }

    fn entries(&self, prefix: &str) -> Vec<KvEntry> {
        self.kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, c))| KvEntry::at(k.clone().into_bytes(), v.clone(), *c))
            .collect()
    }

    fn join(&mut self, id: &str, zone: Option<&str>) {
        self.members
            .insert(id.to_owned(), (zone.map(str::to_owned), self.rev));
        self.feed_members();
    }

    fn kill(&mut self, ids: &[&str]) {
        for id in ids {
            self.members.remove(*id);
        }
        self.feed_members();
    }

    fn member_value(&self, id: &str) -> Bytes {
        let (zone, acked) = &self.members[id];
        let mut meta = MemberMeta {
            acked: Some(*acked),
            session: Some(format!("session-{id}")),
            ..MemberMeta::default()
        };
        meta.zone.clone_from(zone);
        meta.to_bytes()
    }

    fn feed_members(&mut self) {
        let kv: Vec<(Vec<u8>, Bytes)> = self
            .members
            .keys()
            .map(|id| {
                (
                    self.layout.member_key(id).into_bytes(),
                    self.member_value(id),
                )
            })
            .collect();
        self.m
            .handle_members(self.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    }

    /// Carries out the machine's actions until it has none.
    fn drain(&mut self) {
        while let Some(a) = self.m.poll() {
            match a {
                Action::ListAssignments => {
                    let read = LeaderRead {
                        members: self
                            .members
                            .keys()
                            .map(|id| {
                                KvEntry::new(self.layout.member_key(id), self.member_value(id))
                            })
                            .collect(),
                        assignments: self.entries(&self.layout.assignments.clone()),
                        records: self.entries(&self.layout.handoff.clone()),
                        sequence: 0,
                    };
                    self.m.handle_read(self.now, &read);
                }
                Action::ListHandoffs => {
                    let records = self.entries(&self.layout.handoff.clone());
                    self.m.handle_handoffs(
                        self.now,
                        records
                            .iter()
                            .map(|e| (e.key.as_slice(), &e.value, e.revision)),
                    );
                }
                Action::Write(ops) => self.apply(ops),
                Action::Planned(p) => self.plans.push(p),
                Action::EndSession { member, .. } => self.ended.push(member.to_string()),
                Action::BadKey { key, reason } => panic!("bad key {key}: {reason}"),
                _ => {}
            }
        }
    }

    fn apply(&mut self, ops: Vec<TxnOp>) {
        for op in &ops {
            if let TxnOp::Absent { key } = op {
                let id = key.strip_prefix(&self.layout.members).unwrap();
                if self.members.contains_key(id) {
                    self.m
                        .handle_write::<()>(self.now, Ok(TxnOutcome::Conflict));
                    return;
                }
            }
        }
        self.rev += 1;
        for op in &ops {
            match op {
                TxnOp::Put { key, value } => {
                    let created = self.kv.get(key).map_or(self.rev, |(_, c)| *c);
                    self.kv.insert(key.clone(), (value.clone(), created));
                }
                TxnOp::Delete { key } => {
                    self.kv.remove(key);
                }
                _ => {}
            }
        }
        self.log.push(ops);
        let most = self
            .replicas()
            .values()
            .map(|r| r.iter().filter(|(_, role)| *role == Role::Primary).count())
            .max()
            .unwrap_or(0);
        self.max_primaries = self.max_primaries.max(most);
        self.m
            .handle_write::<()>(self.now, Ok(TxnOutcome::Applied { revision: self.rev }));
        if let Err(e) = self.m.check_indexes() {
            panic!("{e}");
        }
        if self.auto_ack {
            self.ack_all();
        }
    }

    fn ack_all(&mut self) {
        let rev = self.rev;
        for (_, acked) in self.members.values_mut() {
            *acked = rev;
        }
        self.feed_members();
    }

    /// Runs until the machine has nothing to do before `until`.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.drain();
            match self.m.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.m.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        self.m.handle_timeout(self.now);
        self.drain();
    }

    fn settle(&mut self) {
        let until = self.now + Duration::from_secs(60);
        self.run_until(until);
    }

    /// item -> (member, role) as the store has them.
    fn replicas(&self) -> BTreeMap<String, BTreeSet<(String, Role)>> {
        let mut out: BTreeMap<String, BTreeSet<(String, Role)>> = BTreeMap::new();
        for (k, v) in self.prefix(&self.layout.assignments.clone()) {
            let (m, w) = self.layout.parse_assignment(&k).unwrap();
            let (role, payload) = Envelope::role_of(&v);
            assert_eq!(payload, b"v", "the item's bytes, whatever the role");
            out.entry(w.to_owned())
                .or_default()
                .insert((m.to_owned(), role));
        }
        out
    }

    fn primary_of(&self, item: &str) -> Option<String> {
        self.replicas()
            .get(item)?
            .iter()
            .find(|(_, r)| *r == Role::Primary)
            .map(|(m, _)| m.clone())
    }

    fn zone(&self, id: &str) -> Option<String> {
        self.members.get(id).and_then(|(z, _)| z.clone())
    }
}

fn timing(replicas: u32, exclusive: bool) -> LeaderTiming {
    let mut t = LeaderTiming::with_soak(SOAK);
    t.replicas = replicas;
    if exclusive {
        t.exclusive = Some(Duration::from_secs(1));
        t.member_ttl = Duration::from_secs(5);
    }
    t
}

/// 3 zones × 2 members, 60 items, 2 replicas.
fn six(exclusive: bool) -> World {
    let mut w = World::new(timing(2, exclusive));
    for z in ["a", "b", "c"] {
        for i in 1..=2 {
            w.join(&format!("{z}{i}"), Some(z));
        }
    }
    w.add_items(60, &Bytes::from_static(b"v"));
    w.settle();
    w
}

fn check_spread(w: &World, replicas: usize) {
    let r = w.replicas();
    assert_eq!(r.len(), 60);
    for (item, set) in &r {
        assert_eq!(set.len(), replicas, "{item}: {set:?}");
        let prim = set.iter().filter(|(_, r)| *r == Role::Primary).count();
        assert_eq!(prim, 1, "{item}: {set:?}");
        let zones: BTreeSet<Option<String>> = set.iter().map(|(m, _)| w.zone(m)).collect();
        assert_eq!(
            zones.len(),
            replicas,
            "{item} not spread over zones: {set:?}"
        );
    }
    let mut primaries: BTreeMap<String, usize> = BTreeMap::new();
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for set in r.values() {
        for (m, role) in set {
            *total.entry(m.clone()).or_default() += 1;
            if *role == Role::Primary {
                *primaries.entry(m.clone()).or_default() += 1;
            }
        }
    }
    let live = w.members.len();
    let (lo, hi) = (60 / live, 60_usize.div_ceil(live));
    assert!(
        primaries.values().all(|n| (lo..=hi).contains(n)) && primaries.len() == live,
        "primaries unbalanced: {primaries:?}"
    );
    let all = 60 * replicas;
    let (lo, hi) = (all / live, all.div_ceil(live));
    assert!(
        total.values().all(|n| (lo..=hi).contains(n)),
        "replicas unbalanced: {total:?}"
    );
}

#[test]
fn replicas_are_written_with_their_roles_and_spread_over_zones() {
    let w = six(false);
    check_spread(&w, 2);
    // A secondary's key carries the envelope; a primary's is the bytes.
    let raw = w.prefix(&w.layout.assignments.clone());
    let secondaries = raw
        .iter()
        .filter(|(_, v)| v.starts_with(worker_core::ENVELOPE_MAGIC))
        .count();
    assert_eq!(secondaries, 60);
    assert!(raw.iter().any(|(_, v)| &v[..] == b"v"));
    let p = w.plans.last().unwrap();
    assert_eq!((p.placed, p.cold_primaries), (120, 0));
    assert_eq!(w.m.unowned(), 0);
}

#[test]
fn a_zone_outage_promotes_secondaries_and_respreads_with_the_fewest_moves() {
    for exclusive in [false, true] {
        let mut w = six(exclusive);
        let before = w.replicas();
        w.kill(&["a1", "a2"]);
        let killed_at = w.now;
        // Zone a's primaries have no live primary until promoted.
        assert_eq!(w.m.unowned(), 20, "items without a live primary");
        w.settle();
        // Every item has a primary again, on a member that held it before
        // (the old primary, or a secondary promoted): none is cold.
        for (item, set) in &before {
            let new = w.primary_of(item).expect("a primary");
            assert!(
                set.iter().any(|(m, _)| *m == new),
                "{item}: {new} held no replica of it: cold"
            );
        }
        let p = w
            .plans
            .iter()
            .rev()
            .find(|p| p.members == 4)
            .expect("a plan over 4");
        assert_eq!(p.cold_primaries, 0, "{p:?}");
        check_spread(&w, 2);
        if exclusive {
            // The promotions waited for the dead members' whole TTL.
            assert!(w.now >= killed_at + Duration::from_secs(5));
        }
        // The zone comes back: spread again, the primaries moving only by
        // promotion, nothing placed cold.
        let plans = w.plans.len();
        w.join("a1", Some("a"));
        w.join("a2", Some("a"));
        w.settle();
        check_spread(&w, 2);
        let back = &w.plans[plans..];
        assert!(back.iter().all(|p| p.placed == 0), "{back:?}");
        // Exclusive: never two primaries' keys. The default mode's
        // make-before-break moves promote the new primary before the old
        // one's key goes.
        let most = if exclusive { 1 } else { 2 };
        assert_eq!(w.max_primaries, most, "primaries' keys of one item at once");
    }
}

#[test]
fn a_demotion_waits_for_its_acknowledgement_before_the_new_primary() {
    let mut w = World::new(timing(2, true));
    w.join("m1", None);
    w.add_items(1, &Bytes::from_static(b"v"));
    w.settle();
    assert_eq!(w.primary_of("w00").as_deref(), Some("m1"));
    // m2 joins: it becomes the secondary; m3 joins and weights shift: at
    // some point a primary must hand its role to another member.
    w.auto_ack = false;
    w.join("m2", None);
    w.ack_all();
    w.settle();
    w.ack_all();
    w.settle();
    let set = w.replicas()["w00"].clone();
    assert_eq!(set.len(), 2, "{set:?}");
    // Make m1 drain: its primary role must go to m2, by a demotion first.
    w.members.get_mut("m1").unwrap().1 = w.rev;
    let kv_before = w.log.len();
    let mut meta = MemberMeta {
        acked: Some(w.rev),
        draining: true,
        ..MemberMeta::default()
    };
    meta.zone = None;
    let mut kv: Vec<(Vec<u8>, Bytes)> =
        vec![(w.layout.member_key("m1").into_bytes(), meta.to_bytes())];
    kv.push((w.layout.member_key("m2").into_bytes(), w.member_value("m2")));
    w.m.handle_members(w.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    let until = w.now + Duration::from_secs(10);
    w.run_until(until);
    // Make-before-break: m2, a secondary already, has its key written again
    // (spelled another way: a position it acknowledges), and nothing more
    // happens until it has.
    let touched: Vec<&TxnOp> = w.log[kv_before..].iter().flatten().collect();
    let m2_key = w.layout.assignment_key("m2", "w00");
    assert!(touched.iter().any(|op| op.key() == m2_key), "{touched:?}");
    assert_eq!(w.primary_of("w00").as_deref(), Some("m1"));
    w.members.get_mut("m2").unwrap().1 = w.rev;
    kv.pop();
    kv.push((w.layout.member_key("m2").into_bytes(), w.member_value("m2")));
    w.m.handle_members(w.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    let until = w.now + Duration::from_secs(10);
    w.run_until(until);
    // m1 lost the primary role (its key deleted or demoted, with a record);
    // m2 is not primary until m1 acknowledges.
    let written: Vec<&TxnOp> = w.log[kv_before..].iter().flatten().collect();
    assert!(
        written
            .iter()
            .any(|op| op.key() == w.layout.handoff_key("w00")),
        "{written:?}"
    );
    assert_ne!(
        w.primary_of("w00").as_deref(),
        Some("m2"),
        "promoted before the ack"
    );
    assert_eq!(w.max_primaries, 1);
    // m1 acknowledges: m2 is promoted.
    let rev = w.rev;
    w.members.get_mut("m2").unwrap().1 = rev;
    let meta = MemberMeta {
        acked: Some(rev),
        draining: true,
        ..MemberMeta::default()
    };
    let kv: Vec<(Vec<u8>, Bytes)> = vec![
        (w.layout.member_key("m1").into_bytes(), meta.to_bytes()),
        (w.layout.member_key("m2").into_bytes(), w.member_value("m2")),
    ];
    w.m.handle_members(w.now, kv.iter().map(|(k, v)| (k.as_slice(), v)));
    w.run_until(w.now + Duration::from_secs(1));
    assert_eq!(w.primary_of("w00").as_deref(), Some("m2"));
    assert_eq!(w.max_primaries, 1);
}

#[test]
fn an_item_may_ask_for_its_own_replica_count() {
    let mut w = World::new(timing(1, false));
    for id in ["m1", "m2", "m3"] {
        w.join(id, None);
    }
    w.add_items(4, &Bytes::from_static(b"v"));
    w.put(w.layout.work_key("w03"), Envelope::with_replicas(3, b"v"));
    w.feed_items();
    w.settle();
    let r = w.replicas();
    for i in 0..3 {
        assert_eq!(r[&format!("w0{i}")].len(), 1);
    }
    assert_eq!(r["w03"].len(), 3, "{:?}", r["w03"]);
}

#[test]
fn a_bad_envelope_is_reported_and_the_item_left_out() {
    let mut w = World::new(timing(1, false));
    w.join("m1", None);
    w.put(
        w.layout.work_key("bad"),
        Bytes::from_static(b"\0coordinator:replicas=99\nv"),
    );
    w.feed_items();
    let mut reported = Vec::new();
    while let Some(a) = w.m.poll() {
        if let Action::BadKey { key, reason } = a {
            reported.push(format!("{key}: {reason}"));
        } else if a == Action::ListAssignments {
            let read = LeaderRead::default();
            w.m.handle_read(w.now, &read);
        }
    }
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(reported[0].contains("replicas=99"), "{reported:?}");
    w.feed_items();
    assert!(
        std::iter::from_fn(|| w.m.poll()).all(|a| !matches!(a, Action::BadKey { .. })),
        "reported once"
    );
}

#[test]
fn one_replica_writes_the_bytes_as_before() {
    let mut w = World::new(timing(1, false));
    for (id, z) in [("m1", "a"), ("m2", "b")] {
        w.join(id, Some(z));
    }
    w.add_items(10, &Bytes::from_static(b"v"));
    w.settle();
    let raw = w.prefix(&w.layout.assignments.clone());
    assert_eq!(raw.len(), 10);
    assert!(raw.iter().all(|(_, v)| &v[..] == b"v"));
}

// ----- make-before-break moves -----

/// One replica per item, `prepare` on: m1 holds 4 items, then m2 joins.
fn joined(exclusive: bool) -> World {
    let mut w = World::new(timing(1, exclusive));
    w.join("m1", None);
    w.add_items(4, &Bytes::from_static(b"v"));
    w.settle();
    assert_eq!(w.replicas().len(), 4);
    w.join("m2", None);
    w
}

/// The replicas of `item` after each write of `log`, replayed from the
/// store as it was before them (`before`).
fn replay(
    w: &World,
    before: &BTreeMap<String, BTreeSet<(String, Role)>>,
    log: &[Vec<TxnOp>],
) -> Vec<BTreeMap<String, BTreeSet<(String, Role)>>> {
    let mut state = before.clone();
    let mut out = Vec::new();
    for ops in log {
        for op in ops {
            let Ok((m, item)) = w.layout.parse_assignment(op.key().as_bytes()) else {
                continue;
            };
            let set = state.entry(item.to_owned()).or_default();
            set.retain(|(held, _)| held != m);
            if let TxnOp::Put { value, .. } = op {
                set.insert((m.to_owned(), Envelope::role_of(value).0));
            }
        }
        out.push(state.clone());
    }
    out
}

fn primaries(set: &BTreeSet<(String, Role)>) -> usize {
    set.iter().filter(|(_, r)| *r == Role::Primary).count()
}

#[test]
fn a_join_prepares_a_secondary_and_promotes_it_before_the_old_primary_goes() {
    let mut w = joined(false);
    let before = w.replicas();
    let from = w.log.len();
    w.settle();
    let log = w.log[from..].to_vec();
    let states = replay(&w, &before, &log);
    let moved: Vec<String> = w
        .replicas()
        .iter()
        .filter(|(_, set)| set.contains(&("m2".to_owned(), Role::Primary)))
        .map(|(item, _)| item.clone())
        .collect();
    assert_eq!(moved.len(), 2, "{:?}", w.replicas());
    // The first write gives m2 the moved items as secondaries; m1 keeps
    // them.
    let first = &states[0];
    for item in &moved {
        assert!(first[item].contains(&("m2".to_owned(), Role::Secondary)));
        assert!(first[item].contains(&("m1".to_owned(), Role::Primary)));
    }
    // Never an item without a primary's key; at most two at once.
    for (i, state) in states.iter().enumerate() {
        for (item, set) in state {
            let n = primaries(set);
            assert!((1..=2).contains(&n), "write {i}: {item}: {set:?}");
        }
    }
    // Both primaries at some point (m2 promoted before m1's key went), and
    // m1's revoke wrote no handoff record.
    assert!(states
        .iter()
        .any(|s| moved.iter().all(|i| primaries(&s[i]) == 2)));
    assert!(log
        .iter()
        .flatten()
        .all(|op| !op.key().starts_with(&w.layout.handoff)));
    assert_eq!(w.m.handoffs().count(), 0);
    assert!(w.m.staged().next().is_none(), "every staged move is over");
}

#[test]
fn exclusive_mode_prepares_then_hands_off_never_two_primaries() {
    let mut w = joined(true);
    let before = w.replicas();
    let from = w.log.len();
    w.settle();
    let log = w.log[from..].to_vec();
    let states = replay(&w, &before, &log);
    let first = &states[0];
    let prepared: Vec<&String> = first
        .iter()
        .filter(|(_, s)| s.contains(&("m2".to_owned(), Role::Secondary)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(prepared.len(), 2, "{first:?}");
    assert_eq!(w.max_primaries, 1, "two primaries' keys at once");
    // The old primary's revoke carries a record (the ordinary handoff).
    assert!(log
        .iter()
        .flatten()
        .any(|op| op.key().starts_with(&w.layout.handoff)));
    for item in prepared {
        assert_eq!(w.primary_of(item).as_deref(), Some("m2"));
    }
    assert!(w.m.staged().next().is_none());
}

#[test]
fn the_promotion_waits_until_the_new_member_is_ready() {
    for exclusive in [false, true] {
        let mut w = joined(exclusive);
        w.auto_ack = false;
        let until = w.now + Duration::from_secs(10);
        w.run_until(until);
        // Prepared, and nothing more while m2 has not acknowledged.
        let staged: Vec<_> =
            w.m.staged()
                .map(|(i, _, t, r)| (i.clone(), t.clone(), r))
                .collect();
        assert_eq!(staged.len(), 2, "{staged:?}");
        assert!(staged
            .iter()
            .all(|(_, t, r)| &**t == "m2" && *r == Role::Secondary));
        let writes = w.log.len();
        let until = w.now + Duration::from_secs(10);
        w.run_until(until);
        assert_eq!(w.log.len(), writes, "nothing written before m2 is ready");
        // m2 acknowledges: the moves go on.
        let rev = w.rev;
        w.members.get_mut("m2").unwrap().1 = rev;
        w.feed_members();
        w.auto_ack = true;
        w.settle();
        assert_eq!(
            w.replicas().values().filter(|s| primaries(s) == 1).count(),
            4
        );
        assert!(w.ended.is_empty(), "{:?}", w.ended);
    }
}

#[test]
fn a_member_never_ready_has_its_session_ended_after_the_handoff_timeout() {
    let mut t = timing(1, false);
    t.handoff_timeout = Duration::from_secs(30);
    let mut w = World::new(t);
    w.join("m1", None);
    w.add_items(4, &Bytes::from_static(b"v"));
    w.settle();
    w.auto_ack = false;
    w.join("m2", None);
    let joined_at = w.now;
    let until = w.now + Duration::from_secs(29);
    w.run_until(until);
    assert!(w.ended.is_empty(), "{:?}", w.ended);
    let until = joined_at + Duration::from_secs(40);
    w.run_until(until);
    assert_eq!(w.ended, ["m2"], "the session of the member never ready");
    // m1 kept its items all along.
    assert!(w
        .replicas()
        .values()
        .all(|s| s.contains(&("m1".to_owned(), Role::Primary))));
}

#[test]
fn without_prepare_a_move_is_revoke_then_assign() {
    let mut t = timing(1, false);
    t.prepare = false;
    let mut w = World::new(t);
    w.join("m1", None);
    w.add_items(4, &Bytes::from_static(b"v"));
    w.settle();
    w.join("m2", None);
    let from = w.log.len();
    w.settle();
    let log = &w.log[from..];
    assert!(log
        .iter()
        .flatten()
        .all(|op| !matches!(op, TxnOp::Put { value, .. } if value.starts_with(worker_core::ENVELOPE_MAGIC))));
    assert!(log[0]
        .iter()
        .any(|op| op.key().starts_with(&w.layout.handoff)));
    assert_eq!(w.max_primaries, 1);
}
