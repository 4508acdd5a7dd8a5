//! The one exponential back-off every retry loop uses: the Toktra client, the engine's
//! destination and mint retries, the daemon's hold on a failing policy, the notifier and the
//! Vault token's renewal. A delay doubles from `base` with each attempt up to `max`; with
//! jitter it is drawn between a floor share of that and all of it, so retries of concurrent
//! rotations spread apart instead of arriving together.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// The smallest share of the doubled delay a wait keeps; 1.0 waits it whole (no jitter).
    pub floor: f64,
}

impl Backoff {
    /// `base` doubled per attempt, at most `max`, no jitter.
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, floor: 1.0 }
    }

    /// With jitter: each wait drawn uniformly between `floor` of the doubled delay and all of it.
    pub const fn jittered(self, floor: f64) -> Backoff {
        Backoff { floor, ..self }
    }

    /// `base × 2^attempt`, at most `max`: the longest wait before the retry after `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max)
    }

    /// The wait before the retry after `attempt`, jittered when asked.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.floor >= 1.0 { ceiling } else { ceiling.mul_f64(rand::random::<f64>().max(self.floor)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_jitters_within_its_floor() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<u64> = (0..8).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60), "no overflow");
        let jittered = b.jittered(0.5);
        for _ in 0..200 {
            let d = jittered.delay(3);
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(8), "{d:?}");
        }
    }
}
