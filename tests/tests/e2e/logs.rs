//! What an operator reads: one log line per request with its method, route, status, latency and
//! request id; the id accepted from the client or made up, echoed in `X-Request-Id` and in
//! problem bodies; no terminal colours in a log that is not a terminal; sweeper lines that name
//! their product; `Location` on a 201 and `Allow` on a 405; field errors in the API's words;
//! Prometheus metrics.

use crate::harness::{Db, TestApp, spawn_app};

on_both_databases!(
    every_request_is_logged_once_under_its_request_id,
    sweeper_lines_name_the_product,
    created_answers_have_a_location_and_405s_an_allow,
    field_errors_say_the_allowed_range,
    metrics_count_requests_holds_and_connections,
    order_and_webhook_lines_name_the_product,
    hold_and_order_lines_name_the_product_once,
    json_request_lines_carry_the_latency_as_a_number,
);

async fn every_request_is_logged_once_under_its_request_id(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let asked = app
        .client
        .get(app.url("/api/products/987654"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("an answer");
    assert_eq!(asked.status(), 404);
    assert_eq!(
        asked.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"trace-me-42"[..]),
        "the client's id is echoed"
    );
    let problem: serde_json::Value = asked.json().await.expect("a problem body");
    assert_eq!(problem["request_id"], "trace-me-42", "{problem}");

    let made = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "no spaces allowed")
        .send()
        .await
        .expect("an answer");
    let id = made
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(id.len(), 16, "an id is made up for an unusable one: {id:?}");

    app.poll_until("both requests are in the log", async || {
        let log = app.log_tail();
        log.contains(&id) && log.contains("trace-me-42")
    })
    .await;
    let log = app.log_tail();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("trace-me-42") && line.contains("flashsale::request"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the request: {lines:?}");
    let line = lines.first().copied().unwrap_or_default();
    for part in [
        "method=GET",
        "route=/api/products/{id}",
        "status=404",
        "latency_ms=",
    ] {
        assert!(line.contains(part), "{part} in {line:?}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal"
    );
    app
}

/// The sweeper's lines name the product they released holds of.
async fn sweeper_lines_name_the_product(db: Db) -> TestApp {
    let app = spawn_app(db, &["--hold-ttl", "1s", "--sweep-interval", "200ms"]).await;
    let product = app.create_product(100, 3).await;
    let hold = app.hold(product, 2).await;
    app.poll_until("the sweeper releases the hold", async || {
        app.hold_state(hold).await == "released"
    })
    .await;
    let wanted = format!("product_id={product}");
    app.poll_until("a sweep line names the product", async || {
        app.log_tail()
            .lines()
            .any(|line| line.contains("swept") && line.contains(&wanted))
    })
    .await;
    app
}

/// A 201 says where what it created lives; a 405 says which method the path takes.
async fn created_answers_have_a_location_and_405s_an_allow(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 3).await;
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hold = app
        .client
        .post(app.url("/api/holds"))
        .json(&serde_json::json!({"product_id": product, "qty": 1}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(hold.status(), 201);
    let location = header(&hold, "location");
    let body: serde_json::Value = hold.json().await.expect("a body");
    assert_eq!(location, format!("/api/holds/{}", body["hold_id"]));
    let order = app
        .client
        .post(app.url("/api/orders"))
        .json(&serde_json::json!({"hold_id": body["hold_id"]}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(order.status(), 201);
    let location = header(&order, "location");
    let body: serde_json::Value = order.json().await.expect("a body");
    assert_eq!(location, format!("/api/orders/{}", body["order_id"]));
    app.get(&location).await.expect_status(200);

    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/api/holds".to_owned(), "POST"),
        (
            reqwest::Method::POST,
            format!("/api/products/{product}"),
            "GET, HEAD",
        ),
        (
            reqwest::Method::PUT,
            "/api/payments/webhook".to_owned(),
            "POST",
        ),
    ] {
        let answer = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 405, "{method} {path}");
        assert_eq!(header(&answer, "allow"), allow, "{method} {path}");
    }
    app
}

/// A field error names the field and what it may be, in the API's words, never a Rust type.
async fn field_errors_say_the_allowed_range(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 3).await;
    for (qty, detail) in [
        (
            serde_json::json!(10_001),
            "qty 10001 is out of range: it must be from 1 to 10000",
        ),
        (
            serde_json::json!(-1),
            "invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
        ),
    ] {
        let reply = app
            .post(
                "/api/holds",
                &serde_json::json!({"product_id": product, "qty": qty}),
            )
            .await;
        let problem = reply.expect_problem(422, "validation_failed");
        assert_eq!(problem["field"], "qty", "{problem}");
        assert_eq!(problem["detail"], detail, "{problem}");
    }
    app
}

/// `GET /metrics` is Prometheus text with the requests, the holds and the pool in it.
async fn metrics_count_requests_holds_and_connections(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 1).await;
    app.hold(product, 1).await;
    app.place_hold(product, 1)
        .await
        .expect_problem(409, "insufficient_stock");
    app.product(product).await;
    app.product(product).await;
    let reply = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(reply.status(), 200);
    let content_type = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = reply.text().await.expect("a body");
    for line in [
        r#"flashsale_http_requests_total{route="/api/holds",status="201"} 1"#,
        r#"flashsale_http_requests_total{route="/api/holds",status="409"} 1"#,
        "flashsale_holds_granted_total 1",
        r#"flashsale_holds_rejected_total{code="insufficient_stock"} 1"#,
        r#"flashsale_product_cache_total{outcome="hit"} 1"#,
        // The product's creation and the two holds, each in a batch of its own.
        "flashsale_batch_size_count 3",
        // Both were queued and both were taken into a batch.
        "flashsale_queue_waiting 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    // What the requests sent the database: statements (BEGIN and COMMIT among them) and
    // transactions, at least one of each per write.
    let value = |name: &str| -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        line.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
    };
    let transactions = value("flashsale_db_transactions_total");
    let statements = value("flashsale_db_statements_total");
    assert!(
        transactions >= 3,
        "the creation and two holds: {transactions}"
    );
    assert!(
        statements >= transactions.saturating_mul(3),
        "BEGIN, a read, COMMIT: {statements}"
    );
    for prefix in [
        r#"flashsale_http_request_duration_seconds_bucket{route="/api/holds",le="0.005"}"#,
        r#"flashsale_db_connections{state="in_use"}"#,
        r#"flashsale_db_connections{state="idle"}"#,
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(prefix)),
            "{prefix:?} in:\n{text}"
        );
    }
    app
}

/// The lines of an order or a webhook, which name a hold, also name its product.
async fn order_and_webhook_lines_name_the_product(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 3).await;
    let hold = app.hold(product, 1).await;
    let order = app
        .client
        .post(app.url("/api/orders"))
        .header("x-request-id", "order-line")
        .json(&serde_json::json!({"hold_id": hold}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(order.status(), 201);
    let wanted = format!("product_id={product}");
    app.poll_until("the order's line names its product", async || {
        app.log_tail().lines().any(|line| {
            line.contains("order-line")
                && line.contains("flashsale::request")
                && line.contains(&wanted)
        })
    })
    .await;
    app
}

/// A request line names its product once, whether the hold is granted, refused by the core or
/// refused before it; an order's line too.
async fn hold_and_order_lines_name_the_product_once(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 1).await;
    let granted = app
        .client
        .post(app.url("/api/holds"))
        .header("x-request-id", "hold-granted")
        .json(&serde_json::json!({"product_id": product, "qty": 1}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(granted.status(), 201);
    let granted: serde_json::Value = granted.json().await.expect("a hold");
    let hold = granted["hold_id"].as_u64().expect("a hold id");
    let asked = [
        (
            "/api/holds",
            "hold-sold-out",
            serde_json::json!({"product_id": product, "qty": 1}),
            409,
        ),
        (
            "/api/holds",
            "hold-zero",
            serde_json::json!({"product_id": product, "qty": 0}),
            422,
        ),
        (
            "/api/orders",
            "order-once",
            serde_json::json!({"hold_id": hold}),
            201,
        ),
    ];
    for (path, id, body, status) in &asked {
        let answer = app
            .client
            .post(app.url(path))
            .header("x-request-id", *id)
            .json(body)
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), *status, "{id}");
    }
    let wanted = format!("product_id={product}");
    let ids = asked.iter().map(|(_, id, _, _)| *id);
    for id in std::iter::once("hold-granted").chain(ids) {
        let line_of = |log: &str| {
            log.lines()
                .find(|line| line.contains(id) && line.contains("flashsale::request"))
                .map(str::to_owned)
        };
        app.poll_until("the request's line is written", async || {
            line_of(&app.log_tail()).is_some()
        })
        .await;
        let line = line_of(&app.log_tail()).unwrap_or_default();
        assert_eq!(
            line.matches(&wanted).count(),
            1,
            "{wanted} once in {line:?}"
        );
    }
    app
}

/// In JSON logs a request line's `latency_ms` is a number a collector can aggregate, not text.
async fn json_request_lines_carry_the_latency_as_a_number(db: Db) -> TestApp {
    let app = spawn_app(db, &["--log-format", "json"]).await;
    let answer = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "json-latency")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200);
    app.poll_until("the request is in the log", async || {
        app.log_tail().contains("json-latency")
    })
    .await;
    let log = app.log_tail();
    let line = log
        .lines()
        .find(|line| line.contains("json-latency") && line.contains("flashsale::request"))
        .expect("the request's line");
    let line: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert!(line["fields"]["latency_ms"].is_number(), "{line}");
    assert_eq!(line["fields"]["status"], 200, "{line}");
    app
}
