//! A simulated storage that behaves like MySQL/InnoDB where it matters to the service: per-row
//! exclusive locks taken by locking reads, granted in arrival order, with deadlock detection and
//! a lock-wait timeout; transactions that see committed rows plus their own writes and apply
//! their writes atomically at commit; latency drawn from the seed; and injected faults:
//! deadlock and lock-wait-timeout errors, a connection lost mid-transaction (rolled back), and a
//! commit that succeeds while its answer is lost.
//!
//! Every commit is checked against the core's invariants on the whole state, and folded into the
//! run's trace hash. A [`Bug`] switch plants a known bug here (never in the service), so tests
//! can show that the simulator finds it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flashsale_core::{
    Cents, Command, Hold, HoldId, HoldState, IdempotencyKey, Inserted, Ledger, NewOrder, Order,
    OrderId, Product, ProductId, Qty, ReleaseReason, RequestRecord, RowLock, Timestamp,
    WebhookRecord, WriteSet,
};
use flashsale_server::store::{
    Dump, ProductRead, RecordKind, Storage, StoreError, StoreResult, Transaction, TxMode,
};
use madsim::rand::{Rng, thread_rng};
use tokio::sync::oneshot;

use crate::plan::FaultProfile;
use crate::trace::{Event, Trace};
use flashsale_check::failure::{Check, Failure};
use flashsale_check::observer::{CommitLog, TxObserver};
use flashsale_check::recording::{self, Entry};
use flashsale_check::words;

/// How long a locking read waits before failing as InnoDB's error 1205 would.
pub const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A bug planted in the storage, to prove the checkers catch it. The first line of each
/// variant's doc is what `--help` lists for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// Locking a product takes no lock, so two hold requests decide on one read of its counters.
    SkipProductLock,
    /// The release of an expired hold is not written while its product's counters still move.
    ///
    /// A hold stays held that its product no longer counts.
    ForgetReleaseExpired,
    /// A released hold reads back as held, so an order can consume it.
    ConsumeReleasedHold,
    /// A webhook key's record is never found, so a redelivered webhook is applied again.
    ApplyWebhookTwice,
    /// A client's Idempotency-Key record is never written, so a retry holds or orders again.
    ForgetRequestKey,
    /// A hold request never finds expired holds, so it is refused while their units are free.
    ///
    /// The sweeper still releases them. Invariants hold throughout: only the answers are wrong,
    /// which only the replay of answers can see.
    CountExpiredHolds,
    /// A commit whose answer was lost is reported as a lost connection, so it runs again.
    ///
    /// The service retries a lost connection, and so runs the transaction again over the commit
    /// that applied.
    LostCommitAsLostConnection,
    /// A product read counts a hold whose deadline is exactly now as held.
    ///
    /// A hold request counts it free, so the two disagree for one millisecond per hold; no
    /// invariant and no command's answer can see it, only reads checked at deadlines.
    ReadDeadlineAsHeld,
    /// The storage panics while committing the 5th webhook record, as a failed assertion would.
    ///
    /// It proves that a panic inside the simulation fails its seed with the panic's message,
    /// the request, and the last trace lines, instead of taking the run down.
    PanicInCommit,
}

/// The webhook record whose commit [`Bug::PanicInCommit`] panics in.
const PANIC_AT_WEBHOOK: usize = 5;

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 9] = [
        Bug::SkipProductLock,
        Bug::ForgetReleaseExpired,
        Bug::ConsumeReleasedHold,
        Bug::ApplyWebhookTwice,
        Bug::ForgetRequestKey,
        Bug::CountExpiredHolds,
        Bug::LostCommitAsLostConnection,
        Bug::ReadDeadlineAsHeld,
        Bug::PanicInCommit,
    ];

    /// The command-line word for it.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipProductLock => "skip-product-lock",
            Bug::ForgetReleaseExpired => "forget-release-expired",
            Bug::ConsumeReleasedHold => "consume-released-hold",
            Bug::ApplyWebhookTwice => "apply-webhook-twice",
            Bug::ForgetRequestKey => "forget-request-key",
            Bug::CountExpiredHolds => "count-expired-holds",
            Bug::LostCommitAsLostConnection => "lost-commit-as-lost-connection",
            Bug::ReadDeadlineAsHeld => "read-deadline-as-held",
            Bug::PanicInCommit => "panic-in-commit",
        }
    }

    /// Parses a command-line word.
    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// How many times each fault fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Injected deadlocks.
    pub deadlock: u64,
    /// Injected lock-wait timeouts.
    pub lock_timeout: u64,
    /// Real lock-wait timeouts (a lock held too long).
    pub lock_timeout_real: u64,
    /// Real deadlocks detected in the wait-for graph.
    pub deadlock_real: u64,
    /// Batches (transactions deciding several hold requests) that released expired holds.
    pub batched_releasing: u64,
    /// Connections lost mid-transaction.
    pub connection_lost: u64,
    /// Commits whose answer was lost.
    pub commit_answer_lost: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions rolled back.
    pub rollbacks: u64,
    /// Requests a committed transaction decided together with others (a batch).
    pub batched: u64,
    /// Committed batches that wrote the rows of several products.
    pub batched_products: u64,
    /// Committed batches that decided requests of several kinds (holds, orders, webhooks,
    /// restocks).
    pub batched_kinds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RowKey {
    Product(u64),
    Hold(u64),
    Order(u64),
    Webhook(String),
    RequestKey(String),
}

#[derive(Clone, Debug)]
enum Row {
    Product(Product),
    Hold(Hold),
    Order(Order),
    Webhook(WebhookRecord),
    RequestKey(RequestRecord),
}

#[derive(Clone, Debug, Default)]
struct Tables {
    products: BTreeMap<u64, Product>,
    holds: BTreeMap<u64, Hold>,
    orders: BTreeMap<u64, Order>,
    webhooks: BTreeMap<String, WebhookRecord>,
    request_keys: BTreeMap<String, RequestRecord>,
    id_last: [u64; 3],
}

impl Tables {
    fn get(&self, key: &RowKey) -> Option<Row> {
        match key {
            RowKey::Product(id) => self.products.get(id).cloned().map(Row::Product),
            RowKey::Hold(id) => self.holds.get(id).copied().map(Row::Hold),
            RowKey::Order(id) => self.orders.get(id).copied().map(Row::Order),
            RowKey::Webhook(key) => self.webhooks.get(key).cloned().map(Row::Webhook),
            RowKey::RequestKey(key) => self.request_keys.get(key).cloned().map(Row::RequestKey),
        }
    }

    fn put(&mut self, row: Row) {
        match row {
            Row::Product(p) => drop(self.products.insert(p.id.0, p)),
            Row::Hold(h) => drop(self.holds.insert(h.id.0, h)),
            Row::Order(o) => drop(self.orders.insert(o.id.0, o)),
            Row::Webhook(w) => drop(self.webhooks.insert(w.key.as_str().to_owned(), w)),
            Row::RequestKey(r) => drop(self.request_keys.insert(r.key.as_str().to_owned(), r)),
        }
    }

    fn ledger(&self) -> Ledger {
        Ledger::from_rows(
            self.products.values().cloned(),
            self.holds.values().copied(),
            self.orders.values().copied(),
            self.webhooks.values().cloned(),
        )
        .with_request_keys(self.request_keys.values().cloned())
    }
}

#[derive(Debug, Default)]
struct Lock {
    holder: u64,
    waiters: VecDeque<(u64, Option<oneshot::Sender<()>>)>,
}

/// Everything the simulated database keeps, behind one mutex (madsim runs one task at a time).
#[derive(Debug, Default)]
struct Shared {
    tables: Tables,
    locks: BTreeMap<RowKey, Lock>,
    waiting_for: BTreeMap<u64, RowKey>,
    tx_last: u64,
    faults: FaultProfile,
    counts: FaultCounts,
    bug: Option<Bug>,
    violation: Option<Failure>,
    trace: Trace,
    log: CommitLog,
}

/// The simulated database, shared by every server instance of a run.
#[derive(Clone, Debug, Default)]
pub struct SimStore(Arc<Mutex<Shared>>);

impl SimStore {
    /// An empty database with the given faults and planted bug.
    pub fn new(faults: FaultProfile, bug: Option<Bug>) -> Self {
        let store = SimStore::default();
        {
            let mut shared = store.shared();
            shared.faults = faults;
            shared.bug = bug;
        }
        store
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic inside the lock already failed the run; keep going to report it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the fault profile (the liveness phase turns faults off).
    pub fn set_faults(&self, faults: FaultProfile) {
        self.shared().faults = faults;
    }

    /// How often each fault fired so far.
    pub fn counts(&self) -> FaultCounts {
        self.shared().counts
    }

    /// The first invariant violation seen after a commit, if any.
    pub fn violation(&self) -> Option<Failure> {
        self.shared().violation.clone()
    }

    /// The committed state as a ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared().tables.ledger()
    }

    /// Every client request's idempotency-key record.
    pub fn request_keys(&self) -> Vec<RequestRecord> {
        self.shared()
            .tables
            .request_keys
            .values()
            .cloned()
            .collect()
    }

    /// Every transaction end worth replaying, in order: each commit that wrote rows, and each
    /// rollback or read-only commit of a request a client is answered.
    pub fn commit_log(&self) -> Vec<Entry> {
        self.shared().log.entries().to_vec()
    }

    /// How many entries the log holds: a position in commit order, between transactions.
    pub fn log_len(&self) -> usize {
        self.shared().log.len()
    }

    /// How many entries the log held at `at_us` (true simulated time): the first position a
    /// read answered from a cache entry taken then may have seen.
    pub fn log_len_at(&self, at_us: u64) -> usize {
        self.shared().log.len_at(at_us)
    }

    /// The trace of commits so far.
    pub fn trace(&self) -> Trace {
        self.shared().trace.clone()
    }

    /// Keeps every trace event from now on, for printing.
    pub fn keep_trace(&self) {
        self.shared().trace.keep();
    }

    /// Records an event in the trace.
    pub fn note(&self, event: Event) {
        self.shared().trace.record(event);
    }
}

/// Simulated time since the run began, in microseconds.
pub fn sim_us() -> u64 {
    let elapsed = madsim::time::TimeHandle::current().elapsed();
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// An event of transaction `tx` for the requests it serves now, about `product` (else the
/// first request's product).
fn tx_event(tx: u64, product: Option<ProductId>, text: String) -> Event {
    let (requests, instance, first_product) = recording::current_ids();
    Event {
        at_us: sim_us(),
        instance,
        requests,
        tx: Some(tx),
        product: product.or(first_product).map(|p| p.0),
        text,
        digest: None,
    }
}

/// The failure a violated invariant is, located at the requests the committing transaction
/// served.
fn violated(violation: &flashsale_core::Violation, tx: u64) -> Failure {
    let (kind, message) = words::violation(violation);
    let ops = recording::current();
    let first = ops.first();
    let mut failure = Failure::new(
        Check::Invariant,
        kind,
        format!("{message} (after commit tx{tx})"),
    )
    .at_request(first.map(|op| op.id));
    failure.instance = first.and_then(|op| op.instance);
    failure.at_ms = Some(sim_us() / 1_000);
    failure
}

/// A row as the trace shows it, and its product.
fn row_words(row: &Row) -> (Option<ProductId>, String) {
    match row {
        Row::Product(p) => (Some(p.id), words::product(p)),
        Row::Hold(h) => (Some(h.product_id), words::hold(h)),
        Row::Order(o) => (Some(o.product_id), words::order(o)),
        Row::Webhook(w) => (None, words::webhook(w)),
        Row::RequestKey(r) => (None, words::request_key(r)),
    }
}

impl Storage for SimStore {
    type Tx = SimTx;

    async fn begin(&self, _mode: TxMode) -> StoreResult<SimTx> {
        let id = {
            let mut shared = self.shared();
            shared.tx_last = shared.tx_last.saturating_add(1);
            shared.tx_last
        };
        let mut tx = SimTx {
            store: self.clone(),
            id,
            writes: BTreeMap::new(),
            observer: TxObserver::new(id),
            open: true,
        };
        tx.step().await?;
        Ok(tx)
    }
}

/// An open simulated transaction. Dropped without commit, it rolls back.
#[derive(Debug)]
pub struct SimTx {
    store: SimStore,
    id: u64,
    writes: BTreeMap<RowKey, Row>,
    /// The locks it took (checked against the global lock order) and what its end logs.
    observer: TxObserver,
    open: bool,
}

impl SimTx {
    /// Latency, then maybe a fault: every step of every transaction goes through here.
    async fn step(&mut self) -> StoreResult<()> {
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
    async fn lock(&mut self, key: RowKey) -> StoreResult<()> {
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
    fn read(&self, key: &RowKey) -> Option<Row> {
        self.writes
            .get(key)
            .cloned()
            .or_else(|| self.store.shared().tables.get(key))
    }

    /// Stages a row in this transaction's writes.
    fn stage(&mut self, row: Row) {
        let key = match &row {
            Row::Product(p) => RowKey::Product(p.id.0),
            Row::Hold(h) => RowKey::Hold(h.id.0),
            Row::Order(o) => RowKey::Order(o.id.0),
            Row::Webhook(w) => RowKey::Webhook(w.key.as_str().to_owned()),
            Row::RequestKey(r) => RowKey::RequestKey(r.key.as_str().to_owned()),
        };
        self.writes.insert(key, row);
    }

    /// The holds of a product as this transaction sees them.
    fn holds_of(&self, product_id: ProductId) -> Vec<Hold> {
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

    fn bug(&self) -> Option<Bug> {
        self.store.shared().bug
    }

    /// The product's held holds past their deadline at `now`, in id order.
    fn expired_of(&self, product_id: ProductId, now: Timestamp) -> Vec<Hold> {
        // The planted bug hides them from hold requests only; the sweeper still releases them,
        // so every row ends as it should and only the answers differ.
        let placing = recording::current()
            .iter()
            .any(|op| matches!(op.command, Some(Command::PlaceHold { .. })));
        if self.bug() == Some(Bug::CountExpiredHolds) && placing {
            return Vec::new();
        }
        let holds = self.holds_of(product_id).into_iter();
        holds
            .filter(|h| h.state == HoldState::Held && h.is_expired(now))
            .collect()
    }

    /// Moves a hold to `state` in this transaction's writes.
    fn set_hold_state(&mut self, id: HoldId, state: HoldState) -> StoreResult<()> {
        let mut hold = match self.read(&RowKey::Hold(id.0)) {
            Some(Row::Hold(h)) => h,
            _ => return Err(missing("hold", id.0)),
        };
        hold.state = state;
        self.stage(Row::Hold(hold));
        Ok(())
    }

    /// Inserts an order, refusing a second one for its hold as the unique key would.
    fn insert_order(&mut self, order: &NewOrder) -> StoreResult<Order> {
        let taken = {
            let shared = self.store.shared();
            shared
                .tables
                .orders
                .values()
                .any(|o| o.hold_id == order.hold_id)
        };
        let mine = self
            .writes
            .values()
            .any(|r| matches!(r, Row::Order(o) if o.hold_id == order.hold_id));
        if taken || mine {
            self.rollback();
            return Err(StoreError::Contention(
                "1062 duplicate key orders_one_per_hold".into(),
            ));
        }
        let order = order.with_id(OrderId(self.next_id(2)));
        self.stage(Row::Order(order));
        Ok(order)
    }

    fn next_id(&self, table: usize) -> u64 {
        let mut shared = self.store.shared();
        shared.tables.id_last[table] = shared.tables.id_last[table].saturating_add(1);
        shared.tables.id_last[table]
    }

    /// The lock the core's global lock order names for `key`, with a hold's or order's product;
    /// `None` for a row that does not exist yet (nobody else can be waiting on it).
    fn row_lock(&self, key: &RowKey) -> Option<RowLock> {
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
        })
    }

    /// Discards the writes and releases the locks, granting each to its next waiter.
    fn rollback(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        self.writes.clear();
        let mut shared = self.store.shared();
        shared.counts.rollbacks += 1;
        shared.log.extend(self.observer.end(false, sim_us()));
        release_locks(&mut shared, self.id);
    }

    fn product_row(&self, id: ProductId) -> Option<Product> {
        match self.read(&RowKey::Product(id.0)) {
            Some(Row::Product(p)) => Some(p),
            _ => None,
        }
    }

    fn hold_row(&self, id: HoldId) -> Option<Hold> {
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

    fn order_row(&self, id: OrderId) -> Option<Order> {
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

/// Whether `tx` waiting for `key` would close a cycle in the wait-for graph.
fn deadlocks(shared: &Shared, tx: u64, key: &RowKey) -> bool {
    let mut seen = BTreeSet::new();
    let mut next = shared.locks.get(key).map(|lock| lock.holder);
    while let Some(holder) = next {
        if holder == tx {
            return true;
        }
        if !seen.insert(holder) {
            return false;
        }
        next = shared
            .waiting_for
            .get(&holder)
            .and_then(|k| shared.locks.get(k))
            .map(|l| l.holder);
    }
    false
}

/// Releases every lock `tx` holds, granting each to its next live waiter, and takes `tx` out of
/// every queue. Found by holder, not by a list the transaction keeps: a lock granted to a
/// waiter whose task was cut off (a crash) before it woke would otherwise never be released.
fn release_locks(shared: &mut Shared, tx: u64) {
    shared.waiting_for.remove(&tx);
    let keys: Vec<RowKey> = shared.locks.keys().cloned().collect();
    for key in keys {
        let Some(lock) = shared.locks.get_mut(&key) else {
            continue;
        };
        lock.waiters.retain(|(id, _)| *id != tx);
        if lock.holder != tx {
            continue;
        }
        let mut granted = false;
        while let Some((waiter, sender)) = lock.waiters.pop_front() {
            lock.holder = waiter;
            if sender.is_some_and(|s| s.send(()).is_ok()) {
                granted = true;
                break;
            }
        }
        if !granted {
            shared.locks.remove(&key);
        }
    }
}

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
            let entries = self.observer.end(true, sim_us());
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
                let releases = writes.values().any(|row| {
                    matches!(row, Row::Hold(h) if h.state == HoldState::Released(ReleaseReason::Expired)
                        && shared.tables.holds.get(&h.id.0).is_some_and(|old| old.state == HoldState::Held))
                });
                if releases {
                    shared.counts.batched_releasing += 1;
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
        let Some(product) = self.product_row(id) else {
            return Ok(None);
        };
        let mut expired = self.expired_of(id, now);
        if self.bug() == Some(Bug::ReadDeadlineAsHeld) {
            expired.retain(|h| h.expires_at != now);
        }
        let live = self.holds_of(id).into_iter().filter(|h| h.is_live(now));
        Ok(Some(ProductRead {
            product,
            units_expired: Qty(expired
                .iter()
                .fold(0u32, |sum, h| sum.saturating_add(h.qty.0))),
            next_deadline: live.map(|h| h.expires_at).min(),
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
        Ok(products)
    }

    async fn insert_product(
        &mut self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> StoreResult<Product> {
        self.step().await?;
        let id = ProductId(self.next_id(0));
        let product = Product {
            id,
            name: name.to_owned(),
            price_cents,
            stock,
            units_held: Qty::ZERO,
            units_received: u64::from(stock.0),
        };
        self.stage(Row::Product(product.clone()));
        self.observer.inserted_product(id);
        Ok(product)
    }

    async fn expired_holds(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<Hold>> {
        self.step().await?;
        let expired: Vec<Hold> = products
            .iter()
            .flat_map(|&id| self.expired_of(id, now))
            .collect();
        for hold in &expired {
            self.lock(RowKey::Hold(hold.id.0)).await?;
        }
        Ok(expired)
    }

    async fn write(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        self.step().await?;
        let mut inserted = Inserted::default();
        let unresolved = |v: flashsale_core::Violation| StoreError::Corrupt(v.to_string());
        for counters in &writes.products {
            let mut product = self
                .product_row(counters.id)
                .ok_or_else(|| missing("product", counters.id.0))?;
            product.set_counters(*counters);
            self.stage(Row::Product(product));
        }
        for &(hold_id, reason) in &writes.holds_released {
            // An UPDATE takes the row's lock, as InnoDB's would.
            self.lock(RowKey::Hold(hold_id.0)).await?;
            let planted = self.bug() == Some(Bug::ForgetReleaseExpired);
            if planted && reason == ReleaseReason::Expired {
                continue;
            }
            self.set_hold_state(hold_id, HoldState::Released(reason))?;
        }
        for new in &writes.holds_inserted {
            let hold = new.with_id(HoldId(self.next_id(1)));
            self.stage(Row::Hold(hold));
            inserted.holds.push(hold.id);
        }
        for new in &writes.orders_inserted {
            let hold_id = inserted.hold(new.hold_id).map_err(unresolved)?;
            let order = self.insert_order(new)?;
            self.set_hold_state(hold_id, HoldState::Consumed(order.id))?;
            inserted.orders.push(order.id);
        }
        for &(order_id, settled) in &writes.orders_updated {
            let order_id = inserted.order(order_id).map_err(unresolved)?;
            let order = self.order_row(order_id);
            let order = order.ok_or_else(|| missing("order", order_id.0))?;
            self.stage(Row::Order(order.settled(settled)));
        }
        for record in &writes.webhooks {
            let record = inserted.webhook_record(record).map_err(unresolved)?;
            self.stage(Row::Webhook(record));
        }
        if self.bug() != Some(Bug::ForgetRequestKey) {
            for record in &writes.request_keys {
                let record = inserted.request_record(record).map_err(unresolved)?;
                self.stage(Row::RequestKey(record));
            }
        }
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
        Ok(records)
    }

    async fn products_due(&mut self, now: Timestamp, limit: u32) -> StoreResult<Vec<ProductId>> {
        self.step().await?;
        let shared = self.store.shared();
        let holds = shared
            .tables
            .holds
            .values()
            .filter(|h| h.state == HoldState::Held && h.is_expired(now));
        let orders = shared.tables.orders.values().filter(|o| o.is_overdue(now));
        let ids: BTreeSet<ProductId> = holds
            .map(|h| h.product_id)
            .chain(orders.map(|o| o.product_id))
            .collect();
        Ok(ids.into_iter().take(limit as usize).collect())
    }

    async fn lock_overdue_orders(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<Order>> {
        self.step().await?;
        let overdue: Vec<Order> = {
            let shared = self.store.shared();
            let orders = shared.tables.orders.values();
            orders
                .filter(|o| products.contains(&o.product_id) && o.is_overdue(now))
                .copied()
                .collect()
        };
        let mut locked = Vec::new();
        for order in overdue {
            self.lock(RowKey::Order(order.id.0)).await?;
            // Read again under the lock: a webhook may have paid it meanwhile.
            if let Some(order) = self.order_row(order.id).filter(|o| o.is_overdue(now)) {
                locked.push(order);
            }
        }
        Ok(locked)
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

    async fn product_count(&mut self) -> StoreResult<u64> {
        self.step().await?;
        Ok(self.store.shared().tables.products.len() as u64)
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
        })
    }
}

/// A command's kind, to tell batches of one kind from mixed ones.
fn kind(command: &Command) -> &'static str {
    match command {
        Command::CreateProduct { .. } => "create product",
        Command::Restock { .. } => "restock",
        Command::PlaceHold { .. } => "hold",
        Command::PlaceOrder { .. } => "order",
        Command::ApplyWebhook(_) => "webhook",
        Command::Sweep | Command::SweepProduct { .. } => "sweep",
    }
}

fn missing(what: &str, id: u64) -> StoreError {
    StoreError::Corrupt(format!("{what} {id} missing"))
}
