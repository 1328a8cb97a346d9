//! Retry delays shared by the worker's requeue policy and the backends'
//! bounded API retries: exponential, capped, jittered.

use std::time::Duration;

/// Retry delays: exponential from `base`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// A backoff from `base` to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay after failed attempt `attempt` (1-based): a uniformly
    /// random value in [d/2, d] with d = base * 2^(attempt-1), capped.
    /// (Jitter keeps workers that failed together from retrying together.)
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = full / 2;
        let jitter_ms = u64::try_from((full - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_jitter_bounds_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(b.delay(20) <= Duration::from_millis(1000));
            assert!(b.delay(u32::MAX) <= Duration::from_millis(1000));
        }
    }
}
