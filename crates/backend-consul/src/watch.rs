//! Assignments: recursive blocking queries on the member prefix.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::debug;
use worker_core::{KvStream, Revision, Snapshot, StoreError, WatchEvent};

use tokio::time::Instant;

use crate::decode::{self, Fingerprint};
use crate::http::Http;
use crate::ratelimit::TokenBucket;

/// What one blocking-query answer means, given the position the stream held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The index went backwards (snapshot restore, tombstone reaping, another
    /// cluster): the position is lost.
    Backwards,
    /// Same index: nothing happened (the wait elapsed).
    Same,
    /// A newer index: a new picture of the prefix.
    Newer,
}

pub(crate) fn classify(held: Revision, answered: Revision) -> Answer {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match answered.cmp(&held) {
        Less => Answer::Backwards,
        Equal => Answer::Same,
        Greater => Answer::Newer,
    }
}

/// Whether a blocking query that came back with its own index did so well
/// before its wait elapsed (so not because the wait elapsed).
pub(crate) fn early(elapsed: std::time::Duration, wait: std::time::Duration) -> bool {
    elapsed < wait / 2
}

/// Reads every key under `prefix` without blocking; also returns the
/// answer's fingerprint, for the watch that may follow.
pub(crate) async fn list(http: &Http, prefix: &str) -> Result<(Snapshot, Fingerprint), StoreError> {
    let answer = http.read(prefix, true, None).await?;
    let (entries, fingerprint) = decode::entries(prefix, &answer.body, 0)?;
    Ok((
        Snapshot {
            revision: answer.index,
            entries,
        },
        fingerprint,
    ))
}

/// A chain of blocking queries on one prefix; see [`KvStream`].
pub(crate) struct ConsulKvStream {
    http: Arc<Http>,
    prefix: String,
    /// The index the next query blocks on (0 after it went backwards).
    index: Revision,
    /// The fingerprint of the last answer, to tell whether an answer changed
    /// anything (a kept copy of the entries would cost a compare and a clone
    /// of the whole answer each time).
    last: Option<Fingerprint>,
    /// Whether the last answer changed nothing, so the next query must take a token.
    unchanged: bool,
    /// Whether the next read is a plain (non-blocking) one, to check the index
    /// first: the first read of every stream (the agent may have been
    /// replaced by one whose index is below the position, which a blocking
    /// query on the position would wait for until its wait ends), and the read
    /// after a blocking query came back early with the same index. Cleared
    /// only once an answer arrived.
    verify: bool,
    bucket: TokenBucket,
    /// The body buffer of the last answer, recycled for the next one.
    buf: Vec<u8>,
}

impl ConsulKvStream {
    /// A stream resuming after `after`; `seen` is the fingerprint of what the
    /// caller holds at that position, when known (answers with the same
    /// fingerprint are no event).
    pub(crate) fn new(
        http: Arc<Http>,
        prefix: &str,
        after: Revision,
        seen: Option<Fingerprint>,
    ) -> Self {
        Self {
            http,
            prefix: prefix.to_owned(),
            index: after,
            last: seen,
            unchanged: false,
            verify: true,
            bucket: TokenBucket::new(),
            buf: Vec::new(),
        }
    }
}

#[async_trait]
impl KvStream for ConsulKvStream {
    /// Blocking queries until one has something to say:
    /// [`WatchEvent::Snapshot`] when the entries changed,
    /// [`WatchEvent::Progress`] when the wait elapsed with the index unchanged,
    /// [`WatchEvent::Lost`] when the index went backwards (it is then reset to
    /// 0). An answer with a newer index but the same entries (Consul answers
    /// an empty prefix with the index of the whole KV store, so writes
    /// elsewhere can wake it) is not an event: the stream queries again.
    /// Queries after an answer that changed nothing wait for a token of the
    /// rate limiter.
    ///
    /// The first read of a stream does not block: it compares the agent's
    /// index with the position first, so that a position the agent will never
    /// reach (a fresh agent in place of the old one, a restored snapshot) is
    /// reported as [`WatchEvent::Lost`] at once instead of after the wait.
    ///
    /// Cancel safe: the only await points are the rate limiter's token (cancel
    /// safe itself) and the request; the stream's fields change only after an
    /// answer arrived, with no await point between that and the next query or
    /// returning. A dropped call leaves the stream as it was before it (the
    /// body buffer may hold part of an answer; the next read clears it).
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if self.unchanged {
                self.bucket.take().await;
            }
            let blocking = !self.verify;
            let sent_at = Instant::now();
            let index = self
                .http
                .read_into(
                    &self.prefix,
                    true,
                    blocking.then_some(self.index),
                    &mut self.buf,
                )
                .await?;
            self.verify = false;
            // Recycled for the next answer (shrunk when far larger than this one).
            if self.buf.capacity() > 4 * self.buf.len() + 65536 {
                self.buf.shrink_to(2 * self.buf.len());
            }
            match classify(self.index, index) {
                Answer::Backwards => {
                    let reason = format!(
                        "Consul index went backwards from {} to {} on {}",
                        self.index, index, self.prefix
                    );
                    self.index = 0;
                    self.last = None;
                    self.unchanged = false;
                    return Ok(WatchEvent::Lost { reason });
                }
                Answer::Same if blocking && early(sent_at.elapsed(), self.http.wait()) => {
                    // Consul answers a query it abandoned (a snapshot restore
                    // replaced its state) with the old state's index, and would
                    // block a query whose index is above the restored one until
                    // the wait ends. A plain read tells at once.
                    debug!(prefix = %self.prefix, index, "blocking query: early answer, checking the index");
                    self.unchanged = true;
                    self.verify = true;
                }
                Answer::Same => {
                    debug!(prefix = %self.prefix, index, "blocking query: no change");
                    self.unchanged = true;
                    if blocking {
                        return Ok(WatchEvent::Progress { revision: index });
                    }
                }
                Answer::Newer => {
                    let capacity = self.last.map_or(0, |f| f.keys() + 1);
                    let (entries, fingerprint) =
                        decode::entries(&self.prefix, &self.buf, capacity)?;
                    self.index = index;
                    if self.last == Some(fingerprint) {
                        debug!(prefix = %self.prefix, index, "blocking query: newer index, same entries");
                        self.unchanged = true;
                        continue;
                    }
                    self.unchanged = false;
                    self.last = Some(fingerprint);
                    return Ok(WatchEvent::Snapshot(Snapshot {
                        revision: index,
                        entries,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_index() {
        assert_eq!(classify(10, 9), Answer::Backwards);
        assert_eq!(classify(10, 10), Answer::Same);
        assert_eq!(classify(10, 11), Answer::Newer);
        assert_eq!(classify(0, 1), Answer::Newer);
    }
}
