//! HTTP as RFC 9110 has it: HEAD wherever GET is served, the `Bearer` scheme in any case, one
//! URL per resource (a trailing slash is another path, 404), and an `X-Request-Id` rule that
//! `openapi.json` declares and the server applies alike.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Db, TestApp, id, spawn_app};
use flashsale_server::api::{OPENAPI_JSON, ROUTES};

on_both_databases!(
    head_answers_every_get_route_like_get_without_a_body,
    the_bearer_scheme_is_case_insensitive,
    a_trailing_slash_is_another_path_and_404,
    the_request_id_rule_is_declared_and_applied_alike,
);

/// `path` with its `{id}` filled in by `id`.
fn concrete(path: &str, id: u64) -> String {
    path.replace("{id}", &id.to_string())
}

async fn head_answers_every_get_route_like_get_without_a_body(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 3).await;
    let hold = app.hold(product, 1).await;
    let order = id(app.place_order(hold).await.expect_status(201), "order_id");
    let gets = ROUTES.iter().filter(|(_, method)| *method == "GET");
    for (template, _) in gets {
        let resource = match *template {
            "/api/holds/{id}" => hold,
            "/api/orders/{id}" => order,
            _ => product,
        };
        let path = concrete(template, resource);
        let send = |method: Method| {
            app.client
                .request(method, app.url(&path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
        };
        let get = send(Method::GET).await.expect("GET is answered");
        let head = send(Method::HEAD).await.expect("HEAD is answered");
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {path}"
        );
        let body = head.bytes().await.expect("a body");
        assert!(body.is_empty(), "HEAD {path} has no body");
    }
    let refused = app
        .client
        .delete(app.url("/healthz"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), 405);
    let allow = refused.headers().get("allow").and_then(|v| v.to_str().ok());
    assert_eq!(allow, Some("GET, HEAD"));
    app
}

async fn the_bearer_scheme_is_case_insensitive(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = app
            .client
            .post(app.url("/api/admin/products"))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .json(&json!({"name": "Any case", "price_cents": 100, "stock": 1}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 201, "{scheme}");
    }
    app
}

async fn a_trailing_slash_is_another_path_and_404(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let product = app.create_product(100, 3).await;
    for path in [
        format!("/api/products/{product}/"),
        "/healthz/".to_owned(),
        "/api/openapi.json/".to_owned(),
    ] {
        app.get(&path).await.expect_problem(404, "not_found");
    }
    let text = app.scrape().await;
    assert!(
        text.lines()
            .any(|l| l == r#"flashsale_http_requests_total{route="other",status="404"} 3"#),
        "{text}"
    );
    app
}

/// The schema `openapi.json` gives the answers' `X-Request-Id` header: the ids the server keeps
/// from a client; the request header is declared on every operation.
fn declared_request_id_schema() -> Value {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("JSON");
    let parameter = &doc["components"]["parameters"]["X-Request-Id"];
    assert_eq!(parameter["in"], "header", "{parameter}");
    let reference = json!({"$ref": "#/components/parameters/X-Request-Id"});
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let parameters = operation["parameters"].as_array();
            assert!(
                parameters.is_some_and(|p| p.contains(&reference)),
                "{method} {path} declares X-Request-Id"
            );
        }
    }
    doc["components"]["headers"]["X-Request-Id"]["schema"].clone()
}

async fn the_request_id_rule_is_declared_and_applied_alike(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    let schema = declared_request_id_schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let long = "x".repeat(129);
    for given in [
        "abc-123_x.y",
        "trace:42",
        "has space",
        "semi;colon",
        "quote\"d",
        "a/b",
        &long,
        "Z",
    ] {
        let answer = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", given)
            .send()
            .await
            .expect("an answer");
        let echoed = answer
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let declared_valid = validator.is_valid(&json!(given));
        assert_eq!(
            echoed == given,
            declared_valid,
            "{given:?}: kept as the document says ({schema})"
        );
    }
    app
}
