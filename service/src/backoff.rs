//! How long to wait before trying again: a transaction script after contention or a lost
//! connection, and `serve` for a database that does not answer yet.
//!
//! The wait doubles with each attempt, up to a ceiling, and only its first half is fixed: the
//! rest is random ("equal jitter"). Requests that failed together (two batches that deadlocked,
//! every request on a node that just left its cluster) would otherwise retry together, in
//! lockstep, and collide again.
//!
//! Under the simulator (`--cfg madsim`) the wait is the ceiling, with no randomness: a seed must
//! replay the same run, and madsim's own scheduler already varies the interleavings.

use std::time::Duration;

/// Attempts past this one wait no longer: 2^8 ms = 256 ms for a transaction script.
const DOUBLINGS_MAX: u32 = 8;

/// How long a transaction script waits after its `attempt`-th failed attempt (1-based): between
/// half of 2^attempt ms and all of it, at most 256 ms.
pub fn delay(attempt: u32) -> Duration {
    jittered(delay_ceiling(attempt))
}

/// Half of `ceiling`, plus a random part of the other half, to the microsecond.
#[cfg(not(madsim))]
pub fn jittered(ceiling: Duration) -> Duration {
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    let half_us = ceiling_us / 2;
    let random_us = rand::random_range(0..=ceiling_us.saturating_sub(half_us));
    Duration::from_micros(half_us.saturating_add(random_us))
}

/// `ceiling` itself: a simulated run draws no randomness of its own.
#[cfg(madsim)]
pub fn jittered(ceiling: Duration) -> Duration {
    ceiling
}

/// The longest [`delay`] after the `attempt`-th failed attempt.
pub fn delay_ceiling(attempt: u32) -> Duration {
    Duration::from_millis(2u64.saturating_pow(attempt.min(DOUBLINGS_MAX)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn contenders_failing_together_wait_different_times_within_the_attempts_bounds() {
        for attempt in [1, 3, 8, 20] {
            let ceiling = delay_ceiling(attempt);
            let waits: BTreeSet<Duration> = (0..200).map(|_| delay(attempt)).collect();
            assert!(
                waits.len() > 20,
                "attempt {attempt}: {} distinct waits",
                waits.len()
            );
            for wait in &waits {
                assert!(
                    *wait <= ceiling,
                    "attempt {attempt}: {wait:?} > {ceiling:?}"
                );
                assert!(
                    *wait >= ceiling / 2,
                    "attempt {attempt}: {wait:?} < half of {ceiling:?}"
                );
            }
        }
    }
}
