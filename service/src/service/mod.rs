//! The service's types and its entry points, one per request (each validates,
//! then runs one command through the committer or one small script of its own); `committer` is
//! the group committer and the batch's transaction script; `sweep` the sweeper's passes.

mod committer;
mod sweep;

use std::ops::ControlFlow;
use std::sync::Arc;

use flashsale_core::ids::storable;
use flashsale_core::product;
use flashsale_core::rows::hold::HOLD_TTL_MS_DEFAULT;
use flashsale_core::rows::order::PAYMENT_WINDOW_MS_DEFAULT;
use flashsale_core::{
    Cents, Command, Folded, Hold, HoldId, HoldView, IdempotencyKey, Order, OrderId, Outcome,
    Product, ProductId, Qty, Refusal, Rejection, Timestamp, Violation, WebhookChange,
    WebhookPayload, WebhookRecord,
};
use flashsale_sync::batch::Batches;
use flashsale_sync::cache::{Moment, ProductCache};
use flashsale_sync::keys::{Claim, KeysInFlight};

pub use self::committer::{BatchRun, BatchScope, BatchTag, Reply};
use crate::clock::Clock;
use crate::store::{Dump, Storage, StoreError, Transaction, TxMode};

/// How many times a script runs before contention is answered as [`ServiceError::Busy`].
pub const ATTEMPTS_MAX_DEFAULT: u32 = 8;
/// How many products one sweep transaction batch looks at.
pub const SWEEP_PRODUCTS_PER_BATCH: u32 = 100;
/// How many commands one transaction decides at most, by default.
pub const BATCH_MAX_DEFAULT: u16 = 128;
/// How long a cached product may be served, by default: one second.
pub const CACHE_STALENESS_MS_DEFAULT: u64 = 1_000;
/// How many commands may wait for the next transaction before new ones are refused, by default.
pub const QUEUE_MAX_DEFAULT: u16 = 4_096;
/// How many committers an instance runs, by default: one. Two cost more CPU per request than
/// they won on 2 cores (docs/PERFORMANCE.md, "Two committers").
pub const COMMITTERS_DEFAULT: u16 = 1;
/// The most committers an instance may run: each holds a connection while its batch runs.
pub const COMMITTERS_MAX: u16 = 64;
/// How long a client request's idempotency-key record is kept, by default: a day.
pub const REQUEST_KEY_RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1_000;
/// How long a webhook record is kept, by default: 30 days, past any provider's redeliveries.
pub const WEBHOOK_RETENTION_MS_DEFAULT: u64 = 30 * 24 * 60 * 60 * 1_000;
/// How many records one purge transaction deletes at most.
pub const PURGE_BATCH: u32 = 500;
/// How many hold rows, and how many orders, one sweep transaction of a product retires and
/// cancels at most, by default.
pub const SWEEP_CHUNK_DEFAULT: u32 = 1_000;
/// The largest chunk a sweep transaction may take: its rows are bound in statements of at most
/// 1,024 ids each, and its product's lock is held while they are written.
pub const SWEEP_CHUNK_MAX: u32 = 10_000;

/// The service's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a hold lasts.
    pub hold_ttl_ms: u64,
    /// How long an order waits for its payment.
    pub payment_window_ms: u64,
    /// How many times a script runs under contention.
    pub attempts_max: u32,
    /// How many commands (holds, orders, webhooks, restocks, on any products) one transaction
    /// decides at most; 1 runs one transaction per request, each in its request's own task.
    pub batch_max: usize,
    /// How many commands may wait for the next transaction, over all committers; past it,
    /// [`ServiceError::Overloaded`].
    pub queue_max: usize,
    /// How many group committers run, each with its own queue and at most one transaction in
    /// flight: a command goes to the one its product (or its hold) falls to, so the committers'
    /// batches touch different rows and their transactions run side by side. 1 runs one.
    pub committers: usize,
    /// How long a product's cached availability may be served (writes of other instances are
    /// seen at most this late); 0 turns the cache off.
    pub cache_staleness_ms: u64,
    /// How long the sweeper keeps a client request's idempotency-key record; `u64::MAX` keeps
    /// them all.
    pub request_key_retention_ms: u64,
    /// How long the sweeper keeps a webhook record; `u64::MAX` keeps them all.
    pub webhook_retention_ms: u64,
    /// How many hold rows and orders one sweep transaction retires and cancels at most, in
    /// `1..=SWEEP_CHUNK_MAX`.
    pub sweep_chunk: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hold_ttl_ms: HOLD_TTL_MS_DEFAULT,
            payment_window_ms: PAYMENT_WINDOW_MS_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            batch_max: usize::from(BATCH_MAX_DEFAULT),
            queue_max: usize::from(QUEUE_MAX_DEFAULT),
            committers: usize::from(COMMITTERS_DEFAULT),
            cache_staleness_ms: CACHE_STALENESS_MS_DEFAULT,
            request_key_retention_ms: REQUEST_KEY_RETENTION_MS_DEFAULT,
            webhook_retention_ms: WEBHOOK_RETENTION_MS_DEFAULT,
            sweep_chunk: SWEEP_CHUNK_DEFAULT,
        }
    }
}

/// Why a request failed.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// Too many commands wait for this server's next transaction already; the client may retry
    /// later.
    #[error("{waiting} requests already wait for this server's next transaction")]
    Overloaded {
        /// Requests waiting.
        waiting: usize,
    },
    /// The rows read break an invariant; nothing was written.
    #[error("invariant violated: {0}")]
    Violated(Violation),
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for ServiceError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Rejected(rejection) => ServiceError::Rejected(rejection),
            Refusal::Violated(violation) => ServiceError::Violated(violation),
        }
    }
}

impl From<Violation> for ServiceError {
    fn from(violation: Violation) -> Self {
        ServiceError::Violated(violation)
    }
}

/// One command's answer.
pub type Answer = Result<Outcome, ServiceError>;

/// One hold request's answer.
pub type HoldAnswer = Result<Keyed<HoldPlaced>, ServiceError>;

/// A product with its units available at the instant it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductView {
    /// The product.
    pub product: Product,
    /// Units available to a new hold.
    pub available: Qty,
}

/// A granted hold and what its decision folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldPlaced {
    /// The hold.
    pub hold: Hold,
    /// What folding the product's due expiry buckets gave back to sale: the first grant of a
    /// batch on a product folds, as the requests one by one would, and later grants nothing.
    pub folded: Folded,
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
    /// What it changed besides its record, as the core decided ([`WebhookChange::None`] for a
    /// replay).
    pub change: WebhookChange,
}

/// What one sweep pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// What folding due expiry buckets gave back to sale.
    pub folded: Folded,
    /// Rows of holds expired for good retired.
    pub holds_retired: usize,
    /// Orders cancelled because their payment window closed.
    pub orders_cancelled: usize,
    /// Request-key and webhook records purged past their retention.
    pub records_purged: u64,
    /// Products given a sweep transaction.
    pub products_swept: usize,
}

/// The transaction scripts, over a storage and a clock.
#[derive(Clone, Debug)]
pub struct Service<S, C> {
    store: S,
    clock: C,
    config: Config,
    /// Commands waiting for the next transaction, decided together: one queue per committer.
    batches: Arc<[Batches<Command, Reply>]>,
    /// The driver's hook around batch transactions, if it has one.
    batch_scope: Option<Arc<dyn BatchScope>>,
    /// What `product` answered, per product, for GET storms.
    cache: Arc<ProductCache<ProductView>>,
    /// Idempotency keys of requests running on this server.
    keys_in_flight: Arc<KeysInFlight>,
}

/// Runs `$script` (an expression producing a future over `$tx`) in a transaction of `$mode`,
/// committing on success, through the one retry loop ([`Service::retrying`]).
macro_rules! in_transaction {
    ($service:expr, $mode:expr, $what:literal, |$tx:ident| $script:expr) => {{
        $service
            .retrying($what, || async {
                let mut $tx = $service.store.begin($mode).await?;
                let value = $script.await?;
                $tx.commit().await?;
                Ok(value)
            })
            .await
    }};
}
use in_transaction;

/// Whether an id is above [`ID_MAX`](flashsale_core::ID_MAX): no row has it, and a read must not take it to a
/// storage, which could not keep it exactly (the core's rule, [`storable`]).
fn beyond_storage(id: u64) -> bool {
    !storable(id)
}

/// Waits a little longer after each failed attempt, so contenders spread out.
async fn backoff(attempt: u32) {
    tokio::time::sleep(crate::backoff::delay(attempt)).await;
}

/// A command the core answered with an outcome no request of this kind gets: a bug.
fn mismatched(outcome: &Outcome) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(format!(
        "unexpected outcome {outcome:?}"
    )))
}

impl<S: Storage + Clone, C: Clock + Clone> Service<S, C> {
    /// A service over `store`, reading time from `clock`.
    pub fn new(store: S, clock: C, config: Config) -> Self {
        Service {
            store,
            clock,
            config,
            batches: committer::queues(&config),
            cache: Arc::default(),
            batch_scope: None,
            keys_in_flight: Arc::default(),
        }
    }

    /// The same service, carrying each queued request's context to its batch through `scope`.
    pub fn with_batch_scope(mut self, scope: Arc<dyn BatchScope>) -> Self {
        self.batch_scope = Some(scope);
        self
    }

    /// Marks `key` in flight on this server until the claim drops.
    fn claim(&self, key: Option<&IdempotencyKey>) -> Result<Option<Claim<'_>>, ServiceError> {
        let Some(key) = key else {
            return Ok(None);
        };
        match self.keys_in_flight.claim(key) {
            Some(claim) => Ok(Some(claim)),
            None => Err(ServiceError::KeyInFlight { key: key.clone() }),
        }
    }

    /// The storage.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The current time by this service's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs `attempt` (a whole transaction) again after a backoff while [`Service::settle`]
    /// says so: the one retry loop, for the batch's script and every other transaction.
    async fn retrying<T, F, A>(&self, what: &'static str, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> A,
        A: Future<Output = Result<T, ServiceError>>,
    {
        let mut attempts: u32 = 0;
        loop {
            attempts = attempts.saturating_add(1);
            match self.settle(what, attempts, attempt().await) {
                ControlFlow::Break(settled) => return settled,
                ControlFlow::Continue(()) => backoff(attempts).await,
            }
        }
    }

    /// What to do after a script's attempt: `Break` with its result, or `Continue` to run it
    /// again after a backoff. Contention and a connection lost before the commit are retried up
    /// to `attempts_max` attempts; everything else, a lost commit answer above all, is final.
    fn settle<T>(
        &self,
        what: &'static str,
        attempt: u32,
        result: Result<T, ServiceError>,
    ) -> ControlFlow<Result<T, ServiceError>> {
        let error = match result {
            Err(ServiceError::Store(error)) if error.is_retryable() => error,
            other => return ControlFlow::Break(other),
        };
        tracing::warn!(script = what, attempt, %error, "retrying");
        let cause = match error {
            StoreError::Connection(_) => "connection",
            _ => "contention",
        };
        metrics::counter!("flashsale_retries_total", "script" => what, "cause" => cause)
            .increment(1);
        if attempt < self.config.attempts_max {
            return ControlFlow::Continue(());
        }
        ControlFlow::Break(Err(match error {
            // The last attempt lost its connection too: the database is away.
            StoreError::Connection(_) => ServiceError::Store(error),
            _ => ServiceError::Busy { attempts: attempt },
        }))
    }

    /// A product and its units available now. Served from the cache while its entry is valid:
    /// never past the product's next hold deadline, never later than `cache_staleness_ms` after
    /// its read, and never after a write of this instance to the product.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] for an unknown product; storage failures;
    /// [`ServiceError::Violated`] when the product's counters are corrupt.
    pub async fn product(&self, id: ProductId) -> Result<ProductView, ServiceError> {
        if beyond_storage(id.0) {
            return Err(ServiceError::NotFound {
                what: "product",
                id: id.0,
            });
        }
        let now = self.clock.now();
        let moment = Moment {
            wall: now,
            monotonic_ms: self.clock.monotonic_ms(),
        };
        let caching = self.config.cache_staleness_ms > 0;
        if caching && let Some(view) = self.cache.get(id, moment) {
            metrics::counter!("flashsale_product_cache_total", "outcome" => "hit").increment(1);
            return Ok(view);
        }
        if caching {
            metrics::counter!("flashsale_product_cache_total", "outcome" => "miss").increment(1);
        }
        let generation = self.cache.generation(id);
        let (view, next_deadline) = in_transaction!(self, TxMode::Read, "product", |tx| async {
            let read = tx.product_view(id, now).await?;
            let read = read.ok_or(ServiceError::NotFound {
                what: "product",
                id: id.0,
            })?;
            let available = product::available(&read.product, read.units_due)?;
            let view = ProductView {
                product: read.product,
                available,
            };
            Ok::<_, ServiceError>((view, read.next_deadline))
        })?;
        if caching {
            let staleness_ms = self.config.cache_staleness_ms;
            let stale_at = now.saturating_add_ms(staleness_ms);
            let valid_until = next_deadline.map_or(stale_at, |at| at.min(stale_at));
            self.cache.store(
                id,
                generation,
                view.clone(),
                moment,
                valid_until,
                staleness_ms,
            );
        }
        Ok(view)
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
    /// another request, [`ServiceError::KeyInFlight`] for a key still running on this server,
    /// [`ServiceError::Overloaded`] when too many requests wait.
    pub async fn place_hold_keyed(
        &self,
        key: Option<&IdempotencyKey>,
        product_id: ProductId,
        qty: Qty,
    ) -> HoldAnswer {
        let ttl_ms = self.config.hold_ttl_ms;
        // A request refused here names its product as [`Service::execute`] names the others'.
        let refused = |error: ServiceError| {
            committer::name_product(product_id);
            error
        };
        let _claim = self.claim(key).map_err(refused)?;
        let command = Command::PlaceHold {
            product_id,
            qty,
            ttl_ms,
            key: key.cloned(),
        };
        match self.execute(command).await? {
            Outcome::HoldPlaced {
                hold,
                folded,
                replayed,
            } => Ok(Keyed {
                value: HoldPlaced { hold, folded },
                replayed,
            }),
            other => Err(mismatched(&other)),
        }
    }

    /// A hold and how it looks now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; storage.
    pub async fn hold(&self, id: HoldId) -> Result<(Hold, HoldView), ServiceError> {
        let not_found = ServiceError::NotFound {
            what: "hold",
            id: id.0,
        };
        if beyond_storage(id.0) {
            return Err(not_found);
        }
        in_transaction!(self, TxMode::Read, "hold", |tx| async {
            let hold = tx.holds(&[id], false).await?.pop();
            let hold = hold.ok_or(not_found.clone())?;
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
        let payment_window_ms = self.config.payment_window_ms;
        let _claim = self.claim(key)?;
        let command = Command::PlaceOrder {
            hold_id,
            payment_window_ms,
            key: key.cloned(),
        };
        match self.execute(command).await? {
            Outcome::OrderPlaced {
                order,
                created,
                replayed,
            } => Ok(Keyed {
                value: OrderPlaced { order, created },
                replayed,
            }),
            other => Err(mismatched(&other)),
        }
    }

    /// An order.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; storage.
    pub async fn order(&self, id: OrderId) -> Result<Order, ServiceError> {
        let not_found = ServiceError::NotFound {
            what: "order",
            id: id.0,
        };
        if beyond_storage(id.0) {
            return Err(not_found);
        }
        in_transaction!(self, TxMode::Read, "order", |tx| async {
            let order = tx.orders(&[id], false).await?.pop();
            order.ok_or(not_found.clone())
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
        match self.execute(Command::ApplyWebhook(payload.clone())).await? {
            Outcome::WebhookApplied {
                record,
                replayed,
                order,
                change,
            } => Ok(WebhookAnswer {
                record,
                replayed,
                order,
                change,
            }),
            other => Err(mismatched(&other)),
        }
    }

    /// Creates a product.
    ///
    /// # Errors
    /// [`Rejection::InvalidName`], [`Rejection::InvalidPrice`]; `Busy`; storage.
    pub async fn create_product(
        &self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> Result<Product, ServiceError> {
        let command = Command::CreateProduct {
            name: name.to_owned(),
            price_cents,
            stock,
        };
        match self.execute(command).await? {
            Outcome::ProductCreated(product) => Ok(product),
            other => Err(mismatched(&other)),
        }
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
        match self.execute(Command::Restock { product_id, qty }).await? {
            Outcome::Restocked { product, available } => Ok(ProductView { product, available }),
            other => Err(mismatched(&other)),
        }
    }

    /// Seeds the original service's demo products ([`flashsale_core::product::demo_products`])
    /// into a database without products; does nothing when any product exists, so it is
    /// idempotent. Returns how many it created.
    ///
    /// # Errors
    /// `Busy`; storage.
    pub async fn seed_demo(&self) -> Result<usize, ServiceError> {
        match self.execute(Command::SeedDemo).await? {
            Outcome::Seeded(products) => Ok(products.len()),
            other => Err(mismatched(&other)),
        }
    }

    /// Every row, read from one snapshot.
    ///
    /// # Errors
    /// Storage.
    pub async fn dump(&self) -> Result<Dump, ServiceError> {
        in_transaction!(self, TxMode::Snapshot, "dump", |tx| async {
            Ok::<_, ServiceError>(tx.dump().await?)
        })
    }
}
