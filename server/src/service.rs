//! The service layer: one transaction script per request, over a [`Storage`].
//!
//! Each script opens a transaction, loads the rows its command's [`Plan`] asks for, each with
//! its lock, in the global order ([`flashsale_core::locks`]: request keys, product, its holds
//! and orders, webhook record), reads the clock, calls the core's decision on those rows, writes
//! what the decision says and commits. No business rule is decided here: every `if` that
//! matters is in `flashsale-core`. A rejection rolls the transaction back, so it changes nothing.
//! Contention (deadlocks, lock-wait timeouts, Galera certification failures, busy databases, a key
//! taken by a concurrent insert) and a connection lost before the commit retry the whole script a
//! bounded number of times, then answer [`ServiceError::Busy`] (or the lost connection). A
//! connection lost while committing is never retried: the transaction may have committed.
//!
//! This module names neither sqlx nor warp, and its only runtime dependency is `tokio` through
//! madsim-tokio, so the simulator runs it unchanged under `--cfg madsim`.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flashsale_core::hold::{self, HOLD_TTL_MS_DEFAULT};
use flashsale_core::order::{self, PAYMENT_WINDOW_MS_DEFAULT};
use flashsale_core::payment::{self, WebhookDecision};
use flashsale_core::product;
use flashsale_core::request::{self, KeyDecision};
use flashsale_core::{
    Cents, Changes, Hold, HoldId, HoldRequest, HoldView, ID_MAX, IdempotencyKey, Inserted,
    KeyedRequest, Load, Loaded, Order, OrderId, Plan, Product, ProductId, Qty, Refusal, Rejection,
    RequestRecord, Rows, Timestamp, Violation, WebhookPayload, WebhookRecord, WriteSet,
};
use flashsale_sync::batch::{HoldQueues, Waiting};
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
/// How many hold requests for one product one transaction decides at most, by default.
pub const HOLD_BATCH_MAX_DEFAULT: u16 = 128;
/// How long a cached product may be served, by default: one second.
pub const CACHE_STALENESS_MS_DEFAULT: u64 = 1_000;
/// How many hold requests may wait for one product before new ones are refused, by default.
pub const HOLD_QUEUE_MAX_DEFAULT: u16 = 4_096;
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
    /// How many concurrent hold requests for one product one transaction decides at most;
    /// 1 runs one transaction per request.
    pub hold_batch_max: usize,
    /// How many hold requests may wait for one product; past it, [`ServiceError::Overloaded`].
    pub hold_queue_max: usize,
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
            hold_batch_max: usize::from(HOLD_BATCH_MAX_DEFAULT),
            hold_queue_max: usize::from(HOLD_QUEUE_MAX_DEFAULT),
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
    /// Too many hold requests wait for this product already; the client may retry later.
    #[error("{waiting} hold requests already wait for product {product_id}")]
    Overloaded {
        /// The product.
        product_id: ProductId,
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

/// One hold request's answer.
pub type HoldAnswer = Result<Keyed<HoldPlaced>, ServiceError>;

/// Where a queued hold request's answer goes.
pub type HoldAnswerSender = oneshot::Sender<HoldAnswer>;

/// A queued request's context, carried from its own task to the batch that decides it.
pub type BatchTag = Box<dyn std::any::Any + Send>;

/// A batch's transaction script, boxed so a [`BatchScope`] can wrap it.
pub type BatchRun<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<HoldAnswer>, ServiceError>> + Send + 'a>>;

/// Lets a driver carry each queued hold request's context to the transaction that decides it,
/// which runs on the drainer's task. The server needs none; the simulator uses it so its storage
/// can tell which requests a batch's transaction served.
pub trait BatchScope: Send + Sync + std::fmt::Debug + 'static {
    /// Called on the request's own task as it joins its product's queue.
    fn capture(&self) -> Option<BatchTag>;
    /// Wraps a batch's transaction, given its requests' tags in arrival order.
    fn scope<'a>(&self, tags: Vec<Option<BatchTag>>, run: BatchRun<'a>) -> BatchRun<'a>;
}

/// A queued request's way back, and its driver's context.
#[derive(Debug)]
pub struct Reply {
    sender: HoldAnswerSender,
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

/// A granted hold and the expired holds its transaction released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldPlaced {
    /// The hold.
    pub hold: Hold,
    /// Expired holds of the product this grant released: a batch's first grant lists the
    /// ones its transaction released, as the requests one by one would, and later grants none.
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
    /// Hold requests waiting per product, decided together by one transaction.
    hold_queues: Arc<HoldQueues<Reply>>,
    /// The driver's hook around batch transactions, if it has one.
    batch_scope: Option<Arc<dyn BatchScope>>,
    /// What `product` answered, per product, for GET storms.
    cache: Arc<ProductCache<ProductView>>,
    /// Idempotency keys of requests running on this server.
    keys_in_flight: Arc<KeysInFlight>,
}

/// Runs `$script` (an expression producing a future over `$tx`) in a transaction of `$mode`,
/// committing on success and retrying the whole script on contention.
macro_rules! in_transaction {
    ($service:expr, $mode:expr, $what:literal, |$tx:ident| $script:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let result: Result<_, ServiceError> = async {
                let mut $tx = Tracked::new($service.store.begin($mode).await?);
                let value = $script.await?;
                let Tracked { inner, written } = $tx;
                inner.commit().await?;
                // After the commit and before the caller is answered: it reads its own write.
                if let Some(product_id) = written {
                    $service.cache.invalidate(product_id);
                }
                Ok(value)
            }
            .await;
            match result {
                Err(ServiceError::Store(error)) if error.is_retryable() => {
                    tracing::warn!(script = $what, attempt, %error, "retrying");
                    let cause = match error {
                        StoreError::Connection(_) => "connection",
                        _ => "contention",
                    };
                    metrics::counter!("flashsale_retries_total", "script" => $what, "cause" => cause)
                        .increment(1);
                    if attempt >= $service.config.attempts_max {
                        break Err(match error {
                            // The last attempt lost its connection too: the database is away.
                            StoreError::Connection(_) => ServiceError::Store(error),
                            _ => ServiceError::Busy { attempts: attempt },
                        });
                    }
                    backoff(attempt).await;
                }
                other => break other,
            }
        }
    }};
}

/// A transaction that remembers the product its write-set changed (a write-set changes at most
/// one), so the cache can forget that product once the transaction commits. Every other step is
/// the storage's own, through `Deref`.
struct Tracked<T> {
    inner: T,
    written: Option<ProductId>,
}

impl<T: Transaction> Tracked<T> {
    fn new(inner: T) -> Self {
        Tracked {
            inner,
            written: None,
        }
    }

    /// [`Transaction::write`], noting the product written.
    async fn write(&mut self, writes: &WriteSet) -> Result<Inserted, StoreError> {
        let inserted = self.inner.write(writes).await?;
        if let Some(product) = &writes.product {
            self.written = Some(product.id);
        }
        Ok(inserted)
    }
}

impl<T> std::ops::Deref for Tracked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for Tracked<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// Counts a committed batch's answers: its size, grants, refusals by code, and the expired
/// holds it released (on its first grant's answer).
fn count_hold_answers(answers: &[HoldAnswer], size: usize) {
    metrics::histogram!("flashsale_hold_batch_size").record(size as f64);
    let mut released = 0usize;
    for answer in answers {
        match answer {
            Ok(Keyed {
                value,
                replayed: false,
            }) => {
                metrics::counter!("flashsale_holds_granted_total").increment(1);
                released = released.saturating_add(value.holds_released.len());
            }
            Ok(Keyed { replayed: true, .. }) => {}
            Err(ServiceError::Rejected(rejection)) => {
                metrics::counter!("flashsale_holds_rejected_total", "code" => rejection.code())
                    .increment(1);
            }
            Err(_) => {}
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

impl<S: Storage + Clone, C: Clock + Clone> Service<S, C> {
    /// A service over `store`, reading time from `clock`.
    pub fn new(store: S, clock: C, config: Config) -> Self {
        Service {
            store,
            clock,
            config,
            hold_queues: Arc::new(HoldQueues::new(
                config.hold_batch_max,
                config.hold_queue_max,
            )),
            cache: Arc::default(),
            batch_scope: None,
            keys_in_flight: Arc::default(),
        }
    }

    /// The same service, carrying each queued hold request's context to its batch through
    /// `scope`.
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
    /// Concurrent requests for one product wait in its queue and are decided together by one
    /// transaction ([`Service::place_hold_batch`]), up to `hold_batch_max` at a time; a request
    /// that finds no queue starts one and runs at once, so nothing waits without contention.
    ///
    /// # Errors
    /// As [`Service::place_hold`], and [`Rejection::IdempotencyKeyReused`] for a key used with
    /// another request, [`ServiceError::KeyInFlight`] for a key still running on this server,
    /// [`ServiceError::Overloaded`] when the product's queue is full.
    pub async fn place_hold_keyed(
        &self,
        key: Option<&IdempotencyKey>,
        product_id: ProductId,
        qty: Qty,
    ) -> HoldAnswer {
        hold::validate_request(qty, self.config.hold_ttl_ms)?;
        tracing::Span::current().record("product_id", tracing::field::display(product_id));
        if beyond_storage(product_id.0) {
            return Err(Rejection::UnknownProduct { product_id }.into());
        }
        let _claim = self.claim(key)?;
        let request = HoldRequest {
            qty,
            key: key.cloned(),
        };
        if self.config.hold_batch_max <= 1 {
            let mut answers = self.place_hold_batch(product_id, &[request]).await?;
            return answers
                .pop()
                .unwrap_or(Err(Rejection::InvalidQty { qty }.into()));
        }
        let (sender, answer) = oneshot::channel();
        let tag = self.batch_scope.as_ref().and_then(|scope| scope.capture());
        let waiting = Waiting {
            request,
            reply: Reply { sender, tag },
        };
        // Counted before it is queued: the drainer may take it at once.
        let queue_waiting = metrics::gauge!("flashsale_hold_queue_waiting");
        queue_waiting.increment(1.0);
        match self.hold_queues.push(product_id, waiting) {
            Err(waiting) => {
                queue_waiting.decrement(1.0);
                return Err(ServiceError::Overloaded {
                    product_id,
                    waiting,
                });
            }
            Ok(true) => {
                // The queue's drainer runs on its own task: a caller that goes away (a closed
                // connection) must not take the other callers' answers with it.
                let service = self.clone();
                tokio::spawn(async move { service.drain_holds(product_id).await });
            }
            Ok(false) => {}
        }
        answer.await.unwrap_or_else(|_| {
            // The batch's task ended without answering: it may have committed.
            Err(StoreError::CommitUnknown("the hold batch ended without an answer".into()).into())
        })
    }

    /// Decides the product's waiting hold requests, batch after batch, until none wait.
    async fn drain_holds(&self, product_id: ProductId) {
        while let Some(batch) = self.hold_queues.next_batch(product_id) {
            let taken = f64::from(u32::try_from(batch.len()).unwrap_or(u32::MAX));
            metrics::gauge!("flashsale_hold_queue_waiting").decrement(taken);
            let requests: Vec<HoldRequest> = batch.iter().map(|w| w.request.clone()).collect();
            let (senders, tags): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|w| (w.reply.sender, w.reply.tag))
                .unzip();
            let run: BatchRun<'_> = Box::pin(self.place_hold_batch(product_id, &requests));
            let result = match &self.batch_scope {
                Some(scope) => scope.scope(tags, run).await,
                None => run.await,
            };
            match result {
                Ok(answers) => {
                    for (sender, answer) in senders.into_iter().zip(answers) {
                        let _ = sender.send(answer);
                    }
                }
                Err(error) => {
                    for sender in senders {
                        let _ = sender.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Decides a batch of hold requests on one product in one transaction: locks their
    /// idempotency keys (in key order) and answers replays from their records, locks the product
    /// once, releases its expired holds, grants the rest in arrival order through the core's
    /// batch decision, inserts the granted holds in one statement, and commits once. Returns one
    /// answer per request, in order; a batch with no grant changes nothing.
    ///
    /// Precondition: no two requests share a key (each caller claims its key first).
    ///
    /// # Errors
    /// `Busy`; storage; [`ServiceError::Violated`] for the whole batch when the product's rows
    /// are corrupt.
    pub async fn place_hold_batch(
        &self,
        product_id: ProductId,
        requests: &[HoldRequest],
    ) -> Result<Vec<HoldAnswer>, ServiceError> {
        // Its lines (retries, contention) name the product, whichever task runs the batch.
        let span = tracing::info_span!("hold_batch", %product_id, requests = requests.len());
        let answers = async { self.place_hold_batch_now(product_id, requests).await }
            .instrument(span)
            .await?;
        count_hold_answers(&answers, requests.len());
        Ok(answers)
    }

    async fn place_hold_batch_now(
        &self,
        product_id: ProductId,
        requests: &[HoldRequest],
    ) -> Result<Vec<HoldAnswer>, ServiceError> {
        in_transaction!(self, TxMode::Write, "place_holds", |tx| async {
            let plan = Plan::place_holds(product_id, requests);
            let (rows, now) = load(&mut *tx, &plan, &self.clock).await?;
            let mut answers: Vec<Option<HoldAnswer>> = vec![None; requests.len()];
            let mut fresh = Vec::new();
            for (i, request) in requests.iter().enumerate() {
                let Some(key) = &request.key else {
                    fresh.push(i);
                    continue;
                };
                let asked = KeyedRequest::PlaceHold {
                    product_id,
                    qty: request.qty,
                };
                match request::decide_request_key(rows.request_record(key), key, &asked) {
                    Ok(KeyDecision::Fresh) => fresh.push(i),
                    Ok(KeyDecision::Replay(record)) => {
                        answers[i] = Some(Ok(replayed_hold(&mut *tx, &record).await?));
                    }
                    Err(rejection) => answers[i] = Some(Err(rejection.into())),
                }
            }
            if !fresh.is_empty() {
                let decided = self.grant_holds(&mut tx, product_id, &rows, requests, &fresh, now);
                let decided = decided.await?;
                for (i, answer) in fresh.into_iter().zip(decided) {
                    answers[i] = Some(answer);
                }
            }
            let lost = || Err(StoreError::Corrupt("a hold request went unanswered".into()).into());
            Ok::<_, ServiceError>(
                answers
                    .into_iter()
                    .map(|a| a.unwrap_or_else(lost))
                    .collect(),
            )
        })
    }

    /// The fresh requests (`fresh`, indexes into `requests`) of a batch, decided on the
    /// plan's rows and written.
    async fn grant_holds<T: Transaction>(
        &self,
        tx: &mut Tracked<T>,
        product_id: ProductId,
        rows: &Rows<'_>,
        requests: &[HoldRequest],
        fresh: &[usize],
        now: Timestamp,
    ) -> Result<Vec<HoldAnswer>, ServiceError> {
        let Some(product) = rows.product() else {
            let unknown = Rejection::UnknownProduct { product_id };
            return Ok(fresh.iter().map(|_| Err(unknown.clone().into())).collect());
        };
        let asked: Vec<HoldRequest> = fresh.iter().map(|&i| requests[i].clone()).collect();
        let ttl_ms = self.config.hold_ttl_ms;
        let decided = hold::place_holds(product, rows.expired(), &asked, now, ttl_ms)?;
        let inserted = tx.write(&decided.writes).await?;
        let mut holds = decided.writes.hold_rows(&inserted)?.into_iter();
        let answers = decided.decisions.iter().enumerate().map(|(n, decision)| {
            let _grant = decision.clone()?;
            let hold = holds.next().ok_or(Violation::WriteSetUnresolved)?;
            Ok(Keyed {
                value: HoldPlaced {
                    hold,
                    holds_released: decided.released_by(n).to_vec(),
                },
                replayed: false,
            })
        });
        Ok(answers.collect())
    }

    /// A hold and how it looks now.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; storage.
    pub async fn hold(&self, id: HoldId) -> Result<(Hold, HoldView), ServiceError> {
        if beyond_storage(id.0) {
            return Err(ServiceError::NotFound {
                what: "hold",
                id: id.0,
            });
        }
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
        if beyond_storage(hold_id.0) {
            return Err(Rejection::UnknownHold { hold_id }.into());
        }
        let request = KeyedRequest::PlaceOrder { hold_id };
        let _claim = self.claim(key)?;
        let plan = Plan::PlaceOrder {
            hold_id,
            key: key.cloned(),
        };
        in_transaction!(self, TxMode::Write, "place_order", |tx| async {
            let (rows, now) = load(&mut *tx, &plan, &self.clock).await?;
            if let Some(record) = replay(&rows, key, &request)? {
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
            let found = rows.hold_and_product()?;
            let (hold, product) = found.ok_or(Rejection::UnknownHold { hold_id })?;
            let decided = order::place_order(hold, product, now, window_ms, key)?;
            let inserted = tx.write(&decided.writes).await?;
            let order = match (decided.existing, decided.writes.order_row(&inserted)?) {
                (None, Some(order)) => order,
                (Some(order_id), _) => tx
                    .order(order_id, false)
                    .await?
                    .ok_or_else(|| lost(order_id))?,
                (None, None) => return Err(Violation::WriteSetUnresolved.into()),
            };
            Ok(Keyed {
                value: OrderPlaced {
                    order,
                    created: decided.existing.is_none(),
                },
                replayed: false,
            })
        })
    }

    /// An order.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; storage.
    pub async fn order(&self, id: OrderId) -> Result<Order, ServiceError> {
        if beyond_storage(id.0) {
            return Err(ServiceError::NotFound {
                what: "order",
                id: id.0,
            });
        }
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
        // Refused rather than recorded as unmatched: its record could not keep the id exactly,
        // and would then not match its own redelivery.
        if beyond_storage(payload.hold_id.0) {
            return Err(Rejection::UnknownHold {
                hold_id: payload.hold_id,
            }
            .into());
        }
        let plan = Plan::ApplyWebhook {
            hold_id: payload.hold_id,
            key: payload.key.clone(),
        };
        in_transaction!(self, TxMode::Write, "apply_webhook", |tx| async {
            let (rows, now) = load(&mut *tx, &plan, &self.clock).await?;
            let order = rows.order_of_hold()?.copied();
            let decision = payment::decide_webhook(
                rows.webhook(),
                payload,
                rows.hold_and_product()?,
                order.as_ref(),
                now,
            )?;
            let writes = match decision {
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
                WebhookDecision::New { writes, .. } => writes,
            };
            let inserted = tx.write(&writes).await?;
            let record = writes.webhook_record(&inserted)?;
            let record = record.ok_or(Violation::WriteSetUnresolved)?;
            let order = match (writes.order_row(&inserted)?, order) {
                (Some(created), _) => Some(created),
                (None, Some(order)) => {
                    let updated = writes.orders_updated.iter().find(|(id, _)| *id == order.id);
                    let status = updated.map_or(order.status, |&(_, settled)| settled.status());
                    Some(Order { status, ..order })
                }
                (None, None) => None,
            };
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
        if beyond_storage(product_id.0) {
            return Err(Rejection::UnknownProduct { product_id }.into());
        }
        in_transaction!(self, TxMode::Write, "restock", |tx| async {
            let plan = Plan::Restock { product_id };
            let (rows, now) = load(&mut *tx, &plan, &self.clock).await?;
            let product = rows.product();
            let product = product.ok_or(Rejection::UnknownProduct { product_id })?;
            let writes = product::restock(product, qty)?;
            tx.write(&writes).await?;
            // Read back as a GET would, inside the transaction: the answer is what it wrote.
            let read = tx.product_view(product_id, now).await?;
            let read = read.ok_or(Violation::WriteSetUnresolved)?;
            let available = product::available(&read.product, read.units_expired)?;
            Ok::<_, ServiceError>(ProductView {
                product: read.product,
                available,
            })
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

    async fn sweep_product(&self, product_id: ProductId) -> Result<(usize, usize), ServiceError> {
        let swept = self
            .sweep_product_now(product_id)
            .instrument(tracing::info_span!("sweep", %product_id))
            .await?;
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

    async fn sweep_product_now(
        &self,
        product_id: ProductId,
    ) -> Result<(usize, usize), ServiceError> {
        in_transaction!(self, TxMode::Write, "sweep_product", |tx| async {
            let plan = Plan::SweepProduct { product_id };
            let (rows, now) = load(&mut *tx, &plan, &self.clock).await?;
            let Some(product) = rows.product() else {
                return Ok::<_, ServiceError>((0, 0));
            };
            let (expired, overdue) = (rows.expired(), rows.overdue());
            let mut changes = Changes::on(product);
            hold::release_expired(&mut changes, expired, now)?;
            order::cancel_overdue(&mut changes, overdue, now)?;
            tx.write(&changes.finish()).await?;
            Ok((expired.len(), overdue.len()))
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

/// Loads a plan's rows, each with the lock the plan asks for, and reads the clock once: when the
/// plan first needs the time (to find expired holds or overdue orders), or after its last load,
/// so a request that waited for a lock decides at the time it got it.
async fn load<T: Transaction, C: Clock>(
    tx: &mut T,
    plan: &Plan,
    clock: &C,
) -> Result<(Rows<'static>, Timestamp), StoreError> {
    let mut rows = Rows::default();
    let mut now = None;
    while let Some(load) = plan.next(&rows) {
        rows.put(match load {
            Load::RequestKey(key) => {
                let record = tx.lock_request_key(&key).await?;
                Loaded::RequestKey(key, record)
            }
            Load::FindHold(id) => Loaded::FoundHold(tx.hold(id, false).await?),
            Load::Product(id) => {
                // The request's lines from here on (retries, contention, its log line) name the
                // product, when the driver's span has the field (the server's request span does).
                tracing::Span::current().record("product_id", tracing::field::display(id));
                Loaded::Product(tx.lock_product(id).await?.map(Cow::Owned))
            }
            Load::Hold { id, .. } => Loaded::Hold(tx.hold(id, true).await?),
            Load::Order { id, .. } => Loaded::Order(tx.order(id, true).await?),
            Load::ExpiredHolds(id) => {
                let now = *now.get_or_insert_with(|| clock.now());
                Loaded::ExpiredHolds(tx.expired_holds(id, now).await?)
            }
            Load::OverdueOrders(id) => {
                let now = *now.get_or_insert_with(|| clock.now());
                Loaded::OverdueOrders(tx.lock_overdue_orders(id, now).await?)
            }
            Load::Webhook(key) => Loaded::Webhook(tx.lock_webhook(&key).await?.map(Cow::Owned)),
        });
    }
    let now = now.unwrap_or_else(|| clock.now());
    Ok((rows, now))
}

/// Decides a request's key from the plan's rows: `Some(record)` when the key answered this very
/// request before.
fn replay(
    rows: &Rows<'_>,
    key: Option<&IdempotencyKey>,
    request: &KeyedRequest,
) -> Result<Option<RequestRecord>, ServiceError> {
    let Some(key) = key else {
        return Ok(None);
    };
    match request::decide_request_key(rows.request_record(key), key, request)? {
        KeyDecision::Fresh => Ok(None),
        KeyDecision::Replay(record) => Ok(Some(record)),
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

/// The answer a replayed hold request's record gives: the hold as it is now.
async fn replayed_hold<T: Transaction>(tx: &mut T, record: &RequestRecord) -> HoldAnswer {
    let hold = tx.hold(HoldId(record.resource_id), false).await?;
    let hold = hold.ok_or_else(|| lost_resource(record))?;
    Ok(Keyed {
        value: HoldPlaced {
            hold,
            holds_released: Vec::new(),
        },
        replayed: true,
    })
}
