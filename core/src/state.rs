//! The in-memory ledger: products, holds, orders and webhook records, and the one entry point
//! [`Ledger::apply`] that runs a command through the same decisions the SQL server calls.
//!
//! The ledger keeps two indexes beside its rows so that no command scans every hold: the held
//! holds of each product ordered by deadline (with their unit total), and the pre-payment orders
//! ordered by payment deadline. Both are derived from the rows and checked against them in debug
//! builds.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::Command;
use crate::hold::{self, Hold, HoldState, ReleaseReason};
use crate::ids::{Cents, HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::invariants::{self, Violation};
use crate::order::{self, NewOrder, Order, OrderDecision, OrderStatus};
use crate::outcome::{Outcome, Rejection};
use crate::payment::{self, WebhookDecision, WebhookEffect, WebhookPayload, WebhookRecord};
use crate::product::{self, Product};
use crate::time::{Timestamp, is_past};

/// The held holds of one product, by deadline, and their total units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HeldIndex {
    by_expiry: BTreeSet<(Timestamp, HoldId)>,
    units: Qty,
}

/// Every row of the service, in memory, with ids allocated in sequence from 1.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    products: BTreeMap<ProductId, Product>,
    holds: BTreeMap<HoldId, Hold>,
    orders: BTreeMap<OrderId, Order>,
    webhooks: BTreeMap<IdempotencyKey, WebhookRecord>,
    held: BTreeMap<ProductId, HeldIndex>,
    due: BTreeSet<(Timestamp, OrderId)>,
    id_last: u64,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger holding these rows, for checking a database's contents with the same code.
    /// New ids continue after the largest present.
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
        ledger.products = products.into_iter().map(|p| (p.id, p)).collect();
        ledger.holds = holds.into_iter().map(|h| (h.id, h)).collect();
        ledger.orders = orders.into_iter().map(|o| (o.id, o)).collect();
        ledger.webhooks = webhooks.into_iter().map(|w| (w.key.clone(), w)).collect();
        ledger.held = ledger.held_index_from_rows();
        ledger.due = ledger.due_index_from_rows();
        let ids = ledger.products.keys().map(|id| id.0);
        let ids = ids.chain(ledger.holds.keys().map(|id| id.0));
        ledger.id_last = ids
            .chain(ledger.orders.keys().map(|id| id.0))
            .max()
            .unwrap_or(0);
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
            Command::Sweep => Ok(self.sweep(now)),
        };
        if cfg!(debug_assertions) {
            if let Err(violation) = self.check_invariants() {
                panic!("invariant violated after apply at {now}: {violation}");
            }
            assert_eq!(
                self.held,
                self.held_index_from_rows(),
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
            .filter_map(|index| index.by_expiry.first());
        let hold_first = holds.map(|&(at, _)| at).min();
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
        self.products.get(&id)
    }

    /// Units of a product available to a new hold at `now`, without releasing anything.
    pub fn available(&self, id: ProductId, now: Timestamp) -> Option<Qty> {
        let product = self.products.get(&id)?;
        Some(product::available(product, self.units_held_live(id, now)))
    }

    /// A hold.
    pub fn hold(&self, id: HoldId) -> Option<&Hold> {
        self.holds.get(&id)
    }

    /// An order.
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(&id)
    }

    /// A webhook record.
    pub fn webhook(&self, key: &IdempotencyKey) -> Option<&WebhookRecord> {
        self.webhooks.get(key)
    }

    /// Every product, by id.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    /// Every hold, by id.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// Every order, by id.
    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }

    /// Every webhook record, by key.
    pub fn webhooks(&self) -> impl Iterator<Item = &WebhookRecord> {
        self.webhooks.values()
    }

    fn next_id(&mut self) -> u64 {
        self.id_last = self
            .id_last
            .checked_add(1)
            .unwrap_or_else(|| panic!("ids exhausted"));
        self.id_last
    }

    fn create_product(
        &mut self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> Result<Outcome, Rejection> {
        let new = product::create_product(name, price_cents, stock)?;
        let product = new.with_id(ProductId(self.next_id()));
        self.products.insert(product.id, product.clone());
        Ok(Outcome::ProductCreated(product))
    }

    fn restock(&mut self, product_id: ProductId, qty: Qty) -> Result<Outcome, Rejection> {
        product::validate_restock(qty)?;
        let product = self.products.get_mut(&product_id);
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
        let product = self.products.get(&product_id);
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        // Decide as if the expired holds were released, and release them only on a grant: a
        // rejection changes nothing.
        let units_held = self.units_held_live(product_id, now);
        let grant = hold::place_hold(product, units_held, qty, now, ttl_ms)?;
        let mut expired = self.expired_holds(product_id, now);
        expired.sort_unstable();
        for &id in &expired {
            self.release_hold(id, ReleaseReason::Expired);
        }
        let hold = grant.with_id(HoldId(self.next_id()), product_id);
        self.insert_held(&hold);
        self.holds.insert(hold.id, hold.clone());
        Ok(Outcome::HoldPlaced {
            hold,
            holds_released: expired,
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
            .get(&hold_id)
            .ok_or(Rejection::UnknownHold { hold_id })?;
        let product = self.product_of(hold);
        match order::place_order(hold, product, now, payment_window_ms)? {
            OrderDecision::Existing(order_id) => {
                let order = self.orders.get(&order_id);
                let order = order.unwrap_or_else(|| panic!("invariant 3: order {order_id} lost"));
                Ok(Outcome::OrderPlaced {
                    order: order.clone(),
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
        let hold = self.holds.get(&payload.hold_id);
        let hold_and_product = hold.map(|hold| (hold, self.product_of(hold)));
        let order = hold.and_then(|hold| match hold.state {
            HoldState::Consumed(order_id) => self.orders.get(&order_id),
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

    fn sweep(&mut self, now: Timestamp) -> Outcome {
        let product_ids: Vec<ProductId> = self.held.keys().copied().collect();
        let mut holds_released = Vec::new();
        for product_id in product_ids {
            for id in self.expired_holds(product_id, now) {
                self.release_hold(id, ReleaseReason::Expired);
                holds_released.push(id);
            }
        }
        holds_released.sort_unstable();
        let overdue = self
            .due
            .iter()
            .take_while(|&&(due_at, _)| is_past(due_at, now));
        let mut orders_cancelled: Vec<OrderId> = overdue.map(|&(_, id)| id).collect();
        for &id in &orders_cancelled {
            self.cancel_order(id);
        }
        orders_cancelled.sort_unstable();
        Outcome::Swept {
            holds_released,
            orders_cancelled,
        }
    }

    fn product_of(&self, hold: &Hold) -> &Product {
        let product = self.products.get(&hold.product_id);
        product.unwrap_or_else(|| panic!("hold {} names missing product", hold.id))
    }

    /// Units of the product's held holds that are unexpired at `now`.
    fn units_held_live(&self, product_id: ProductId, now: Timestamp) -> Qty {
        let Some(index) = self.held.get(&product_id) else {
            return Qty::ZERO;
        };
        let expired = self
            .expired_holds(product_id, now)
            .into_iter()
            .map(|id| self.holds[&id].qty);
        let expired = expired.fold(Qty::ZERO, |sum, qty| sum.checked_add(qty).unwrap_or(sum));
        index.units.saturating_sub(expired)
    }

    /// The product's held holds whose deadline has passed at `now`, by deadline.
    fn expired_holds(&self, product_id: ProductId, now: Timestamp) -> Vec<HoldId> {
        let Some(index) = self.held.get(&product_id) else {
            return Vec::new();
        };
        let expired = index
            .by_expiry
            .iter()
            .take_while(|&&(at, _)| is_past(at, now));
        expired.map(|&(_, id)| id).collect()
    }

    fn insert_held(&mut self, hold: &Hold) {
        let index = self.held.entry(hold.product_id).or_default();
        index.by_expiry.insert((hold.expires_at, hold.id));
        index.units = index
            .units
            .checked_add(hold.qty)
            .unwrap_or_else(|| panic!("held overflow"));
    }

    /// Moves a held hold to `state`, out of the held index.
    fn leave_held(&mut self, hold_id: HoldId, state: HoldState) -> &Hold {
        let hold = self.holds.get_mut(&hold_id);
        let hold = hold.unwrap_or_else(|| panic!("hold {hold_id} missing"));
        assert_eq!(hold.state, HoldState::Held, "only a held hold leaves held");
        hold.state = state;
        let index = self.held.get_mut(&hold.product_id);
        let index = index.unwrap_or_else(|| panic!("held index lost product {}", hold.product_id));
        assert!(
            index.by_expiry.remove(&(hold.expires_at, hold_id)),
            "held index lost a hold"
        );
        index.units = index
            .units
            .checked_sub(hold.qty)
            .unwrap_or_else(|| panic!("held underflow"));
        if index.by_expiry.is_empty() {
            self.held.remove(&hold.product_id);
        }
        hold
    }

    fn release_hold(&mut self, hold_id: HoldId, reason: ReleaseReason) {
        self.leave_held(hold_id, HoldState::Released(reason));
    }

    fn insert_order(&mut self, new: NewOrder) -> Order {
        let order = new.with_id(OrderId(self.next_id()));
        let product = self.product_of(&self.holds[&order.hold_id]);
        let (hold_state, stock) = order::consume(product, &order);
        self.leave_held(order.hold_id, hold_state);
        self.set_stock(order.product_id, stock);
        if order.status == OrderStatus::PrePayment {
            self.due.insert((order.payment_due_at, order.id));
        }
        self.orders.insert(order.id, order.clone());
        order
    }

    fn cancel_order(&mut self, order_id: OrderId) {
        let order = &self.orders[&order_id];
        let stock = order::cancel(&self.products[&order.product_id], order);
        self.set_stock(order.product_id, stock);
        self.set_order_status(order_id, OrderStatus::Cancelled);
    }

    fn set_order_status(&mut self, order_id: OrderId, status: OrderStatus) {
        let order = self.orders.get_mut(&order_id);
        let order = order.unwrap_or_else(|| panic!("order {order_id} missing"));
        assert!(
            !order.status.is_terminal(),
            "invariant 3: order {order_id} is terminal"
        );
        order.status = status;
        self.due.remove(&(order.payment_due_at, order_id));
    }

    fn set_stock(&mut self, product_id: ProductId, stock: Qty) {
        let product = self.products.get_mut(&product_id);
        product
            .unwrap_or_else(|| panic!("product {product_id} missing"))
            .stock = stock;
    }

    fn held_index_from_rows(&self) -> BTreeMap<ProductId, HeldIndex> {
        let mut held: BTreeMap<ProductId, HeldIndex> = BTreeMap::new();
        for hold in self.holds.values().filter(|h| h.state == HoldState::Held) {
            let index = held.entry(hold.product_id).or_default();
            index.by_expiry.insert((hold.expires_at, hold.id));
            index.units = index.units.checked_add(hold.qty).unwrap_or(Qty(u32::MAX));
        }
        held
    }

    fn due_index_from_rows(&self) -> BTreeSet<(Timestamp, OrderId)> {
        let pending = self
            .orders
            .values()
            .filter(|o| o.status == OrderStatus::PrePayment);
        pending.map(|o| (o.payment_due_at, o.id)).collect()
    }
}
