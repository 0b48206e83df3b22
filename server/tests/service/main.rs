//! The service layer against real databases, in process: SQLite files and fresh MariaDB
//! databases, with manual clocks that jump back and differ between two services sharing one
//! database. Every test ends by checking the invariants on a dump of the database.
//!
//! The MariaDB half fails, never skips, when `FLASHSALE_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`) cannot be reached: start it with `bash .ci/mariadb.sh`.

// Test arithmetic is on small known numbers; an overflow would panic the test, as it should.
#![allow(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use flashsale_core::{
    CancelReason, Cents, Command, Fingerprint, Folded, HoldId, HoldState, HoldView, ID_MAX,
    IdempotencyKey, OrderId, OrderStatus, Outcome, PaymentStatus, ProductId, Qty, Rejection,
    ReleaseReason, Timestamp, WebhookPayload, WebhookResult,
};
use flashsale_server::sql::{OrderFilter, SqlStore};
use flashsale_service::clock::ManualClock;
use flashsale_service::store::StoreError;
use flashsale_service::{Answer, CACHE_STALENESS_MS_DEFAULT, Config, PURGE_BATCH, ServiceError};
#[path = "../common/mod.rs"]
mod common;

use common::{Db, T0, TTL_MS, TestService, WINDOW_MS, mariadb, sqlite, unique};

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).expect("valid key")
}

fn paid(k: &str, hold_id: HoldId) -> WebhookPayload {
    WebhookPayload {
        key: key(k),
        hold_id,
        status: PaymentStatus::Paid,
    }
}

async fn product(service: &TestService, stock: u32) -> ProductId {
    service
        .create_product("P", Cents(100), Qty(stock))
        .await
        .expect("created")
        .id
}

fn rejected(result: Result<impl std::fmt::Debug, ServiceError>) -> Rejection {
    match result {
        Err(ServiceError::Rejected(rejection)) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A hold request for `qty` units of `product` as a command, with the tests' TTL.
fn hold_command(product: ProductId, qty: u32, key: Option<&IdempotencyKey>) -> Command {
    Command::PlaceHold {
        product_id: product,
        qty: Qty(qty),
        ttl_ms: TTL_MS,
        key: key.cloned(),
    }
}

fn order_command(hold_id: HoldId) -> Command {
    Command::PlaceOrder {
        hold_id,
        payment_window_ms: WINDOW_MS,
        key: None,
    }
}

/// A hold answer's hold and whether it replayed, or its rejection.
fn held(answer: &Answer) -> Result<(flashsale_core::Hold, bool), Rejection> {
    match answer {
        Ok(Outcome::HoldPlaced { hold, replayed, .. }) => Ok((*hold, *replayed)),
        Err(ServiceError::Rejected(rejection)) => Err(rejection.clone()),
        other => panic!("not a hold answer: {other:?}"),
    }
}

fn rejection_for(requested: u32) -> Rejection {
    Rejection::InsufficientStock {
        requested: Qty(requested),
        available: Qty(0),
    }
}

/// A lock on a product's row taken from outside the service (a write transaction on SQLite, the
/// row `FOR UPDATE` on MariaDB), held until released.
enum Elsewhere {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Elsewhere {
    async fn lock(db: &Db, p: ProductId) -> Elsewhere {
        let id = i64::try_from(p.0).expect("a small id");
        if db.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("connect");
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("UPDATE products SET name = name WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await
                .expect("the database locked");
            Elsewhere::Sqlite(tx)
        } else {
            let pool = sqlx::MySqlPool::connect(&db.url).await.expect("connect");
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("SELECT id FROM products WHERE id = ? FOR UPDATE")
                .bind(id)
                .execute(&mut *tx)
                .await
                .expect("the row locked");
            Elsewhere::MySql(tx)
        }
    }

    async fn release(self) {
        match self {
            Elsewhere::Sqlite(tx) => tx.rollback().await.expect("unlocked"),
            Elsewhere::MySql(tx) => tx.rollback().await.expect("unlocked"),
        }
    }
}

/// Polls `future` once, as a caller that sent its request and now waits for the answer.
fn send<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(future).poll(&mut cx)
}

macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::sqlite().await).await;
                }
            )*
        }
        mod on_mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::mariadb().await).await;
                }
            )*
        }
    };
}

mod batches;
mod cache;
mod expiry;
mod keys;
mod migrations;
