//! Rows the server did not write: a product counter changed behind its back must make the
//! requests on that product fail closed (500 `invariant_violated`, nothing written, an error in
//! the log), never panic, while every other product and every connection keeps working.

use crate::harness::{Db, TestApp, assert_same_rows, spawn_app};

on_both_databases!(a_broken_counter_fails_requests_closed_and_the_server_lives_on);

async fn a_broken_counter_fails_requests_closed_and_the_server_lives_on(db: Db) -> TestApp {
    // No cache, so every GET reads the rows.
    let app = spawn_app(db, &["--seed-demo", "--cache-staleness", "0s"]).await;
    app.hold(1, 2).await;
    // Product 1 has stock 5 and one hold of 2; its counter now claims 9 held units.
    app.execute("UPDATE products SET units_held = 9 WHERE id = 1")
        .await;
    let before = app.dump().await;
    app.place_hold(1, 1)
        .await
        .expect_problem(500, "invariant_violated");
    app.get("/api/products/1")
        .await
        .expect_problem(500, "invariant_violated");
    assert_same_rows(&before, &app.dump().await, "a request on a broken product");
    assert!(
        app.log_tail().contains("invariant violated"),
        "the server logs the violation:\n{}",
        app.log_tail()
    );
    // The rest of the service is untouched, on the same server and connections.
    app.place_hold(2, 1).await.expect_status(201);
    // Repaired by hand, the product sells again.
    app.execute("UPDATE products SET units_held = 2 WHERE id = 1")
        .await;
    app.place_hold(1, 1).await.expect_status(201);
    assert_eq!(app.available(1).await, 2);
    app
}
