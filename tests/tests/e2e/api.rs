//! docs/DESIGN.md's HTTP API table, row by row: each route's success shape and each of its failure
//! codes, plus the operations routes. Webhooks have their own module (`webhooks.rs`), the admin
//! routes theirs (`admin.rs`), and bad request bodies are in `validation.rs`.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::harness::{Db, TestApp, id, spawn_app};

on_both_databases!(
    product_is_shown_with_its_stock_and_available_units,
    unknown_product_is_404_product_not_found,
    hold_is_created_with_an_rfc_3339_utc_expiry_one_ttl_ahead,
    hold_larger_than_available_is_409_insufficient_stock_with_available,
    hold_on_an_unknown_product_is_422_unknown_product,
    hold_is_shown_by_id_and_unknown_hold_is_404,
    order_is_created_once_and_the_same_hold_again_answers_the_same_order,
    order_is_shown_by_id_and_unknown_order_is_404,
    order_for_an_unknown_hold_is_422_unknown_hold,
    order_for_a_released_hold_is_409_hold_released,
    health_and_readiness_answer_200,
);

async fn product_is_shown_with_its_stock_and_available_units(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_250, 7).await;
    app.hold(product_id, 3).await;
    let reply = app.get(&format!("/api/products/{product_id}")).await;
    assert_eq!(reply.content_type, "application/json");
    let body = reply.expect_status(200);
    assert_eq!(
        *body,
        json!({
            "id": product_id, "name": "E2E product", "price_cents": 1250,
            "stock": 7, "available": 4,
        })
    );
    app
}

async fn unknown_product_is_404_product_not_found(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    app.get("/api/products/999999")
        .await
        .expect_problem(404, "product_not_found");
    app.get("/api/products/0")
        .await
        .expect_problem(404, "product_not_found");
    app
}

async fn hold_is_created_with_an_rfc_3339_utc_expiry_one_ttl_ahead(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo", "--hold-ttl", "90s"]).await;
    let before = Utc::now();
    let reply = app.place_hold(1, 2).await;
    let after = Utc::now();
    let body = reply.expect_status(201);
    assert!(body["hold_id"].as_u64().is_some(), "{body}");
    assert_eq!(body["product_id"], 1);
    assert_eq!(body["qty"], 2);
    let expires_at = body["expires_at"].as_str().expect("expires_at is a string");
    assert!(
        expires_at.ends_with('Z'),
        "UTC with a Z suffix: {expires_at}"
    );
    let expires_at: DateTime<Utc> = DateTime::parse_from_rfc3339(expires_at)
        .expect("expires_at is RFC 3339")
        .into();
    // The server's clock is this machine's; allow a second for rounding either side.
    let earliest = before.checked_add_signed(chrono::Duration::seconds(89));
    let latest = after.checked_add_signed(chrono::Duration::seconds(91));
    let earliest = earliest.expect("representable");
    let latest = latest.expect("representable");
    assert!(
        expires_at >= earliest,
        "{expires_at} is one TTL after {before}"
    );
    assert!(
        expires_at <= latest,
        "{expires_at} is one TTL after {after}"
    );
    app
}

async fn hold_larger_than_available_is_409_insufficient_stock_with_available(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(100, 5).await;
    app.hold(product_id, 2).await;
    let before = app.dump().await;
    let reply = app.place_hold(product_id, 4).await;
    let problem = reply.expect_problem(409, "insufficient_stock");
    assert_eq!(problem["available"], 3);
    assert_eq!(problem["requested"], 4);
    crate::harness::assert_same_rows(&before, &app.dump().await, "a refused hold");
    // Exactly what is available is still granted.
    app.hold(product_id, 3).await;
    let problem = app.place_hold(product_id, 1).await;
    assert_eq!(
        problem.expect_problem(409, "insufficient_stock")["available"],
        0
    );
    app
}

async fn hold_on_an_unknown_product_is_422_unknown_product(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let before = app.dump().await;
    let reply = app.place_hold(4242, 1).await;
    let problem = reply.expect_problem(422, "unknown_product");
    assert_eq!(problem["field"], "product_id");
    crate::harness::assert_same_rows(&before, &app.dump().await, "a hold on no product");
    app
}

async fn hold_is_shown_by_id_and_unknown_hold_is_404(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let placed = app.place_hold(2, 3).await;
    let placed = placed.expect_status(201).clone();
    let hold_id = id(&placed, "hold_id");
    let shown = app.get(&format!("/api/holds/{hold_id}")).await;
    let shown = shown.expect_status(200);
    assert_eq!(shown["hold_id"], hold_id);
    assert_eq!(shown["product_id"], 2);
    assert_eq!(shown["qty"], 3);
    assert_eq!(shown["expires_at"], placed["expires_at"]);
    assert_eq!(shown["state"], "held");
    let missing = app
        .get(&format!("/api/holds/{}", hold_id.saturating_add(1000)))
        .await;
    missing.expect_problem(404, "hold_not_found");
    app
}

async fn order_is_created_once_and_the_same_hold_again_answers_the_same_order(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let hold_id = app.hold(2, 3).await;
    let created = app.place_order(hold_id).await;
    let created = created.expect_status(201).clone();
    assert!(created["order_id"].as_u64().is_some(), "{created}");
    assert_eq!(created["hold_id"], hold_id);
    assert_eq!(created["product_id"], 2);
    assert_eq!(created["qty"], 3);
    assert_eq!(created["total_cents"], 3000);
    assert_eq!(created["status"], "pre_payment");
    let rows = app.dump().await;
    let again = app.place_order(hold_id).await;
    assert_eq!(
        *again.expect_status(200),
        created,
        "the same order, unchanged"
    );
    crate::harness::assert_same_rows(&rows, &app.dump().await, "ordering a hold again");
    app
}

async fn order_is_shown_by_id_and_unknown_order_is_404(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let hold_id = app.hold(1, 1).await;
    let created = app.place_order(hold_id).await.expect_status(201).clone();
    let order_id = id(&created, "order_id");
    let shown = app.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(*shown.expect_status(200), created);
    let missing = app
        .get(&format!("/api/orders/{}", order_id.saturating_add(1000)))
        .await;
    missing.expect_problem(404, "order_not_found");
    app
}

async fn order_for_an_unknown_hold_is_422_unknown_hold(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    app.hold(1, 1).await;
    let before = app.dump().await;
    let reply = app.place_order(987_654).await;
    let problem = reply.expect_problem(422, "unknown_hold");
    assert_eq!(problem["field"], "hold_id");
    crate::harness::assert_same_rows(&before, &app.dump().await, "an order for no hold");
    app
}

async fn order_for_a_released_hold_is_409_hold_released(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let hold_id = app.hold(1, 2).await;
    let failed = app.webhook("evt-failed-early", hold_id, "failed").await;
    assert_eq!(failed.expect_status(200)["result"], "applied");
    assert_eq!(app.hold_state(hold_id).await, "released");
    assert_eq!(
        app.available(1).await,
        5,
        "the released hold's units are available"
    );
    let before = app.dump().await;
    app.place_order(hold_id)
        .await
        .expect_problem(409, "hold_released");
    crate::harness::assert_same_rows(&before, &app.dump().await, "an order for a released hold");
    app
}

async fn health_and_readiness_answer_200(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let health = app.get("/healthz").await;
    assert_eq!(*health.expect_status(200), json!({"status": "ok"}));
    let ready = app.get("/readyz").await;
    assert_eq!(*ready.expect_status(200), json!({"status": "ready"}));
    app
}
