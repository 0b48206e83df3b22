//! Bad input on every route that takes some: negative, zero, fractional, textual and huge
//! numbers, missing, nested, duplicated and unknown fields, bodies that are not JSON, too large,
//! or not declared as JSON, and ids that do not exist or are not numbers. Each must be answered
//! with a clear 4xx RFC 9457 problem carrying a `code` (and the `field` when one is to blame),
//! and must change nothing: the database's full dump is compared before and after.

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Db, TestApp, assert_same_rows, now_unix_s, sign, spawn_app};

on_both_databases!(
    bad_hold_requests_are_4xx_problems_and_change_nothing,
    bad_order_requests_are_4xx_problems_and_change_nothing,
    bad_admin_requests_are_4xx_problems_and_change_nothing,
    ids_that_do_not_exist_or_are_not_numbers_are_404_problems,
    unknown_paths_are_404_and_wrong_methods_are_405,
    json_arrays_are_refused_rather_than_read_as_positional_fields,
);

/// One bad request body and the problem it must get.
struct Case {
    body: String,
    content_type: Option<&'static str>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

/// A JSON body that must be refused with `status`, `code` and (if given) `field`.
fn json_case(body: &str, status: u16, code: &'static str, field: Option<&'static str>) -> Case {
    Case {
        body: body.to_owned(),
        content_type: Some("application/json"),
        status,
        code,
        field,
    }
}

fn invalid(body: &str, field: &'static str) -> Case {
    json_case(body, 422, "validation_failed", Some(field))
}

/// The refusals every JSON route shares: syntax, size and media type.
fn body_cases(valid: &str) -> Vec<Case> {
    let too_large = format!("{valid}{}", " ".repeat(16 * 1024));
    vec![
        json_case("{\"qty\": 1,", 400, "malformed_json", None),
        json_case("", 400, "malformed_json", None),
        json_case(&format!("{valid} trailing"), 400, "malformed_json", None),
        json_case("{'single': 'quotes'}", 400, "malformed_json", None),
        json_case(&too_large, 413, "payload_too_large", None),
        json_case("\"a string\"", 422, "validation_failed", None),
        json_case("null", 422, "validation_failed", None),
        Case {
            body: valid.to_owned(),
            content_type: Some("text/plain"),
            status: 415,
            code: "unsupported_media_type",
            field: None,
        },
        Case {
            body: valid.to_owned(),
            content_type: None,
            status: 415,
            code: "unsupported_media_type",
            field: None,
        },
        Case {
            body: "product_id=1&qty=1".to_owned(),
            content_type: Some("application/x-www-form-urlencoded"),
            status: 415,
            code: "unsupported_media_type",
            field: None,
        },
    ]
}

async fn bad_hold_requests_are_4xx_problems_and_change_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let p = app.create_product(100, 5).await;
    app.hold(p, 1).await;
    let mut cases = vec![
        invalid(&format!(r#"{{"product_id": {p}, "qty": -1}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": 0}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": 1.5}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": 1.0}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": "2"}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": null}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": true}}"#), "qty"),
        invalid(
            &format!(r#"{{"product_id": {p}, "qty": 99999999999}}"#),
            "qty",
        ),
        invalid(
            &format!(r#"{{"product_id": {p}, "qty": 4294967295}}"#),
            "qty",
        ),
        invalid(&format!(r#"{{"product_id": {p}, "qty": 10001}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": 1e3}}"#), "qty"),
        invalid(&format!(r#"{{"product_id": {p}, "qty": [1]}}"#), "qty"),
        invalid(
            &format!(r#"{{"product_id": {p}, "qty": {{"n": 1}}}}"#),
            "qty",
        ),
        invalid(&format!(r#"{{"product_id": {p}}}"#), "qty"),
        invalid(r#"{"qty": 1}"#, "product_id"),
        invalid("{}", "product_id"),
        invalid(r#"{"product_id": -1, "qty": 1}"#, "product_id"),
        invalid(r#"{"product_id": "1", "qty": 1}"#, "product_id"),
        invalid(r#"{"product_id": 1.5, "qty": 1}"#, "product_id"),
        invalid(
            r#"{"product_id": 18446744073709551616, "qty": 1}"#,
            "product_id",
        ),
        invalid(
            &format!(r#"{{"product_id": {{"id": {p}}}, "qty": 1}}"#),
            "product_id",
        ),
        invalid(
            &format!(r#"{{"product_id": [{p}], "qty": 1}}"#),
            "product_id",
        ),
        invalid(
            &format!(r#"{{"product_id": {p}, "qty": 1, "coupon": "x"}}"#),
            "coupon",
        ),
        invalid(
            &format!(r#"{{"product_id": {p}, "qty": 1, "qty": 2}}"#),
            "qty",
        ),
        json_case(
            r#"{"product_id": 999999, "qty": 1}"#,
            422,
            "unknown_product",
            Some("product_id"),
        ),
        json_case(
            r#"{"product_id": 18446744073709551615, "qty": 1}"#,
            422,
            "unknown_product",
            Some("product_id"),
        ),
        json_case(
            &format!(r#"{{"product_id": {p}, "qty": 10000}}"#),
            409,
            "insufficient_stock",
            None,
        ),
    ];
    cases.extend(body_cases(&format!(r#"{{"product_id": {p}, "qty": 1}}"#)));
    refuse_all(&app, "/api/holds", &cases).await;
    app
}

async fn bad_order_requests_are_4xx_problems_and_change_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let p = app.create_product(100, 5).await;
    let h = app.hold(p, 1).await;
    let mut cases = vec![
        invalid(r#"{"hold_id": -1}"#, "hold_id"),
        invalid(&format!(r#"{{"hold_id": "{h}"}}"#), "hold_id"),
        invalid(r#"{"hold_id": 1.5}"#, "hold_id"),
        invalid(r#"{"hold_id": null}"#, "hold_id"),
        invalid(r#"{"hold_id": 18446744073709551616}"#, "hold_id"),
        invalid(&format!(r#"{{"hold_id": {{"id": {h}}}}}"#), "hold_id"),
        invalid(&format!(r#"{{"hold_id": {h}, "qty": 1}}"#), "qty"),
        invalid("{}", "hold_id"),
        json_case(r#"{"hold_id": 0}"#, 422, "unknown_hold", Some("hold_id")),
        json_case(
            r#"{"hold_id": 987654}"#,
            422,
            "unknown_hold",
            Some("hold_id"),
        ),
        json_case(
            r#"{"hold_id": 18446744073709551615}"#,
            422,
            "unknown_hold",
            Some("hold_id"),
        ),
    ];
    cases.extend(body_cases(&format!(r#"{{"hold_id": {h}}}"#)));
    refuse_all(&app, "/api/orders", &cases).await;
    assert_eq!(app.hold_state(h).await, "held");
    app
}

async fn bad_admin_requests_are_4xx_problems_and_change_nothing(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let p = app.create_product(100, 5).await;
    let long_name = "n".repeat(256);
    let mut create = vec![
        invalid(r#"{"name": "", "price_cents": 1, "stock": 1}"#, "name"),
        invalid(r#"{"name": "   ", "price_cents": 1, "stock": 1}"#, "name"),
        invalid(
            &format!(r#"{{"name": "{long_name}", "price_cents": 1, "stock": 1}}"#),
            "name",
        ),
        invalid(r#"{"name": 5, "price_cents": 1, "stock": 1}"#, "name"),
        invalid(
            r#"{"name": "x", "price_cents": -1, "stock": 1}"#,
            "price_cents",
        ),
        invalid(
            r#"{"name": "x", "price_cents": 9.99, "stock": 1}"#,
            "price_cents",
        ),
        invalid(
            r#"{"name": "x", "price_cents": 1000000000001, "stock": 1}"#,
            "price_cents",
        ),
        invalid(r#"{"name": "x", "price_cents": 1, "stock": -1}"#, "stock"),
        invalid(
            r#"{"name": "x", "price_cents": 1, "stock": 4294967296}"#,
            "stock",
        ),
        invalid(r#"{"name": "x", "price_cents": 1}"#, "stock"),
        invalid(
            r#"{"name": "x", "price_cents": 1, "stock": 1, "id": 7}"#,
            "id",
        ),
    ];
    create.extend(body_cases(r#"{"name": "x", "price_cents": 1, "stock": 1}"#));
    refuse_all(&app, "/api/admin/products", &create).await;
    let mut restock = vec![
        invalid(r#"{"qty": 0}"#, "qty"),
        invalid(r#"{"qty": -5}"#, "qty"),
        invalid(r#"{"qty": "5"}"#, "qty"),
        invalid(r#"{"qty": 4294967295}"#, "qty"),
        invalid(r#"{"qty": 5, "price_cents": 1}"#, "price_cents"),
        invalid("{}", "qty"),
    ];
    restock.extend(body_cases(r#"{"qty": 5}"#));
    refuse_all(&app, &format!("/api/admin/products/{p}/restock"), &restock).await;
    assert_eq!(app.product(p).await["stock"], 5);
    app
}

async fn ids_that_do_not_exist_or_are_not_numbers_are_404_problems(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let h = app.hold(1, 1).await;
    app.place_order(h).await.expect_status(201);
    let before = app.dump().await;
    let cases = [
        ("/api/products/abc", "not_found"),
        ("/api/products/-1", "not_found"),
        ("/api/products/1.5", "not_found"),
        ("/api/products/18446744073709551616", "not_found"),
        ("/api/products/", "not_found"),
        ("/api/products/11", "product_not_found"),
        ("/api/products/9223372036854775807", "product_not_found"),
        ("/api/products/9223372036854775808", "product_not_found"),
        ("/api/products/18446744073709551615", "product_not_found"),
        ("/api/holds/abc", "not_found"),
        ("/api/holds/0", "hold_not_found"),
        ("/api/holds/9223372036854775808", "hold_not_found"),
        ("/api/holds/18446744073709551615", "hold_not_found"),
        ("/api/orders/x1", "not_found"),
        ("/api/orders/0", "order_not_found"),
        ("/api/orders/9223372036854775808", "order_not_found"),
        ("/api/orders/18446744073709551615", "order_not_found"),
    ];
    for (path, code) in cases {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 404, "GET {path}: {reply:?}");
        reply.expect_problem(404, code);
    }
    assert_same_rows(&before, &app.dump().await, "GETs of missing ids");
    app
}

async fn unknown_paths_are_404_and_wrong_methods_are_405(db: Db) -> TestApp {
    let app = spawn_app(db, &["--seed-demo"]).await;
    let before = app.dump().await;
    app.get("/api/nope").await.expect_problem(404, "not_found");
    app.get("/").await.expect_problem(404, "not_found");
    app.post("/api/products/1", &json!({}))
        .await
        .expect_problem(405, "method_not_allowed");
    app.get("/api/holds")
        .await
        .expect_problem(405, "method_not_allowed");
    app.get("/api/payments/webhook")
        .await
        .expect_problem(405, "method_not_allowed");
    let delete = app
        .client
        .delete(format!("{}/api/products/1", app.address))
        .send()
        .await
        .expect("the request is answered");
    assert_eq!(delete.status().as_u16(), 405);
    assert_same_rows(&before, &app.dump().await, "unknown paths and methods");
    app
}

/// The API's bodies are JSON objects. serde reads a struct from an array too, by position, so
/// `[3, 1]` could mean `{"product_id": 3, "qty": 1}`: a client that sends an array has made a
/// mistake, and guessing what it meant sells the wrong thing. Valid JSON of the wrong shape is
/// 422 `validation_failed`, never 400 `malformed_json` and never a success.
async fn json_arrays_are_refused_rather_than_read_as_positional_fields(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let p = app.create_product(100, 5).await;
    let h = app.hold(p, 1).await;
    let before = app.dump().await;
    let wrong_shape = |body: String| json_case(&body, 422, "validation_failed", None);
    let restock = format!("/api/admin/products/{p}/restock");
    let routes = [
        (
            "/api/holds",
            vec![format!("[{p}, 1]"), format!("[{p}, 1, 2]")],
        ),
        ("/api/orders", vec![format!("[{h}]"), format!("[{h}, 1]")]),
        ("/api/admin/products", vec![r#"["x", 1, 1]"#.to_owned()]),
        (
            restock.as_str(),
            vec!["[5]".to_owned(), "[5, 1]".to_owned()],
        ),
    ];
    // Every route is tried before failing, so one run shows each route that accepts arrays.
    let mut wrong = Vec::new();
    for (path, bodies) in routes {
        let cases: Vec<Case> = bodies.into_iter().map(wrong_shape).collect();
        wrong.extend(misanswered(&app, path, &cases).await);
    }
    // The webhook is signed, but its body has the same shape rule.
    let body = format!(r#"["evt-array", {h}, "paid"]"#);
    let signed = sign(body.as_bytes(), now_unix_s());
    let reply = app.webhook_raw(body.as_bytes(), Some(&signed)).await;
    if reply.status != 422 || reply.body["code"] != "validation_failed" {
        wrong.push(format!("POST /api/payments/webhook {body}: {reply:?}"));
    }
    assert!(
        wrong.is_empty(),
        "array bodies were not refused with 422:\n{}",
        wrong.join("\n")
    );
    assert_same_rows(&before, &app.dump().await, "array bodies");
    app
}

/// Sends each case to `path` (with the admin token, which non-admin routes ignore) and checks
/// its problem; the rows must be the same afterwards.
async fn refuse_all(app: &TestApp, path: &str, cases: &[Case]) {
    let before = app.dump().await;
    let wrong = misanswered(app, path, cases).await;
    assert!(wrong.is_empty(), "misanswered:\n{}", wrong.join("\n"));
    assert_same_rows(
        &before,
        &app.dump().await,
        &format!("refused POSTs to {path}"),
    );
}

/// Sends each case to `path` and describes each answer that is not the case's problem.
async fn misanswered(app: &TestApp, path: &str, cases: &[Case]) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in cases {
        let mut request = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("the body is readable");
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let expected_field = case.field.is_none_or(|field| body["field"] == field);
        let as_expected = status == case.status
            && content_type == "application/problem+json"
            && body["code"] == case.code
            && body["message"].is_string()
            && expected_field;
        if !as_expected {
            wrong.push(format!(
                "POST {path} {}: expected {} {} (field {:?}), got {status} {content_type}: {text}",
                shorten(&case.body),
                case.status,
                case.code,
                case.field,
            ));
        }
    }
    wrong
}

/// The body as shown in a failure message: large ones cut short.
fn shorten(body: &str) -> String {
    match body.char_indices().nth(120) {
        Some((cut, _)) => format!(
            "{}… ({} bytes)",
            body.get(..cut).unwrap_or(body),
            body.len()
        ),
        None => body.to_owned(),
    }
}
