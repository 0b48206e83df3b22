//! The product decisions: creating one, restocking one, and the `available` rule. The row is in
//! [`crate::rows::product`].

use crate::errors::{Rejection, Violation};
use crate::ids::{Cents, Qty};
use crate::rows::product::{DEMO_PRODUCTS, NAME_BYTES_MAX, NewProduct, PRICE_CENTS_MAX, Product};
use crate::writes::{Changes, WriteSet, own_product};

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

/// Decides a product creation ([`create_product`]): the write of the new product, and the product
/// as its answer names it, by its pending id until a storage assigns one.
///
/// # Errors
/// As [`create_product`].
pub fn create(
    name: &str,
    price_cents: Cents,
    stock: Qty,
) -> Result<(Product, WriteSet), Rejection> {
    let new = create_product(name, price_cents, stock)?;
    let product = new.clone().with_id(own_product(0));
    let writes = WriteSet {
        products_inserted: vec![new],
        ..WriteSet::default()
    };
    Ok((product, writes))
}

/// Decides the demo seed: the [`demo_products`] when no product exists (`any_product` false),
/// nothing otherwise; the products as the answer names them, by their pending ids.
pub fn seed_demo(any_product: bool) -> (Vec<Product>, WriteSet) {
    if any_product {
        return (Vec::new(), WriteSet::default());
    }
    let news = demo_products();
    let products = (news.iter().cloned().enumerate())
        .map(|(n, new)| new.with_id(own_product(n)))
        .collect();
    let writes = WriteSet {
        products_inserted: news,
        ..WriteSet::default()
    };
    (products, writes)
}

/// The demo seed's products, the original service's: `Product i` for `i` in 1 to
/// [`DEMO_PRODUCTS`], `price_cents = 500 * i`, `stock = max(1, 6 - i % 6)`.
pub fn demo_products() -> Vec<NewProduct> {
    (1u32..)
        .take(DEMO_PRODUCTS)
        .map(|i| NewProduct {
            name: format!("Product {i}"),
            price_cents: Cents(500u64.saturating_mul(u64::from(i))),
            stock: Qty(6u32.saturating_sub(i % 6).max(1)),
        })
        .collect()
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
/// which are the `units_held` counter less `units_due`, the units of its expiry buckets due at
/// that instant and not yet folded ([`crate::hold::due_units`]).
///
/// # Errors
/// [`Violation::CounterOutOfRange`] if `units_due` exceeds `units_held`, and
/// [`Violation::HeldExceedsStock`] if the live units exceed the stock: the rows are corrupt.
pub fn available(product: &Product, units_due: Qty) -> Result<Qty, Violation> {
    let live = product.units_held.checked_sub(units_due);
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
    use crate::ids::ProductId;

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
