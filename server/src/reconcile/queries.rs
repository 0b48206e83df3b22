//! The queries behind the reconciliation pages: pages of webhook records and of orders for an
//! operator, each in one read transaction of its own, never locking a row. They are methods of
//! [`SqlStore`] kept here, next to the pages they serve: the store never names them, and lends
//! them its row decoding and error sorting. Their parameter types ([`WebhookCursor`],
//! [`OrderFilter`]) stay in `crate::sql`, part of its public API.

use flashsale_core::{OrderId, WebhookRecord, WebhookResult};
use sqlx::AssertSqlSafe;

use crate::sql::{
    ListedOrder, OrderFilter, OrderRow, SqlStore, WebhookCursor, WebhookRow, int, map_err, on_conn,
    order_from_row, webhook_from_row,
};
use flashsale_service::store::{Storage, StoreResult, Transaction, TxMode};

/// Reconciliation reads: pages of records for an operator, each in one read transaction of
/// its own, never locking a row.
impl SqlStore {
    /// Up to `limit` webhook records with `result` (any when `None`), oldest first, after
    /// `after`.
    ///
    /// # Errors
    /// The database failed, or a stored row is corrupt.
    pub async fn webhook_page(
        &self,
        result: Option<WebhookResult>,
        after: Option<&WebhookCursor>,
        limit: u32,
    ) -> StoreResult<Vec<WebhookRecord>> {
        const COLUMNS: &str = "SELECT idempotency_key, hold_id, status, fingerprint, result, \
            order_id, received_at FROM webhooks WHERE ";
        const AFTER: &str = "(received_at > ? OR (received_at = ? AND idempotency_key > ?)) \
            ORDER BY received_at, idempotency_key LIMIT ?";
        let sql = match result {
            Some(_) => format!("{COLUMNS}result = ? AND {AFTER}"),
            None => format!("{COLUMNS}{AFTER}"),
        };
        // Every key is at least one character long, so (0, "") precedes every record.
        let (at, key) = after.map_or((0, ""), |c| (int(c.received_at.as_ms()), c.key.as_str()));
        let mut tx = self.begin(TxMode::Read).await?;
        let rows: Vec<WebhookRow> = on_conn!(&mut tx, |conn, _d| {
            let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql));
            if let Some(result) = result {
                query = query.bind(result.as_str());
            }
            query
                .bind(at)
                .bind(at)
                .bind(key)
                .bind(limit)
                .fetch_all(conn)
                .await
        })
        .map_err(map_err)?;
        tx.commit().await?;
        rows.into_iter().map(webhook_from_row).collect()
    }

    /// Up to `limit` orders matching `filter`, by id, after order `after`.
    ///
    /// # Errors
    /// The database failed, or a stored row is corrupt.
    pub async fn order_page(
        &self,
        filter: OrderFilter,
        after: Option<OrderId>,
        limit: u32,
    ) -> StoreResult<Vec<ListedOrder>> {
        let mut sql = String::from(
            "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, \
             payment_due_at, cancel_reason FROM orders WHERE id > ?",
        );
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.cancel_reason.is_some() {
            sql.push_str(" AND cancel_reason = ?");
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        let mut tx = self.begin(TxMode::Read).await?;
        let rows: Vec<OrderRow> = on_conn!(&mut tx, |conn, _d| {
            let mut query =
                sqlx::query_as::<Db, _>(AssertSqlSafe(sql)).bind(int(after.map_or(0, |id| id.0)));
            if let Some(status) = filter.status {
                query = query.bind(status.as_str());
            }
            if let Some(reason) = filter.cancel_reason {
                query = query.bind(reason.as_str());
            }
            query.bind(limit).fetch_all(conn).await
        })
        .map_err(map_err)?;
        tx.commit().await?;
        rows.into_iter()
            .map(|row| order_from_row(row).map(|order| (order, order.cancel_reason)))
            .collect()
    }
}
