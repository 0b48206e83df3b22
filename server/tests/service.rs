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

async fn a_clock_that_jumps_back_never_revives_a_released_hold(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 1).await;
    let hold = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    clock.advance(TTL_MS as i64);
    assert_eq!(
        service.hold(hold.id).await.expect("exists").1,
        HoldView::Expired
    );
    let swept = service.sweep().await.expect("swept");
    assert_eq!((swept.folded.holds, swept.holds_retired), (1, 1));
    clock.set(T0);
    assert_eq!(
        rejected(service.place_order(hold.id).await),
        Rejection::HoldReleased { hold_id: hold.id }
    );
    let refund = service
        .apply_webhook(&paid("late", hold.id))
        .await
        .expect("recorded");
    assert_eq!(refund.record.result, WebhookResult::RefundRequired);
    assert_eq!(service.product(p).await.expect("exists").available, Qty(1));
    db.finish(&service).await;
}

async fn two_servers_with_skewed_clocks_agree_on_one_database(db: Db) {
    let ahead = ManualClock::new(Timestamp(T0.as_ms() + TTL_MS));
    let behind = ManualClock::new(T0);
    let fast = db.service(&ahead).await;
    let slow = db.service(&behind).await;
    let p = product(&slow, 2).await;
    let old = slow.place_hold(p, Qty(2)).await.expect("granted").hold;
    // The fast server sees the hold expired: granting a new hold folds its bucket first.
    let new = fast.place_hold(p, Qty(2)).await.expect("granted");
    assert_eq!(new.folded, Folded { holds: 1, units: 2 });
    // The slow server's clock still thinks the old hold is young, but the product decides no
    // earlier than what it folded: the old hold has expired for good.
    assert_eq!(
        rejected(slow.place_order(old.id).await),
        Rejection::HoldExpired { hold_id: old.id }
    );
    assert_eq!(
        rejected(slow.place_hold(p, Qty(1)).await),
        Rejection::InsufficientStock {
            requested: Qty(1),
            available: Qty(0)
        }
    );
    let order = slow.place_order(new.hold.id).await.expect("ordered");
    assert!(order.created);
    assert_eq!(slow.product(p).await.expect("exists").product.stock, Qty(0));
    db.finish(&slow).await;
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

async fn a_batch_is_granted_in_arrival_order_and_inserted_together(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 5).await;
    let key = IdempotencyKey::parse("batch-key").expect("a key");
    let commands = [
        hold_command(p, 2, None),
        hold_command(p, 4, None),
        hold_command(p, 3, Some(&key)),
        hold_command(p, 1, None),
    ];
    let placed = service.execute_batch(&commands).await;
    let qtys: Vec<_> = placed
        .iter()
        .map(|answer| held(answer).map(|(hold, _)| hold.qty))
        .collect();
    let short = Rejection::InsufficientStock {
        requested: Qty(4),
        available: Qty(3),
    };
    assert_eq!(
        qtys,
        vec![Ok(Qty(2)), Err(short), Ok(Qty(3)), Err(rejection_for(1))]
    );
    let ids: Vec<_> = placed
        .iter()
        .filter_map(|answer| held(answer).ok().map(|(hold, _)| hold.id))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids ascend in arrival order: {ids:?}"
    );
    assert_eq!(service.product(p).await.expect("exists").available, Qty(0));
    // The keyed request again, in another batch: its record answers the same hold.
    let again = service
        .execute_batch(&[hold_command(p, 1, None), hold_command(p, 3, Some(&key))])
        .await;
    assert!(held(&again[0]).is_err());
    let (hold, replayed) = held(&again[1]).expect("replayed");
    assert!(replayed);
    assert_eq!(hold.id, ids[1]);
    db.finish(&service).await;
}

/// One transaction decides holds on several products, an order, an early paid webhook for
/// another hold and a restock, each seeing the ones before it: the webhook pays the order the
/// same batch creates, and a second order request finds it.
async fn a_batch_of_mixed_commands_over_several_products_decides_in_arrival_order(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let (p, q) = (product(&service, 2).await, product(&service, 1).await);
    let first = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    let commands = [
        hold_command(q, 1, None),
        order_command(first.id),
        Command::ApplyWebhook(paid("evt-mixed", first.id)),
        hold_command(q, 1, None),
        Command::Restock {
            product_id: q,
            qty: Qty(2),
        },
        hold_command(q, 2, None),
        hold_command(p, 1, None),
        order_command(first.id),
    ];
    let answers = service.execute_batch(&commands).await;
    assert!(held(&answers[0]).is_ok());
    let Ok(Outcome::OrderPlaced { order, created, .. }) = &answers[1] else {
        panic!("{:?}", answers[1]);
    };
    assert!(created);
    let Ok(Outcome::WebhookApplied {
        record,
        order: paid_order,
        ..
    }) = &answers[2]
    else {
        panic!("{:?}", answers[2]);
    };
    assert_eq!(record.result, WebhookResult::Applied);
    assert_eq!(
        record.order_id,
        Some(order.id),
        "the webhook names the batch's order"
    );
    assert_eq!(paid_order.map(|o| o.status), Some(OrderStatus::Paid));
    assert_eq!(held(&answers[3]), Err(rejection_for(1)), "q was sold out");
    let Ok(Outcome::Restocked { available, .. }) = &answers[4] else {
        panic!("{:?}", answers[4]);
    };
    assert_eq!(*available, Qty(2));
    assert!(held(&answers[5]).is_ok(), "the restock's units");
    assert!(held(&answers[6]).is_ok(), "p's last unit");
    let Ok(Outcome::OrderPlaced {
        order: again,
        created,
        ..
    }) = &answers[7]
    else {
        panic!("{:?}", answers[7]);
    };
    assert!(!created);
    assert_eq!((again.id, again.status), (order.id, OrderStatus::Paid));
    assert_eq!(
        service.order(order.id).await.expect("stored").status,
        OrderStatus::Paid
    );
    db.finish(&service).await;
}

/// An order naming a hold that an earlier command of its own batch inserts could not find it
/// (ids come only from the insert): the batch is rolled back and decided again in two parts, so
/// the order's answer is the one arrival order gives. On SQLite the second attempt reuses the id
/// and the order finds the hold; MariaDB never hands an id out twice, so there the hold gets
/// the next one and the order rightly finds nothing. Without the split, the order would answer
/// `unknown_hold` for the very hold its batch granted before it.
async fn a_command_missing_a_hold_its_batch_inserted_is_decided_after_it(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 3).await;
    let before = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    let next = HoldId(before.id.0 + 1);
    let answers = service
        .execute_batch(&[hold_command(p, 1, None), order_command(next)])
        .await;
    let (hold, _) = held(&answers[0]).expect("granted");
    match &answers[1] {
        Ok(Outcome::OrderPlaced { order, created, .. }) => {
            assert_eq!(hold.id, next, "an order for the hold its batch granted");
            assert!(created);
            assert_eq!(order.hold_id, next);
        }
        Err(ServiceError::Rejected(Rejection::UnknownHold { hold_id })) => {
            assert_eq!(*hold_id, next);
            assert_ne!(
                hold.id, next,
                "the batch granted the very hold the order missed"
            );
        }
        other => panic!("{other:?}"),
    }
    if db.url.starts_with("sqlite:") {
        assert_eq!(hold.id, next, "SQLite gives a rolled-back id again");
    }
    db.finish(&service).await;
}

/// A batch that fails on one command's corrupt row is decided again one command at a time: that
/// request gets its error, the others commit.
async fn a_poisoned_command_fails_alone_and_the_rest_of_its_batch_commits(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let (p, q) = (product(&service, 2).await, product(&service, 2).await);
    // A hold row with a state word no release can match: reading it fails the batch.
    let hold = service.place_hold(q, Qty(1)).await.expect("granted").hold;
    db.execute(&format!(
        "UPDATE holds SET state = 'bogus' WHERE id = {}",
        hold.id
    ))
    .await;
    let answers = service
        .execute_batch(&[
            hold_command(p, 1, None),
            order_command(hold.id),
            hold_command(p, 1, None),
        ])
        .await;
    assert!(held(&answers[0]).is_ok());
    assert!(
        matches!(answers[1], Err(ServiceError::Store(StoreError::Corrupt(_)))),
        "{:?}",
        answers[1]
    );
    assert!(held(&answers[2]).is_ok());
    assert_eq!(service.product(p).await.expect("exists").available, Qty(0));
    db.execute(&format!(
        "UPDATE holds SET state = 'held' WHERE id = {}",
        hold.id
    ))
    .await;
    db.finish(&service).await;
}

/// A batch that releases expired holds says so on its first grant only, as the same requests one
/// by one would: the first grant folded them, the later ones found none.
async fn a_batch_folds_the_due_buckets_on_its_first_grant(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 3).await;
    let expired = service.place_hold(p, Qty(3)).await.expect("granted").hold;
    clock.advance(TTL_MS as i64);
    let commands = [4, 1, 2].map(|qty| hold_command(p, qty, None));
    let placed = service.execute_batch(&commands).await;
    let folded: Vec<_> = placed
        .iter()
        .map(|answer| match answer {
            Ok(Outcome::HoldPlaced { folded, .. }) => Some(*folded),
            _ => None,
        })
        .collect();
    let once = Folded {
        holds: 1,
        units: u64::from(expired.qty.0),
    };
    assert_eq!(
        folded,
        vec![None, Some(once), Some(Folded::default())],
        "refused, then the first grant folds, then the next finds nothing to fold"
    );
    db.finish(&service).await;
}

fn rejection_for(requested: u32) -> Rejection {
    Rejection::InsufficientStock {
        requested: Qty(requested),
        available: Qty(0),
    }
}

async fn a_refused_hold_leaves_expired_holds_as_they_were(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 2).await;
    let first = service.place_hold(p, Qty(2)).await.expect("granted").hold;
    clock.advance(TTL_MS as i64);
    rejected(service.place_hold(p, Qty(3)).await);
    let dump = service.dump().await.expect("dump");
    let state = dump
        .holds
        .iter()
        .find(|h| h.id == first.id)
        .map(|h| h.state);
    assert_eq!(state, Some(HoldState::Held), "a rejection changes nothing");
    let second = service.place_hold(p, Qty(2)).await.expect("granted");
    assert_eq!(second.folded, Folded { holds: 1, units: 2 });
    db.finish(&service).await;
}

/// Reads and grants agree at and around a hold's exact deadline: one instant before it the
/// hold's units are held, at it they are free. Each read is asked of the database (the cache is
/// off) and of the cache, which may not serve a value past the deadline.
async fn reads_and_grants_agree_at_a_holds_exact_deadline(db: Db) {
    let mut last = None;
    for cache_staleness_ms in [0, CACHE_STALENESS_MS_DEFAULT] {
        let clock = ManualClock::new(T0);
        let config = Config {
            cache_staleness_ms,
            ..Config::default()
        };
        let service = db.service_with(&clock, config).await;
        let p = product(&service, 5).await;
        let hold = service.place_hold(p, Qty(2)).await.expect("granted").hold;
        let view = async |service: &TestService| {
            let read = service.product(p).await.expect("the product");
            let (_, state) = service.hold(hold.id).await.expect("the hold");
            (read.available, state)
        };
        // Read once before the deadline, so that a cached value exists to be wrongly kept.
        assert_eq!(view(&service).await, (Qty(3), HoldView::Held));
        clock.set(Timestamp(hold.expires_at.as_ms().saturating_sub(1)));
        assert_eq!(
            view(&service).await,
            (Qty(3), HoldView::Held),
            "one ms before"
        );
        rejected(service.place_hold(p, Qty(4)).await);
        clock.set(hold.expires_at);
        assert_eq!(
            view(&service).await,
            (Qty(5), HoldView::Expired),
            "at the deadline the units are free (cache {cache_staleness_ms} ms)"
        );
        // ... and a grant agrees: all five.
        let placed = service
            .place_hold(p, Qty(5))
            .await
            .expect("granted at the deadline");
        assert_eq!(placed.folded, Folded { holds: 1, units: 2 });
        assert_eq!(view(&service).await.0, Qty(0));
        last = Some(service);
    }
    db.finish(&last.expect("two rounds")).await;
}

async fn webhooks_apply_once_and_answer_replays_from_the_record(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 3).await;
    let hold = service.place_hold(p, Qty(2)).await.expect("granted").hold;
    let early = service
        .apply_webhook(&paid("evt_1", hold.id))
        .await
        .expect("applied");
    assert_eq!(early.record.result, WebhookResult::Applied);
    let order = early.order.expect("created paid");
    assert_eq!(order.status, OrderStatus::Paid);
    let again = service
        .apply_webhook(&paid("evt_1", hold.id))
        .await
        .expect("replayed");
    assert!(again.replayed);
    assert_eq!(again.record, early.record);
    let placed = service.place_order(hold.id).await.expect("answered");
    assert_eq!((placed.order.id, placed.created), (order.id, false));
    let reused = WebhookPayload {
        status: PaymentStatus::Failed,
        ..paid("evt_1", hold.id)
    };
    assert_eq!(
        rejected(service.apply_webhook(&reused).await),
        Rejection::IdempotencyKeyReused {
            key: key("evt_1"),
            field: "status"
        }
    );
    let conflict = WebhookPayload {
        key: key("evt_2"),
        ..reused
    };
    let answer = service.apply_webhook(&conflict).await.expect("recorded");
    assert_eq!(answer.record.result, WebhookResult::Conflict);
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(1)
    );
    db.finish(&service).await;
}

async fn the_sweep_cancels_overdue_orders_and_returns_their_units_once(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 4).await;
    let hold = service.place_hold(p, Qty(3)).await.expect("granted").hold;
    let order = service.place_order(hold.id).await.expect("ordered").order;
    let expiring = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    assert_eq!(service.product(p).await.expect("exists").available, Qty(0));
    clock.advance(WINDOW_MS as i64);
    let report = service.sweep().await.expect("swept");
    assert_eq!((report.holds_retired, report.orders_cancelled), (1, 1));
    assert_eq!(
        service.sweep().await.expect("swept again"),
        Default::default()
    );
    assert_eq!(
        service.order(order.id).await.expect("exists").status,
        OrderStatus::Cancelled
    );
    let (released, _) = service.hold(expiring.id).await.expect("exists");
    assert_eq!(released.state, HoldState::Released(ReleaseReason::Expired));
    assert_eq!(service.product(p).await.expect("exists").available, Qty(4));
    let late = service
        .apply_webhook(&paid("late", hold.id))
        .await
        .expect("recorded");
    assert_eq!(late.record.result, WebhookResult::RefundRequired);
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(4)
    );
    db.finish(&service).await;
}

/// A mass expiry: far more holds expire together than one statement may name (65,535
/// placeholders on MySQL, 32,766 on SQLite). A read counts their one due bucket; the first grant
/// after their deadline folds it, writing no hold row; the sweeper retires the rows a chunk per
/// product and pass, each transaction within its budget, and the units stay available throughout.
async fn a_mass_expiry_is_folded_at_once_and_retired_in_chunks(db: Db) {
    const EXPIRED: u32 = 70_000;
    const CHUNK: u32 = 10_000;
    let clock = ManualClock::new(T0);
    let config = Config {
        sweep_chunk: CHUNK,
        ..Config::default()
    };
    let service = db.service_with(&clock, config).await;
    let p = product(&service, EXPIRED + 5).await;
    let (created, expires) = (T0.as_ms(), T0.as_ms() + 1_000);
    let numbers = if db.url.starts_with("sqlite:") {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {EXPIRED}) \
             SELECT i FROM n"
        )
    } else {
        format!("SELECT seq FROM seq_1_to_{EXPIRED}")
    };
    db.execute(&format!(
        "INSERT INTO holds (product_id, qty, created_at, expires_at, state) \
         SELECT {}, 1, {created}, {expires}, 'held' FROM ({numbers}) AS numbers",
        p.0
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO expiry_buckets (product_id, expires_at, units, holds) \
         VALUES ({}, {expires}, {EXPIRED}, {EXPIRED})",
        p.0
    ))
    .await;
    db.execute(&format!(
        "UPDATE products SET units_held = {EXPIRED} WHERE id = {}",
        p.0
    ))
    .await;
    assert_eq!(service.product(p).await.expect("exists").available, Qty(5));
    clock.advance(1_000);
    let due = service.product(p).await.expect("exists");
    assert_eq!(
        due.available,
        Qty(EXPIRED + 5),
        "a read counts the due bucket"
    );
    let placed = service.place_hold(p, Qty(1)).await.expect("granted");
    let all = u64::from(EXPIRED);
    assert_eq!(
        placed.folded,
        Folded {
            holds: all,
            units: all
        }
    );
    let folded = service.product(p).await.expect("exists").product;
    assert_eq!(
        (folded.units_held, folded.holds_to_retire),
        (Qty(1), EXPIRED),
        "the grant wrote no hold row: every expired one waits to be retired"
    );
    let pass = service.sweep().await.expect("swept");
    assert_eq!(
        pass.holds_retired, CHUNK as usize,
        "one chunk per product and pass"
    );
    let rest = service.sweep_all().await.expect("swept");
    assert_eq!(rest.holds_retired, (EXPIRED - CHUNK) as usize);
    let after = service.product(p).await.expect("exists");
    assert_eq!(
        (after.product.holds_to_retire, after.available),
        (0, Qty(EXPIRED + 4))
    );
    db.finish(&service).await;
}

/// A batch whose transaction the database ended behind the store's back (a Galera node applying
/// another node's write may roll back a transaction that has only read, and not say so) writes
/// nothing and is a conflict to retry: its statements must not run one by one in autocommit
/// mode, committing a product update decided on rows another node has since changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_database_ended_their_transaction_change_nothing() {
    use flashsale_core::{Counters, HoldGrant, NewHold, WriteSet};
    use flashsale_server::sql::SqlTx;
    use flashsale_service::store::{Storage, Transaction, TxMode};

    let db = mariadb().await;
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 10).await;
    let store = db.store().await;
    let mut tx = store.begin(TxMode::Write).await.expect("begin");
    tx.lock_products(&[p]).await.expect("read");
    let SqlTx::MySql(inner, _) = &mut tx else {
        panic!("a MariaDB store")
    };
    sqlx::query("ROLLBACK")
        .execute(&mut **inner)
        .await
        .expect("the transaction ends under the store");
    let grant = HoldGrant {
        qty: Qty(1),
        created_at: T0,
        expires_at: T0.saturating_add_ms(TTL_MS),
    };
    let writes = WriteSet {
        products: vec![Counters {
            id: p,
            stock: Qty(10),
            units_held: Qty(1),
            units_received: 10,
            expired_through: Timestamp(0),
            holds_to_retire: 0,
            open_bucket: Default::default(),
        }],
        holds_inserted: vec![NewHold {
            product_id: p,
            grant,
        }],
        ..WriteSet::default()
    };
    let outcome = tx.write(&writes).await;
    assert!(
        matches!(outcome, Err(StoreError::Contention(_))),
        "a write after its transaction ended: {outcome:?}"
    );
    drop(tx);
    let mut check = store.begin(TxMode::Write).await.expect("begin");
    let after = check.lock_products(&[p]).await.expect("read");
    assert_eq!(
        after.first().map(|p| p.units_held),
        Some(Qty(0)),
        "the product row is as it was"
    );
    drop(check);
    store.close().await;
    db.finish(&service).await;
}

async fn concurrent_holds_grant_exactly_the_stock(db: Db) {
    let clock = ManualClock::new(T0);
    let service = Arc::new(db.service(&clock).await);
    let p = product(&service, 10).await;
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.place_hold(p, Qty(1)).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(_) => granted += 1,
            Err(ServiceError::Rejected(Rejection::InsufficientStock { .. })) => {}
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert_eq!(granted, 10);
    assert_eq!(service.product(p).await.expect("exists").available, Qty(0));
    db.finish(&service).await;
}

/// Three committers, each deciding its products' batches in its own transaction: every product
/// grants exactly its stock, and orders and webhooks (which go to their hold's committer, not
/// their product's) complete the flow with every invariant intact.
async fn three_committers_grant_exactly_each_stock_and_complete_the_flow(db: Db) {
    let clock = ManualClock::new(T0);
    let config = Config {
        committers: 3,
        ..Config::default()
    };
    let service = Arc::new(db.service_with(&clock, config).await);
    let mut products = Vec::new();
    for _ in 0..4 {
        products.push(product(&service, 10).await);
    }
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let service = service.clone();
            let p = products[i % products.len()];
            tokio::spawn(async move { (p, service.place_hold(p, Qty(1)).await) })
        })
        .collect();
    let mut granted = Vec::new();
    for task in tasks {
        match task.await.expect("task ran") {
            (p, Ok(placed)) => granted.push((p, placed.hold.id)),
            (_, Err(ServiceError::Rejected(Rejection::InsufficientStock { .. }))) => {}
            (_, Err(other)) => panic!("unexpected failure: {other}"),
        }
    }
    for &p in &products {
        let of_p = granted.iter().filter(|(q, _)| *q == p).count();
        assert_eq!(of_p, 10, "product {p} grants its stock exactly");
        let view = service.product(p).await.expect("exists");
        assert_eq!(view.available, Qty(0));
    }
    let tasks: Vec<_> = (granted.iter().enumerate())
        .map(|(i, &(_, hold_id))| {
            let service = service.clone();
            tokio::spawn(async move {
                let order = service.place_order(hold_id).await?;
                let paid = paid(&format!("evt-committers-{i}"), hold_id);
                let answer = service.apply_webhook(&paid).await?;
                Ok::<_, ServiceError>((order, answer))
            })
        })
        .collect();
    for task in tasks {
        let (order, answer) = task.await.expect("task ran").expect("order and payment");
        assert!(order.created);
        assert_eq!(answer.record.result, WebhookResult::Applied);
        assert_eq!(answer.order.map(|o| o.status), Some(OrderStatus::Paid));
    }
    for &p in &products {
        let view = service.product(p).await.expect("exists");
        assert_eq!(
            (view.product.stock, view.available),
            (Qty(0), Qty(0)),
            "sold out"
        );
    }
    db.finish(&service).await;
}

async fn concurrent_duplicate_webhooks_apply_once(db: Db) {
    let clock = ManualClock::new(T0);
    let service = Arc::new(db.service(&clock).await);
    let p = product(&service, 1).await;
    let hold = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let service = service.clone();
            // Half the deliveries reuse one key; the others each bring their own.
            let k = if i % 2 == 0 {
                "dup".to_owned()
            } else {
                format!("other_{i}")
            };
            tokio::spawn(async move { service.apply_webhook(&paid(&k, hold.id)).await })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        let answer = task.await.expect("task ran").expect("answered");
        if answer.record.result == WebhookResult::Applied && !answer.replayed {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(0)
    );
    db.finish(&service).await;
}

async fn a_keyed_hold_is_placed_once_and_replayed(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 5).await;
    let k = key("hold-1");
    let first = service.place_hold_keyed(Some(&k), p, Qty(2)).await;
    let first = first.expect("granted");
    assert!(!first.replayed);
    clock.advance(1_000);
    let again = service.place_hold_keyed(Some(&k), p, Qty(2)).await;
    let again = again.expect("replayed");
    assert!(again.replayed);
    assert_eq!(
        again.value.hold, first.value.hold,
        "the same hold, as stored"
    );
    assert_eq!(
        service.product(p).await.expect("exists").available,
        Qty(3),
        "the replay held nothing more"
    );
    let other_qty = service.place_hold_keyed(Some(&k), p, Qty(3)).await;
    assert_eq!(
        rejected(other_qty),
        Rejection::IdempotencyKeyReused {
            key: k.clone(),
            field: "qty"
        }
    );
    let other_request = service
        .place_order_keyed(Some(&k), first.value.hold.id)
        .await;
    assert_eq!(
        rejected(other_request),
        Rejection::IdempotencyKeyReused {
            key: k.clone(),
            field: "request"
        }
    );
    let dump = service.dump().await.expect("dump");
    assert_eq!(dump.holds.len(), 1);
    assert!(
        dump.orders.is_empty(),
        "the refused order request changed nothing"
    );
    db.finish(&service).await;
}

async fn a_rejected_keyed_hold_leaves_the_key_unused(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 1).await;
    service.place_hold(p, Qty(1)).await.expect("granted");
    let k = key("hold-later");
    let refused = service.place_hold_keyed(Some(&k), p, Qty(1)).await;
    assert_eq!(rejected(refused), rejection_for(1));
    clock.advance(TTL_MS as i64);
    let granted = service.place_hold_keyed(Some(&k), p, Qty(1)).await;
    let granted = granted.expect("the stock came back");
    assert!(!granted.replayed, "the refusal stored nothing to replay");
    let replay = service.place_hold_keyed(Some(&k), p, Qty(1)).await;
    assert_eq!(replay.expect("replayed").value.hold, granted.value.hold);
    db.finish(&service).await;
}

async fn a_keyed_order_replays_its_first_answer(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 3).await;
    let hold = service.place_hold(p, Qty(1)).await.expect("granted").hold;
    let k = key("order-1");
    let first = service.place_order_keyed(Some(&k), hold.id).await;
    let first = first.expect("ordered");
    assert!(first.value.created && !first.replayed);
    service
        .apply_webhook(&paid("evt-1", hold.id))
        .await
        .expect("paid");
    let again = service.place_order_keyed(Some(&k), hold.id).await;
    let again = again.expect("replayed");
    assert!(
        again.replayed && again.value.created,
        "201 again, as first answered"
    );
    assert_eq!(again.value.order.id, first.value.order.id);
    assert_eq!(again.value.order.status, OrderStatus::Paid, "as it is now");
    // A new key for the same hold finds the order (200) and keeps that answer.
    let k2 = key("order-2");
    let found = service.place_order_keyed(Some(&k2), hold.id).await;
    let found = found.expect("found");
    assert!(!found.value.created && !found.replayed);
    let found_again = service.place_order_keyed(Some(&k2), hold.id).await;
    let found_again = found_again.expect("replayed");
    assert!(!found_again.value.created && found_again.replayed);
    let other = service
        .place_order_keyed(Some(&k), HoldId(hold.id.0 + 1))
        .await;
    assert_eq!(
        rejected(other),
        Rejection::IdempotencyKeyReused {
            key: k.clone(),
            field: "hold_id"
        }
    );
    assert_eq!(
        service.product(p).await.expect("exists").product.stock,
        Qty(2),
        "one order took one unit"
    );
    db.finish(&service).await;
}

async fn concurrent_requests_under_one_key_on_two_servers_place_one_hold(db: Db) {
    let clock = ManualClock::new(T0);
    let servers = [
        Arc::new(db.service(&clock).await),
        Arc::new(db.service(&clock).await),
    ];
    let p = product(&servers[0], 50).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let service = servers[i % 2].clone();
            tokio::spawn(async move {
                service
                    .place_hold_keyed(Some(&key("same")), p, Qty(1))
                    .await
            })
        })
        .collect();
    let mut holds = Vec::new();
    let mut in_flight = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(keyed) => holds.push(keyed.value.hold.id),
            Err(ServiceError::KeyInFlight { .. }) => in_flight += 1,
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert!(!holds.is_empty());
    assert!(
        holds.iter().all(|&id| id == holds[0]),
        "every answer names the one hold: {holds:?}"
    );
    assert_eq!(holds.len() + in_flight, 20);
    let dump = servers[0].dump().await.expect("dump");
    assert_eq!(dump.holds.len(), 1, "one key, one hold");
    db.finish(&servers[0]).await;
}

async fn the_cache_shows_own_writes_at_once_and_others_within_the_staleness_bound(db: Db) {
    let clock = ManualClock::new(T0);
    let here = db.service(&clock).await;
    let there = db.service(&clock).await;
    let p = product(&here, 5).await;
    let available = |s: &TestService| {
        let s = s.clone();
        async move { s.product(p).await.expect("exists").available }
    };
    assert_eq!(available(&here).await, Qty(5));
    assert_eq!(available(&there).await, Qty(5), "now cached on both");
    here.place_hold(p, Qty(2)).await.expect("granted");
    assert_eq!(available(&here).await, Qty(3), "its own write, at once");
    assert_eq!(
        available(&there).await,
        Qty(5),
        "another instance's write may be a second late"
    );
    clock.advance(i64::try_from(CACHE_STALENESS_MS_DEFAULT).expect("small"));
    assert_eq!(available(&there).await, Qty(3), "and no later");
    // Even with a staleness bound far beyond the TTL, an entry is never served past the next
    // hold deadline, when units come back by themselves.
    let patient = Config {
        cache_staleness_ms: 100 * TTL_MS,
        ..Config::default()
    };
    let patient = db.service_with(&clock, patient).await;
    assert_eq!(available(&patient).await, Qty(3));
    // The hold was granted at T0 and the clock reads T0 + the staleness bound.
    clock.set(Timestamp(T0.as_ms() + TTL_MS - 1));
    assert_eq!(
        available(&patient).await,
        Qty(3),
        "cached, or read again: still held"
    );
    clock.advance(1);
    assert_eq!(
        available(&patient).await,
        Qty(5),
        "the hold expired: its units are back"
    );
    // And a clock stepped back before the read misses rather than serving the future.
    here.place_hold(p, Qty(1)).await.expect("granted");
    assert_eq!(
        available(&patient).await,
        Qty(5),
        "cached before that write, by design"
    );
    clock.advance(-1);
    assert_eq!(available(&patient).await, Qty(4), "read again");
    db.finish(&here).await;
}

/// A wall clock that steps forward, then back, then catches up again reads as it did when an
/// entry was stored; the entry must still be gone once the staleness bound has passed on the
/// monotonic clock. (The simulator's reads found an entry served 8 s after it was stored.)
async fn a_cached_value_never_outlives_the_staleness_bound_whatever_the_wall_clock_does(db: Db) {
    let here_clock = ManualClock::new(T0);
    let there_clock = ManualClock::new(T0);
    let here = db.service(&here_clock).await;
    let there = db.service(&there_clock).await;
    let p = product(&here, 5).await;
    let step = 6_672;
    there_clock.advance(step);
    here_clock.advance(step);
    assert_eq!(there.product(p).await.expect("exists").available, Qty(5));
    here.place_hold(p, Qty(2)).await.expect("granted");
    // Back by more than the step, then forward again to 300 ms past the read: the wall clock
    // is inside the entry's window, but 8.2 s have passed.
    there_clock.advance(-7_931);
    there_clock.advance(7_931 + 300);
    assert_eq!(
        there.product(p).await.expect("exists").available,
        Qty(3),
        "an entry older than the staleness bound is read again"
    );
    db.finish(&here).await;
}

/// Migrates `store` with only the migrations `names`, writes `rows` in that old schema, then
/// applies every migration of this build over them.
async fn migrate_over_old_rows(store: &SqlStore, names: &[&str], rows: &str) {
    migrate_old(store, names, rows).await;
    migrate_new(store, names).await;
}

/// Migrates `store` with only the migrations `names` and writes `rows` in that old schema.
async fn migrate_old(store: &SqlStore, names: &[&str], rows: &str) {
    let dialect = match store {
        SqlStore::MySql(_) => "mysql",
        SqlStore::Sqlite(_) => "sqlite",
    };
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let before = std::env::temp_dir().join(format!("flashsale-migrations-{}", unique()));
    std::fs::create_dir_all(&before).expect("temp dir");
    for name in names {
        std::fs::copy(all.join(name), before.join(name)).expect("copy a migration");
    }
    let old = sqlx::migrate::Migrator::new(before.as_path())
        .await
        .expect("the old migrations");
    match store {
        SqlStore::MySql(pool) => {
            old.run(&**pool).await.expect("the old migrations apply");
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows))
                .execute(&**pool)
                .await
                .expect("old rows");
        }
        SqlStore::Sqlite(pool) => {
            old.run(pool).await.expect("the old migrations apply");
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows))
                .execute(pool)
                .await
                .expect("old rows");
        }
    }
    let _ = std::fs::remove_dir_all(&before);
}

/// Applies every migration of this build over a store [`migrate_old`] left with `names`.
async fn migrate_new(store: &SqlStore, names: &[&str]) {
    let applied = store
        .migrate()
        .await
        .expect("the new migrations apply over the old rows");
    let known = store.migrations().await.expect("listed");
    let newer: Vec<i64> = known
        .iter()
        .filter(|m| {
            !names
                .iter()
                .any(|n| n.starts_with(&format!("{:04}_", m.version)))
        })
        .map(|m| m.version)
        .collect();
    let applied: Vec<i64> = applied.iter().map(|m| m.version).collect();
    assert_eq!(
        applied, newer,
        "migrate answers only the migrations it applied"
    );
}

async fn the_counters_migration_backfills_units_held_from_the_held_holds(db: Db) {
    let store = SqlStore::connect(&db.url).await.expect("connect");
    // The schema as it was before the counters.
    let rows = "INSERT INTO products (id, name, price_cents, stock, units_received) \
                VALUES (1, 'P', 100, 10, 10), (2, 'Q', 100, 4, 4); \
                INSERT INTO holds (product_id, qty, created_at, expires_at, state, release_reason) \
                VALUES (1, 3, 0, 9999999999999, 'held', NULL), (1, 2, 0, 1, 'held', NULL), \
                (1, 4, 0, 1, 'released', 'expired');";
    migrate_over_old_rows(&store, &["0001_init.sql", "0002_request_keys.sql"], rows).await;
    store.close().await;
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let dump = service.dump().await.expect("dump");
    let held: Vec<Qty> = dump.products.iter().map(|p| p.units_held).collect();
    assert_eq!(
        held,
        vec![Qty(5), Qty(0)],
        "held holds, expired or not, count"
    );
    // The expired hold's units are free (10 - 3), and a grant releases it.
    assert_eq!(
        service
            .product(ProductId(1))
            .await
            .expect("exists")
            .available,
        Qty(7)
    );
    let placed = service
        .place_hold(ProductId(1), Qty(7))
        .await
        .expect("granted");
    assert_eq!(placed.folded, Folded { holds: 1, units: 2 });
    db.finish(&service).await;
}

/// The expiry buckets' migration over a database with holds in every state: live and expired
/// held holds (two sharing a deadline), consumed, released by a failed payment and released as
/// expired. Every product answers the same availability after it as the old schema's read did
/// before (stock less the held holds not yet past their deadline), the invariants hold with the
/// new buckets, and a grant then folds the expired hold's bucket.
async fn the_expiry_bucket_migration_keeps_every_products_availability(db: Db) {
    let store = SqlStore::connect(&db.url).await.expect("connect");
    let (now, live, gone) = (T0.as_ms(), T0.as_ms() + 30_000, T0.as_ms() - 1_000);
    let rows = format!(
        "INSERT INTO products (id, name, price_cents, stock, units_held, units_received) \
         VALUES (1, 'P', 100, 10, 7, 12), (2, 'Q', 100, 5, 5, 5), (3, 'R', 100, 3, 0, 3); \
         INSERT INTO holds (id, product_id, qty, created_at, expires_at, state, release_reason, \
         order_id) VALUES (1, 1, 3, 0, {live}, 'held', NULL, NULL), \
         (2, 1, 2, 0, {live}, 'held', NULL, NULL), (3, 1, 2, 0, {gone}, 'held', NULL, NULL), \
         (4, 1, 2, 0, {live}, 'consumed', NULL, 1), \
         (5, 1, 1, 0, {live}, 'released', 'payment_failed', NULL), \
         (6, 1, 4, 0, {gone}, 'released', 'expired', NULL), \
         (7, 2, 5, 0, {gone}, 'held', NULL, NULL); \
         INSERT INTO orders (id, hold_id, product_id, qty, total_cents, status, created_at, \
         payment_due_at) VALUES (1, 4, 1, 2, 200, 'pre_payment', 0, {live});"
    );
    let names = [
        "0001_init.sql",
        "0002_request_keys.sql",
        "0003_product_counters.sql",
        "0004_record_retention.sql",
        "0005_cancel_reasons.sql",
        "0006_orders_by_product.sql",
    ];
    migrate_old(&store, &names, &rows).await;
    // What the old schema's product read answered at `now`.
    let old_read = format!(
        "SELECT CAST(p.stock - (SELECT COALESCE(SUM(h.qty), 0) FROM holds h WHERE \
         h.product_id = p.id AND h.state = 'held' AND h.expires_at > {now}) AS SIGNED) \
         FROM products p ORDER BY p.id"
    );
    let before: Vec<i64> = match &store {
        SqlStore::MySql(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(old_read))
            .fetch_all(&**pool)
            .await
            .expect("read"),
        SqlStore::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(old_read))
            .fetch_all(pool)
            .await
            .expect("read"),
    };
    assert_eq!(
        before,
        vec![5, 5, 3],
        "the old rows read as the old schema reads them"
    );
    migrate_new(&store, &names).await;
    store.close().await;
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let mut after = Vec::new();
    for id in 1..=3 {
        let view = service.product(ProductId(id)).await.expect("exists");
        after.push(i64::from(view.available.0));
    }
    assert_eq!(after, before, "every product answers the same availability");
    let dump = service.dump().await.expect("dump");
    let buckets: Vec<(u64, u64, u32, u32)> = (dump.buckets.iter())
        .map(|b| (b.product_id.0, b.expires_at.as_ms(), b.units.0, b.holds))
        .collect();
    assert_eq!(
        buckets,
        vec![(1, gone, 2, 1), (1, live, 5, 2), (2, gone, 5, 1)],
        "one bucket per product and deadline of the held holds"
    );
    dump.check()
        .expect("the invariants hold over the migrated rows");
    let placed = service
        .place_hold(ProductId(1), Qty(5))
        .await
        .expect("granted");
    assert_eq!(placed.folded, Folded { holds: 1, units: 2 });
    db.finish(&service).await;
}

async fn the_cancel_reason_migration_names_why_old_orders_were_cancelled(db: Db) {
    let store = SqlStore::connect(&db.url).await.expect("connect");
    // Orders cancelled before reasons were stored: one by a failed webhook, one by its payment
    // window (a late paid webhook does not make it a payment failure), one with no webhook at
    // all; and a paid order that a failed webhook contradicted.
    let print = |hold: u64, status| Fingerprint::of(HoldId(hold), status).to_string();
    let rows = format!(
        "INSERT INTO products (id, name, price_cents, stock, units_held, units_received) \
         VALUES (1, 'P', 100, 9, 0, 10); \
         INSERT INTO holds (id, product_id, qty, created_at, expires_at, state, order_id) \
         VALUES (1, 1, 1, 0, 1, 'consumed', 1), (2, 1, 1, 0, 1, 'consumed', 2), \
         (3, 1, 1, 0, 1, 'consumed', 3), (4, 1, 1, 0, 1, 'consumed', 4); \
         INSERT INTO orders (id, hold_id, product_id, qty, total_cents, status, created_at, \
         payment_due_at) VALUES (1, 1, 1, 1, 100, 'cancelled', 0, 5), \
         (2, 2, 1, 1, 100, 'cancelled', 0, 5), (3, 3, 1, 1, 100, 'paid', 0, 5), \
         (4, 4, 1, 1, 100, 'cancelled', 0, 5); \
         INSERT INTO webhooks (idempotency_key, hold_id, status, fingerprint, result, \
         order_id, received_at) VALUES ('f1', 1, 'failed', '{}', 'applied', 1, 1), \
         ('p2', 2, 'paid', '{}', 'refund_required', 2, 9), \
         ('f3', 3, 'failed', '{}', 'conflict', 3, 9);",
        print(1, PaymentStatus::Failed),
        print(2, PaymentStatus::Paid),
        print(3, PaymentStatus::Failed),
    );
    let old = [
        "0001_init.sql",
        "0002_request_keys.sql",
        "0003_product_counters.sql",
        "0004_record_retention.sql",
    ];
    migrate_over_old_rows(&store, &old, &rows).await;
    let listed = store
        .order_page(OrderFilter::default(), None, 10)
        .await
        .expect("orders");
    let reasons: Vec<_> = listed.iter().map(|(o, r)| (o.id, *r)).collect();
    assert_eq!(
        reasons,
        vec![
            (OrderId(1), Some(CancelReason::PaymentFailed)),
            (OrderId(2), Some(CancelReason::PaymentWindowClosed)),
            (OrderId(3), None),
            (OrderId(4), Some(CancelReason::PaymentWindowClosed)),
        ]
    );
    store.close().await;
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    db.finish(&service).await;
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

/// While a keyed request runs on a server (here: waiting on the product's lock), the same key on
/// the same server is answered `KeyInFlight` at once, without touching the database; once the
/// first has answered, the key replays its hold.
async fn a_key_in_flight_on_this_server_is_refused_at_once(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = product(&service, 5).await;
    let lock = Elsewhere::lock(&db, p).await;
    let k = key("k");
    let mut first = Box::pin(service.place_hold_keyed(Some(&k), p, Qty(1)));
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), &mut first).await;
    assert!(waiting.is_err(), "the first request waits on the lock");
    // At once: a request that went to the database would wait on the lock too.
    let second = service.place_hold_keyed(Some(&k), p, Qty(1));
    match tokio::time::timeout(std::time::Duration::from_secs(2), second).await {
        Ok(Err(ServiceError::KeyInFlight { key: in_flight })) => assert_eq!(in_flight, k),
        other => panic!("expected the key in flight, got {other:?}"),
    }
    lock.release().await;
    let placed = first.await.expect("the first request granted");
    assert!(!placed.replayed);
    let again = service
        .place_hold_keyed(Some(&key("k")), p, Qty(1))
        .await
        .expect("replayed");
    assert_eq!(
        (again.value.hold.id, again.replayed),
        (placed.value.hold.id, true)
    );
    db.finish(&service).await;
}

/// The sweeper purges records older than their retention, each kind by its own, in transactions
/// of at most `PURGE_BATCH` until none is left; a key whose record is gone is a new request.
async fn the_sweep_purges_records_past_their_retention_batch_after_batch(db: Db) {
    let clock = ManualClock::new(T0);
    let config = Config {
        request_key_retention_ms: 10_000,
        webhook_retention_ms: 20_000,
        ..Config::default()
    };
    let service = db.service_with(&clock, config).await;
    let p = product(&service, 5).await;
    let k = key("hold-key");
    let first = service
        .place_hold_keyed(Some(&k), p, Qty(1))
        .await
        .expect("granted");
    // More webhook records than one purge transaction deletes (unmatched: no such holds).
    let webhooks = PURGE_BATCH as u64 + 20;
    for i in 0..webhooks {
        let payload = paid(&format!("evt_{i}"), HoldId(1_000 + i));
        service.apply_webhook(&payload).await.expect("recorded");
    }
    // A record is purged once it is older than its retention, not at it.
    clock.advance(10_000);
    assert_eq!(service.sweep().await.expect("swept").records_purged, 0);
    clock.advance(1);
    let report = service.sweep().await.expect("swept");
    assert_eq!(report.records_purged, 1, "the request key only");
    let again = service
        .place_hold_keyed(Some(&k), p, Qty(1))
        .await
        .expect("new");
    assert!(!again.replayed && again.value.hold.id != first.value.hold.id);
    clock.advance(10_000);
    let report = service.sweep().await.expect("swept");
    assert_eq!(
        report.records_purged, webhooks,
        "every webhook, the new key not yet"
    );
    let dump = service.dump().await.expect("dump");
    assert!(dump.webhooks.is_empty());
    let keys: Vec<_> = dump.request_keys.iter().map(|r| r.resource_id).collect();
    assert_eq!(keys, vec![again.value.hold.id.0]);
    db.finish(&service).await;
}

/// `migrate` answers the migrations it applied: every one on a fresh database, none again.
async fn migrate_answers_what_it_applied_and_then_nothing(db: Db) {
    let store = SqlStore::connect(&db.url).await.expect("connect");
    let applied: Vec<i64> = store
        .migrate()
        .await
        .expect("migrated")
        .iter()
        .map(|m| m.version)
        .collect();
    let all: Vec<i64> = store
        .migrations()
        .await
        .expect("listed")
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(!applied.is_empty());
    assert_eq!(applied, all);
    assert!(store.migrate().await.expect("again").is_empty());
    db.remove(&store).await;
}

/// Instances starting at once on one fresh database all migrate it: on MySQL one after the
/// other under the named lock; on SQLite the ones that lose the race to apply a migration fail on
/// it and try again until they see it applied.
async fn instances_starting_at_once_all_migrate(db: Db) {
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(SqlStore::connect(&db.url).await.expect("connect"));
    }
    let answers = tokio::join!(
        stores[0].migrate(),
        stores[1].migrate(),
        stores[2].migrate(),
        stores[3].migrate(),
    );
    let mut applied = Vec::new();
    for answer in [answers.0, answers.1, answers.2, answers.3] {
        let answer = answer.unwrap_or_else(|e| panic!("an instance failed to migrate: {e}"));
        applied.extend(answer.into_iter().map(|m| m.version));
    }
    let known = stores[0].migrations().await.expect("listed");
    assert!(known.iter().all(|m| m.applied), "every migration applied");
    for m in &known {
        assert!(
            applied.contains(&m.version),
            "some instance applied {}",
            m.version
        );
    }
    for store in &stores[1..] {
        store.close().await;
    }
    db.remove(&stores[0]).await;
}

/// A migration that fails every time is an error once its 20 attempts are spent, naming the
/// migration's failure and the attempts, never an endless retry.
async fn a_migration_that_keeps_failing_is_an_error_after_its_attempts(db: Db) {
    let store = SqlStore::connect(&db.url).await.expect("connect");
    // A table the first migration cannot make its own: SQLite refuses to create it again, and
    // MySQL's foreign keys cannot reference its missing id.
    let squatter = "CREATE TABLE products (squatter INTEGER)";
    match &store {
        SqlStore::MySql(pool) => sqlx::raw_sql(squatter).execute(&**pool).await.map(|_| ()),
        SqlStore::Sqlite(pool) => sqlx::raw_sql(squatter).execute(pool).await.map(|_| ()),
    }
    .expect("the squatting table");
    match store.migrate().await {
        Err(StoreError::Database(message)) => {
            assert!(message.contains("migration failed"), "{message}");
            assert!(message.ends_with("(after 20 attempts)"), "{message}");
        }
        other => panic!("expected the migration's failure, got {other:?}"),
    }
    let known = store.migrations().await.expect("listed");
    assert!(known.iter().all(|m| !m.applied), "{known:?}");
    db.remove(&store).await;
}

/// The demo products go into an empty database once: ten of them, product 1 with 5 units (as
/// the README's first request shows); a second seeding, or one over existing products, adds none.
async fn the_demo_products_are_seeded_once_into_an_empty_database(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    assert_eq!(service.seed_demo().await.expect("seeded"), 10);
    assert_eq!(service.seed_demo().await.expect("idempotent"), 0);
    let products = service.dump().await.expect("dump").products;
    assert_eq!(products.len(), 10);
    let first = service.product(ProductId(1)).await.expect("product 1");
    assert_eq!((first.product.stock, first.available), (Qty(5), Qty(5)));
    db.finish(&service).await;
}

/// Creations are commands of a batch like any other: the storage assigns the ids, the answers
/// name them, and a demo seed after a creation in the same batch finds that product and adds
/// none; a seed first in its batch, on an empty database, adds the demo products, and a creation
/// after it in the same batch is numbered after them; a refused creation inserts nothing.
async fn products_are_created_in_batches_and_a_seed_sees_its_batchs_creations(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let create = |name: &str| Command::CreateProduct {
        name: name.to_owned(),
        price_cents: Cents(100),
        stock: Qty(2),
    };
    let answers = service
        .execute_batch(&[
            Command::SeedDemo,
            create("after the seed"),
            Command::SeedDemo,
        ])
        .await;
    let seeded = match &answers[0] {
        Ok(Outcome::Seeded(products)) => products.clone(),
        other => panic!("expected the seed, got {other:?}"),
    };
    let ids: Vec<u64> = seeded.iter().map(|p| p.id.0).collect();
    assert_eq!(ids, (1..=10).collect::<Vec<u64>>(), "stored ids, in order");
    assert_eq!(seeded[0].name, "Product 1");
    let created = match &answers[1] {
        Ok(Outcome::ProductCreated(product)) => product.clone(),
        other => panic!("expected a product, got {other:?}"),
    };
    assert_eq!(
        (created.id, created.name.as_str()),
        (ProductId(11), "after the seed")
    );
    assert!(
        matches!(&answers[2], Ok(Outcome::Seeded(none)) if none.is_empty()),
        "the second seed finds the batch's products: {:?}",
        answers[2]
    );
    let stored = service.product(created.id).await.expect("stored");
    assert_eq!(stored.product, created, "the answer is the stored row");
    let answers = service.execute_batch(&[create(""), create("named")]).await;
    assert_eq!(rejected(answers[0].clone()), Rejection::InvalidName);
    // Ids ascend; MariaDB's auto-increment may skip some after a multi-row insert.
    assert!(
        matches!(&answers[1], Ok(Outcome::ProductCreated(p)) if p.id > created.id),
        "{:?}",
        answers[1]
    );
    assert_eq!(
        service.dump().await.expect("dump").products.len(),
        12,
        "a refused creation inserts nothing"
    );
    db.finish(&service).await;
}

/// Polls `future` once, as a caller that sent its request and now waits for the answer.
fn send<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(future).poll(&mut cx)
}

/// Hold requests for a product whose row is locked (from outside) queue behind the batch being
/// decided; past `queue_max` waiting, a request is refused at once with `Overloaded`, and once
/// the lock goes every queued request is granted.
async fn a_full_queue_refuses_at_once(db: Db) {
    let clock = ManualClock::new(T0);
    let config = Config {
        batch_max: 2,
        queue_max: 2,
        ..Config::default()
    };
    let service = db.service_with(&clock, config).await;
    let p = product(&service, 10).await;
    let lock = Elsewhere::lock(&db, p).await;
    // At most a batch of two is in the transaction waiting on the lock and two wait in the
    // queue, so the fifth request is refused at the latest.
    let mut sent = Vec::new();
    let mut refused = None;
    for n in 0..5 {
        let mut request = Box::pin(service.place_hold(p, Qty(1)));
        match send(&mut request) {
            std::task::Poll::Pending => sent.push(request),
            std::task::Poll::Ready(answer) => {
                refused = Some((n, answer));
                break;
            }
        }
    }
    match refused {
        Some((n, Err(ServiceError::Overloaded { waiting }))) => {
            assert!(
                n >= 2,
                "refused with {n} sent before it, the queue holds two"
            );
            assert_eq!(waiting, 2);
        }
        other => panic!("expected the fifth request at the latest refused, got {other:?}"),
    }
    lock.release().await;
    for request in sent {
        request.await.expect("a queued request granted");
    }
    db.finish(&service).await;
}

/// Ids past what the storage keeps exactly (`ID_MAX`) are refused before they reach it: a
/// webhook for one is refused, not recorded (its record could not keep the id, so would not match
/// its own redelivery), while one for the largest storable id is recorded unmatched and replayed.
async fn ids_beyond_the_storage_are_refused_before_it(db: Db) {
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let beyond = ID_MAX + 1;
    assert_eq!(
        rejected(
            service
                .apply_webhook(&paid("evt_beyond", HoldId(beyond)))
                .await
        ),
        Rejection::UnknownHold {
            hold_id: HoldId(beyond)
        }
    );
    assert_eq!(
        rejected(
            service
                .apply_webhook(&paid("evt_max", HoldId(u64::MAX)))
                .await
        ),
        Rejection::UnknownHold {
            hold_id: HoldId(u64::MAX)
        }
    );
    let largest = paid("evt_largest", HoldId(ID_MAX));
    let first = service.apply_webhook(&largest).await.expect("recorded");
    assert_eq!(
        (first.record.result, first.replayed),
        (WebhookResult::Unmatched, false)
    );
    let again = service.apply_webhook(&largest).await.expect("replayed");
    assert_eq!((again.record, again.replayed), (first.record, true));
    let keys: Vec<_> = service
        .dump()
        .await
        .expect("dump")
        .webhooks
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert_eq!(keys, vec![key("evt_largest")]);
    for id in [beyond, u64::MAX] {
        assert_eq!(
            rejected(service.place_hold(ProductId(id), Qty(1)).await),
            Rejection::UnknownProduct {
                product_id: ProductId(id)
            }
        );
        assert_eq!(
            rejected(service.place_order(HoldId(id)).await),
            Rejection::UnknownHold {
                hold_id: HoldId(id)
            }
        );
        assert!(matches!(
            service.hold(HoldId(id)).await,
            Err(ServiceError::NotFound { what: "hold", .. })
        ));
        assert!(matches!(
            service.order(OrderId(id)).await,
            Err(ServiceError::NotFound { what: "order", .. })
        ));
        assert!(matches!(
            service.product(ProductId(id)).await,
            Err(ServiceError::NotFound { .. })
        ));
    }
    db.finish(&service).await;
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

on_both_databases!(
    a_clock_that_jumps_back_never_revives_a_released_hold,
    two_servers_with_skewed_clocks_agree_on_one_database,
    a_batch_is_granted_in_arrival_order_and_inserted_together,
    a_refused_hold_leaves_expired_holds_as_they_were,
    reads_and_grants_agree_at_a_holds_exact_deadline,
    webhooks_apply_once_and_answer_replays_from_the_record,
    the_sweep_cancels_overdue_orders_and_returns_their_units_once,
    a_mass_expiry_is_folded_at_once_and_retired_in_chunks,
    concurrent_holds_grant_exactly_the_stock,
    three_committers_grant_exactly_each_stock_and_complete_the_flow,
    concurrent_duplicate_webhooks_apply_once,
    a_keyed_hold_is_placed_once_and_replayed,
    a_rejected_keyed_hold_leaves_the_key_unused,
    a_keyed_order_replays_its_first_answer,
    concurrent_requests_under_one_key_on_two_servers_place_one_hold,
    the_cache_shows_own_writes_at_once_and_others_within_the_staleness_bound,
    a_cached_value_never_outlives_the_staleness_bound_whatever_the_wall_clock_does,
    the_counters_migration_backfills_units_held_from_the_held_holds,
    the_expiry_bucket_migration_keeps_every_products_availability,
    the_cancel_reason_migration_names_why_old_orders_were_cancelled,
    ids_beyond_the_storage_are_refused_before_it,
    a_key_in_flight_on_this_server_is_refused_at_once,
    a_full_queue_refuses_at_once,
    a_batch_folds_the_due_buckets_on_its_first_grant,
    a_batch_of_mixed_commands_over_several_products_decides_in_arrival_order,
    a_command_missing_a_hold_its_batch_inserted_is_decided_after_it,
    a_poisoned_command_fails_alone_and_the_rest_of_its_batch_commits,
    the_demo_products_are_seeded_once_into_an_empty_database,
    products_are_created_in_batches_and_a_seed_sees_its_batchs_creations,
    the_sweep_purges_records_past_their_retention_batch_after_batch,
    migrate_answers_what_it_applied_and_then_nothing,
    instances_starting_at_once_all_migrate,
    a_migration_that_keeps_failing_is_an_error_after_its_attempts,
);
