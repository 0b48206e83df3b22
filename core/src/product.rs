//! Products and their stock: creating one, restocking one, and the `available` rule.
//!
//! `stock` counts the units not yet sold; units on hold are still part of it. `units_received`
//! counts every unit the product ever received (initial stock plus restocks), which is what the
//! conservation invariant compares against.

use crate::ids::{Cents, ProductId, Qty};
use crate::invariants::Violation;
use crate::outcome::Rejection;
use crate::writes::{Changes, WriteSet};

/// The longest product name accepted, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// The highest unit price accepted: ten billion in whole currency units.
pub const PRICE_CENTS_MAX: Cents = Cents(1_000_000_000_000);

// An order's total must fit the databases' signed 64-bit integers with room to spare.
const _: () =
    assert!(PRICE_CENTS_MAX.0 <= (i64::MAX as u64) / (crate::hold::HOLD_QTY_MAX.0 as u64));

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

/// Decides a product creation: the name must be 1 to [`NAME_BYTES_MAX`] bytes and not blank.
///
/// # Errors
/// [`Rejection::InvalidName`] for an empty, blank or too long name, then
/// [`Rejection::InvalidPrice`] above [`PRICE_CENTS_MAX`].
pub fn create_product(name: &str, price_cents: Cents, stock: Qty) -> Result<NewProduct, Rejection> {
    if name.trim().is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Rejection::InvalidName);
    }
    if price_cents > PRICE_CENTS_MAX {
        return Err(Rejection::InvalidPrice { price_cents });
    }
    Ok(NewProduct {
        name: name.to_owned(),
        price_cents,
        stock,
    })
}

/// Decides a restock of `qty` units: the write of the product's new `stock` and
/// `units_received`.
///
/// # Errors
/// [`Rejection::InvalidQty`] for zero units; [`Rejection::StockOverflow`] if the new stock does
/// not fit in a [`Qty`].
pub fn restock(product: &Product, qty: Qty) -> Result<WriteSet, Rejection> {
    let (stock, units_received) = restocked(product, qty)?;
    let mut changes = Changes::on(product);
    changes.restock(stock, units_received);
    Ok(changes.finish())
}

fn restocked(product: &Product, qty: Qty) -> Result<(Qty, u64), Rejection> {
    validate_restock(qty)?;
    let stock = product
        .stock
        .checked_add(qty)
        .ok_or(Rejection::StockOverflow {
            product_id: product.id,
        })?;
    let units_received =
        product
            .units_received
            .checked_add(u64::from(qty.0))
            .ok_or(Rejection::StockOverflow {
                product_id: product.id,
            })?;
    Ok((stock, units_received))
}

/// Checks a restock's quantity before anything is read.
///
/// # Errors
/// [`Rejection::InvalidQty`] for zero units.
pub fn validate_restock(qty: Qty) -> Result<(), Rejection> {
    if qty == Qty::ZERO {
        Err(Rejection::InvalidQty { qty })
    } else {
        Ok(())
    }
}

/// Units a buyer can still hold at some instant: `stock` minus the units of its live holds,
/// which are the `units_held` counter less `units_expired`, the units of its held holds whose
/// deadline has passed at that instant and that no transaction has released yet.
///
/// # Errors
/// [`Violation::CounterOutOfRange`] if `units_expired` exceeds `units_held`, and
/// [`Violation::HeldExceedsStock`] if the live units exceed the stock: the rows are corrupt.
pub fn available(product: &Product, units_expired: Qty) -> Result<Qty, Violation> {
    let live = product.units_held.checked_sub(units_expired);
    let live = live.ok_or(Violation::CounterOutOfRange {
        product_id: product.id,
        counter: "units_held",
    })?;
    product
        .stock
        .checked_sub(live)
        .ok_or(Violation::HeldExceedsStock {
            product_id: product.id,
            units_held: u64::from(live.0),
            stock: product.stock,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(stock: u32) -> Product {
        NewProduct {
            name: "p".into(),
            price_cents: Cents(1),
            stock: Qty(stock),
        }
        .with_id(ProductId(1))
    }

    #[test]
    fn blank_and_long_names_are_rejected() {
        assert_eq!(
            create_product(" ", Cents(1), Qty(1)),
            Err(Rejection::InvalidName)
        );
        let long = "n".repeat(NAME_BYTES_MAX + 1);
        assert_eq!(
            create_product(&long, Cents(1), Qty(1)),
            Err(Rejection::InvalidName)
        );
        assert!(create_product("Product 1", Cents(500), Qty(5)).is_ok());
        let price = Cents(PRICE_CENTS_MAX.0 + 1);
        assert_eq!(
            create_product("P", price, Qty(1)),
            Err(Rejection::InvalidPrice { price_cents: price })
        );
    }

    #[test]
    fn restock_adds_to_stock_and_units_received() {
        let restocked = restock(&product(5), Qty(3)).map(|w| w.product(ProductId(1)).copied());
        let counters = restocked.map(|p| p.map(|p| (p.stock, p.units_received)));
        assert_eq!(counters, Ok(Some((Qty(8), 8))));
        assert_eq!(
            restock(&product(5), Qty(0)),
            Err(Rejection::InvalidQty { qty: Qty(0) })
        );
        let overflow = restock(&product(u32::MAX), Qty(1));
        assert_eq!(
            overflow,
            Err(Rejection::StockOverflow {
                product_id: ProductId(1)
            })
        );
    }

    #[test]
    fn available_counts_live_holds_and_refuses_corrupt_counters() {
        let held = |stock, units_held| Product {
            units_held: Qty(units_held),
            ..product(stock)
        };
        assert_eq!(available(&held(5, 2), Qty(0)), Ok(Qty(3)));
        assert_eq!(available(&held(5, 2), Qty(2)), Ok(Qty(5)));
        assert!(matches!(
            available(&held(5, 2), Qty(3)),
            Err(Violation::CounterOutOfRange { .. })
        ));
        assert!(matches!(
            available(&held(1, 2), Qty(0)),
            Err(Violation::HeldExceedsStock { .. })
        ));
    }
}
