//! A deliberately naive reference model of the flashsale rules, written from docs/DESIGN.md without
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
    CancelReason, Cents, ExpiryBucket, Fingerprint, Folded, Hold, HoldId, HoldState,
    IdempotencyKey, KeyedRequest, OpenBucket, Order, OrderId, OrderStatus, Outcome, PaymentStatus,
    Product, ProductId, Qty, Rejection, ReleaseReason, RequestRecord, Timestamp, WebhookChange,
    WebhookRecord, WebhookResult,
};

/// One row per product: what it was created with, and the latest deadline a grant or a sweep
/// folded (every held hold at or before it has expired for good, whatever the clock says).
#[derive(Clone, Debug)]
pub struct ModelProduct {
    pub id: u64,
    pub name: String,
    pub price: u64,
    pub initial: u32,
    pub folded_through: u64,
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
    /// How many holds the model had granted when this one ended (`usize::MAX` while held).
    pub ended_after: usize,
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
    pub cancelled_because: Option<CancelReason>,
}

/// A client's idempotency key and what it answered: the hold granted, or the order created or
/// found.
#[derive(Clone, Debug)]
pub struct ModelRequestKey {
    pub key: String,
    /// `Ok((product, qty))` for a hold request, `Err(hold)` for an order request.
    pub asked: Result<(u64, u32), u64>,
    pub resource: u64,
    pub created: bool,
    pub at: u64,
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
        key: Option<String>,
    },
    PlaceOrder {
        hold: u64,
        window: u64,
        key: Option<String>,
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
    pub request_keys: Vec<ModelRequestKey>,
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

    /// The instant the product decides at: `now`, or the last deadline it folded if later.
    pub fn at(&self, product: u64, now: u64) -> u64 {
        self.find_product(product)
            .map_or(now, |p| now.max(p.folded_through))
    }

    /// Available at `now`: stock minus every held hold not yet past its deadline, judged at the
    /// product's own instant.
    pub fn available(&self, product: u64, now: u64) -> u64 {
        let now = self.at(product, now);
        let held: u64 = self
            .holds
            .iter()
            .filter(|h| h.product == product && h.end.is_none() && h.expires > now)
            .map(|h| u64::from(h.qty))
            .sum();
        self.stock(product).saturating_sub(held)
    }

    /// Ends a hold: consumed (`Ok(order)`) or released.
    fn end_hold(&mut self, id: u64, end: Result<u64, ReleaseReason>) {
        let granted = self.holds.len();
        let hold = self.holds.iter_mut().find(|h| h.id == id);
        let hold = hold.expect("hold exists");
        hold.end = Some(end);
        hold.ended_after = granted;
    }

    /// Whether the product wrote down the deadline `at` of one of its holds: its latest
    /// deadline, or one of which a hold was still held when a later deadline was granted (or was
    /// granted after it). A deadline whose holds all ended before a later one came leaves no
    /// trace: its bucket, empty, was never written.
    fn written_down(&self, product: u64, at: u64) -> bool {
        let mine = || (self.holds.iter().enumerate()).filter(|(_, h)| h.product == product);
        let latest = mine().map(|(_, h)| h.expires).max();
        latest == Some(at)
            || mine().filter(|(_, h)| h.expires == at).any(|(_, h)| {
                mine().any(|(granted, later)| later.expires > at && granted < h.ended_after)
            })
    }

    /// Folds the product at `now` (its own instant): the last deadline it wrote down of its
    /// holds due then becomes its `folded_through`. Returns the held holds that so expired for
    /// good, and their units. (The core folds at most 256 deadlines at once; no generated
    /// history has that many.)
    fn fold(&mut self, product: u64, now: u64) -> Folded {
        let through = self.find_product(product).map_or(0, |p| p.folded_through);
        let due = |h: &&ModelHold| h.product == product && h.expires > through && h.expires <= now;
        let last = (self.holds.iter().filter(due).map(|h| h.expires))
            .filter(|&at| self.written_down(product, at))
            .max();
        let held: Vec<u32> = self
            .holds
            .iter()
            .filter(due)
            .filter(|h| h.end.is_none())
            .map(|h| h.qty)
            .collect();
        if let (Some(last), Some(p)) = (last, self.products.iter_mut().find(|p| p.id == product)) {
            p.folded_through = last;
        }
        Folded {
            holds: held.len() as u64,
            units: held.iter().map(|&q| u64::from(q)).sum(),
        }
    }

    /// The table's expiry buckets the model implies that count something: one per product and
    /// deadline of a held hold after what the product folded, but its latest (the open bucket,
    /// in the product's row), with the units and number of its held holds.
    pub fn buckets(&self) -> Vec<ExpiryBucket> {
        let mut buckets: Vec<ExpiryBucket> = Vec::new();
        for hold in self.holds.iter().filter(|h| h.end.is_none()) {
            let through = self
                .find_product(hold.product)
                .map_or(0, |p| p.folded_through);
            let open = self.open_bucket(hold.product).expires_at.as_ms();
            if hold.expires <= through || hold.expires == open {
                continue;
            }
            let key = (ProductId(hold.product), Timestamp(hold.expires));
            match buckets.iter_mut().find(|b| b.key() == key) {
                Some(bucket) => {
                    bucket.units = Qty(bucket.units.0 + hold.qty);
                    bucket.holds += 1;
                }
                None => buckets.push(ExpiryBucket {
                    product_id: key.0,
                    expires_at: key.1,
                    units: Qty(hold.qty),
                    holds: 1,
                }),
            }
        }
        buckets.sort();
        buckets
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
                    folded_through: 0,
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
                Ok(Outcome::Restocked {
                    product: self.product_row(product),
                    available: Qty(self.available(product, now) as u32),
                })
            }
            ModelCommand::PlaceHold {
                product,
                qty,
                ttl,
                key,
            } => self.place_hold_keyed(now, product, qty, ttl, key),
            ModelCommand::PlaceOrder { hold, window, key } => {
                self.place_order_keyed(now, hold, window, key)
            }
            ModelCommand::Webhook { key, hold, paid } => self.webhook(now, key, hold, paid),
            ModelCommand::Sweep => Ok(self.sweep(now)),
        }
    }

    /// A hold request under an optional key: the key's record answers a request like the first
    /// again, refuses one unlike it, and is written only when the request succeeds.
    fn place_hold_keyed(
        &mut self,
        now: u64,
        product: u64,
        qty: u32,
        ttl: u64,
        key: Option<String>,
    ) -> Result<Outcome, Rejection> {
        if qty == 0 || qty > 10_000 {
            return Err(Rejection::InvalidQty { qty: Qty(qty) });
        }
        if !(1_000..=86_400_000).contains(&ttl) {
            return Err(Rejection::InvalidTtl { ttl_ms: ttl });
        }
        let Some(key) = key else {
            return self.place_hold(now, product, qty, ttl);
        };
        if let Some(record) = self.request_keys.iter().find(|r| r.key == key) {
            let field = match record.asked {
                Err(_) => Some("request"),
                Ok((p, _)) if p != product => Some("product_id"),
                Ok((_, q)) if q != qty => Some("qty"),
                Ok(_) => None,
            };
            return match field {
                Some(field) => Err(reused(&key, field)),
                None => Ok(Outcome::HoldPlaced {
                    hold: self.hold_row(record.resource),
                    folded: Folded::default(),
                    replayed: true,
                }),
            };
        }
        let outcome = self.place_hold(now, product, qty, ttl)?;
        if let Outcome::HoldPlaced { hold, .. } = &outcome {
            self.request_keys.push(ModelRequestKey {
                key,
                asked: Ok((product, qty)),
                resource: hold.id.0,
                created: true,
                at: now,
            });
        }
        Ok(outcome)
    }

    /// An order request under an optional key, as [`Model::place_hold_keyed`].
    fn place_order_keyed(
        &mut self,
        now: u64,
        hold: u64,
        window: u64,
        key: Option<String>,
    ) -> Result<Outcome, Rejection> {
        if !(1_000..=604_800_000).contains(&window) {
            return Err(Rejection::InvalidPaymentWindow {
                payment_window_ms: window,
            });
        }
        let Some(key) = key else {
            return self.place_order(now, hold, window);
        };
        if let Some(record) = self.request_keys.iter().find(|r| r.key == key) {
            let field = match record.asked {
                Ok(_) => Some("request"),
                Err(h) if h != hold => Some("hold_id"),
                Err(_) => None,
            };
            return match field {
                Some(field) => Err(reused(&key, field)),
                None => Ok(Outcome::OrderPlaced {
                    order: self.order_row(record.resource),
                    created: record.created,
                    replayed: true,
                }),
            };
        }
        let outcome = self.place_order(now, hold, window)?;
        if let Outcome::OrderPlaced { order, created, .. } = &outcome {
            self.request_keys.push(ModelRequestKey {
                key,
                asked: Err(hold),
                resource: order.id.0,
                created: *created,
                at: now,
            });
        }
        Ok(outcome)
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
        let now = self.at(product, now);
        let folded = self.fold(product, now);
        let id = self.new_id(HOLD);
        // Deadlines fall on whole seconds, rounded up.
        let expires = (now + ttl).div_ceil(1_000) * 1_000;
        let hold = ModelHold {
            id,
            product,
            qty,
            created: now,
            expires,
            end: None,
            ended_after: usize::MAX,
        };
        self.holds.push(hold);
        Ok(Outcome::HoldPlaced {
            hold: self.hold_row(id),
            folded,
            replayed: false,
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
        let now = self.at(h.product, now);
        match h.end {
            Some(Ok(order)) => {
                return Ok(Outcome::OrderPlaced {
                    order: self.order_row(order),
                    created: false,
                    replayed: false,
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
            replayed: false,
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
            cancelled_because: None,
        });
        self.end_hold(hold.id, Ok(id));
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
            let order = w.order.map(|id| self.order_row(id));
            return Ok(Outcome::WebhookApplied {
                record,
                replayed: true,
                order,
                change: WebhookChange::None,
            });
        }
        let at = self
            .find_hold(hold)
            .map_or(now, |h| self.at(h.product, now));
        let (result, order, change) = self.webhook_effect(at, hold, paid);
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
            order: order.map(|id| self.order_row(id)),
            change,
        })
    }

    /// docs/DESIGN.md's webhook rules, one `if` per row: the result, the order concerned, and
    /// what changed.
    fn webhook_effect(
        &mut self,
        now: u64,
        hold: u64,
        paid: bool,
    ) -> (WebhookResult, Option<u64>, WebhookChange) {
        let Some(h) = self.find_hold(hold).cloned() else {
            return (WebhookResult::Unmatched, None, WebhookChange::None);
        };
        let release = |model: &mut Model, reason| {
            model.end_hold(hold, Err(reason));
            WebhookChange::HoldReleased(reason)
        };
        match h.end {
            None if paid && h.expires <= now => {
                let change = release(self, ReleaseReason::Expired);
                (WebhookResult::RefundRequired, None, change)
            }
            None if paid => {
                let id = self.create_order(now, &h, OrderStatus::Paid, now);
                (
                    WebhookResult::Applied,
                    Some(id),
                    WebhookChange::PaidOrderCreated,
                )
            }
            None => {
                let change = release(self, ReleaseReason::PaymentFailed);
                (WebhookResult::Applied, None, change)
            }
            Some(Err(_)) if paid => (WebhookResult::RefundRequired, None, WebhookChange::None),
            Some(Err(_)) => (WebhookResult::AlreadyApplied, None, WebhookChange::None),
            Some(Ok(order_id)) => {
                let order = self
                    .orders
                    .iter_mut()
                    .find(|o| o.id == order_id)
                    .expect("order");
                let cancel = |order: &mut ModelOrder| {
                    order.status = OrderStatus::Cancelled;
                    order.cancelled_because = Some(CancelReason::PaymentFailed);
                    WebhookChange::OrderCancelled
                };
                let (result, change) = match (order.status, paid) {
                    (OrderStatus::PrePayment, true) if order.due <= now => {
                        (WebhookResult::RefundRequired, cancel(order))
                    }
                    (OrderStatus::PrePayment, true) => {
                        order.status = OrderStatus::Paid;
                        (WebhookResult::Applied, WebhookChange::OrderPaid)
                    }
                    (OrderStatus::PrePayment, false) => (WebhookResult::Applied, cancel(order)),
                    (OrderStatus::Paid, true) | (OrderStatus::Cancelled, false) => {
                        (WebhookResult::AlreadyApplied, WebhookChange::None)
                    }
                    (OrderStatus::Paid, false) => (WebhookResult::Conflict, WebhookChange::None),
                    (OrderStatus::Cancelled, true) => {
                        (WebhookResult::RefundRequired, WebhookChange::None)
                    }
                };
                (result, Some(order_id), change)
            }
        }
    }

    fn sweep(&mut self, now: u64) -> Outcome {
        let mut folded = Folded::default();
        let mut holds_retired = Vec::new();
        let mut orders_cancelled = Vec::new();
        // As the sweeper, visit the products that have, by the clock, a deadline due (a bucket:
        // any hold's deadline after what the product folded) or an order overdue, and those
        // with held holds expired for good; decide each at the product's own instant.
        let products: Vec<u64> = self
            .products
            .iter()
            .filter(|p| {
                let through = p.folded_through;
                let mine = |h: &&ModelHold| h.product == p.id;
                let due = self
                    .holds
                    .iter()
                    .filter(mine)
                    .any(|h| h.expires > through && h.expires <= now);
                let to_retire = (self.holds.iter().filter(mine))
                    .any(|h| h.end.is_none() && h.expires <= through);
                let overdue = self.orders.iter().any(|o| {
                    o.product == p.id && o.status == OrderStatus::PrePayment && o.due <= now
                });
                due || to_retire || overdue
            })
            .map(|p| p.id)
            .collect();
        for product in products {
            let now = self.at(product, now);
            let more = self.fold(product, now);
            folded.holds += more.holds;
            folded.units += more.units;
            let through = self.at(product, 0);
            let granted = self.holds.len();
            for hold in &mut self.holds {
                if hold.product == product && hold.end.is_none() && hold.expires <= through {
                    hold.end = Some(Err(ReleaseReason::Expired));
                    hold.ended_after = granted;
                    holds_retired.push(HoldId(hold.id));
                }
            }
            for order in &mut self.orders {
                let overdue = order.status == OrderStatus::PrePayment && order.due <= now;
                if order.product == product && overdue {
                    order.status = OrderStatus::Cancelled;
                    order.cancelled_because = Some(CancelReason::PaymentWindowClosed);
                    orders_cancelled.push(OrderId(order.id));
                }
            }
        }
        holds_retired.sort();
        orders_cancelled.sort();
        Outcome::Swept {
            folded,
            holds_retired,
            orders_cancelled,
        }
    }

    /// The product's open bucket: the latest deadline of any hold it ever granted, with the
    /// units and number of its held holds of that deadline while the product has not folded it,
    /// empty once it has.
    fn open_bucket(&self, id: u64) -> OpenBucket {
        let through = self.find_product(id).map_or(0, |p| p.folded_through);
        let mine = || self.holds.iter().filter(|h| h.product == id);
        let latest = mine().map(|h| h.expires).max().unwrap_or(0);
        let held: Vec<u32> = mine()
            .filter(|h| latest > through && h.expires == latest && h.end.is_none())
            .map(|h| h.qty)
            .collect();
        OpenBucket {
            expires_at: Timestamp(latest),
            units: Qty(held.iter().sum()),
            holds: held.len() as u32,
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
                .filter(|h| h.product == id && h.end.is_none() && h.expires > p.folded_through)
                .map(|h| h.qty)
                .sum()),
            units_received: self.received(id),
            expired_through: Timestamp(p.folded_through),
            holds_to_retire: self
                .holds
                .iter()
                .filter(|h| h.product == id && h.end.is_none() && h.expires <= p.folded_through)
                .count() as u32,
            open_bucket: self.open_bucket(id),
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
            cancel_reason: o.cancelled_because,
        }
    }

    pub fn request_key_row(&self, key: &str) -> RequestRecord {
        let r = self
            .request_keys
            .iter()
            .find(|r| r.key == key)
            .expect("record exists");
        RequestRecord {
            key: IdempotencyKey::parse(key).expect("model keys are valid"),
            request: match r.asked {
                Ok((product, qty)) => KeyedRequest::PlaceHold {
                    product_id: ProductId(product),
                    qty: Qty(qty),
                },
                Err(hold) => KeyedRequest::PlaceOrder {
                    hold_id: HoldId(hold),
                },
            },
            resource_id: r.resource,
            created: r.created,
            created_at: Timestamp(r.at),
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

fn reused(key: &str, field: &'static str) -> Rejection {
    Rejection::IdempotencyKeyReused {
        key: IdempotencyKey::parse(key).expect("model keys are valid"),
        field,
    }
}
