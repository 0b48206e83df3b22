//! Expiry buckets: the units a product's holds give back to sale at one instant.
//!
//! A flash sale grants most of its holds in its first seconds, and most of them lapse together
//! one TTL later. Releasing them hold by hold inside the next grant's transaction made that
//! transaction's work grow with the number of holds that expired (hundreds of thousands), under
//! the product's lock. Instead, a product keeps beside its counters one bucket per deadline of
//! its held holds: the units and the number of the holds that expire at that instant. Hold
//! deadlines fall on whole ticks ([`crate::rows::hold::HOLD_DEADLINE_TICK_MS`]), so a product has
//! one bucket per second of deadlines, whatever the number of holds.
//!
//! Availability at `now` is the counters plus the buckets due at `now`; a transaction that grants
//! on the product *folds* its due buckets into the counters: their units leave `units_held`,
//! their holds join `holds_to_retire`, the product's `expired_through` moves to the last bucket
//! folded, and the buckets go. The holds' own rows are not written then: a hold whose deadline is
//! at or before its product's `expired_through` has expired for good, whatever a clock says
//! later, and the sweeper retires such rows (moves them to released) in chunks of its own.
//!
//! A product's latest bucket, the one its grants add to now, is kept in the product's own row
//! ([`OpenBucket`]): a grant writes that row anyway, so the holds of one second cost no bucket
//! write at all. When a grant's deadline passes it, the open bucket is written to the table
//! (flushed) if it still has a held hold, and the new deadline opens: at most one bucket row per
//! product and second of grants, however many holds, and none for a second whose holds were all
//! ordered before the next second's first grant (a steady flow of buyers). The table's buckets are written by deltas ([`BucketChange`]): a
//! flush adds the open bucket's counts, an order or a failed payment takes its live hold out of
//! its deadline's bucket. A bucket may so reach zero units and stay until it is folded; no
//! decision reads a bucket that is not due, so none needs to be loaded to be changed.

use crate::ids::{ProductId, Qty};
use crate::time::Timestamp;

/// The most due buckets of one product a transaction loads and folds. Deadlines fall on whole
/// seconds, so a product with holds of one TTL never has more than about TTL-in-seconds buckets
/// due, and every grant and every sweep folds those due: more than this are due only after the
/// product saw no grant and no sweep for minutes. The buckets past the first this many (in
/// deadline order) then count as held until a later transaction folds them: availability is
/// understated for a moment, never overstated.
pub const DUE_BUCKETS_MAX: usize = 256;

/// The units and holds of one product that expire at one instant, not yet folded into the
/// product's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpiryBucket {
    /// The product.
    pub product_id: ProductId,
    /// The deadline its holds share; after the product's `expired_through`.
    pub expires_at: Timestamp,
    /// Units of the product's held holds with this deadline.
    pub units: Qty,
    /// How many of the product's held holds have this deadline.
    pub holds: u32,
}

impl ExpiryBucket {
    /// The bucket's key: its product and instant.
    pub fn key(&self) -> (ProductId, Timestamp) {
        (self.product_id, self.expires_at)
    }

    /// The bucket with `change` laid over it, or `None` when a count would leave its range.
    pub fn changed(self, change: &BucketChange) -> Option<ExpiryBucket> {
        let units = i64::from(self.units.0).checked_add(change.units)?;
        let holds = i64::from(self.holds).checked_add(change.holds)?;
        Some(ExpiryBucket {
            units: Qty(u32::try_from(units).ok()?),
            holds: u32::try_from(holds).ok()?,
            ..self
        })
    }
}

/// A product's open bucket: its latest deadline granted, and the units and number of its held
/// holds of that deadline, kept in the product's row. It is *live* while its deadline is after
/// the product's `expired_through`; once folded, its counts are zero and its deadline stays, the
/// latest the product ever granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenBucket {
    /// The deadline.
    pub expires_at: Timestamp,
    /// Units of the product's held holds with this deadline.
    pub units: Qty,
    /// How many of them.
    pub holds: u32,
}

/// What folding some buckets gave back to sale: their holds (expired for good) and units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Holds whose units went back on sale.
    pub holds: u64,
    /// Their units.
    pub units: u64,
}

impl Folded {
    /// What folding `buckets` gives back.
    pub fn of(buckets: &[ExpiryBucket]) -> Folded {
        buckets
            .iter()
            .fold(Folded::default(), |sum, bucket| Folded {
                holds: sum.holds.saturating_add(u64::from(bucket.holds)),
                units: sum.units.saturating_add(u64::from(bucket.units.0)),
            })
    }

    /// Whether it gave nothing back.
    pub fn is_empty(&self) -> bool {
        *self == Folded::default()
    }

    /// Both added up.
    pub fn and(self, other: Folded) -> Folded {
        Folded {
            holds: self.holds.saturating_add(other.holds),
            units: self.units.saturating_add(other.units),
        }
    }
}

/// A change to one bucket: units and holds added (a grant) or taken away (a live hold consumed
/// or released), as signed deltas, so a storage applies it without reading the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketChange {
    /// The product.
    pub product_id: ProductId,
    /// The bucket's instant.
    pub expires_at: Timestamp,
    /// Units added (positive) or taken away (negative).
    pub units: i64,
    /// Holds added (positive) or taken away (negative).
    pub holds: i64,
}

impl BucketChange {
    /// The bucket's key: its product and instant.
    pub fn key(&self) -> (ProductId, Timestamp) {
        (self.product_id, self.expires_at)
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.units == 0 && self.holds == 0
    }

    /// The bucket a storage creates for a change to an instant that has none yet: only an
    /// addition can make one.
    pub fn created(&self) -> Option<ExpiryBucket> {
        ExpiryBucket {
            product_id: self.product_id,
            expires_at: self.expires_at,
            units: Qty::ZERO,
            holds: 0,
        }
        .changed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(units: i64, holds: i64) -> BucketChange {
        BucketChange {
            product_id: ProductId(1),
            expires_at: Timestamp(2_000),
            units,
            holds,
        }
    }

    #[test]
    fn a_bucket_takes_deltas_and_refuses_to_go_below_zero() {
        let bucket = change(3, 2)
            .created()
            .expect("an addition creates a bucket");
        assert_eq!((bucket.units, bucket.holds), (Qty(3), 2));
        let taken = bucket.changed(&change(-3, -2)).expect("down to zero");
        assert_eq!((taken.units, taken.holds), (Qty::ZERO, 0));
        assert_eq!(taken.changed(&change(-1, 0)), None);
        assert_eq!(change(-1, -1).created(), None, "a removal finds no bucket");
        assert!(change(0, 0).is_empty());
    }
}
