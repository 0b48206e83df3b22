//! The storage the service layer runs its transaction scripts over, as a trait at the level of
//! transaction steps: begin, read and lock the rows a decision needs (a product, its due expiry
//! buckets, a hold, an order, a webhook or request-key record), write a decision's write-set,
//! commit.
//!
//! Nothing here names sqlx or warp, so the simulator can implement [`Storage`] in memory and run
//! the very same service code under madsim. Rows cross this boundary as core types.
//!
//! Every method of a [`Transaction`] that names a row it will change takes that row's lock
//! (`SELECT ... FOR UPDATE` on MySQL; SQLite's `BEGIN IMMEDIATE` already holds the write lock).
//! Scripts take locks in one global order, the core's [`flashsale_core::locks`]: request keys, the
//! product, its holds and orders (under its lock), a webhook record.

use std::future::Future;

use flashsale_core::{
    ExpiryBucket, Hold, HoldId, IdempotencyKey, Inserted, Order, OrderId, Product, ProductId, Qty,
    RequestRecord, Timestamp, WebhookRecord, WriteSet,
};

/// Why a storage step failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Lock contention the transaction may succeed on when retried: a deadlock, a lock-wait
    /// timeout, a Galera certification failure, a busy database, or a unique key taken by a
    /// concurrent transaction.
    #[error("contention: {0}")]
    Contention(String),
    /// The connection failed before the transaction asked to commit, so it surely did not: the
    /// database rolled it back when the connection went away.
    #[error("connection lost: {0}")]
    Connection(String),
    /// The connection failed while the transaction was committing: whether it committed is
    /// unknown, so it must not run again.
    #[error("connection lost while committing: {0}")]
    CommitUnknown(String),
    /// No connection to the database could be had in time: it is down, unreachable, not ready
    /// (a Galera node out of the cluster), or every connection is taken.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A row failed its checks on the way in or out: the data is corrupt.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else the database reported.
    #[error("database: {0}")]
    Database(String),
}

/// Rows a write-set does not fit, or that fail a check on the way in or out: corrupt.
impl From<flashsale_core::Violation> for StoreError {
    fn from(violation: flashsale_core::Violation) -> Self {
        StoreError::Corrupt(violation.to_string())
    }
}

impl StoreError {
    /// Whether running the whole transaction again may succeed and cannot apply it twice:
    /// contention, and a connection lost before the commit.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Contention(_) | StoreError::Connection(_))
    }
}

/// Shorthand for a storage step's result.
pub type StoreResult<T> = Result<T, StoreError>;

/// Whether a transaction will write; SQLite takes its write lock up front for writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxMode {
    /// Reads only, each statement seeing the latest committed rows (MySQL's READ COMMITTED).
    Read,
    /// Reads only, every statement seeing one snapshot taken at its start: several reads that
    /// must agree with each other (a dump of every table while writes go on).
    Snapshot,
    /// Reads and writes.
    Write,
}

/// A database the service can open transactions on.
pub trait Storage: Send + Sync + 'static {
    /// An open transaction.
    type Tx: Transaction;

    /// Opens a transaction.
    fn begin(&self, mode: TxMode) -> impl Future<Output = StoreResult<Self::Tx>> + Send;
}

/// The steps of one transaction. Dropping a transaction without [`Transaction::commit`] rolls it
/// back.
pub trait Transaction: Send {
    /// Commits.
    fn commit(self) -> impl Future<Output = StoreResult<()>> + Send;

    /// Reads a product, the units of its expiry buckets due at `now` (the first
    /// [`flashsale_core::DUE_BUCKETS_MAX`], in deadline order, as a transaction's load folds them)
    /// and the earliest deadline of a bucket after `now`, without locks, in one consistent read
    /// (one statement): two statements at READ COMMITTED could pair a counter from before a fold
    /// with buckets from after it. Costs a bounded number of bucket rows, whatever the number of
    /// holds that expired.
    fn product_view(
        &mut self,
        id: ProductId,
        now: Timestamp,
    ) -> impl Future<Output = StoreResult<Option<ProductRead>>> + Send;

    /// Reads and locks the products that exist among `ids` (sorted, distinct), in id order.
    fn lock_products(
        &mut self,
        ids: &[ProductId],
    ) -> impl Future<Output = StoreResult<Vec<Product>>> + Send;

    /// Reads the expiry buckets of `products` (sorted, distinct) due at `now` (deadline at or
    /// before it): at most [`flashsale_core::DUE_BUCKETS_MAX`] per product, the earliest first.
    /// Called with the products locked, which every writer of a bucket holds, so they take no
    /// lock of their own.
    fn due_buckets(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> impl Future<Output = StoreResult<Vec<ExpiryBucket>>> + Send;

    /// Reads the holds that exist among `ids` (sorted, distinct), locking them when `lock`
    /// (their products' locks are held then).
    fn holds(
        &mut self,
        ids: &[HoldId],
        lock: bool,
    ) -> impl Future<Output = StoreResult<Vec<Hold>>> + Send;

    /// Reads the orders that exist among `ids` (distinct), locking them when `lock` (their
    /// products' locks are held then).
    fn orders(
        &mut self,
        ids: &[OrderId],
        lock: bool,
    ) -> impl Future<Output = StoreResult<Vec<Order>>> + Send;

    /// Applies a batch's write-set: the one place this storage writes holds, orders, product
    /// counters and records, in the order [`WriteSet`] documents, resolving the pending ids it
    /// names as it assigns them. Returns the ids it assigned. Every row it changes was locked by
    /// the same transaction (an expiry bucket under its product's lock). A concurrent insert of
    /// the same webhook or request key is [`StoreError::Contention`]: the retry finds the record
    /// and replays it.
    fn write(&mut self, writes: &WriteSet) -> impl Future<Output = StoreResult<Inserted>> + Send;

    /// Reads and locks the webhook records that exist among `keys` (sorted, distinct), in key
    /// order.
    fn lock_webhooks(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> impl Future<Output = StoreResult<Vec<WebhookRecord>>> + Send;

    /// Reads and locks the client request idempotency-key records that exist among `keys`
    /// (sorted, distinct), in key order. Scripts lock them before any product, so two requests
    /// under one key on one database run one after the other.
    fn lock_request_keys(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> impl Future<Output = StoreResult<Vec<RequestRecord>>> + Send;

    /// Up to `limit` products with something for the sweeper at `now`: an expiry bucket due,
    /// holds expired for good to retire, or a pre-payment order past its window. Each part is
    /// read through its own index and bounded, whatever the number of holds that expired: a
    /// product left out now comes up in a later pass.
    fn products_due(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<ProductId>>> + Send;

    /// Without locks, the product's first `limit` held holds whose deadline has passed at `now`
    /// and its first `limit` pre-payment orders past their window, each in deadline order: what
    /// one sweep transaction retires and cancels ([`flashsale_core::Command::SweepProduct`]).
    fn sweep_candidates(
        &mut self,
        product: ProductId,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = StoreResult<SweepCandidates>> + Send;

    /// How many held holds of every product have expired for good and wait to be retired (the
    /// sum of the products' `holds_to_retire`).
    fn holds_to_retire(&mut self) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Deletes up to `limit` records of `kind` made before `before` (a client request key by
    /// when it was first answered, a webhook record by when it was received); returns how many
    /// it deleted. A key used after its record is gone is a new request.
    fn purge_records(
        &mut self,
        kind: RecordKind,
        before: Timestamp,
        limit: u32,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Reads the product of the lowest id, if any, without a lock: whether any product exists
    /// ([`flashsale_core::Load::FirstProduct`]).
    fn first_product(&mut self) -> impl Future<Output = StoreResult<Option<Product>>> + Send;

    /// Every row, for checking invariants on the database's contents: in a
    /// [`TxMode::Snapshot`] transaction, so that the tables agree with each other.
    fn dump(&mut self) -> impl Future<Output = StoreResult<Dump>> + Send;
}

/// The records the sweeper purges once they are older than their retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Client request idempotency-key records.
    RequestKeys,
    /// Webhook idempotency-key records.
    Webhooks,
}

/// A product as `GET /api/products/{id}` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductRead {
    /// The product row, with its counters.
    pub product: Product,
    /// Units of its expiry buckets due, not yet folded.
    pub units_due: Qty,
    /// The earliest deadline of its buckets not yet due: when its availability next changes
    /// without a write.
    pub next_deadline: Option<Timestamp>,
}

/// What one sweep transaction of a product retires and cancels, as the sweeper read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepCandidates {
    /// Held holds past their deadline, in deadline order.
    pub holds: Vec<HoldId>,
    /// Pre-payment orders past their window, in deadline order.
    pub orders: Vec<OrderId>,
}

/// Every row of a database.
#[derive(Clone, Debug, Default)]
pub struct Dump {
    /// Products.
    pub products: Vec<Product>,
    /// Holds.
    pub holds: Vec<Hold>,
    /// Orders.
    pub orders: Vec<Order>,
    /// Webhook records.
    pub webhooks: Vec<WebhookRecord>,
    /// Client request idempotency-key records.
    pub request_keys: Vec<RequestRecord>,
    /// Expiry buckets.
    pub buckets: Vec<ExpiryBucket>,
}

impl Dump {
    /// The rows as a ledger, every kind of them.
    pub fn into_ledger(self) -> flashsale_core::Ledger {
        flashsale_core::Ledger::from_rows(self.products, self.holds, self.orders, self.webhooks)
            .with_buckets(self.buckets)
            .with_request_keys(self.request_keys)
    }

    /// The rows as a ledger, and a check of the invariants on it (every request-key record
    /// naming a hold or order that matches its request among them).
    ///
    /// # Errors
    /// The first invariant violated or record that names no matching resource.
    pub fn check(self) -> Result<(), String> {
        self.into_ledger()
            .check_invariants()
            .map_err(|v| v.to_string())
    }
}
