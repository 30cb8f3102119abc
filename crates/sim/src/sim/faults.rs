//! The faults: which exist ([`Fault`]), how they are drawn (weights) and
//! scheduled (exponential gaps until the quiet period), and what each does
//! to the cluster, the store or the network. Operator changes to the items
//! are among them.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::Rng;
use worker_core::{WatchEvent, Workload};

use super::clock::{MS, SEC};
use super::node::{Life, Node};
use super::requests::{Msg, Slot};
use super::{Kind, Sim};
use crate::store::Nanos;

/// A fault, or the end of one (scheduled by the fault itself). See the
/// table in `docs/testing.md`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// A member crashes (its state dropped, its session left to expire).
    Crash,
    /// Member `.0` starts again with fresh machines, 1–30 s after a crash.
    Restart(usize),
    /// A member pauses (a long GC): it processes nothing meanwhile.
    Pause,
    /// Member `.0` resumes and handles what piled up, in order.
    Resume(usize),
    /// A member is cut off from the store.
    Partition,
    /// Member `.0` reaches the store again.
    Heal(usize),
    /// A window of store errors (and of transactions applied late).
    Errors,
    /// The store-error window ends.
    ErrorsEnd,
    /// A window of added latency.
    Latency,
    /// The latency window ends.
    LatencyEnd,
    /// The store ends a member's session (half of the time cut off first).
    ExpireSession,
    /// An item changes; the leader loses its session after its next chunk.
    LeaderLossMidWrite,
    /// History is compacted up to the current revision.
    Compact,
    /// An open key watch reports `Lost` (Consul's index going backwards).
    IndexBackwards,
    /// A watch or leader observation stops delivering.
    SilentWatch,
    /// An operator adds or changes an item.
    ItemPut,
    /// An operator deletes an item.
    ItemDelete,
    /// A member leaves cleanly (halt).
    Leave,
    /// A new member joins.
    Join,
    /// Every member of one zone crashes at once (runs with zones only).
    ZoneOutage,
    /// A member drains (as `coordinator drain` or SIGTERM): it leaves once
    /// its items moved, and starts again with the same id 1–5 s later.
    Drain,
}

impl Fault {
    /// Draws one fault of the schedule by its weight (percent); with zones,
    /// a third of the crashes are zone outages.
    fn draw(rng: &mut SmallRng, zones: bool) -> Self {
        match rng.random_range(0..100) {
            0..=2 if zones => Fault::ZoneOutage,
            0..=9 => Fault::Crash,
            10..=21 => Fault::Pause,
            22..=31 => Fault::Partition,
            32..=37 => Fault::Errors,
            38..=42 => Fault::Latency,
            43..=47 => Fault::ExpireSession,
            48..=54 => Fault::LeaderLossMidWrite,
            55..=62 => Fault::Compact,
            63..=67 => Fault::IndexBackwards,
            68..=72 => Fault::SilentWatch,
            73..=81 => Fault::ItemPut,
            82..=87 => Fault::ItemDelete,
            88..=93 => Fault::Leave,
            94..=96 => Fault::Drain,
            _ => Fault::Join,
        }
    }

    /// Draws one planned event: a drain most of the time, else a join, an
    /// item changed or added, or a window of added latency (slow, not
    /// failing: no session ends for it).
    fn draw_planned(rng: &mut SmallRng) -> Self {
        match rng.random_range(0..100) {
            0..=59 => Fault::Drain,
            60..=69 => Fault::Join,
            70..=84 => Fault::ItemPut,
            _ => Fault::Latency,
        }
    }
}

impl Sim {
    /// The fault schedule: exponential gaps (mean `Params::fault_gap`) from
    /// 5 s until the quiet period, a fault drawn by weight at each.
    pub(super) fn schedule_faults(&mut self) {
        let mut t = 5 * SEC;
        loop {
            let gap = -(1.0 - self.rng.random::<f64>()).ln() * self.p.fault_gap as f64;
            t += gap as Nanos + 1;
            if t >= self.fault_end {
                break;
            }
            let f = if self.cfg.planned {
                Fault::draw_planned(&mut self.rng)
            } else {
                Fault::draw(&mut self.rng, self.cfg.zones > 1)
            };
            self.push(t, Kind::Fault(f));
        }
    }

    /// Carries out fault `f`.
    #[allow(clippy::too_many_lines)] // one arm per fault
    pub(super) fn fault(&mut self, f: Fault) {
        self.faults += 1;
        self.last_fault_at = self.now;
        let up = self.nodes.iter().filter(|x| x.life == Life::Up).count();
        match f {
            Fault::ZoneOutage => {
                let Some(n) = self.target() else { return };
                let zone = self.zone_of(n);
                let hit: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].life == Life::Up && self.zone_of(i) == zone)
                    .collect();
                if hit.len() >= up {
                    return; // the whole cluster is in one zone
                }
                self.zone_outages += 1;
                let settled = self.cluster_settled();
                self.after_outage = settled;
                tr!(
                    self,
                    "fault: zone {zone:?} goes down: {hit:?} (settled {settled})"
                );
                self.check_zone_outage(&hit, settled);
                for n in hit {
                    self.crash(n);
                }
            }
            Fault::Crash => {
                if up <= 1 {
                    return;
                }
                let Some(n) = self.target() else { return };
                self.crash(n);
            }
            Fault::Restart(n) => {
                // A member that comes back holds nothing: the primaries the
                // balance gives it are cold.
                self.after_outage = false;
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} restarts");
                let (worker, member) = self.fresh(&id, self.nodes[n].ppm);
                let exclusive = self.exclusive;
                let node = &mut self.nodes[n];
                node.life = Life::Up;
                node.worker = worker;
                node.member = member;
                node.settled = Workload::new();
                node.settled_secondaries.clear();
                node.unbacked_since = None;
                node.held = exclusive;
                node.restoring = None;
                node.resync_owed = false;
                node.position = 0;
                node.written = None;
                node.pending_meta = None;
                node.registering = false;
                node.meta_in_flight = false;
                node.meta_retry_at = None;
                node.draining = None;
                self.drive(n);
            }
            Fault::Pause => {
                let Some(n) = self.target() else { return };
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} pauses");
                self.nodes[n].paused = true;
                self.nodes[n].paused_at = self.now;
                let at = if self.exclusive && self.cfg.controls.bounded_pauses {
                    let d = self.rng.random_range(MS..=self.p.exclusive_pause_max);
                    (self.now + d).min(self.fault_end)
                } else {
                    self.until(3 * self.p.ttl)
                };
                self.push(at, Kind::Fault(Fault::Resume(n)));
            }
            Fault::Resume(n) => {
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} resumes");
                let node = &mut self.nodes[n];
                node.paused = false;
                if let Some(u) = &mut node.unbacked_since {
                    *u += self.now - node.paused_at;
                }
                let backlog = std::mem::take(&mut node.backlog);
                let inc = node.inc;
                for ev in backlog {
                    self.push(self.now, ev.kind);
                }
                // The timers piled up: all due now.
                self.nodes[n].armed = Some(self.now);
                self.push(self.now, Kind::Wake(n, inc));
            }
            Fault::Partition => {
                let Some(n) = self.target() else { return };
                self.partition(n);
            }
            Fault::Heal(n) => {
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} reaches the store again");
                self.nodes[n].partitioned = false;
            }
            Fault::Errors => {
                self.error_rate = self.rng.random_range(0.1..0.6);
                tr!(self, "fault: store errors at {:.2}", self.error_rate);
                let at = self.until(30 * SEC);
                self.push(at, Kind::Fault(Fault::ErrorsEnd));
            }
            Fault::ErrorsEnd => {
                tr!(self, "fault: store errors end");
                self.error_rate = 0.0;
            }
            Fault::Latency => {
                self.extra_latency = self.rng.random_range(MS..=self.p.spike_max);
                tr!(
                    self,
                    "fault: latency up to {} ms more",
                    self.extra_latency / MS
                );
                let at = self.until(30 * SEC);
                self.push(at, Kind::Fault(Fault::LatencyEnd));
            }
            Fault::LatencyEnd => {
                tr!(self, "fault: latency back to normal");
                self.extra_latency = 0;
            }
            Fault::ExpireSession => {
                let Some(n) = self.target() else { return };
                if let Some(s) = self.nodes[n].member.session().cloned() {
                    let id = self.nodes[n].id.clone();
                    // Half of the time the member is cut off first, so that
                    // it cannot hear of it: an operator destroying its
                    // session, or its node deregistered, during a partition.
                    if self.rng.random_bool(0.5) {
                        self.partition(n);
                        tr!(
                            self,
                            "fault: the store ends cut-off {id}'s session {s} (an operator, a node deregistration)"
                        );
                    } else {
                        tr!(self, "fault: the store ends {id}'s session {s}");
                    }
                    if let Some(a) = self.store.end_session(&s) {
                        self.applied(&a);
                    }
                }
            }
            Fault::LeaderLossMidWrite => {
                tr!(
                    self,
                    "fault: the leader will lose its session after its next chunk"
                );
                self.mid_write_loss = true;
                // Make the leader write: change an item's value.
                self.change_item();
            }
            Fault::Compact => {
                let to = self.store.revision();
                tr!(self, "fault: compaction up to {to}");
                self.store.compact(to);
            }
            Fault::IndexBackwards => {
                let keys: Vec<(usize, Slot)> = self
                    .watches
                    .iter()
                    .filter(|(_, w)| w.prefix.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                if keys.is_empty() {
                    return;
                }
                let (n, slot) = keys[self.rng.random_range(0..keys.len())];
                let id = self.nodes[n].id.clone();
                tr!(
                    self,
                    "fault: {id}'s {slot:?} watch sees the index go backwards"
                );
                self.deliver(
                    n,
                    slot,
                    Msg::Watch(WatchEvent::Lost {
                        reason: "index went backwards".into(),
                    }),
                );
                if let Some(w) = self.watches.get_mut(&(n, slot)) {
                    w.silent = true;
                }
            }
            Fault::SilentWatch => {
                let keys: Vec<(usize, Slot)> = self.watches.keys().copied().collect();
                if keys.is_empty() {
                    return;
                }
                let (n, slot) = keys[self.rng.random_range(0..keys.len())];
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id}'s {slot:?} watch goes silent");
                if let Some(w) = self.watches.get_mut(&(n, slot)) {
                    w.silent = true;
                    let (inc, gen) = (w.inc, w.gen);
                    let at = self.now + self.p.watch_timeout;
                    self.reply_at(at, n, inc, slot, gen, Msg::Err("watch silent: timed out"));
                }
            }
            Fault::ItemPut => {
                if self.rng.random_bool(0.5) {
                    self.put_item();
                } else {
                    self.change_item();
                }
            }
            Fault::ItemDelete => {
                let keys: Vec<String> = self
                    .store
                    .range(&self.layout.work)
                    .map(|(k, _)| k.clone())
                    .collect();
                if keys.len() > 1 {
                    let k = keys[self.rng.random_range(0..keys.len())].clone();
                    tr!(self, "operator: delete {k}");
                    let a = self.store.delete(&k);
                    self.applied(&a);
                }
            }
            Fault::Leave => {
                if up <= 2 {
                    return;
                }
                let Some(n) = self.target() else { return };
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} leaves (halt)");
                self.halt_node(n);
            }
            Fault::Join => {
                self.after_outage = false;
                if up < 7 {
                    self.join();
                }
            }
            Fault::Drain => {
                // Two members stay that do not drain: the items have
                // somewhere to go.
                let staying = self
                    .nodes
                    .iter()
                    .filter(|x| x.life == Life::Up && x.draining.is_none())
                    .count();
                if staying <= 2 {
                    return;
                }
                let Some(n) = self.target() else { return };
                if self.nodes[n].draining.is_some() {
                    return;
                }
                let id = self.nodes[n].id.clone();
                tr!(self, "fault: {id} drains");
                self.nodes[n].draining = Some(self.now);
                self.drive(n);
            }
        }
    }

    /// Node `n` leaves cleanly: its machines halt (the member resigns and
    /// closes its session), and its application stops every item.
    fn halt_node(&mut self, n: usize) {
        self.nodes[n].worker.halt();
        self.nodes[n].member.halt();
        self.drive(n);
        let node = &mut self.nodes[n];
        node.life = Life::Halted;
        node.armed = None;
        node.draining = None;
        self.watches.retain(|(i, _), _| *i != n);
        self.set_app(n, Workload::new());
    }

    /// Draining members that hold nothing (acknowledged, not released) and
    /// that no handoff record names leave, as `member.rs` does (or after
    /// the drain timeout, 60 s), and start again with the same id 1–5 s
    /// later (a rolling restart).
    pub(super) fn leave_drained(&mut self) {
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            let Some(since) = node.draining else { continue };
            if node.life != Life::Up || node.paused {
                continue;
            }
            let reported = node.written.is_some()
                && node
                    .written
                    .as_ref()
                    .is_some_and(|w| w.draining && w.acked == Some(node.position));
            let empty = node.settled.is_empty() && !node.held;
            let id = node.id.clone();
            let recorded = self
                .store
                .range(&self.layout.handoff)
                .any(|(_, v)| v.as_ref() == id.as_bytes());
            // Leading, it finishes its moves in flight first, and waits for
            // the members to acknowledge what it wrote to them.
            let moving = node.lead.as_ref().is_some_and(|l| {
                l.machine.handoffs().next().is_some() || l.machine.awaiting_acks()
            });
            let timed_out = self.now - since > 60 * SEC;
            let done = empty && reported && !recorded && !moving;
            if !done && !timed_out {
                continue;
            }
            tr!(self, "{id} drained: leaves (timed out: {timed_out})");
            if !timed_out {
                self.drains += 1;
            }
            self.halt_node(n);
            let back = self.now + self.rng.random_range(SEC..=5 * SEC);
            self.push(
                back.min(self.fault_end.max(self.now + SEC)),
                Kind::Fault(Fault::Restart(n)),
            );
        }
    }

    /// A member for which `f` holds, drawn at random.
    fn pick(&mut self, f: impl Fn(&Node) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.nodes.len())
            .filter(|i| f(&self.nodes[*i]))
            .collect();
        if c.is_empty() {
            None
        } else {
            Some(c[self.rng.random_range(0..c.len())])
        }
    }

    /// A target: the leader half the time, else any member that is up.
    fn target(&mut self) -> Option<usize> {
        let ok = |x: &Node| x.life == Life::Up && !x.paused && !x.partitioned;
        if self.rng.random_bool(0.5) {
            if let Some(i) = self.pick(|x| ok(x) && x.lead.is_some()) {
                return Some(i);
            }
        }
        self.pick(ok)
    }

    /// Member `n` crashes: its state dropped, its session left to expire,
    /// a restart scheduled 1 s to 3 TTLs later.
    fn crash(&mut self, n: usize) {
        let id = self.nodes[n].id.clone();
        tr!(self, "fault: {id} crashes");
        let node = &mut self.nodes[n];
        node.life = Life::Down;
        node.inc += 1;
        node.lead = None;
        node.armed = None;
        self.watches.retain(|(i, _), _| *i != n);
        // A member that is down holds nothing.
        self.set_app(n, Workload::new());
        let at = self.until(3 * self.p.ttl);
        self.push(at, Kind::Fault(Fault::Restart(n)));
    }

    /// The zone of member `n` (`None` in runs without zones).
    pub(super) fn zone_of(&self, n: usize) -> Option<String> {
        (self.cfg.zones > 1).then(|| format!("z{}", n as u32 % self.cfg.zones))
    }

    /// When a fault ends: 1 s to `max` from now, no later than the start of the quiet period.
    fn until(&mut self, max: Nanos) -> Nanos {
        let d = self.rng.random_range(SEC..=max);
        (self.now + d).min(self.fault_end)
    }

    /// Cuts member `n` off from the store until a heal (scheduled here).
    pub(super) fn partition(&mut self, n: usize) {
        let id = self.nodes[n].id.clone();
        tr!(self, "fault: {id} cut off from the store");
        self.nodes[n].partitioned = true;
        let cut: Vec<(Slot, u32, u64)> = self
            .watches
            .iter()
            .filter(|((i, _), _)| *i == n)
            .map(|((_, s), w)| (*s, w.inc, w.gen))
            .collect();
        for (slot, inc, gen) in cut {
            self.watches.remove(&(n, slot));
            let at = self.now + self.p.watch_timeout;
            self.reply_at(
                at,
                n,
                inc,
                slot,
                gen,
                Msg::Err("watch timed out (partition)"),
            );
        }
        let at = self.until(3 * self.p.ttl);
        self.push(at, Kind::Fault(Fault::Heal(n)));
    }

    /// An operator puts a new item.
    pub(super) fn put_item(&mut self) {
        self.next_item += 1;
        let key = self.layout.work_key(&format!("w{}", self.next_item));
        let tag = self.rng.random_range(0..3);
        let value = self.item_value(tag);
        let a = self.store.put(&key, value);
        tr!(self, "operator: put {key}");
        self.applied(&a);
    }

    /// An operator changes the value of an item drawn at random.
    fn change_item(&mut self) {
        let keys: Vec<String> = self
            .store
            .range(&self.layout.work)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let k = keys[self.rng.random_range(0..keys.len())].clone();
        let tag = self.rng.random_range(0..1000);
        let v = self.item_value(tag);
        tr!(self, "operator: change {k}");
        let a = self.store.put(&k, v);
        self.applied(&a);
    }

    /// An item value: mostly short; with a byte limit, now and then large
    /// (up to past what any transaction can carry).
    fn item_value(&mut self, tag: u32) -> Bytes {
        if self.limits.max_bytes != usize::MAX && self.rng.random_bool(0.2) {
            let len = self.rng.random_range(100..1400);
            let mut v = format!("v{tag}:").into_bytes();
            v.resize(len, b'.');
            Bytes::from(v)
        } else {
            Bytes::from(format!("v{tag}"))
        }
    }
}
