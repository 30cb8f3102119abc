//! Store answers and watch events fed back to the machines, as the tokio
//! drivers hand them over.

use worker_core::WatchEvent;

use super::clock::MS;
use super::node::Restoring;
use super::requests::{Msg, Slot};
use super::Sim;

impl Sim {
    /// Hands an answer or watch event for `slot` to the machine of node `n` that awaits it.
    #[allow(clippy::too_many_lines)] // one arm per slot
    pub(super) fn reply(&mut self, n: usize, slot: Slot, msg: Msg) {
        let (s, t) = (self.std_at(n), self.std_at(n));
        let id = self.nodes[n].id.clone();
        match (slot, msg) {
            (Slot::WorkerKv, Msg::Snapshot(snap)) => {
                let node = &mut self.nodes[n];
                if node.restoring == Some(Restoring::Listing) {
                    node.restoring = Some(Restoring::Settling);
                }
                node.worker.handle_list(s, &snap);
            }
            (Slot::WorkerKv, Msg::Watch(ev)) => {
                if let WatchEvent::Lost { reason } = &ev {
                    tr!(self, "{id} worker: position lost ({reason})");
                }
                self.nodes[n].worker.handle_watch(s, ev);
            }
            (Slot::WorkerKv, Msg::Err(e)) => {
                tr!(self, "{id} worker: kv error: {e}");
                self.nodes[n].worker.handle_kv_error(s);
            }
            (Slot::WorkerLeader, Msg::Leader(l)) => {
                tr!(self, "{id} worker: leader {:?}", l.as_ref().map(|l| l.term));
                self.nodes[n].worker.handle_leader(s, l);
            }
            (Slot::WorkerLeader, Msg::Err(_)) => {
                self.nodes[n].worker.handle_leader_error(s);
            }
            (Slot::Register, Msg::Session(sid)) => {
                let node = &mut self.nodes[n];
                node.registering = false;
                node.written = node.pending_meta.take();
                node.member.handle_registered::<()>(t, Ok(sid));
            }
            (Slot::Register, Msg::Err(e)) => {
                tr!(self, "{id} register failed: {e}");
                let node = &mut self.nodes[n];
                node.registering = false;
                node.pending_meta = None;
                node.member.handle_registered::<()>(t, Err(()));
            }
            (Slot::MemberKey, msg) => {
                let retry = self.local_now(n) + 100 * MS;
                let node = &mut self.nodes[n];
                node.meta_in_flight = false;
                let meta = node.pending_meta.take();
                match msg {
                    Msg::Written(true) => {
                        let acked = meta.as_ref().and_then(|m| m.acked).unwrap_or(0);
                        node.written = meta;
                        self.acks += 1;
                        tr!(self, "{id} acked {acked}");
                    }
                    Msg::Written(false) => {
                        // As `member.rs`: the session is gone; released at
                        // once, registered anew.
                        node.meta_retry_at = Some(retry);
                        if let Some(session) = node.member.session().cloned() {
                            tr!(self, "{id} member key not written: session {session} gone");
                            self.nodes[n].member.handle_session_gone(t, &session);
                        }
                    }
                    Msg::Err(_) => node.meta_retry_at = Some(retry),
                    other => unreachable!("member key write got {other:?}"),
                }
            }
            (Slot::Renew, Msg::Renewed(ok)) => {
                if !ok {
                    tr!(self, "{id} session gone");
                }
                self.nodes[n].member.handle_renewed::<()>(t, Ok(ok));
            }
            (Slot::Renew, Msg::Err(_)) => self.nodes[n].member.handle_renewed::<()>(t, Err(())),
            (Slot::Observe, Msg::Leader(l)) => {
                self.nodes[n].member.handle_observed::<()>(t, Ok(l));
            }
            (Slot::Observe, Msg::Err(_)) => {
                self.nodes[n].gens[Slot::Observe as usize] += 1;
                self.nodes[n].member.handle_observed::<()>(t, Err(()));
            }
            (Slot::Campaign, Msg::Campaign(f)) => {
                self.nodes[n].member.handle_campaign::<()>(t, Ok(f));
            }
            (Slot::Campaign, Msg::Err(_)) => self.nodes[n].member.handle_campaign::<()>(t, Err(())),
            (Slot::LeadList, Msg::Read(read)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_read(t, &read);
                }
            }
            (Slot::LeadList, Msg::Err(_)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_assignments_error(t);
                }
            }
            (Slot::LeadHandoffs, Msg::Snapshot(snap)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_handoffs(
                        t,
                        snap.entries
                            .iter()
                            .map(|e| (e.key.as_slice(), &e.value, e.revision)),
                    );
                }
            }
            (Slot::LeadHandoffs, Msg::Err(_)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_handoffs_error(t);
                }
            }
            (Slot::LeadWrite, Msg::Txn(o)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_write::<()>(t, Ok(o));
                }
            }
            (Slot::LeadWrite, Msg::Err(_)) => {
                if let Some(lead) = &mut self.nodes[n].lead {
                    lead.machine.handle_write::<()>(t, Err(()));
                }
            }
            (Slot::FollowMembers | Slot::FollowItems, msg) => self.follow(n, slot, msg),
            (slot, msg) => unreachable!("{slot:?} got {msg:?}"),
        }
    }

    /// A reply or watch event for a prefix follower, as `follow.rs` hands it
    /// over; after a failure the follower's watch is dropped, as the tokio
    /// driver drops its stream.
    fn follow(&mut self, n: usize, slot: Slot, msg: Msg) {
        let t = self.std_at(n);
        let Some(lead) = &mut self.nodes[n].lead else {
            return;
        };
        let f = lead.follower(slot);
        let failed = match msg {
            Msg::Snapshot(s) => {
                f.handle_list(t, s);
                false
            }
            Msg::Watch(ev) => f.handle_watch(t, ev).is_some(),
            // A list or a watch failed: the follower knows which it awaits.
            Msg::Err(_) => f
                .handle_list_error(t)
                .or_else(|| f.handle_watch_error(t))
                .is_some(),
            other => unreachable!("follower got {other:?}"),
        };
        if failed {
            self.cancel_watch(n, slot);
            self.nodes[n].gens[slot as usize] += 1;
        }
    }
}
