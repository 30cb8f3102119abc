//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: the cap doubles from `min` up to `max` with each
/// failure; each delay is drawn uniformly between `min` and the current cap
/// ("full jitter" with a floor, so retries never come faster than `min`).
/// [`reset`](Self::reset) after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The cap the next delay is drawn under: `min * 2^failures`, at most `max`.
    pub fn current_cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait before retrying.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.current_cap();
        self.failures = self.failures.saturating_add(1);
        if cap <= self.min {
            return self.min;
        }
        let nanos = rng.random_range(self.min.as_nanos()..=cap.as_nanos());
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets past failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn grows_caps_and_resets() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut caps = Vec::new();
        for _ in 0..12 {
            let cap = b.current_cap();
            let d = b.next_delay(&mut rng);
            assert!(d >= Duration::from_millis(100) && d <= cap, "{d:?} {cap:?}");
            caps.push(cap);
        }
        assert_eq!(caps[0], Duration::from_millis(100));
        assert_eq!(caps[1], Duration::from_millis(200));
        assert!(caps.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*caps.last().unwrap(), Duration::from_secs(10));
        b.reset();
        assert_eq!(b.next_delay(&mut rng), Duration::from_millis(100));
    }
}
