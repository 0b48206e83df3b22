//! The product row and its unit counters.
//!
//! `stock` counts the units not yet sold; units on hold are still part of it. `units_received`
//! counts every unit the product ever received (initial stock plus restocks), which is what the
//! conservation invariant compares against. `units_held`, `expired_through` and
//! `holds_to_retire` keep its holds' expiry in bounded work ([`crate::rows::expiry`]).

use crate::ids::{Cents, ProductId, Qty};
use crate::rows::expiry::{ExpiryBucket, OpenBucket};
use crate::rows::hold::HOLD_QTY_MAX;
use crate::time::Timestamp;

/// The longest product name accepted, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// How many products the demo seed creates ([`crate::product::demo_products`]).
pub const DEMO_PRODUCTS: usize = 10;
/// The highest unit price accepted: ten billion in whole currency units.
pub const PRICE_CENTS_MAX: Cents = Cents(1_000_000_000_000);

// An order's total must fit the databases' signed 64-bit integers with room to spare.
const _: () = assert!(PRICE_CENTS_MAX.0 <= (i64::MAX as u64) / (HOLD_QTY_MAX.0 as u64));

/// A product on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    /// Its id.
    pub id: ProductId,
    /// Display name, 1 to [`NAME_BYTES_MAX`] bytes.
    pub name: String,
    /// Price of one unit.
    pub price_cents: Cents,
    /// Units not yet sold (held units included).
    pub stock: Qty,
    /// Units of the product's held holds not yet expired for good (whose deadline is after
    /// `expired_through`): a counter kept in step with every grant, order, release and fold, so
    /// availability never sums the holds.
    pub units_held: Qty,
    /// Units ever received: the initial stock plus every restock.
    pub units_received: u64,
    /// The deadline of the last expiry bucket folded into the counters: every held hold whose
    /// deadline is at or before it has expired for good, its units back on sale, whatever any
    /// clock reads later. Decisions on the product are made at no earlier instant
    /// ([`Product::decision_time`]). Zero until a first fold.
    pub expired_through: Timestamp,
    /// How many held holds have expired for good (deadline at or before `expired_through`) and
    /// wait for the sweeper to retire their rows.
    pub holds_to_retire: u32,
    /// Its latest bucket, kept in its row ([`crate::rows::expiry`]).
    pub open_bucket: OpenBucket,
}

/// A product's unit counters: what every change of its units writes to its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// The product.
    pub id: ProductId,
    /// Units not yet sold.
    pub stock: Qty,
    /// Units of its held holds not yet expired for good.
    pub units_held: Qty,
    /// Units ever received.
    pub units_received: u64,
    /// The deadline of the last expiry bucket folded.
    pub expired_through: Timestamp,
    /// Held holds expired for good whose rows wait to be retired.
    pub holds_to_retire: u32,
    /// Its latest bucket.
    pub open_bucket: OpenBucket,
}

impl Counters {
    /// The open bucket as a bucket, while it is live (after `expired_through`).
    pub fn live_bucket(&self) -> Option<ExpiryBucket> {
        let open = self.open_bucket;
        (open.expires_at > self.expired_through).then_some(ExpiryBucket {
            product_id: self.id,
            expires_at: open.expires_at,
            units: open.units,
            holds: open.holds,
        })
    }
}

impl Product {
    /// Its counters.
    pub fn counters(&self) -> Counters {
        Counters {
            id: self.id,
            stock: self.stock,
            units_held: self.units_held,
            units_received: self.units_received,
            expired_through: self.expired_through,
            holds_to_retire: self.holds_to_retire,
            open_bucket: self.open_bucket,
        }
    }

    /// Takes `counters` (which must be its own).
    pub fn set_counters(&mut self, counters: Counters) {
        debug_assert_eq!(counters.id, self.id, "a product takes its own counters");
        self.stock = counters.stock;
        self.units_held = counters.units_held;
        self.units_received = counters.units_received;
        self.expired_through = counters.expired_through;
        self.holds_to_retire = counters.holds_to_retire;
        self.open_bucket = counters.open_bucket;
    }

    /// Its open bucket as a bucket, while it is live.
    pub fn live_bucket(&self) -> Option<ExpiryBucket> {
        self.counters().live_bucket()
    }

    /// The instant decisions on the product are made at, given the clock's `now`: `now`, or its
    /// `expired_through` when the clock reads earlier. Time on a product never goes back past
    /// what it folded: a clock stepped back, or a server whose clock runs behind another's, must
    /// not see alive a hold whose units were already given back to sale.
    pub fn decision_time(&self, now: Timestamp) -> Timestamp {
        now.max(self.expired_through)
    }

    /// Whether `deadline` (a hold's) is at or before `expired_through`: the hold's units left
    /// `units_held` when its bucket was folded.
    pub fn expired_for_good(&self, deadline: Timestamp) -> bool {
        deadline <= self.expired_through
    }
}

/// A validated request to create a product; the store assigns the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProduct {
    /// Display name.
    pub name: String,
    /// Price of one unit.
    pub price_cents: Cents,
    /// Initial stock.
    pub stock: Qty,
}

impl NewProduct {
    /// The units it has received when created: its initial stock.
    pub fn units_received(&self) -> u64 {
        u64::from(self.stock.0)
    }

    /// The product this becomes once the store gave it `id`.
    pub fn with_id(self, id: ProductId) -> Product {
        Product {
            units_received: self.units_received(),
            id,
            name: self.name,
            price_cents: self.price_cents,
            stock: self.stock,
            units_held: Qty::ZERO,
            expired_through: Timestamp(0),
            holds_to_retire: 0,
            open_bucket: OpenBucket::default(),
        }
    }
}
