//! Time: holds that outlive `--hold-ttl 1s` and orders that outlive `--payment-window 1s`.
//!
//! Expiry is bounded work: a held hold past its deadline shows as `expired` and stops counting
//! against `available` at once; the next grant on its product (or the sweeper) folds its
//! deadline's bucket into the product's counters without writing the hold's row, and it becomes
//! `released` only when the sweeper retires it (or a webhook on it does). The tests that look at
//! the in-between state start the server with `--sweep-interval 1h` so the sweeper cannot race
//! them. No test sleeps for a fixed time: each polls for the state it expects, with the
//! harness's bounded deadline.

use flashsale_core::HoldState;

use crate::harness::{Db, TestApp, assert_same_rows, id, spawn_app};

on_both_databases!(
    expired_hold_shows_expired_and_a_new_hold_folds_its_units_back,
    sweeper_releases_expired_holds_and_cancels_orders_past_their_payment_window,
    paid_webhook_for_an_expired_hold_requires_a_refund_and_releases_it,
    paid_webhook_past_the_payment_window_cancels_the_order_and_counts_it_cancelled,
);

async fn expired_hold_shows_expired_and_a_new_hold_folds_its_units_back(db: Db) -> TestApp {
    let app = spawn_app(db, &["--hold-ttl", "1s", "--sweep-interval", "1h"]).await;
    let product_id = app.create_product(900, 3).await;
    let hold_id = app.hold(product_id, 2).await;
    assert_eq!(app.hold_state(hold_id).await, "held");
    assert_eq!(app.available(product_id).await, 1);
    app.poll_until("the hold shows as expired", async || {
        app.hold_state(hold_id).await == "expired"
    })
    .await;
    assert_eq!(
        app.available(product_id).await,
        3,
        "an expired hold claims nothing"
    );

    let before = app.dump().await;
    app.place_order(hold_id)
        .await
        .expect_problem(409, "hold_expired");
    assert_same_rows(&before, &app.dump().await, "an order for an expired hold");

    // A new hold on the product folds the expired hold's bucket in its own transaction: the
    // product's counters give its units back, and its row is not written.
    app.hold(product_id, 1).await;
    assert_eq!(app.hold_state(hold_id).await, "expired");
    let rows = app.dump().await;
    let expired = rows
        .holds
        .iter()
        .find(|hold| hold.id.0 == hold_id)
        .expect("the hold is stored");
    assert_eq!(
        expired.state,
        HoldState::Held,
        "its row waits for the sweeper"
    );
    let product = rows
        .products
        .iter()
        .find(|p| p.id.0 == product_id)
        .expect("the product is stored");
    assert_eq!(
        (product.units_held.0, product.holds_to_retire),
        (1, 1),
        "only the new hold's unit is held; the expired hold waits to be retired"
    );
    assert_eq!(product.expired_through.as_ms(), expired.expires_at.as_ms());
    assert_eq!(app.available(product_id).await, 2);
    app.place_order(hold_id)
        .await
        .expect_problem(409, "hold_expired");
    app
}

async fn sweeper_releases_expired_holds_and_cancels_orders_past_their_payment_window(
    db: Db,
) -> TestApp {
    let args = [
        "--hold-ttl",
        "2s",
        "--payment-window",
        "1s",
        "--sweep-interval",
        "100ms",
    ];
    let app = spawn_app(db, &args).await;
    let product_id = app.create_product(900, 5).await;
    let held = app.hold(product_id, 2).await;
    let ordered = app.hold(product_id, 3).await;
    let order_id = id(
        app.place_order(ordered).await.expect_status(201),
        "order_id",
    );
    assert_eq!(app.product(product_id).await["stock"], 2);

    // Nobody asks for anything on this product: only the sweeper can release and cancel.
    let order_path = format!("/api/orders/{order_id}");
    app.poll_until("the sweeper cancels the unpaid order", async || {
        app.get(&order_path).await.expect_status(200)["status"] == "cancelled"
    })
    .await;
    app.poll_until("the sweeper releases the expired hold", async || {
        app.hold_state(held).await == "released"
    })
    .await;
    let product = app.product(product_id).await;
    assert_eq!(product["stock"], 5, "the cancelled order's units are back");
    assert_eq!(product["available"], 5);

    // The money for the cancelled order arrives late: it is to be refunded, not a sale.
    let late = app.webhook("evt-too-late", ordered, "paid").await;
    let late = late.expect_status(200);
    assert_eq!(late["result"], "refund_required");
    assert_eq!(late["order_status"], "cancelled");
    assert_eq!(app.product(product_id).await["stock"], 5);
    app
}

async fn paid_webhook_for_an_expired_hold_requires_a_refund_and_releases_it(db: Db) -> TestApp {
    let app = spawn_app(db, &["--hold-ttl", "1s", "--sweep-interval", "1h"]).await;
    let product_id = app.create_product(900, 2).await;
    let hold_id = app.hold(product_id, 2).await;
    app.poll_until("the hold shows as expired", async || {
        app.hold_state(hold_id).await == "expired"
    })
    .await;
    let paid = app.webhook("evt-paid-late", hold_id, "paid").await;
    let paid = paid.expect_status(200);
    assert_eq!(paid["result"], "refund_required");
    assert!(
        paid.get("order_id").is_none(),
        "no order is created: {paid}"
    );
    assert_eq!(app.hold_state(hold_id).await, "released");
    let rows = app.dump().await;
    assert!(rows.orders.is_empty(), "no order is created");
    let product = app.product(product_id).await;
    assert_eq!(product["stock"], 2);
    assert_eq!(product["available"], 2);
    app.place_order(hold_id)
        .await
        .expect_problem(409, "hold_released");
    app
}

async fn paid_webhook_past_the_payment_window_cancels_the_order_and_counts_it_cancelled(
    db: Db,
) -> TestApp {
    // No sweeper: the webhook itself finds the order overdue.
    let app = spawn_app(db, &["--payment-window", "1s", "--sweep-interval", "1h"]).await;
    let product_id = app.create_product(900, 5).await;
    let hold_id = app.hold(product_id, 3).await;
    let placed = app.place_order(hold_id).await;
    let order = placed.expect_status(201);
    let due = order["payment_due_at"].as_str().expect("payment_due_at");
    let due = chrono::DateTime::parse_from_rfc3339(due).expect("an RFC 3339 instant");
    app.poll_until("the order's payment window has passed", async || {
        chrono::Utc::now() > due
    })
    .await;
    let paid = app.webhook("evt-paid-overdue", hold_id, "paid").await;
    let paid = paid.expect_status(200);
    assert_eq!(paid["result"], "refund_required");
    assert_eq!(paid["order_status"], "cancelled");
    assert_eq!(
        app.product(product_id).await["stock"],
        5,
        "its units are back"
    );
    // The route counts what the core says the webhook changed: a cancellation, not a sale.
    let text = app.scrape().await;
    for line in [
        r#"flashsale_orders_total{status="cancelled"} 1"#,
        r#"flashsale_orders_total{status="paid"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    app
}
