//! Write-sets: what a decision writes, as data. Each decision returns one; the SQL storage, the
//! simulator's storage and the in-memory [`Ledger`](crate::Ledger) each apply a write-set in one
//! function, so every effect (grant, consume, release, cancel, pay, restock, record) is composed
//! here, once, and written once per storage.
//!
//! A write-set is built with [`Changes`], which starts from the product row the transaction
//! locked and keeps its counters (`stock`, `units_held`, `units_received`) in step with every
//! effect, with checked arithmetic: a counter that would leave its range means the rows read
//! were corrupt, and is a [`Violation`], never a wrap.
//!
//! Storages apply the parts in this order: the product row, the released holds, the inserted
//! holds (ids assigned in order), the inserted order (then its hold is consumed by the new id),
//! order statuses, the webhook record, the request-key records. Ids the storage assigns are
//! returned as [`Inserted`]; records that name a row inserted by the same write-set say so with
//! [`Resource`], and [`WriteSet::request_records`] and [`WriteSet::webhook_record`] resolve them.

use crate::hold::{Hold, HoldGrant, HoldState, ReleaseReason};
use crate::ids::{HoldId, IdempotencyKey, OrderId, Qty};
use crate::invariants::Violation;
use crate::order::{CancelReason, NewOrder, Order, OrderStatus, Settlement};
use crate::payment::WebhookRecord;
use crate::product::{Counters, Product};
use crate::request::{KeyedRequest, RequestRecord};
use crate::time::Timestamp;

/// Everything one decision writes. Empty when the decision changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// The product row's new counters, when any changed. Every change of a product's units
    /// writes its row, which is also what certification-based replication compares.
    pub product: Option<Counters>,
    /// Holds of the product leaving state held for `released`.
    pub holds_released: Vec<(HoldId, ReleaseReason)>,
    /// Holds granted on the product, in order; the storage assigns their ids in this order.
    pub holds_inserted: Vec<HoldGrant>,
    /// An order to insert; its hold (`hold_id`, held) becomes consumed by the new order's id.
    pub order_inserted: Option<NewOrder>,
    /// Existing pre-payment orders moving to a terminal status.
    pub orders_updated: Vec<(OrderId, Settlement)>,
    /// A webhook record to insert. An `order_id` of `None` with an `order_inserted` names the
    /// inserted order.
    pub webhook: Option<WebhookRecord>,
    /// Client request idempotency-key records to insert.
    pub request_keys: Vec<RequestKeyWrite>,
}

/// A request-key record to write, naming its resource by reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestKeyWrite {
    /// The key.
    pub key: IdempotencyKey,
    /// The request it answered.
    pub request: KeyedRequest,
    /// The hold or order it answered with.
    pub resource: Resource,
    /// Whether the request created the resource.
    pub created: bool,
    /// When the request was decided.
    pub created_at: Timestamp,
}

/// A row a record names: one inserted by the same write-set, or one that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// The `n`th of [`WriteSet::holds_inserted`].
    InsertedHold(usize),
    /// [`WriteSet::order_inserted`].
    InsertedOrder,
    /// An existing order.
    Order(OrderId),
}

/// The ids a storage assigned while applying a write-set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// The ids of [`WriteSet::holds_inserted`], in order.
    pub holds: Vec<HoldId>,
    /// The id of [`WriteSet::order_inserted`].
    pub order: Option<OrderId>,
}

impl WriteSet {
    /// Whether applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == WriteSet::default()
    }

    /// The holds inserted, as rows with the ids the storage assigned.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when `inserted` lacks an id or the write-set its product.
    pub fn hold_rows(&self, inserted: &Inserted) -> Result<Vec<Hold>, Violation> {
        if self.holds_inserted.is_empty() {
            return Ok(Vec::new());
        }
        let product = self.product.as_ref().ok_or(Violation::WriteSetUnresolved)?;
        if inserted.holds.len() != self.holds_inserted.len() {
            return Err(Violation::WriteSetUnresolved);
        }
        let rows = self.holds_inserted.iter().zip(&inserted.holds);
        Ok(rows.map(|(g, &id)| g.with_id(id, product.id)).collect())
    }

    /// The order inserted, as a row with the id the storage assigned.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when `inserted` lacks its id.
    pub fn order_row(&self, inserted: &Inserted) -> Result<Option<Order>, Violation> {
        match (self.order_inserted, inserted.order) {
            (None, _) => Ok(None),
            (Some(new), Some(id)) => Ok(Some(new.with_id(id))),
            (Some(_), None) => Err(Violation::WriteSetUnresolved),
        }
    }

    /// The webhook record as stored, with an inserted order's id filled in.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when `inserted` lacks the order's id.
    pub fn webhook_record(&self, inserted: &Inserted) -> Result<Option<WebhookRecord>, Violation> {
        let Some(record) = &self.webhook else {
            return Ok(None);
        };
        let order_id = match (record.order_id, self.order_inserted) {
            (Some(id), _) => Some(id),
            (None, Some(_)) => Some(inserted.order.ok_or(Violation::WriteSetUnresolved)?),
            (None, None) => None,
        };
        Ok(Some(WebhookRecord {
            order_id,
            ..record.clone()
        }))
    }

    /// The request-key records as stored, with inserted ids filled in.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when `inserted` lacks an id a record names.
    pub fn request_records(&self, inserted: &Inserted) -> Result<Vec<RequestRecord>, Violation> {
        let resolve = |write: &RequestKeyWrite| {
            let resource_id = match write.resource {
                Resource::InsertedHold(n) => inserted.holds.get(n).map(|id| id.0),
                Resource::InsertedOrder => inserted.order.map(|id| id.0),
                Resource::Order(id) => Some(id.0),
            };
            Ok(RequestRecord {
                key: write.key.clone(),
                request: write.request,
                resource_id: resource_id.ok_or(Violation::WriteSetUnresolved)?,
                created: write.created,
                created_at: write.created_at,
            })
        };
        self.request_keys.iter().map(resolve).collect()
    }
}

/// Builds a write-set from the product row a transaction locked, keeping its counters in step.
#[derive(Clone, Debug)]
pub struct Changes {
    product: Counters,
    product_changed: bool,
    writes: WriteSet,
}

impl Changes {
    /// Changes to `product` and the rows of its holds and orders.
    pub fn on(product: &Product) -> Self {
        Changes {
            product: product.counters(),
            product_changed: false,
            writes: WriteSet::default(),
        }
    }

    /// Changes to no product: a webhook for an unknown hold records only itself.
    pub fn none() -> WriteSet {
        WriteSet::default()
    }

    /// The product's counters as these changes leave them.
    pub fn product(&self) -> &Counters {
        &self.product
    }

    /// Grants a hold: its units become held. The caller decided it fits in `available`.
    ///
    /// # Errors
    /// [`Violation::HeldExceedsStock`] if the held units would exceed the stock.
    pub fn grant(&mut self, grant: HoldGrant) -> Result<usize, Violation> {
        let units_held = self.product.units_held.checked_add(grant.qty);
        let units_held = units_held.filter(|&held| held <= self.product.stock);
        self.product.units_held = units_held.ok_or(Violation::HeldExceedsStock {
            product_id: self.product.id,
            units_held: u64::from(self.product.units_held.0).saturating_add(u64::from(grant.qty.0)),
            stock: self.product.stock,
        })?;
        self.product_changed = true;
        self.writes.holds_inserted.push(grant);
        Ok(self.writes.holds_inserted.len().saturating_sub(1))
    }

    /// Releases a held hold of the product: its units go back on sale.
    ///
    /// # Errors
    /// [`Violation::CounterOutOfRange`] if the product's held units are fewer than the hold's.
    pub fn release(&mut self, hold: &Hold, reason: ReleaseReason) -> Result<(), Violation> {
        self.leave_held(hold)?;
        self.writes.holds_released.push((hold.id, reason));
        Ok(())
    }

    /// Creates `order`, consuming its held hold: the units leave `units_held` and `stock` (they
    /// are sold).
    ///
    /// # Errors
    /// [`Violation::CounterOutOfRange`] if the counters cannot give up the hold's units.
    pub fn consume(&mut self, hold: &Hold, order: NewOrder) -> Result<(), Violation> {
        debug_assert_eq!(order.hold_id, hold.id, "an order consumes its own hold");
        self.leave_held(hold)?;
        self.product.stock = self
            .product
            .stock
            .checked_sub(hold.qty)
            .ok_or(self.out_of_range("stock"))?;
        self.writes.order_inserted = Some(order);
        Ok(())
    }

    /// Cancels a pre-payment order: its units return to `stock`, exactly once.
    ///
    /// # Errors
    /// [`Violation::CounterOutOfRange`] if the stock would overflow;
    /// [`Violation::TerminalOrderChanged`] if the order is not pre-payment.
    pub fn cancel(&mut self, order: &Order, reason: CancelReason) -> Result<(), Violation> {
        self.leave_pre_payment(order)?;
        self.product.stock = self
            .product
            .stock
            .checked_add(order.qty)
            .ok_or(self.out_of_range("stock"))?;
        self.product_changed = true;
        self.writes
            .orders_updated
            .push((order.id, Settlement::Cancelled(reason)));
        Ok(())
    }

    /// Marks a pre-payment order paid; its units stay sold.
    ///
    /// # Errors
    /// [`Violation::TerminalOrderChanged`] if the order is not pre-payment.
    pub fn pay(&mut self, order: &Order) -> Result<(), Violation> {
        self.leave_pre_payment(order)?;
        self.writes
            .orders_updated
            .push((order.id, Settlement::Paid));
        Ok(())
    }

    /// Sets the product's `stock` and `units_received` after a restock.
    pub fn restock(&mut self, stock: Qty, units_received: u64) {
        self.product.stock = stock;
        self.product.units_received = units_received;
        self.product_changed = true;
    }

    /// Records a client request's idempotency key with the resource it answered.
    pub fn record_request(&mut self, write: RequestKeyWrite) {
        self.writes.request_keys.push(write);
    }

    /// The write-set.
    pub fn finish(self) -> WriteSet {
        let Changes {
            product,
            product_changed,
            mut writes,
        } = self;
        if product_changed {
            writes.product = Some(product);
        }
        writes
    }

    fn leave_held(&mut self, hold: &Hold) -> Result<(), Violation> {
        if hold.product_id != self.product.id || hold.state != HoldState::Held {
            return Err(Violation::HoldNotHeld { hold_id: hold.id });
        }
        self.product.units_held = self
            .product
            .units_held
            .checked_sub(hold.qty)
            .ok_or(self.out_of_range("units_held"))?;
        self.product_changed = true;
        Ok(())
    }

    fn leave_pre_payment(&self, order: &Order) -> Result<(), Violation> {
        if order.product_id != self.product.id || order.status != OrderStatus::PrePayment {
            return Err(Violation::TerminalOrderChanged { order_id: order.id });
        }
        Ok(())
    }

    fn out_of_range(&self, counter: &'static str) -> Violation {
        Violation::CounterOutOfRange {
            product_id: self.product.id,
            counter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cents, ProductId};

    fn product(stock: u32, units_held: u32) -> Product {
        Product {
            id: ProductId(1),
            name: "p".into(),
            price_cents: Cents(100),
            stock: Qty(stock),
            units_held: Qty(units_held),
            units_received: u64::from(stock),
        }
    }

    fn held(id: u64, qty: u32) -> Hold {
        let grant = HoldGrant {
            qty: Qty(qty),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        };
        grant.with_id(HoldId(id), ProductId(1))
    }

    #[test]
    fn a_grant_and_a_release_move_units_held_and_write_the_product_row() {
        let mut changes = Changes::on(&product(5, 2));
        changes
            .release(&held(1, 2), ReleaseReason::Expired)
            .unwrap();
        let grant = HoldGrant {
            qty: Qty(5),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        };
        assert_eq!(changes.grant(grant), Ok(0));
        let writes = changes.finish();
        let written = writes.product.as_ref().map(|p| (p.stock, p.units_held));
        assert_eq!(written, Some((Qty(5), Qty(5))));
        assert_eq!(
            writes.holds_released,
            vec![(HoldId(1), ReleaseReason::Expired)]
        );
    }

    #[test]
    fn a_counter_leaving_its_range_is_a_violation_not_a_wrap() {
        let mut changes = Changes::on(&product(5, 1));
        assert_eq!(
            changes.release(&held(1, 2), ReleaseReason::Expired),
            Err(Violation::CounterOutOfRange {
                product_id: ProductId(1),
                counter: "units_held"
            })
        );
        let grant = HoldGrant {
            qty: Qty(5),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        };
        assert!(matches!(
            changes.grant(grant),
            Err(Violation::HeldExceedsStock { .. })
        ));
    }

    #[test]
    fn records_resolve_the_ids_the_storage_assigned() {
        let mut changes = Changes::on(&product(5, 0));
        let grant = HoldGrant {
            qty: Qty(1),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        };
        changes.grant(grant).unwrap();
        let n = changes.grant(grant).unwrap();
        let key = IdempotencyKey::parse("k").unwrap();
        changes.record_request(RequestKeyWrite {
            key,
            request: KeyedRequest::PlaceHold {
                product_id: ProductId(1),
                qty: Qty(1),
            },
            resource: Resource::InsertedHold(n),
            created: true,
            created_at: Timestamp(0),
        });
        let writes = changes.finish();
        let inserted = Inserted {
            holds: vec![HoldId(7), HoldId(8)],
            order: None,
        };
        let records = writes.request_records(&inserted).unwrap();
        assert_eq!(records[0].resource_id, 8);
        assert_eq!(writes.hold_rows(&inserted).unwrap()[1].id, HoldId(8));
        let short = Inserted::default();
        assert_eq!(
            writes.request_records(&short),
            Err(Violation::WriteSetUnresolved)
        );
    }
}
