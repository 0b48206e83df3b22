//! The product row and its unit counters.
//!
//! `stock` counts the units not yet sold; units on hold are still part of it. `units_received`
//! counts every unit the product ever received (initial stock plus restocks), which is what the
//! conservation invariant compares against.

use crate::ids::{Cents, ProductId, Qty};
use crate::rows::hold::HOLD_QTY_MAX;

/// The longest product name accepted, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
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
    /// Units of the product's holds in state held, expired or not: a counter kept in step with
    /// every grant, release and order, so availability never sums the holds.
    pub units_held: Qty,
    /// Units ever received: the initial stock plus every restock.
    pub units_received: u64,
}

/// A product's unit counters: what every change of its units writes to its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// The product.
    pub id: ProductId,
    /// Units not yet sold.
    pub stock: Qty,
    /// Units of its holds in state held.
    pub units_held: Qty,
    /// Units ever received.
    pub units_received: u64,
}

impl Product {
    /// Its counters.
    pub fn counters(&self) -> Counters {
        Counters {
            id: self.id,
            stock: self.stock,
            units_held: self.units_held,
            units_received: self.units_received,
        }
    }

    /// Takes `counters` (which must be its own).
    pub fn set_counters(&mut self, counters: Counters) {
        debug_assert_eq!(counters.id, self.id, "a product takes its own counters");
        self.stock = counters.stock;
        self.units_held = counters.units_held;
        self.units_received = counters.units_received;
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
    /// The product this becomes once the store gave it `id`.
    pub fn with_id(self, id: ProductId) -> Product {
        Product {
            id,
            name: self.name,
            price_cents: self.price_cents,
            stock: self.stock,
            units_held: Qty::ZERO,
            units_received: u64::from(self.stock.0),
        }
    }
}
