//! Write-sets: what decisions write, as data. Each decision returns one, [`crate::execute()`] joins
//! a batch's into one, and every effect (grant, consume, release, retire, fold, cancel, pay,
//! restock, record) is composed here, once. In memory a write-set is laid over rows by one
//! function, [`lay`] (the batch's working view, the [`Ledger`](crate::Ledger), the simulator's
//! storage); the SQL storage writes it as statements.
//!
//! A decision's write-set is built with [`Changes`], which starts from the product row the
//! transaction locked and keeps its counters (`stock`, `units_held`, `units_received`,
//! `expired_through`, `holds_to_retire`) and its expiry buckets in step with every effect, with
//! checked arithmetic: a counter that would leave its range means the rows read were corrupt,
//! and is a [`Violation`], never a wrap.
//!
//! Rows a write-set inserts have no ids until a storage assigns them, yet later parts of the same
//! write-set (a webhook record naming the order it created, a request key naming its hold, a
//! later command of the batch paying an order an earlier one created, a product's creation
//! answering the product) must name them. They name them by *pending* ids, above [`ID_MAX`]
//! where no stored row and no request's id can be: the `n`th hold a transaction's write-set
//! inserts is [`pending_hold`]`(n)`, the `n`th order [`pending_order`]`(n)`, the `n`th product
//! [`pending_product`]`(n)`. A decision does not know how many rows the commands before it in its
//! batch inserted, so [`Changes`] numbers its new rows in a range of their own, above the batch's,
//! and [`WriteSet::append`] (and [`Pending`] for answers) moves them into the batch's numbering;
//! rows the decision read keep the ids they had. A storage applies the parts in this order,
//! resolving pending ids through the [`Inserted`] ids it has assigned so far: the inserted
//! products (ids assigned in order), the product rows, the bucket changes, the folded buckets (deleted), the released and retired holds, the inserted
//! holds (ids assigned in order), the inserted orders (ids in order; each consumes its hold),
//! order statuses, the webhook records, the request-key records.

use crate::errors::Violation;
use crate::ids::{HoldId, ID_MAX, OrderId, ProductId, Qty};
use crate::rows::expiry::{BucketChange, ExpiryBucket, Folded, OpenBucket};
use crate::rows::hold::{Hold, HoldGrant, HoldState, ReleaseReason};
use crate::rows::order::{CancelReason, NewOrder, Order, OrderStatus, Settlement};
use crate::rows::payment::WebhookRecord;
use crate::rows::product::{Counters, NewProduct, Product};
use crate::rows::request::{KeyedRequest, RequestRecord};
use crate::time::{Timestamp, is_past};

mod lay;

pub use lay::{BucketRead, Put, Tables, lay};

/// Where a decision's own numbering of its new rows starts, above any batch's numbering (a
/// batch inserts far fewer than 2^40 rows).
const OWN: u64 = 1 << 40;

/// The pending id of the `n`th hold a transaction's write-set inserts.
pub fn pending_hold(n: usize) -> HoldId {
    HoldId(pending(0, n))
}

/// The pending id of the `n`th order a transaction's write-set inserts.
pub fn pending_order(n: usize) -> OrderId {
    OrderId(pending(0, n))
}

/// The pending id of the `n`th product a transaction's write-set inserts.
pub fn pending_product(n: usize) -> ProductId {
    ProductId(pending(0, n))
}

fn pending(base: u64, n: usize) -> u64 {
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    ID_MAX
        .saturating_add(1)
        .saturating_add(base)
        .saturating_add(n)
}

/// Which inserted row of the transaction a pending id names, if it is one.
fn pending_index(id: u64) -> Option<usize> {
    let n = id.checked_sub(ID_MAX)?.checked_sub(1)?;
    (n < OWN).then(|| usize::try_from(n).ok()).flatten()
}

/// The id of a decision's `n`th new hold, in its own numbering.
pub(crate) fn own_hold(n: usize) -> HoldId {
    HoldId(pending(OWN, n))
}

/// The id of a decision's `n`th new order, in its own numbering.
pub(crate) fn own_order(n: usize) -> OrderId {
    OrderId(pending(OWN, n))
}

/// The id of a decision's `n`th new product, in its own numbering.
pub(crate) fn own_product(n: usize) -> ProductId {
    ProductId(pending(OWN, n))
}

/// Which of its own new rows a decision's id names, if it is one.
fn own_index(id: u64) -> Option<usize> {
    let n = id.checked_sub(ID_MAX)?.checked_sub(1)?.checked_sub(OWN)?;
    usize::try_from(n).ok()
}

/// How many holds, orders and products a write-set inserts: the offsets at which the rows of a
/// decision appended to it are numbered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Holds inserted.
    pub holds: usize,
    /// Orders inserted.
    pub orders: usize,
    /// Products inserted.
    pub products: usize,
}

impl Pending {
    /// `id` in the batch's numbering, as [`Pending::hold`].
    pub fn product(self, id: ProductId) -> ProductId {
        match own_index(id.0) {
            Some(n) => pending_product(n.saturating_add(self.products)),
            None => id,
        }
    }

    /// `id` in the batch's numbering: a decision's own new row moves past these offsets; any
    /// other id stays.
    pub fn hold(self, id: HoldId) -> HoldId {
        match own_index(id.0) {
            Some(n) => pending_hold(n.saturating_add(self.holds)),
            None => id,
        }
    }

    /// `id` in the batch's numbering, as [`Pending::hold`].
    pub fn order(self, id: OrderId) -> OrderId {
        match own_index(id.0) {
            Some(n) => pending_order(n.saturating_add(self.orders)),
            None => id,
        }
    }

    /// A hold row with its ids moved past these offsets.
    pub fn hold_row(self, hold: Hold) -> Hold {
        Hold {
            id: self.hold(hold.id),
            state: match hold.state {
                HoldState::Consumed(order_id) => HoldState::Consumed(self.order(order_id)),
                other => other,
            },
            ..hold
        }
    }

    /// An order row with its ids moved past these offsets.
    pub fn order_row(self, order: Order) -> Order {
        Order {
            id: self.order(order.id),
            hold_id: self.hold(order.hold_id),
            ..order
        }
    }

    /// A record with the id it names moved past these offsets.
    pub fn request_record(self, record: RequestRecord) -> RequestRecord {
        let resource_id = match record.request {
            KeyedRequest::PlaceHold { .. } => self.hold(HoldId(record.resource_id)).0,
            KeyedRequest::PlaceOrder { .. } => self.order(OrderId(record.resource_id)).0,
        };
        RequestRecord {
            resource_id,
            ..record
        }
    }

    /// A webhook record with the order it names moved past these offsets.
    pub fn webhook_record(self, record: WebhookRecord) -> WebhookRecord {
        WebhookRecord {
            order_id: record.order_id.map(|id| self.order(id)),
            ..record
        }
    }
}

/// A hold a write-set inserts: a grant on a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewHold {
    /// The product it holds units of.
    pub product_id: ProductId,
    /// What was granted.
    pub grant: HoldGrant,
}

impl NewHold {
    /// The hold this becomes once the store gave it `id`.
    pub fn with_id(self, id: HoldId) -> Hold {
        self.grant.with_id(id, self.product_id)
    }
}

/// Everything one transaction writes: one decision's, or a batch's joined in arrival order.
/// Empty when nothing changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// Products created, in order; the storage assigns their ids in this order, before it
    /// writes anything else. Nothing else in a write-set names a new product: only its
    /// creation's answer does.
    pub products_inserted: Vec<NewProduct>,
    /// The new counters of every product whose units changed, one entry per product. Every
    /// change of a product's units writes its row, which is also what certification-based
    /// replication compares.
    pub products: Vec<Counters>,
    /// Changes to expiry buckets, by delta, one entry per bucket: a grant adds its hold to its
    /// deadline's bucket (made when absent), a live hold consumed or released leaves its own.
    pub buckets: Vec<BucketChange>,
    /// Due buckets of the table folded into their products' counters, to delete, as the
    /// decision saw them.
    pub buckets_folded: Vec<ExpiryBucket>,
    /// What every fold gave back to sale, the open buckets' included: a count, not a row.
    pub expired: Folded,
    /// Held holds leaving state held for `released`, their units leaving `units_held`.
    pub holds_released: Vec<(HoldId, ReleaseReason)>,
    /// Held holds expired for good (their units back on sale already) leaving state held for
    /// `released`: a storage writes them as it writes [`WriteSet::holds_released`].
    pub holds_retired: Vec<(HoldId, ReleaseReason)>,
    /// Holds granted, in order; the storage assigns their ids in this order.
    pub holds_inserted: Vec<NewHold>,
    /// Orders to insert, in order; each consumes its hold (held until then).
    pub orders_inserted: Vec<NewOrder>,
    /// Pre-payment orders moving to a terminal status (a pending id names an inserted one).
    pub orders_updated: Vec<(OrderId, Settlement)>,
    /// Webhook records to insert (an `order_id` may be pending).
    pub webhooks: Vec<WebhookRecord>,
    /// Client request idempotency-key records to insert (a `resource_id` may be pending).
    pub request_keys: Vec<RequestRecord>,
}

/// The ids a storage assigned while applying a write-set, in insertion order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// The ids of [`WriteSet::holds_inserted`], in order.
    pub holds: Vec<HoldId>,
    /// The ids of [`WriteSet::orders_inserted`], in order.
    pub orders: Vec<OrderId>,
    /// The ids of [`WriteSet::products_inserted`], in order.
    pub products: Vec<ProductId>,
}

impl Inserted {
    /// The stored id of `id`: itself, or the id assigned to the row a pending id names.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when a pending id names a row not inserted (yet).
    pub fn hold(&self, id: HoldId) -> Result<HoldId, Violation> {
        if id.0 <= ID_MAX {
            return Ok(id);
        }
        let assigned = pending_index(id.0).and_then(|n| self.holds.get(n));
        assigned.copied().ok_or(Violation::WriteSetUnresolved)
    }

    /// The stored id of `id`: itself, or the id assigned to the row a pending id names.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when a pending id names a row not inserted (yet).
    pub fn order(&self, id: OrderId) -> Result<OrderId, Violation> {
        if id.0 <= ID_MAX {
            return Ok(id);
        }
        let assigned = pending_index(id.0).and_then(|n| self.orders.get(n));
        assigned.copied().ok_or(Violation::WriteSetUnresolved)
    }

    /// The stored id of `id`: itself, or the id assigned to the row a pending id names.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] when a pending id names a row not inserted (yet).
    pub fn product(&self, id: ProductId) -> Result<ProductId, Violation> {
        if id.0 <= ID_MAX {
            return Ok(id);
        }
        let assigned = pending_index(id.0).and_then(|n| self.products.get(n));
        assigned.copied().ok_or(Violation::WriteSetUnresolved)
    }

    /// A hold row in stored ids.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] for a pending id without its row.
    pub fn hold_row(&self, hold: Hold) -> Result<Hold, Violation> {
        Ok(Hold {
            id: self.hold(hold.id)?,
            state: match hold.state {
                HoldState::Consumed(order_id) => HoldState::Consumed(self.order(order_id)?),
                other => other,
            },
            ..hold
        })
    }

    /// An order row in stored ids.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] for a pending id without its row.
    pub fn order_row(&self, order: Order) -> Result<Order, Violation> {
        Ok(Order {
            id: self.order(order.id)?,
            hold_id: self.hold(order.hold_id)?,
            ..order
        })
    }

    /// A webhook record in stored ids.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] for a pending id without its row.
    pub fn webhook_record(&self, record: &WebhookRecord) -> Result<WebhookRecord, Violation> {
        Ok(WebhookRecord {
            order_id: record.order_id.map(|id| self.order(id)).transpose()?,
            ..record.clone()
        })
    }

    /// A request-key record in stored ids.
    ///
    /// # Errors
    /// [`Violation::WriteSetUnresolved`] for a pending id without its row.
    pub fn request_record(&self, record: &RequestRecord) -> Result<RequestRecord, Violation> {
        let resource_id = match record.request {
            KeyedRequest::PlaceHold { .. } => self.hold(HoldId(record.resource_id))?.0,
            KeyedRequest::PlaceOrder { .. } => self.order(OrderId(record.resource_id))?.0,
        };
        Ok(RequestRecord {
            resource_id,
            ..record.clone()
        })
    }
}

impl WriteSet {
    /// Whether applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == WriteSet::default()
    }

    /// How many holds, orders and products it inserts.
    pub fn pending(&self) -> Pending {
        Pending {
            holds: self.holds_inserted.len(),
            orders: self.orders_inserted.len(),
            products: self.products_inserted.len(),
        }
    }

    /// The new counters of `product_id`, if it writes them.
    pub fn product(&self, product_id: ProductId) -> Option<&Counters> {
        self.products.iter().find(|c| c.id == product_id)
    }

    /// How many rows applying it writes: one per product inserted or written, bucket changed or deleted, hold
    /// released, retired or inserted, request or webhook record, and two per order inserted (the
    /// order, and the hold it consumes). What [`crate::plan::Budget::written`] bounds.
    pub fn rows(&self) -> usize {
        [
            self.products_inserted.len(),
            self.products.len(),
            self.buckets.len(),
            self.buckets_folded.len(),
            self.holds_released.len(),
            self.holds_retired.len(),
            self.holds_inserted.len(),
            self.orders_inserted.len().saturating_mul(2),
            self.orders_updated.len(),
            self.webhooks.len(),
            self.request_keys.len(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// What its folds gave back to sale.
    pub fn folded(&self) -> Folded {
        self.expired
    }

    /// Appends `later`, a decision's write-set decided after this one's effects: the rows it
    /// inserts are numbered after this one's, and its product counters replace this one's.
    pub fn append(&mut self, later: WriteSet) {
        let moved = later.moved(self.pending());
        self.join(moved);
    }

    /// A decision's write-set in its batch's numbering: its own new rows after `offsets`.
    pub fn moved(self, offsets: Pending) -> WriteSet {
        WriteSet {
            products_inserted: self.products_inserted,
            products: self.products,
            buckets: self.buckets,
            buckets_folded: self.buckets_folded,
            expired: self.expired,
            holds_released: (self.holds_released.into_iter())
                .map(|(id, reason)| (offsets.hold(id), reason))
                .collect(),
            holds_retired: self.holds_retired,
            holds_inserted: self.holds_inserted,
            orders_inserted: (self.orders_inserted.into_iter())
                .map(|order| NewOrder {
                    hold_id: offsets.hold(order.hold_id),
                    ..order
                })
                .collect(),
            orders_updated: (self.orders_updated.into_iter())
                .map(|(id, settled)| (offsets.order(id), settled))
                .collect(),
            webhooks: (self.webhooks.into_iter())
                .map(|record| offsets.webhook_record(record))
                .collect(),
            request_keys: (self.request_keys.into_iter())
                .map(|record| offsets.request_record(record))
                .collect(),
        }
    }

    /// Appends `later`, already in this write-set's numbering: its rows after this one's, its
    /// product counters replacing this one's, its bucket deltas added to this one's. A bucket
    /// `later` folds takes no change of this one's any more: the fold deletes it, having seen the
    /// changes.
    pub fn join(&mut self, later: WriteSet) {
        self.products_inserted.extend(later.products_inserted);
        for counters in later.products {
            match self.products.iter_mut().find(|c| c.id == counters.id) {
                Some(written) => *written = counters,
                None => self.products.push(counters),
            }
        }
        for change in later.buckets {
            add_change(&mut self.buckets, change);
        }
        for folded in &later.buckets_folded {
            self.buckets.retain(|change| change.key() != folded.key());
        }
        self.buckets_folded.extend(later.buckets_folded);
        self.expired = self.expired.and(later.expired);
        self.holds_released.extend(later.holds_released);
        self.holds_retired.extend(later.holds_retired);
        self.holds_inserted.extend(later.holds_inserted);
        self.orders_inserted.extend(later.orders_inserted);
        self.orders_updated.extend(later.orders_updated);
        self.webhooks.extend(later.webhooks);
        self.request_keys.extend(later.request_keys);
    }
}

/// Adds `change` to the entry of its bucket in `changes`. An entry that nets to nothing stays: a
/// grant whose hold the same batch consumed still makes its deadline's bucket, at zero, as the
/// same commands one by one would.
fn add_change(changes: &mut Vec<BucketChange>, change: BucketChange) {
    match changes.iter_mut().find(|c| c.key() == change.key()) {
        Some(entry) => {
            entry.units = entry.units.saturating_add(change.units);
            entry.holds = entry.holds.saturating_add(change.holds);
        }
        None => changes.push(change),
    }
}

/// Builds one decision's write-set from the product row its transaction locked, keeping the
/// product's counters and expiry buckets in step. Its new rows are numbered in the decision's own
/// range, which [`WriteSet::append`] moves into the batch's.
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

    /// What the folds of these changes gave back to sale so far.
    pub fn folded(&self) -> Folded {
        self.writes.expired
    }

    /// Folds the product's buckets due at `now` into its counters: `due`, those of the table in
    /// deadline order, then its open bucket if it is due. Their units leave `units_held`, their
    /// holds wait to be retired, `expired_through` moves to the last one, the table's are
    /// deleted and the open one emptied. Every hold of theirs has expired for good.
    ///
    /// # Errors
    /// [`Violation::ExpiryBucketMismatch`] for a bucket of another product, at or before
    /// `expired_through`, or at the open bucket's deadline; [`Violation::CounterOutOfRange`]
    /// when the counters cannot take it.
    pub fn fold(&mut self, due: &[ExpiryBucket], now: Timestamp) -> Result<(), Violation> {
        let open = self.product.live_bucket();
        for bucket in due {
            let fits = bucket.product_id == self.product.id
                && bucket.expires_at > self.product.expired_through
                && open.is_none_or(|open| open.expires_at != bucket.expires_at);
            if !fits {
                return Err(Violation::ExpiryBucketMismatch {
                    product_id: bucket.product_id,
                    expires_at: bucket.expires_at,
                });
            }
            self.fold_one(bucket)?;
            self.writes.buckets_folded.push(*bucket);
        }
        if let Some(open) = open.filter(|open| is_past(open.expires_at, now)) {
            self.fold_one(&open)?;
            self.product.open_bucket.units = Qty::ZERO;
            self.product.open_bucket.holds = 0;
        }
        Ok(())
    }

    /// Moves one bucket's units and holds out of the counters.
    fn fold_one(&mut self, bucket: &ExpiryBucket) -> Result<(), Violation> {
        self.product.units_held = (self.product.units_held)
            .checked_sub(bucket.units)
            .ok_or(self.out_of_range("units_held"))?;
        self.product.holds_to_retire = (self.product.holds_to_retire)
            .checked_add(bucket.holds)
            .ok_or(self.out_of_range("holds_to_retire"))?;
        self.product.expired_through = self.product.expired_through.max(bucket.expires_at);
        self.product_changed = true;
        self.writes.expired = self.writes.expired.and(Folded::of(&[*bucket]));
        Ok(())
    }

    /// Grants a hold: its units become held, in its deadline's bucket. The caller decided it
    /// fits in `available`. Returns the new hold's id in the decision's own numbering.
    ///
    /// # Errors
    /// [`Violation::HeldExceedsStock`] if the held units would exceed the stock;
    /// [`Violation::ExpiryBucketMismatch`] for a deadline the product has folded already.
    pub fn grant(&mut self, grant: HoldGrant) -> Result<HoldId, Violation> {
        if self.product.expired_through >= grant.expires_at {
            return Err(Violation::ExpiryBucketMismatch {
                product_id: self.product.id,
                expires_at: grant.expires_at,
            });
        }
        let units_held = self.product.units_held.checked_add(grant.qty);
        let units_held = units_held.filter(|&held| held <= self.product.stock);
        self.product.units_held = units_held.ok_or(Violation::HeldExceedsStock {
            product_id: self.product.id,
            units_held: u64::from(self.product.units_held.0).saturating_add(u64::from(grant.qty.0)),
            stock: self.product.stock,
        })?;
        self.product_changed = true;
        self.add_to_bucket(grant.expires_at, grant.qty)?;
        let id = own_hold(self.writes.holds_inserted.len());
        self.writes.holds_inserted.push(NewHold {
            product_id: self.product.id,
            grant,
        });
        Ok(id)
    }

    /// Releases a held hold of the product: its units go back on sale now, or went at its
    /// deadline already when it has expired for good (it is then retired).
    ///
    /// # Errors
    /// [`Violation::CounterOutOfRange`] if the product's counters cannot give the hold up.
    pub fn release(&mut self, hold: &Hold, reason: ReleaseReason) -> Result<(), Violation> {
        if self.leave_held(hold)? {
            self.writes.holds_retired.push((hold.id, reason));
        } else {
            self.writes.holds_released.push((hold.id, reason));
        }
        Ok(())
    }

    /// Retires a held hold that has expired for good: its row moves to released (expired); its
    /// units went back on sale when its bucket was folded.
    ///
    /// # Errors
    /// [`Violation::HoldNotHeld`] for a hold that has not expired for good, or is not held.
    pub fn retire(&mut self, hold: &Hold) -> Result<(), Violation> {
        if !self.is_expired_for_good(hold) {
            return Err(Violation::HoldNotHeld { hold_id: hold.id });
        }
        self.release(hold, ReleaseReason::Expired)
    }

    /// Creates `order`, consuming its held, live hold: the units leave `units_held` and `stock`
    /// (they are sold). Returns the new order's id in the decision's own numbering.
    ///
    /// # Errors
    /// [`Violation::CounterOutOfRange`] if the counters cannot give up the hold's units;
    /// [`Violation::HoldNotHeld`] for a hold that has expired for good.
    pub fn consume(&mut self, hold: &Hold, order: NewOrder) -> Result<OrderId, Violation> {
        debug_assert_eq!(order.hold_id, hold.id, "an order consumes its own hold");
        if self.is_expired_for_good(hold) || self.leave_held(hold)? {
            return Err(Violation::HoldNotHeld { hold_id: hold.id });
        }
        self.product.stock = self
            .product
            .stock
            .checked_sub(hold.qty)
            .ok_or(self.out_of_range("stock"))?;
        let id = own_order(self.writes.orders_inserted.len());
        self.writes.orders_inserted.push(order);
        Ok(id)
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

    /// Records a client request's idempotency key with the resource it answered (a pending id
    /// for a row these changes insert).
    pub fn record_request(&mut self, record: RequestRecord) {
        self.writes.request_keys.push(record);
    }

    /// The write-set.
    pub fn finish(self) -> WriteSet {
        let Changes {
            product,
            product_changed,
            mut writes,
        } = self;
        if product_changed {
            writes.products.push(product);
        }
        writes
    }

    fn is_expired_for_good(&self, hold: &Hold) -> bool {
        hold.expires_at <= self.product.expired_through
    }

    /// Takes a held hold of the product out of the counters; returns whether it had expired for
    /// good (its units left `units_held` at its bucket's fold, so only `holds_to_retire` moves),
    /// else its units leave `units_held` and its bucket.
    fn leave_held(&mut self, hold: &Hold) -> Result<bool, Violation> {
        if hold.product_id != self.product.id || hold.state != HoldState::Held {
            return Err(Violation::HoldNotHeld { hold_id: hold.id });
        }
        self.product_changed = true;
        if self.is_expired_for_good(hold) {
            self.product.holds_to_retire = (self.product.holds_to_retire)
                .checked_sub(1)
                .ok_or(self.out_of_range("holds_to_retire"))?;
            return Ok(true);
        }
        self.product.units_held = self
            .product
            .units_held
            .checked_sub(hold.qty)
            .ok_or(self.out_of_range("units_held"))?;
        self.take_from_bucket(hold.expires_at, hold.qty)?;
        Ok(false)
    }

    /// Adds a granted hold of `qty` units to its deadline's bucket: the open one when it is the
    /// open one's deadline; a later deadline opens, the open bucket (if live) going to the table;
    /// an earlier one (a clock behind, a shorter TTL) goes to the table.
    fn add_to_bucket(&mut self, expires_at: Timestamp, qty: Qty) -> Result<(), Violation> {
        let open = self.product.live_bucket();
        match open {
            Some(open) if open.expires_at == expires_at => {
                let bucket = &mut self.product.open_bucket;
                bucket.units =
                    bucket
                        .units
                        .checked_add(qty)
                        .ok_or(Violation::CounterOutOfRange {
                            product_id: self.product.id,
                            counter: "open bucket",
                        })?;
                bucket.holds = bucket.holds.saturating_add(1);
            }
            Some(open) if open.expires_at > expires_at => self.change_bucket(expires_at, qty, 1),
            _ => {
                // Flushed: the table gets the open bucket's counts, if it still has a hold (its
                // holds may all have been ordered, as in a steady flow of buyers).
                if let Some(open) = open.filter(|open| open.holds > 0) {
                    add_change(
                        &mut self.writes.buckets,
                        BucketChange {
                            product_id: open.product_id,
                            expires_at: open.expires_at,
                            units: i64::from(open.units.0),
                            holds: i64::from(open.holds),
                        },
                    );
                }
                self.product.open_bucket = OpenBucket {
                    expires_at,
                    units: qty,
                    holds: 1,
                };
            }
        }
        Ok(())
    }

    /// Takes a live hold of `qty` units out of its deadline's bucket: the open one, or the
    /// table's.
    fn take_from_bucket(&mut self, expires_at: Timestamp, qty: Qty) -> Result<(), Violation> {
        match self.product.live_bucket() {
            Some(open) if open.expires_at == expires_at => {
                let out_of_range = self.out_of_range("open bucket");
                let bucket = &mut self.product.open_bucket;
                bucket.units = bucket.units.checked_sub(qty).ok_or(out_of_range.clone())?;
                bucket.holds = bucket.holds.checked_sub(1).ok_or(out_of_range)?;
            }
            _ => self.change_bucket(expires_at, qty, -1),
        }
        Ok(())
    }

    /// Adds `qty` units (taken away when `holds` is negative) and `holds` holds to the table's
    /// bucket at `expires_at`.
    fn change_bucket(&mut self, expires_at: Timestamp, qty: Qty, holds: i64) {
        let units = i64::from(qty.0);
        let change = BucketChange {
            product_id: self.product.id,
            expires_at,
            units: if holds < 0 {
                units.saturating_neg()
            } else {
                units
            },
            holds,
        };
        add_change(&mut self.writes.buckets, change);
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
mod tests;
