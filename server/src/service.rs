//! The service layer: one transaction script for every command, over a [`Storage`], and the
//! group committer that shares its transactions between the requests that arrive together.
//!
//! The script ([`Service::execute_batch`]) opens a transaction, loads the rows the batch's
//! [`Plan`] asks for, each with its lock, in the global order ([`flashsale_core::locks`]: request
//! keys, products, their holds and orders, webhook records), reads the clock, lets the core
//! [`execute`] the commands in arrival order, writes the one write-set it returns and commits
//! once. No business rule is decided here: every `if` that matters is in `flashsale-core`. A
//! refused command writes nothing, and the others still commit. Contention (deadlocks, lock-wait
//! timeouts, Galera certification failures, busy databases, a key taken by a concurrent insert)
//! and a connection lost before the commit retry the whole script a bounded number of times, then
//! answer [`ServiceError::Busy`] (or the lost connection). A connection lost while committing is
//! never retried: the transaction may have committed.
//!
//! Requests that arrive while a transaction is in flight queue up (`flashsale_sync::batch`), and
//! the next transaction takes up to `batch_max` of them, any mix of products and kinds; answers
//! go out only after the commit. A batch that fails on one poisoned command (a corrupt row the
//! database refuses) is decided again one command at a time, so only that request gets the error.
//!
//! This module names neither sqlx nor warp, and its only runtime dependency is `tokio` through
//! madsim-tokio, so the simulator runs it unchanged under `--cfg madsim`.

use std::borrow::Cow;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use flashsale_core::product;
use flashsale_core::rows::hold::HOLD_TTL_MS_DEFAULT;
use flashsale_core::rows::order::PAYMENT_WINDOW_MS_DEFAULT;
use flashsale_core::{
    Cents, Command, Hold, HoldId, HoldView, ID_MAX, IdempotencyKey, Load, Loaded, Order, OrderId,
    Outcome, Plan, Product, ProductId, Qty, Refusal, Rejection, Rows, Timestamp, Violation,
    WebhookPayload, WebhookRecord, execute,
};
use flashsale_core::{hold, order};
use flashsale_sync::batch::{Batches, Waiting};
use flashsale_sync::cache::{Moment, ProductCache};
use flashsale_sync::keys::{Claim, KeysInFlight};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::clock::Clock;
use crate::store::{Dump, RecordKind, Storage, StoreError, Transaction, TxMode};

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
/// How long a client request's idempotency-key record is kept, by default: a day.
pub const REQUEST_KEY_RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1_000;
/// How long a webhook record is kept, by default: 30 days, past any provider's redeliveries.
pub const WEBHOOK_RETENTION_MS_DEFAULT: u64 = 30 * 24 * 60 * 60 * 1_000;
/// How many records one purge transaction deletes at most.
pub const PURGE_BATCH: u32 = 500;

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
    /// How many commands may wait for the next transaction; past it,
    /// [`ServiceError::Overloaded`].
    pub queue_max: usize,
    /// How long a product's cached availability may be served (writes of other instances are
    /// seen at most this late); 0 turns the cache off.
    pub cache_staleness_ms: u64,
    /// How long the sweeper keeps a client request's idempotency-key record; `u64::MAX` keeps
    /// them all.
    pub request_key_retention_ms: u64,
    /// How long the sweeper keeps a webhook record; `u64::MAX` keeps them all.
    pub webhook_retention_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hold_ttl_ms: HOLD_TTL_MS_DEFAULT,
            payment_window_ms: PAYMENT_WINDOW_MS_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            batch_max: usize::from(BATCH_MAX_DEFAULT),
            queue_max: usize::from(QUEUE_MAX_DEFAULT),
            cache_staleness_ms: CACHE_STALENESS_MS_DEFAULT,
            request_key_retention_ms: REQUEST_KEY_RETENTION_MS_DEFAULT,
            webhook_retention_ms: WEBHOOK_RETENTION_MS_DEFAULT,
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

/// A queued request's context, carried from its own task to the batch that decides it.
pub type BatchTag = Box<dyn std::any::Any + Send>;

/// A batch's transaction script, boxed so a [`BatchScope`] can wrap it.
pub type BatchRun<'a> = Pin<Box<dyn Future<Output = Vec<Answer>> + Send + 'a>>;

/// Lets a driver carry each queued request's context to the transaction that decides it, which
/// runs on the drainer's task. The server needs none; the simulator uses it so its storage can
/// tell which requests a batch's transaction served.
pub trait BatchScope: Send + Sync + std::fmt::Debug + 'static {
    /// Called on the request's own task as it joins the queue.
    fn capture(&self) -> Option<BatchTag>;
    /// Wraps a batch's transaction, given its requests' tags in arrival order.
    fn scope<'a>(&self, tags: Vec<Option<BatchTag>>, run: BatchRun<'a>) -> BatchRun<'a>;
}

/// A queued request's way back, and its driver's context.
#[derive(Debug)]
pub struct Reply {
    sender: oneshot::Sender<Answer>,
    tag: Option<BatchTag>,
}

/// A product with its units available at the instant it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductView {
    /// The product.
    pub product: Product,
    /// Units available to a new hold.
    pub available: Qty,
}

/// A granted hold and the expired holds its decision released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldPlaced {
    /// The hold.
    pub hold: Hold,
    /// Expired holds of the product this grant released: the first grant of a batch on a
    /// product lists the ones released, as the requests one by one would, and later grants none.
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
    /// Request-key and webhook records purged past their retention.
    pub records_purged: u64,
}

/// The transaction scripts, over a storage and a clock.
#[derive(Clone, Debug)]
pub struct Service<S, C> {
    store: S,
    clock: C,
    config: Config,
    /// Commands waiting for the next transaction, decided together.
    batches: Arc<Batches<Command, Reply>>,
    /// The driver's hook around batch transactions, if it has one.
    batch_scope: Option<Arc<dyn BatchScope>>,
    /// What `product` answered, per product, for GET storms.
    cache: Arc<ProductCache<ProductView>>,
    /// Idempotency keys of requests running on this server.
    keys_in_flight: Arc<KeysInFlight>,
}

/// What one run of a batch's script came to.
enum Decided {
    /// Committed (or nothing to commit): one answer per command.
    Answers(Vec<Answer>),
    /// Rolled back: the command at this index missed a hold an earlier command of the batch
    /// inserted ([`flashsale_core::Executed::stale`]), so the batch is decided again in two parts.
    SplitAt(usize),
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
            match $service.settle($what, attempt, result) {
                ControlFlow::Break(settled) => break settled,
                ControlFlow::Continue(()) => backoff(attempt).await,
            }
        }
    }};
}

/// Counts a committed batch's answers: its size, and its hold requests' grants, refusals by
/// code and the expired holds released.
fn count_answers(commands: &[Command], answers: &[Answer]) {
    metrics::histogram!("flashsale_batch_size").record(commands.len() as f64);
    let mut released = 0usize;
    let holds = commands
        .iter()
        .zip(answers)
        .filter(|(command, _)| matches!(command, Command::PlaceHold { .. }));
    for (_, answer) in holds {
        match answer {
            Ok(Outcome::HoldPlaced {
                holds_released,
                replayed: false,
                ..
            }) => {
                metrics::counter!("flashsale_holds_granted_total").increment(1);
                released = released.saturating_add(holds_released.len());
            }
            Err(ServiceError::Rejected(rejection)) => {
                metrics::counter!("flashsale_holds_rejected_total", "code" => rejection.code())
                    .increment(1);
            }
            Ok(_) | Err(_) => {}
        }
    }
    metrics::counter!("flashsale_holds_released_total", "reason" => "expired")
        .increment(released as u64);
}

/// Whether an id is above [`ID_MAX`]: no row has it, and it must not reach a storage, which
/// could not keep it exactly.
fn beyond_storage(id: u64) -> bool {
    id > ID_MAX
}

/// Waits a little longer after each failed attempt, so contenders spread out.
async fn backoff(attempt: u32) {
    tokio::time::sleep(crate::backoff::delay(attempt)).await;
}

/// Whether a whole batch's failure may come from one of its commands, so deciding them one at
/// a time gives each its own answer: the database refused a value or found a row corrupt. Not
/// contention, a lost or unknown commit, or an unreachable database, which every command of the
/// batch shares.
fn poisoned(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Violated(_)
            | ServiceError::Store(StoreError::Corrupt(_) | StoreError::Database(_))
    )
}

/// The answer a request's task gets when the batch's task ended without answering it: the
/// batch may have committed.
fn unanswered() -> Answer {
    Err(StoreError::CommitUnknown("the batch ended without an answer".into()).into())
}

/// A batch taken from the queue, as its commands and their replies; the queue gauge moves down
/// by its size.
fn taken(batch: Vec<Waiting<Command, Reply>>) -> (Vec<Command>, Vec<Reply>) {
    let size = f64::from(u32::try_from(batch.len()).unwrap_or(u32::MAX));
    metrics::gauge!("flashsale_queue_waiting").decrement(size);
    batch.into_iter().map(|w| (w.command, w.reply)).unzip()
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
            batches: Arc::new(Batches::new(config.batch_max, config.queue_max)),
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
            let available = product::available(&read.product, read.units_expired)?;
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
        hold::validate_request(qty, ttl_ms)?;
        tracing::Span::current().record("product_id", tracing::field::display(product_id));
        if beyond_storage(product_id.0) {
            return Err(Rejection::UnknownProduct { product_id }.into());
        }
        let _claim = self.claim(key)?;
        let command = Command::PlaceHold {
            product_id,
            qty,
            ttl_ms,
            key: key.cloned(),
        };
        match self.execute(command).await? {
            Outcome::HoldPlaced {
                hold,
                holds_released,
                replayed,
            } => Ok(Keyed {
                value: HoldPlaced {
                    hold,
                    holds_released,
                },
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
        order::validate_payment_window(payment_window_ms)?;
        if beyond_storage(hold_id.0) {
            return Err(Rejection::UnknownHold { hold_id }.into());
        }
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
        // Refused rather than recorded as unmatched: its record could not keep the id exactly,
        // and would then not match its own redelivery.
        if beyond_storage(payload.hold_id.0) {
            return Err(Rejection::UnknownHold {
                hold_id: payload.hold_id,
            }
            .into());
        }
        match self.execute(Command::ApplyWebhook(payload.clone())).await? {
            Outcome::WebhookApplied {
                record,
                replayed,
                order,
            } => Ok(WebhookAnswer {
                record,
                replayed,
                order,
            }),
            other => Err(mismatched(&other)),
        }
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
        if beyond_storage(product_id.0) {
            return Err(Rejection::UnknownProduct { product_id }.into());
        }
        match self.execute(Command::Restock { product_id, qty }).await? {
            Outcome::Restocked { product, available } => Ok(ProductView { product, available }),
            other => Err(mismatched(&other)),
        }
    }

    /// Decides one command: in the next transaction with whatever else arrives meanwhile, or
    /// alone in this task's own transaction when `batch_max` is 1.
    ///
    /// # Errors
    /// [`ServiceError::Overloaded`] at once when the queue is full; the command's own answer
    /// otherwise.
    pub async fn execute(&self, command: Command) -> Answer {
        let answer = self.decide(command).await;
        // The request's lines from here on (its log line above all) name the product, when the
        // driver's span has the field (the server's request span does).
        if let Some(product_id) = answer.as_ref().ok().and_then(Outcome::product) {
            tracing::Span::current().record("product_id", tracing::field::display(product_id));
        }
        answer
    }

    async fn decide(&self, command: Command) -> Answer {
        if self.config.batch_max <= 1 {
            let mut answers = self.execute_batch(std::slice::from_ref(&command)).await;
            return answers.pop().unwrap_or_else(unanswered);
        }
        let (sender, answer) = oneshot::channel();
        let tag = self.batch_scope.as_ref().and_then(|scope| scope.capture());
        let waiting = Waiting {
            command,
            reply: Reply { sender, tag },
        };
        // Counted before it is queued: the drainer may take it at once.
        let queue_waiting = metrics::gauge!("flashsale_queue_waiting");
        queue_waiting.increment(1.0);
        match self.batches.push(waiting) {
            Err(waiting) => {
                queue_waiting.decrement(1.0);
                return Err(ServiceError::Overloaded { waiting });
            }
            Ok(true) => {
                // The drainer runs on its own task: a caller that goes away (a closed
                // connection) must not take the other callers' answers with it.
                let service = self.clone();
                tokio::spawn(async move { service.drain().await });
            }
            Ok(false) => {}
        }
        answer.await.unwrap_or_else(|_| unanswered())
    }

    /// Decides the waiting commands, batch after batch, until none wait. Each batch's answers go
    /// out only after its commit, and the next batch starts at once, so the database works on
    /// one batch while the last one's callers read their answers.
    async fn drain(&self) {
        while let Some(batch) = self.batches.next_batch() {
            let (commands, replies) = taken(batch);
            let (senders, tags): (Vec<_>, Vec<_>) =
                replies.into_iter().map(|r| (r.sender, r.tag)).unzip();
            let run: BatchRun<'_> = Box::pin(self.execute_batch(&commands));
            let answers = match &self.batch_scope {
                Some(scope) => scope.scope(tags, run).await,
                None => run.await,
            };
            let away = answers.iter().find_map(|answer| match answer {
                Err(error @ ServiceError::Store(StoreError::Unavailable(_))) => Some(error.clone()),
                _ => None,
            });
            for (sender, answer) in senders.into_iter().zip(answers) {
                let _ = sender.send(answer);
            }
            if let Some(error) = away {
                self.refuse_waiting(&error);
            }
        }
    }

    /// Answers every command waiting now with `error`, the database found away: each would
    /// otherwise wait out its own connection timeout behind the ones before it, where one
    /// transaction per request would have waited once. The next batch tries the database again.
    fn refuse_waiting(&self, error: &ServiceError) {
        let mut left = self.batches.waiting();
        while left > 0 {
            let Some(batch) = self.batches.next_batch() else {
                return;
            };
            left = left.saturating_sub(batch.len());
            let (_, replies) = taken(batch);
            for reply in replies {
                let _ = reply.sender.send(Err(error.clone()));
            }
        }
    }

    /// The one transaction script, for a batch of any commands: plan their row loads in the
    /// global lock order, load, [`execute`], write, commit. Returns one answer per command, in
    /// order. A batch the core finds stale is decided again in two parts; one whose transaction
    /// fails on what may be one poisoned command is decided again one command at a time.
    pub fn execute_batch<'a>(
        &'a self,
        commands: &'a [Command],
    ) -> Pin<Box<dyn Future<Output = Vec<Answer>> + Send + 'a>> {
        let span = tracing::info_span!("batch", commands = commands.len());
        Box::pin(
            async move {
                match self.transact(commands).await {
                    Ok(Decided::Answers(answers)) => answers,
                    Ok(Decided::SplitAt(at)) => {
                        let (before, after) = commands.split_at(at);
                        let mut answers = self.execute_batch(before).await;
                        answers.extend(self.execute_batch(after).await);
                        answers
                    }
                    Err(error) if commands.len() > 1 && poisoned(&error) => {
                        tracing::warn!(%error, "batch failed; deciding its commands one by one");
                        let mut answers = Vec::with_capacity(commands.len());
                        for command in commands {
                            let alone = self.execute_batch(std::slice::from_ref(command));
                            answers.extend(alone.await);
                        }
                        answers
                    }
                    Err(error) => commands.iter().map(|_| Err(error.clone())).collect(),
                }
            }
            .instrument(span),
        )
    }

    /// Runs the batch's script until it commits, rolls back stale, or fails for good.
    async fn transact(&self, commands: &[Command]) -> Result<Decided, ServiceError> {
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let result = self.transact_once(commands).await;
            match self.settle("batch", attempt, result) {
                ControlFlow::Break(settled) => return settled,
                ControlFlow::Continue(()) => backoff(attempt).await,
            }
        }
    }

    async fn transact_once(&self, commands: &[Command]) -> Result<Decided, ServiceError> {
        let mut tx = self.store.begin(TxMode::Write).await?;
        let plan = Plan::new(commands);
        let (rows, now) = load(&mut tx, &plan, &self.clock).await?;
        let executed = execute(&rows, now, commands);
        let inserted = tx.write(&executed.writes).await?;
        if let Some(at) = executed.stale(&inserted) {
            // Dropped without a commit: rolled back.
            return Ok(Decided::SplitAt(at));
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(commands.len());
        for answer in executed.answers {
            // An id the storage did not return fails the whole batch, before its commit.
            answers.push(match answer {
                Ok(outcome) => Ok(outcome.resolve(&inserted)?),
                Err(refusal) => Err(refusal.into()),
            });
        }
        tx.commit().await?;
        // After the commit and before any caller is answered: each reads its own writes.
        for counters in &executed.writes.products {
            self.cache.invalidate(counters.id);
        }
        count_answers(commands, &answers);
        Ok(Decided::Answers(answers))
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
                break;
            }
        }
        report.records_purged = self.purge_records().await?;
        metrics::counter!("flashsale_sweep_holds_released_total")
            .increment(report.holds_released as u64);
        metrics::counter!("flashsale_sweep_orders_cancelled_total")
            .increment(report.orders_cancelled as u64);
        metrics::counter!("flashsale_sweep_records_purged_total").increment(report.records_purged);
        Ok(report)
    }

    /// Deletes request-key and webhook records older than their retention, in transactions of
    /// at most [`PURGE_BATCH`], oldest cut-off by this instance's clock.
    async fn purge_records(&self) -> Result<u64, ServiceError> {
        let now = self.clock.now().as_ms();
        let mut purged: u64 = 0;
        for (kind, retention_ms) in [
            (
                RecordKind::RequestKeys,
                self.config.request_key_retention_ms,
            ),
            (RecordKind::Webhooks, self.config.webhook_retention_ms),
        ] {
            let before = Timestamp(now.saturating_sub(retention_ms));
            if before == Timestamp(0) {
                continue;
            }
            loop {
                let deleted = in_transaction!(self, TxMode::Write, "purge_records", |tx| async {
                    Ok::<_, ServiceError>(tx.purge_records(kind, before, PURGE_BATCH).await?)
                })?;
                purged = purged.saturating_add(deleted);
                if deleted < u64::from(PURGE_BATCH) {
                    break;
                }
            }
        }
        Ok(purged)
    }

    /// Sweeps one product in a transaction of its own, through the same script as every command.
    async fn sweep_product(&self, product_id: ProductId) -> Result<(usize, usize), ServiceError> {
        let command = Command::SweepProduct { product_id };
        let swept = self
            .execute_batch(std::slice::from_ref(&command))
            .instrument(tracing::info_span!("sweep", %product_id))
            .await
            .pop()
            .unwrap_or_else(unanswered)?;
        let Outcome::Swept {
            holds_released,
            orders_cancelled,
        } = swept
        else {
            return Err(mismatched(&swept));
        };
        let swept = (holds_released.len(), orders_cancelled.len());
        if swept != (0, 0) {
            tracing::info!(
                %product_id,
                holds_released = swept.0,
                orders_cancelled = swept.1,
                "swept"
            );
        }
        Ok(swept)
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

/// Loads a plan's rows, each kind in one read with the locks the plan asks for, and reads the
/// clock once: when the plan first needs the time (to find expired holds or overdue orders), or
/// after its last load, so a batch that waited for a lock decides at the time it got it.
async fn load<T: Transaction, C: Clock>(
    tx: &mut T,
    plan: &Plan,
    clock: &C,
) -> Result<(Rows<'static>, Timestamp), StoreError> {
    let mut rows = Rows::default();
    let mut now = None;
    while let Some(load) = plan.next(&rows) {
        let loaded = match &load {
            Load::RequestKeys(keys) => Loaded::RequestKeys(tx.lock_request_keys(keys).await?),
            Load::FindHolds(ids) => Loaded::Holds(tx.holds(ids, false).await?),
            Load::Products(ids) => {
                let products = tx.lock_products(ids).await?;
                Loaded::Products(products.into_iter().map(Cow::Owned).collect())
            }
            Load::Holds(ids) => {
                let ids: Vec<HoldId> = ids.iter().map(|&(_, id)| id).collect();
                Loaded::Holds(tx.holds(&ids, true).await?)
            }
            Load::Orders(ids) => {
                let ids: Vec<OrderId> = ids.iter().map(|&(_, id)| id).collect();
                Loaded::Orders(tx.orders(&ids, true).await?)
            }
            Load::ExpiredHolds(ids) => {
                let now = *now.get_or_insert_with(|| clock.now());
                Loaded::Holds(tx.expired_holds(ids, now).await?)
            }
            Load::OverdueOrders(ids) => {
                let now = *now.get_or_insert_with(|| clock.now());
                Loaded::Orders(tx.lock_overdue_orders(ids, now).await?)
            }
            Load::Webhooks(keys) => {
                let records = tx.lock_webhooks(keys).await?;
                Loaded::Webhooks(records.into_iter().map(Cow::Owned).collect())
            }
        };
        rows.put(load, loaded);
    }
    let now = now.unwrap_or_else(|| clock.now());
    Ok((rows, now))
}
