//! The commit-order replay over any storage: [`Logged`] wraps a [`Storage`] (the real SQL one in
//! the server's tests) and logs every transaction's end as [`crate::refine`] reads it, and [`Noting`]
//! wraps a [`Clock`] so each request's clock readings are noted in its [`recording::OP`]. With a
//! service built over both (and [`recording::RequestContexts`] as its batch scope), requests run
//! inside `OP.scope`, and `refine::check` then replays the log through the core's ledger against
//! the database's own final rows and every answer the clients got.
//!
//! Every locking read is also checked against the core's global lock order
//! ([`flashsale_core::LockOrder`]): a lock taken against it fails its request. What a transaction
//! logs and the lock-order check are the [`TxObserver`]'s, which the simulator's storage feeds
//! too.
//!
//! The log is in commit order because commits take one gate in turn: a transaction commits and
//! logs its entry while it holds the gate, so no transaction that saw its writes can log before
//! it. A transaction dropped without committing (a refusal, decided under its locks) logs its
//! entry under the same gate before its connection rolls back and lets its locks go, and before
//! any transaction begun after it begins (a retry of the same request, say).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flashsale_core::{
    ExpiryBucket, Hold, HoldId, IdempotencyKey, Inserted, Order, OrderId, Product, ProductId,
    RequestRecord, RowLock, Timestamp, WebhookRecord, WriteSet,
};
use flashsale_service::clock::Clock;
use flashsale_service::store::{
    Dump, ProductRead, RecordKind, Storage, StoreError, StoreResult, SweepCandidates, Transaction,
    TxMode,
};
use tokio::task::JoinHandle;

use crate::observer::{CommitLog, TxObserver};
use crate::recording::{self, Entry};

/// What a storage's transactions share: the commit gate and the log.
#[derive(Debug)]
struct Shared {
    gate: tokio::sync::Mutex<()>,
    log: Mutex<CommitLog>,
    tx_last: AtomicU64,
    started: tokio::time::Instant,
    /// Rollbacks still logging.
    ending: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn since_start_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A storage whose transactions' ends are logged in commit order.
#[derive(Clone, Debug)]
pub struct Logged<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Logged<S> {
    /// `inner`, logged from now on.
    pub fn new(inner: S) -> Self {
        Logged {
            inner,
            shared: Arc::new(Shared {
                gate: tokio::sync::Mutex::new(()),
                log: Mutex::new(CommitLog::default()),
                tx_last: AtomicU64::new(0),
                started: tokio::time::Instant::now(),
                ending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Another storage (another instance's connections to the same database, say) logging
    /// into the same log, through the same commit gate.
    pub fn beside<T>(&self, inner: T) -> Logged<T> {
        Logged {
            inner,
            shared: self.shared.clone(),
        }
    }

    /// The storage it logs.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The log's length once every commit that has returned is in it: a read's position.
    pub async fn len(&self) -> usize {
        let _gate = self.shared.gate.lock().await;
        lock(&self.shared.log).len()
    }

    /// Whether nothing has been logged yet.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Waits until every transaction dropped so far has logged its end.
    async fn settle(&self) {
        loop {
            let ending = std::mem::take(&mut *lock(&self.shared.ending));
            if ending.is_empty() {
                break;
            }
            for handle in ending {
                // A rollback's task only logs and drops; it panics only if the runtime does.
                let _ = handle.await;
            }
        }
    }

    /// The log, once every transaction dropped so far has logged its end.
    pub async fn log(&self) -> Vec<Entry> {
        self.settle().await;
        let _gate = self.shared.gate.lock().await;
        lock(&self.shared.log).entries().to_vec()
    }
}

impl<S> Storage for Logged<S>
where
    S: Storage,
    S::Tx: 'static,
{
    type Tx = LoggedTx<S::Tx>;

    async fn begin(&self, mode: TxMode) -> StoreResult<LoggedTx<S::Tx>> {
        // A request that retries after a rollback logs its retry after that rollback's entry.
        self.settle().await;
        let inner = self.inner.begin(mode).await?;
        let tx = self
            .shared
            .tx_last
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        Ok(LoggedTx {
            inner: Some(inner),
            shared: self.shared.clone(),
            observer: TxObserver::new(tx),
        })
    }
}

/// A transaction of a [`Logged`] storage.
pub struct LoggedTx<T: Transaction + 'static> {
    /// `None` once it committed.
    inner: Option<T>,
    shared: Arc<Shared>,
    /// Its locking reads and what its end logs.
    observer: TxObserver,
}

impl<T: Transaction + 'static> LoggedTx<T> {
    fn tx(&mut self) -> StoreResult<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| StoreError::Database("the transaction has ended".into()))
    }

    /// Notes a lock the transaction took; one against the global order fails the request.
    fn took(&mut self, lock: RowLock) -> StoreResult<()> {
        (self.observer.took(lock)).map_err(|failure| StoreError::Database(failure.message))
    }

    /// This transaction's end for the requests it serves now, committed or rolled back.
    fn entries(&mut self, committed: bool) -> Vec<Entry> {
        self.observer.end(committed, self.shared.since_start_us())
    }
}

impl<T: Transaction + 'static> Drop for LoggedTx<T> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Rolled back: nothing written, so only answered requests log, at the point their
        // answer was decided; the locks are held until the entry is in the log.
        let entries = self.entries(false);
        if entries.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let handle = tokio::spawn(async move {
            let _gate = shared.gate.lock().await;
            lock(&shared.log).extend(entries);
            drop(inner);
        });
        lock(&self.shared.ending).push(handle);
    }
}

impl<T: Transaction + 'static> Transaction for LoggedTx<T> {
    async fn commit(mut self) -> StoreResult<()> {
        let Some(inner) = self.inner.take() else {
            return Err(StoreError::Database("the transaction has ended".into()));
        };
        (self.observer.check_budget()).map_err(|failure| StoreError::Database(failure.message))?;
        let shared = self.shared.clone();
        let _gate = shared.gate.lock().await;
        // A failed commit committed nothing here (no commit answer is lost on these storages);
        // the request retries or fails, and its retry logs.
        inner.commit().await?;
        let entries = self.entries(true);
        lock(&shared.log).extend(entries);
        Ok(())
    }

    async fn product_view(
        &mut self,
        id: ProductId,
        now: Timestamp,
    ) -> StoreResult<Option<ProductRead>> {
        self.tx()?.product_view(id, now).await
    }

    async fn lock_products(&mut self, ids: &[ProductId]) -> StoreResult<Vec<Product>> {
        self.observer.locking_products(ids);
        for &id in ids {
            self.took(RowLock::Product(id))?;
        }
        let products = self.tx()?.lock_products(ids).await?;
        self.observer.loaded(products.len());
        Ok(products)
    }

    async fn due_buckets(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<ExpiryBucket>> {
        let buckets = self.tx()?.due_buckets(products, now).await?;
        self.observer.loaded(buckets.len());
        Ok(buckets)
    }

    async fn holds(&mut self, ids: &[HoldId], lock: bool) -> StoreResult<Vec<Hold>> {
        if lock {
            self.observer.locking_holds(ids);
        }
        let holds = self.tx()?.holds(ids, lock).await?;
        self.observer.loaded(holds.len());
        for hold in holds.iter().filter(|_| lock) {
            self.took(RowLock::Hold {
                product: hold.product_id,
                id: hold.id,
            })?;
        }
        Ok(holds)
    }

    async fn orders(&mut self, ids: &[OrderId], lock: bool) -> StoreResult<Vec<Order>> {
        if lock {
            self.observer.locking_orders(ids);
        }
        let orders = self.tx()?.orders(ids, lock).await?;
        self.observer.loaded(orders.len());
        for order in orders.iter().filter(|_| lock) {
            self.took(RowLock::Order {
                product: order.product_id,
                id: order.id,
            })?;
        }
        Ok(orders)
    }

    async fn write(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        let inserted = self.tx()?.write(writes).await?;
        self.observer.wrote(writes, &inserted);
        Ok(inserted)
    }

    async fn lock_webhooks(&mut self, keys: &[IdempotencyKey]) -> StoreResult<Vec<WebhookRecord>> {
        for key in keys {
            self.took(RowLock::Webhook(key.clone()))?;
        }
        let records = self.tx()?.lock_webhooks(keys).await?;
        self.observer.loaded(records.len());
        Ok(records)
    }

    async fn lock_request_keys(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> StoreResult<Vec<RequestRecord>> {
        for key in keys {
            self.took(RowLock::RequestKey(key.clone()))?;
        }
        let records = self.tx()?.lock_request_keys(keys).await?;
        self.observer.loaded(records.len());
        self.observer.found(&records);
        Ok(records)
    }

    async fn products_due(&mut self, now: Timestamp, limit: u32) -> StoreResult<Vec<ProductId>> {
        self.tx()?.products_due(now, limit).await
    }

    async fn sweep_candidates(
        &mut self,
        product: ProductId,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<SweepCandidates> {
        self.tx()?.sweep_candidates(product, now, limit).await
    }

    async fn holds_to_retire(&mut self) -> StoreResult<u64> {
        self.tx()?.holds_to_retire().await
    }

    async fn purge_records(
        &mut self,
        kind: RecordKind,
        before: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        // The replay keeps every record: a purge that deleted one would make the final rows
        // differ for a reason the log does not show, so it is refused loudly.
        match self.tx()?.purge_records(kind, before, limit).await? {
            0 => Ok(0),
            deleted => Err(StoreError::Database(format!(
                "a logged storage keeps every record, but a purge deleted {deleted}: run the \
                 service with retention off"
            ))),
        }
    }

    async fn first_product(&mut self) -> StoreResult<Option<Product>> {
        let first = self.tx()?.first_product().await?;
        self.observer.loaded(usize::from(first.is_some()));
        Ok(first)
    }

    async fn dump(&mut self) -> StoreResult<Dump> {
        self.tx()?.dump().await
    }
}

/// A clock that notes every wall-clock reading in the current request's [`recording::OP`] (or its
/// batch's), the reading its decision is replayed at.
#[derive(Clone, Debug)]
pub struct Noting<C>(pub C);

impl<C: Clock> Clock for Noting<C> {
    fn now(&self) -> Timestamp {
        let now = self.0.now();
        recording::note_now(now);
        now
    }

    fn monotonic_ms(&self) -> u64 {
        self.0.monotonic_ms()
    }
}
