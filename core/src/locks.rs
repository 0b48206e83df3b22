//! The one global order in which every transaction locks rows: a client request's key, then the
//! product, then the product's holds and orders, then a webhook record; keys in key order. A hold
//! or order is locked only while its product's lock is held, so the product's lock serialises
//! everything on the product and its holds and orders may be taken in either order under it (a
//! sweep locks the overdue orders before its write locks the expired holds). Transactions that
//! take their locks so never wait on each other in a cycle: contention on a hot product is a
//! queue, never a deadlock the database has to break.
//!
//! [`LockOrder`] checks a transaction's locks against the order as they are taken. The
//! simulator's storage and the logged storage of the real-database tests run every transaction
//! through it.

use std::collections::BTreeSet;

use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId};

/// A row lock. The variants are in the global order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowLock {
    /// A client request's idempotency-key record.
    RequestKey(IdempotencyKey),
    /// A product row.
    Product(ProductId),
    /// A hold row, of `product`.
    Hold {
        /// Its product.
        product: ProductId,
        /// The hold.
        id: HoldId,
    },
    /// An order row, of `product`.
    Order {
        /// Its product.
        product: ProductId,
        /// The order.
        id: OrderId,
    },
    /// A webhook's idempotency-key record.
    Webhook(IdempotencyKey),
}

impl RowLock {
    /// Its place in the order: a product's holds and orders share one.
    fn rank(&self) -> u8 {
        match self {
            RowLock::RequestKey(_) => 0,
            RowLock::Product(_) => 1,
            RowLock::Hold { .. } | RowLock::Order { .. } => 2,
            RowLock::Webhook(_) => 3,
        }
    }

    /// The product whose lock it must be taken under.
    fn product(&self) -> Option<ProductId> {
        match self {
            RowLock::Hold { product, .. } | RowLock::Order { product, .. } => Some(*product),
            _ => None,
        }
    }
}

impl std::fmt::Display for RowLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowLock::RequestKey(key) => write!(f, "request key {key}"),
            RowLock::Product(id) => write!(f, "product {id}"),
            RowLock::Hold { product, id } => write!(f, "hold {id} (of product {product})"),
            RowLock::Order { product, id } => write!(f, "order {id} (of product {product})"),
            RowLock::Webhook(key) => write!(f, "webhook record {key}"),
        }
    }
}

/// A lock taken against the global order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutOfOrder {
    /// Asked for after `held`, which comes after it.
    After {
        /// A lock the transaction held that comes later in the order.
        held: RowLock,
        /// The lock it then asked for.
        asked: RowLock,
    },
    /// A hold or order asked for without its product's lock.
    WithoutProduct {
        /// The lock asked for.
        asked: RowLock,
    },
}

impl std::fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutOfOrder::After { held, asked } => {
                write!(
                    f,
                    "{asked} locked after {held}, against the global lock order"
                )
            }
            OutOfOrder::WithoutProduct { asked } => {
                write!(f, "{asked} locked without its product's lock")
            }
        }
    }
}

impl std::error::Error for OutOfOrder {}

/// The locks one transaction has taken.
#[derive(Clone, Debug, Default)]
pub struct LockOrder {
    taken: BTreeSet<RowLock>,
}

impl LockOrder {
    /// Notes that the transaction takes `lock`.
    ///
    /// # Errors
    /// [`OutOfOrder`] when `lock` is new and comes before a lock already taken (a later kind,
    /// or a later key or product of its kind), or is a hold or order whose product's lock is not
    /// held. Taking a lock again is no new wait, so it is always in order.
    pub fn take(&mut self, lock: RowLock) -> Result<(), OutOfOrder> {
        if self.taken.contains(&lock) {
            return Ok(());
        }
        if let Some(product) = lock.product()
            && !self.taken.contains(&RowLock::Product(product))
        {
            return Err(OutOfOrder::WithoutProduct { asked: lock });
        }
        let later = self.taken.iter().find(|held| {
            held.rank() > lock.rank()
                || (held.rank() == lock.rank() && lock.product().is_none() && **held > lock)
        });
        if let Some(held) = later {
            return Err(OutOfOrder::After {
                held: held.clone(),
                asked: lock,
            });
        }
        self.taken.insert(lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::parse(k).unwrap()
    }

    fn hold(product: u64, id: u64) -> RowLock {
        RowLock::Hold {
            product: ProductId(product),
            id: HoldId(id),
        }
    }

    fn order(product: u64, id: u64) -> RowLock {
        RowLock::Order {
            product: ProductId(product),
            id: OrderId(id),
        }
    }

    #[test]
    fn keys_then_the_product_then_its_rows_in_either_order_then_the_webhook() {
        let mut locks = LockOrder::default();
        let script = [
            RowLock::RequestKey(key("a")),
            RowLock::RequestKey(key("b")),
            RowLock::Product(ProductId(2)),
            order(2, 3),
            hold(2, 9),
            hold(2, 1),
            RowLock::Webhook(key("a")),
        ];
        for lock in script {
            assert_eq!(locks.take(lock), Ok(()));
        }
        // Again: no new wait.
        assert_eq!(locks.take(RowLock::Product(ProductId(2))), Ok(()));
    }

    #[test]
    fn a_lock_of_an_earlier_kind_or_key_is_out_of_order() {
        let mut locks = LockOrder::default();
        locks.take(RowLock::Product(ProductId(1))).unwrap();
        locks.take(hold(1, 5)).unwrap();
        assert_eq!(
            locks.take(RowLock::RequestKey(key("k"))),
            Err(OutOfOrder::After {
                held: RowLock::Product(ProductId(1)),
                asked: RowLock::RequestKey(key("k")),
            })
        );
        let mut keys = LockOrder::default();
        keys.take(RowLock::RequestKey(key("b"))).unwrap();
        assert!(keys.take(RowLock::RequestKey(key("a"))).is_err());
        let mut webhook = LockOrder::default();
        webhook.take(RowLock::Webhook(key("w"))).unwrap();
        assert!(webhook.take(RowLock::Product(ProductId(1))).is_err());
        // A product's rows come before the webhook record, even under the product's lock.
        let mut rows = LockOrder::default();
        rows.take(RowLock::Product(ProductId(1))).unwrap();
        rows.take(RowLock::Webhook(key("w"))).unwrap();
        assert_eq!(
            rows.take(hold(1, 2)),
            Err(OutOfOrder::After {
                held: RowLock::Webhook(key("w")),
                asked: hold(1, 2),
            })
        );
    }

    #[test]
    fn a_lock_out_of_order_says_which_and_why() {
        let after = OutOfOrder::After {
            held: RowLock::Webhook(key("w")),
            asked: RowLock::RequestKey(key("k")),
        };
        assert_eq!(
            after.to_string(),
            "request key k locked after webhook record w, against the global lock order"
        );
        let without = OutOfOrder::WithoutProduct { asked: hold(1, 5) };
        assert_eq!(
            without.to_string(),
            "hold 5 (of product 1) locked without its product's lock"
        );
        assert_eq!(order(2, 3).to_string(), "order 3 (of product 2)");
        assert_eq!(RowLock::Product(ProductId(7)).to_string(), "product 7");
    }

    #[test]
    fn a_hold_or_order_needs_its_products_lock() {
        let mut locks = LockOrder::default();
        assert_eq!(
            locks.take(hold(1, 5)),
            Err(OutOfOrder::WithoutProduct { asked: hold(1, 5) })
        );
        locks.take(RowLock::Product(ProductId(2))).unwrap();
        assert!(locks.take(order(1, 5)).is_err());
        assert_eq!(locks.take(order(2, 5)), Ok(()));
    }
}
