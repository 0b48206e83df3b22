//! Group commit: batches in arrival order, mixed and split batches, a poisoned command, committers, the queue bound, product creation and the demo seed, writes after the database ended their transaction.

use super::*;

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

on_both_databases!(
    a_batch_is_granted_in_arrival_order_and_inserted_together,
    concurrent_holds_grant_exactly_the_stock,
    three_committers_grant_exactly_each_stock_and_complete_the_flow,
    a_full_queue_refuses_at_once,
    a_batch_folds_the_due_buckets_on_its_first_grant,
    a_batch_of_mixed_commands_over_several_products_decides_in_arrival_order,
    a_command_missing_a_hold_its_batch_inserted_is_decided_after_it,
    a_poisoned_command_fails_alone_and_the_rest_of_its_batch_commits,
    the_demo_products_are_seeded_once_into_an_empty_database,
    products_are_created_in_batches_and_a_seed_sees_its_batchs_creations,
);
