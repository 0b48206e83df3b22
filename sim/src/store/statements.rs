//! The service's statements as InnoDB would run them in a simulated transaction (locking reads,
//! the write of a write-set, the sweeper's queries), and its commit: unique keys, the planted
//! bugs, the invariants on the whole state, the trace, and a commit whose answer is lost.

use std::collections::BTreeSet;

use flashsale_check::failure::{Check, Failure};
use flashsale_core::{
    BucketRead, Command, ExpiryBucket, Hold, HoldId, HoldState, IdempotencyKey, Inserted, Order,
    OrderId, Product, ProductId, Put, Qty, RequestRecord, Tables, Timestamp, WebhookRecord,
    WriteSet, lay,
};
use flashsale_service::store::{
    Dump, ProductRead, RecordKind, StoreError, StoreResult, SweepCandidates, Transaction,
};
use madsim::rand::{Rng, thread_rng};

use super::bug::{Bug, PANIC_AT_WEBHOOK};
use super::locks::release_locks;
use super::tables::{Row, RowKey, row_words};
use super::tx::SimTx;
use super::{sim_us, tx_event, violated};

impl Transaction for SimTx {
    async fn commit(mut self) -> StoreResult<()> {
        self.step().await?;
        let writes = std::mem::take(&mut self.writes);
        let answer_lost = {
            let mut shared = self.store.shared();
            for row in writes.values() {
                // The primary keys: a concurrent insert of the same key commits first. Every
                // webhook and request-key write of the service is an insert.
                let exists = match row {
                    Row::Webhook(w) => {
                        let planted = shared.bug == Some(Bug::ApplyWebhookTwice);
                        shared.tables.webhooks.contains_key(w.key.as_str()) && !planted
                    }
                    Row::RequestKey(r) => shared.tables.request_keys.contains_key(r.key.as_str()),
                    _ => false,
                };
                if exists {
                    drop(shared);
                    self.rollback();
                    return Err(StoreError::Contention("1062 duplicate key".into()));
                }
            }
            let webhooks = writes
                .values()
                .filter(|row| matches!(row, Row::Webhook(_)))
                .count();
            if shared.bug == Some(Bug::PanicInCommit)
                && webhooks > 0
                && shared.tables.webhooks.len().saturating_add(webhooks) >= PANIC_AT_WEBHOOK
            {
                drop(shared);
                panic!(
                    "planted panic-in-commit: tx{} writes webhook record {PANIC_AT_WEBHOOK}",
                    self.id
                );
            }
            if let Err(failure) = self.observer.check_budget() {
                shared.violation.get_or_insert(failure);
            }
            let entries = self.observer.end(true, sim_us());
            if let Some(&instance) = shared.batches_open.get(&self.id) {
                let alongside = (shared.batches_open.iter())
                    .any(|(&tx, &other)| tx != self.id && other == instance);
                if alongside && !entries.is_empty() {
                    shared.counts.committers_overlapped += 1;
                }
            }
            if entries.len() > 1 {
                shared.counts.batched += entries.len() as u64;
                let products: BTreeSet<u64> = (writes.values())
                    .filter_map(|row| match row {
                        Row::Product(p) => Some(p.id.0),
                        _ => None,
                    })
                    .collect();
                if products.len() > 1 {
                    shared.counts.batched_products += 1;
                }
                let kinds: BTreeSet<&str> = entries.iter().map(|e| kind(&e.command)).collect();
                if kinds.len() > 1 {
                    shared.counts.batched_kinds += 1;
                }
                let folds = writes
                    .values()
                    .any(|row| matches!(row, Row::BucketGone(..)));
                if folds {
                    shared.counts.batched_folding += 1;
                }
            }
            if entries.is_empty() && !writes.is_empty() {
                let failure = Failure::new(
                    Check::Refinement,
                    "commit outside any request",
                    format!("transaction tx{} committed outside any request", self.id),
                );
                shared.violation.get_or_insert(failure);
            }
            let sweeping =
                (entries.iter()).any(|e| matches!(e.command, Command::SweepProduct { .. }));
            let granting = (entries.iter()).any(|e| matches!(e.command, Command::PlaceHold { .. }));
            let storm_folded = writes.values().any(|row| match row {
                Row::BucketGone(p, at) => (shared.tables.buckets.get(&(p.0, at.as_ms())))
                    .is_some_and(|b| b.holds >= super::STORM_BUCKET_HOLDS),
                _ => false,
            });
            if granting && storm_folded {
                shared.counts.grants_folding_storm += 1;
            }
            for row in writes.values() {
                if let Row::Product(p) = row {
                    if sweeping {
                        shared.swept_last.insert(p.id.0);
                    } else {
                        shared.swept_last.remove(&p.id.0);
                    }
                }
            }
            shared.log.extend(entries);
            for row in writes.into_values() {
                let (product, text) = row_words(&row);
                let event = tx_event(self.id, product, format!("commit: {text}"));
                shared.trace.record(event);
                shared.tables.put(row);
            }
            shared.counts.commits += 1;
            if shared.violation.is_none()
                && let Err(violation) = shared.tables.ledger().check_invariants()
            {
                shared.violation = Some(violated(&violation, self.id));
            }
            let lost = thread_rng().gen_bool(shared.faults.commit_answer_lost.clamp(0.0, 1.0));
            if lost {
                shared.counts.commit_answer_lost += 1;
                let text = "fault injected: the commit applied, its answer is lost".to_owned();
                shared.trace.record(tx_event(self.id, None, text));
            }
            self.open = false;
            release_locks(&mut shared, self.id);
            lost
        };
        if answer_lost && self.bug() == Some(Bug::LostCommitAsLostConnection) {
            Err(StoreError::Connection(
                "commit answer lost (injected)".into(),
            ))
        } else if answer_lost {
            Err(StoreError::CommitUnknown(
                "commit answer lost (injected)".into(),
            ))
        } else {
            Ok(())
        }
    }

    async fn product_view(
        &mut self,
        id: ProductId,
        now: Timestamp,
    ) -> StoreResult<Option<ProductRead>> {
        self.step().await?;
        self.store.shared().product_views += 1;
        let Some(product) = self.product_row(id) else {
            return Ok(None);
        };
        // The table's due buckets, and the product's open bucket in its row.
        let mut due = self.due_of(id, now);
        let open = product.live_bucket();
        due.extend(open.filter(|b| b.expires_at <= now));
        if self.bug() == Some(Bug::ReadDeadlineAsHeld) {
            due.retain(|b| b.expires_at != now);
        }
        let next = self.buckets_of(id).into_iter().find(|b| b.expires_at > now);
        let open_next = open.filter(|b| b.expires_at > now);
        let next = next
            .into_iter()
            .chain(open_next)
            .map(|b| b.expires_at)
            .min();
        let units_due = due
            .iter()
            .fold(0u32, |sum, b| sum.saturating_add(b.units.0));
        Ok(Some(ProductRead {
            product,
            units_due: Qty(units_due),
            next_deadline: next,
        }))
    }

    async fn lock_products(&mut self, ids: &[ProductId]) -> StoreResult<Vec<Product>> {
        self.observer.locking_products(ids);
        self.step().await?;
        let mut products = Vec::new();
        for &id in ids {
            if self.bug() != Some(Bug::SkipProductLock) {
                self.lock(RowKey::Product(id.0)).await?;
            }
            products.extend(self.product_row(id));
        }
        self.observer.loaded(products.len());
        Ok(products)
    }

    async fn due_buckets(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<ExpiryBucket>> {
        self.step().await?;
        let due: Vec<ExpiryBucket> = (products.iter())
            .flat_map(|&id| self.due_of(id, now))
            .collect();
        self.observer.loaded(due.len());
        if self.bug() == Some(Bug::LoadEveryExpiredHold) {
            // The buckets, and every expired hold besides, as the old read did: the decisions
            // are the same, only the rows read grow with the number of holds that expired.
            let holds: usize = (products.iter())
                .map(|&id| self.expired_unfolded(id, now))
                .sum();
            self.observer.loaded(holds);
        }
        Ok(due)
    }

    async fn write(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        self.step().await?;
        // An UPDATE takes the row's lock, as InnoDB's would.
        for &(hold_id, _) in writes.holds_released.iter().chain(&writes.holds_retired) {
            self.lock(RowKey::Hold(hold_id.0)).await?;
        }
        let mut inserted = Inserted::default();
        let planted = self.planted(writes);
        lay(
            &mut Staging(self),
            planted.as_ref().unwrap_or(writes),
            &mut inserted,
        )?;
        self.observer.wrote(writes, &inserted);
        Ok(inserted)
    }

    async fn holds(&mut self, ids: &[HoldId], lock: bool) -> StoreResult<Vec<Hold>> {
        self.step().await?;
        let mut holds = Vec::new();
        for &id in ids {
            // A locking read locks the rows it finds; there is no row lock for an absent id.
            if lock && self.hold_row(id).is_some() {
                self.lock(RowKey::Hold(id.0)).await?;
            }
            holds.extend(self.hold_row(id));
        }
        if lock {
            self.observer.locking_holds(ids);
        }
        self.observer.loaded(holds.len());
        Ok(holds)
    }

    async fn orders(&mut self, ids: &[OrderId], lock: bool) -> StoreResult<Vec<Order>> {
        self.step().await?;
        let mut orders = Vec::new();
        for &id in ids {
            if lock && self.order_row(id).is_some() {
                self.lock(RowKey::Order(id.0)).await?;
            }
            orders.extend(self.order_row(id));
        }
        if lock {
            self.observer.locking_orders(ids);
        }
        self.observer.loaded(orders.len());
        Ok(orders)
    }

    async fn lock_webhooks(&mut self, keys: &[IdempotencyKey]) -> StoreResult<Vec<WebhookRecord>> {
        self.step().await?;
        let mut records = Vec::new();
        for key in keys {
            let row_key = RowKey::Webhook(key.as_str().to_owned());
            self.lock(row_key.clone()).await?;
            if self.bug() == Some(Bug::ApplyWebhookTwice) {
                continue;
            }
            if let Some(Row::Webhook(w)) = self.read(&row_key) {
                records.push(w);
            }
        }
        self.observer.loaded(records.len());
        Ok(records)
    }

    async fn lock_request_keys(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> StoreResult<Vec<RequestRecord>> {
        self.step().await?;
        let mut records = Vec::new();
        for key in keys {
            let row_key = RowKey::RequestKey(key.as_str().to_owned());
            self.lock(row_key.clone()).await?;
            if let Some(Row::RequestKey(r)) = self.read(&row_key) {
                self.observer.found(std::slice::from_ref(&r));
                records.push(r);
            }
        }
        self.observer.loaded(records.len());
        Ok(records)
    }

    async fn products_due(&mut self, now: Timestamp, limit: u32) -> StoreResult<Vec<ProductId>> {
        self.step().await?;
        let shared = self.store.shared();
        let tables = &shared.tables;
        let due = (tables.buckets.values()).filter(|b| b.expires_at <= now);
        let to_retire = (tables.products.values()).filter(|p| {
            p.holds_to_retire > 0 || p.live_bucket().is_some_and(|b| b.expires_at <= now)
        });
        let orders = tables.orders.values().filter(|o| o.is_overdue(now));
        let ids: BTreeSet<ProductId> = due
            .map(|b| b.product_id)
            .chain(to_retire.map(|p| p.id))
            .chain(orders.map(|o| o.product_id))
            .collect();
        Ok(ids.into_iter().take(limit as usize).collect())
    }

    async fn sweep_candidates(
        &mut self,
        product: ProductId,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<SweepCandidates> {
        self.step().await?;
        let Some(row) = self.product_row(product) else {
            return Ok(SweepCandidates::default());
        };
        let at = row.decision_time(now);
        let mut holds: Vec<Hold> = (self.holds_of(product).into_iter())
            .filter(|h| h.state == HoldState::Held && h.is_expired(at))
            .collect();
        holds.sort_by_key(|h| (h.expires_at, h.id));
        let mut orders: Vec<Order> = {
            let shared = self.store.shared();
            (shared.tables.orders.values())
                .filter(|o| o.product_id == product && o.is_overdue(at))
                .copied()
                .collect()
        };
        orders.sort_by_key(|o| (o.payment_due_at, o.id));
        Ok(SweepCandidates {
            holds: holds.iter().take(limit as usize).map(|h| h.id).collect(),
            orders: orders.iter().take(limit as usize).map(|o| o.id).collect(),
        })
    }

    async fn holds_to_retire(&mut self) -> StoreResult<u64> {
        self.step().await?;
        let shared = self.store.shared();
        let products = shared.tables.products.values();
        Ok(products.map(|p| u64::from(p.holds_to_retire)).sum())
    }

    async fn purge_records(
        &mut self,
        _kind: RecordKind,
        _before: Timestamp,
        _limit: u32,
    ) -> StoreResult<u64> {
        // Not modelled: the checkers replay every record a run wrote. The world runs its
        // services with retention off, so a call here is a bug in the world, said loudly.
        Err(StoreError::Database(
            "the simulated storage keeps every record; run the service with retention off".into(),
        ))
    }

    async fn first_product(&mut self) -> StoreResult<Option<Product>> {
        self.step().await?;
        let first = self.store.shared().tables.products.values().next().cloned();
        self.observer.loaded(usize::from(first.is_some()));
        Ok(first)
    }

    async fn dump(&mut self) -> StoreResult<Dump> {
        self.step().await?;
        let shared = self.store.shared();
        Ok(Dump {
            products: shared.tables.products.values().cloned().collect(),
            holds: shared.tables.holds.values().copied().collect(),
            orders: shared.tables.orders.values().copied().collect(),
            webhooks: shared.tables.webhooks.values().cloned().collect(),
            request_keys: shared.tables.request_keys.values().cloned().collect(),
            buckets: shared.tables.buckets.values().copied().collect(),
        })
    }
}

impl SimTx {
    /// The write-set as a planted bug writes it, if one changes it: retired holds left held, or
    /// request keys never recorded.
    fn planted(&self, writes: &WriteSet) -> Option<WriteSet> {
        match self.bug()? {
            Bug::ForgetReleaseExpired => Some(WriteSet {
                holds_retired: Vec::new(),
                ..writes.clone()
            }),
            Bug::ForgetRequestKey => Some(WriteSet {
                request_keys: Vec::new(),
                ..writes.clone()
            }),
            _ => None,
        }
    }
}

/// A simulated transaction's rows, as a write-set is laid over them: it reads what the
/// transaction sees (its own staged rows over the committed ones), and stages what it puts.
struct Staging<'t>(&'t mut SimTx);

impl Tables for Staging<'_> {
    type Error = StoreError;

    fn product(&self, id: ProductId) -> Option<Product> {
        self.0.product_row(id)
    }

    fn bucket(&self, product_id: ProductId, expires_at: Timestamp) -> BucketRead {
        match self
            .0
            .read(&RowKey::Bucket(product_id.0, expires_at.as_ms()))
        {
            Some(Row::Bucket(bucket)) => BucketRead::Row(bucket),
            _ => BucketRead::Absent,
        }
    }

    fn hold(&self, id: HoldId) -> Option<Hold> {
        self.0.hold_row(id)
    }

    fn order(&self, id: OrderId) -> Option<Order> {
        self.0.order_row(id)
    }

    fn new_hold_id(&mut self, _: &Inserted) -> HoldId {
        HoldId(self.0.next_id(1))
    }

    fn new_order_id(&mut self, _: &Inserted) -> OrderId {
        OrderId(self.0.next_id(2))
    }

    fn new_product_id(&mut self, _: &Inserted) -> ProductId {
        ProductId(self.0.next_id(0))
    }

    fn put(&mut self, row: Put) -> StoreResult<()> {
        let row = match row {
            Put::Product(product) => Row::Product(product),
            Put::Bucket(bucket) => Row::Bucket(bucket),
            Put::BucketGone(product_id, expires_at) => Row::BucketGone(product_id, expires_at),
            Put::Hold(hold) => Row::Hold(hold),
            Put::Order(order) => {
                if self.0.order_row(order.id).is_none() {
                    self.0.one_order_per_hold(order.hold_id)?;
                }
                Row::Order(order)
            }
            Put::Webhook(record) => Row::Webhook(record),
            Put::RequestKey(record) => Row::RequestKey(record),
        };
        self.0.stage(row);
        Ok(())
    }
}

/// A command's kind, to tell batches of one kind from mixed ones.
fn kind(command: &Command) -> &'static str {
    match command {
        Command::CreateProduct { .. } | Command::SeedDemo => "create product",
        Command::Restock { .. } => "restock",
        Command::PlaceHold { .. } => "hold",
        Command::PlaceOrder { .. } => "order",
        Command::ApplyWebhook(_) => "webhook",
        Command::Sweep | Command::SweepProduct { .. } => "sweep",
    }
}
