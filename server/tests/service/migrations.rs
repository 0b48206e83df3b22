//! Migrations over old rows, and migrating: answered, concurrent, failing.

use super::*;

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

on_both_databases!(
    the_counters_migration_backfills_units_held_from_the_held_holds,
    the_expiry_bucket_migration_keeps_every_products_availability,
    the_cancel_reason_migration_names_why_old_orders_were_cancelled,
    migrate_answers_what_it_applied_and_then_nothing,
    instances_starting_at_once_all_migrate,
    a_migration_that_keeps_failing_is_an_error_after_its_attempts,
);
