//! The original Laravel service's feature tests, replayed over HTTP against the real server, and
//! the oversell regression that motivated the rewrite: units that left `stock` for an order must
//! never count as available again.
//!
//! The demo seed (`--seed-demo`) gives the original's products: `Product i` with
//! `price_cents = 500 * i` and `stock = max(1, 6 - i % 6)`, so product 1 has 5 units and
//! product 3 has 3.

use serde_json::json;

use crate::harness::{Db, TestApp, id, spawn_app};

on_both_databases!(
    product_with_stock_5_shows_5_available,
    hold_of_2_out_of_3_leaves_1_available,
    expired_hold_returns_its_units_to_available,
    order_consumes_its_hold,
    paid_webhook_delivered_twice_pays_the_order_once,
    paid_webhook_before_the_order_creates_the_paid_order_post_orders_returns,
    last_unit_held_and_ordered_is_never_available_again,
);

async fn product_with_stock_5_shows_5_available(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let product = app.product(1).await;
    assert_eq!(
        product,
        json!({"id": 1, "name": "Product 1", "price_cents": 500, "stock": 5, "available": 5})
    );
    app
}

async fn hold_of_2_out_of_3_leaves_1_available(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    assert_eq!(app.product(3).await["stock"], 3);
    app.hold(3, 2).await;
    let product = app.product(3).await;
    assert_eq!(product["available"], 1);
    assert_eq!(
        product["stock"], 3,
        "a hold does not move units out of stock"
    );
    app
}

async fn expired_hold_returns_its_units_to_available(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo", "--hold-ttl", "1s"]).await;
    app.hold(1, 5).await;
    assert_eq!(app.available(1).await, 0);
    app.poll_until("the expired hold's units are available again", async || {
        app.available(1).await == 5
    })
    .await;
    // Available again means holdable again.
    app.hold(1, 5).await;
    app
}

async fn order_consumes_its_hold(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let hold_id = app.hold(3, 2).await;
    let order = app.place_order(hold_id).await;
    let order = order.expect_status(201);
    assert_eq!(order["hold_id"], hold_id);
    assert_eq!(order["product_id"], 3);
    assert_eq!(order["qty"], 2);
    assert_eq!(order["total_cents"], 3000);
    assert_eq!(order["status"], "pre_payment");
    assert_eq!(app.hold_state(hold_id).await, "consumed");
    let product = app.product(3).await;
    assert_eq!(
        product["stock"], 1,
        "the order moved its units out of stock"
    );
    assert_eq!(product["available"], 1);
    app
}

async fn paid_webhook_delivered_twice_pays_the_order_once(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let hold_id = app.hold(3, 2).await;
    let order_id = id(
        app.place_order(hold_id).await.expect_status(201),
        "order_id",
    );
    let first = app.webhook("evt-paid-1", hold_id, "paid").await;
    let first = first.expect_status(200).clone();
    assert_eq!(first["ok"], true);
    assert_eq!(first["result"], "applied");
    assert_eq!(first["replayed"], false);
    assert_eq!(first["order_id"], order_id);
    assert_eq!(first["order_status"], "paid");
    let stock_after_first = app.product(3).await["stock"].clone();
    let rows_after_first = app.dump().await;

    let second = app.webhook("evt-paid-1", hold_id, "paid").await;
    let second = second.expect_status(200);
    assert_eq!(
        second["result"], "applied",
        "the replay answers the stored result"
    );
    assert_eq!(second["replayed"], true);
    assert_eq!(second["order_id"], order_id);
    assert_eq!(second["order_status"], "paid");
    crate::harness::assert_same_rows(&rows_after_first, &app.dump().await, "a replay");

    let order = app.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(order.expect_status(200)["status"], "paid");
    assert_eq!(app.product(3).await["stock"], stock_after_first);
    app
}

async fn paid_webhook_before_the_order_creates_the_paid_order_post_orders_returns(
    db: Db,
) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let hold_id = app.hold(3, 2).await;
    let paid = app.webhook("evt-early", hold_id, "paid").await;
    let paid = paid.expect_status(200).clone();
    assert_eq!(paid["result"], "applied");
    assert_eq!(paid["order_status"], "paid");
    let order_id = id(&paid, "order_id");
    assert_eq!(app.hold_state(hold_id).await, "consumed");
    assert_eq!(app.product(3).await["stock"], 1);

    let order = app.place_order(hold_id).await;
    let order = order.expect_status(200);
    assert_eq!(order["order_id"], order_id);
    assert_eq!(order["hold_id"], hold_id);
    assert_eq!(order["status"], "paid");
    assert_eq!(order["total_cents"], 3000);
    assert_eq!(
        app.product(3).await["stock"],
        1,
        "the order was not created twice"
    );
    app
}

async fn last_unit_held_and_ordered_is_never_available_again(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_000, 1).await;
    let hold_id = app.hold(product_id, 1).await;
    app.place_order(hold_id).await.expect_status(201);
    let product = app.product(product_id).await;
    assert_eq!(product["stock"], 0);
    assert_eq!(product["available"], 0);
    let refused = app.place_hold(product_id, 1).await;
    let problem = refused.expect_problem(409, "insufficient_stock");
    assert_eq!(problem["available"], 0);
    // Ordering the same hold again answers the order; it never frees or sells the unit twice.
    app.place_order(hold_id).await.expect_status(200);
    assert_eq!(app.available(product_id).await, 0);
    app
}
