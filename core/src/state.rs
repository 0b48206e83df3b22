//! The in-memory ledger: products, holds, orders and webhook records, and the one entry point
//! [`Ledger::apply`] that runs a command through the same decisions the SQL server calls.
//!
//! Rows live in dense tables indexed by id (each kind has its own sequence from 1, as a database
//! table does), so a lookup is an index, not a search. Two indexes sit beside the rows so that no
//! command scans every hold: the held holds of each product ordered by deadline (with their units
//! and unit total), and the pre-payment orders ordered by payment deadline. Both are derived from
//! the rows and checked against them in debug builds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::command::Command;
use crate::hold::{self, Hold, HoldState, ReleaseReason};
use crate::ids::{Cents, HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::invariants::{self, Violation};
use crate::order::{self, NewOrder, Order, OrderDecision, OrderStatus};
use crate::outcome::{Outcome, Rejection};
use crate::payment::{self, WebhookDecision, WebhookEffect, WebhookPayload, WebhookRecord};
use crate::product::{self, Product};
use crate::time::{Timestamp, is_past};

/// The held holds of one product in deadline order, and their total units.
///
/// A queue, because deadlines mostly arrive in order (`now + ttl` with a steady clock): a grant
/// appends, and releasing expired holds pops from the front. A hold that leaves held another way
/// (an order, a failed payment) stays in the queue as a dead entry and is dropped when it reaches
/// the front, so no removal searches the middle. Entries are live when their hold is still held.
#[derive(Clone, Debug, Default)]
struct HeldIndex {
    by_expiry: VecDeque<(Timestamp, HoldId)>,
    units: Qty,
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
        self.units = self
            .units
            .checked_add(hold.qty)
            .unwrap_or_else(|| panic!("held overflow"));
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
            Command::Restock { product_id, qty } => self.restock(product_id, qty),
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
        Some(product::available(product, self.units_held_live(id, now)))
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

    fn restock(&mut self, product_id: ProductId, qty: Qty) -> Result<Outcome, Rejection> {
        product::validate_restock(qty)?;
        let product = self.products.get_mut(product_id.0);
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        (product.stock, product.units_received) = product::restock(product, qty)?;
        Ok(Outcome::Restocked(product.clone()))
    }

    fn place_hold(
        &mut self,
        now: Timestamp,
        product_id: ProductId,
        qty: Qty,
        ttl_ms: u64,
    ) -> Result<Outcome, Rejection> {
        hold::validate_request(qty, ttl_ms)?;
        let product = self.products.get(product_id.0);
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        // Decide as if the expired holds were released, and release them only on a grant: a
        // rejection changes nothing.
        let units_held = self.units_held_live(product_id, now);
        let grant = hold::place_hold(product, units_held, qty, now, ttl_ms)?;
        let holds_released = self.release_expired(product_id, now);
        let hold = grant.with_id(HoldId(self.holds.next_id()), product_id);
        self.insert_held(&hold);
        self.holds.insert(hold.id.0, hold);
        Ok(Outcome::HoldPlaced {
            hold,
            holds_released,
        })
    }

    fn place_order(
        &mut self,
        now: Timestamp,
        hold_id: HoldId,
        payment_window_ms: u64,
    ) -> Result<Outcome, Rejection> {
        order::validate_payment_window(payment_window_ms)?;
        let hold = self
            .holds
            .get(hold_id.0)
            .ok_or(Rejection::UnknownHold { hold_id })?;
        let product = self.product_of(hold);
        match order::place_order(hold, product, now, payment_window_ms)? {
            OrderDecision::Existing(order_id) => {
                let order = self.orders.get(order_id.0);
                let order = order.unwrap_or_else(|| panic!("invariant 3: order {order_id} lost"));
                Ok(Outcome::OrderPlaced {
                    order: *order,
                    created: false,
                })
            }
            OrderDecision::Create(new) => {
                let order = self.insert_order(new);
                Ok(Outcome::OrderPlaced {
                    order,
                    created: true,
                })
            }
        }
    }

    fn apply_webhook(
        &mut self,
        now: Timestamp,
        payload: WebhookPayload,
    ) -> Result<Outcome, Rejection> {
        let record = self.webhooks.get(&payload.key);
        let hold = self.holds.get(payload.hold_id.0);
        let hold_and_product = hold.map(|hold| (hold, self.product_of(hold)));
        let order = hold.and_then(|hold| match hold.state {
            HoldState::Consumed(order_id) => self.orders.get(order_id.0),
            HoldState::Held | HoldState::Released(_) => None,
        });
        let (result, order_id, effect) =
            match payment::decide_webhook(record, &payload, hold_and_product, order, now)? {
                WebhookDecision::Replay(record) => {
                    return Ok(Outcome::WebhookApplied {
                        record,
                        replayed: true,
                    });
                }
                WebhookDecision::New {
                    result,
                    order_id,
                    effect,
                } => (result, order_id, effect),
            };
        let created = self.apply_webhook_effect(effect);
        let record = WebhookRecord {
            fingerprint: payload.fingerprint(),
            key: payload.key,
            hold_id: payload.hold_id,
            status: payload.status,
            result,
            order_id: created.or(order_id),
            received_at: now,
        };
        self.webhooks.insert(record.key.clone(), record.clone());
        Ok(Outcome::WebhookApplied {
            record,
            replayed: false,
        })
    }

    /// Writes a webhook's effect; returns the id of an order it created.
    fn apply_webhook_effect(&mut self, effect: WebhookEffect) -> Option<OrderId> {
        match effect {
            WebhookEffect::None => None,
            WebhookEffect::PayOrder(order_id) => {
                self.set_order_status(order_id, OrderStatus::Paid);
                None
            }
            WebhookEffect::CancelOrder(order_id) => {
                self.cancel_order(order_id);
                None
            }
            WebhookEffect::CreatePaidOrder(new) => Some(self.insert_order(new).id),
            WebhookEffect::ReleaseHold(hold_id, reason) => {
                self.release_hold(hold_id, reason);
                None
            }
        }
    }

    /// Releases expired holds and cancels overdue orders, of every product or of `only`.
    fn sweep(&mut self, now: Timestamp, only: Option<ProductId>) -> Outcome {
        let product_ids: Vec<ProductId> = match only {
            Some(product_id) => vec![product_id],
            None => self.held.keys().copied().collect(),
        };
        let mut holds_released = Vec::new();
        for product_id in product_ids {
            holds_released.extend(self.release_expired(product_id, now));
        }
        holds_released.sort_unstable();
        let overdue = self
            .due
            .iter()
            .take_while(|&&(due_at, _)| is_past(due_at, now));
        let overdue = overdue.map(|&(_, id)| id).filter(|&id| {
            let product_id = self.orders.get(id.0).map(|o| o.product_id);
            only.is_none() || product_id == only
        });
        let mut orders_cancelled: Vec<OrderId> = overdue.collect();
        for &id in &orders_cancelled {
            self.cancel_order(id);
        }
        orders_cancelled.sort_unstable();
        Outcome::Swept {
            holds_released,
            orders_cancelled,
        }
    }

    /// Releases the product's held holds whose deadline has passed at `now`; returns their ids,
    /// in id order.
    fn release_expired(&mut self, product_id: ProductId, now: Timestamp) -> Vec<HoldId> {
        let mut released = Vec::new();
        let Some(index) = self.held.get_mut(&product_id) else {
            return released;
        };
        while let Some(&(at, hold_id)) = index.by_expiry.front() {
            let hold = self.holds.get_mut(hold_id.0);
            let hold = hold.unwrap_or_else(|| panic!("held index names missing hold {hold_id}"));
            if is_held(hold) && !is_past(at, now) {
                break;
            }
            index.by_expiry.pop_front();
            if is_held(hold) {
                hold.state = HoldState::Released(ReleaseReason::Expired);
                index.units = index
                    .units
                    .checked_sub(hold.qty)
                    .unwrap_or_else(|| panic!("underflow"));
                released.push(hold_id);
            }
        }
        if index.by_expiry.is_empty() {
            self.held.remove(&product_id);
        }
        released.sort_unstable();
        released
    }

    fn product_of(&self, hold: &Hold) -> &Product {
        let product = self.products.get(hold.product_id.0);
        product.unwrap_or_else(|| panic!("hold {} names missing product", hold.id))
    }

    /// Units of the product's held holds that are unexpired at `now`.
    fn units_held_live(&self, product_id: ProductId, now: Timestamp) -> Qty {
        let Some(index) = self.held.get(&product_id) else {
            return Qty::ZERO;
        };
        let expired = index
            .by_expiry
            .iter()
            .take_while(|&&(at, _)| is_past(at, now));
        let expired = expired
            .filter_map(|&(_, id)| self.holds.get(id.0))
            .filter(|h| is_held(h));
        let expired = expired.fold(Qty::ZERO, |sum, h| sum.checked_add(h.qty).unwrap_or(sum));
        index.units.saturating_sub(expired)
    }

    fn insert_held(&mut self, hold: &Hold) {
        self.held.entry(hold.product_id).or_default().insert(hold);
    }

    /// Moves a held hold to `state`; its index entry goes dead and is dropped when it reaches
    /// the front of the queue.
    fn leave_held(&mut self, hold_id: HoldId, state: HoldState) {
        let hold = self.set_hold_state(hold_id, state);
        let index = self.held.get_mut(&hold.product_id);
        let index = index.unwrap_or_else(|| panic!("held index lost product {}", hold.product_id));
        index.units = index
            .units
            .checked_sub(hold.qty)
            .unwrap_or_else(|| panic!("underflow"));
    }

    /// Sets a held hold's state; returns the hold as it was.
    fn set_hold_state(&mut self, hold_id: HoldId, state: HoldState) -> Hold {
        let hold = self.holds.get_mut(hold_id.0);
        let hold = hold.unwrap_or_else(|| panic!("hold {hold_id} missing"));
        assert_eq!(hold.state, HoldState::Held, "only a held hold leaves held");
        let before = *hold;
        hold.state = state;
        before
    }

    fn release_hold(&mut self, hold_id: HoldId, reason: ReleaseReason) {
        self.leave_held(hold_id, HoldState::Released(reason));
    }

    fn insert_order(&mut self, new: NewOrder) -> Order {
        let order = new.with_id(OrderId(self.orders.next_id()));
        let hold = self.holds.get(order.hold_id.0);
        let product = self.product_of(hold.unwrap_or_else(|| panic!("order's hold missing")));
        let (hold_state, stock) = order::consume(product, &order);
        self.leave_held(order.hold_id, hold_state);
        self.set_stock(order.product_id, stock);
        if order.status == OrderStatus::PrePayment {
            self.due.insert((order.payment_due_at, order.id));
        }
        self.orders.insert(order.id.0, order);
        order
    }

    fn cancel_order(&mut self, order_id: OrderId) {
        let order = self.orders.get(order_id.0);
        let order = order.unwrap_or_else(|| panic!("order {order_id} missing"));
        let product = self.products.get(order.product_id.0);
        let stock = order::cancel(product.unwrap_or_else(|| panic!("product missing")), order);
        self.set_stock(order.product_id, stock);
        self.set_order_status(order_id, OrderStatus::Cancelled);
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

    fn set_stock(&mut self, product_id: ProductId, stock: Qty) {
        let product = self.products.get_mut(product_id.0);
        product
            .unwrap_or_else(|| panic!("product {product_id} missing"))
            .stock = stock;
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

    /// The held index's live entries and unit totals, for comparing with the rows.
    fn held_live(&self) -> BTreeMap<ProductId, (Vec<(Timestamp, HoldId)>, Qty)> {
        let live = self.held.iter().map(|(&product_id, index)| {
            let entries: Vec<_> = index
                .live(&self.holds)
                .map(|h| (h.expires_at, h.id))
                .collect();
            (product_id, (entries, index.units))
        });
        // A queue of dead entries only is bookkeeping, not state, unless it still counts units.
        live.filter(|(_, (entries, units))| !entries.is_empty() || *units != Qty::ZERO)
            .collect()
    }

    /// What [`Self::held_live`] must be, recomputed from the rows.
    fn held_from_rows(&self) -> BTreeMap<ProductId, (Vec<(Timestamp, HoldId)>, Qty)> {
        let mut held: BTreeMap<ProductId, (Vec<(Timestamp, HoldId)>, Qty)> = BTreeMap::new();
        for hold in self.holds.iter().filter(|h| is_held(h)) {
            let (entries, units) = held.entry(hold.product_id).or_default();
            entries.push((hold.expires_at, hold.id));
            *units = units.checked_add(hold.qty).unwrap_or(Qty(u32::MAX));
        }
        held.values_mut()
            .for_each(|(entries, _)| entries.sort_unstable());
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
