//! The OpenAPI document as a contract the whole suite checks: every answer any test receives
//! through the harness is matched to its operation in `server/openapi.json` and must have a
//! documented status, the documented content type, an `X-Request-Id`, and a body valid against
//! the documented schema. A test that provokes an undocumented answer fails, so the document
//! cannot drift from the server without a test saying so.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use flashsale_server::routes::OPENAPI_JSON;
use serde_json::{Value, json};

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(OPENAPI_JSON).unwrap_or_else(|e| panic!("openapi.json: {e}"))
});

/// Compiled validators by JSON pointer of the schema in the document.
static VALIDATORS: LazyLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What one answer looked like on the wire.
pub struct Answer<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub content_type: &'a str,
    pub request_id: Option<&'a str>,
    pub body: &'a Value,
}

/// The document's path template matching `path` (ids as any one segment).
fn template_of(path: &str) -> Option<&'static str> {
    let paths = DOCUMENT["paths"].as_object()?;
    let wanted: Vec<&str> = path.split('/').collect();
    paths.keys().map(String::as_str).find(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == wanted.len()
            && parts
                .iter()
                .zip(&wanted)
                .all(|(t, w)| (t.starts_with('{') && !w.is_empty()) || t == w)
    })
}

/// Follows a `$ref` within the document, or returns `value` as it is.
fn resolve(value: &'static Value) -> &'static Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => DOCUMENT
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("openapi.json: dangling $ref {pointer}")),
        None => value,
    }
}

/// The response the document promises, and the JSON pointer naming it for messages.
fn documented(answer: &Answer<'_>) -> Result<(&'static Value, String), String> {
    let status = answer.status.to_string();
    let Some(template) = template_of(answer.path) else {
        if answer.status == 404 {
            return Ok((
                resolve(&DOCUMENT["components"]["responses"]["NotFound"]),
                "#/components/responses/NotFound".into(),
            ));
        }
        return Err(format!(
            "{} is no documented path, yet answered {status}",
            answer.path
        ));
    };
    let method = answer.method.to_ascii_lowercase();
    let Some(operation) = DOCUMENT["paths"][template].get(&method) else {
        if answer.status == 405 {
            return Ok((
                resolve(&DOCUMENT["components"]["responses"]["MethodNotAllowed"]),
                "#/components/responses/MethodNotAllowed".into(),
            ));
        }
        return Err(format!(
            "{method} {template} is not documented, yet answered {status}"
        ));
    };
    match operation["responses"].get(&status) {
        Some(response) => Ok((resolve(response), format!("{method} {template} {status}"))),
        None => Err(format!(
            "{method} {template} answered {status}, which its responses do not document"
        )),
    }
}

fn validator(pointer: &str, schema: &Value) -> Arc<jsonschema::Validator> {
    let mut cache = VALIDATORS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = cache.entry(pointer.to_owned()).or_insert_with(|| {
        // The schema with the document's components beside it, so `#/components/...` resolves.
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": DOCUMENT["components"],
        });
        let compiled = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("openapi.json: the schema of {pointer} is invalid: {e}"));
        Arc::new(compiled)
    });
    Arc::clone(entry)
}

/// Checks one answer against the document.
///
/// # Errors
/// What is undocumented or does not fit, in words.
pub fn check(answer: &Answer<'_>) -> Result<(), String> {
    let (response, name) = documented(answer)?;
    if answer.request_id.is_none_or(str::is_empty) {
        return Err(format!("{name}: no X-Request-Id"));
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return Ok(());
    };
    let media = answer
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let Some(media_type) = content.get(media) else {
        let documented: Vec<&String> = content.keys().collect();
        return Err(format!(
            "{name}: content type {media:?}, documented {documented:?}"
        ));
    };
    if media.ends_with("json") {
        let schema = &media_type["schema"];
        let pointer = format!("{name} {media}");
        let validator = validator(&pointer, schema);
        let errors: Vec<String> = validator
            .iter_errors(answer.body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "{name}: the body does not fit its schema: {}; body {}",
                errors.join("; "),
                answer.body
            ));
        }
    }
    Ok(())
}

/// `GET /api/products/1` answered so.
#[cfg(test)]
fn product_answer<'a>(status: u16, content_type: &'a str, body: &'a Value) -> Answer<'a> {
    Answer {
        method: "GET",
        path: "/api/products/1",
        status,
        content_type,
        request_id: Some("r1"),
        body,
    }
}

/// The checker itself: it refuses what the document does not promise.
#[test]
fn the_contract_refuses_undocumented_answers() {
    let answer = product_answer;
    let product = json!({"id": 1, "name": "Lamp", "price_cents": 10, "stock": 3, "available": 2});
    assert_eq!(check(&answer(200, "application/json", &product)), Ok(()));
    let mut missing = product.clone();
    missing.as_object_mut().map(|o| o.remove("available"));
    let refused = check(&answer(200, "application/json", &missing)).expect_err("missing field");
    assert!(refused.contains("available"), "{refused}");
    let teapot = check(&answer(418, "application/json", &product)).expect_err("418");
    assert!(teapot.contains("do not document"), "{teapot}");
    let text = check(&answer(200, "text/plain", &product)).expect_err("text/plain");
    assert!(text.contains("content type"), "{text}");
    let problem = json!({"type": "about:blank",
        "title": "Not Found", "status": 404, "detail": "product 1 not found",
        "code": "product_not_found", "message": "product 1 not found"});
    assert_eq!(
        check(&answer(404, "application/problem+json", &problem)),
        Ok(())
    );
    let mut unknown = problem.clone();
    unknown["code"] = json!("no_such_code");
    assert!(check(&answer(404, "application/problem+json", &unknown)).is_err());
    let no_id = Answer {
        request_id: None,
        ..answer(200, "application/json", &product)
    };
    assert!(check(&no_id).is_err());
    // A path the document does not have is only ever a 404.
    let stray = Answer {
        path: "/nowhere",
        ..answer(404, "application/problem+json", &problem)
    };
    assert_eq!(check(&stray), Ok(()));
    assert!(
        check(&Answer {
            status: 200,
            ..stray
        })
        .is_err()
    );
}

#[tokio::test]
async fn the_server_serves_its_openapi_document() {
    crate::harness::run(crate::harness::Db::Sqlite, async |db| {
        let app = crate::harness::spawn_app(db, &[]).await;
        let reply = app.get("/api/openapi.json").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        assert_eq!(
            reply.body, *DOCUMENT,
            "the document served is the one checked"
        );
        app
    })
    .await;
}

/// Sends raw bytes and reads the answer until the server closes the connection.
async fn raw(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    socket.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let read = socket.read_to_end(&mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the server answers and closes")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn requests_the_http_layer_refuses_get_problem_bodies() {
    crate::harness::run(crate::harness::Db::Sqlite, async |db| {
        let app = crate::harness::spawn_app(db, &[]).await;
        let mut many_headers = b"GET /healthz HTTP/1.1\r\nhost: x\r\n".to_vec();
        for n in 0..150 {
            many_headers.extend_from_slice(format!("x-h{n}: v\r\n").as_bytes());
        }
        many_headers.extend_from_slice(b"\r\n");
        let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
        let cases: [(&[u8], &str, &str); 5] = [
            (b"GET /healthz HTTP/9.9\r\n\r\n", "400", "bad_request"),
            (
                b"G@T /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
                "400",
                "bad_request",
            ),
            (
                b"GET /healthz HTTP/1.1\r\nbad header\r\n\r\n",
                "400",
                "bad_request",
            ),
            (&many_headers, "431", "header_fields_too_large"),
            (long_target.as_bytes(), "414", "uri_too_long"),
        ];
        for (request, status, code) in cases {
            let answer = raw(&app.address, request).await;
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            let head = head.to_ascii_lowercase();
            assert!(
                head.contains("content-type: application/problem+json"),
                "{answer}"
            );
            assert!(head.contains("x-request-id: "), "{answer}");
            let problem: Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
            assert_eq!(problem["code"], code, "{answer}");
            let schema = &DOCUMENT["components"]["schemas"]["Problem"];
            let valid = validator("#/components/schemas/Problem", schema);
            assert!(valid.is_valid(&problem), "{problem}");
        }
        // The server lives on.
        app.get("/healthz").await.expect_status(200);
        app
    })
    .await;
}
