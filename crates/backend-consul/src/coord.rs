//! The leader half on Consul: sessions, the leader key as an election,
//! fenced transactions and plain writes ([`Membership`](worker_core::Membership),
//! [`Election`](worker_core::Election), [`FencedWrite`](worker_core::FencedWrite),
//! [`KvWrite`](worker_core::KvWrite)).
//!
//! Every request goes through the backend's HTTP clients
//! ([`Http::endpoint`](crate::http::Http::endpoint)): the same token, TLS
//! settings and endpoint failover as the KV reads. See `docs/consul.md`
//! ("Members, election and fenced writes") for the choices.
//!
//! The rooms: [`request`] (one request and the errors it names), [`session`]
//! (sessions and their agent checks), [`election`] (the leader key),
//! [`txn`] (fenced transactions, their encoding and limits) and [`write`]
//! (plain writes).

mod election;
mod request;
mod session;
mod txn;
mod write;

pub(crate) use session::SessionChecks;
pub use session::{LOCK_DELAY, MAX_SESSION_TTL, MIN_CHECK_TTL, MIN_SESSION_TTL, SESSION_NAME};
pub(crate) use txn::txn_limits;
pub use txn::{FENCE_OPS, MAX_TXN_OPS};
