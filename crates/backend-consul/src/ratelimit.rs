//! The token bucket that paces blocking queries which return without a change.

use std::time::Duration;

use tokio::time::Instant;

/// Tokens the bucket holds at most: two unchanged answers may be followed by
/// an immediate new query before pacing starts.
pub(crate) const BURST: u32 = 2;
/// One token comes back per this interval: at most one query per second
/// while answers keep coming back unchanged.
pub(crate) const REFILL_EVERY: Duration = Duration::from_secs(1);

/// A token bucket (burst [`BURST`], one token per [`REFILL_EVERY`]).
///
/// Uses tokio's clock so that tests can pause it.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub(crate) fn new() -> Self {
        Self {
            tokens: f64::from(BURST),
            updated: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens = (self.tokens + elapsed.as_secs_f64() / REFILL_EVERY.as_secs_f64())
            .min(f64::from(BURST));
        self.updated = now;
    }

    /// Takes a token, waiting until one is available.
    ///
    /// Cancel safe: a token is only taken when the future completes.
    pub(crate) async fn take(&mut self) {
        loop {
            self.refill(Instant::now());
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let missing = 1.0 - self.tokens;
            tokio::time::sleep(REFILL_EVERY.mul_f64(missing)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_one_per_second() {
        let mut bucket = TokenBucket::new();
        let start = Instant::now();
        bucket.take().await;
        bucket.take().await;
        assert_eq!(Instant::now(), start, "the burst must not wait");
        bucket.take().await;
        assert_eq!(Instant::now() - start, REFILL_EVERY);
        bucket.take().await;
        assert_eq!(Instant::now() - start, REFILL_EVERY * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_while_idle_up_to_the_burst() {
        let mut bucket = TokenBucket::new();
        bucket.take().await;
        bucket.take().await;
        tokio::time::sleep(REFILL_EVERY * 10).await;
        let start = Instant::now();
        bucket.take().await;
        bucket.take().await;
        assert_eq!(Instant::now(), start);
        bucket.take().await;
        assert_eq!(Instant::now() - start, REFILL_EVERY);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_take_keeps_nothing() {
        let mut bucket = TokenBucket::new();
        bucket.take().await;
        bucket.take().await;
        let cancelled = tokio::time::timeout(REFILL_EVERY / 2, bucket.take()).await;
        assert!(cancelled.is_err());
        let start = Instant::now();
        bucket.take().await;
        assert_eq!(Instant::now() - start, REFILL_EVERY / 2);
    }
}
