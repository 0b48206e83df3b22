//! How the SQL storages spell their statements so that each connection keeps every one of
//! them prepared: a list of `n` values is padded to the next power of two (a statement's text
//! then takes one of a few shapes whatever the batch's size), and every `u64` is bound as both
//! databases take it.

use super::Dialect;

/// How many values a list of `n` is padded to: the next power of two, so a statement's text
/// takes one of a few shapes whatever the batch's size, and stays in the statement cache.
pub(super) fn padded_len(n: usize) -> usize {
    n.max(1).checked_next_power_of_two().unwrap_or(n)
}

/// `items`, then their last repeated up to [`padded_len`]: a value twice in an `IN` list, or
/// twice as a `CASE` arm, changes nothing.
pub(super) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let extra = padded_len(items.len()).saturating_sub(items.len());
    items
        .iter()
        .chain(items.last().into_iter().cycle().take(extra))
}

/// `<head> (?, ?, ...) <tail>` with `n` marks, padded ([`padded_len`]), and MySQL's row-lock
/// suffix when `lock`: one statement reads every row of a kind a batch needs. On the primary
/// key, InnoDB takes the locks in key order, the global lock order.
pub(super) fn in_list(dialect: Dialect, head: &str, n: usize, tail: &str, lock: bool) -> String {
    let lock = match (dialect, lock) {
        (Dialect::MySql, true) => " FOR UPDATE",
        (Dialect::MySql | Dialect::Sqlite, _) => "",
    };
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(" {tail}")
    };
    format!("{head} ({}){tail}{lock}", marks(padded_len(n)))
}

/// The first [`flashsale_core::DUE_BUCKETS_MAX`] due buckets of each of `n` products, in
/// deadline order: binds (product, now) per product. One bounded index range read per product,
/// joined with `UNION ALL`, so a product with many buckets due costs no more than its limit.
pub(super) fn due_buckets_sql(dialect: Dialect, n: usize) -> String {
    let limit = flashsale_core::DUE_BUCKETS_MAX;
    let one = format!(
        "SELECT product_id, expires_at, units, holds FROM expiry_buckets \
         WHERE product_id = ? AND expires_at <= ? ORDER BY expires_at LIMIT {limit}"
    );
    let part = match dialect {
        Dialect::MySql => format!("({one})"),
        // SQLite takes no ORDER BY or LIMIT in a member of a compound select, only in a
        // subquery.
        Dialect::Sqlite => format!("SELECT * FROM ({one})"),
    };
    vec![part; n.max(1)].join(" UNION ALL ")
}

/// `n` comma-separated `?`.
pub(super) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A `u64` as SQLite and MySQL both bind it. Ids and amounts stay far below `i64::MAX` (the core
/// bounds prices and quantities); only a timestamp saturated at the far future is clamped, which
/// keeps it in the far future.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
