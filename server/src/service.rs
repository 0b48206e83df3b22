//! The service layer: one transaction script per request, over a [`Storage`].
//!
//! Each script opens a transaction, locks the rows it needs in the global order (product, hold,
//! order, webhook record), reads them into core types, reads the clock, calls the core's decision,
//! writes what the decision says and commits. No business rule is decided here: every `if` that
//! matters is in `flashsale-core`. A rejection rolls the transaction back, so it changes nothing.
//! Contention (deadlocks, lock-wait timeouts, busy databases, a key taken by a concurrent insert)
//! retries the whole script a bounded number of times, then answers [`ServiceError::Busy`].
//!
//! This module names neither sqlx nor warp, and its only runtime dependency is `tokio` through
//! madsim-tokio, so the simulator runs it unchanged under `--cfg madsim`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flashsale_core::hold::{self, HOLD_TTL_MS_DEFAULT};
use flashsale_core::order::{self, OrderDecision, PAYMENT_WINDOW_MS_DEFAULT};
use flashsale_core::payment::{self, WebhookDecision, WebhookEffect};
use flashsale_core::product;
use flashsale_core::request::{self, KeyDecision};
use flashsale_core::{
    Cents, Hold, HoldId, HoldState, HoldView, IdempotencyKey, KeyedRequest, Order, OrderId,
    OrderStatus, Product, ProductId, Qty, Rejection, RequestRecord, Timestamp, WebhookPayload,
    WebhookRecord,
};

use crate::clock::Clock;
use crate::store::{Dump, Storage, StoreError, Transaction, TxMode};

/// How many times a script runs before contention is answered as [`ServiceError::Busy`].
pub const ATTEMPTS_MAX_DEFAULT: u32 = 8;
/// How many products one sweep transaction batch looks at.
pub const SWEEP_PRODUCTS_PER_BATCH: u32 = 100;

/// The service's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a hold lasts.
    pub hold_ttl_ms: u64,
    /// How long an order waits for its payment.
    pub payment_window_ms: u64,
    /// How many times a script runs under contention.
    pub attempts_max: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hold_ttl_ms: HOLD_TTL_MS_DEFAULT,
            payment_window_ms: PAYMENT_WINDOW_MS_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The core refused it; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The row asked for does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// `product`, `hold` or `order`.
        what: &'static str,
        /// The id asked for.
        id: u64,
    },
    /// A request under the same idempotency key is still running on this server.
    #[error("a request under idempotency key {key} is still in flight")]
    KeyInFlight {
        /// The key.
        key: IdempotencyKey,
    },
    /// Contention outlasted every attempt; the client may retry later.
    #[error("busy after {attempts} attempts")]
    Busy {
        /// Attempts made.
        attempts: u32,
    },
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A product with its units available at the instant it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductView {
    /// The product.
    pub product: Product,
    /// Units available to a new hold.
    pub available: Qty,
}

/// A granted hold and the expired holds its transaction released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldPlaced {
    /// The hold.
    pub hold: Hold,
    /// Expired holds of the product released by the same transaction.
    pub holds_released: Vec<HoldId>,
}

/// An order, and whether this request created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPlaced {
    /// The order.
    pub order: Order,
    /// False when an earlier request (or a `paid` webhook) created it.
    pub created: bool,
}

/// An answer to a request that may carry an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyed<T> {
    /// The answer: the stored one when `replayed`.
    pub value: T,
    /// Whether the key had answered this request before, so nothing ran now.
    pub replayed: bool,
}

/// A webhook's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookAnswer {
    /// The key's record.
    pub record: WebhookRecord,
    /// Whether this delivery was a replay of a stored key.
    pub replayed: bool,
    /// The order concerned, as it is now.
    pub order: Option<Order>,
}

/// What one sweep pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Holds released because they expired.
    pub holds_released: usize,
    /// Orders cancelled because their payment window closed.
    pub orders_cancelled: usize,
}

/// The transaction scripts, over a storage and a clock.
#[derive(Clone, Debug)]
pub struct Service<S, C> {
    store: S,
    clock: C,
    config: Config,
    /// Idempotency keys of requests running on this server; lost with it in a crash, which is
    /// fine: the database still runs two requests under one key one after the other.
    keys_in_flight: Arc<Mutex<BTreeSet<IdempotencyKey>>>,
}

/// A key claimed as in flight until dropped.
struct Claim<'a> {
    keys: &'a Mutex<BTreeSet<IdempotencyKey>>,
    key: IdempotencyKey,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Runs `$script` (an expression producing a future over `$tx`) in a transaction of `$mode`,
/// committing on success and retrying the whole script on contention.
macro_rules! in_transaction {
    ($service:expr, $mode:expr, $what:literal, |$tx:ident| $script:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let result: Result<_, ServiceError> = async {
                let mut $tx = $service.store.begin($mode).await?;
                let value = $script.await?;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Err(ServiceError::Store(error)) if error.is_retryable() => {
                    tracing::warn!(script = $what, attempt, %error, "contention, retrying");
                    if attempt >= $service.config.attempts_max {
                        break Err(ServiceError::Busy { attempts: attempt });
                    }
                    backoff(attempt).await;
                }
                other => break other,
            }
        }
    }};
}

/// Waits a little longer after each failed attempt, so contenders spread out.
async fn backoff(attempt: u32) {
    let ms = 2u64.saturating_pow(attempt.min(8));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl<S: Storage, C: Clock> Service<S, C> {
    /// A service over `store`, reading time from `clock`.
    pub fn new(store: S, clock: C, config: Config) -> Self {
        Service {
            store,
            clock,
            config,
            keys_in_flight: Arc::default(),
        }
    }

    /// Marks `key` in flight on this server until the claim drops.
    fn claim(&self, key: Option<&IdempotencyKey>) -> Result<Option<Claim<'_>>, ServiceError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let mut keys = self
            .keys_in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !keys.insert(key.clone()) {
            return Err(ServiceError::KeyInFlight { key: key.clone() });
        }
        Ok(Some(Claim {
            keys: &self.keys_in_flight,
            key: key.clone(),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The storage.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The current time by this service's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A product and its units available now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] for an unknown product; storage failures.
    pub async fn product(&self, id: ProductId) -> Result<ProductView, ServiceError> {
        in_transaction!(self, TxMode::Read, "product", |tx| async {
            let read = tx.product_and_units_held(id, self.clock.now()).await?;
            let (product, units_held) = read.ok_or(ServiceError::NotFound {
                what: "product",
                id: id.0,
            })?;
            let available = product::available(&product, units_held);
            Ok::<_, ServiceError>(ProductView { product, available })
        })
    }

    /// Places one hold of `qty` units for the configured TTL.
    ///
    /// # Errors
    /// The core's rejection (invalid qty, unknown product, insufficient stock); `Busy`; storage.
    pub async fn place_hold(
        &self,
        product_id: ProductId,
        qty: Qty,
    ) -> Result<HoldPlaced, ServiceError> {
        Ok(self.place_hold_keyed(None, product_id, qty).await?.value)
    }

    /// Places one hold, at most once per idempotency key: under a key that answered this request
    /// before, answers the same hold and changes nothing. The key's record commits with the hold.
    ///
    /// # Errors
    /// As [`Service::place_hold`], and [`Rejection::IdempotencyKeyReused`] for a key used with
    /// another request, [`ServiceError::KeyInFlight`] for a key still running on this server.
    pub async fn place_hold_keyed(
        &self,
        key: Option<&IdempotencyKey>,
        product_id: ProductId,
        qty: Qty,
    ) -> Result<Keyed<HoldPlaced>, ServiceError> {
        hold::validate_request(qty, self.config.hold_ttl_ms)?;
        let request = KeyedRequest::PlaceHold { product_id, qty };
        let _claim = self.claim(key)?;
        in_transaction!(self, TxMode::Write, "place_hold", |tx| async {
            if let Some(record) = replay(&mut tx, key, &request).await? {
                let hold_id = HoldId(record.resource_id);
                let hold = tx.hold(hold_id, false).await?;
                let hold = hold.ok_or_else(|| lost_resource(&record))?;
                let value = HoldPlaced {
                    hold,
                    holds_released: Vec::new(),
                };
                return Ok::<_, ServiceError>(Keyed {
                    value,
                    replayed: true,
                });
            }
            let (mut placed, holds_released) =
                self.grant_holds(&mut tx, product_id, &[qty]).await?;
            let hold = placed.pop().unwrap_or(Err(Rejection::InvalidQty { qty }))?;
            if let Some(key) = key {
                let record = RequestRecord {
                    key: key.clone(),
                    request,
                    resource_id: hold.id.0,
                    created: true,
                    created_at: hold.created_at,
                };
                tx.insert_request_key(&record).await?;
            }
            let value = HoldPlaced {
                hold,
                holds_released,
            };
            Ok(Keyed {
                value,
                replayed: false,
            })
        })
    }

    /// Decides a batch of hold requests on one product in one transaction, granted in order, and
    /// inserts the granted holds in one statement. Returns one result per request, and the
    /// expired holds released; a batch with no grant changes nothing.
    ///
    /// # Errors
    /// [`Rejection::UnknownProduct`] for the whole batch; `Busy`; storage.
    pub async fn place_holds(
        &self,
        product_id: ProductId,
        requests: &[Qty],
    ) -> Result<(Vec<Result<Hold, Rejection>>, Vec<HoldId>), ServiceError> {
        in_transaction!(self, TxMode::Write, "place_holds", |tx| async {
            self.grant_holds(&mut tx, product_id, requests).await
        })
    }

    /// The steps of [`Service::place_holds`] inside a transaction.
    async fn grant_holds<T: Transaction>(
        &self,
        tx: &mut T,
        product_id: ProductId,
        requests: &[Qty],
    ) -> Result<(Vec<Result<Hold, Rejection>>, Vec<HoldId>), ServiceError> {
        let product = tx.lock_product(product_id).await?;
        let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
        let now = self.clock.now();
        let units_held = tx.units_held(product_id, now).await?;
        let decisions =
            hold::place_holds(&product, units_held, requests, now, self.config.hold_ttl_ms);
        let grants: Vec<_> = decisions
            .iter()
            .filter_map(|d| d.as_ref().ok().copied())
            .collect();
        if grants.is_empty() {
            // Nothing granted: the rollback keeps even the expired holds as they were.
            let rejected = decisions
                .into_iter()
                .map(|d| d.map(|_| unreachable_grant()));
            return Ok((rejected.collect(), Vec::new()));
        }
        let released = tx.release_expired(product_id, now).await?;
        let mut holds = tx.insert_holds(product_id, &grants).await?.into_iter();
        let placed = decisions
            .into_iter()
            .map(|decision| match decision {
                Ok(_) => holds.next().ok_or(Rejection::InvalidQty { qty: Qty::ZERO }),
                Err(rejection) => Err(rejection),
            })
            .collect();
        Ok((placed, released))
    }

    /// A hold and how it looks now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; storage.
    pub async fn hold(&self, id: HoldId) -> Result<(Hold, HoldView), ServiceError> {
        in_transaction!(self, TxMode::Read, "hold", |tx| async {
            let hold = tx.hold(id, false).await?;
            let hold = hold.ok_or(ServiceError::NotFound {
                what: "hold",
                id: id.0,
            })?;
            let view = hold.view(self.clock.now());
            Ok::<_, ServiceError>((hold, view))
        })
    }

    /// Turns a hold into an order, or answers the order it already became.
    ///
    /// # Errors
    /// The core's rejection (unknown, released or expired hold); `Busy`; storage.
    pub async fn place_order(&self, hold_id: HoldId) -> Result<OrderPlaced, ServiceError> {
        Ok(self.place_order_keyed(None, hold_id).await?.value)
    }

    /// Turns a hold into an order, at most once per idempotency key: under a key that answered
    /// this request before, answers the same order (as it is now) and changes nothing.
    ///
    /// # Errors
    /// As [`Service::place_order`], and [`Rejection::IdempotencyKeyReused`] for a key used with
    /// another request, [`ServiceError::KeyInFlight`] for a key still running on this server.
    pub async fn place_order_keyed(
        &self,
        key: Option<&IdempotencyKey>,
        hold_id: HoldId,
    ) -> Result<Keyed<OrderPlaced>, ServiceError> {
        let window_ms = self.config.payment_window_ms;
        order::validate_payment_window(window_ms)?;
        let request = KeyedRequest::PlaceOrder { hold_id };
        let _claim = self.claim(key)?;
        in_transaction!(self, TxMode::Write, "place_order", |tx| async {
            if let Some(record) = replay(&mut tx, key, &request).await? {
                let order = tx.order(OrderId(record.resource_id), false).await?;
                let order = order.ok_or_else(|| lost_resource(&record))?;
                let value = OrderPlaced {
                    order,
                    created: record.created,
                };
                return Ok::<_, ServiceError>(Keyed {
                    value,
                    replayed: true,
                });
            }
            let (hold, product) = lock_hold(&mut tx, hold_id).await?;
            let hold = hold.ok_or(Rejection::UnknownHold { hold_id })?;
            let now = self.clock.now();
            let value = match order::place_order(&hold, &product, now, window_ms)? {
                OrderDecision::Existing(order_id) => {
                    let order = tx
                        .order(order_id, false)
                        .await?
                        .ok_or_else(|| lost(order_id))?;
                    OrderPlaced {
                        order,
                        created: false,
                    }
                }
                OrderDecision::Create(new) => {
                    let order = tx.insert_order(&new).await?;
                    let (hold_state, stock) = order::consume(&product, &order);
                    tx.set_hold_state(hold.id, hold_state).await?;
                    tx.set_stock(product.id, stock, product.units_received)
                        .await?;
                    OrderPlaced {
                        order,
                        created: true,
                    }
                }
            };
            if let Some(key) = key {
                let record = RequestRecord {
                    key: key.clone(),
                    request,
                    resource_id: value.order.id.0,
                    created: value.created,
                    created_at: now,
                };
                tx.insert_request_key(&record).await?;
            }
            Ok(Keyed {
                value,
                replayed: false,
            })
        })
    }

    /// An order.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; storage.
    pub async fn order(&self, id: OrderId) -> Result<Order, ServiceError> {
        in_transaction!(self, TxMode::Read, "order", |tx| async {
            let order = tx.order(id, false).await?;
            order.ok_or(ServiceError::NotFound {
                what: "order",
                id: id.0,
            })
        })
    }

    /// Applies a payment webhook, at most once per idempotency key: its record and its effect
    /// commit together.
    ///
    /// # Errors
    /// [`Rejection::IdempotencyKeyReused`]; `Busy`; storage.
    pub async fn apply_webhook(
        &self,
        payload: &WebhookPayload,
    ) -> Result<WebhookAnswer, ServiceError> {
        in_transaction!(self, TxMode::Write, "apply_webhook", |tx| async {
            let (hold, product) = match lock_hold(&mut tx, payload.hold_id).await {
                Ok((hold, product)) => (hold, Some(product)),
                Err(ServiceError::Rejected(Rejection::UnknownHold { .. })) => (None, None),
                Err(error) => return Err(error),
            };
            let mut order = match hold.as_ref().map(|h| h.state) {
                Some(HoldState::Consumed(order_id)) => Some(
                    tx.order(order_id, true)
                        .await?
                        .ok_or_else(|| lost(order_id))?,
                ),
                _ => None,
            };
            let record = tx.lock_webhook(&payload.key).await?;
            let now = self.clock.now();
            let hold_and_product = hold.as_ref().zip(product.as_ref());
            let decision = payment::decide_webhook(
                record.as_ref(),
                payload,
                hold_and_product,
                order.as_ref(),
                now,
            )?;
            let (result, order_id, effect) = match decision {
                WebhookDecision::Replay(record) => {
                    let order = match record.order_id {
                        Some(id) => tx.order(id, false).await?,
                        None => None,
                    };
                    return Ok::<_, ServiceError>(WebhookAnswer {
                        record,
                        replayed: true,
                        order,
                    });
                }
                WebhookDecision::New {
                    result,
                    order_id,
                    effect,
                } => (result, order_id, effect),
            };
            if let Some(product) = &product {
                order = write_webhook_effect(&mut tx, product, order, effect).await?;
            }
            let record = WebhookRecord {
                key: payload.key.clone(),
                hold_id: payload.hold_id,
                status: payload.status,
                fingerprint: payload.fingerprint(),
                result,
                order_id: order.as_ref().map(|o| o.id).or(order_id),
                received_at: now,
            };
            tx.insert_webhook(&record).await?;
            Ok(WebhookAnswer {
                record,
                replayed: false,
                order,
            })
        })
    }

    /// Creates a product.
    ///
    /// # Errors
    /// [`Rejection::InvalidName`]; storage.
    pub async fn create_product(
        &self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> Result<Product, ServiceError> {
        let new = product::create_product(name, price_cents, stock)?;
        in_transaction!(self, TxMode::Write, "create_product", |tx| async {
            Ok::<_, ServiceError>(
                tx.insert_product(&new.name, new.price_cents, new.stock)
                    .await?,
            )
        })
    }

    /// Adds `qty` units to a product's stock.
    ///
    /// # Errors
    /// [`Rejection::InvalidQty`], [`Rejection::UnknownProduct`], [`Rejection::StockOverflow`];
    /// `Busy`; storage.
    pub async fn restock(
        &self,
        product_id: ProductId,
        qty: Qty,
    ) -> Result<ProductView, ServiceError> {
        product::validate_restock(qty)?;
        in_transaction!(self, TxMode::Write, "restock", |tx| async {
            let product = tx.lock_product(product_id).await?;
            let mut product = product.ok_or(Rejection::UnknownProduct { product_id })?;
            (product.stock, product.units_received) = product::restock(&product, qty)?;
            tx.set_stock(product_id, product.stock, product.units_received)
                .await?;
            let units_held = tx.units_held(product_id, self.clock.now()).await?;
            let available = product::available(&product, units_held);
            Ok::<_, ServiceError>(ProductView { product, available })
        })
    }

    /// Seeds the original service's ten demo products into an empty database: `Product i`,
    /// `price_cents = 500 * i`, `stock = max(1, 6 - i % 6)`. Does nothing when any product
    /// exists, so it is idempotent. Returns how many it created.
    ///
    /// # Errors
    /// Storage.
    pub async fn seed_demo(&self) -> Result<usize, ServiceError> {
        in_transaction!(self, TxMode::Write, "seed_demo", |tx| async {
            if tx.product_count().await? > 0 {
                return Ok::<_, ServiceError>(0);
            }
            for i in 1u32..=10 {
                let stock = Qty(6u32.saturating_sub(i % 6).max(1));
                let price = Cents(500u64.saturating_mul(u64::from(i)));
                tx.insert_product(&format!("Product {i}"), price, stock)
                    .await?;
            }
            Ok(10)
        })
    }

    /// One sweep pass: releases expired holds and cancels orders past their payment window,
    /// one product per transaction, in batches. Correctness never depends on it running.
    ///
    /// # Errors
    /// `Busy`; storage.
    pub async fn sweep(&self) -> Result<SweepReport, ServiceError> {
        let mut report = SweepReport::default();
        loop {
            let due = in_transaction!(self, TxMode::Read, "sweep_scan", |tx| async {
                Ok::<_, ServiceError>(
                    tx.products_due(self.clock.now(), SWEEP_PRODUCTS_PER_BATCH)
                        .await?,
                )
            })?;
            let batch_full = due.len() >= SWEEP_PRODUCTS_PER_BATCH as usize;
            for product_id in due {
                let (holds, orders) = self.sweep_product(product_id).await?;
                report.holds_released = report.holds_released.saturating_add(holds);
                report.orders_cancelled = report.orders_cancelled.saturating_add(orders);
            }
            if !batch_full {
                return Ok(report);
            }
        }
    }

    async fn sweep_product(&self, product_id: ProductId) -> Result<(usize, usize), ServiceError> {
        in_transaction!(self, TxMode::Write, "sweep_product", |tx| async {
            let Some(mut product) = tx.lock_product(product_id).await? else {
                return Ok::<_, ServiceError>((0, 0));
            };
            let now = self.clock.now();
            let released = tx.release_expired(product_id, now).await?;
            let overdue = tx.lock_overdue_orders(product_id, now).await?;
            for order in &overdue {
                product.stock = order::cancel(&product, order);
                tx.set_order_status(order.id, OrderStatus::Cancelled)
                    .await?;
            }
            if !overdue.is_empty() {
                tx.set_stock(product_id, product.stock, product.units_received)
                    .await?;
            }
            Ok((released.len(), overdue.len()))
        })
    }

    /// Every row, read in one transaction.
    ///
    /// # Errors
    /// Storage.
    pub async fn dump(&self) -> Result<Dump, ServiceError> {
        in_transaction!(self, TxMode::Read, "dump", |tx| async {
            Ok::<_, ServiceError>(tx.dump().await?)
        })
    }
}

/// Locks the key's record, if there is a key, and decides it: `Some(record)` when the key
/// answered this very request before.
async fn replay<T: Transaction>(
    tx: &mut T,
    key: Option<&IdempotencyKey>,
    request: &KeyedRequest,
) -> Result<Option<RequestRecord>, ServiceError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let record = tx.lock_request_key(key).await?;
    match request::decide_request_key(record.as_ref(), key, request)? {
        KeyDecision::Fresh => Ok(None),
        KeyDecision::Replay(record) => Ok(Some(record)),
    }
}

/// Reads a hold, then locks its product and the hold, in the global lock order. `Ok((None, _))`
/// never happens: an unknown hold is [`Rejection::UnknownHold`].
async fn lock_hold<T: Transaction>(
    tx: &mut T,
    hold_id: HoldId,
) -> Result<(Option<Hold>, Product), ServiceError> {
    let hold = tx.hold(hold_id, false).await?;
    let hold = hold.ok_or(Rejection::UnknownHold { hold_id })?;
    let product = tx.lock_product(hold.product_id).await?;
    let product = product.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "hold {hold_id} names missing product {}",
            hold.product_id
        ))
    })?;
    // Read again under the product's lock: the first read only found which product to lock.
    let hold = tx.hold(hold_id, true).await?;
    Ok((hold, product))
}

/// Writes a new webhook's effect; returns the order concerned as it is afterwards.
async fn write_webhook_effect<T: Transaction>(
    tx: &mut T,
    product: &Product,
    order: Option<Order>,
    effect: WebhookEffect,
) -> Result<Option<Order>, ServiceError> {
    match effect {
        WebhookEffect::None => Ok(order),
        WebhookEffect::PayOrder(order_id) => {
            tx.set_order_status(order_id, OrderStatus::Paid).await?;
            Ok(order.map(|o| Order {
                status: OrderStatus::Paid,
                ..o
            }))
        }
        WebhookEffect::CancelOrder(order_id) => {
            let order = order.ok_or_else(|| lost(order_id))?;
            let stock = order::cancel(product, &order);
            tx.set_stock(product.id, stock, product.units_received)
                .await?;
            tx.set_order_status(order_id, OrderStatus::Cancelled)
                .await?;
            Ok(Some(Order {
                status: OrderStatus::Cancelled,
                ..order
            }))
        }
        WebhookEffect::CreatePaidOrder(new) => {
            let order = tx.insert_order(&new).await?;
            let (hold_state, stock) = order::consume(product, &order);
            tx.set_hold_state(new.hold_id, hold_state).await?;
            tx.set_stock(product.id, stock, product.units_received)
                .await?;
            Ok(Some(order))
        }
        WebhookEffect::ReleaseHold(hold_id, reason) => {
            tx.set_hold_state(hold_id, HoldState::Released(reason))
                .await?;
            Ok(order)
        }
    }
}

fn lost(order_id: OrderId) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(format!(
        "order {order_id} named but missing"
    )))
}

fn lost_resource(record: &RequestRecord) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(format!(
        "idempotency key {} names missing {} {}",
        record.key,
        record.request.name(),
        record.resource_id
    )))
}

/// The `Ok` type of an all-rejected batch; never constructed.
fn unreachable_grant() -> Hold {
    unreachable!("a batch with no grant has only rejections")
}
