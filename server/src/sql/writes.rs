//! How a write-set becomes SQL ([`Transaction::write`](flashsale_service::store::Transaction::write)):
//! one statement per kind of row change, each covering every row of its kind the batch writes,
//! in the order [`WriteSet`] documents; inserts return their ids in row order. Every write carries
//! the condition that its transaction is still open ([`in_transaction!`]), and every update
//! checks that it changed as many rows as it named ([`expect_all`]): fewer means a row was not in
//! the state the decision read.

use flashsale_core::{
    BucketChange, CancelReason, Counters, ExpiryBucket, HoldId, Inserted, KeyedRequest, NewHold,
    NewOrder, NewProduct, OrderId, ProductId, ReleaseReason, RequestRecord, Settlement,
    WebhookRecord, WriteSet,
};
use std::sync::OnceLock;

use sqlx::{AssertSqlSafe, MySql};

use super::errors::map_err;
use super::statements::{int, marks, padded, padded_len};
use super::{Dialect, SqlTx, on_conn};
use flashsale_service::store::{StoreError, StoreResult};

/// The most ids one statement of a write names: a sweep retires up to its chunk of holds, and
/// folds up to [`flashsale_core::DUE_BUCKETS_MAX`] buckets per product, which must stay within
/// what one statement may bind (65,535 placeholders on MySQL, 32,766 on SQLite). A power of
/// two, so the statements stay in the few shapes [`padded`] gives.
const IDS_PER_STATEMENT: usize = 1_024;

/// The most products a batch's counters are written for with one `CASE` per column on MySQL;
/// more are joined with a `JSON_TABLE` ([`SqlTx::update_products`]).
const CASE_PRODUCTS_MAX: usize = 4;

/// The condition every write carries on MySQL, true only inside an explicit transaction: a
/// write that runs after the database ended its transaction changes nothing, and
/// [`Transaction::write`](flashsale_service::store::Transaction::write) then reports a conflict instead
/// of committing half a batch.
///
/// A Galera node applying another node's write rolls back a local transaction holding the rows
/// it needs (a brute-force abort). A transaction that has only read is not replicated, and
/// MariaDB 10.11 may end it without an error to its client: the client's next statements then
/// run one by one in autocommit mode. The cluster test's binary logs showed it: a batch's
/// product update and its hold inserts committed as two transactions, the update computed from
/// counters read before the other node's write, which it overwrote.
macro_rules! in_transaction {
    () => {
        "@@in_transaction = 1"
    };
}

/// [`in_transaction!`] in `dialect`: SQLite's transactions end only when the store ends them.
fn in_transaction(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => in_transaction!(),
        Dialect::Sqlite => "1",
    }
}

/// `table` as the target of an update that finds its rows by id and checks their state
/// (`WHERE state = ... AND id IN (...)`). SQLite is told to look the ids up by rowid: its planner
/// otherwise takes the index that starts with the state column and reads every row in that state
/// (every active hold of a hot product: 15 ms a statement with 300,000 of them, and the flow 25x
/// slower). MySQL's optimizer takes the primary key by itself.
fn by_id(dialect: Dialect, table: &'static str) -> String {
    match dialect {
        Dialect::MySql => table.to_owned(),
        Dialect::Sqlite => format!("{table} NOT INDEXED"),
    }
}

/// Releases `n` held holds by id: binds the reason, then the ids.
pub(super) fn release_holds_sql(dialect: Dialect, n: usize) -> String {
    format!(
        "UPDATE {} SET state = 'released', release_reason = ? \
         WHERE {} AND state = 'held' AND id IN ({})",
        by_id(dialect, "holds"),
        in_transaction(dialect),
        marks(n)
    )
}

/// Marks `n` held holds consumed: binds (hold, order) pairs, then the hold ids.
pub(super) fn consume_holds_sql(dialect: Dialect, n: usize) -> String {
    format!(
        "UPDATE {} SET state = 'consumed', order_id = CASE id {} END \
         WHERE {} AND state = 'held' AND id IN ({})",
        by_id(dialect, "holds"),
        vec!["WHEN ? THEN ?"; n].join(" "),
        in_transaction(dialect),
        marks(n)
    )
}

/// Settles `n` orders waiting for payment: binds the status and cancel reason, then the ids.
pub(super) fn settle_orders_sql(dialect: Dialect, n: usize) -> String {
    format!(
        "UPDATE {} SET status = ?, cancel_reason = ? \
         WHERE {} AND status = 'pre_payment' AND id IN ({})",
        by_id(dialect, "orders"),
        in_transaction(dialect),
        marks(n)
    )
}

/// `n` comma-separated copies of a row's marks, `(?, ?, ...)`.
fn rows_of_marks(n: usize, row: &str) -> String {
    vec![row; n].join(", ")
}

/// The rows of a batch's insert as one JSON array of arrays ([`BatchInsert`]): one statement
/// text whatever the number of rows.
fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> String {
    serde_json::Value::Array(rows.collect()).to_string()
}

/// A batch insert: every new row of one table in one statement, whatever their number, written
/// once for both dialects. The rows travel as one JSON array of arrays ([`json_rows`], one bound
/// parameter, so one statement text and one prepared statement per table); MySQL reads them with
/// `JSON_TABLE` (MariaDB 10.6), SQLite with `json_each`, both in the array's order, so the ids
/// a table assigns ascend with the rows; and the rows go in only while the transaction is open
/// ([`in_transaction!`]).
struct BatchInsert {
    table: &'static str,
    /// Each column a row's array gives, in its order, with its type for `JSON_TABLE`.
    columns: &'static [(&'static str, &'static str)],
    /// Columns every row gets the same value of: name, SQL literal.
    fixed: &'static [(&'static str, &'static str)],
    /// What follows the rows, on MySQL and on SQLite: `RETURNING id`, an upsert, or nothing.
    tail: [&'static str; 2],
    /// The statement of each dialect, made once.
    sql: [OnceLock<String>; 2],
}

impl BatchInsert {
    const fn new(
        table: &'static str,
        columns: &'static [(&'static str, &'static str)],
        fixed: &'static [(&'static str, &'static str)],
        tail: [&'static str; 2],
    ) -> Self {
        BatchInsert {
            table,
            columns,
            fixed,
            tail,
            sql: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The statement in `dialect`; it binds the rows' JSON.
    fn sql(&'static self, dialect: Dialect) -> &'static str {
        let n = match dialect {
            Dialect::MySql => 0,
            Dialect::Sqlite => 1,
        };
        self.sql[n].get_or_init(|| self.made(dialect, self.tail[n]))
    }

    fn made(&self, dialect: Dialect, tail: &str) -> String {
        let names = (self.columns.iter().map(|&(name, _)| name))
            .chain(self.fixed.iter().map(|&(name, _)| name));
        let names: Vec<&str> = names.collect();
        let values: Vec<String> = match dialect {
            Dialect::MySql => self
                .columns
                .iter()
                .map(|&(name, _)| name.to_owned())
                .collect(),
            Dialect::Sqlite => (0..self.columns.len())
                .map(|i| format!("batch.value ->> '$[{i}]'"))
                .collect(),
        };
        let values = values.into_iter();
        let values: Vec<String> = values
            .chain(self.fixed.iter().map(|&(_, value)| value.to_owned()))
            .collect();
        let (rows, order) = match dialect {
            Dialect::MySql => {
                let columns = (self.columns.iter().enumerate())
                    .map(|(i, (name, kind))| format!("{name} {kind} PATH '$[{i}]'"));
                let columns: Vec<String> = columns.collect();
                let rows = format!(
                    "JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, {})) AS batch",
                    columns.join(", ")
                );
                (rows, "n")
            }
            Dialect::Sqlite => ("json_each(?) AS batch".to_owned(), "batch.key"),
        };
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM {rows} WHERE {} ORDER BY {order}{tail}",
            self.table,
            names.join(", "),
            values.join(", "),
            in_transaction(dialect),
        )
    }
}

/// Products created, with their counters at the start: nothing held, received the stock, no
/// expiry folded, nothing open.
static PRODUCTS: BatchInsert = BatchInsert::new(
    "products",
    &[
        ("name", "VARCHAR(255)"),
        ("price_cents", "BIGINT"),
        ("stock", "INT UNSIGNED"),
        ("units_received", "BIGINT"),
    ],
    &[
        ("units_held", "0"),
        ("expired_through", "0"),
        ("holds_to_retire", "0"),
        ("open_expires_at", "0"),
        ("open_units", "0"),
        ("open_holds", "0"),
    ],
    [" RETURNING id", " RETURNING id"],
);

/// Bucket changes, added to the bucket of their key or making it.
static BUCKET_CHANGES: BatchInsert = BatchInsert::new(
    "expiry_buckets",
    &[
        ("product_id", "BIGINT"),
        ("expires_at", "BIGINT"),
        ("units", "BIGINT"),
        ("holds", "BIGINT"),
    ],
    &[],
    [
        " ON DUPLICATE KEY UPDATE units = expiry_buckets.units + VALUES(units), \
         holds = expiry_buckets.holds + VALUES(holds)",
        " ON CONFLICT (product_id, expires_at) DO UPDATE SET units = units + excluded.units, \
         holds = holds + excluded.holds",
    ],
);

/// Holds granted, held.
static HOLDS: BatchInsert = BatchInsert::new(
    "holds",
    &[
        ("product_id", "BIGINT"),
        ("qty", "INT UNSIGNED"),
        ("created_at", "BIGINT"),
        ("expires_at", "BIGINT"),
    ],
    &[("state", "'held'")],
    [" RETURNING id", " RETURNING id"],
);

/// Orders placed.
static ORDERS: BatchInsert = BatchInsert::new(
    "orders",
    &[
        ("hold_id", "BIGINT"),
        ("product_id", "BIGINT"),
        ("qty", "INT UNSIGNED"),
        ("total_cents", "BIGINT"),
        ("status", "VARCHAR(16)"),
        ("created_at", "BIGINT"),
        ("payment_due_at", "BIGINT"),
    ],
    &[],
    [" RETURNING id", " RETURNING id"],
);

/// Webhook records.
static WEBHOOKS: BatchInsert = BatchInsert::new(
    "webhooks",
    &[
        ("idempotency_key", "VARCHAR(255)"),
        ("hold_id", "BIGINT"),
        ("status", "VARCHAR(16)"),
        ("fingerprint", "VARCHAR(16)"),
        ("result", "VARCHAR(32)"),
        ("order_id", "BIGINT"),
        ("received_at", "BIGINT"),
    ],
    &[],
    ["", ""],
);

/// Client request-key records.
static REQUEST_KEYS: BatchInsert = BatchInsert::new(
    "request_keys",
    &[
        ("idempotency_key", "VARCHAR(255)"),
        ("request", "VARCHAR(16)"),
        ("product_id", "BIGINT"),
        ("qty", "INT UNSIGNED"),
        ("hold_id", "BIGINT"),
        ("resource_id", "BIGINT"),
        ("created", "TINYINT"),
        ("created_at", "BIGINT"),
    ],
    &[],
    ["", ""],
);

/// Checks that a statement changed as many rows as it named: fewer means a row was not in the
/// state the decision read, which the locks rule out unless the data is corrupt.
fn expect_all(rows_affected: u64, expected: usize, what: &str) -> StoreResult<()> {
    if rows_affected == expected as u64 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "{expected} {what} to change, {rows_affected} changed"
        )))
    }
}

/// The statements [`Transaction::write`](flashsale_service::store::Transaction::write) is made of: one
/// per kind of row change, each covering every row of its kind the batch writes.
impl SqlTx {
    /// Every statement of [`Transaction::write`](flashsale_service::store::Transaction::write), in order.
    pub(super) async fn write_all(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        let mut inserted = Inserted {
            products: self.insert_products(&writes.products_inserted).await?,
            ..Inserted::default()
        };
        self.update_products(&writes.products).await?;
        self.change_buckets(&writes.buckets).await?;
        self.delete_buckets(&writes.buckets_folded).await?;
        let released: Vec<(HoldId, ReleaseReason)> = (writes.holds_released.iter())
            .chain(&writes.holds_retired)
            .copied()
            .collect();
        self.release_holds(&released).await?;
        inserted.holds = self.insert_holds(&writes.holds_inserted).await?;
        inserted.orders = self.insert_orders(&writes.orders_inserted).await?;
        let unresolved = |v: flashsale_core::Violation| StoreError::Corrupt(v.to_string());
        let consumed = (writes.orders_inserted.iter().zip(&inserted.orders))
            .map(|(order, &id)| Ok((inserted.hold(order.hold_id)?, id)))
            .collect::<Result<Vec<_>, flashsale_core::Violation>>()
            .map_err(unresolved)?;
        self.consume_holds(&consumed).await?;
        let settled = (writes.orders_updated.iter())
            .map(|&(id, settlement)| Ok((inserted.order(id)?, settlement)))
            .collect::<Result<Vec<_>, flashsale_core::Violation>>()
            .map_err(unresolved)?;
        self.settle_orders(&settled).await?;
        let webhooks = (writes.webhooks.iter())
            .map(|record| inserted.webhook_record(record))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unresolved)?;
        self.insert_webhooks(&webhooks).await?;
        let keys = (writes.request_keys.iter())
            .map(|record| inserted.request_record(record))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unresolved)?;
        self.insert_request_keys(&keys).await?;
        Ok(inserted)
    }

    /// Whether the database ended this transaction before its writes ran: they then ran, one
    /// by one, outside it and changed nothing ([`in_transaction!`]). Never on SQLite.
    pub(super) async fn ended_under_its_writes(&mut self) -> bool {
        match self {
            SqlTx::MySql(tx, _) => {
                super::sent::statements(1);
                sqlx::query_scalar::<MySql, i64>("SELECT CAST(@@in_transaction AS SIGNED)")
                    .fetch_one(&mut **tx)
                    .await
                    .is_ok_and(|open| open == 0)
            }
            SqlTx::Sqlite(_) => false,
        }
    }

    /// Sets the counters of every product written, in one statement. For a batch of many
    /// products on MySQL, a join with the counters as a `JSON_TABLE`: a `CASE id WHEN ? THEN ?`
    /// per column made MariaDB compare every id with every arm as a decimal, the costliest part
    /// of a spread batch's statements. For a few products (a hot product's batch), and on
    /// SQLite, one `CASE` per column, which costs less than parsing the JSON for one row.
    async fn update_products(&mut self, products: &[Counters]) -> StoreResult<()> {
        if products.is_empty() {
            return Ok(());
        }
        let done = match self.dialect() {
            Dialect::MySql if products.len() > CASE_PRODUCTS_MAX => {
                self.update_products_joined(products).await
            }
            Dialect::MySql | Dialect::Sqlite => self.update_products_by_case(products).await,
        }
        .map_err(map_err)?;
        expect_all(done, products.len(), "products")
    }

    /// [`SqlTx::update_products`] as a join with a `JSON_TABLE` (MySQL only); rows matched.
    async fn update_products_joined(&mut self, products: &[Counters]) -> Result<u64, sqlx::Error> {
        let rows = json_rows(products.iter().map(|p| {
            serde_json::json!([
                int(p.id.0),
                p.stock.0,
                p.units_held.0,
                int(p.units_received),
                int(p.expired_through.as_ms()),
                p.holds_to_retire,
                int(p.open_bucket.expires_at.as_ms()),
                p.open_bucket.units.0,
                p.open_bucket.holds
            ])
        }));
        on_conn!(self, |conn, _d| {
            sqlx::query::<Db>(concat!(
                "UPDATE products p JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH \
                 '$[0]', stock INT UNSIGNED PATH '$[1]', units_held INT UNSIGNED PATH \
                 '$[2]', units_received BIGINT PATH '$[3]', expired_through BIGINT PATH \
                 '$[4]', holds_to_retire INT UNSIGNED PATH '$[5]', open_expires_at \
                 BIGINT PATH '$[6]', open_units INT UNSIGNED PATH '$[7]', open_holds \
                 INT UNSIGNED PATH '$[8]')) AS c ON p.id = c.id \
                 SET p.stock = c.stock, p.units_held = c.units_held, \
                 p.units_received = c.units_received, \
                 p.expired_through = c.expired_through, \
                 p.holds_to_retire = c.holds_to_retire, \
                 p.open_expires_at = c.open_expires_at, p.open_units = c.open_units, \
                 p.open_holds = c.open_holds WHERE ",
                in_transaction!()
            ))
            .bind(rows)
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
        })
    }

    /// [`SqlTx::update_products`] as one `CASE` per column; rows matched.
    async fn update_products_by_case(&mut self, products: &[Counters]) -> Result<u64, sqlx::Error> {
        let n = padded_len(products.len());
        let case = |column: &str| {
            let arms = vec!["WHEN ? THEN ?"; n].join(" ");
            format!("{column} = CASE id {arms} END")
        };
        let columns = [
            "stock",
            "units_held",
            "units_received",
            "expired_through",
            "holds_to_retire",
            "open_expires_at",
            "open_units",
            "open_holds",
        ];
        let sets: Vec<String> = columns.iter().map(|c| case(c)).collect();
        let sql = format!(
            "UPDATE products SET {} WHERE {} AND id IN ({})",
            sets.join(", "),
            in_transaction(self.dialect()),
            marks(n)
        );
        let values = |p: &Counters| -> [i64; 8] {
            [
                i64::from(p.stock.0),
                i64::from(p.units_held.0),
                int(p.units_received),
                int(p.expired_through.as_ms()),
                i64::from(p.holds_to_retire),
                int(p.open_bucket.expires_at.as_ms()),
                i64::from(p.open_bucket.units.0),
                i64::from(p.open_bucket.holds),
            ]
        };
        on_conn!(self, |conn, _d| {
            let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
            for column in 0..columns.len() {
                for p in padded(products) {
                    query = query.bind(int(p.id.0)).bind(values(p)[column]);
                }
            }
            for p in padded(products) {
                query = query.bind(int(p.id.0));
            }
            query.execute(conn).await.map(|r| r.rows_affected())
        })
    }

    /// Adds each change to its bucket, making the buckets that do not exist yet, in one
    /// statement. Deltas are signed, so a bucket taken below zero (a change to a bucket that was
    /// not there, corrupt rows) is written as read: negative, and refused by every later read.
    async fn change_buckets(&mut self, changes: &[BucketChange]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let rows = json_rows(changes.iter().map(|change| {
            serde_json::json!([
                int(change.product_id.0),
                int(change.expires_at.as_ms()),
                change.units,
                change.holds
            ])
        }));
        self.insert(&BUCKET_CHANGES, rows).await.map(drop)
    }

    /// Runs a batch insert of `rows`; returns how many rows it inserted or changed.
    async fn insert(&mut self, insert: &'static BatchInsert, rows: String) -> StoreResult<u64> {
        let sql = insert.sql(self.dialect());
        on_conn!(self, |conn, _d| {
            let query = sqlx::query::<Db>(sql).bind(rows);
            query.execute(conn).await.map(|r| r.rows_affected())
        })
        .map_err(map_err)
    }

    /// Runs a batch insert of `rows` that returns the new rows' ids, ascending as the rows.
    async fn insert_returning(
        &mut self,
        insert: &'static BatchInsert,
        rows: String,
        n: usize,
    ) -> StoreResult<Vec<u64>> {
        let sql = insert.sql(self.dialect());
        let ids: Vec<(u64,)> = on_conn!(self, |conn, _d| {
            let query = sqlx::query_as::<Db, _>(sql).bind(rows);
            query.fetch_all(conn).await
        })
        .map_err(map_err)?;
        ascending(ids, n, insert.table)
    }

    /// Deletes the buckets folded into their products' counters, [`IDS_PER_STATEMENT`] at a
    /// time; each must be there.
    async fn delete_buckets(&mut self, folded: &[ExpiryBucket]) -> StoreResult<()> {
        for buckets in folded.chunks(IDS_PER_STATEMENT) {
            let n = padded_len(buckets.len());
            let sql = format!(
                "DELETE FROM expiry_buckets WHERE {} AND (product_id, expires_at) IN ({})",
                in_transaction(self.dialect()),
                rows_of_marks(n, "(?, ?)")
            );
            let done = on_conn!(self, |conn, _d| {
                let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
                for bucket in padded(buckets) {
                    query = query
                        .bind(int(bucket.product_id.0))
                        .bind(int(bucket.expires_at.as_ms()));
                }
                query.execute(conn).await.map(|r| r.rows_affected())
            })
            .map_err(map_err)?;
            expect_all(done, buckets.len(), "folded buckets to delete")?;
        }
        Ok(())
    }

    /// Releases held holds, one statement per reason and [`IDS_PER_STATEMENT`] holds; each must
    /// still be held.
    async fn release_holds(&mut self, released: &[(HoldId, ReleaseReason)]) -> StoreResult<()> {
        for reason in [ReleaseReason::Expired, ReleaseReason::PaymentFailed] {
            let all: Vec<u64> = released
                .iter()
                .filter(|&&(_, r)| r == reason)
                .map(|&(id, _)| id.0)
                .collect();
            for ids in all.chunks(IDS_PER_STATEMENT) {
                let sql = release_holds_sql(self.dialect(), padded_len(ids.len()));
                let done = on_conn!(self, |conn, _d| {
                    let mut query =
                        sqlx::query::<Db>(AssertSqlSafe(sql.clone())).bind(reason.as_str());
                    for &id in padded(ids) {
                        query = query.bind(int(id));
                    }
                    query.execute(conn).await.map(|r| r.rows_affected())
                })
                .map_err(map_err)?;
                expect_all(done, ids.len(), "held holds to release")?;
            }
        }
        Ok(())
    }

    /// Inserts created products in one statement; returns their ids, in order.
    async fn insert_products(&mut self, products: &[NewProduct]) -> StoreResult<Vec<ProductId>> {
        if products.is_empty() {
            return Ok(Vec::new());
        }
        let rows = json_rows(products.iter().map(|new| {
            let received = int(new.units_received());
            serde_json::json!([new.name, int(new.price_cents.0), new.stock.0, received])
        }));
        let ids = self
            .insert_returning(&PRODUCTS, rows, products.len())
            .await?;
        Ok(ids.into_iter().map(ProductId).collect())
    }

    /// Inserts granted holds in one statement; returns their ids, in order.
    async fn insert_holds(&mut self, holds: &[NewHold]) -> StoreResult<Vec<HoldId>> {
        if holds.is_empty() {
            return Ok(Vec::new());
        }
        let rows = json_rows(holds.iter().map(|new| {
            serde_json::json!([
                int(new.product_id.0),
                new.grant.qty.0,
                int(new.grant.created_at.as_ms()),
                int(new.grant.expires_at.as_ms())
            ])
        }));
        let ids = self.insert_returning(&HOLDS, rows, holds.len()).await?;
        Ok(ids.into_iter().map(HoldId).collect())
    }

    /// Inserts orders in one statement; returns their ids, in order.
    async fn insert_orders(&mut self, orders: &[NewOrder]) -> StoreResult<Vec<OrderId>> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let rows = json_rows(orders.iter().map(|order| {
            serde_json::json!([
                int(order.hold_id.0),
                int(order.product_id.0),
                order.qty.0,
                int(order.total_cents.0),
                order.status.as_str(),
                int(order.created_at.as_ms()),
                int(order.payment_due_at.as_ms())
            ])
        }));
        let ids = self.insert_returning(&ORDERS, rows, orders.len()).await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    /// Marks held holds consumed by their new orders, in one statement.
    async fn consume_holds(&mut self, consumed: &[(HoldId, OrderId)]) -> StoreResult<()> {
        if consumed.is_empty() {
            return Ok(());
        }
        let n = padded_len(consumed.len());
        let sql = consume_holds_sql(self.dialect(), n);
        let done = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
            for (hold, order) in padded(consumed) {
                query = query.bind(int(hold.0)).bind(int(order.0));
            }
            for (hold, _) in padded(consumed) {
                query = query.bind(int(hold.0));
            }
            query.execute(conn).await.map(|r| r.rows_affected())
        })
        .map_err(map_err)?;
        expect_all(done, consumed.len(), "held holds to consume")
    }

    /// Moves pre-payment orders to their terminal status, with the reason when cancelled: one
    /// statement per settlement and [`IDS_PER_STATEMENT`] orders; anything but every named row
    /// updated is corruption.
    async fn settle_orders(&mut self, settled: &[(OrderId, Settlement)]) -> StoreResult<()> {
        let kinds = [
            Settlement::Paid,
            Settlement::Cancelled(CancelReason::PaymentFailed),
            Settlement::Cancelled(CancelReason::PaymentWindowClosed),
        ];
        for settlement in kinds {
            let all: Vec<u64> = (settled.iter())
                .filter(|&&(_, s)| s == settlement)
                .map(|&(id, _)| id.0)
                .collect();
            for ids in all.chunks(IDS_PER_STATEMENT) {
                let sql = settle_orders_sql(self.dialect(), padded_len(ids.len()));
                let done = on_conn!(self, |conn, _d| {
                    let mut query = sqlx::query::<Db>(AssertSqlSafe(sql.clone()))
                        .bind(settlement.status().as_str())
                        .bind(settlement.cancel_reason().map(CancelReason::as_str));
                    for &id in padded(ids) {
                        query = query.bind(int(id));
                    }
                    query.execute(conn).await.map(|r| r.rows_affected())
                })
                .map_err(map_err)?;
                expect_all(done, ids.len(), "pre-payment orders to settle")?;
            }
        }
        Ok(())
    }

    /// Inserts webhook records in one statement.
    async fn insert_webhooks(&mut self, records: &[WebhookRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = json_rows(records.iter().map(|record| {
            serde_json::json!([
                record.key.as_str(),
                int(record.hold_id.0),
                record.status.as_str(),
                record.fingerprint.to_string(),
                record.result.as_str(),
                record.order_id.map(|id| int(id.0)),
                int(record.received_at.as_ms())
            ])
        }));
        let done = self.insert(&WEBHOOKS, rows).await?;
        expect_all(done, records.len(), "webhook records to insert")
    }

    /// Inserts client request-key records in one statement.
    async fn insert_request_keys(&mut self, records: &[RequestRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let fields = |record: &RequestRecord| match record.request {
            KeyedRequest::PlaceHold { product_id, qty } => (Some(product_id.0), Some(qty.0), None),
            KeyedRequest::PlaceOrder { hold_id } => (None, None, Some(hold_id.0)),
        };
        let rows = json_rows(records.iter().map(|record| {
            let (product_id, qty, hold_id) = fields(record);
            serde_json::json!([
                record.key.as_str(),
                record.request.name(),
                product_id.map(int),
                qty,
                hold_id.map(int),
                int(record.resource_id),
                u8::from(record.created),
                int(record.created_at.as_ms())
            ])
        }));
        let done = self.insert(&REQUEST_KEYS, rows).await?;
        expect_all(done, records.len(), "request-key records to insert")
    }
}

/// The ids one multi-row `INSERT ... RETURNING` assigned, in row order: ids ascend within one
/// statement (whatever the auto-increment lock mode interleaves between statements), while
/// `RETURNING` does not promise row order.
fn ascending(ids: Vec<(u64,)>, rows: usize, what: &str) -> StoreResult<Vec<u64>> {
    if ids.len() != rows {
        return Err(StoreError::Corrupt(format!(
            "{rows} {what} inserted, {} ids returned",
            ids.len()
        )));
    }
    let mut ids: Vec<u64> = ids.into_iter().map(|(id,)| id).collect();
    ids.sort_unstable();
    Ok(ids)
}
