//! The steps of a SQL transaction ([`Transaction`] for [`SqlTx`]): its reads, each kind of row
//! read in one statement with one `IN` list, locking on MySQL when the script asks (SQLite's
//! `BEGIN IMMEDIATE` already holds the write lock), read again after a causal wait on a Galera
//! node when a lookup by id misses a row ([`caught_up`]);
//! the few single-statement writes outside a write-set (a new product, a purge); the commit; and
//! [`Transaction::write`], whose statements are in [`writes`](super::writes).

use std::collections::BTreeSet;

use flashsale_core::{
    ExpiryBucket, Hold, HoldId, IdempotencyKey, Inserted, Order, OrderId, Product, ProductId, Qty,
    RequestRecord, Timestamp, WebhookRecord, WriteSet,
};
use sqlx::{AssertSqlSafe, MySql, Pool};

use super::decode::{
    BucketRow, HoldRow, OrderRow, ProductRow, RequestKeyRow, WebhookRow, bucket_from_row,
    hold_from_row, order_from_row, product_columns, product_from_row, request_key_from_row,
    webhook_from_row,
};
use super::errors::map_err;
use super::statements::{due_buckets_sql, in_list, int, padded, padded_len};
use super::{Dialect, SqlTx, on_conn};
use flashsale_service::store::{
    Dump, ProductRead, RecordKind, StoreError, StoreResult, SweepCandidates, Transaction,
};

/// How many rows per product asked for `products_due` reads of the due buckets and of the
/// overdue orders: a product with many of either fills the part alone, and the next pass finds
/// the rest.
const PRODUCTS_DUE_SCAN: i64 = 10;

impl Transaction for SqlTx {
    async fn commit(self) -> StoreResult<()> {
        super::sent::statements(1);
        let committed = match self {
            SqlTx::MySql(tx, _) => tx.commit().await.map_err(map_err),
            SqlTx::Sqlite(tx) => tx.commit().await.map_err(map_err),
        };
        // The COMMIT was sent: a connection lost now may have lost only its answer.
        committed.map_err(|error| match error {
            StoreError::Connection(message) => StoreError::CommitUnknown(message),
            other => other,
        })
    }

    async fn product_view(
        &mut self,
        id: ProductId,
        now: Timestamp,
    ) -> StoreResult<Option<ProductRead>> {
        // A product row's columns, then the units of its due buckets and its next deadline.
        type ViewRow = (
            u64,
            String,
            u64,
            u32,
            u32,
            u64,
            u64,
            u32,
            u64,
            u32,
            u32,
            i64,
            Option<u64>,
        );
        let row: Option<ViewRow> = on_conn!(self, |conn, d| {
            // The due buckets summed are the first DUE_BUCKETS_MAX (256), as a grant folds
            // them; the open bucket is in the product's own row.
            let sql = match d {
                Dialect::MySql => concat!(
                    "SELECT ",
                    product_columns!(),
                    ", CAST(COALESCE((SELECT SUM(due.units) FROM (SELECT units FROM \
                         expiry_buckets WHERE product_id = ? AND expires_at <= ? \
                         ORDER BY expires_at LIMIT 256) due), 0) AS SIGNED), \
                         (SELECT MIN(b.expires_at) FROM expiry_buckets b WHERE b.product_id = ? \
                         AND b.expires_at > ?) FROM products WHERE id = ?"
                ),
                Dialect::Sqlite => concat!(
                    "SELECT ",
                    product_columns!(),
                    ", COALESCE((SELECT SUM(due.units) FROM (SELECT units FROM \
                         expiry_buckets WHERE product_id = ? AND expires_at <= ? \
                         ORDER BY expires_at LIMIT 256) due), 0), \
                         (SELECT MIN(b.expires_at) FROM expiry_buckets b WHERE b.product_id = ? \
                         AND b.expires_at > ?) FROM products WHERE id = ?"
                ),
            };
            sqlx::query_as::<Db, _>(sql)
                .bind(int(id.0))
                .bind(int(now.as_ms()))
                .bind(int(id.0))
                .bind(int(now.as_ms()))
                .bind(int(id.0))
                .fetch_optional(conn)
                .await
        })
        .map_err(map_err)?;
        let Some(r) = row else {
            return Ok(None);
        };
        let product: ProductRow = (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10);
        let (due, next) = (r.11, r.12);
        let product = product_from_row(product);
        let id = product.id;
        let due = u32::try_from(due)
            .map_err(|_| StoreError::Corrupt(format!("product {id} has {due} units due")))?;
        // The open bucket: due with the table's at `now`, else the next deadline if sooner.
        let open = product.live_bucket();
        let open_due = open.filter(|open| open.expires_at <= now);
        let units_due = Qty(due).checked_add(open_due.map_or(Qty::ZERO, |open| open.units));
        let units_due = units_due
            .ok_or_else(|| StoreError::Corrupt(format!("product {id}'s units due overflow")))?;
        let open_next = open.map(|open| open.expires_at).filter(|&at| at > now);
        let next_deadline = next.map(Timestamp).into_iter().chain(open_next).min();
        Ok(Some(ProductRead {
            product,
            units_due,
            next_deadline,
        }))
    }

    async fn lock_products(&mut self, ids: &[ProductId]) -> StoreResult<Vec<Product>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            concat!("SELECT ", product_columns!(), " FROM products WHERE id IN"),
            ids.len(),
            "ORDER BY id",
            true,
        );
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<ProductRow> = self.fetch_by_id(sql, &ids).await?;
        Ok(rows.into_iter().map(product_from_row).collect())
    }

    async fn due_buckets(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<ExpiryBucket>> {
        // Most products of a batch have no bucket due: one statement finds those that do (an
        // EXISTS stops at a product's first due bucket), and only those are read, each by a
        // bounded range of its own.
        let due = self.products_with_due_buckets(products, now).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let sql = due_buckets_sql(self.dialect(), padded_len(due.len()));
        let rows: Vec<BucketRow> = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql));
            for id in padded(&due) {
                query = query.bind(int(id.0)).bind(int(now.as_ms()));
            }
            query.fetch_all(conn).await
        })
        .map_err(map_err)?;
        let mut buckets = rows
            .into_iter()
            .map(bucket_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        // A padded list names its last product more than once.
        buckets.sort_unstable();
        buckets.dedup();
        Ok(buckets)
    }

    async fn write(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        match self.write_all(writes).await {
            Err(StoreError::Corrupt(message)) if self.ended_under_its_writes().await => {
                Err(StoreError::Contention(format!(
                    "the transaction ended before its writes, none of which was made (a \
                     Galera node applying another node's write rolls back a transaction that \
                     has only read, and may not say so): {message}"
                )))
            }
            done => done,
        }
    }

    async fn holds(&mut self, ids: &[HoldId], lock: bool) -> StoreResult<Vec<Hold>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT id, product_id, qty, created_at, expires_at, state, release_reason, \
             order_id FROM holds WHERE id IN",
            ids.len(),
            "ORDER BY id",
            lock,
        );
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<HoldRow> = self.fetch_by_id(sql, &ids).await?;
        rows.into_iter().map(hold_from_row).collect()
    }

    async fn orders(&mut self, ids: &[OrderId], lock: bool) -> StoreResult<Vec<Order>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, \
             payment_due_at, cancel_reason FROM orders WHERE id IN",
            ids.len(),
            "ORDER BY id",
            lock,
        );
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<OrderRow> = self.fetch_by_id(sql, &ids).await?;
        rows.into_iter().map(order_from_row).collect()
    }

    async fn lock_webhooks(&mut self, keys: &[IdempotencyKey]) -> StoreResult<Vec<WebhookRecord>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT idempotency_key, hold_id, status, fingerprint, result, order_id, \
             received_at FROM webhooks WHERE idempotency_key IN",
            keys.len(),
            "ORDER BY idempotency_key",
            true,
        );
        let keys: Vec<Listed<'_>> = keys.iter().map(|key| Listed::Key(key.as_str())).collect();
        let rows: Vec<WebhookRow> = self.fetch_listed(sql, &keys).await?;
        rows.into_iter().map(webhook_from_row).collect()
    }

    async fn lock_request_keys(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> StoreResult<Vec<RequestRecord>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT idempotency_key, request, product_id, qty, hold_id, resource_id, created, \
             created_at FROM request_keys WHERE idempotency_key IN",
            keys.len(),
            "ORDER BY idempotency_key",
            true,
        );
        let keys: Vec<Listed<'_>> = keys.iter().map(|key| Listed::Key(key.as_str())).collect();
        let rows: Vec<RequestKeyRow> = self.fetch_listed(sql, &keys).await?;
        rows.into_iter().map(request_key_from_row).collect()
    }

    async fn products_due(&mut self, now: Timestamp, limit: u32) -> StoreResult<Vec<ProductId>> {
        // Each part through its own index, and bounded: a product with many due buckets or
        // overdue orders fills its part alone, and the others come up once it is swept.
        let scan = i64::from(limit).saturating_mul(PRODUCTS_DUE_SCAN);
        super::sent::statements(2); // and one by `on_conn!`
        let (buckets, to_retire, orders) = on_conn!(self, |conn, _d| {
            let buckets: Vec<(u64,)> = sqlx::query_as::<Db, _>(
                "SELECT product_id FROM expiry_buckets WHERE expires_at <= ? \
                 ORDER BY expires_at LIMIT ?",
            )
            .bind(int(now.as_ms()))
            .bind(scan)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            let to_retire: Vec<(u64,)> = sqlx::query_as::<Db, _>(
                "SELECT id FROM products WHERE holds_to_retire > 0 OR (open_expires_at > \
                 expired_through AND open_expires_at <= ?) ORDER BY id LIMIT ?",
            )
            .bind(int(now.as_ms()))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            let orders: Vec<(u64,)> = sqlx::query_as::<Db, _>(
                "SELECT product_id FROM orders WHERE status = 'pre_payment' \
                 AND payment_due_at <= ? ORDER BY payment_due_at LIMIT ?",
            )
            .bind(int(now.as_ms()))
            .bind(scan)
            .fetch_all(conn)
            .await
            .map_err(map_err)?;
            (buckets, to_retire, orders)
        });
        let ids: BTreeSet<u64> = (buckets.into_iter())
            .chain(to_retire)
            .chain(orders)
            .map(|(id,)| id)
            .collect();
        Ok(ids
            .into_iter()
            .take(limit as usize)
            .map(ProductId)
            .collect())
    }

    async fn sweep_candidates(
        &mut self,
        product: ProductId,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<SweepCandidates> {
        // Judged at the product's decision time: never before what it folded.
        super::sent::statements(1); // and one by `on_conn!`
        let (holds, orders) = on_conn!(self, |conn, d| {
            let greatest = match d {
                Dialect::MySql => "GREATEST",
                Dialect::Sqlite => "MAX",
            };
            let due = |table: &str, live: &str, due_at: &str| {
                format!(
                    "SELECT id FROM {table} WHERE product_id = ? AND {live} AND {due_at} <= \
                     (SELECT {greatest}(?, expired_through) FROM products WHERE id = ?) \
                     ORDER BY {due_at}, id LIMIT ?"
                )
            };
            let mut ids = [Vec::new(), Vec::new()];
            let queries = [
                due("holds", "state = 'held'", "expires_at"),
                due("orders", "status = 'pre_payment'", "payment_due_at"),
            ];
            for (ids, sql) in ids.iter_mut().zip(queries) {
                let rows: Vec<(u64,)> = sqlx::query_as::<Db, _>(AssertSqlSafe(sql))
                    .bind(int(product.0))
                    .bind(int(now.as_ms()))
                    .bind(int(product.0))
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(map_err)?;
                *ids = rows;
            }
            let [holds, orders] = ids;
            (holds, orders)
        });
        Ok(SweepCandidates {
            holds: holds.into_iter().map(|(id,)| HoldId(id)).collect(),
            orders: orders.into_iter().map(|(id,)| OrderId(id)).collect(),
        })
    }

    async fn holds_to_retire(&mut self) -> StoreResult<u64> {
        let (holds,): (i64,) = on_conn!(self, |conn, d| {
            let sql = match d {
                Dialect::MySql => {
                    "SELECT CAST(COALESCE(SUM(holds_to_retire), 0) AS SIGNED) FROM products"
                }
                Dialect::Sqlite => "SELECT COALESCE(SUM(holds_to_retire), 0) FROM products",
            };
            sqlx::query_as::<Db, _>(sql).fetch_one(conn).await
        })
        .map_err(map_err)?;
        u64::try_from(holds).map_err(|_| StoreError::Corrupt(format!("{holds} holds to retire")))
    }

    async fn purge_records(
        &mut self,
        kind: RecordKind,
        before: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        // SQLite has no DELETE ... LIMIT unless built with it; a rowid subquery is the same.
        let sql = match (kind, self.dialect()) {
            (RecordKind::RequestKeys, Dialect::MySql) => {
                "DELETE FROM request_keys WHERE created_at < ? LIMIT ?"
            }
            (RecordKind::RequestKeys, Dialect::Sqlite) => {
                "DELETE FROM request_keys WHERE rowid IN \
                 (SELECT rowid FROM request_keys WHERE created_at < ? LIMIT ?)"
            }
            (RecordKind::Webhooks, Dialect::MySql) => {
                "DELETE FROM webhooks WHERE received_at < ? LIMIT ?"
            }
            (RecordKind::Webhooks, Dialect::Sqlite) => {
                "DELETE FROM webhooks WHERE rowid IN \
                 (SELECT rowid FROM webhooks WHERE received_at < ? LIMIT ?)"
            }
        };
        let deleted = on_conn!(self, |conn, _d| {
            sqlx::query::<Db>(sql)
                .bind(int(before.as_ms()))
                .bind(limit)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(map_err)?;
        Ok(deleted)
    }

    async fn first_product(&mut self) -> StoreResult<Option<Product>> {
        let row: Option<ProductRow> = on_conn!(self, |conn, _d| {
            sqlx::query_as::<Db, _>(concat!(
                "SELECT ",
                product_columns!(),
                " FROM products ORDER BY id LIMIT 1"
            ))
            .fetch_optional(conn)
            .await
        })
        .map_err(map_err)?;
        Ok(row.map(product_from_row))
    }

    async fn dump(&mut self) -> StoreResult<Dump> {
        super::sent::statements(5); // and one by `on_conn!`
        let (products, holds, orders, webhooks, request_keys, buckets) = on_conn!(
            self,
            |conn, _d| {
                let products: Vec<ProductRow> = sqlx::query_as::<Db, _>(concat!(
                    "SELECT ",
                    product_columns!(),
                    " FROM products ORDER BY id"
                ))
                .fetch_all(&mut *conn)
                .await
                .map_err(map_err)?;
                let buckets: Vec<BucketRow> = sqlx::query_as::<Db, _>(
                    "SELECT product_id, expires_at, units, holds FROM expiry_buckets \
                 ORDER BY product_id, expires_at",
                )
                .fetch_all(&mut *conn)
                .await
                .map_err(map_err)?;
                let holds: Vec<HoldRow> = sqlx::query_as::<Db, _>(
                "SELECT id, product_id, qty, created_at, expires_at, state, release_reason, order_id \
                 FROM holds ORDER BY id",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
                let orders: Vec<OrderRow> = sqlx::query_as::<Db, _>(
                "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, payment_due_at, \
                 cancel_reason FROM orders ORDER BY id",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
                let webhooks: Vec<WebhookRow> = sqlx::query_as::<Db, _>(
                "SELECT idempotency_key, hold_id, status, fingerprint, result, order_id, received_at \
                 FROM webhooks ORDER BY idempotency_key",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
                let request_keys: Vec<RequestKeyRow> = sqlx::query_as::<Db, _>(
                "SELECT idempotency_key, request, product_id, qty, hold_id, resource_id, created, \
                 created_at FROM request_keys ORDER BY idempotency_key",
            )
            .fetch_all(conn)
            .await
            .map_err(map_err)?;
                Ok::<_, StoreError>((products, holds, orders, webhooks, request_keys, buckets))
            }
        )?;
        Ok(Dump {
            products: products.into_iter().map(product_from_row).collect(),
            holds: holds
                .into_iter()
                .map(hold_from_row)
                .collect::<StoreResult<_>>()?,
            orders: orders
                .into_iter()
                .map(order_from_row)
                .collect::<StoreResult<_>>()?,
            webhooks: webhooks
                .into_iter()
                .map(webhook_from_row)
                .collect::<StoreResult<_>>()?,
            request_keys: request_keys
                .into_iter()
                .map(request_key_from_row)
                .collect::<StoreResult<_>>()?,
            buckets: buckets
                .into_iter()
                .map(bucket_from_row)
                .collect::<StoreResult<_>>()?,
        })
    }
}

impl SqlTx {
    /// Those of `products` (sorted, distinct) with an expiry bucket due at `now`, in one
    /// statement whose work is one index probe per product.
    async fn products_with_due_buckets(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<ProductId>> {
        if products.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT id FROM products p WHERE EXISTS (SELECT 1 FROM expiry_buckets b \
             WHERE b.product_id = p.id AND b.expires_at <= ?) AND id IN",
            products.len(),
            "ORDER BY id",
            false,
        );
        let rows: Vec<(u64,)> = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql)).bind(int(now.as_ms()));
            for id in padded(products) {
                query = query.bind(int(id.0));
            }
            query.fetch_all(conn).await
        })
        .map_err(map_err)?;
        Ok(rows.into_iter().map(|(id,)| ProductId(id)).collect())
    }
}

/// Waits until this Galera node has applied every write set the cluster committed before the
/// call, on a connection of its own: a causal read (`wsrep_sync_wait`) is skipped inside an open
/// transaction (MariaDB checks causality only when a transaction begins or a statement runs
/// outside one), so a transaction cannot wait for itself. Rows another node committed are then
/// committed here too, and the transaction's next statement, at READ COMMITTED, reads them: a
/// hold granted through node A is found by an order through node B right after it. One wait
/// is one message through the cluster's group communication, so only a lookup by id that
/// misses a row pays it ([`SqlTx::fetch_by_id`]). A row found stale (another node changed it
/// since) needs no wait: a write decided on it fails certification at commit and is retried.
async fn caught_up(cluster: &Pool<MySql>) -> StoreResult<()> {
    sqlx::query("SET STATEMENT wsrep_sync_wait = 1 FOR SELECT 1")
        .execute(cluster)
        .await
        .map(drop)
        .map_err(map_err)
}

/// One value of an `IN` list ([`in_list`]): a row's id or a record's key.
enum Listed<'a> {
    Id(u64),
    Key(&'a str),
}

impl SqlTx {
    /// The rows of `sql`, a read with one `IN` list ([`in_list`]), `values` bound to it in order
    /// and padded as the list is.
    async fn fetch_listed<R>(&mut self, sql: String, values: &[Listed<'_>]) -> StoreResult<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        on_conn!(self, |conn, _d| {
            let mut query = sqlx::query_as::<Db, R>(AssertSqlSafe(sql));
            for value in padded(values) {
                query = match *value {
                    Listed::Id(id) => query.bind(int(id)),
                    Listed::Key(key) => query.bind(key),
                };
            }
            query.fetch_all(conn).await
        })
        .map_err(map_err)
    }

    /// The rows of `sql`, a read of rows by id with one `IN` list ([`in_list`]) of `ids`
    /// (distinct), locking them when `sql` does. On a Galera node, a read that misses some of its
    /// ids waits until the node has caught up with the cluster ([`caught_up`]) and reads again
    /// before the batch decides they do not exist: a row another node made and this one has not
    /// applied yet is simply missing, and a refusal (an unknown hold, say) writes nothing for
    /// certification to catch. A row another node changed meanwhile is no such case: a write
    /// decided on it fails certification at commit, and is retried.
    async fn fetch_by_id<R>(&mut self, sql: String, ids: &[u64]) -> StoreResult<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        let listed: Vec<Listed<'_>> = ids.iter().map(|&id| Listed::Id(id)).collect();
        let rows: Vec<R> = self.fetch_listed(sql.clone(), &listed).await?;
        let cluster = match self {
            SqlTx::MySql(_, Some(cluster)) if rows.len() < ids.len() => cluster.clone(),
            _ => return Ok(rows),
        };
        caught_up(&cluster).await?;
        self.fetch_listed(sql, &listed).await
    }
}
