//! The election ([`Election`]): the leader key acquired by a session, its
//! fence read back from the key.

use async_trait::async_trait;
use consulrs::api::kv::common::KVPair;
use tracing::debug;
use worker_core::{Election, Fence, SessionId, StoreError};

use super::request::{lock_verb, read_pair};
use crate::http::Http;
use crate::{leader, ConsulBackend};

/// The fence of `session` on `key` as the key is now: `None` unless
/// `session` holds it. Its leader is what [`leader::leader_of`] (the
/// backend's [`LeaderWait`](worker_core::LeaderWait)) reports for it.
pub(super) async fn fence_of(
    http: &Http,
    key: &str,
    session: &SessionId,
) -> Result<Option<Fence>, StoreError> {
    let pairs: Vec<KVPair> = read_pair(http, key).await?.into_iter().collect();
    let revision = pairs.first().map_or(0, |p| p.modify_index);
    Ok(leader::leader_of(key, &pairs)
        .filter(|leader| leader.id == session.0)
        .map(|leader| Fence::new(session.clone(), key, leader, revision)))
}

#[async_trait]
impl Election for ConsulBackend {
    /// `PUT /v1/kv/<election>?acquire=<session>` with `value`, then a read of
    /// the key for the fence: its leader is the session and the term
    /// `CreateIndex + LockIndex`, as [`LeaderWait`](worker_core::LeaderWait)
    /// reports it. A refused acquisition still gives the fence when the key
    /// is already held by `session` (acquiring again keeps the term: Consul
    /// does not count an acquisition by the holder).
    async fn try_lead(
        &self,
        election: &str,
        session: &SessionId,
        value: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let http = &self.inner.http;
        // Already held by this session: the fence as it is. Acquiring again
        // would rewrite the key and move its ModifyIndex, fencing off the
        // leadership this session already runs.
        if let Some(fence) = fence_of(http, election, session).await? {
            return Ok(Some(fence));
        }
        let acquired = lock_verb(http, election, "acquire", session, value.into()).await?;
        let fence = fence_of(http, election, session).await?;
        if acquired && fence.is_none() {
            debug!(
                election,
                "the leader key was lost right after it was acquired"
            );
        }
        Ok(fence)
    }

    /// The leader key's value while a session holds it.
    async fn leader_value(&self, election: &str) -> Result<Option<String>, StoreError> {
        let Some(pair) = read_pair(&self.inner.http, election).await? else {
            return Ok(None);
        };
        if pair.session.as_deref().is_none_or(str::is_empty) {
            return Ok(None);
        }
        let value: Vec<u8> = match pair.value {
            Some(v) => v.try_into().map_err(StoreError::protocol)?,
            None => Vec::new(),
        };
        Ok(Some(String::from_utf8_lossy(&value).into_owned()))
    }

    /// `PUT /v1/kv/<key>?release=<session>`; not an error when the session
    /// no longer holds the key or is gone. With no lock-delay, another
    /// session can acquire the key at once.
    async fn resign(&self, fence: &Fence) -> Result<(), StoreError> {
        lock_verb(
            &self.inner.http,
            fence.key(),
            "release",
            fence.session(),
            Vec::new(),
        )
        .await?;
        Ok(())
    }
}
