//! How long to wait before trying again: a transaction script after contention or a lost
//! connection, and `serve` for a database that does not answer yet.
//!
//! The wait doubles with each attempt, up to a ceiling.

use std::time::Duration;

/// Attempts past this one wait no longer: 2^8 ms = 256 ms for a transaction script.
const DOUBLINGS_MAX: u32 = 8;

/// How long a transaction script waits after its `attempt`-th failed attempt (1-based):
/// 2^attempt ms, at most 256 ms.
pub fn delay(attempt: u32) -> Duration {
    Duration::from_millis(2u64.saturating_pow(attempt.min(DOUBLINGS_MAX)))
}
