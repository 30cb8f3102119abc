//! Assignments: recursive blocking queries on the member prefix.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::debug;
use worker_core::{KvEntry, KvStream, Revision, Snapshot, StoreError, WatchEvent};

use tokio::time::Instant;

use crate::http::{entries, Http};
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

/// Sorted by key, so that two answers compare equal when they hold the same entries.
fn sorted(mut entries: Vec<KvEntry>) -> Vec<KvEntry> {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

/// Reads every key under `prefix` without blocking.
pub(crate) async fn list(http: &Http, prefix: &str) -> Result<Snapshot, StoreError> {
    let answer = http.read(prefix, true, None).await?;
    Ok(Snapshot {
        revision: answer.index,
        entries: only_under(prefix, entries(answer.pairs)?),
    })
}

/// Consul's recursive read is a plain string-prefix match, which is what we
/// want; this only guards against a server that answers more than asked.
fn only_under(prefix: &str, mut entries: Vec<KvEntry>) -> Vec<KvEntry> {
    entries.retain(|e| e.key.starts_with(prefix.as_bytes()));
    sorted(entries)
}

/// A chain of blocking queries on one prefix; see [`KvStream`].
pub(crate) struct ConsulKvStream {
    http: Arc<Http>,
    prefix: String,
    /// The index the next query blocks on (0 after it went backwards).
    index: Revision,
    /// The entries of the last answer, to tell whether an answer changed anything.
    last: Option<Vec<KvEntry>>,
    /// Whether the last answer changed nothing, so the next query must take a token.
    unchanged: bool,
    /// Whether the next read is a plain (non-blocking) one, to check the index
    /// after a blocking query came back early with the same index.
    verify: bool,
    bucket: TokenBucket,
}

impl ConsulKvStream {
    /// A stream resuming after `after`; `seen` are the entries the caller
    /// holds at that position, when known (answers equal to them are no event).
    pub(crate) fn new(
        http: Arc<Http>,
        prefix: &str,
        after: Revision,
        seen: Option<Vec<KvEntry>>,
    ) -> Self {
        Self {
            http,
            prefix: prefix.to_owned(),
            index: after,
            last: seen,
            unchanged: false,
            verify: false,
            bucket: TokenBucket::new(),
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
    /// Cancel safe: the state changes only after an answer arrived, with no
    /// await point between that and the next query or returning.
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if self.unchanged {
                self.bucket.take().await;
            }
            let blocking = !std::mem::take(&mut self.verify);
            let sent_at = Instant::now();
            let answer = self
                .http
                .read(&self.prefix, true, blocking.then_some(self.index))
                .await
                .inspect_err(|_| self.verify = !blocking)?;
            match classify(self.index, answer.index) {
                Answer::Backwards => {
                    let reason = format!(
                        "Consul index went backwards from {} to {} on {}",
                        self.index, answer.index, self.prefix
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
                    debug!(prefix = %self.prefix, index = answer.index, "blocking query: early answer, checking the index");
                    self.unchanged = true;
                    self.verify = true;
                }
                Answer::Same => {
                    debug!(prefix = %self.prefix, index = answer.index, "blocking query: no change");
                    self.unchanged = true;
                    if blocking {
                        return Ok(WatchEvent::Progress {
                            revision: answer.index,
                        });
                    }
                }
                Answer::Newer => {
                    let entries = only_under(&self.prefix, entries(answer.pairs)?);
                    self.index = answer.index;
                    if self.last.as_ref() == Some(&entries) {
                        debug!(prefix = %self.prefix, index = answer.index, "blocking query: newer index, same entries");
                        self.unchanged = true;
                        continue;
                    }
                    self.unchanged = false;
                    self.last = Some(entries.clone());
                    return Ok(WatchEvent::Snapshot(Snapshot {
                        revision: answer.index,
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

    #[test]
    fn foreign_entries_are_dropped_and_the_rest_sorted() {
        let got = only_under(
            "p/m1/",
            vec![
                KvEntry::new("p/m1/b", "2"),
                KvEntry::new("p/m10/x", "no"),
                KvEntry::new("p/m1/a", "1"),
            ],
        );
        let keys: Vec<_> = got.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, [b"p/m1/a".to_vec(), b"p/m1/b".to_vec()]);
    }
}
