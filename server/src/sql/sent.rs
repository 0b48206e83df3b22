//! What this process has sent its database: statements and transactions, counted as they are
//! sent, for `/metrics` (`flashsale_db_statements_total`, `flashsale_db_transactions_total`)
//! and so for the load generator's statements per batch and per request (docs/PERFORMANCE.md).
//! sqlx sends a statement and waits for its answer, so each statement is one round trip (a
//! statement's first run on a connection prepares it first, one more, which is not counted: the
//! connections keep their prepared statements). Two relaxed atomic adds per statement: no lock,
//! no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static TRANSACTIONS: AtomicU64 = AtomicU64::new(0);

/// Counts `n` statements sent.
pub(crate) fn statements(n: u64) {
    STATEMENTS.fetch_add(n, Ordering::Relaxed);
}

/// Counts a transaction begun (its `BEGIN` and any setting before it count as statements).
pub(crate) fn transaction() {
    TRANSACTIONS.fetch_add(1, Ordering::Relaxed);
}

/// Statements and transactions sent so far, in that order.
pub fn totals() -> (u64, u64) {
    (
        STATEMENTS.load(Ordering::Relaxed),
        TRANSACTIONS.load(Ordering::Relaxed),
    )
}
