//! Requests and watches between the members and the store model: which
//! requests a member has in flight ([`Slot`]), what it asks ([`Req`]) and
//! hears back ([`Msg`]), the watches open at the store ([`Watch`]); sending
//! with seeded latency, what the store does when a request arrives (and the
//! store-error and delayed-apply faults that strike it there), and the watch
//! events every write sends.

use bytes::Bytes;
use leader_core::machine::LeaderRead;
use rand::Rng;
use worker_core::{
    Fence, KvChange, KvEntry, Leader, SessionId, Snapshot, TxnOp, TxnOutcome, WatchEvent,
};

use super::clock::{MS, SEC};
use super::{Kind, Sim};
use crate::store::{Applied, Flavor, Nanos};

/// Which request of a member is in flight: one at a time per slot, and an answer is for the slot's current generation only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Slot {
    /// The worker's list or watch of its assignments.
    WorkerKv = 0,
    /// The worker's observation of the leader.
    WorkerLeader,
    /// The member's registration (session and member key).
    Register,
    /// The member's session renewal.
    Renew,
    /// The member's observation of the leader.
    Observe,
    /// The member's campaign.
    Campaign,
    /// The leader's consistent read.
    LeadList,
    /// The leader's transaction.
    LeadWrite,
    /// The leader's follower of the members prefix.
    FollowMembers,
    /// The leader's follower of the work prefix.
    FollowItems,
    /// The member-key write.
    MemberKey,
    /// Requests nobody waits for an answer to (close, resign).
    Oneway,
    /// The leader's list of handoff records.
    LeadHandoffs,
}

/// How many slots there are.
pub(super) const SLOTS: usize = 13;

/// A request to the store.
#[derive(Debug, Clone)]
pub(super) enum Req {
    /// A consistent list of a prefix.
    List(String),
    /// A watch of a prefix from after a revision.
    Watch(String, u64),
    /// An observation of the leader slot.
    ObserveLeader,
    /// A new session, and the member key bound to it.
    Register(String, Bytes),
    /// A session renewal.
    Renew(SessionId),
    /// The end of a session.
    Close(SessionId),
    /// A campaign for the leader slot, with the leader value.
    Campaign(SessionId, String),
    /// A resignation of a term.
    Resign(Fence),
    /// A fenced transaction.
    Txn(Fence, Vec<TxnOp>),
    /// A transaction whose sender already got an error: the store applies
    /// it now, and nobody hears of it.
    LateTxn(Fence, Vec<TxnOp>),
    /// The leader's consistent read: members, assignments, handoff records
    /// and the sequence key.
    ListAssignments,
    /// A member-key write bound to the session.
    PutBound(SessionId, String, Bytes),
}

/// An answer of the store, or a watch event.
#[derive(Debug, Clone)]
pub(super) enum Msg {
    /// A list.
    Snapshot(Snapshot),
    /// A watch event.
    Watch(WatchEvent),
    /// The leader slot as observed.
    Leader(Option<Leader>),
    /// A registration's session.
    Session(SessionId),
    /// A renewal: whether the session still lives.
    Renewed(bool),
    /// A campaign: the fence if it won.
    Campaign(Option<Fence>),
    /// A transaction's outcome.
    Txn(TxnOutcome),
    /// The leader's consistent read.
    Read(LeaderRead),
    /// A bound write: applied, or not (the session is gone).
    Written(bool),
    /// An error: nothing known of what the store did.
    Err(&'static str),
}

/// An open watch or leader observation at the store.
#[derive(Debug)]
pub(super) struct Watch {
    /// The watcher's incarnation.
    pub(super) inc: u32,
    /// The watcher's slot generation.
    pub(super) gen: u64,
    /// `None`: a leader observation.
    pub(super) prefix: Option<String>,
    /// Silent: it delivers nothing more.
    pub(super) silent: bool,
    /// When its last event arrives: the next comes no earlier (events in order).
    pub(super) free_at: Nanos,
    /// A leader observation: the last leader it delivered.
    pub(super) last_leader: Option<Leader>,
}

impl Sim {
    /// One hop's latency: 0.2–5 ms, plus up to the latency fault's extra.
    fn latency(&mut self) -> Nanos {
        let base = self.rng.random_range(200_000..5 * MS);
        let extra = if self.extra_latency > 0 {
            self.rng.random_range(0..=self.extra_latency)
        } else {
            0
        };
        base + extra
    }

    /// Node `n` sends `req` in `slot` (superseding what was in flight there); a cut-off node's request fails after the request timeout.
    pub(super) fn send(&mut self, n: usize, slot: Slot, req: Req) {
        self.cancel_watch(n, slot);
        let node = &mut self.nodes[n];
        node.gens[slot as usize] += 1;
        let (gen, inc, cut) = (node.gens[slot as usize], node.inc, node.partitioned);
        if cut {
            if slot == Slot::Oneway {
                return; // lost; nobody waits for an answer
            }
            let at = self.now + self.p.request_timeout;
            self.reply_at(
                at,
                n,
                inc,
                slot,
                gen,
                Msg::Err("store unreachable (partition)"),
            );
            return;
        }
        let at = self.now + self.latency();
        self.push(
            at,
            Kind::Arrive {
                node: n,
                inc,
                slot,
                gen,
                req,
            },
        );
    }

    /// The store answers a request, after one hop's latency.
    fn respond(&mut self, node: usize, inc: u32, slot: Slot, gen: u64, msg: Msg) {
        if slot == Slot::Oneway {
            return;
        }
        let at = self.now + self.latency();
        self.reply_at(at, node, inc, slot, gen, msg);
    }

    /// Delivers a one-shot reply (not a stream event) to `node` at `at`.
    pub(super) fn reply_at(
        &mut self,
        at: Nanos,
        node: usize,
        inc: u32,
        slot: Slot,
        gen: u64,
        msg: Msg,
    ) {
        self.push(
            at,
            Kind::Reply {
                node,
                inc,
                slot,
                gen,
                stream: false,
                msg,
            },
        );
    }

    /// Closes node `n`'s watch in `slot`, if open.
    pub(super) fn cancel_watch(&mut self, n: usize, slot: Slot) {
        self.watches.remove(&(n, slot));
    }

    /// A request of node `n` reaches the store: the store-error faults strike here, else the store does what it asks and answers.
    #[allow(clippy::too_many_lines)] // one arm per request kind
    pub(super) fn arrive(&mut self, n: usize, inc: u32, slot: Slot, gen: u64, req: Req) {
        if let Req::LateTxn(fence, ops) = req {
            // Already at the store: no fault reaches it any more.
            let id = self.nodes[n].id.clone();
            tr!(self, "store: a late txn of {id} is applied now");
            self.store_txn(n, &fence, &ops);
            return;
        }
        if self.nodes[n].partitioned {
            if slot != Slot::Oneway {
                let at = self.now + self.p.request_timeout;
                self.reply_at(at, n, inc, slot, gen, Msg::Err("request lost (partition)"));
            }
            return;
        }
        if self.error_rate > 0.0 && self.rng.random_bool(self.error_rate) {
            self.respond(n, inc, slot, gen, Msg::Err("store error"));
            return;
        }
        // In an error window, a transaction may reach the store and wait
        // there (a slow Raft apply, a proposal that commits after a
        // timeout): its sender gets an error now, the store applies it
        // 0.1–5 s later.
        if self.error_rate > 0.0
            && matches!(req, Req::Txn(..))
            && self.late_rng.random_bool(self.error_rate)
        {
            if let Req::Txn(fence, ops) = req {
                let at = self.now + self.late_rng.random_range(100 * MS..=10 * SEC);
                let id = self.nodes[n].id.clone();
                tr!(
                    self,
                    "fault: a txn of {id} waits at the store; its sender times out"
                );
                self.push(
                    at,
                    Kind::Arrive {
                        node: n,
                        inc,
                        slot: Slot::Oneway,
                        gen: 0,
                        req: Req::LateTxn(fence, ops),
                    },
                );
            }
            self.respond(n, inc, slot, gen, Msg::Err("request timed out"));
            return;
        }
        // In an error window, a reply may also be lost after the store acted.
        let lose_reply = self.error_rate > 0.0 && self.rng.random_bool(self.error_rate / 2.0);
        let id = self.nodes[n].id.clone();
        let msg = match req {
            Req::List(prefix) => Msg::Snapshot(self.store.list(&prefix)),
            Req::Watch(prefix, after) => {
                let alive = self.deliverable(n, inc) && self.nodes[n].gens[slot as usize] == gen;
                if alive {
                    self.open_watch(n, inc, slot, gen, prefix, after);
                }
                return;
            }
            Req::ObserveLeader => {
                if self.deliverable(n, inc) && self.nodes[n].gens[slot as usize] == gen {
                    let current = self.store.leader();
                    self.watches.insert(
                        (n, slot),
                        Watch {
                            inc,
                            gen,
                            prefix: None,
                            silent: false,
                            free_at: 0,
                            last_leader: current.clone(),
                        },
                    );
                    self.deliver(n, slot, Msg::Leader(current));
                }
                return;
            }
            Req::Register(key, value) => {
                let s = self.store.open_session(self.p.ttl, self.now);
                let at = self.now + self.p.ttl;
                self.push(at, Kind::Expire(s.clone()));
                if let Some(a) = self.store.put_bound(&s, &key, value) {
                    tr!(self, "store: {id} registered {s}");
                    self.applied(&a);
                    Msg::Session(s)
                } else {
                    if let Some(a) = self.store.end_session(&s) {
                        self.applied(&a);
                    }
                    Msg::Err("member key held by another session")
                }
            }
            Req::Renew(s) => {
                let ok = self.store.renew(&s, self.now);
                if ok {
                    let at = self.now + self.p.ttl;
                    self.push(at, Kind::Expire(s));
                }
                Msg::Renewed(ok)
            }
            Req::Close(s) => {
                if let Some(a) = self.store.end_session(&s) {
                    tr!(self, "store: {id} closed {s}");
                    self.applied(&a);
                }
                return;
            }
            Req::Campaign(s, value) => {
                let (fence, changed) = self.store.try_lead(&s, &value);
                if changed {
                    tr!(
                        self,
                        "store: {id} leads, term {}",
                        fence.as_ref().map_or(0, Fence::term)
                    );
                    self.leader_changed();
                }
                Msg::Campaign(fence)
            }
            Req::Resign(fence) => {
                if self.store.resign(&fence) {
                    tr!(self, "store: {id} resigned term {}", fence.term());
                    self.leader_changed();
                }
                return;
            }
            Req::ListAssignments => {
                let read = |prefix: &str| self.store.list(prefix).entries;
                Msg::Read(LeaderRead {
                    members: read(&self.layout.members),
                    assignments: read(&self.layout.assignments),
                    records: read(&self.layout.handoff),
                    sequence: self.store.modified(&self.layout.sequence),
                })
            }
            Req::LateTxn(..) => unreachable!("handled above"),
            Req::PutBound(session, key, value) => match self.store.put_bound(&session, &key, value)
            {
                Some(a) => {
                    self.applied(&a);
                    Msg::Written(true)
                }
                None => Msg::Written(false),
            },
            Req::Txn(_, ops) if !self.txn_accepted(&ops) => {
                // The store refuses it whole, as etcd refuses a request past
                // `--max-request-bytes` or naming a key twice, and Consul one
                // past `txn_max_req_len`: the leader would rebuild it forever.
                self.txn_refused(&id, &ops);
                Msg::Err("transaction refused by the store")
            }
            Req::Txn(fence, ops) => {
                let outcome = self.store_txn(n, &fence, &ops);
                if self.mid_write_loss && matches!(outcome, TxnOutcome::Applied { .. }) {
                    self.mid_write_loss = false;
                    tr!(
                        self,
                        "fault: leader {id} loses its session between two chunks"
                    );
                    if let Some(a) = self.store.end_session(fence.session()) {
                        self.applied(&a);
                    }
                }
                Msg::Txn(outcome)
            }
        };
        if lose_reply {
            self.respond(n, inc, slot, gen, Msg::Err("reply lost (store error)"));
        } else {
            self.respond(n, inc, slot, gen, msg);
        }
    }

    /// Whether the store takes a transaction: within its limits, no key
    /// named twice.
    fn txn_accepted(&self, ops: &[TxnOp]) -> bool {
        let mut keys = std::collections::BTreeSet::new();
        self.limits.fit(ops) && ops.iter().all(|op| keys.insert(op.key()))
    }

    /// A fenced transaction at the store, with invariants 1 (no write of a
    /// member that does not lead) and 2 (no item under two members) checked.
    fn store_txn(&mut self, n: usize, fence: &Fence, ops: &[TxnOp]) -> TxnOutcome {
        let id = self.nodes[n].id.clone();
        let holds = self.store.holds(fence);
        let (outcome, a) = self.store.txn(fence, ops);
        let listed = self.ops_summary(ops);
        tr!(
            self,
            "store: txn of {id} term {} [{listed}] -> {:?}",
            fence.term(),
            outcome
        );
        self.check_fenced_write(&id, fence, holds, &outcome);
        self.applied(&a);
        self.check_owners(&a);
        outcome
    }

    /// A short form of a transaction for the trace: `+a/m1/w3` puts an
    /// assignment, `-` deletes, `+h/w3` / `-h/w3` a handoff record,
    /// `!m/m1` guards on a member key being absent.
    pub(super) fn ops_summary(&self, ops: &[TxnOp]) -> String {
        let short = |k: &str| {
            if let Some(r) = k.strip_prefix(self.layout.assignments.as_str()) {
                format!("a/{r}")
            } else if let Some(r) = k.strip_prefix(self.layout.handoff.as_str()) {
                format!("h/{r}")
            } else if let Some(r) = k.strip_prefix(self.layout.members.as_str()) {
                format!("m/{r}")
            } else {
                k.to_owned()
            }
        };
        let parts: Vec<String> = ops
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, .. } => format!("+{}", short(key)),
                TxnOp::Delete { key } => format!("-{}", short(key)),
                TxnOp::Absent { key } => format!("!{}", short(key)),
                TxnOp::Sequence { index, .. } => format!("#{index}"),
            })
            .collect();
        parts.join(" ")
    }

    /// Opens a watch of `prefix` after revision `after`: the changes since then come at once, or `Lost` if they were compacted.
    fn open_watch(&mut self, n: usize, inc: u32, slot: Slot, gen: u64, prefix: String, after: u64) {
        let Some(backlog) = self.store.changes_after(&prefix, after) else {
            let c = self.store.compacted();
            // Registered (silent) until the member drops it, so that a
            // partition that swallows the answer still breaks the stream.
            self.watches.insert(
                (n, slot),
                Watch {
                    inc,
                    gen,
                    prefix: Some(prefix),
                    silent: false,
                    free_at: 0,
                    last_leader: None,
                },
            );
            self.deliver(
                n,
                slot,
                Msg::Watch(WatchEvent::Lost {
                    reason: format!("revision {after} compacted (up to {c})"),
                }),
            );
            if let Some(w) = self.watches.get_mut(&(n, slot)) {
                w.silent = true;
            }
            return;
        };
        self.watches.insert(
            (n, slot),
            Watch {
                inc,
                gen,
                prefix: Some(prefix.clone()),
                silent: false,
                free_at: 0,
                last_leader: None,
            },
        );
        if !backlog.is_empty() {
            let rev = self.store.revision();
            let msg = self.kv_event(&prefix, rev, &backlog);
            self.deliver(n, slot, msg);
        }
    }

    /// The watch event for `changes` under `prefix` at `rev`: the changes (etcd) or a new picture of the prefix (Consul).
    fn kv_event(&self, prefix: &str, rev: u64, changes: &[(u64, String, Option<Bytes>)]) -> Msg {
        match self.store.flavor {
            Flavor::Etcd => Msg::Watch(WatchEvent::Changes {
                revision: rev,
                changes: changes
                    .iter()
                    .map(|(_, k, v)| match v {
                        Some(v) => KvChange::Put(KvEntry::new(k.as_bytes().to_vec(), v.clone())),
                        None => KvChange::Delete {
                            key: k.as_bytes().to_vec(),
                        },
                    })
                    .collect(),
            }),
            Flavor::Consul => Msg::Watch(WatchEvent::Snapshot(self.store.list(prefix))),
        }
    }

    /// Sends `msg` down the open watch `(n, slot)`, in order.
    pub(super) fn deliver(&mut self, n: usize, slot: Slot, msg: Msg) {
        let lat = self.latency();
        let Some(w) = self.watches.get_mut(&(n, slot)) else {
            return;
        };
        let at = (self.now + lat).max(w.free_at);
        w.free_at = at;
        let (inc, gen) = (w.inc, w.gen);
        self.push(
            at,
            Kind::Reply {
                node: n,
                inc,
                slot,
                gen,
                stream: true,
                msg,
            },
        );
    }

    /// Tells the watches about a write.
    pub(super) fn applied(&mut self, a: &Applied) {
        if a.leader_changed {
            self.leader_changed();
        }
        if a.changes.is_empty() {
            return;
        }
        let targets: Vec<((usize, Slot), String)> = self
            .watches
            .iter()
            .filter(|(_, w)| !w.silent)
            .filter_map(|(k, w)| w.prefix.clone().map(|p| (*k, p)))
            .filter(|(_, p)| a.changes.iter().any(|(k, _)| k.starts_with(p.as_str())))
            .collect();
        for ((n, slot), prefix) in targets {
            let changes: Vec<(u64, String, Option<Bytes>)> = a
                .changes
                .iter()
                .filter(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(k, v)| (a.rev, k.clone(), v.clone()))
                .collect();
            let msg = self.kv_event(&prefix, a.rev, &changes);
            self.deliver(n, slot, msg);
        }
    }

    /// Tells the leader observations about a new leader (or none).
    fn leader_changed(&mut self) {
        let current = self.store.leader();
        let targets: Vec<(usize, Slot)> = self
            .watches
            .iter_mut()
            .filter(|(_, w)| w.prefix.is_none() && !w.silent && w.last_leader != current)
            .map(|(k, w)| {
                w.last_leader.clone_from(&current);
                *k
            })
            .collect();
        for (n, slot) in targets {
            self.deliver(n, slot, Msg::Leader(current.clone()));
        }
    }
}
