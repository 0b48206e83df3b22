//! The commit-order replay over any storage: [`Logged`] wraps a [`Storage`] (the real SQL one in
//! the server's tests) and logs every transaction's end as [`crate::refine`] reads it, and [`Noting`]
//! wraps a [`Clock`] so each request's clock readings are noted in its [`recording::OP`]. With a
//! service built over both (and [`recording::RequestContexts`] as its batch scope), requests run
//! inside `OP.scope`, and `refine::check` then replays the log through the core's ledger against
//! the database's own final rows and every answer the clients got.
//!
//! Every locking read is also checked against the core's global lock order
//! ([`flashsale_core::LockOrder`]): a lock taken against it fails its request.
//!
//! The log is in commit order because commits take one gate in turn: a transaction commits and
//! logs its entry while it holds the gate, so no transaction that saw its writes can log before
//! it. A transaction dropped without committing (a refusal, decided under its locks) logs its
//! entry under the same gate before its connection rolls back and lets its locks go, and before
//! any transaction begun after it begins (a retry of the same request, say).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flashsale_core::{
    Cents, Hold, HoldId, IdempotencyKey, Inserted, LockOrder, Order, OrderId, Product, ProductId,
    Qty, RequestRecord, RowLock, Timestamp, WebhookRecord, WriteSet,
};
use flashsale_server::clock::Clock;
use flashsale_server::store::{
    Dump, ProductRead, RecordKind, Storage, StoreError, StoreResult, Transaction, TxMode,
};
use tokio::task::JoinHandle;

use crate::recording::{self, Ending, Entry};

/// What a storage's transactions share: the commit gate and the log.
#[derive(Debug)]
struct Shared {
    gate: tokio::sync::Mutex<()>,
    log: Mutex<Vec<Entry>>,
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
                log: Mutex::new(Vec::new()),
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
        lock(&self.shared.log).clone()
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
            ending: Ending {
                tx,
                ..Ending::default()
            },
            locked_product: None,
            locks: LockOrder::default(),
        })
    }
}

/// A transaction of a [`Logged`] storage.
pub struct LoggedTx<T: Transaction + 'static> {
    /// `None` once it committed.
    inner: Option<T>,
    shared: Arc<Shared>,
    ending: Ending,
    /// The product it locked last: a sweep's transaction writes that product's rows.
    locked_product: Option<ProductId>,
    /// Its locking reads, checked against the core's global lock order.
    locks: LockOrder,
}

impl<T: Transaction + 'static> LoggedTx<T> {
    fn tx(&mut self) -> StoreResult<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| StoreError::Database("the transaction has ended".into()))
    }

    /// Notes a lock the transaction took; one against the global order fails the request.
    fn took(&mut self, lock: RowLock) -> StoreResult<()> {
        self.locks.take(lock).map_err(|out_of_order| {
            StoreError::Database(format!("tx{}: {out_of_order}", self.ending.tx))
        })
    }

    /// This transaction's end for the requests it serves now.
    fn entries(&mut self) -> Vec<Entry> {
        let mut ending = std::mem::take(&mut self.ending);
        ending.at_us = self.shared.since_start_us();
        if ending.wrote {
            ending.product_written = self.locked_product;
        }
        ending.entries(recording::current())
    }
}

impl<T: Transaction + 'static> Drop for LoggedTx<T> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Rolled back: nothing written, so only answered requests log, at the point their
        // answer was decided; the locks are held until the entry is in the log.
        self.ending.wrote = false;
        let entries = self.entries();
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
        let shared = self.shared.clone();
        let _gate = shared.gate.lock().await;
        // A failed commit committed nothing here (no commit answer is lost on these storages);
        // the request retries or fails, and its retry logs.
        inner.commit().await?;
        let entries = self.entries();
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
        self.locked_product = ids.last().copied();
        for &id in ids {
            self.took(RowLock::Product(id))?;
        }
        self.tx()?.lock_products(ids).await
    }

    async fn insert_product(
        &mut self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> StoreResult<Product> {
        let product = self.tx()?.insert_product(name, price_cents, stock).await?;
        self.ending.wrote = true;
        self.ending.products_inserted.push(product.id.0);
        Ok(product)
    }

    async fn expired_holds(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<Hold>> {
        let holds = self.tx()?.expired_holds(products, now).await?;
        for hold in &holds {
            self.took(RowLock::Hold {
                product: hold.product_id,
                id: hold.id,
            })?;
        }
        Ok(holds)
    }

    async fn holds(&mut self, ids: &[HoldId], lock: bool) -> StoreResult<Vec<Hold>> {
        let holds = self.tx()?.holds(ids, lock).await?;
        for hold in holds.iter().filter(|_| lock) {
            self.took(RowLock::Hold {
                product: hold.product_id,
                id: hold.id,
            })?;
        }
        Ok(holds)
    }

    async fn orders(&mut self, ids: &[OrderId], lock: bool) -> StoreResult<Vec<Order>> {
        let orders = self.tx()?.orders(ids, lock).await?;
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
        if !writes.is_empty() {
            self.ending.wrote = true;
        }
        let ending = &mut self.ending;
        ending
            .holds_inserted
            .extend(inserted.holds.iter().map(|h| h.0));
        ending
            .orders_inserted
            .extend(inserted.orders.iter().map(|o| o.0));
        ending.keys_recorded.extend(
            writes
                .request_keys
                .iter()
                .map(|record| record.key.as_str().to_owned()),
        );
        Ok(inserted)
    }

    async fn lock_webhooks(&mut self, keys: &[IdempotencyKey]) -> StoreResult<Vec<WebhookRecord>> {
        for key in keys {
            self.took(RowLock::Webhook(key.clone()))?;
        }
        self.tx()?.lock_webhooks(keys).await
    }

    async fn lock_request_keys(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> StoreResult<Vec<RequestRecord>> {
        for key in keys {
            self.took(RowLock::RequestKey(key.clone()))?;
        }
        let records = self.tx()?.lock_request_keys(keys).await?;
        let found = records.iter().map(|r| r.key.as_str().to_owned());
        self.ending.keys_found.extend(found);
        Ok(records)
    }

    async fn products_due(&mut self, now: Timestamp, limit: u32) -> StoreResult<Vec<ProductId>> {
        self.tx()?.products_due(now, limit).await
    }

    async fn lock_overdue_orders(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<Order>> {
        let orders = self.tx()?.lock_overdue_orders(products, now).await?;
        for order in &orders {
            self.took(RowLock::Order {
                product: order.product_id,
                id: order.id,
            })?;
        }
        Ok(orders)
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

    async fn product_count(&mut self) -> StoreResult<u64> {
        self.tx()?.product_count().await
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
