//! The in-memory ledger: products, holds, orders and webhook records, and the one entry point
//! [`Ledger::apply`] that runs a command through the same decisions the SQL server calls.
//!
//! Rows live in dense tables indexed by id (each kind has its own sequence from 1, as a database
//! table does), so a lookup is an index, not a search. Two indexes sit beside the rows so that no
//! command scans every hold: the held holds of each product ordered by deadline (with their units
//! and unit total), and the pre-payment orders ordered by payment deadline. Both are derived from
//! the rows and checked against them in debug builds.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::command::Command;
use crate::hold::{self, Hold, HoldRequest, HoldState};
use crate::ids::{Cents, HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::invariants::{self, Violation};
use crate::order::{self, Order, OrderStatus};
use crate::outcome::{Outcome, Refusal, Rejection};
use crate::payment::{self, WebhookDecision, WebhookPayload, WebhookRecord};
use crate::plan::{Load, Loaded, Plan, Rows};
use crate::product::{self, Product};
use crate::time::{Timestamp, is_past};
use crate::writes::{Changes, Inserted, WriteSet};

/// A refusal of the ledger's own decision: a rejection is answered; a violation means the
/// ledger's own rows are corrupt, which is a bug.
fn refused(refusal: Refusal) -> Rejection {
    match refusal {
        Refusal::Rejected(rejection) => rejection,
        Refusal::Violated(violation) => panic!("ledger corrupt: {violation}"),
    }
}

/// The held holds of one product in deadline order (their units are the product's
/// `units_held` counter).
///
/// A queue, because deadlines mostly arrive in order (`now + ttl` with a steady clock): a grant
/// appends, and releasing expired holds pops from the front. A hold that leaves held another way
/// (an order, a failed payment) stays in the queue as a dead entry and is dropped when it reaches
/// the front, so no removal searches the middle. Entries are live when their hold is still held.
#[derive(Clone, Debug, Default)]
struct HeldIndex {
    by_expiry: VecDeque<(Timestamp, HoldId)>,
}

impl HeldIndex {
    fn insert(&mut self, hold: &Hold) {
        let entry = (hold.expires_at, hold.id);
        // A clock that stepped back, or a shorter TTL, puts a deadline before the last one.
        match self.by_expiry.back() {
            Some(&last) if last > entry => {
                let at = self.by_expiry.partition_point(|&e| e < entry);
                self.by_expiry.insert(at, entry);
            }
            _ => self.by_expiry.push_back(entry),
        }
    }

    /// The live entries, in deadline order.
    fn live<'a>(&'a self, holds: &'a Table<Hold>) -> impl Iterator<Item = &'a Hold> + 'a {
        self.by_expiry
            .iter()
            .filter_map(|&(_, id)| holds.get(id.0))
            .filter(|h| is_held(h))
    }
}

fn is_held(hold: &Hold) -> bool {
    hold.state == HoldState::Held
}

/// Rows by id: row `id` lives at index `id - 1`; ids a database skipped are `None`. Ids are
/// allocated from 1 in sequence, so the table stays dense.
#[derive(Clone, Debug)]
struct Table<R> {
    rows: Vec<Option<R>>,
    len: usize,
}

impl<R> Default for Table<R> {
    fn default() -> Self {
        Table {
            rows: Vec::new(),
            len: 0,
        }
    }
}

impl<R> Table<R> {
    fn index(id: u64) -> Option<usize> {
        usize::try_from(id.checked_sub(1)?).ok()
    }

    fn get(&self, id: u64) -> Option<&R> {
        self.rows.get(Self::index(id)?)?.as_ref()
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut R> {
        self.rows.get_mut(Self::index(id)?)?.as_mut()
    }

    /// The id the next inserted row gets.
    fn next_id(&self) -> u64 {
        u64::try_from(self.rows.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn insert(&mut self, id: u64, row: R) {
        let index = Self::index(id).unwrap_or_else(|| panic!("row id {id} out of range"));
        if index >= self.rows.len() {
            self.rows.resize_with(index.saturating_add(1), || None);
        }
        if self.rows[index].replace(row).is_none() {
            self.len = self.len.saturating_add(1);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &R> {
        self.rows.iter().flatten()
    }
}

/// Every row of the service, in memory. Each kind of row has its own id sequence from 1.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    products: Table<Product>,
    holds: Table<Hold>,
    orders: Table<Order>,
    webhooks: BTreeMap<IdempotencyKey, WebhookRecord>,
    held: BTreeMap<ProductId, HeldIndex>,
    due: BTreeSet<(Timestamp, OrderId)>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger holding these rows, for checking a database's contents with the same code.
    /// New ids of each kind continue after the largest present.
    ///
    /// # Panics
    /// If a hold or order names a product that is not among `products`: the rows are corrupt.
    pub fn from_rows(
        products: impl IntoIterator<Item = Product>,
        holds: impl IntoIterator<Item = Hold>,
        orders: impl IntoIterator<Item = Order>,
        webhooks: impl IntoIterator<Item = WebhookRecord>,
    ) -> Self {
        let mut ledger = Ledger::new();
        products
            .into_iter()
            .for_each(|p| ledger.products.insert(p.id.0, p));
        holds
            .into_iter()
            .for_each(|h| ledger.holds.insert(h.id.0, h));
        orders
            .into_iter()
            .for_each(|o| ledger.orders.insert(o.id.0, o));
        ledger.webhooks = webhooks.into_iter().map(|w| (w.key.clone(), w)).collect();
        ledger.held = ledger.held_index_from_rows();
        ledger.due = ledger.due_index_from_rows();
        ledger
    }

    /// Applies `command` at `now`: decides it with the core's pure decisions, then writes the
    /// decision's effects. A rejection changes nothing.
    ///
    /// In debug builds every call ends by checking the invariants and the indexes, and panics on a
    /// violation: corrupt state is a bug, never a condition to handle.
    ///
    /// # Errors
    /// The command's [`Rejection`], as documented on each decision.
    pub fn apply(&mut self, now: Timestamp, command: Command) -> Result<Outcome, Rejection> {
        let outcome = match command {
            Command::CreateProduct {
                name,
                price_cents,
                stock,
            } => self.create_product(&name, price_cents, stock),
            Command::Restock { product_id, qty } => self.restock(now, product_id, qty),
            Command::PlaceHold {
                product_id,
                qty,
                ttl_ms,
            } => self.place_hold(now, product_id, qty, ttl_ms),
            Command::PlaceOrder {
                hold_id,
                payment_window_ms,
            } => self.place_order(now, hold_id, payment_window_ms),
            Command::ApplyWebhook(payload) => self.apply_webhook(now, payload),
            Command::Sweep => Ok(self.sweep(now, None)),
            Command::SweepProduct { product_id } => Ok(self.sweep(now, Some(product_id))),
        };
        if cfg!(debug_assertions) {
            if let Err(violation) = self.check_invariants() {
                panic!("invariant violated after apply at {now}: {violation}");
            }
            assert_eq!(
                self.held_live(),
                self.held_from_rows(),
                "held index matches the rows"
            );
            assert_eq!(
                self.due,
                self.due_index_from_rows(),
                "due index matches the rows"
            );
        }
        outcome
    }

    /// The earliest instant at which a [`Command::Sweep`] would change something: the first
    /// deadline of a held hold or a pre-payment order. `None` when nothing is pending.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let holds = self
            .held
            .values()
            .filter_map(|index| index.live(&self.holds).next());
        let hold_first = holds.map(|hold| hold.expires_at).min();
        let order_first = self.due.first().map(|&(at, _)| at);
        hold_first.into_iter().chain(order_first).min()
    }

    /// Checks DESIGN.md's invariants on the rows alone, with no clock.
    ///
    /// # Errors
    /// The first [`Violation`] found, naming the rows involved.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        invariants::check(self)
    }

    /// A product.
    pub fn product(&self, id: ProductId) -> Option<&Product> {
        self.products.get(id.0)
    }

    /// Units of a product available to a new hold at `now`, without releasing anything.
    pub fn available(&self, id: ProductId, now: Timestamp) -> Option<Qty> {
        let product = self.products.get(id.0)?;
        let available = product::available(product, self.units_expired(id, now));
        Some(available.unwrap_or_else(|v| panic!("ledger corrupt: {v}")))
    }

    /// A hold.
    pub fn hold(&self, id: HoldId) -> Option<&Hold> {
        self.holds.get(id.0)
    }

    /// An order.
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(id.0)
    }

    /// A webhook record.
    pub fn webhook(&self, key: &IdempotencyKey) -> Option<&WebhookRecord> {
        self.webhooks.get(key)
    }

    /// Every product, by id.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.iter()
    }

    /// Every hold, by id.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.iter()
    }

    /// Every order, by id.
    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.iter()
    }

    /// Every webhook record, by key.
    pub fn webhooks(&self) -> impl Iterator<Item = &WebhookRecord> {
        self.webhooks.values()
    }

    fn create_product(
        &mut self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> Result<Outcome, Rejection> {
        let new = product::create_product(name, price_cents, stock)?;
        let product = new.with_id(ProductId(self.products.next_id()));
        self.products.insert(product.id.0, product.clone());
        Ok(Outcome::ProductCreated(product))
    }

    fn restock(
        &mut self,
        now: Timestamp,
        product_id: ProductId,
        qty: Qty,
    ) -> Result<Outcome, Rejection> {
        product::validate_restock(qty)?;
        let rows = self.load(&Plan::Restock { product_id }, now);
        let product = rows.product();
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        let writes = product::restock(product, qty)?;
        self.write(&writes);
        Ok(Outcome::Restocked(self.product_of_id(product_id).clone()))
    }

    fn place_hold(
        &mut self,
        now: Timestamp,
        product_id: ProductId,
        qty: Qty,
        ttl_ms: u64,
    ) -> Result<Outcome, Rejection> {
        hold::validate_request(qty, ttl_ms)?;
        let request = [HoldRequest::unkeyed(qty)];
        let rows = self.load(&Plan::place_holds(product_id, &request), now);
        let product = rows.product();
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        let decided = hold::place_holds(product, rows.expired(), &request, now, ttl_ms);
        let mut decided = decided.unwrap_or_else(|v| panic!("ledger corrupt: {v}"));
        let grant = decided
            .decisions
            .pop()
            .unwrap_or(Err(Rejection::InvalidQty { qty }))?;
        let inserted = self.write(&decided.writes);
        let hold_id = inserted.holds.first().copied();
        let hold = grant.with_id(
            hold_id.unwrap_or_else(|| panic!("grant not inserted")),
            product_id,
        );
        Ok(Outcome::HoldPlaced {
            hold,
            holds_released: decided.holds_released,
        })
    }

    fn place_order(
        &mut self,
        now: Timestamp,
        hold_id: HoldId,
        payment_window_ms: u64,
    ) -> Result<Outcome, Rejection> {
        order::validate_payment_window(payment_window_ms)?;
        let rows = self.load(&Plan::PlaceOrder { hold_id, key: None }, now);
        let (hold, product) = rows
            .hold_and_product()
            .unwrap_or_else(|v| panic!("ledger corrupt: {v}"))
            .ok_or(Rejection::UnknownHold { hold_id })?;
        let decided = order::place_order(hold, product, now, payment_window_ms, None);
        let decided = decided.map_err(refused)?;
        let inserted = self.write(&decided.writes);
        let order_id = decided.existing.or(inserted.order);
        let order_id = order_id.unwrap_or_else(|| panic!("order not inserted"));
        let order = self.orders.get(order_id.0);
        let order = order.unwrap_or_else(|| panic!("invariant 3: order {order_id} lost"));
        Ok(Outcome::OrderPlaced {
            order: *order,
            created: decided.existing.is_none(),
        })
    }

    fn apply_webhook(
        &mut self,
        now: Timestamp,
        payload: WebhookPayload,
    ) -> Result<Outcome, Rejection> {
        let plan = Plan::ApplyWebhook {
            hold_id: payload.hold_id,
            key: payload.key.clone(),
        };
        let rows = self.load(&plan, now);
        let corrupt = |v: Violation| -> ! { panic!("ledger corrupt: {v}") };
        let hold_and_product = rows.hold_and_product().unwrap_or_else(|v| corrupt(v));
        let order = rows.order_of_hold().unwrap_or_else(|v| corrupt(v));
        let decision =
            payment::decide_webhook(rows.webhook(), &payload, hold_and_product, order, now);
        let writes = match decision.map_err(refused)? {
            WebhookDecision::Replay(record) => {
                return Ok(Outcome::WebhookApplied {
                    record,
                    replayed: true,
                });
            }
            WebhookDecision::New { writes, .. } => writes,
        };
        let inserted = self.write(&writes);
        let record = writes.webhook_record(&inserted);
        let record = record.ok().flatten();
        Ok(Outcome::WebhookApplied {
            record: record.unwrap_or_else(|| panic!("a new webhook writes its record")),
            replayed: false,
        })
    }

    /// Releases expired holds and cancels overdue orders, of every product or of `only`, one
    /// product's plan and write-set at a time as the server's sweeper commits them.
    fn sweep(&mut self, now: Timestamp, only: Option<ProductId>) -> Outcome {
        let due = self
            .due
            .iter()
            .take_while(|&&(due_at, _)| is_past(due_at, now));
        let mut product_ids: BTreeSet<ProductId> = due
            .filter_map(|&(_, id)| self.orders.get(id.0))
            .map(|order| order.product_id)
            .collect();
        product_ids.extend(self.held.keys().copied());
        if let Some(only) = only {
            product_ids.retain(|&id| id == only);
        }
        let mut holds_released = Vec::new();
        let mut orders_cancelled = Vec::new();
        for product_id in product_ids {
            let rows = self.load(&Plan::SweepProduct { product_id }, now);
            let (Some(product), expired, overdue) =
                (rows.product(), rows.expired(), rows.overdue())
            else {
                continue;
            };
            if expired.is_empty() && overdue.is_empty() {
                continue;
            }
            let mut changes = Changes::on(product);
            let decided = hold::release_expired(&mut changes, expired, now)
                .and_then(|()| order::cancel_overdue(&mut changes, overdue, now));
            decided.unwrap_or_else(|v| panic!("ledger corrupt: {v}"));
            let writes = changes.finish();
            holds_released.extend(writes.holds_released.iter().map(|&(id, _)| id));
            orders_cancelled.extend(writes.orders_updated.iter().map(|&(id, _)| id));
            self.write(&writes);
        }
        holds_released.sort_unstable();
        orders_cancelled.sort_unstable();
        Outcome::Swept {
            holds_released,
            orders_cancelled,
        }
    }

    /// Loads a plan's rows from the tables, as a storage's transaction would read them at `now`.
    /// The ledger keeps no client request records: every key is new to it.
    fn load(&self, plan: &Plan, now: Timestamp) -> Rows<'_> {
        let mut rows = Rows::default();
        while let Some(load) = plan.next(&rows) {
            rows.put(match load {
                Load::RequestKey(key) => Loaded::RequestKey(key, None),
                Load::FindHold(id) => Loaded::FoundHold(self.holds.get(id.0).copied()),
                Load::Product(id) => Loaded::Product(self.products.get(id.0).map(Cow::Borrowed)),
                Load::Hold { id, .. } => Loaded::Hold(self.holds.get(id.0).copied()),
                Load::Order { id, .. } => Loaded::Order(self.orders.get(id.0).copied()),
                Load::ExpiredHolds(id) => Loaded::ExpiredHolds(self.expired_holds(id, now)),
                Load::OverdueOrders(id) => Loaded::OverdueOrders(self.overdue_orders(id, now)),
                Load::Webhook(key) => Loaded::Webhook(self.webhooks.get(&key).map(Cow::Borrowed)),
            });
        }
        rows
    }

    /// The product's pre-payment orders whose payment window closed at `now`, in deadline
    /// order.
    fn overdue_orders(&self, product_id: ProductId, now: Timestamp) -> Vec<Order> {
        let due = self
            .due
            .iter()
            .take_while(|&&(due_at, _)| is_past(due_at, now));
        let orders = due.filter_map(|&(_, id)| self.orders.get(id.0));
        orders
            .filter(|o| o.product_id == product_id)
            .copied()
            .collect()
    }

    /// Applies a write-set: the one place the ledger changes rows, in the order every storage
    /// applies them. Returns the ids it assigned.
    ///
    /// # Panics
    /// If the write-set names rows that are missing or not in the state it expects: decisions
    /// only write what they read, so this is a bug.
    pub fn write(&mut self, writes: &WriteSet) -> Inserted {
        let mut inserted = Inserted::default();
        if let Some(counters) = writes.product {
            let row = self.products.get_mut(counters.id.0);
            let row = row.unwrap_or_else(|| panic!("product {} missing", counters.id));
            row.set_counters(counters);
        }
        for &(hold_id, reason) in &writes.holds_released {
            self.leave_held(hold_id, HoldState::Released(reason));
        }
        for grant in &writes.holds_inserted {
            let product = writes.product.as_ref();
            let product_id = product.unwrap_or_else(|| panic!("holds of no product")).id;
            let hold = grant.with_id(HoldId(self.holds.next_id()), product_id);
            self.held.entry(product_id).or_default().insert(&hold);
            self.holds.insert(hold.id.0, hold);
            inserted.holds.push(hold.id);
        }
        if let Some(new) = writes.order_inserted {
            let order = new.with_id(OrderId(self.orders.next_id()));
            self.leave_held(order.hold_id, HoldState::Consumed(order.id));
            if order.status == OrderStatus::PrePayment {
                self.due.insert((order.payment_due_at, order.id));
            }
            self.orders.insert(order.id.0, order);
            inserted.order = Some(order.id);
        }
        for &(order_id, settlement) in &writes.orders_updated {
            self.set_order_status(order_id, settlement.status());
        }
        let record = writes.webhook_record(&inserted);
        if let Some(record) = record.unwrap_or_else(|v| panic!("{v}")) {
            self.webhooks.insert(record.key.clone(), record);
        }
        debug_assert!(
            writes.request_keys.is_empty(),
            "ledger commands carry no request keys"
        );
        inserted
    }

    fn product_of_id(&self, product_id: ProductId) -> &Product {
        let product = self.products.get(product_id.0);
        product.unwrap_or_else(|| panic!("product {product_id} missing"))
    }

    /// The units of the product's held holds whose deadline has passed at `now`, counted
    /// without listing them.
    fn units_expired(&self, product_id: ProductId, now: Timestamp) -> Qty {
        let Some(index) = self.held.get(&product_id) else {
            return Qty::ZERO;
        };
        let expired = index
            .by_expiry
            .iter()
            .take_while(|&&(at, _)| is_past(at, now));
        let expired = expired.filter_map(|&(_, id)| self.holds.get(id.0));
        expired.filter(|h| is_held(h)).fold(Qty::ZERO, |sum, h| {
            sum.checked_add(h.qty)
                .unwrap_or_else(|| panic!("held overflow"))
        })
    }

    /// The product's held holds whose deadline has passed at `now`, in deadline order.
    fn expired_holds(&self, product_id: ProductId, now: Timestamp) -> Vec<Hold> {
        let Some(index) = self.held.get(&product_id) else {
            return Vec::new();
        };
        let expired = index
            .by_expiry
            .iter()
            .take_while(|&&(at, _)| is_past(at, now));
        let expired = expired.filter_map(|&(_, id)| self.holds.get(id.0));
        expired.filter(|h| is_held(h)).copied().collect()
    }

    /// Moves a held hold to `state`; its index entry goes dead, and dead entries at the front of
    /// its product's queue are dropped.
    fn leave_held(&mut self, hold_id: HoldId, state: HoldState) {
        let hold = self.holds.get_mut(hold_id.0);
        let hold = hold.unwrap_or_else(|| panic!("hold {hold_id} missing"));
        assert_eq!(hold.state, HoldState::Held, "only a held hold leaves held");
        hold.state = state;
        let product_id = hold.product_id;
        let Some(index) = self.held.get_mut(&product_id) else {
            panic!("held index lost product {product_id}");
        };
        while let Some(&(_, id)) = index.by_expiry.front() {
            if self.holds.get(id.0).is_some_and(is_held) {
                break;
            }
            index.by_expiry.pop_front();
        }
        if index.by_expiry.is_empty() {
            self.held.remove(&product_id);
        }
    }

    fn set_order_status(&mut self, order_id: OrderId, status: OrderStatus) {
        let order = self.orders.get_mut(order_id.0);
        let order = order.unwrap_or_else(|| panic!("order {order_id} missing"));
        assert!(
            !order.status.is_terminal(),
            "invariant 3: order {order_id} is terminal"
        );
        order.status = status;
        self.due.remove(&(order.payment_due_at, order_id));
    }

    fn held_index_from_rows(&self) -> BTreeMap<ProductId, HeldIndex> {
        let mut held: BTreeMap<ProductId, HeldIndex> = BTreeMap::new();
        let mut rows: Vec<&Hold> = self.holds.iter().filter(|h| is_held(h)).collect();
        rows.sort_by_key(|h| (h.expires_at, h.id));
        for hold in rows {
            held.entry(hold.product_id).or_default().insert(hold);
        }
        held
    }

    /// The held index's live entries, for comparing with the rows.
    fn held_live(&self) -> BTreeMap<ProductId, Vec<(Timestamp, HoldId)>> {
        let live = self.held.iter().map(|(&product_id, index)| {
            let entries: Vec<_> = index
                .live(&self.holds)
                .map(|h| (h.expires_at, h.id))
                .collect();
            (product_id, entries)
        });
        // A queue of dead entries only is bookkeeping, not state.
        live.filter(|(_, entries)| !entries.is_empty()).collect()
    }

    /// What [`Self::held_live`] must be, recomputed from the rows.
    fn held_from_rows(&self) -> BTreeMap<ProductId, Vec<(Timestamp, HoldId)>> {
        let mut held: BTreeMap<ProductId, Vec<(Timestamp, HoldId)>> = BTreeMap::new();
        for hold in self.holds.iter().filter(|h| is_held(h)) {
            held.entry(hold.product_id)
                .or_default()
                .push((hold.expires_at, hold.id));
        }
        held.values_mut()
            .for_each(|entries| entries.sort_unstable());
        held
    }

    fn due_index_from_rows(&self) -> BTreeSet<(Timestamp, OrderId)> {
        let pending = self
            .orders
            .iter()
            .filter(|o| o.status == OrderStatus::PrePayment);
        pending.map(|o| (o.payment_due_at, o.id)).collect()
    }
}
