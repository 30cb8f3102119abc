//! Lease renewals on one long-lived `LeaseKeepAlive` stream per lease.
//!
//! etcd's Go client (`clientv3/lease.go`) keeps one keep-alive stream open and
//! sends a request on it every TTL/3; so does this backend, driven by the
//! member's own renewals ([`Membership::renew_session`]): the first renewal of
//! a lease opens a stream (whose opening request is that renewal), later ones
//! send one request on it and read its answer. A stream is replaced by a new
//! one when
//!
//! - it fails or is closed (the answer is an error, or none comes within the
//!   request timeout): the renewal opens a new stream, on the same endpoint if
//!   the old one failed at once (a connection reset since the last renewal),
//!   on the next endpoint if it timed out or the new stream failed too
//!   (the pool's failover, each endpoint tried once within the request timeout);
//! - the pool moved to another endpoint, or rebuilt the client the stream was
//!   opened on (its connection was given up on);
//! - the lease is gone: an answer with TTL 0, or the session closed, forgets
//!   the lease's stream (a lease granted again has a new id, so a new stream).
//!
//! [`Membership::renew_session`]: worker_core::Membership::renew_session

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tracing::debug;
use worker_core::{ErrorChain, StoreError};

use crate::coord::is_lease_not_found;
use crate::error::{is_endpoint_failure, store_error, timeout};
use crate::pool::Pool;

/// An open keep-alive stream of one lease.
struct Stream {
    /// The endpoint it was opened on, and that endpoint's client generation.
    endpoint: usize,
    generation: u64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
}

/// The slot of one lease: its stream when one is open and idle. Taken out while
/// a renewal uses it, so that a renewal dropped between its request and the
/// answer leaves no stream whose next answer would be that stale one.
type Slot = Arc<tokio::sync::Mutex<Option<Stream>>>;

/// The keep-alive streams of one backend (shared by its clones), one per lease.
#[derive(Default)]
pub(crate) struct KeepAlives {
    leases: Mutex<HashMap<i64, Slot>>,
    /// Streams opened so far (tests, diagnostics).
    opened: AtomicU64,
}

impl std::fmt::Debug for KeepAlives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlives")
            .field("opened", &self.opened())
            .finish_non_exhaustive()
    }
}

impl KeepAlives {
    /// How many `LeaseKeepAlive` streams were opened so far.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn slot(&self, lease: i64) -> Slot {
        self.leases
            .lock()
            .expect("keep-alive map poisoned")
            .entry(lease)
            .or_default()
            .clone()
    }

    /// Closes and forgets the stream of `lease` (the lease is gone).
    pub(crate) fn forget(&self, lease: i64) {
        self.leases
            .lock()
            .expect("keep-alive map poisoned")
            .remove(&lease);
    }

    /// One keep-alive request for `lease` and its answer: `Ok(true)` while the
    /// lease lives, `Ok(false)` when etcd answers TTL 0. Each endpoint is tried
    /// once, each try bounded by the request timeout, starting with the
    /// current one. Cancel safe.
    pub(crate) async fn renew(&self, pool: &Pool, lease: i64) -> Result<bool, StoreError> {
        let slot = self.slot(lease);
        let mut held = slot.lock().await;
        let mut stream = held.take();
        let n = pool.endpoints();
        let start = pool.current();
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let reuse = stream.take().filter(|s| s.endpoint == i);
            let attempt =
                tokio::time::timeout(pool.request_timeout, self.try_on(pool, i, lease, reuse));
            let result = match attempt.await {
                Ok(result) => result,
                Err(_) => Err(timeout(pool.request_timeout)),
            };
            match result {
                Ok(Some(s)) => {
                    pool.succeeded(i);
                    *held = Some(s);
                    return Ok(true);
                }
                Ok(None) => {
                    drop(held);
                    self.forget(lease);
                    return Ok(false);
                }
                Err(e) if is_endpoint_failure(&e) => {
                    pool.failed(i, &e).await;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| timeout(pool.request_timeout)))
    }

    /// A renewal on endpoint `i`: on `reuse` when it is still on the endpoint's
    /// current client, else (or when it fails) on a new stream. The stream to
    /// keep while the lease lives; `None` when etcd answered TTL 0 (the lease
    /// does not exist).
    async fn try_on(
        &self,
        pool: &Pool,
        i: usize,
        lease: i64,
        reuse: Option<Stream>,
    ) -> Result<Option<Stream>, StoreError> {
        if let Some(mut s) = reuse {
            if s.generation == pool.generation(i).await {
                match request(&mut s).await {
                    Ok(Some(true)) => return Ok(Some(s)),
                    Ok(Some(false)) => return Ok(None),
                    Ok(None) => debug!(lease, "etcd closed a keep-alive stream; opening another"),
                    Err(e) => {
                        debug!(lease, error = %ErrorChain(&e), "keep-alive stream failed; opening another");
                    }
                }
            }
        }
        let (mut client, generation) = pool.client_of(i).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        // Opening sends the first request and reads its answer.
        match client.lease_keep_alive(lease).await {
            Ok((keeper, answers)) => Ok(Some(Stream {
                endpoint: i,
                generation,
                keeper,
                answers,
            })),
            Err(e) if is_lease_not_found(&e) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }
}

/// One request on an open stream and its answer: `Some(alive)`, or `None` when
/// etcd ended the stream.
async fn request(s: &mut Stream) -> Result<Option<bool>, StoreError> {
    s.keeper.keep_alive().await.map_err(store_error)?;
    match s.answers.message().await {
        Ok(Some(answer)) => Ok(Some(answer.ttl() > 0)),
        Ok(None) => Ok(None),
        Err(e) if is_lease_not_found(&e) => Ok(Some(false)),
        Err(e) => Err(store_error(e)),
    }
}
