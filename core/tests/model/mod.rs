//! A deliberately naive reference model of the flashsale rules, written from DESIGN.md without
//! calling any core decision: plain vectors of rows, every derived number (stock, units held,
//! available) recomputed from the rows and the list of restocks on every question.
//!
//! It shares only the core's *data types* (ids, `Outcome`, `Rejection`), so outcomes can be
//! compared with `==`; every rule is written here a second time, differently, on purpose.

#![allow(dead_code)]
// Test arithmetic runs on small generated numbers; overflow would panic the test, as it should.
#![allow(clippy::arithmetic_side_effects)]

/// Cases per property: 1,000 by default, `PROPTEST_CASES` for more. Tests read the environment;
/// the core never does.
#[allow(clippy::disallowed_methods)]
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

pub mod agree;

use flashsale_core::{
    Cents, Fingerprint, Hold, HoldId, HoldState, IdempotencyKey, Order, OrderId, OrderStatus,
    Outcome, PaymentStatus, Product, ProductId, Qty, Rejection, ReleaseReason, Timestamp,
    WebhookRecord, WebhookResult,
};

/// One row per product: what it was created with.
#[derive(Clone, Debug)]
pub struct ModelProduct {
    pub id: u64,
    pub name: String,
    pub price: u64,
    pub initial: u32,
}

#[derive(Clone, Debug)]
pub struct ModelHold {
    pub id: u64,
    pub product: u64,
    pub qty: u32,
    pub created: u64,
    pub expires: u64,
    /// `None` while held; `Some(Ok(order))` once consumed; `Some(Err(reason))` once released.
    pub end: Option<Result<u64, ReleaseReason>>,
}

#[derive(Clone, Debug)]
pub struct ModelOrder {
    pub id: u64,
    pub hold: u64,
    pub product: u64,
    pub qty: u32,
    pub total: u64,
    pub status: OrderStatus,
    pub created: u64,
    pub due: u64,
}

#[derive(Clone, Debug)]
pub struct ModelWebhook {
    pub key: String,
    pub hold: u64,
    pub paid: bool,
    pub result: WebhookResult,
    pub order: Option<u64>,
    pub received: u64,
}

/// The commands the model knows, in the model's own plain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelCommand {
    CreateProduct {
        name: String,
        price: u64,
        stock: u32,
    },
    Restock {
        product: u64,
        qty: u32,
    },
    PlaceHold {
        product: u64,
        qty: u32,
        ttl: u64,
    },
    PlaceOrder {
        hold: u64,
        window: u64,
    },
    Webhook {
        key: String,
        hold: u64,
        paid: bool,
    },
    Sweep,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub products: Vec<ModelProduct>,
    pub restocks: Vec<(u64, u32)>,
    pub holds: Vec<ModelHold>,
    pub orders: Vec<ModelOrder>,
    pub webhooks: Vec<ModelWebhook>,
    /// Ids handed out so far, per kind: products, holds, orders (each its own sequence).
    pub ids_used: [u64; 3],
}

const PRODUCT: usize = 0;
const HOLD: usize = 1;
const ORDER: usize = 2;

impl Model {
    fn new_id(&mut self, kind: usize) -> u64 {
        self.ids_used[kind] += 1;
        self.ids_used[kind]
    }

    /// The largest id of any kind handed out so far.
    pub fn id_max(&self) -> u64 {
        self.ids_used.iter().copied().max().unwrap_or(0)
    }

    fn find_product(&self, id: u64) -> Option<&ModelProduct> {
        self.products.iter().find(|p| p.id == id)
    }

    fn find_hold(&self, id: u64) -> Option<&ModelHold> {
        self.holds.iter().find(|h| h.id == id)
    }

    fn find_order(&self, id: u64) -> Option<&ModelOrder> {
        self.orders.iter().find(|o| o.id == id)
    }

    /// Units ever received: initial stock plus every restock.
    pub fn received(&self, product: u64) -> u64 {
        let initial = self
            .find_product(product)
            .map_or(0, |p| u64::from(p.initial));
        let restocked: u64 = self
            .restocks
            .iter()
            .filter(|r| r.0 == product)
            .map(|r| u64::from(r.1))
            .sum();
        initial + restocked
    }

    /// Stock, recomputed: received minus the units of every order that was not cancelled.
    pub fn stock(&self, product: u64) -> u64 {
        let sold: u64 = self
            .orders
            .iter()
            .filter(|o| o.product == product && o.status != OrderStatus::Cancelled)
            .map(|o| u64::from(o.qty))
            .sum();
        self.received(product) - sold
    }

    /// Available at `now`: stock minus every held hold not yet past its deadline.
    pub fn available(&self, product: u64, now: u64) -> u64 {
        let held: u64 = self
            .holds
            .iter()
            .filter(|h| h.product == product && h.end.is_none() && h.expires > now)
            .map(|h| u64::from(h.qty))
            .sum();
        self.stock(product).saturating_sub(held)
    }

    /// The earliest deadline of a held hold or an unpaid order.
    pub fn next_deadline(&self) -> Option<u64> {
        let holds = self
            .holds
            .iter()
            .filter(|h| h.end.is_none())
            .map(|h| h.expires);
        let orders = self
            .orders
            .iter()
            .filter(|o| o.status == OrderStatus::PrePayment)
            .map(|o| o.due);
        holds.chain(orders).min()
    }

    /// Applies a command at `now`, returning what the service must answer.
    pub fn apply(&mut self, now: u64, command: &ModelCommand) -> Result<Outcome, Rejection> {
        match command.clone() {
            ModelCommand::CreateProduct { name, price, stock } => {
                if name.trim().is_empty() || name.len() > 255 {
                    return Err(Rejection::InvalidName);
                }
                let id = self.new_id(PRODUCT);
                self.products.push(ModelProduct {
                    id,
                    name,
                    price,
                    initial: stock,
                });
                Ok(Outcome::ProductCreated(self.product_row(id)))
            }
            ModelCommand::Restock { product, qty } => {
                if qty == 0 {
                    return Err(Rejection::InvalidQty { qty: Qty(qty) });
                }
                if self.find_product(product).is_none() {
                    return Err(Rejection::UnknownProduct {
                        product_id: ProductId(product),
                    });
                }
                self.restocks.push((product, qty));
                Ok(Outcome::Restocked(self.product_row(product)))
            }
            ModelCommand::PlaceHold { product, qty, ttl } => {
                self.place_hold(now, product, qty, ttl)
            }
            ModelCommand::PlaceOrder { hold, window } => self.place_order(now, hold, window),
            ModelCommand::Webhook { key, hold, paid } => self.webhook(now, key, hold, paid),
            ModelCommand::Sweep => Ok(self.sweep(now)),
        }
    }

    fn place_hold(
        &mut self,
        now: u64,
        product: u64,
        qty: u32,
        ttl: u64,
    ) -> Result<Outcome, Rejection> {
        if qty == 0 || qty > 10_000 {
            return Err(Rejection::InvalidQty { qty: Qty(qty) });
        }
        if !(1_000..=86_400_000).contains(&ttl) {
            return Err(Rejection::InvalidTtl { ttl_ms: ttl });
        }
        if self.find_product(product).is_none() {
            return Err(Rejection::UnknownProduct {
                product_id: ProductId(product),
            });
        }
        let available = self.available(product, now);
        if u64::from(qty) > available {
            return Err(Rejection::InsufficientStock {
                requested: Qty(qty),
                available: Qty(available as u32),
            });
        }
        let mut released = Vec::new();
        for hold in &mut self.holds {
            if hold.product == product && hold.end.is_none() && hold.expires <= now {
                hold.end = Some(Err(ReleaseReason::Expired));
                released.push(HoldId(hold.id));
            }
        }
        let id = self.new_id(HOLD);
        let hold = ModelHold {
            id,
            product,
            qty,
            created: now,
            expires: now + ttl,
            end: None,
        };
        self.holds.push(hold);
        Ok(Outcome::HoldPlaced {
            hold: self.hold_row(id),
            holds_released: released,
        })
    }

    fn place_order(&mut self, now: u64, hold: u64, window: u64) -> Result<Outcome, Rejection> {
        if !(1_000..=604_800_000).contains(&window) {
            return Err(Rejection::InvalidPaymentWindow {
                payment_window_ms: window,
            });
        }
        let Some(h) = self.find_hold(hold).cloned() else {
            return Err(Rejection::UnknownHold {
                hold_id: HoldId(hold),
            });
        };
        match h.end {
            Some(Ok(order)) => {
                return Ok(Outcome::OrderPlaced {
                    order: self.order_row(order),
                    created: false,
                });
            }
            Some(Err(_)) => {
                return Err(Rejection::HoldReleased {
                    hold_id: HoldId(hold),
                });
            }
            None if h.expires <= now => {
                return Err(Rejection::HoldExpired {
                    hold_id: HoldId(hold),
                });
            }
            None => {}
        }
        let id = self.create_order(now, &h, OrderStatus::PrePayment, now + window);
        Ok(Outcome::OrderPlaced {
            order: self.order_row(id),
            created: true,
        })
    }

    fn create_order(&mut self, now: u64, hold: &ModelHold, status: OrderStatus, due: u64) -> u64 {
        let id = self.new_id(ORDER);
        let price = self.find_product(hold.product).map_or(0, |p| p.price);
        self.orders.push(ModelOrder {
            id,
            hold: hold.id,
            product: hold.product,
            qty: hold.qty,
            total: price * u64::from(hold.qty),
            status,
            created: now,
            due,
        });
        let h = self
            .holds
            .iter_mut()
            .find(|x| x.id == hold.id)
            .expect("hold exists");
        h.end = Some(Ok(id));
        id
    }

    fn webhook(
        &mut self,
        now: u64,
        key: String,
        hold: u64,
        paid: bool,
    ) -> Result<Outcome, Rejection> {
        if let Some(w) = self.webhooks.iter().find(|w| w.key == key) {
            let key_parsed = IdempotencyKey::parse(&key).expect("model keys are valid");
            if w.hold != hold {
                return Err(Rejection::IdempotencyKeyReused {
                    key: key_parsed,
                    field: "hold_id",
                });
            }
            if w.paid != paid {
                return Err(Rejection::IdempotencyKeyReused {
                    key: key_parsed,
                    field: "status",
                });
            }
            let record = self.webhook_row(&key);
            return Ok(Outcome::WebhookApplied {
                record,
                replayed: true,
            });
        }
        let (result, order) = self.webhook_effect(now, hold, paid);
        self.webhooks.push(ModelWebhook {
            key: key.clone(),
            hold,
            paid,
            result,
            order,
            received: now,
        });
        Ok(Outcome::WebhookApplied {
            record: self.webhook_row(&key),
            replayed: false,
        })
    }

    /// DESIGN.md's webhook rules, one `if` per row.
    fn webhook_effect(&mut self, now: u64, hold: u64, paid: bool) -> (WebhookResult, Option<u64>) {
        let Some(h) = self.find_hold(hold).cloned() else {
            return (WebhookResult::Unmatched, None);
        };
        let set_hold_end = |model: &mut Model, end| {
            model
                .holds
                .iter_mut()
                .find(|x| x.id == hold)
                .expect("hold exists")
                .end = Some(end);
        };
        match h.end {
            None if paid && h.expires <= now => {
                set_hold_end(self, Err(ReleaseReason::Expired));
                (WebhookResult::RefundRequired, None)
            }
            None if paid => {
                let id = self.create_order(now, &h, OrderStatus::Paid, now);
                (WebhookResult::Applied, Some(id))
            }
            None => {
                set_hold_end(self, Err(ReleaseReason::PaymentFailed));
                (WebhookResult::Applied, None)
            }
            Some(Err(_)) if paid => (WebhookResult::RefundRequired, None),
            Some(Err(_)) => (WebhookResult::AlreadyApplied, None),
            Some(Ok(order_id)) => {
                let order = self
                    .orders
                    .iter_mut()
                    .find(|o| o.id == order_id)
                    .expect("order");
                let result = match (order.status, paid) {
                    (OrderStatus::PrePayment, true) if order.due <= now => {
                        order.status = OrderStatus::Cancelled;
                        WebhookResult::RefundRequired
                    }
                    (OrderStatus::PrePayment, true) => {
                        order.status = OrderStatus::Paid;
                        WebhookResult::Applied
                    }
                    (OrderStatus::PrePayment, false) => {
                        order.status = OrderStatus::Cancelled;
                        WebhookResult::Applied
                    }
                    (OrderStatus::Paid, true) | (OrderStatus::Cancelled, false) => {
                        WebhookResult::AlreadyApplied
                    }
                    (OrderStatus::Paid, false) => WebhookResult::Conflict,
                    (OrderStatus::Cancelled, true) => WebhookResult::RefundRequired,
                };
                (result, Some(order_id))
            }
        }
    }

    fn sweep(&mut self, now: u64) -> Outcome {
        let mut holds_released = Vec::new();
        for hold in &mut self.holds {
            if hold.end.is_none() && hold.expires <= now {
                hold.end = Some(Err(ReleaseReason::Expired));
                holds_released.push(HoldId(hold.id));
            }
        }
        let mut orders_cancelled = Vec::new();
        for order in &mut self.orders {
            if order.status == OrderStatus::PrePayment && order.due <= now {
                order.status = OrderStatus::Cancelled;
                orders_cancelled.push(OrderId(order.id));
            }
        }
        Outcome::Swept {
            holds_released,
            orders_cancelled,
        }
    }

    pub fn product_row(&self, id: u64) -> Product {
        let p = self.find_product(id).expect("product exists");
        Product {
            id: ProductId(id),
            name: p.name.clone(),
            price_cents: Cents(p.price),
            stock: Qty(self.stock(id) as u32),
            units_held: Qty(self
                .holds
                .iter()
                .filter(|h| h.product == id && h.end.is_none())
                .map(|h| h.qty)
                .sum()),
            units_received: self.received(id),
        }
    }

    pub fn hold_row(&self, id: u64) -> Hold {
        let h = self.find_hold(id).expect("hold exists");
        let state = match h.end {
            None => HoldState::Held,
            Some(Ok(order)) => HoldState::Consumed(OrderId(order)),
            Some(Err(reason)) => HoldState::Released(reason),
        };
        Hold {
            id: HoldId(id),
            product_id: ProductId(h.product),
            qty: Qty(h.qty),
            created_at: Timestamp(h.created),
            expires_at: Timestamp(h.expires),
            state,
        }
    }

    pub fn order_row(&self, id: u64) -> Order {
        let o = self.find_order(id).expect("order exists");
        Order {
            id: OrderId(id),
            hold_id: HoldId(o.hold),
            product_id: ProductId(o.product),
            qty: Qty(o.qty),
            total_cents: Cents(o.total),
            status: o.status,
            created_at: Timestamp(o.created),
            payment_due_at: Timestamp(o.due),
        }
    }

    pub fn webhook_row(&self, key: &str) -> WebhookRecord {
        let w = self
            .webhooks
            .iter()
            .find(|w| w.key == key)
            .expect("record exists");
        let status = if w.paid {
            PaymentStatus::Paid
        } else {
            PaymentStatus::Failed
        };
        WebhookRecord {
            key: IdempotencyKey::parse(key).expect("model keys are valid"),
            hold_id: HoldId(w.hold),
            status,
            fingerprint: Fingerprint::of(HoldId(w.hold), status),
            result: w.result,
            order_id: w.order.map(OrderId),
            received_at: Timestamp(w.received),
        }
    }
}
