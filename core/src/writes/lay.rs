//! Laying a write-set over rows in memory: the one place each effect of a [`WriteSet`] becomes
//! rows, for every in-memory view of them: the batch's working view in [`crate::execute()`] (each
//! command sees the writes of the commands before it), the [`crate::Ledger`]'s tables, and the
//! simulator's transactions. The SQL storage writes the same parts, in the same order, as
//! statements (docs/ARCHITECTURE.md, "The write of a batch").
//!
//! [`lay`] first works out every row the write-set puts, reading through the view and through
//! the rows it already worked out (an order consumes a hold the same write-set inserted, a
//! later command settles an order an earlier one created), and checks each change against the
//! row it changes: a product that exists, a bucket that stays in range, a hold that is held when
//! it leaves held, an order not terminal when it settles. Only then does it put the rows, so a
//! write-set that fails its checks changes nothing.

use std::collections::BTreeMap;

use crate::errors::Violation;
use crate::ids::{HoldId, OrderId, ProductId};
use crate::rows::expiry::{BucketChange, ExpiryBucket};
use crate::rows::hold::{Hold, HoldState};
use crate::rows::order::Order;
use crate::rows::payment::WebhookRecord;
use crate::rows::product::Product;
use crate::rows::request::RequestRecord;
use crate::time::Timestamp;

use super::{Inserted, WriteSet};

/// An expiry bucket as a view of the rows knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketRead {
    /// The bucket's row.
    Row(ExpiryBucket),
    /// No such bucket.
    Absent,
    /// A bucket the view did not read: a batch's working view knows only the due buckets it
    /// loaded, and no decision reads a bucket that is not due. A change to it is left to the
    /// storage.
    Unread,
}

/// A row that laying a write-set puts, in the order [`lay`] puts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// A product inserted, or with its new counters.
    Product(Product),
    /// An expiry bucket made or changed.
    Bucket(ExpiryBucket),
    /// An expiry bucket folded: the row goes.
    BucketGone(ProductId, Timestamp),
    /// A hold inserted or leaving held.
    Hold(Hold),
    /// An order inserted or settled.
    Order(Order),
    /// A webhook record inserted.
    Webhook(WebhookRecord),
    /// A request-key record inserted.
    RequestKey(RequestRecord),
}

/// Rows in memory that a write-set can be laid over.
pub trait Tables {
    /// What a put may fail with (a storage's unique key); a [`Violation`] when the write-set does
    /// not fit the rows.
    type Error: From<Violation>;

    /// A product row.
    fn product(&self, id: ProductId) -> Option<Product>;
    /// An expiry bucket.
    fn bucket(&self, product_id: ProductId, expires_at: Timestamp) -> BucketRead;
    /// A hold row.
    fn hold(&self, id: HoldId) -> Option<Hold>;
    /// An order row.
    fn order(&self, id: OrderId) -> Option<Order>;
    /// The id of a new hold, `assigned` the ids this transaction assigned before it.
    fn new_hold_id(&mut self, assigned: &Inserted) -> HoldId;
    /// The id of a new order, `assigned` the ids this transaction assigned before it.
    fn new_order_id(&mut self, assigned: &Inserted) -> OrderId;
    /// The id of a new product, `assigned` the ids this transaction assigned before it.
    fn new_product_id(&mut self, assigned: &Inserted) -> ProductId;
    /// Stores a row: inserts it, or replaces the row of its key.
    ///
    /// # Errors
    /// Whatever the storage refuses (a unique key taken).
    fn put(&mut self, row: Put) -> Result<(), Self::Error>;
}

/// Lays `writes` over `tables`: the inserted products, the product rows, the bucket changes, the folded buckets, the
/// released and retired holds, the inserted holds, the inserted orders (each consuming its
/// hold), the settled orders, the webhook records, the request-key records. Pending ids resolve
/// through `inserted`, the ids this transaction assigned so far (none for a storage's one
/// write-set, the batch's earlier commands' for a working view), which gains this write-set's.
///
/// # Errors
/// A [`Violation`] when the write-set does not fit the rows (a row missing, a bucket out of
/// range, a hold not held, an order terminal): nothing is put and `inserted` is unchanged. A
/// put's own error, after the rows before it were put.
pub fn lay<T: Tables>(
    tables: &mut T,
    writes: &WriteSet,
    inserted: &mut Inserted,
) -> Result<(), T::Error> {
    let mut ids = inserted.clone();
    let puts = laid(tables, writes, &mut ids)?;
    *inserted = ids;
    for put in puts {
        tables.put(put)?;
    }
    Ok(())
}

/// The rows a write-set puts, worked out over the view and over each other.
struct Laying<'t, T> {
    tables: &'t mut T,
    puts: Vec<Put>,
    buckets: BTreeMap<(ProductId, Timestamp), Option<ExpiryBucket>>,
    holds: BTreeMap<HoldId, Hold>,
    orders: BTreeMap<OrderId, Order>,
}

impl<T: Tables> Laying<'_, T> {
    fn bucket(&self, key: (ProductId, Timestamp)) -> BucketRead {
        match self.buckets.get(&key) {
            Some(Some(bucket)) => BucketRead::Row(*bucket),
            Some(None) => BucketRead::Absent,
            None => self.tables.bucket(key.0, key.1),
        }
    }

    fn hold(&self, id: HoldId) -> Option<Hold> {
        self.holds
            .get(&id)
            .copied()
            .or_else(|| self.tables.hold(id))
    }

    fn order(&self, id: OrderId) -> Option<Order> {
        self.orders
            .get(&id)
            .copied()
            .or_else(|| self.tables.order(id))
    }

    fn put_bucket(&mut self, key: (ProductId, Timestamp), bucket: Option<ExpiryBucket>) {
        self.buckets.insert(key, bucket);
        self.puts.push(match bucket {
            Some(bucket) => Put::Bucket(bucket),
            None => Put::BucketGone(key.0, key.1),
        });
    }

    fn put_hold(&mut self, hold: Hold) {
        self.holds.insert(hold.id, hold);
        self.puts.push(Put::Hold(hold));
    }

    fn put_order(&mut self, order: Order) {
        self.orders.insert(order.id, order);
        self.puts.push(Put::Order(order));
    }

    /// The held hold `id`, moved to `state`.
    fn leave_held(&mut self, id: HoldId, state: HoldState) -> Result<(), Violation> {
        let hold = self.hold(id).filter(|hold| hold.state == HoldState::Held);
        let hold = hold.ok_or(Violation::HoldNotHeld { hold_id: id })?;
        self.put_hold(Hold { state, ..hold });
        Ok(())
    }

    fn change_bucket(&mut self, change: &BucketChange) -> Result<(), Violation> {
        let bucket = match self.bucket(change.key()) {
            BucketRead::Row(bucket) => bucket.changed(change),
            BucketRead::Absent => change.created(),
            BucketRead::Unread => return Ok(()),
        };
        let bucket = bucket.ok_or(Violation::ExpiryBucketMismatch {
            product_id: change.product_id,
            expires_at: change.expires_at,
        })?;
        self.put_bucket(change.key(), Some(bucket));
        Ok(())
    }
}

fn laid<T: Tables>(
    tables: &mut T,
    writes: &WriteSet,
    ids: &mut Inserted,
) -> Result<Vec<Put>, Violation> {
    let mut laying = Laying {
        tables,
        puts: Vec::with_capacity(writes.rows()),
        buckets: BTreeMap::new(),
        holds: BTreeMap::new(),
        orders: BTreeMap::new(),
    };
    for new in &writes.products_inserted {
        let id = laying.tables.new_product_id(ids);
        ids.products.push(id);
        laying.puts.push(Put::Product(new.clone().with_id(id)));
    }
    for counters in &writes.products {
        let product = laying.tables.product(counters.id);
        let mut product = product.ok_or(Violation::DanglingProduct {
            product_id: counters.id,
        })?;
        product.set_counters(*counters);
        laying.puts.push(Put::Product(product));
    }
    for change in &writes.buckets {
        laying.change_bucket(change)?;
    }
    for folded in &writes.buckets_folded {
        if laying.bucket(folded.key()) == BucketRead::Absent {
            return Err(Violation::ExpiryBucketMismatch {
                product_id: folded.product_id,
                expires_at: folded.expires_at,
            });
        }
        laying.put_bucket(folded.key(), None);
    }
    let released = writes.holds_released.iter().chain(&writes.holds_retired);
    for &(id, reason) in released {
        laying.leave_held(ids.hold(id)?, HoldState::Released(reason))?;
    }
    for new in &writes.holds_inserted {
        let id = laying.tables.new_hold_id(ids);
        ids.holds.push(id);
        laying.put_hold(new.with_id(id));
    }
    for new in &writes.orders_inserted {
        let hold_id = ids.hold(new.hold_id)?;
        let id = laying.tables.new_order_id(ids);
        ids.orders.push(id);
        laying.leave_held(hold_id, HoldState::Consumed(id))?;
        laying.put_order(Order {
            hold_id,
            ..new.with_id(id)
        });
    }
    for &(id, settlement) in &writes.orders_updated {
        let id = ids.order(id)?;
        let order = laying.order(id).filter(|order| !order.status.is_terminal());
        let order = order.ok_or(Violation::TerminalOrderChanged { order_id: id })?;
        laying.put_order(order.settled(settlement));
    }
    for record in &writes.webhooks {
        laying.puts.push(Put::Webhook(ids.webhook_record(record)?));
    }
    for record in &writes.request_keys {
        laying
            .puts
            .push(Put::RequestKey(ids.request_record(record)?));
    }
    Ok(laying.puts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cents, Qty};
    use crate::rows::hold::{HoldGrant, ReleaseReason};
    use crate::rows::order::{NewOrder, OrderStatus, Settlement};
    use crate::writes::{NewHold, pending_hold, pending_order};

    /// Rows in maps, ids from 1 in sequence.
    #[derive(Default)]
    struct Rows {
        holds: BTreeMap<HoldId, Hold>,
        orders: BTreeMap<OrderId, Order>,
        puts: usize,
    }

    impl Tables for Rows {
        type Error = Violation;

        fn product(&self, _: ProductId) -> Option<Product> {
            None
        }

        fn bucket(&self, _: ProductId, _: Timestamp) -> BucketRead {
            BucketRead::Absent
        }

        fn hold(&self, id: HoldId) -> Option<Hold> {
            self.holds.get(&id).copied()
        }

        fn order(&self, id: OrderId) -> Option<Order> {
            self.orders.get(&id).copied()
        }

        fn new_hold_id(&mut self, assigned: &Inserted) -> HoldId {
            HoldId(next(self.holds.len(), assigned.holds.len()))
        }

        fn new_order_id(&mut self, assigned: &Inserted) -> OrderId {
            OrderId(next(self.orders.len(), assigned.orders.len()))
        }

        fn new_product_id(&mut self, assigned: &Inserted) -> ProductId {
            ProductId(next(0, assigned.products.len()))
        }

        fn put(&mut self, row: Put) -> Result<(), Violation> {
            self.puts = self.puts.saturating_add(1);
            match row {
                Put::Hold(hold) => {
                    self.holds.insert(hold.id, hold);
                }
                Put::Order(order) => {
                    self.orders.insert(order.id, order);
                }
                _ => {}
            }
            Ok(())
        }
    }

    /// The id after `stored` rows and `assigned` new ones.
    fn next(stored: usize, assigned: usize) -> u64 {
        u64::try_from(stored.saturating_add(assigned).saturating_add(1)).unwrap_or(u64::MAX)
    }

    fn grant() -> NewHold {
        NewHold {
            product_id: ProductId(1),
            grant: HoldGrant {
                qty: Qty(2),
                created_at: Timestamp(1_000),
                expires_at: Timestamp(121_000),
            },
        }
    }

    fn order_of(hold_id: HoldId) -> NewOrder {
        NewOrder {
            hold_id,
            product_id: ProductId(1),
            qty: Qty(2),
            total_cents: Cents(200),
            status: OrderStatus::PrePayment,
            created_at: Timestamp(2_000),
            payment_due_at: Timestamp(902_000),
        }
    }

    #[test]
    fn an_order_consumes_the_hold_its_write_set_inserted_and_a_later_one_settles_it() {
        let mut rows = Rows::default();
        let writes = WriteSet {
            holds_inserted: vec![grant()],
            orders_inserted: vec![order_of(pending_hold(0))],
            orders_updated: vec![(pending_order(0), Settlement::Paid)],
            ..WriteSet::default()
        };
        let mut inserted = Inserted::default();
        lay(&mut rows, &writes, &mut inserted).expect("it fits");
        assert_eq!(inserted.holds, vec![HoldId(1)]);
        assert_eq!(inserted.orders, vec![OrderId(1)]);
        assert_eq!(
            rows.holds[&HoldId(1)].state,
            HoldState::Consumed(OrderId(1))
        );
        assert_eq!(rows.orders[&OrderId(1)].status, OrderStatus::Paid);
        assert_eq!(rows.orders[&OrderId(1)].hold_id, HoldId(1));
    }

    #[test]
    fn a_write_set_that_does_not_fit_puts_nothing_and_assigns_no_id() {
        let mut rows = Rows::default();
        let mut inserted = Inserted::default();
        let writes = WriteSet {
            holds_inserted: vec![grant()],
            orders_inserted: vec![order_of(pending_hold(0))],
            ..WriteSet::default()
        };
        lay(&mut rows, &writes, &mut inserted).expect("it fits");
        let before = (rows.puts, inserted.clone());

        // The hold is consumed: it cannot leave held again, nor be consumed twice.
        let release = WriteSet {
            holds_released: vec![(HoldId(1), ReleaseReason::PaymentFailed)],
            ..WriteSet::default()
        };
        assert_eq!(
            lay(&mut rows, &release, &mut inserted),
            Err(Violation::HoldNotHeld { hold_id: HoldId(1) })
        );
        let twice = WriteSet {
            holds_inserted: vec![grant()],
            orders_inserted: vec![order_of(HoldId(1))],
            ..WriteSet::default()
        };
        assert_eq!(
            lay(&mut rows, &twice, &mut inserted),
            Err(Violation::HoldNotHeld { hold_id: HoldId(1) })
        );
        // The order is paid: it settles no more.
        let settle = WriteSet {
            orders_updated: vec![(OrderId(1), Settlement::Paid)],
            ..WriteSet::default()
        };
        lay(&mut rows, &settle, &mut inserted).expect("a pre-payment order settles");
        let again = WriteSet {
            orders_updated: vec![(OrderId(1), Settlement::Paid)],
            ..WriteSet::default()
        };
        assert_eq!(
            lay(&mut rows, &again, &mut inserted),
            Err(Violation::TerminalOrderChanged {
                order_id: OrderId(1)
            })
        );
        assert_eq!(
            (rows.puts, inserted),
            (before.0.saturating_add(1), before.1)
        );
        assert_eq!(rows.holds.len(), 1, "the refused grant was not put");
    }
}
