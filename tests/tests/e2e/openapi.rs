//! The contract's own tests: the checker refuses what `server/openapi.json` does not promise, the
//! server serves that document, and the HTTP layer's own refusals are documented problems.

use serde_json::{Value, json};

use crate::contract::{Answer, DOCUMENT, check, validator};

/// `GET /api/products/1` answered so.
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
