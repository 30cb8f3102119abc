//! The event loop: takes the events in time order, wakes each member's
//! machines when a timer is due, hands events to the store, the members and
//! the fault schedule, checks the invariants after every step and the
//! convergence at the end.

use std::cmp::Reverse;

use super::clock::SEC;
use super::outcome::{Failure, Outcome};
use super::requests::Msg;
use super::{Ev, Kind, Sim};

impl Sim {
    /// Runs to the end; `Err` names the first broken invariant.
    pub fn run(mut self) -> Result<Outcome, Box<Failure>> {
        let end = self.cfg.seconds * SEC;
        while let Some(Reverse(ev)) = self.queue.pop() {
            if ev.at > end {
                break;
            }
            self.now = ev.at;
            self.events += 1;
            self.step(ev);
            if self.failure.is_none() {
                self.check_step();
            }
            if let Some(what) = self.failure.take() {
                return Err(self.fail(what));
            }
        }
        self.now = end;
        self.check_converged();
        if let Some(what) = self.failure.take() {
            return Err(self.fail(what));
        }
        Ok(Outcome {
            digest: self.trace.digest(),
            lines: self.trace.lines(),
            events: self.events,
            simulated: end,
            plans: self.plans,
            publications: self.publications,
            faults: self.faults,
            exclusive: self.exclusive,
            acks: self.acks,
            releases: self.releases,
            stale_records: self.stale_records,
            cold_primaries: self.cold_primaries,
            promotions: self.promotions,
            zone_outages: self.zone_outages,
            drains: self.drains,
            fewest_checked: self.fewest_checked,
            cold_after_outage: self.cold_after_outage,
            lost_every_replica: self.lost_every_replica,
            longest_orphaned: self.longest_orphaned,
        })
    }

    /// Processes one event.
    fn step(&mut self, ev: Ev) {
        match ev.kind {
            Kind::Wake(n, inc) => {
                if !self.deliverable(n, inc) {
                    return;
                }
                if self.nodes[n].paused {
                    self.nodes[n].backlog.push(ev);
                    return;
                }
                if self.nodes[n].armed != Some(self.now) {
                    return;
                }
                self.nodes[n].armed = None;
                self.timeout(n);
                self.drive(n);
            }
            Kind::Arrive {
                node,
                inc,
                slot,
                gen,
                req,
            } => self.arrive(node, inc, slot, gen, req),
            Kind::Reply {
                node,
                inc,
                slot,
                gen,
                stream,
                msg,
            } => {
                if !self.deliverable(node, inc) {
                    return;
                }
                if self.nodes[node].paused {
                    self.nodes[node].backlog.push(Ev {
                        at: ev.at,
                        seq: ev.seq,
                        kind: Kind::Reply {
                            node,
                            inc,
                            slot,
                            gen,
                            stream,
                            msg,
                        },
                    });
                    return;
                }
                if self.nodes[node].gens[slot as usize] != gen {
                    return;
                }
                let msg = if self.nodes[node].partitioned && !matches!(msg, Msg::Err(_)) {
                    if stream {
                        return; // the cut-off watch's error is already on its way
                    }
                    Msg::Err("reply lost (partition)")
                } else {
                    msg
                };
                self.reply(node, slot, msg);
                self.drive(node);
            }
            Kind::Expire(session) => {
                if let Some(a) = self.store.expire_if_due(&session, self.now) {
                    tr!(self, "store: session {session} expired");
                    self.applied(&a);
                }
            }
            Kind::Fault(f) => self.fault(f),
        }
    }

    /// The failure report of invariant break `what`.
    #[allow(clippy::unnecessary_box_returns)] // `run` returns it boxed: it is large
    fn fail(&mut self, what: String) -> Box<Failure> {
        tr!(self, "VIOLATION: {what}");
        Box::new(Failure {
            seed: self.cfg.seed,
            at: self.now,
            what,
            trace: self.trace.recent().cloned().collect(),
            exclusive: self.exclusive,
        })
    }
}
