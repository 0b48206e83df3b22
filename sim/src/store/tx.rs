//! One open simulated transaction: the latency and faults of each of its steps, its row locks
//! (waiting in line, deadlocks, lock-wait timeouts), its view of the rows (committed ones under
//! its own staged writes), and its rollback.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use flashsale_check::observer::TxObserver;
use flashsale_check::recording;
use flashsale_core::{
    Command, DUE_BUCKETS_MAX, ExpiryBucket, Hold, HoldId, HoldState, IdempotencyKey, Order,
    OrderId, Product, ProductId, RowLock, Timestamp,
};
use flashsale_service::store::{StoreError, StoreResult};
use madsim::rand::{Rng, thread_rng};
use tokio::sync::oneshot;

use super::bug::Bug;
use super::locks::{LOCK_WAIT_TIMEOUT, Lock, deadlocks, release_locks};
use super::tables::{Row, RowKey};
use super::{SimStore, sim_us, tx_event};

/// An open simulated transaction. Dropped without commit, it rolls back.
#[derive(Debug)]
pub struct SimTx {
    pub(super) store: SimStore,
    pub(super) id: u64,
    pub(super) writes: BTreeMap<RowKey, Row>,
    /// The locks it took (checked against the global lock order) and what its end logs.
    pub(super) observer: TxObserver,
    pub(super) open: bool,
}

impl SimTx {
    /// Latency, then maybe a fault: every step of every transaction goes through here.
    pub(super) async fn step(&mut self) -> StoreResult<()> {
        let (faults, latency_us) = {
            let shared = self.store.shared();
            let max = shared.faults.latency_us_max.max(1);
            (shared.faults, thread_rng().gen_range(0..max))
        };
        tokio::time::sleep(Duration::from_micros(latency_us)).await;
        let mut rng = thread_rng();
        let fault = if rng.gen_bool(faults.deadlock.clamp(0.0, 1.0)) {
            Some(StoreError::Contention("1213 deadlock (injected)".into()))
        } else if rng.gen_bool(faults.lock_timeout.clamp(0.0, 1.0)) {
            Some(StoreError::Contention(
                "1205 lock wait timeout (injected)".into(),
            ))
        } else if rng.gen_bool(faults.connection_lost.clamp(0.0, 1.0)) {
            Some(StoreError::Connection("connection lost (injected)".into()))
        } else {
            None
        };
        match fault {
            None => Ok(()),
            Some(error) => {
                {
                    let mut shared = self.store.shared();
                    let event = tx_event(self.id, None, format!("fault injected: {error}"));
                    shared.trace.record(event);
                    match &error {
                        StoreError::Contention(m) if m.starts_with("1213") => {
                            shared.counts.deadlock += 1
                        }
                        StoreError::Contention(_) => shared.counts.lock_timeout += 1,
                        _ => shared.counts.connection_lost += 1,
                    }
                }
                self.rollback();
                Err(error)
            }
        }
    }

    /// Takes the row's exclusive lock, waiting in line behind earlier requests.
    pub(super) async fn lock(&mut self, key: RowKey) -> StoreResult<()> {
        if !self.open {
            return Err(StoreError::Connection(
                "transaction already rolled back".into(),
            ));
        }
        if let Some(lock) = self.row_lock(&key)
            && let Err(failure) = self.observer.took(lock)
        {
            self.store.shared().violation.get_or_insert(failure);
        }
        let receiver = {
            let mut guard = self.store.shared();
            let shared = &mut *guard;
            let holder = shared.locks.get(&key).map(|lock| lock.holder);
            match holder {
                None => {
                    shared.locks.insert(
                        key.clone(),
                        Lock {
                            holder: self.id,
                            waiters: VecDeque::new(),
                        },
                    );
                    return Ok(());
                }
                Some(holder) if holder == self.id => return Ok(()),
                Some(_) if deadlocks(shared, self.id, &key) => {
                    shared.counts.deadlock_real += 1;
                    drop(guard);
                    self.rollback();
                    return Err(StoreError::Contention("1213 deadlock".into()));
                }
                Some(_) => {
                    let (sender, receiver) = oneshot::channel();
                    if let Some(lock) = shared.locks.get_mut(&key) {
                        lock.waiters.push_back((self.id, Some(sender)));
                    }
                    shared.waiting_for.insert(self.id, key.clone());
                    receiver
                }
            }
        };
        let granted = tokio::time::timeout(LOCK_WAIT_TIMEOUT, receiver).await;
        let mut shared = self.store.shared();
        shared.waiting_for.remove(&self.id);
        let holder = shared.locks.get(&key).map(|lock| lock.holder);
        if granted.is_ok() || holder == Some(self.id) {
            return Ok(());
        }
        if let Some(lock) = shared.locks.get_mut(&key) {
            lock.waiters.retain(|(id, _)| *id != self.id);
        }
        shared.counts.lock_timeout_real += 1;
        drop(shared);
        self.rollback();
        Err(StoreError::Contention("1205 lock wait timeout".into()))
    }

    /// The row as this transaction sees it: its own write, else the committed row.
    pub(super) fn read(&self, key: &RowKey) -> Option<Row> {
        self.writes
            .get(key)
            .cloned()
            .or_else(|| self.store.shared().tables.get(key))
    }

    /// Stages a row in this transaction's writes.
    pub(super) fn stage(&mut self, row: Row) {
        self.writes.insert(row.key(), row);
    }

    /// The holds of a product as this transaction sees them.
    pub(super) fn holds_of(&self, product_id: ProductId) -> Vec<Hold> {
        let committed: Vec<Hold> = {
            let shared = self.store.shared();
            shared
                .tables
                .holds
                .values()
                .filter(|h| h.product_id == product_id)
                .copied()
                .collect()
        };
        let mut holds: BTreeMap<u64, Hold> = committed.into_iter().map(|h| (h.id.0, h)).collect();
        for row in self.writes.values() {
            if let Row::Hold(h) = row
                && h.product_id == product_id
            {
                holds.insert(h.id.0, *h);
            }
        }
        holds.into_values().collect()
    }

    pub(super) fn bug(&self) -> Option<Bug> {
        self.store.shared().bug
    }

    /// The product's expiry buckets as this transaction sees them, in deadline order.
    pub(super) fn buckets_of(&self, product_id: ProductId) -> Vec<ExpiryBucket> {
        let mut buckets: BTreeMap<u64, ExpiryBucket> = {
            let shared = self.store.shared();
            let range = (product_id.0, 0)..=(product_id.0, u64::MAX);
            (shared.tables.buckets.range(range))
                .map(|(&(_, at), b)| (at, *b))
                .collect()
        };
        for row in self.writes.values() {
            match row {
                Row::Bucket(b) if b.product_id == product_id => {
                    buckets.insert(b.expires_at.as_ms(), *b);
                }
                Row::BucketGone(p, at) if *p == product_id => {
                    buckets.remove(&at.as_ms());
                }
                _ => {}
            }
        }
        buckets.into_values().collect()
    }

    /// The product's first [`DUE_BUCKETS_MAX`] buckets due at `now`, in deadline order, as
    /// its storage reads them.
    pub(super) fn due_of(&self, product_id: ProductId, now: Timestamp) -> Vec<ExpiryBucket> {
        // The planted bug hides them from hold requests only; the sweeper still folds them, so
        // every row ends as it should and only the answers differ.
        let placing = recording::current()
            .iter()
            .any(|op| matches!(op.command, Some(Command::PlaceHold { .. })));
        if self.bug() == Some(Bug::CountExpiredHolds) && placing {
            return Vec::new();
        }
        let due = self.buckets_of(product_id).into_iter();
        due.filter(|b| b.expires_at <= now)
            .take(DUE_BUCKETS_MAX)
            .collect()
    }

    /// The product's held holds past their deadline at `now` whose bucket is not folded yet:
    /// what the old read of every expired hold brought back, and what
    /// [`Bug::LoadEveryExpiredHold`] reads besides the buckets.
    pub(super) fn expired_unfolded(&self, product_id: ProductId, now: Timestamp) -> usize {
        let folded = self
            .product_row(product_id)
            .map_or(Timestamp(0), |p| p.expired_through);
        let holds = self.holds_of(product_id).into_iter();
        holds
            .filter(|h| h.state == HoldState::Held && h.is_expired(now))
            .filter(|h| h.expires_at > folded)
            .count()
    }

    /// Refuses a second order for `hold_id`, as the orders' unique key would.
    pub(super) fn one_order_per_hold(&mut self, hold_id: HoldId) -> StoreResult<()> {
        let taken = {
            let shared = self.store.shared();
            let mut orders = shared.tables.orders.values();
            orders.any(|o| o.hold_id == hold_id)
        };
        let mine = self
            .writes
            .values()
            .any(|r| matches!(r, Row::Order(o) if o.hold_id == hold_id));
        if taken || mine {
            self.rollback();
            return Err(StoreError::Contention(
                "1062 duplicate key orders_one_per_hold".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn next_id(&self, table: usize) -> u64 {
        let mut shared = self.store.shared();
        shared.tables.id_last[table] = shared.tables.id_last[table].saturating_add(1);
        shared.tables.id_last[table]
    }

    /// The lock the core's global lock order names for `key`, with a hold's or order's product;
    /// `None` for a row that does not exist yet (nobody else can be waiting on it).
    pub(super) fn row_lock(&self, key: &RowKey) -> Option<RowLock> {
        Some(match key {
            RowKey::Product(id) => RowLock::Product(ProductId(*id)),
            RowKey::Hold(_) => match self.read(key)? {
                Row::Hold(h) => RowLock::Hold {
                    product: h.product_id,
                    id: h.id,
                },
                _ => return None,
            },
            RowKey::Order(_) => match self.read(key)? {
                Row::Order(o) => RowLock::Order {
                    product: o.product_id,
                    id: o.id,
                },
                _ => return None,
            },
            RowKey::Webhook(k) => RowLock::Webhook(IdempotencyKey::parse(k)?),
            RowKey::RequestKey(k) => RowLock::RequestKey(IdempotencyKey::parse(k)?),
            // Buckets are written under their product's lock and take none of their own.
            RowKey::Bucket(..) => return None,
        })
    }

    /// Discards the writes and releases the locks, granting each to its next waiter.
    pub(super) fn rollback(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        self.writes.clear();
        let over_budget = self.observer.check_budget().err();
        let mut shared = self.store.shared();
        if let Some(failure) = over_budget {
            shared.violation.get_or_insert(failure);
        }
        shared.counts.rollbacks += 1;
        shared.log.extend(self.observer.end(false, sim_us()));
        release_locks(&mut shared, self.id);
    }

    pub(super) fn product_row(&self, id: ProductId) -> Option<Product> {
        match self.read(&RowKey::Product(id.0)) {
            Some(Row::Product(p)) => Some(p),
            _ => None,
        }
    }

    pub(super) fn hold_row(&self, id: HoldId) -> Option<Hold> {
        match self.read(&RowKey::Hold(id.0)) {
            Some(Row::Hold(mut h)) => {
                if self.bug() == Some(Bug::ConsumeReleasedHold)
                    && matches!(h.state, HoldState::Released(_))
                {
                    h.state = HoldState::Held;
                }
                Some(h)
            }
            _ => None,
        }
    }

    pub(super) fn order_row(&self, id: OrderId) -> Option<Order> {
        match self.read(&RowKey::Order(id.0)) {
            Some(Row::Order(o)) => Some(o),
            _ => None,
        }
    }
}

impl Drop for SimTx {
    fn drop(&mut self) {
        self.rollback();
    }
}
