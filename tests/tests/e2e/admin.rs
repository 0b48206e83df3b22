//! The admin routes: creating and restocking products behind a bearer token, refusing without
//! it (401, nothing stored), and absent altogether when the server has no token (404).

use serde_json::json;

use crate::harness::{
    ADMIN_TOKEN, Db, TestApp, assert_same_rows, id, spawn_app, spawn_app_without_admin,
};

on_both_databases!(
    admin_creates_a_product_that_is_then_shown,
    admin_restock_adds_units_and_answers_the_product,
    admin_routes_refuse_a_missing_or_wrong_token_with_401_and_store_nothing,
    admin_routes_are_404_when_no_token_is_configured,
    restock_of_an_unknown_product_is_404,
);

async fn admin_creates_a_product_that_is_then_shown(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let body = json!({"name": "Lamp", "price_cents": 4999, "stock": 12});
    let reply = app
        .post_admin("/api/admin/products", Some(ADMIN_TOKEN), &body)
        .await;
    let created = reply.expect_status(201).clone();
    let product_id = id(&created, "id");
    assert_eq!(
        created,
        json!({"id": product_id, "name": "Lamp", "price_cents": 4999, "stock": 12,
               "available": 12})
    );
    assert_eq!(app.product(product_id).await, created);
    app
}

async fn admin_restock_adds_units_and_answers_the_product(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(300, 2).await;
    app.hold(product_id, 2).await;
    let path = format!("/api/admin/products/{product_id}/restock");
    let reply = app
        .post_admin(&path, Some(ADMIN_TOKEN), &json!({"qty": 5}))
        .await;
    let restocked = reply.expect_status(200);
    assert_eq!(restocked["id"], product_id);
    assert_eq!(restocked["stock"], 7);
    assert_eq!(
        restocked["available"], 5,
        "the hold still claims its 2 units"
    );
    assert_eq!(app.product(product_id).await, *restocked);
    // The new units are holdable.
    app.hold(product_id, 5).await;
    app
}

async fn admin_routes_refuse_a_missing_or_wrong_token_with_401_and_store_nothing(
    db: Db,
) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(300, 2).await;
    let before = app.dump().await;
    let create = json!({"name": "Intruder", "price_cents": 1, "stock": 1000});
    let restock_path = format!("/api/admin/products/{product_id}/restock");
    for token in [
        None,
        Some("wrong-token"),
        Some(""),
        Some("e2e-admin-token-but-longer"),
    ] {
        let reply = app.post_admin("/api/admin/products", token, &create).await;
        reply.expect_problem(401, "unauthorized");
        let reply = app
            .post_admin(&restock_path, token, &json!({"qty": 1000}))
            .await;
        reply.expect_problem(401, "unauthorized");
    }
    // A token that is right but not sent as a bearer token is refused too.
    let basic = app
        .client
        .post(format!("{}/api/admin/products", app.address))
        .header("authorization", ADMIN_TOKEN)
        .json(&create)
        .send()
        .await
        .expect("the request is answered");
    assert_eq!(basic.status().as_u16(), 401);
    assert_same_rows(&before, &app.dump().await, "refused admin requests");
    app
}

async fn admin_routes_are_404_when_no_token_is_configured(db: Db) -> TestApp {
    let app = spawn_app_without_admin(db, &["--seed-demo"]).await;
    let before = app.dump().await;
    let create = json!({"name": "Nope", "price_cents": 1, "stock": 1});
    for token in [None, Some(ADMIN_TOKEN), Some("")] {
        let reply = app.post_admin("/api/admin/products", token, &create).await;
        reply.expect_problem(404, "not_found");
        let reply = app
            .post_admin("/api/admin/products/1/restock", token, &json!({"qty": 1}))
            .await;
        reply.expect_problem(404, "not_found");
    }
    assert_same_rows(&before, &app.dump().await, "admin requests with admin off");
    app
}

async fn restock_of_an_unknown_product_is_404(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    app.create_product(300, 2).await;
    let before = app.dump().await;
    let reply = app
        .post_admin(
            "/api/admin/products/77777/restock",
            Some(ADMIN_TOKEN),
            &json!({"qty": 1}),
        )
        .await;
    reply.expect_problem(404, "product_not_found");
    assert_same_rows(&before, &app.dump().await, "restocking no product");
    app
}
