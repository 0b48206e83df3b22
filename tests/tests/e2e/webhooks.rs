//! The payment webhook: docs/DESIGN.md's rules for `paid` and `failed` before and after the order,
//! idempotency keys (replays answer the stored result, reuse with another payload is 422), the
//! signature (401 and nothing stored when it is missing, malformed, wrong or stale), and signed
//! bodies that do not validate.

use flashsale_server::signature::{self, Secret};
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, assert_same_rows, id, now_unix_s, sign, spawn_app};

on_both_databases!(
    failed_webhook_returns_the_orders_units_exactly_once,
    cancelled_webhook_before_the_order_releases_the_hold_like_failed,
    failed_webhook_on_a_paid_order_is_recorded_as_a_conflict_and_the_order_stays_paid,
    paid_webhook_on_a_cancelled_order_is_recorded_as_refund_required,
    webhook_for_an_unknown_hold_is_recorded_as_unmatched_with_202,
    reused_key_with_another_payload_is_422_and_changes_nothing,
    missing_malformed_wrong_or_stale_signatures_are_401_and_store_nothing,
    signed_webhook_with_invalid_fields_is_refused_and_stores_nothing,
    webhook_signed_with_any_configured_secret_is_accepted,
);

async fn failed_webhook_returns_the_orders_units_exactly_once(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 3).await;
    let hold_id = app.hold(product_id, 2).await;
    let order_id = id(
        app.place_order(hold_id).await.expect_status(201),
        "order_id",
    );
    assert_eq!(app.product(product_id).await["stock"], 1);

    let failed = app.webhook("evt-fail-a", hold_id, "failed").await;
    let failed = failed.expect_status(200);
    assert_eq!(failed["result"], "applied");
    assert_eq!(failed["order_id"], order_id);
    assert_eq!(failed["order_status"], "cancelled");
    let product = app.product(product_id).await;
    assert_eq!(product["stock"], 3, "the cancelled order's units are back");
    assert_eq!(product["available"], 3);

    // Another key saying the same thing, the same key again, and the `cancelled` alias: none
    // returns the units a second time.
    let again = app.webhook("evt-fail-b", hold_id, "failed").await;
    assert_eq!(again.expect_status(200)["result"], "already_applied");
    let replay = app.webhook("evt-fail-a", hold_id, "failed").await;
    let replay = replay.expect_status(200);
    assert_eq!(replay["result"], "applied");
    assert_eq!(replay["replayed"], true);
    let alias = app.webhook("evt-fail-c", hold_id, "cancelled").await;
    assert_eq!(alias.expect_status(200)["result"], "already_applied");
    let product = app.product(product_id).await;
    assert_eq!(product["stock"], 3, "units returned exactly once");
    assert_eq!(product["available"], 3);
    let order = app.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(order.expect_status(200)["status"], "cancelled");
    // All three units can be sold again, and no more.
    app.hold(product_id, 3).await;
    app.place_hold(product_id, 1)
        .await
        .expect_problem(409, "insufficient_stock");
    app
}

async fn cancelled_webhook_before_the_order_releases_the_hold_like_failed(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 4).await;
    let hold_id = app.hold(product_id, 4).await;
    assert_eq!(app.available(product_id).await, 0);
    let cancelled = app.webhook("evt-cancel", hold_id, "cancelled").await;
    let cancelled = cancelled.expect_status(200);
    assert_eq!(cancelled["result"], "applied");
    assert!(
        cancelled.get("order_id").is_none(),
        "no order exists: {cancelled}"
    );
    assert_eq!(app.hold_state(hold_id).await, "released");
    assert_eq!(app.available(product_id).await, 4);
    // `cancelled` fingerprints like `failed`: the same key with `failed` is a replay.
    let replay = app.webhook("evt-cancel", hold_id, "failed").await;
    assert_eq!(replay.expect_status(200)["replayed"], true);
    app.place_order(hold_id)
        .await
        .expect_problem(409, "hold_released");
    // A late `paid` for the released hold is a payment to refund, not a sale.
    let paid = app.webhook("evt-late-paid", hold_id, "paid").await;
    assert_eq!(paid.expect_status(200)["result"], "refund_required");
    assert_eq!(app.hold_state(hold_id).await, "released");
    assert_eq!(app.available(product_id).await, 4);
    app
}

async fn failed_webhook_on_a_paid_order_is_recorded_as_a_conflict_and_the_order_stays_paid(
    db: Db,
) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 3).await;
    let hold_id = app.hold(product_id, 1).await;
    let order_id = id(
        app.place_order(hold_id).await.expect_status(201),
        "order_id",
    );
    app.webhook("evt-pay", hold_id, "paid")
        .await
        .expect_status(200);
    let conflict = app.webhook("evt-then-fail", hold_id, "failed").await;
    let conflict = conflict.expect_status(200);
    assert_eq!(conflict["result"], "conflict");
    assert_eq!(conflict["order_id"], order_id);
    assert_eq!(conflict["order_status"], "paid");
    let order = app.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(order.expect_status(200)["status"], "paid");
    assert_eq!(app.product(product_id).await["stock"], 2);
    let records = app.dump().await.webhooks;
    let recorded = records
        .iter()
        .find(|record| record.key.as_str() == "evt-then-fail")
        .expect("the conflicting webhook is recorded");
    assert_eq!(recorded.result.as_str(), "conflict");
    app
}

async fn paid_webhook_on_a_cancelled_order_is_recorded_as_refund_required(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 3).await;
    let hold_id = app.hold(product_id, 2).await;
    let order_id = id(
        app.place_order(hold_id).await.expect_status(201),
        "order_id",
    );
    app.webhook("evt-fail", hold_id, "failed")
        .await
        .expect_status(200);
    let refund = app.webhook("evt-late-pay", hold_id, "paid").await;
    let refund = refund.expect_status(200);
    assert_eq!(refund["result"], "refund_required");
    assert_eq!(refund["order_id"], order_id);
    assert_eq!(refund["order_status"], "cancelled");
    assert_eq!(app.product(product_id).await["stock"], 3);
    app
}

async fn webhook_for_an_unknown_hold_is_recorded_as_unmatched_with_202(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let before = app.dump().await;
    let reply = app.webhook("evt-stray", 424_242, "paid").await;
    let body = reply.expect_status(202);
    assert_eq!(body["ok"], true);
    assert_eq!(body["result"], "unmatched");
    let after = app.dump().await;
    assert_eq!(before.products, after.products);
    assert_eq!(before.holds, after.holds);
    assert_eq!(before.orders, after.orders);
    assert_eq!(after.webhooks.len(), 1, "the unmatched verdict is kept");
    let record = after.webhooks.first().expect("one record");
    assert_eq!(record.key.as_str(), "evt-stray");
    assert_eq!(record.hold_id.0, 424_242);
    assert_eq!(record.result.as_str(), "unmatched");
    let replay = app.webhook("evt-stray", 424_242, "paid").await;
    assert_eq!(replay.expect_status(202)["replayed"], true);
    assert_same_rows(&after, &app.dump().await, "an unmatched replay");
    app
}

async fn reused_key_with_another_payload_is_422_and_changes_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 5).await;
    let hold_id = app.hold(product_id, 1).await;
    let other_hold_id = app.hold(product_id, 1).await;
    app.place_order(hold_id).await.expect_status(201);
    app.webhook("evt-k", hold_id, "paid")
        .await
        .expect_status(200);
    let before = app.dump().await;
    let other_status = app.webhook("evt-k", hold_id, "failed").await;
    let problem = other_status.expect_problem(422, "idempotency_key_reused");
    assert_eq!(problem["field"], "status");
    let other_hold = app.webhook("evt-k", other_hold_id, "paid").await;
    let problem = other_hold.expect_problem(422, "idempotency_key_reused");
    assert_eq!(problem["field"], "hold_id");
    assert_same_rows(&before, &app.dump().await, "a reused key");
    assert_eq!(app.hold_state(other_hold_id).await, "held");
    app
}

async fn missing_malformed_wrong_or_stale_signatures_are_401_and_store_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 5).await;
    let hold_id = app.hold(product_id, 2).await;
    let body = serde_json::to_vec(&json!({
        "idempotency_key": "evt-unsigned", "hold_id": hold_id, "status": "paid",
    }))
    .expect("JSON serializes");
    let now = now_unix_s();
    let other_body =
        format!(r#"{{"idempotency_key":"evt-unsigned","hold_id":{hold_id},"status":"failed"}}"#);
    let wrong_secret = signature::sign(&Secret::new("not-the-secret"), now, &body);
    let cases: [(Option<String>, &str); 8] = [
        (None, "signature_missing"),
        (Some("garbage".into()), "signature_malformed"),
        (Some(format!("t={now}")), "signature_malformed"),
        (Some(wrong_secret), "signature_mismatch"),
        (Some(sign(other_body.as_bytes(), now)), "signature_mismatch"),
        (
            Some(sign(&body, now.saturating_sub(301))),
            "signature_stale",
        ),
        (
            Some(sign(&body, now.saturating_sub(3_600))),
            "signature_stale",
        ),
        (
            Some(sign(&body, now.saturating_add(3_600))),
            "signature_stale",
        ),
    ];
    let before = app.dump().await;
    for (header, code) in &cases {
        let reply = app.webhook_raw(&body, header.as_deref()).await;
        reply.expect_problem(401, code);
    }
    // Unsigned garbage is refused for its signature before anyone parses it.
    let reply = app.webhook_raw(b"{not json", None).await;
    reply.expect_problem(401, "signature_missing");
    assert_same_rows(&before, &app.dump().await, "unsigned webhooks");
    assert_eq!(app.hold_state(hold_id).await, "held");
    // The same body, correctly signed, is then applied: nothing above consumed its key.
    let signed = sign(&body, now_unix_s());
    let reply = app.webhook_raw(&body, Some(&signed)).await;
    let reply = reply.expect_status(200);
    assert_eq!(reply["result"], "applied");
    assert_eq!(reply["replayed"], false);
    app
}

async fn signed_webhook_with_invalid_fields_is_refused_and_stores_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product_id = app.create_product(700, 5).await;
    let hold_id = app.hold(product_id, 2).await;
    let invalid = |body: Value, field| (body.to_string(), 422, "validation_failed", Some(field));
    let (k, h) = ("idempotency_key", "hold_id");
    let cases = [
        invalid(json!({h: hold_id, "status": "paid"}), k),
        invalid(json!({k: "e1", "status": "paid"}), h),
        invalid(json!({k: "e1", h: hold_id}), "status"),
        invalid(json!({k: "e1", h: hold_id, "status": "refunded"}), "status"),
        invalid(json!({k: "e1", h: hold_id, "status": "PAID"}), "status"),
        invalid(json!({k: "e1", h: hold_id, "status": 1}), "status"),
        invalid(json!({k: "", h: hold_id, "status": "paid"}), k),
        invalid(json!({k: "has space", h: hold_id, "status": "paid"}), k),
        invalid(json!({k: "k".repeat(256), h: hold_id, "status": "paid"}), k),
        invalid(json!({k: 7, h: hold_id, "status": "paid"}), k),
        invalid(json!({k: "e1", h: "x", "status": "paid"}), h),
        invalid(json!({k: "e1", h: -1, "status": "paid"}), h),
        invalid(json!({k: "e1", h: 1.5, "status": "paid"}), h),
        invalid(json!({k: "e1", h: {"id": hold_id}, "status": "paid"}), h),
        ("\"paid\"".to_owned(), 422, "validation_failed", None),
        (
            "{\"idempotency_key\":".to_owned(),
            400,
            "malformed_json",
            None,
        ),
        (String::new(), 400, "malformed_json", None),
    ];
    let before = app.dump().await;
    for (body, status, code, field) in &cases {
        let signed = sign(body.as_bytes(), now_unix_s());
        let reply = app.webhook_raw(body.as_bytes(), Some(&signed)).await;
        let problem = reply.expect_problem(*status, code);
        if let Some(field) = field {
            assert_eq!(problem["field"], *field, "body {body}");
        }
    }
    // Signed, but over the 16 KiB body limit.
    let padded = json!({k: "e3", h: hold_id, "status": "paid", "pad": " ".repeat(16 * 1024)});
    let padded = padded.to_string();
    let signed = sign(padded.as_bytes(), now_unix_s());
    let reply = app.webhook_raw(padded.as_bytes(), Some(&signed)).await;
    reply.expect_problem(413, "payload_too_large");
    // Signed, but not declared as JSON.
    let body = json!({"idempotency_key": "e2", "hold_id": hold_id, "status": "paid"}).to_string();
    let reply = app
        .client
        .post(format!("{}/api/payments/webhook", app.address))
        .header("content-type", "text/plain")
        .header("x-flashsale-signature", sign(body.as_bytes(), now_unix_s()))
        .body(body)
        .send()
        .await
        .expect("the request is answered");
    assert_eq!(reply.status().as_u16(), 415);
    assert_same_rows(&before, &app.dump().await, "invalid signed webhooks");
    app
}

async fn webhook_signed_with_any_configured_secret_is_accepted(db: Db) -> TestApp {
    // A second secret, as while rotating: the harness's plus this one.
    let app = spawn_app(db, &["--webhook-secret", "rotated-in-secret-2"]).await;
    let product_id = app.create_product(700, 5).await;
    let first = app.hold(product_id, 1).await;
    let second = app.hold(product_id, 1).await;
    let body = json!({"idempotency_key": "evt-r1", "hold_id": first, "status": "paid"});
    let body = body.to_string();
    let header = signature::sign(
        &Secret::new("rotated-in-secret-2"),
        now_unix_s(),
        body.as_bytes(),
    );
    let reply = app.webhook_raw(body.as_bytes(), Some(&header)).await;
    assert_eq!(reply.expect_status(200)["result"], "applied");
    // Several `v1` entries: one from an unknown secret, one from a configured one.
    let body = json!({"idempotency_key": "evt-r2", "hold_id": second, "status": "paid"});
    let body = body.to_string();
    let now = now_unix_s();
    let unknown = signature::sign(&Secret::new("retired"), now, body.as_bytes());
    let known = sign(body.as_bytes(), now);
    let known_tag = known.split_once(",v1=").expect("a v1 entry").1;
    let header = format!("{unknown},v1={known_tag}");
    let reply = app.webhook_raw(body.as_bytes(), Some(&header)).await;
    assert_eq!(reply.expect_status(200)["result"], "applied");
    app
}
