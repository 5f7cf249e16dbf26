//! Retries of transient failures: exponential backoff with jitter.

use std::time::Duration;

use rand::Rng as _;

/// How transient failures (connection loss, server busy, timeouts) are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 = never retry.
    pub max_retries: u32,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Random spread added to each backoff, as a fraction of it (0.0–1.0).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries run out, sleeping
    /// [`RetryPolicy::backoff`] between tries. Only transient errors are retried.
    pub(crate) async fn run<T, F>(
        &self,
        what: &str,
        entity: &str,
        mut attempt: impl FnMut() -> F,
    ) -> crate::error::Result<T>
    where
        F: std::future::Future<Output = crate::error::Result<T>>,
    {
        let mut retries = 0;
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && retries < self.max_retries => {
                    retries += 1;
                    tracing::debug!(entity, retries, "{what} failed, retrying: {e}");
                    tokio::time::sleep(self.backoff(retries)).await;
                }
                other => return other,
            }
        }
    }

    /// The wait before retry number `attempt` (1-based): `initial * 2^(attempt-1)`, capped, plus jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let base = exp.min(self.max_backoff);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        let spread = base.mul_f64(rand::rng().random_range(0.0..=jitter));
        base + spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_in_bounds() {
        let p = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(30), Duration::from_secs(10));
        let j = RetryPolicy::default();
        for attempt in 1..8 {
            let b = j.backoff(attempt);
            let base = p.backoff(attempt);
            assert!(b >= base && b <= base.mul_f64(1.2) + Duration::from_nanos(1), "{attempt}: {b:?} vs {base:?}");
        }
    }
}
