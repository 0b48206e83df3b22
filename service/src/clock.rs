//! Where the service's time comes from. The service never reads the OS clock itself: it is given
//! a [`Clock`], the system clock in production and a manual or skewed one in tests and the
//! simulator, so clock jumps and skew between servers can be tested.
//!
//! A clock has two readings: the wall clock, which decides deadlines and may step forward and
//! back, and a monotonic one, which measures how long something has lasted and never steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use flashsale_core::Timestamp;

/// A wall clock, and a monotonic one beside it.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time. May jump backwards.
    fn now(&self) -> Timestamp;

    /// Milliseconds since a fixed start on a clock that never steps: for durations only.
    fn monotonic_ms(&self) -> u64;
}

/// The process's monotonic clock, from its first reading.
fn process_monotonic_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        // A clock set before 1970 reads as the epoch: every deadline is then in the future,
        // which only makes holds look young, never revives a released one.
        let ms = since_epoch.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Timestamp(ms)
    }

    fn monotonic_ms(&self) -> u64 {
        process_monotonic_ms()
    }
}

/// The system clock moved by a fixed offset: an instance whose clock is skewed, for tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct OffsetClock {
    /// Milliseconds ahead of the system clock; negative is behind.
    pub offset_ms: i64,
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        Timestamp(
            SystemClock
                .now()
                .as_ms()
                .saturating_add_signed(self.offset_ms),
        )
    }

    fn monotonic_ms(&self) -> u64 {
        process_monotonic_ms()
    }
}

/// A clock set by hand, shared between clones: tests move it forward and back. Its monotonic
/// reading moves with every step forward and stays put on a step back, as time passing and an
/// operator setting the clock back would.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    wall: Arc<AtomicU64>,
    monotonic: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: Timestamp) -> Self {
        Self {
            wall: Arc::new(AtomicU64::new(at.as_ms())),
            monotonic: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sets the time, forward or back.
    pub fn set(&self, at: Timestamp) {
        let before = self.wall.swap(at.as_ms(), Ordering::SeqCst);
        let forward = at.as_ms().saturating_sub(before);
        self.monotonic.fetch_add(forward, Ordering::SeqCst);
    }

    /// Moves the time by `delta_ms`, forward or back, saturating at zero.
    pub fn advance(&self, delta_ms: i64) {
        let now = self.wall.load(Ordering::SeqCst);
        self.set(Timestamp(now.saturating_add_signed(delta_ms)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.wall.load(Ordering::SeqCst))
    }

    fn monotonic_ms(&self) -> u64 {
        self.monotonic.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        self.as_ref().now()
    }

    fn monotonic_ms(&self) -> u64 {
        self.as_ref().monotonic_ms()
    }
}
