//! A simulated storage that behaves like MySQL/InnoDB where it matters to the service: per-row
//! exclusive locks taken by locking reads, granted in arrival order, with deadlock detection and
//! a lock-wait timeout; transactions that see committed rows plus their own writes and apply
//! their writes atomically at commit; latency drawn from the seed; and injected faults:
//! deadlock and lock-wait-timeout errors, a connection lost mid-transaction (rolled back), and a
//! commit that succeeds while its answer is lost.
//!
//! Every commit is checked against the core's invariants on the whole state, and folded into the
//! run's trace hash. A [`Bug`] switch plants a known bug here (never in the service), so tests
//! can show that the simulator finds it. What the commit-order replay needs of each transaction
//! (its locks checked against the global lock order, its end's log entries) is the
//! `flashsale-check` observer's, fed from here where locks are granted and commits applied.
//!
//! This module holds the database a run shares and opens its transactions; [`tables`] holds its
//! committed rows, [`locks`] its lock table, [`tx`] an open transaction, [`statements`] the
//! statements the service runs in one (and its commit), and [`bug`] the planted bugs.

mod bug;
mod locks;
mod statements;
mod tables;
mod tx;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use flashsale_check::failure::{Check, Failure};
use flashsale_check::observer::{CommitLog, TxObserver};
use flashsale_check::recording::{self, Entry};
use flashsale_check::words;
use flashsale_core::{Ledger, ProductId, RequestRecord};
use flashsale_service::store::{Storage, StoreResult, TxMode};

use crate::plan::FaultProfile;
use crate::trace::{Event, Trace};

pub use self::bug::Bug;
pub use self::locks::LOCK_WAIT_TIMEOUT;
use self::locks::Lock;
use self::tables::{RowKey, Tables};
pub use self::tx::SimTx;

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
    /// Batches (transactions deciding several requests) that folded due expiry buckets.
    pub batched_folding: u64,
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
    /// Batches committed while another committer of the same instance had a batch's
    /// transaction open: two transactions of one instance in flight.
    pub committers_overlapped: u64,
    /// Committed batches that decided requests of several kinds (holds, orders, webhooks,
    /// restocks).
    pub batched_kinds: u64,
    /// Committed transactions in which a grant folded a bucket of at least
    /// [`STORM_BUCKET_HOLDS`] holds: a hold request while a mass expiry was due.
    pub grants_folding_storm: u64,
}

/// How many holds a bucket must hold for its fold by a grant to count as a mass expiry's.
pub const STORM_BUCKET_HOLDS: u32 = 500;

/// Everything the simulated database keeps, behind one mutex (madsim runs one task at a time).
#[derive(Debug, Default)]
struct Shared {
    tables: Tables,
    locks: BTreeMap<RowKey, Lock>,
    waiting_for: BTreeMap<u64, RowKey>,
    /// The open transactions that run a committer's batch, by the instance they run on.
    batches_open: BTreeMap<u64, usize>,
    tx_last: u64,
    faults: FaultProfile,
    counts: FaultCounts,
    bug: Option<Bug>,
    violation: Option<Failure>,
    trace: Trace,
    log: CommitLog,
    /// Product reads that reached the storage (not answered from a cache).
    product_views: u64,
    /// Products whose last committed write was a sweeper's transaction.
    swept_last: std::collections::BTreeSet<u64>,
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

    /// How many product reads reached the storage so far (a read answered from an instance's
    /// cache does not).
    pub fn product_views(&self) -> u64 {
        self.shared().product_views
    }

    /// Whether the product's last committed write was a sweeper's transaction.
    pub fn swept_last(&self, product: ProductId) -> bool {
        self.shared().swept_last.contains(&product.0)
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

impl Storage for SimStore {
    type Tx = SimTx;

    async fn begin(&self, _mode: TxMode) -> StoreResult<SimTx> {
        let id = {
            let mut shared = self.shared();
            shared.tx_last = shared.tx_last.saturating_add(1);
            let id = shared.tx_last;
            if let Some(instance) = recording::batch_instance() {
                shared.batches_open.insert(id, instance);
            }
            id
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
