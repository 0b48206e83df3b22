//! Many requests at once against one server: holds racing for the last units, orders racing
//! with holds, and duplicate or conflicting webhooks racing each other. Each burst is built in
//! advance, one task per request, and released together from a `tokio::sync::Barrier`, so the
//! requests really overlap on the server. The assertions are on exact counts: a flash sale may
//! refuse, but it may never grant one unit too many, apply a payment twice, or answer 5xx.

use std::sync::Arc;

use flashsale_core::OrderStatus;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::harness::{Db, TestApp, id, now_unix_s, sign, spawn_app};

on_both_databases!(
    two_hundred_simultaneous_holds_on_25_units_grant_exactly_25,
    simultaneous_orders_never_make_units_available_again,
    product_reads_racing_orders_never_show_units_as_available,
    simultaneous_identical_webhooks_apply_once_and_never_fail,
    simultaneous_webhooks_reusing_one_key_apply_once_and_refuse_the_other_payload,
    simultaneous_webhooks_under_different_keys_settle_the_order_once,
);

/// How many hold requests race for the units in the main race.
const HOLD_REQUESTS: usize = 200;
/// How many units they race for.
const UNITS: u32 = 25;

async fn two_hundred_simultaneous_holds_on_25_units_grant_exactly_25(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(2_500, UNITS).await;
    let body = json!({"product_id": product_id, "qty": 1});
    let requests = (0..HOLD_REQUESTS)
        .map(|_| {
            app.client
                .post(format!("{}/api/holds", app.address))
                .json(&body)
        })
        .collect();
    let replies = simultaneously(requests).await;

    let granted: Vec<&Value> = with_status(&replies, 201);
    let refused: Vec<&Value> = with_status(&replies, 409);
    assert_eq!(
        granted.len(),
        25,
        "exactly the units in stock are granted: {replies:?}"
    );
    assert_eq!(
        refused.len(),
        HOLD_REQUESTS.saturating_sub(25),
        "everything else is refused, nothing fails: {replies:?}"
    );
    for problem in &refused {
        assert_eq!(problem["code"], "insufficient_stock", "{problem}");
        assert_eq!(problem["available"], 0, "{problem}");
    }
    let mut hold_ids: Vec<u64> = granted.iter().map(|hold| id(hold, "hold_id")).collect();
    hold_ids.sort_unstable();
    hold_ids.dedup();
    assert_eq!(hold_ids.len(), 25, "every grant is its own hold");

    let product = app.product(product_id).await;
    assert_eq!(product["stock"], UNITS);
    assert_eq!(product["available"], 0);
    let rows = app.dump().await;
    assert_eq!(rows.holds.len(), 25, "only granted holds are stored");
    app.place_hold(product_id, 1)
        .await
        .expect_problem(409, "insufficient_stock");
    app
}

async fn simultaneous_orders_never_make_units_available_again(db: Db) -> TestApp {
    const HOLDS: u32 = 10;
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_000, HOLDS).await;
    let mut hold_ids = Vec::new();
    for _ in 0..HOLDS {
        hold_ids.push(app.hold(product_id, 1).await);
    }
    // Each hold ordered twice, while holds try to grab a unit.
    let mut requests = Vec::new();
    for hold_id in &hold_ids {
        for _ in 0..2 {
            let order = app.client.post(format!("{}/api/orders", app.address));
            requests.push(order.json(&json!({"hold_id": hold_id})));
        }
    }
    let orders = requests.len();
    for _ in 0..40 {
        let hold = app.client.post(format!("{}/api/holds", app.address));
        requests.push(hold.json(&json!({"product_id": product_id, "qty": 1})));
    }
    let replies = simultaneously(requests).await;

    let (order_replies, hold_replies) = replies.split_at(orders);
    for (pair, hold_id) in order_replies.chunks(2).zip(&hold_ids) {
        let mut statuses: Vec<u16> = pair.iter().map(|(status, _)| *status).collect();
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 201],
            "one creates, one answers it: {pair:?}"
        );
        let first = pair.first().expect("two replies");
        let second = pair.get(1).expect("two replies");
        assert_eq!(first.1, second.1, "both answer the same order");
        assert_eq!(first.1["hold_id"], *hold_id);
    }
    for (status, body) in hold_replies {
        assert_eq!(*status, 409, "no unit is ever free again: {body}");
        assert_eq!(body["code"], "insufficient_stock");
        assert_eq!(body["available"], 0);
    }
    let product = app.product(product_id).await;
    assert_eq!(product["stock"], 0);
    assert_eq!(product["available"], 0);
    assert_eq!(app.dump().await.orders.len(), 10);
    app
}

async fn product_reads_racing_orders_never_show_units_as_available(db: Db) -> TestApp {
    const HOLDS: u32 = 20;
    const READS: usize = 150;
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_000, HOLDS).await;
    let mut requests = Vec::new();
    for _ in 0..HOLDS {
        let hold_id = app.hold(product_id, 1).await;
        let order = app.client.post(format!("{}/api/orders", app.address));
        requests.push(order.json(&json!({"hold_id": hold_id})));
    }
    let orders = requests.len();
    for _ in 0..READS {
        let path = format!("{}/api/products/{product_id}", app.address);
        requests.push(app.client.get(path));
    }
    let replies = simultaneously(requests).await;

    let (order_replies, product_replies) = replies.split_at(orders);
    for (status, body) in order_replies {
        assert_eq!(*status, 201, "{body}");
    }
    // Every unit is held or sold throughout, so every read must say 0: a read that takes
    // `stock` from before an order and the held units from after it shows a unit for sale
    // that is not.
    let wrong: Vec<&(u16, Value)> = product_replies
        .iter()
        .filter(|(status, body)| *status != 200 || body["available"] != 0)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {READS} reads racing the orders were wrong: {wrong:?}",
        wrong.len()
    );
    app
}

async fn simultaneous_identical_webhooks_apply_once_and_never_fail(db: Db) -> TestApp {
    const COPIES: usize = 20;
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_000, 6).await;
    let paid_hold = app.hold(product_id, 2).await;
    let failed_hold = app.hold(product_id, 2).await;
    let paid_order = id(
        app.place_order(paid_hold).await.expect_status(201),
        "order_id",
    );
    let failed_order = id(
        app.place_order(failed_hold).await.expect_status(201),
        "order_id",
    );
    assert_eq!(app.product(product_id).await["stock"], 2);

    let deliveries = [
        ("evt-dup-paid", paid_hold, "paid"),
        ("evt-dup-failed", failed_hold, "failed"),
        ("evt-dup-stray", 999_999, "paid"),
    ];
    let mut requests = Vec::new();
    for _ in 0..COPIES {
        for (key, hold_id, status) in deliveries {
            requests.push(webhook_request(&app, key, hold_id, status));
        }
    }
    let replies = simultaneously(requests).await;

    for (index, (key, _, _)) in deliveries.iter().enumerate() {
        let copies: Vec<&(u16, Value)> = replies
            .iter()
            .skip(index)
            .step_by(deliveries.len())
            .collect();
        let expected_status = if *key == "evt-dup-stray" { 202 } else { 200 };
        for (status, body) in &copies {
            assert_eq!(*status, expected_status, "{key}: {body}");
        }
        let fresh = copies.iter().filter(|(_, body)| body["replayed"] == false);
        assert_eq!(
            fresh.count(),
            1,
            "{key} is applied by exactly one delivery: {copies:?}"
        );
        let first = &copies.first().expect("copies were sent").1;
        for (_, body) in &copies {
            assert_eq!(body["result"], first["result"], "{key}: the same answer");
        }
    }
    let rows = app.dump().await;
    assert_eq!(rows.webhooks.len(), 3, "one record per key");
    let status_of = |order_id: u64| {
        let order = rows.orders.iter().find(|order| order.id.0 == order_id);
        order.expect("the order is stored").status
    };
    assert_eq!(status_of(paid_order), OrderStatus::Paid);
    assert_eq!(status_of(failed_order), OrderStatus::Cancelled);
    let product = app.product(product_id).await;
    assert_eq!(
        product["stock"], 4,
        "the failed order's units came back once"
    );
    assert_eq!(product["available"], 4);
    app
}

async fn simultaneous_webhooks_reusing_one_key_apply_once_and_refuse_the_other_payload(
    db: Db,
) -> TestApp {
    const DELIVERIES: usize = 20;
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_000, 3).await;
    let hold_id = app.hold(product_id, 2).await;
    let order_id = id(
        app.place_order(hold_id).await.expect_status(201),
        "order_id",
    );
    let statuses: Vec<&str> = (0..DELIVERIES)
        .map(|i| if i % 2 == 0 { "paid" } else { "failed" })
        .collect();
    let requests = statuses
        .iter()
        .map(|status| webhook_request(&app, "evt-contested", hold_id, status))
        .collect();
    let replies = simultaneously(requests).await;

    let rows = app.dump().await;
    assert_eq!(rows.webhooks.len(), 1);
    let record = rows.webhooks.first().expect("one record");
    let winner = record.status.as_str();
    for (status, (code, body)) in statuses.iter().zip(&replies) {
        if *status == winner {
            assert_eq!(*code, 200, "the stored payload is answered: {body}");
            assert_eq!(body["result"], "applied", "{body}");
        } else {
            assert_eq!(*code, 422, "the other payload is refused: {body}");
            assert_eq!(body["code"], "idempotency_key_reused", "{body}");
            assert_eq!(body["field"], "status", "{body}");
        }
    }
    let fresh = replies.iter().filter(|(_, body)| body["replayed"] == false);
    assert_eq!(
        fresh.count(),
        1,
        "applied by exactly one delivery: {replies:?}"
    );
    let order = rows.orders.first().expect("the order is stored");
    assert_eq!(order.id.0, order_id);
    let stock = app.product(product_id).await["stock"].clone();
    if winner == "paid" {
        assert_eq!(order.status, OrderStatus::Paid);
        assert_eq!(stock, 1);
    } else {
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(stock, 3, "units returned once");
    }
    app
}

async fn simultaneous_webhooks_under_different_keys_settle_the_order_once(db: Db) -> TestApp {
    const DELIVERIES: usize = 20;
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(1_000, 3).await;
    let hold_id = app.hold(product_id, 2).await;
    app.place_order(hold_id).await.expect_status(201);
    let statuses: Vec<&str> = (0..DELIVERIES)
        .map(|i| if i % 2 == 0 { "failed" } else { "paid" })
        .collect();
    let requests = statuses
        .iter()
        .enumerate()
        .map(|(i, status)| webhook_request(&app, &format!("evt-key-{i}"), hold_id, status))
        .collect();
    let replies = simultaneously(requests).await;

    for (code, body) in &replies {
        assert_eq!(*code, 200, "{body}");
    }
    let applied: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, (_, body))| body["result"] == "applied")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        applied.len(),
        1,
        "exactly one verdict settles the order: {replies:?}"
    );
    let winner = *statuses
        .get(*applied.first().expect("one applied"))
        .expect("a status per delivery");
    for (status, (_, body)) in statuses.iter().zip(&replies) {
        if body["result"] == "applied" {
            continue;
        }
        let expected = match (winner, *status) {
            (a, b) if a == b => "already_applied",
            ("paid", _) => "conflict",
            _ => "refund_required",
        };
        assert_eq!(body["result"], expected, "{status} after {winner}: {body}");
    }
    let stock = app.product(product_id).await["stock"].clone();
    assert_eq!(
        stock,
        if winner == "paid" { 1 } else { 3 },
        "units returned at most once"
    );
    app
}

/// Sends every request at once: one task each, all released by one barrier. Returns each
/// answer's status and JSON body (`Value::Null` if not JSON), in the order of `requests`.
async fn simultaneously(requests: Vec<reqwest::RequestBuilder>) -> Vec<(u16, Value)> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let response = request.send().await.expect("the request is answered");
                let status = response.status().as_u16();
                let text = response.text().await.expect("the body is readable");
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for task in tasks {
        replies.push(task.await.expect("the request task does not panic"));
    }
    replies
}

/// The bodies of the replies with this status.
fn with_status(replies: &[(u16, Value)], status: u16) -> Vec<&Value> {
    replies
        .iter()
        .filter(|(code, _)| *code == status)
        .map(|(_, body)| body)
        .collect()
}

/// A webhook delivery signed now, ready to send.
fn webhook_request(
    app: &TestApp,
    key: &str,
    hold_id: u64,
    status: &str,
) -> reqwest::RequestBuilder {
    let body = json!({"idempotency_key": key, "hold_id": hold_id, "status": status}).to_string();
    let signature = sign(body.as_bytes(), now_unix_s());
    app.client
        .post(format!("{}/api/payments/webhook", app.address))
        .header("content-type", "application/json")
        .header("x-flashsale-signature", signature)
        .body(body)
}
