//! The `Idempotency-Key` header on `POST /api/holds` and `POST /api/orders`: the same key and
//! body answer the stored response (with `Idempotent-Replayed: true`) and change nothing; the same
//! key with another body is 422; a key still in flight is 409; a malformed key is 400.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::harness::{Db, TestApp, assert_same_rows, id, spawn_app};

on_both_databases!(
    a_retried_keyed_hold_answers_the_same_hold_and_holds_once,
    a_key_reused_with_another_body_is_422_and_changes_nothing,
    a_malformed_key_is_400_and_changes_nothing,
    a_retried_keyed_order_answers_the_same_order_and_takes_stock_once,
    concurrent_requests_under_one_key_make_one_hold,
);

async fn a_retried_keyed_hold_answers_the_same_hold_and_holds_once(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 5).await;
    let body = json!({"product_id": product, "qty": 2});
    let first = app.post_keyed("/api/holds", "hold-a", &body).await;
    let first_body = first.expect_status(201).clone();
    assert!(!first.replayed, "a first answer is not a replay");
    let again = app.post_keyed("/api/holds", "hold-a", &body).await;
    assert_eq!(again.expect_status(201), &first_body, "the stored response");
    assert!(again.replayed, "a replay says so");
    assert_eq!(app.available(product).await, 3, "two units held, once");
    // Without the key, the same body is a new request.
    let unkeyed = app.place_hold(product, 2).await;
    assert_ne!(
        id(unkeyed.expect_status(201), "hold_id"),
        id(&first_body, "hold_id")
    );
    assert!(!unkeyed.replayed);
    assert_eq!(app.dump().await.holds.len(), 2);
    app
}

async fn a_key_reused_with_another_body_is_422_and_changes_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 5).await;
    let hold = app
        .post_keyed("/api/holds", "k", &json!({"product_id": product, "qty": 2}))
        .await;
    let hold_id = id(hold.expect_status(201), "hold_id");
    let before = app.dump().await;
    let cases: [(&str, Value, &str); 3] = [
        (
            "/api/holds",
            json!({"product_id": product, "qty": 3}),
            "qty",
        ),
        (
            "/api/holds",
            json!({"product_id": product.saturating_add(1), "qty": 2}),
            "product_id",
        ),
        ("/api/orders", json!({"hold_id": hold_id}), "request"),
    ];
    for (path, body, field) in cases {
        let reply = app.post_keyed(path, "k", &body).await;
        let problem = reply.expect_problem(422, "idempotency_key_reused");
        assert_eq!(problem["field"], field, "{path} {body}");
    }
    assert_same_rows(&before, &app.dump().await, "requests reusing a key");
    app
}

async fn a_malformed_key_is_400_and_changes_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 5).await;
    let before = app.dump().await;
    let too_long = "k".repeat(256);
    for key in ["", "has space", too_long.as_str()] {
        let body = json!({"product_id": product, "qty": 1});
        let reply = app.post_keyed("/api/holds", key, &body).await;
        let problem = reply.expect_problem(400, "invalid_idempotency_key");
        assert_eq!(problem["field"], "Idempotency-Key");
    }
    assert_same_rows(&before, &app.dump().await, "malformed keys");
    app
}

async fn a_retried_keyed_order_answers_the_same_order_and_takes_stock_once(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(250, 3).await;
    let hold_id = app.hold(product, 2).await;
    let body = json!({"hold_id": hold_id});
    let first = app.post_keyed("/api/orders", "order-a", &body).await;
    let first_body = first.expect_status(201).clone();
    assert_eq!(first_body["total_cents"], 500);
    let again = app.post_keyed("/api/orders", "order-a", &body).await;
    assert_eq!(again.expect_status(201), &first_body, "the stored response");
    assert!(again.replayed);
    // Another key for the same hold finds the order: 200, and that answer is what it stores.
    let found = app.post_keyed("/api/orders", "order-b", &body).await;
    assert_eq!(
        id(found.expect_status(200), "order_id"),
        id(&first_body, "order_id")
    );
    assert!(!found.replayed);
    let found_again = app.post_keyed("/api/orders", "order-b", &body).await;
    found_again.expect_status(200);
    assert!(found_again.replayed);
    assert_eq!(
        app.product(product).await["stock"],
        1,
        "one order took two units"
    );
    assert_eq!(app.dump().await.orders.len(), 1);
    app
}

async fn concurrent_requests_under_one_key_make_one_hold(db: Db) -> TestApp {
    let app = Arc::new(spawn_app(db, &[]).await);
    let product = app.create_product(100, 50).await;
    let body = json!({"product_id": product, "qty": 1});
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            let body = body.clone();
            tokio::spawn(async move { app.post_keyed("/api/holds", "same", &body).await })
        })
        .collect();
    let mut holds = Vec::new();
    let mut in_flight = 0usize;
    for task in tasks {
        let reply = task.await.expect("the request ran");
        if reply.status == 409 {
            reply.expect_problem(409, "idempotency_key_in_flight");
            in_flight = in_flight.saturating_add(1);
        } else {
            holds.push(id(reply.expect_status(201), "hold_id"));
        }
    }
    assert!(!holds.is_empty(), "someone got the hold");
    assert!(
        holds.iter().all(|&h| h == holds[0]),
        "one hold for one key: {holds:?}"
    );
    assert_eq!(holds.len().saturating_add(in_flight), 20);
    assert_eq!(app.available(product).await, 49);
    Arc::into_inner(app).expect("every task finished")
}
