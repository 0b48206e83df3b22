//! Each server instance's own wall clock. madsim's clock only moves forward and moves every
//! node together, so skew, drift and steps forward and backward are modelled here: an
//! instance's time is the simulated time plus its offset, plus its drift since the run began.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use flashsale_check::words::EPOCH_MS;
use flashsale_core::Timestamp;
use flashsale_service::clock::Clock;

/// An instance's wall clock.
#[derive(Clone, Debug)]
pub struct SimClock {
    offset_ms: Arc<AtomicI64>,
    drift_ppm: Arc<AtomicI64>,
    start: madsim::time::Instant,
}

impl SimClock {
    /// A clock `offset_ms` from true simulated time, drifting by `drift_ppm`.
    pub fn new(offset_ms: i64, drift_ppm: i64) -> Self {
        SimClock {
            offset_ms: Arc::new(AtomicI64::new(offset_ms)),
            drift_ppm: Arc::new(AtomicI64::new(drift_ppm)),
            start: madsim::time::Instant::now(),
        }
    }

    /// Steps the clock by `delta_ms`, forward or back.
    pub fn step(&self, delta_ms: i64) {
        self.offset_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Puts the clock right: no offset, no drift.
    pub fn heal(&self) {
        self.offset_ms.store(0, Ordering::SeqCst);
        self.drift_ppm.store(0, Ordering::SeqCst);
    }

    /// The offset from true time, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

/// True simulated wall time.
pub fn true_now() -> Timestamp {
    let elapsed = madsim::time::TimeHandle::current().elapsed();
    Timestamp(EPOCH_MS.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)))
}

impl Clock for SimClock {
    /// True simulated time since the clock was made: no offset, no steps, no drift (the drift
    /// is the wall clock's, and `heal` takes it away, which a monotonic clock must not see).
    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn now(&self) -> Timestamp {
        let elapsed_ms = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        let drift = elapsed_ms.saturating_mul(self.drift_ppm.load(Ordering::SeqCst)) / 1_000_000;
        let skew = self.offset_ms.load(Ordering::SeqCst).saturating_add(drift);
        let now = Timestamp(true_now().as_ms().saturating_add_signed(skew));
        flashsale_check::recording::note_now(now);
        now
    }
}
