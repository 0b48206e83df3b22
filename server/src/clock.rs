//! Where the service's time comes from. The service never reads the OS clock itself: it is given
//! a [`Clock`], the system clock in production and a manual or skewed one in tests and the
//! simulator, so clock jumps and skew between servers can be tested.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flashsale_core::Timestamp;

/// A wall clock.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time. May jump backwards.
    fn now(&self) -> Timestamp;
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
}

/// A clock set by hand, shared between clones: tests move it forward and back.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: Timestamp) -> Self {
        Self(Arc::new(AtomicU64::new(at.as_ms())))
    }

    /// Sets the time, forward or back.
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.as_ms(), Ordering::SeqCst);
    }

    /// Moves the time by `delta_ms`, forward or back, saturating at zero.
    pub fn advance(&self, delta_ms: i64) {
        let now = self.0.load(Ordering::SeqCst);
        self.0
            .store(now.saturating_add_signed(delta_ms), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        self.as_ref().now()
    }
}
