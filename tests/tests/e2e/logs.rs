//! What an operator reads: one log line per request with its method, route, status, latency and
//! request id; the id accepted from the client or made up, echoed in `X-Request-Id` and in
//! problem bodies; no terminal colours in a log that is not a terminal.

use crate::harness::{Db, TestApp, spawn_app};

on_both_databases!(every_request_is_logged_once_under_its_request_id);

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
