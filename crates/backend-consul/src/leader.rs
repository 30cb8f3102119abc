//! Leadership: the session holding the leader key.

use std::sync::Arc;

use async_trait::async_trait;
use consulrs::api::kv::common::KVPair;
use worker_core::{Leader, LeaderStream, Revision, StoreError};

use tokio::time::Instant;

use crate::http::Http;
use crate::ratelimit::TokenBucket;
use crate::watch::early;

/// The leader the key's state shows: present when the key holds a session.
///
/// `term` is `CreateIndex + LockIndex`: it grows with every acquisition of the
/// key (`LockIndex` counts them; when the key is deleted and created again,
/// the new `CreateIndex` is above every index of the old key), and does not
/// move when the holder only rewrites the value (which changes `ModifyIndex`).
pub(crate) fn leader_of(key: &str, pairs: &[KVPair]) -> Option<Leader> {
    let pair = pairs.iter().find(|p| p.key == key)?;
    let session = pair.session.as_deref().filter(|s| !s.is_empty())?;
    Some(Leader {
        id: session.to_owned(),
        term: pair.create_index.saturating_add(pair.lock_index),
    })
}

/// Reads the leader key, blocking on `index` when one is given.
pub(crate) async fn read(
    http: &Http,
    key: &str,
    index: Option<Revision>,
) -> Result<(Revision, Option<Leader>), StoreError> {
    let answer = http.read(key, false, index).await?;
    Ok((answer.index, leader_of(key, &answer.pairs)))
}

/// Blocking queries on the leader key; see [`LeaderStream`].
pub(crate) struct ConsulLeaderStream {
    http: Arc<Http>,
    key: String,
    index: Revision,
    /// Whether a state was returned yet (the first call does not block).
    started: bool,
    /// The state last returned.
    last: Option<Leader>,
    unchanged: bool,
    /// Whether the next read is a plain one (see [`crate::watch::early`]).
    verify: bool,
    bucket: TokenBucket,
}

impl ConsulLeaderStream {
    pub(crate) fn new(http: Arc<Http>, key: &str) -> Self {
        Self {
            http,
            key: key.to_owned(),
            index: 0,
            started: false,
            last: None,
            unchanged: false,
            verify: false,
            bucket: TokenBucket::new(),
        }
    }
}

#[async_trait]
impl LeaderStream for ConsulLeaderStream {
    /// The first call reads the key at once; later calls block on it until the
    /// leader differs from the one last returned. Answers that change nothing
    /// are paced by the rate limiter; an index that went backwards is reset to
    /// 0 (the next query then answers at once).
    ///
    /// Cancel safe: the state is consistent at every await point.
    async fn next(&mut self) -> Result<Option<Leader>, StoreError> {
        loop {
            let blocking = self.started && !std::mem::take(&mut self.verify);
            if self.started && self.unchanged {
                self.bucket.take().await;
            }
            let sent_at = Instant::now();
            let (index, leader) = read(&self.http, &self.key, blocking.then_some(self.index))
                .await
                .inspect_err(|_| self.verify = self.started && !blocking)?;
            // An early answer with the same index: Consul may have abandoned
            // its state (snapshot restore); check with a plain read.
            self.verify =
                blocking && index == self.index && early(sent_at.elapsed(), self.http.wait());
            self.index = if index < self.index { 0 } else { index };
            if self.started && self.last == leader {
                self.unchanged = true;
                continue;
            }
            self.unchanged = false;
            self.started = true;
            self.last.clone_from(&leader);
            return Ok(leader);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, session: Option<&str>, create: u64, lock: u64, modify: u64) -> KVPair {
        KVPair {
            key: key.into(),
            session: session.map(Into::into),
            create_index: create,
            lock_index: lock,
            modify_index: modify,
            ..KVPair::default()
        }
    }

    #[test]
    fn a_leader_is_a_session_holding_the_key() {
        let key = "svc/leader";
        assert_eq!(leader_of(key, &[]), None);
        assert_eq!(leader_of(key, &[pair(key, None, 5, 1, 7)]), None);
        assert_eq!(leader_of(key, &[pair(key, Some(""), 5, 1, 7)]), None);
        assert_eq!(leader_of(key, &[pair("other", Some("s"), 5, 1, 7)]), None);
        let l = leader_of(key, &[pair(key, Some("s1"), 5, 1, 7)]).unwrap();
        assert_eq!(
            l,
            Leader {
                id: "s1".into(),
                term: 6
            }
        );
        // A value rewrite by the holder moves ModifyIndex only: same term.
        assert_eq!(
            leader_of(key, &[pair(key, Some("s1"), 5, 1, 9)]),
            Some(l.clone())
        );
        // A new acquisition moves LockIndex: a new term.
        assert_ne!(leader_of(key, &[pair(key, Some("s1"), 5, 2, 12)]), Some(l));
    }
}
