//! The one execute step: a batch of commands of any kinds and products, decided in arrival order
//! over the rows their [`Plan`] loaded, into one answer per command and one
//! [`WriteSet`] for the whole batch.
//!
//! Every driver runs the same three steps, as TigerBeetle's state machine does (prefetch, execute,
//! write): load the plan's rows in the lock order, [`execute`], apply the write-set. The
//! [`crate::Ledger`] does it from its tables for one command at a time; the service layer does it
//! in one database transaction for every request that arrived while the previous one ran, and
//! commits once.
//!
//! Each command sees the writes of the commands before it: a working view lays their effects over
//! the loaded rows (a grant's units, a released hold, an order created or paid, a record written),
//! so a batch decides exactly as the same commands would one by one, in its order, at its `now`.
//! A refused command (a [`Rejection`], or a [`crate::Violation`] in the rows it read) writes
//! nothing and the others go on: one corrupt product fails only the commands that touch it.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::Command;
use crate::errors::{Refusal, Rejection, Violation};
use crate::hold::{self, HoldRequest};
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::order;
use crate::outcome::{Outcome, WebhookChange};
use crate::payment::{self, WebhookDecision};
use crate::plan::{Plan, Rows};
use crate::product;
use crate::request::{self, KeyDecision};
use crate::rows::expiry::{ExpiryBucket, Folded};
use crate::rows::hold::{Hold, HoldState};
use crate::rows::order::Order;
use crate::rows::payment::{WebhookPayload, WebhookRecord};
use crate::rows::product::Product;
use crate::rows::request::{KeyedRequest, RequestRecord};
use crate::time::Timestamp;
use crate::writes::{
    BucketRead, Changes, Inserted, Put, Tables, WriteSet, lay, own_hold, own_order, pending_hold,
    pending_order, pending_product,
};

/// What [`execute`] decided: one answer per command, in order, and the batch's writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Each command's outcome (with pending ids for the rows the batch inserts, until
    /// [`Outcome::resolve`]) or refusal.
    pub answers: Vec<Result<Outcome, Refusal>>,
    /// Everything the batch writes; only granted, applied commands contribute.
    pub writes: WriteSet,
    /// The holds each command named that did not exist when the batch loaded its rows, by
    /// command.
    holds_missing: Vec<(usize, HoldId)>,
    /// The command that inserted each of the batch's new holds, in insertion order.
    holds_inserted_by: Vec<usize>,
}

impl Executed {
    /// The first command that found a hold missing which an earlier command of the same batch
    /// inserted, under the id the storage then gave it (`inserted`). One by one, that command
    /// would have found the hold; in the batch it could not, since ids are assigned only when
    /// the write-set is applied. Only a client guessing an id it was never answered meets this;
    /// the driver then decides the batch again in two parts, the commands before this one and
    /// the rest, so every answer is still the one arrival order gives.
    pub fn stale(&self, inserted: &Inserted) -> Option<usize> {
        let stale = self.holds_missing.iter().filter(|&&(command, hold_id)| {
            let at = inserted.holds.iter().position(|&id| id == hold_id);
            let by = at.and_then(|n| self.holds_inserted_by.get(n));
            by.is_some_and(|&by| by < command)
        });
        stale.map(|&(command, _)| command).min()
    }
}

/// Decides `commands` in order at `now` over `rows`, the rows [`crate::Plan::new`]`(commands)`
/// loaded. [`Command::Sweep`] is not decided over rows (the ledger and the service run it as
/// [`Command::SweepProduct`]s): it is refused as [`Violation::CommandOutsideExecute`].
///
/// The batch's [`crate::plan::Budget`] is checked here, for every driver: rows loaded past it
/// (a storage reading what grows with history) or a write-set past it refuse every command as
/// [`Violation::OverBudget`], and nothing is written.
pub fn execute(rows: &Rows<'_>, now: Timestamp, commands: &[Command]) -> Executed {
    let budget = Plan::new(commands).budget();
    if let Err(violation) = budget.check_loaded(rows.loaded()) {
        return Executed::refused(commands, &violation);
    }
    let mut working = Working::over(rows);
    let mut writes = WriteSet::default();
    let mut answers = Vec::with_capacity(commands.len());
    let mut holds_missing = Vec::new();
    let mut holds_inserted_by = Vec::new();
    for (n, command) in commands.iter().enumerate() {
        holds_missing.extend(
            named_hold(command)
                .filter(|&id| rows.found_hold(id).is_none())
                .map(|id| (n, id)),
        );
        let answer = working.decide(now, command).and_then(|(outcome, own)| {
            let offsets = writes.pending();
            let own = own.moved(offsets);
            // The last command's effects are seen by no one: not laying them over the rows
            // spares a single command's decision every copy.
            if n.saturating_add(1) < commands.len() {
                working.apply(&own)?;
            }
            holds_inserted_by.extend(own.holds_inserted.iter().map(|_| n));
            writes.join(own);
            Ok(outcome.moved(offsets))
        });
        answers.push(answer);
    }
    debug_assert_eq!(answers.len(), commands.len(), "one answer per command");
    if let Err(violation) = budget.check_written(writes.rows()) {
        return Executed::refused(commands, &violation);
    }
    Executed {
        answers,
        writes,
        holds_missing,
        holds_inserted_by,
    }
}

impl Executed {
    /// Every command refused with `violation`, nothing written.
    fn refused(commands: &[Command], violation: &Violation) -> Executed {
        Executed {
            answers: commands
                .iter()
                .map(|_| Err(violation.clone().into()))
                .collect(),
            writes: WriteSet::default(),
            holds_missing: Vec::new(),
            holds_inserted_by: Vec::new(),
        }
    }
}

/// The hold a command names by id, if it names one.
fn named_hold(command: &Command) -> Option<HoldId> {
    match command {
        Command::PlaceOrder { hold_id, .. } => Some(*hold_id),
        Command::ApplyWebhook(payload) => Some(payload.hold_id),
        Command::CreateProduct { .. }
        | Command::SeedDemo
        | Command::Restock { .. }
        | Command::PlaceHold { .. }
        | Command::Sweep
        | Command::SweepProduct { .. } => None,
    }
}

/// A decision's outcome with its own new rows numbered from 0, and its writes.
type Decided = Result<(Outcome, WriteSet), Refusal>;

/// The loaded rows with the effects of the batch's earlier commands laid over them, by
/// [`lay`]: the rows they put, by key. A folded bucket is `None`.
struct Working<'r, 'a> {
    rows: &'r Rows<'a>,
    products: BTreeMap<ProductId, Product>,
    buckets: BTreeMap<(ProductId, Timestamp), Option<ExpiryBucket>>,
    holds: BTreeMap<HoldId, Hold>,
    orders: BTreeMap<OrderId, Order>,
    webhooks: BTreeMap<IdempotencyKey, WebhookRecord>,
    request_keys: BTreeMap<IdempotencyKey, RequestRecord>,
    /// The rows the batch's earlier commands inserted, by their pending ids: resolving a pending
    /// id in the batch's numbering gives it back.
    inserted: Inserted,
}

impl<'r, 'a> Working<'r, 'a> {
    fn over(rows: &'r Rows<'a>) -> Self {
        Working {
            rows,
            products: BTreeMap::new(),
            buckets: BTreeMap::new(),
            holds: BTreeMap::new(),
            orders: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            request_keys: BTreeMap::new(),
            inserted: Inserted::default(),
        }
    }

    fn decide(&self, now: Timestamp, command: &Command) -> Decided {
        match command {
            Command::PlaceHold {
                product_id,
                qty,
                ttl_ms,
                key,
            } => self.place_hold(now, *product_id, *qty, *ttl_ms, key.as_ref()),
            Command::PlaceOrder {
                hold_id,
                payment_window_ms,
                key,
            } => self.place_order(now, *hold_id, *payment_window_ms, key.as_ref()),
            Command::ApplyWebhook(payload) => self.apply_webhook(now, payload),
            Command::Restock { product_id, qty } => self.restock(now, *product_id, *qty),
            Command::SweepProduct {
                product_id,
                holds,
                orders,
            } => self.sweep(now, *product_id, holds, orders),
            Command::CreateProduct {
                name,
                price_cents,
                stock,
            } => {
                let (product, writes) = product::create(name, *price_cents, *stock)?;
                Ok((Outcome::ProductCreated(product), writes))
            }
            Command::SeedDemo => {
                // A product an earlier command of the batch created exists too.
                let any = self.rows.any_product() || !self.inserted.products.is_empty();
                let (products, writes) = product::seed_demo(any);
                Ok((Outcome::Seeded(products), writes))
            }
            Command::Sweep => Err(Violation::CommandOutsideExecute.into()),
        }
    }

    /// Checks, first failure wins: qty and ttl, the key (a replay answers the hold as it is
    /// now), the product, then stock.
    fn place_hold(
        &self,
        now: Timestamp,
        product_id: ProductId,
        qty: Qty,
        ttl_ms: u64,
        key: Option<&IdempotencyKey>,
    ) -> Decided {
        let request = HoldRequest::new(qty, ttl_ms, key.cloned())?;
        let asked = KeyedRequest::PlaceHold { product_id, qty };
        if let Some(record) = self.replay(key, &asked)? {
            let hold = self.hold(HoldId(record.resource_id));
            let hold = *hold.ok_or_else(|| dangling(&record))?;
            let outcome = Outcome::HoldPlaced {
                hold,
                folded: Folded::default(),
                replayed: true,
            };
            return Ok((outcome, WriteSet::default()));
        }
        let product = self.product(product_id);
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        let due = self.due(product);
        let mut decided = hold::place_holds(product, &due, &[request], now)?;
        let grant = decided.decisions.pop();
        let grant = grant.ok_or(Violation::WriteSetUnresolved)??;
        let outcome = Outcome::HoldPlaced {
            hold: grant.with_id(own_hold(0), product_id),
            folded: decided.folded,
            replayed: false,
        };
        Ok((outcome, decided.writes))
    }

    /// Checks, first failure wins: the window, the key (a replay answers the order as it is
    /// now), the hold's existence, then as [`order::place_order`].
    fn place_order(
        &self,
        now: Timestamp,
        hold_id: HoldId,
        payment_window_ms: u64,
        key: Option<&IdempotencyKey>,
    ) -> Decided {
        order::validate_payment_window(payment_window_ms)?;
        if let Some(record) = self.replay(key, &KeyedRequest::PlaceOrder { hold_id })? {
            let order = self.order(OrderId(record.resource_id));
            let order = *order.ok_or_else(|| dangling(&record))?;
            let outcome = Outcome::OrderPlaced {
                order,
                created: record.created,
                replayed: true,
            };
            return Ok((outcome, WriteSet::default()));
        }
        let found = self.hold_and_product(hold_id)?;
        let (hold, product) = found.ok_or(Rejection::UnknownHold { hold_id })?;
        let decided = order::place_order(&hold, product, now, payment_window_ms, key)?;
        let order = match decided.existing {
            Some(order_id) => *self
                .order(order_id)
                .ok_or(Violation::HoldOrderMismatch { hold_id, order_id })?,
            None => {
                let new = decided.writes.orders_inserted.first();
                new.ok_or(Violation::WriteSetUnresolved)?
                    .with_id(own_order(0))
            }
        };
        let outcome = Outcome::OrderPlaced {
            order,
            created: decided.existing.is_none(),
            replayed: false,
        };
        Ok((outcome, decided.writes))
    }

    /// As [`payment::decide_webhook`]; the answer carries the order as the webhook leaves it.
    fn apply_webhook(&self, now: Timestamp, payload: &WebhookPayload) -> Decided {
        let found = self.hold_and_product(payload.hold_id)?;
        let order = match &found {
            Some((hold, _)) => self.order_of(hold)?,
            None => None,
        };
        let record = self.webhook(&payload.key);
        let hold_and_product = found.as_ref().map(|(hold, product)| (hold, *product));
        let decision =
            payment::decide_webhook(record, payload, hold_and_product, order.as_ref(), now)?;
        let (writes, change) = match decision {
            WebhookDecision::Replay(record) => {
                let order = record.order_id.and_then(|id| self.order(id)).copied();
                let outcome = Outcome::WebhookApplied {
                    record,
                    replayed: true,
                    order,
                    change: WebhookChange::None,
                };
                return Ok((outcome, WriteSet::default()));
            }
            WebhookDecision::New { writes, effect, .. } => (*writes, effect.change()),
        };
        let record = writes.webhooks.first().cloned();
        let record = record.ok_or(Violation::WriteSetUnresolved)?;
        let order = match (writes.orders_inserted.first(), order) {
            (Some(new), _) => Some(new.with_id(own_order(0))),
            (None, Some(order)) => {
                let settled = writes.orders_updated.iter().find(|(id, _)| *id == order.id);
                Some(settled.map_or(order, |&(_, settlement)| order.settled(settlement)))
            }
            (None, None) => None,
        };
        let outcome = Outcome::WebhookApplied {
            record,
            replayed: false,
            order,
            change,
        };
        Ok((outcome, writes))
    }

    /// Checks, first failure wins: the qty, the product, then the stock's range. The answer
    /// carries the units available after it at `now`.
    fn restock(&self, now: Timestamp, product_id: ProductId, qty: Qty) -> Decided {
        product::validate_restock(qty)?;
        let product = self.product(product_id);
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        let writes = product::restock(product, qty)?;
        let counters = writes.product(product_id).copied();
        let mut restocked = product.clone();
        restocked.set_counters(counters.ok_or(Violation::WriteSetUnresolved)?);
        let due = self.due(product);
        let units_due = hold::due_units(product, &due, product.decision_time(now))?;
        let available = product::available(&restocked, units_due)?;
        let outcome = Outcome::Restocked {
            product: restocked,
            available,
        };
        Ok((outcome, writes))
    }

    /// Folds the product's due buckets, retires those of `holds` held and expired for good, and
    /// cancels those of `orders` still waiting past their window; an unknown product has none.
    fn sweep(
        &self,
        now: Timestamp,
        product_id: ProductId,
        holds: &[HoldId],
        orders: &[OrderId],
    ) -> Decided {
        let Some(product) = self.product(product_id) else {
            let outcome = Outcome::Swept {
                folded: Folded::default(),
                holds_retired: Vec::new(),
                orders_cancelled: Vec::new(),
            };
            return Ok((outcome, WriteSet::default()));
        };
        let now = product.decision_time(now);
        let due = self.due(product);
        let mut changes = Changes::on(product);
        changes.fold(&due, now)?;
        let through = changes.product().expired_through;
        // Each row once, whatever the command names twice.
        let holds: BTreeSet<HoldId> = holds.iter().copied().collect();
        let orders: BTreeSet<OrderId> = orders.iter().copied().collect();
        let retired: Vec<Hold> = (holds.iter())
            .filter_map(|&id| self.hold(id))
            .filter(|h| h.product_id == product_id && h.state == HoldState::Held)
            .filter(|h| h.expires_at <= through)
            .copied()
            .collect();
        hold::retire_expired(&mut changes, &retired)?;
        let overdue: Vec<Order> = (orders.iter())
            .filter_map(|&id| self.order(id))
            .filter(|o| o.product_id == product_id && o.is_overdue(now))
            .copied()
            .collect();
        order::cancel_overdue(&mut changes, &overdue, now)?;
        let mut holds_retired: Vec<HoldId> = retired.iter().map(|h| h.id).collect();
        let mut orders_cancelled: Vec<OrderId> = overdue.iter().map(|o| o.id).collect();
        holds_retired.sort_unstable();
        orders_cancelled.sort_unstable();
        let outcome = Outcome::Swept {
            folded: changes.folded(),
            holds_retired,
            orders_cancelled,
        };
        Ok((outcome, changes.finish()))
    }

    /// The record a keyed request replays, if its key answered this very request before.
    fn replay(
        &self,
        key: Option<&IdempotencyKey>,
        asked: &KeyedRequest,
    ) -> Result<Option<RequestRecord>, Rejection> {
        let Some(key) = key else {
            return Ok(None);
        };
        match request::decide_request_key(self.request_record(key), key, asked)? {
            KeyDecision::Fresh => Ok(None),
            KeyDecision::Replay(record) => Ok(Some(record)),
        }
    }

    fn product(&self, id: ProductId) -> Option<&Product> {
        self.products.get(&id).or_else(|| self.rows.product(id))
    }

    fn hold(&self, id: HoldId) -> Option<&Hold> {
        self.holds.get(&id).or_else(|| self.rows.hold(id))
    }

    fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(&id).or_else(|| self.rows.order(id))
    }

    fn webhook(&self, key: &IdempotencyKey) -> Option<&WebhookRecord> {
        self.webhooks.get(key).or_else(|| self.rows.webhook(key))
    }

    fn request_record(&self, key: &IdempotencyKey) -> Option<&RequestRecord> {
        self.request_keys
            .get(key)
            .or_else(|| self.rows.request_record(key))
    }

    /// The hold, read under its product's lock, with that product; `None` for an unknown hold.
    fn hold_and_product(&self, hold_id: HoldId) -> Result<Option<(Hold, &Product)>, Violation> {
        let Some(found) = self.rows.found_hold(hold_id) else {
            return Ok(None);
        };
        let product_id = found.product_id;
        let product = self.product(product_id);
        let product = product.ok_or(Violation::DanglingProduct { product_id })?;
        Ok(self.hold(hold_id).map(|hold| (*hold, product)))
    }

    /// The order that consumed `hold`, if it is consumed.
    fn order_of(&self, hold: &Hold) -> Result<Option<Order>, Violation> {
        match hold.state {
            HoldState::Consumed(order_id) => {
                self.order(order_id)
                    .copied()
                    .map(Some)
                    .ok_or(Violation::HoldOrderMismatch {
                        hold_id: hold.id,
                        order_id,
                    })
            }
            HoldState::Held | HoldState::Released(_) => Ok(None),
        }
    }

    /// The product's loaded due buckets not yet folded, as the batch's earlier commands left
    /// them.
    fn due(&self, product: &Product) -> Vec<ExpiryBucket> {
        let loaded = self.rows.due(product.id).iter();
        let unfolded = loaded.filter(|b| !product.expired_for_good(b.expires_at));
        let laid = unfolded.map(|bucket| match self.buckets.get(&bucket.key()) {
            None => Some(*bucket),
            Some(laid) => *laid,
        });
        laid.flatten().collect()
    }

    /// Lays a decision's write-set (in the batch's numbering) over the rows, so the commands
    /// after it see its effects.
    ///
    /// # Errors
    /// The [`Violation`] of a write-set that does not fit the rows (it changes a row the batch
    /// never read, or one not in the state it expects): nothing is laid over.
    fn apply(&mut self, writes: &WriteSet) -> Result<(), Violation> {
        let mut inserted = std::mem::take(&mut self.inserted);
        let laid = lay(self, writes, &mut inserted);
        self.inserted = inserted;
        laid
    }
}

impl Tables for Working<'_, '_> {
    type Error = Violation;

    fn product(&self, id: ProductId) -> Option<Product> {
        Working::product(self, id).cloned()
    }

    fn bucket(&self, product_id: ProductId, expires_at: Timestamp) -> BucketRead {
        match self.buckets.get(&(product_id, expires_at)) {
            Some(Some(bucket)) => BucketRead::Row(*bucket),
            Some(None) => BucketRead::Absent,
            None => (self.rows.due(product_id).iter())
                .find(|b| b.expires_at == expires_at)
                .map_or(BucketRead::Unread, |b| BucketRead::Row(*b)),
        }
    }

    fn hold(&self, id: HoldId) -> Option<Hold> {
        Working::hold(self, id).copied()
    }

    fn order(&self, id: OrderId) -> Option<Order> {
        Working::order(self, id).copied()
    }

    fn new_hold_id(&mut self, assigned: &Inserted) -> HoldId {
        pending_hold(assigned.holds.len())
    }

    fn new_order_id(&mut self, assigned: &Inserted) -> OrderId {
        pending_order(assigned.orders.len())
    }

    fn new_product_id(&mut self, assigned: &Inserted) -> ProductId {
        pending_product(assigned.products.len())
    }

    fn put(&mut self, row: Put) -> Result<(), Violation> {
        match row {
            Put::Product(product) => {
                self.products.insert(product.id, product);
            }
            Put::Bucket(bucket) => {
                self.buckets.insert(bucket.key(), Some(bucket));
            }
            Put::BucketGone(product_id, expires_at) => {
                self.buckets.insert((product_id, expires_at), None);
            }
            Put::Hold(hold) => {
                self.holds.insert(hold.id, hold);
            }
            Put::Order(order) => {
                self.orders.insert(order.id, order);
            }
            Put::Webhook(record) => {
                self.webhooks.insert(record.key.clone(), record);
            }
            Put::RequestKey(record) => {
                self.request_keys.insert(record.key.clone(), record);
            }
        }
        Ok(())
    }
}

/// A request key whose record names a hold or order that does not exist.
fn dangling(record: &RequestRecord) -> Violation {
    Violation::RequestKeyDangling {
        key: record.key.clone(),
    }
}

#[cfg(test)]
mod tests;
