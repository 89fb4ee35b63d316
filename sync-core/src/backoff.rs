//! Exponential backoff with jitter, as a pure function of the attempt number.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Each attempt multiplies the delay by this.
    pub multiplier: f64,
    /// The fraction of each delay that is randomized (0: none, 1: anywhere from 0).
    /// Jitter spreads the retries of many devices after an outage.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(60), multiplier: 2.0, jitter: 0.5 }
    }
}

impl Backoff {
    /// The delay without jitter before retry number `attempt` (1 for the first).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The delay before retry number `attempt`: between `(1 - jitter) * ceiling` and
    /// `ceiling`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * rng.random_range(0.0..=1.0);
        ceiling.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_with_bounded_jitter() {
        let b =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), multiplier: 2.0, jitter: 0.5 };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(1600));
        assert_eq!(b.ceiling(6), Duration::from_secs(2));
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        let mut rng = rand::rng();
        for attempt in 1..10 {
            for _ in 0..50 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= b.ceiling(attempt));
                assert!(d >= b.ceiling(attempt).mul_f64(0.5));
            }
        }
    }
}
