//! Time as the caller gives it. The core never reads a clock: every command comes with `now`, and
//! nothing assumes `now` only moves forward, because wall clocks jump and servers disagree.

use std::fmt;

/// Milliseconds since the Unix epoch, as the shell's clock reported them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + ms`, saturating at the far future instead of wrapping into the past.
    pub fn saturating_add_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds since the epoch.
    pub fn as_ms(self) -> u64 {
        self.0
    }

    /// The first instant at or after `self` that is a whole multiple of `tick_ms` (at least 1),
    /// saturating at the far future.
    pub fn ceil_to(self, tick_ms: u64) -> Timestamp {
        let tick_ms = tick_ms.max(1);
        match self.0.checked_rem(tick_ms) {
            Some(0) | None => self,
            Some(rest) => Timestamp(self.0.saturating_add(tick_ms.saturating_sub(rest))),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whether a deadline has passed at `now`. A hold whose `expires_at` equals `now` is expired, and
/// so is an order whose payment is due at `now`: one rule for every deadline, here and in SQL
/// (`expires_at <= ?`).
pub fn is_past(deadline: Timestamp, now: Timestamp) -> bool {
    deadline <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_past_from_its_own_instant_on() {
        assert!(!is_past(Timestamp(10), Timestamp(9)));
        assert!(is_past(Timestamp(10), Timestamp(10)));
        assert!(is_past(Timestamp(10), Timestamp(11)));
    }

    #[test]
    fn a_timestamp_rounds_up_to_its_tick() {
        assert_eq!(Timestamp(2_000).ceil_to(1_000), Timestamp(2_000));
        assert_eq!(Timestamp(2_001).ceil_to(1_000), Timestamp(3_000));
        assert_eq!(Timestamp(0).ceil_to(1_000), Timestamp(0));
        assert_eq!(
            Timestamp(7).ceil_to(0),
            Timestamp(7),
            "a zero tick is one millisecond"
        );
        assert_eq!(Timestamp(u64::MAX).ceil_to(1_000), Timestamp(u64::MAX));
    }

    #[test]
    fn adding_to_a_timestamp_saturates() {
        assert_eq!(
            Timestamp(u64::MAX - 1).saturating_add_ms(5),
            Timestamp(u64::MAX)
        );
    }
}
