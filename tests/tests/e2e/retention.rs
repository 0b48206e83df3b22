//! Retention: the sweeper purges request-key records and webhook records past their retention,
//! and a key used after its record is gone is a new request.

use serde_json::json;

use crate::harness::{Db, TestApp, spawn_app};

on_both_databases!(records_past_their_retention_are_purged_and_their_keys_are_new_again);

async fn records_past_their_retention_are_purged_and_their_keys_are_new_again(db: Db) -> TestApp {
    let app = spawn_app(
        db,
        &[
            "--request-key-retention",
            "1s",
            "--webhook-retention",
            "2s",
            "--sweep-interval",
            "200ms",
        ],
    )
    .await;
    let product = app.create_product(100, 10).await;
    let body = json!({"product_id": product, "qty": 1});
    let first = app.post_keyed("/api/holds", "kept-a-while", &body).await;
    let first_id = first.expect_status(201)["hold_id"].clone();
    let again = app.post_keyed("/api/holds", "kept-a-while", &body).await;
    assert!(
        again.replayed,
        "within its retention the key replays: {again:?}"
    );
    assert_eq!(again.body["hold_id"], first_id);
    app.webhook("provider-key", 987_654, "paid")
        .await
        .expect_status(202);
    let dump = app.dump().await;
    assert_eq!((dump.request_keys.len(), dump.webhooks.len()), (1, 1));

    app.poll_until("both records are purged", async || {
        let dump = app.dump().await;
        dump.request_keys.is_empty() && dump.webhooks.is_empty()
    })
    .await;
    let after = app.post_keyed("/api/holds", "kept-a-while", &body).await;
    assert!(
        !after.replayed,
        "after its purge the key is a new request: {after:?}"
    );
    assert_ne!(after.expect_status(201)["hold_id"], first_id);
    let redelivered = app.webhook("provider-key", 987_654, "paid").await;
    assert_eq!(redelivered.expect_status(202)["replayed"], false);
    app
}
