//! Reconciliation: every payment that did not become a sale can be found without SQL, through
//! the admin routes and through `flashsale report`, and both list the same records.

use serde_json::{Value, json};

use crate::cli::flashsale_code;
use crate::harness::{ADMIN_TOKEN, Db, TestApp, id, spawn_app};

on_both_databases!(
    payments_that_did_not_become_a_sale_are_listed_for_follow_up,
    listings_page_with_a_cursor_to_the_end,
    listings_refuse_bad_queries_and_a_missing_token,
);

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

fn field(items: &[Value], name: &str) -> Vec<Value> {
    items.iter().map(|item| item[name].clone()).collect()
}

async fn payments_that_did_not_become_a_sale_are_listed_for_follow_up(db: Db) -> TestApp {
    let args = ["--payment-window", "2s", "--sweep-interval", "100ms"];
    let app = spawn_app(db, &args).await;
    let product_id = app.create_product(250, 10).await;
    let mut orders = Vec::new();
    let mut holds = Vec::new();
    for _ in 0..3 {
        let hold_id = app.hold(product_id, 1).await;
        let order = app.place_order(hold_id).await;
        orders.push(id(order.expect_status(201), "order_id"));
        holds.push(hold_id);
    }
    let [never_paid, failed, paid] = [orders[0], orders[1], orders[2]];
    let failed_webhook = app.webhook("evt-failed", holds[1], "failed").await;
    assert_eq!(failed_webhook.expect_status(200)["result"], "applied");
    let paid_webhook = app.webhook("evt-paid", holds[2], "paid").await;
    assert_eq!(paid_webhook.expect_status(200)["result"], "applied");
    let path = format!("/api/orders/{never_paid}");
    app.poll_until("the payment window cancels the unpaid order", async || {
        app.get(&path).await.expect_status(200)["status"] == "cancelled"
    })
    .await;
    // Three payments that are not sales: one too late, one contradicting, one for nothing.
    let late = app.webhook("evt-late", holds[0], "paid").await;
    assert_eq!(late.expect_status(200)["result"], "refund_required");
    let contradicting = app.webhook("evt-contradicting", holds[2], "failed").await;
    assert_eq!(contradicting.expect_status(200)["result"], "conflict");
    let stray = app.webhook("evt-stray", 987_654, "paid").await;
    assert_eq!(stray.expect_status(202)["result"], "unmatched");

    let list = async |path: &str| {
        let reply = app.get_admin(path, ADMIN_TOKEN).await;
        let page = reply.expect_status(200).clone();
        assert_eq!(
            page["next_cursor"],
            Value::Null,
            "one page holds them: {page}"
        );
        items(&page)
    };
    let window = list("/api/admin/orders?cancel_reason=payment_window_closed").await;
    assert_eq!(field(&window, "order_id"), vec![json!(never_paid)]);
    assert_eq!(window[0]["status"], "cancelled");
    assert_eq!(window[0]["cancel_reason"], "payment_window_closed");
    assert_eq!(window[0]["hold_id"], holds[0]);
    assert_eq!(window[0]["total_cents"], 250);
    let by_failure = list("/api/admin/orders?cancel_reason=payment_failed").await;
    assert_eq!(field(&by_failure, "order_id"), vec![json!(failed)]);
    let sold = list("/api/admin/orders?status=paid").await;
    assert_eq!(field(&sold, "order_id"), vec![json!(paid)]);
    assert_eq!(sold[0]["cancel_reason"], Value::Null);
    let all = list("/api/admin/orders").await;
    assert_eq!(
        field(&all, "order_id"),
        vec![json!(never_paid), json!(failed), json!(paid)]
    );

    let refunds = list("/api/admin/webhooks?result=refund_required").await;
    assert_eq!(field(&refunds, "idempotency_key"), vec![json!("evt-late")]);
    assert_eq!(refunds[0]["hold_id"], holds[0]);
    assert_eq!(refunds[0]["order_id"], never_paid);
    assert_eq!(refunds[0]["status"], "paid");
    let conflicts = list("/api/admin/webhooks?result=conflict").await;
    assert_eq!(
        field(&conflicts, "idempotency_key"),
        vec![json!("evt-contradicting")]
    );
    let unmatched = list("/api/admin/webhooks?result=unmatched").await;
    assert_eq!(
        field(&unmatched, "idempotency_key"),
        vec![json!("evt-stray")]
    );
    assert_eq!(unmatched[0]["order_id"], Value::Null);
    let every = list("/api/admin/webhooks").await;
    assert_eq!(every.len(), 5, "every record, in arrival order: {every:?}");

    // The command line prints the same records.
    let url = app.database_url().to_owned();
    // Exit code 3: there are payments to follow up (for cron and alerting).
    let (code, out, err) = flashsale_code(&["report", "--json", "--database-url", &url], &[]);
    assert_eq!(code, Some(3), "report runs and finds records: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(report["webhooks"]["refund_required"], json!(refunds));
    assert_eq!(report["webhooks"]["conflict"], json!(conflicts));
    assert_eq!(report["webhooks"]["unmatched"], json!(unmatched));
    assert_eq!(report["orders_payment_window_closed"], json!(window));
    let (code, text, err) = flashsale_code(&["report", "--database-url", &url], &[]);
    assert_eq!(code, Some(3), "report runs and finds records: {err}");
    for needle in [
        "webhooks refund_required (1): paid after its hold or order was gone: refund the payment",
        "key=evt-late",
        "webhooks conflict (1)",
        "key=evt-contradicting",
        "webhooks unmatched (1)",
        "key=evt-stray hold=987654",
        "orders cancelled when their payment window closed (1)",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
    assert!(
        text.contains(&format!("order={never_paid} hold={}", holds[0])),
        "{text}"
    );
    app
}

async fn listings_page_with_a_cursor_to_the_end(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    // Keys that sort differently from their arrival, and one needing escapes in a query string.
    let keys = ["k-3", "k-1", "k&=?#/", "k-2", "k-0"];
    for (n, key) in keys.iter().enumerate() {
        let hold_id = 900_000_u64.saturating_add(u64::try_from(n).expect("small"));
        app.webhook(key, hold_id, "paid").await.expect_status(202);
    }
    let mut seen = Vec::new();
    let mut pages = 0_u32;
    let mut path = "/api/admin/webhooks?result=unmatched&limit=2".to_owned();
    loop {
        let reply = app.get_admin(&path, ADMIN_TOKEN).await;
        let page = reply.expect_status(200).clone();
        let page_items = items(&page);
        assert!(page_items.len() <= 2, "{page}");
        seen.extend(field(&page_items, "idempotency_key"));
        pages = pages.saturating_add(1);
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/admin/webhooks?result=unmatched&limit=2&cursor={cursor}");
            }
            None => break,
        }
        assert!(pages < 10, "the cursor moves on");
    }
    assert_eq!(pages, 3, "5 records at 2 a page");
    // Arrival order, then key: the webhooks may share a millisecond.
    let mut expected: Vec<Value> = Vec::new();
    let dump = app.dump().await;
    let mut records: Vec<_> = dump.webhooks.iter().collect();
    records.sort_by(|a, b| (a.received_at, a.key.as_str()).cmp(&(b.received_at, b.key.as_str())));
    expected.extend(records.iter().map(|r| json!(r.key.as_str())));
    assert_eq!(seen, expected, "every record once, in order");

    // Orders page by id.
    let product_id = app.create_product(100, 5).await;
    let mut order_ids = Vec::new();
    for _ in 0..3 {
        let hold_id = app.hold(product_id, 1).await;
        order_ids.push(id(
            app.place_order(hold_id).await.expect_status(201),
            "order_id",
        ));
    }
    let first = app
        .get_admin("/api/admin/orders?status=pre_payment&limit=2", ADMIN_TOKEN)
        .await;
    let first = first.expect_status(200).clone();
    assert_eq!(
        field(&items(&first), "order_id"),
        vec![json!(order_ids[0]), json!(order_ids[1])]
    );
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = app
        .get_admin(
            &format!("/api/admin/orders?status=pre_payment&limit=2&cursor={cursor}"),
            ADMIN_TOKEN,
        )
        .await;
    let rest = rest.expect_status(200);
    assert_eq!(field(&items(rest), "order_id"), vec![json!(order_ids[2])]);
    assert_eq!(rest["next_cursor"], Value::Null);
    app
}

async fn listings_refuse_bad_queries_and_a_missing_token(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let refused = [
        ("/api/admin/webhooks?result=lost", "result"),
        ("/api/admin/webhooks?limit=0", "limit"),
        ("/api/admin/webhooks?limit=1001", "limit"),
        ("/api/admin/webhooks?cursor=nonsense", "cursor"),
        ("/api/admin/webhooks?reslut=conflict", "reslut"),
        ("/api/admin/orders?status=shipped", "status"),
        (
            "/api/admin/orders?status=paid&cancel_reason=payment_failed",
            "cancel_reason",
        ),
        ("/api/admin/orders?cancel_reason=bored", "cancel_reason"),
        ("/api/admin/orders?cursor=-1", "cursor"),
    ];
    for (path, parameter) in refused {
        let reply = app.get_admin(path, ADMIN_TOKEN).await;
        let problem = reply.expect_problem(400, "invalid_query");
        assert_eq!(problem["parameter"], parameter, "{path}: {problem}");
    }
    for path in ["/api/admin/webhooks", "/api/admin/orders"] {
        app.get(path).await.expect_problem(401, "unauthorized");
        let wrong = app.get_admin(path, "not-the-token").await;
        wrong.expect_problem(401, "unauthorized");
        let post = app.post_admin(path, Some(ADMIN_TOKEN), &json!({})).await;
        post.expect_problem(405, "method_not_allowed");
    }
    app
}
