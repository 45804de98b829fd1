//! Retry policy maths, in the shape Temporal and Step Functions use: an initial interval grown by a
//! coefficient up to a maximum, a maximum number of attempts, jitter, and error codes that are never
//! retried. The exponential schedule itself comes from `backon`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, delay]` ("full jitter"): spreads a herd of retries the most.
    #[default]
    Full,
    /// `backon`'s jitter, uniform in `[delay, 2 * delay)`: never retries sooner than the schedule.
    Additive,
    /// Exactly the schedule.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_interval: Duration,
    pub backoff_coefficient: f64,
    pub maximum_interval: Duration,
    /// Attempts in all, the first included; throttled answers do not count.
    pub maximum_attempts: u32,
    pub jitter: Jitter,
    /// Error codes that fail the step at once even when classified transient.
    pub non_retryable_errors: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(300),
            maximum_attempts: 10,
            jitter: Jitter::Full,
            non_retryable_errors: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Problems that make the policy unusable, phrased for the person editing the workflow file.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_interval.is_zero() {
            return Err("initial_interval must be greater than zero".into());
        }
        if !(self.backoff_coefficient >= 1.0 && self.backoff_coefficient <= 100.0) {
            return Err("backoff_coefficient must be between 1 and 100".into());
        }
        if self.maximum_interval < self.initial_interval {
            return Err("maximum_interval must not be shorter than initial_interval".into());
        }
        if self.maximum_attempts == 0 {
            return Err("maximum_attempts must be at least 1".into());
        }
        Ok(())
    }

    /// The capped exponential delay before retry number `n` (1-based), without jitter.
    pub fn base_delay(&self, n: u32) -> Duration {
        // backon's builder is bounded by max_times; asking for the n-th element of a fresh schedule
        // keeps the state durable (only `n` is stored).
        let n = n.clamp(1, 64) as usize;
        ExponentialBuilder::new()
            .with_min_delay(self.initial_interval)
            .with_factor(self.backoff_coefficient as f32)
            .with_max_delay(self.maximum_interval)
            .with_max_times(n)
            .build()
            .nth(n - 1)
            .map(round_to_millis)
            .unwrap_or(self.maximum_interval)
            .min(self.maximum_interval)
    }

    /// The delay before retry number `n`: the schedule, jittered with the uniform sample `u` in [0, 1),
    /// and never below `floor` (a delay the error asked for, such as `Retry-After`).
    pub fn delay(&self, n: u32, floor: Option<Duration>, u: f64) -> Duration {
        let base = self.base_delay(n);
        let u = u.clamp(0.0, 1.0);
        let jittered = match self.jitter {
            Jitter::Full => base.mul_f64(u),
            Jitter::Additive => {
                // Same distribution as backon's `with_jitter`, seeded from `u` so it stays reproducible.
                let n = n.clamp(1, 64) as usize;
                ExponentialBuilder::new()
                    .with_min_delay(self.initial_interval)
                    .with_factor(self.backoff_coefficient as f32)
                    .with_max_delay(self.maximum_interval)
                    .with_max_times(n)
                    .with_jitter()
                    .with_jitter_seed((u * u64::MAX as f64) as u64)
                    .build()
                    .nth(n - 1)
                    .unwrap_or(base)
            }
            Jitter::None => base,
        };
        match floor {
            Some(f) => jittered.max(f),
            None => jittered,
        }
    }
}

/// backon computes in f32; round its noise away (20ms x 2 must be 40ms, not 39.999ms).
fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_secs(2),
            backoff_coefficient: 3.0,
            maximum_interval: Duration::from_secs(100),
            maximum_attempts: 5,
            jitter,
            non_retryable_errors: vec![],
        }
    }

    #[test]
    fn schedule_grows_by_the_coefficient_and_stops_at_the_maximum() {
        let p = policy(Jitter::None);
        let got: Vec<u64> = (1..=6).map(|n| p.base_delay(n).as_secs()).collect();
        assert_eq!(got, vec![2, 6, 18, 54, 100, 100]);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_schedule() {
        let p = policy(Jitter::Full);
        assert_eq!(p.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, None, 0.5), Duration::from_secs(9));
    }

    #[test]
    fn floor_wins_over_jitter() {
        let p = policy(Jitter::Full);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30)), 0.1),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut p = policy(Jitter::None);
        p.maximum_attempts = 0;
        assert!(p.validate().unwrap_err().contains("maximum_attempts"));
        let mut p = policy(Jitter::None);
        p.maximum_interval = Duration::from_secs(1);
        assert!(p.validate().unwrap_err().contains("maximum_interval"));
        let mut p = policy(Jitter::None);
        p.backoff_coefficient = 0.5;
        assert!(p.validate().unwrap_err().contains("backoff_coefficient"));
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_its_band(n in 1u32..40, u in 0.0f64..1.0, floor in proptest::option::of(0u64..500)) {
            let floor = floor.map(Duration::from_secs);
            for jitter in [Jitter::Full, Jitter::Additive, Jitter::None] {
                let p = policy(jitter);
                let base = p.base_delay(n);
                let d = p.delay(n, floor, u);
                let (lo, hi) = match jitter {
                    Jitter::Full => (Duration::ZERO, base),
                    Jitter::Additive => (base, base * 2),
                    Jitter::None => (base, base),
                };
                let lo = floor.map_or(lo, |f| lo.max(f));
                let hi = floor.map_or(hi, |f| hi.max(f));
                prop_assert!(d >= lo && d <= hi, "{jitter:?} n={n} u={u} d={d:?} not in [{lo:?}, {hi:?}]");
            }
        }
    }
}
