//! One transaction as the commit-order replay observes it, whatever the storage: every lock it
//! takes checked against the core's global lock order ([`LockOrder`]), the rows it loads and
//! writes checked against its commands' budget ([`Plan::budget`]), and what its end logs (the
//! rows it inserted, the request keys it found and recorded, the product it locked last, the
//! holds and orders a sweep named) as the log's entries for the requests it served; and the
//! [`CommitLog`] those entries go to, in commit order.
//!
//! Every storage feeds the same [`TxObserver`]: [`crate::logged::Logged`] from the
//! `Transaction` calls it wraps (the real databases), the simulator's storage from its own lock
//! table and commit, where its locks are really granted and its commits really applied. So the
//! lock-order check and what a transaction's end logs are written once, here.

use flashsale_core::{
    Command, HoldId, Inserted, LockOrder, OrderId, Plan, ProductId, RequestRecord, RowLock,
    WriteSet,
};

use crate::failure::{Check, Failure};
use crate::recording::{self, Ending, Entry};

/// What the replay needs of one transaction, gathered while it runs.
#[derive(Debug)]
pub struct TxObserver {
    /// The transaction's number.
    tx: u64,
    /// How it will have ended, so far.
    ending: Ending,
    /// The product it locked last: a sweep's transaction writes that product's rows.
    locked_product: Option<ProductId>,
    /// Its locks, checked against the core's global lock order.
    locks: LockOrder,
    /// Rows its loading reads found.
    rows_loaded: usize,
    /// Rows its write-sets wrote.
    rows_written: usize,
}

impl TxObserver {
    /// Transaction `tx`, begun.
    pub fn new(tx: u64) -> Self {
        TxObserver {
            tx,
            ending: Ending::default(),
            locked_product: None,
            locks: LockOrder::default(),
            rows_loaded: 0,
            rows_written: 0,
        }
    }

    /// The transaction's number.
    pub fn tx(&self) -> u64 {
        self.tx
    }

    /// Notes a lock the transaction takes.
    ///
    /// # Errors
    /// A lock against the global order: the failure, at the first request the transaction
    /// serves.
    #[allow(
        clippy::result_large_err,
        reason = "a lock out of order fails its seed or its test: it is returned once"
    )]
    pub fn took(&mut self, lock: RowLock) -> Result<(), Failure> {
        self.locks.take(lock).map_err(|out_of_order| {
            let ops = recording::current();
            Failure::new(
                Check::LockOrder,
                "lock out of order",
                format!("tx{}: {out_of_order}", self.tx),
            )
            .at_request(ops.first().map(|op| op.id))
        })
    }

    /// Notes the rows a read of the transaction's plan found (records, products, holds, orders,
    /// buckets): what its budget bounds.
    pub fn loaded(&mut self, rows: usize) {
        self.rows_loaded = self.rows_loaded.saturating_add(rows);
    }

    /// Notes the holds a locking read by id asked for: a sweep's transaction names them.
    pub fn locking_holds(&mut self, ids: &[HoldId]) {
        self.ending.holds_locked.extend(ids.iter().map(|id| id.0));
    }

    /// Notes the orders a locking read by id asked for: a sweep's transaction names them.
    pub fn locking_orders(&mut self, ids: &[OrderId]) {
        self.ending.orders_locked.extend(ids.iter().map(|id| id.0));
    }

    /// Checks the rows the transaction loaded and wrote so far against the budget of the
    /// commands it decides ([`Plan::budget`]), as its end logs them: a storage that reads what
    /// grows with history (every expired hold of a product, say) fails here, naming the
    /// transaction and its requests.
    ///
    /// # Errors
    /// The failure, at the first request the transaction serves.
    #[allow(
        clippy::result_large_err,
        reason = "a transaction over its budget fails its seed or its test: it is returned once"
    )]
    pub fn check_budget(&self) -> Result<(), Failure> {
        let ops = recording::current();
        let commands: Vec<Command> = (ops.iter())
            .filter_map(|op| op.command.clone())
            .map(|command| self.ending.decided(command, self.locked_product))
            .collect();
        if commands.is_empty() {
            // A read's transaction decides nothing: its rows are the read's own.
            return Ok(());
        }
        let budget = Plan::new(&commands).budget();
        let over = (budget.check_loaded(self.rows_loaded))
            .and_then(|()| budget.check_written(self.rows_written));
        over.map_err(|violation| {
            let requests: Vec<String> = ops.iter().map(|op| format!("r{}", op.id)).collect();
            let (_, words) = crate::words::violation(&violation);
            Failure::new(
                Check::Budget,
                "transaction over its budget",
                format!(
                    "tx{} (requests {}): {words}; a request's rows must be bounded by its \
                     commands, never by history",
                    self.tx,
                    requests.join(", ")
                ),
            )
            .at_request(ops.first().map(|op| op.id))
        })
    }

    /// Notes the products a locking read asked for, in order.
    pub fn locking_products(&mut self, ids: &[ProductId]) {
        self.locked_product = ids.last().copied();
    }

    /// Notes a write-set the transaction wrote, and the rows the storage inserted for it.
    pub fn wrote(&mut self, writes: &WriteSet, inserted: &Inserted) {
        if !writes.is_empty() {
            self.ending.wrote = true;
        }
        self.rows_written = self.rows_written.saturating_add(writes.rows());
        let ending = &mut self.ending;
        ending
            .products_inserted
            .extend(inserted.products.iter().map(|p| p.0));
        ending
            .holds_inserted
            .extend(inserted.holds.iter().map(|h| h.0));
        ending
            .orders_inserted
            .extend(inserted.orders.iter().map(|o| o.0));
    }

    /// Notes the client request keys whose records a locking read found: the requests the
    /// transaction answers by replay.
    pub fn found(&mut self, records: &[RequestRecord]) {
        let found = records.iter().map(|r| r.key.as_str().to_owned());
        self.ending.keys_found.extend(found);
    }

    /// The log's entries for the transaction's end at `at_us` (microseconds since the log
    /// began), for the requests it serves now: committed (what it wrote) or rolled back (nothing
    /// written, so only answered requests log, at the point their answer was decided). See
    /// [`Ending::entries`]. What it noted is spent: a later end logs nothing written.
    pub fn end(&mut self, committed: bool, at_us: u64) -> Vec<Entry> {
        let mut ending = std::mem::take(&mut self.ending);
        ending.tx = self.tx;
        ending.at_us = at_us;
        ending.wrote &= committed;
        if ending.wrote {
            ending.product_written = self.locked_product;
        }
        ending.entries(recording::current())
    }
}

/// Every transaction end worth replaying, in commit order.
#[derive(Clone, Debug, Default)]
pub struct CommitLog(Vec<Entry>);

impl CommitLog {
    /// Appends a transaction's entries.
    pub fn extend(&mut self, entries: Vec<Entry>) {
        self.0.extend(entries);
    }

    /// How many entries it holds: a position in commit order, between transactions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many entries it held at `at_us`: the first position a read answered from a cache
    /// entry taken then may have seen.
    pub fn len_at(&self, at_us: u64) -> usize {
        self.0.partition_point(|e| e.at_us < at_us)
    }

    /// The entries, in commit order.
    pub fn entries(&self) -> &[Entry] {
        &self.0
    }
}
