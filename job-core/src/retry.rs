//! The retry schedule: a pure function of the attempt number.
//!
//! A job's retry delay depends only on its (persisted) attempt number and a random draw, so
//! another process can compute the same schedule after a restart. In-process reconnect loops
//! (to Redis or Postgres) use the `backon` crate instead.

use std::time::Duration;

/// Exponential backoff with jitter: the delay before attempt `n + 1`, after `n` failed
/// attempts, is `min(initial * 2^(n-1), max)`, then shortened by up to `jitter` of itself.
///
/// Jitter only ever shortens the delay (the result lies in `[d * (1 - jitter), d]`), so `max`
/// is a true upper bound and retries of jobs that failed together spread out.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use job_core::Backoff;
///
/// let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 0.0);
/// assert_eq!(b.delay(1, 0.5), Duration::from_secs(2));
/// assert_eq!(b.delay(3, 0.5), Duration::from_secs(8));
/// assert_eq!(b.delay(10, 0.5), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Fraction in `0.0..=1.0` by which a delay may be shortened at random.
    pub jitter: f64,
}

impl Backoff {
    /// 1 s doubling to at most 5 min, 20% jitter.
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
        jitter: 0.2,
    };

    /// A backoff; `jitter` is clamped into `0.0..=1.0` and `max` raised to `initial` if lower.
    /// (`#[job(backoff(..))]` rejects out-of-range values at compile time.)
    pub const fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        let jitter = if jitter.is_nan() || jitter < 0.0 {
            0.0
        } else if jitter > 1.0 {
            1.0
        } else {
            jitter
        };
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Self {
            initial,
            max,
            jitter,
        }
    }

    /// The delay after `failed_attempts` failed attempts (1 after the first failure), given a
    /// uniform random draw `random` in `0.0..1.0`. Pure: same inputs, same delay.
    pub fn delay(&self, failed_attempts: u32, random: f64) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(63);
        let factor = 1u64 << exp;
        let base = self
            .initial
            .checked_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base.mul_f64(1.0 - self.jitter * random)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(secs(2), secs(60), 0.0);
        let got: Vec<_> = (1..=8).map(|n| b.delay(n, 0.9)).collect();
        assert_eq!(
            got,
            [
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(60),
                secs(60),
                secs(60)
            ]
        );
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let b = Backoff::new(secs(2), secs(60), 0.0);
        assert_eq!(b.delay(u32::MAX, 0.0), secs(60));
        assert_eq!(b.delay(0, 0.0), secs(2));
    }

    #[test]
    fn jitter_shortens_within_bounds_and_is_deterministic() {
        let b = Backoff::new(secs(10), secs(60), 0.2);
        assert_eq!(b.delay(1, 0.0), secs(10));
        assert_eq!(b.delay(1, 1.0), secs(8));
        assert_eq!(b.delay(1, 0.5), secs(9));
        assert_eq!(b.delay(1, 0.5), b.delay(1, 0.5));
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 1..20 {
            let d = b.delay(n, rng.f64());
            let base = secs(10).saturating_mul(1 << (n - 1).min(10)).min(secs(60));
            assert!(d <= base && d >= base.mul_f64(0.8), "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn constructor_clamps() {
        let b = Backoff::new(secs(5), secs(1), 3.0);
        assert_eq!(b.max, secs(5));
        assert!((b.jitter - 1.0).abs() < f64::EPSILON);
        assert!(Backoff::new(secs(1), secs(1), f64::NAN).jitter.abs() < f64::EPSILON);
    }
}
