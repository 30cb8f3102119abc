//! The members' fenced transactions, timed: a wrapper around each member's
//! writer notes every transaction it sends, when, and whether it applied.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use worker_core::{ConsistentRead, Fence, FencedWrite, StoreError, TxnLimits, TxnOp, TxnOutcome};

/// One fenced transaction as a member's writer sent it.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    /// When it was sent.
    pub(super) started: Instant,
    /// When its answer came.
    pub(super) ended: Instant,
    /// Its operations.
    pub(super) ops: Vec<TxnOp>,
    /// Whether the store applied it.
    pub(super) applied: bool,
}

/// The transactions the members' writers sent, in the order sent.
pub(super) type SentLog = Arc<Mutex<Vec<Sent>>>;

/// A member's writer that notes every transaction it sends (only a leader
/// sends any).
pub(super) struct Recording {
    /// The member's own writer.
    pub(super) inner: Arc<dyn FencedWrite>,
    /// Where each transaction is noted.
    pub(super) log: SentLog,
}

#[async_trait]
impl FencedWrite for Recording {
    fn max_ops(&self) -> usize {
        self.inner.max_ops()
    }

    fn limits(&self) -> TxnLimits {
        self.inner.limits()
    }

    async fn apply(&self, fence: &Fence, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        let started = Instant::now();
        let outcome = self.inner.apply(fence, ops).await;
        let ended = Instant::now();
        self.log.lock().expect("sent log").push(Sent {
            started,
            ended,
            ops: ops.to_vec(),
            applied: matches!(outcome, Ok(TxnOutcome::Applied { .. })),
        });
        outcome
    }

    async fn read_consistent(
        &self,
        prefixes: &[&str],
        keys: &[&str],
    ) -> Result<ConsistentRead, StoreError> {
        self.inner.read_consistent(prefixes, keys).await
    }
}

/// Takes the transactions noted so far, leaving the log empty.
pub(super) fn take_log(log: &SentLog) -> Vec<Sent> {
    std::mem::take(&mut *log.lock().expect("sent log"))
}
