//! Leadership from an etcd v3 election.
//!
//! `etcdctl elect NAME PROPOSAL` (and every client of etcd's `concurrency`
//! package) campaigns by creating the key `NAME/<lease id in hex>` with the
//! proposal as value, attached to its session lease; the leader is the key with
//! the lowest create revision under `NAME/`. Resigning (or the lease expiring)
//! deletes the key. This module reads that directly: a prefix GET sorted by
//! create revision, and a prefix watch that triggers a new GET on any change.
//! (The election service's `Observe` call fails while there is no leader, which
//! is exactly the state the worker must wait in.)

use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{GetOptions, SortOrder, SortTarget};
use worker_core::{Leader, LeaderStream, StoreError};

use crate::error::store_error;
use crate::pool::Pool;
use crate::watch::{to_revision, Watcher};

/// The current leader of the election whose keys start with `prefix`, and the
/// revision the read was made at.
pub(crate) async fn current_leader(
    pool: &Pool,
    prefix: &[u8],
) -> Result<(Option<Leader>, i64), StoreError> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let (response, _) = pool
        .run(|mut client| {
            let (key, options) = (prefix.to_vec(), options.clone());
            async move { client.get(key, Some(options)).await.map_err(store_error) }
        })
        .await?;
    let revision = response
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    let leader = response.kvs().first().map(|kv| Leader {
        id: String::from_utf8_lossy(kv.value()).into_owned(),
        term: to_revision(kv.create_revision()),
    });
    Ok((leader, revision))
}

/// [`LeaderStream`] over an election prefix.
pub(crate) struct EtcdLeaderStream {
    pool: Arc<Pool>,
    prefix: Vec<u8>,
    /// What the last call returned (`None`: nothing returned yet).
    // The three states (nothing returned / no leader / a leader) are all needed.
    #[allow(clippy::option_option)]
    last: Option<Option<Leader>>,
    watcher: Option<Watcher>,
    /// The election keys changed since the last read.
    dirty: bool,
}

impl EtcdLeaderStream {
    pub(crate) fn new(pool: Arc<Pool>, prefix: Vec<u8>) -> Self {
        Self {
            pool,
            prefix,
            last: None,
            watcher: None,
            dirty: true,
        }
    }

    /// One read or one watch message; `Some(state)` when there is a state to return.
    // As for `last`: "nothing to return" differs from "no leader".
    #[allow(clippy::option_option)]
    async fn step(&mut self) -> Result<Option<Option<Leader>>, StoreError> {
        if self.dirty || self.watcher.is_none() {
            let (leader, revision) = current_leader(&self.pool, &self.prefix).await?;
            if self.watcher.is_none() {
                let watcher =
                    Watcher::open(self.pool.clone(), &self.prefix, revision.saturating_add(1))
                        .await?;
                self.watcher = Some(watcher);
            }
            self.dirty = false;
            if self.last.as_ref() != Some(&leader) {
                self.last = Some(leader.clone());
                return Ok(Some(leader));
            }
            return Ok(None);
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return Ok(None);
        };
        let response = match watcher.next_response().await {
            Ok(r) => r,
            Err(e) => {
                self.watcher = None;
                return Err(e);
            }
        };
        if response.canceled() || response.compact_revision() > 0 {
            // Read afresh and watch again from there.
            self.watcher = None;
        } else if !response.events().is_empty() {
            self.dirty = true;
        }
        Ok(None)
    }
}

#[async_trait]
impl LeaderStream for EtcdLeaderStream {
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        loop {
            if let Some(state) = self.step().await? {
                return Ok(state);
            }
        }
    }
}
