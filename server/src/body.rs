//! Request bodies: the JSON body filter every route decodes through, whose failures (too large,
//! not JSON, malformed, ill-typed) are answered as problems ([`crate::problem`]) with the same
//! status and code on every route, and [`parse_json`], which the webhook route and the fuzz
//! targets drive directly on raw bytes.

use std::future::{poll_fn, ready};
use std::pin::pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::error::Category;
use warp::{Filter, Rejection, Stream};

use crate::problem::{BODY_BYTES_MAX, Problem, truncated};

/// Extracts a JSON body as `T`: [`json_bytes`] followed by [`parse_json`].
///
/// Rejects with a [`ProblemRejection`](crate::problem::ProblemRejection): 413 `payload_too_large` over [`BODY_BYTES_MAX`] bytes
/// (declared or actually sent), 415 `unsupported_media_type` unless the content type is JSON,
/// 400 `malformed_json` for invalid JSON, 422 `validation_failed` (with `field` when known)
/// for JSON of the wrong shape.
pub fn json_body<T: DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    json_bytes().and_then(|body: Bytes| ready(parse_json::<T>(&body).map_err(Rejection::from)))
}

/// Extracts the raw bytes of a JSON body, for routes that must see the body exactly as sent
/// before parsing it (the payment webhook computes its signature over these bytes).
///
/// Checks, in order: a declared `Content-Length` over [`BODY_BYTES_MAX`] (413, before reading
/// anything); the content type (415); then reads the body, refusing it (413) as soon as more
/// than [`BODY_BYTES_MAX`] bytes arrive. The second limit is the one that holds: a chunked
/// HTTP/1.1 body or an HTTP/2 body has no `Content-Length`, and `warp::body::bytes()` would
/// buffer it whole, however large.
pub fn json_bytes() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    declared_length_within_limit()
        .and(json_content_type())
        .and(warp::body::stream())
        .and_then(|body| read_capped(body, BODY_BYTES_MAX))
}

/// Parses `body` as JSON into `T`.
///
/// # Errors
/// 400 `malformed_json` when `body` is not one syntactically valid JSON value (including an
/// empty body and trailing characters); 422 `validation_failed` when it is valid JSON that
/// does not fit `T` (wrong type, missing or unknown field, integer out of range), with a
/// `field` member such as `qty` or `items[1].qty` when the position names one.
// The error path is cold (one problem per bad request); boxing it would only add noise.
#[allow(clippy::result_large_err)]
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    // Syntax is checked over the whole body first: serde_json reports the first error it
    // meets, so `{"qty":"x", oops` would otherwise be called ill-typed (422) when it is not
    // even JSON (400).
    if let Err(err) = serde_json::from_slice::<IgnoredAny>(body) {
        return Err(Problem::malformed_json(truncated(err.to_string())));
    }
    // Every body of this API is an object. serde's derived structs also accept an array read
    // by position, which would let `[1, 1]` place a hold; refuse anything but an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::validation_failed(
            "the body must be a JSON object",
            None,
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|err| {
        let field = field_path(&err);
        let err = err.into_inner();
        match err.classify() {
            Category::Data => {
                let message = message_without_position(&err);
                let field = with_named_field(field, &message);
                Problem::validation_failed(truncated(in_api_words(&message)), field)
            }
            Category::Syntax | Category::Eof | Category::Io => {
                Problem::malformed_json(truncated(err.to_string()))
            }
        }
    })?;
    // Only blanks can follow: the whole body passed the syntax check above.
    deserializer
        .end()
        .map_err(|err| Problem::malformed_json(truncated(err.to_string())))?;
    Ok(value)
}

/// 413 before reading the body when its declared length is already over the limit. A missing
/// header is fine here (chunked or HTTP/2 body); [`read_capped`] enforces the limit then.
fn declared_length_within_limit() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(|length: Option<u64>| {
            ready(match length {
                Some(length) if length > BODY_BYTES_MAX => {
                    Err(Rejection::from(Problem::payload_too_large()))
                }
                _ => Ok(()),
            })
        })
        .untuple_one()
}

/// 415 unless the `Content-Type` is JSON. Unlike `warp::body::json()`, a missing header is
/// refused too: guessing would accept form posts and `text/plain` bodies that browsers send
/// cross-origin without a CORS preflight.
fn json_content_type() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        // Only a value that is not visible ASCII fails here; it cannot name JSON, so it gets
        // the same 415 as any other non-JSON type rather than a 400 about the header.
        .or_else(|_| ready(Ok::<_, Rejection>((None,))))
        .and_then(|content_type: Option<String>| {
            ready(if content_type.as_deref().is_some_and(is_json_media_type) {
                Ok(())
            } else {
                Err(Rejection::from(Problem::unsupported_media_type()))
            })
        })
        .untuple_one()
}

/// `application/json` or `application/<anything>+json` (RFC 6839), case-insensitive, with
/// an optional `charset` parameter that must be UTF-8 (RFC 8259 requires it); other
/// parameters are ignored. A value that is not a media type by RFC 9110's grammar (a
/// parameter without a value, say) names no JSON either.
fn is_json_media_type(value: &str) -> bool {
    let Ok(media_type) = value.parse::<mime::Mime>() else {
        return false;
    };
    let json = media_type.type_() == mime::APPLICATION
        && (media_type.subtype() == mime::JSON || media_type.suffix() == Some(mime::JSON));
    json && media_type
        .get_param(mime::CHARSET)
        .is_none_or(|charset| charset == mime::UTF_8)
}

/// Collects `body`, failing with 413 as soon as it exceeds `limit` bytes, so an oversized
/// body is never buffered beyond the limit plus one chunk.
async fn read_capped<S, B>(body: S, limit: u64) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(|err| {
            // The client went away or broke the framing; nobody may be left to read this.
            tracing::debug!(error = %err, "request body read failed");
            Problem::new(
                400,
                "body_read_failed",
                "The request body could not be read.",
            )
        })?;
        if chunk.remaining() > limit.saturating_sub(collected.len()) {
            return Err(Problem::payload_too_large().into());
        }
        collected.put(chunk);
    }
    Ok(collected.freeze())
}

/// serde_json's message without its ` at line L column C` suffix: a 422 names the field
/// instead, which means more to a client than a byte position.
fn message_without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => message,
    }
}

/// The path serde was at when the error happened, e.g. `items[1].qty`; `None` at the top level.
fn field_path(err: &serde_path_to_error::Error<serde_json::Error>) -> Option<String> {
    let path = err.path();
    (path.iter().next().is_some()).then(|| path.to_string())
}

/// `path` extended by the field a message names, when serde reports the error at the object
/// that lacks or repeats the field rather than at the field itself: `missing field `qty``
/// and `duplicate field `qty`` are raised by the object once its keys are read.
fn with_named_field(path: Option<String>, message: &str) -> Option<String> {
    let named = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| backticked_after(message, prefix));
    match (path, named) {
        (Some(path), Some(name)) => Some(format!("{path}.{name}")),
        (None, Some(name)) => Some(name.to_owned()),
        (path, None) => path,
    }
}

/// The text between `prefix` and the next backtick in `message`, e.g. the field name in
/// serde's "missing field `qty`".
fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name)
}

/// serde's message with its Rust type names said as the API's ranges: "expected u32" becomes
/// "expected a whole number from 0 to 4294967295".
fn in_api_words(message: &str) -> String {
    const TYPES: [(&str, &str); 8] = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("i8", "a whole number from -128 to 127"),
        ("i16", "a whole number from -32768 to 32767"),
        ("i32", "a whole number from -2147483648 to 2147483647"),
        (
            "i64",
            "a whole number from -9223372036854775808 to 9223372036854775807",
        ),
    ];
    let mut text = message.to_owned();
    for (rust, words) in TYPES {
        let rust = format!("expected {rust}");
        if text.ends_with(&rust) || text.contains(&format!("{rust} ")) {
            text = text.replace(&rust, &format!("expected {words}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use serde::Deserialize;

    use std::convert::Infallible;

    use serde_json::Value;
    use warp::Reply;
    use warp::http::header::CONTENT_TYPE;

    use super::*;
    use crate::problem::{DETAIL_BYTES_MAX, PROBLEM_CONTENT_TYPE, recover};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct QtyBody {
        qty: u32,
    }

    #[derive(Debug, Deserialize)]
    struct ItemsBody {
        #[allow(dead_code)] // Only the decoding is under test.
        items: Vec<QtyBody>,
    }

    /// `POST /api/qty` echoing the decoded qty, behind the shared `recover`.
    fn qty_route() -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
        warp::path!("api" / "qty")
            .and(warp::post())
            .and(json_body::<QtyBody>())
            .map(|body: QtyBody| warp::reply::json(&body.qty))
            .recover(recover)
    }

    async fn post_qty(content_type: Option<&str>, body: impl AsRef<[u8]>) -> (u16, Value) {
        let mut request = warp::test::request()
            .method("POST")
            .path("/api/qty")
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.reply(&qty_route()).await;
        let status = response.status().as_u16();
        let json = serde_json::from_slice(response.body()).expect("every answer is JSON");
        (status, json)
    }

    async fn post_json(body: &str) -> (u16, Value) {
        post_qty(Some("application/json"), body).await
    }

    #[tokio::test]
    async fn valid_body_is_decoded() {
        assert_eq!(post_json(r#"{"qty":3}"#).await, (200, Value::from(3)));
    }

    #[tokio::test]
    async fn bodies_that_are_not_objects_are_422_even_when_they_would_decode_by_position() {
        for body in ["[3]", " [3, 4]", "3", "\"qty\"", "null", "true"] {
            let (status, problem) = post_json(body).await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(problem["code"], "validation_failed", "{body}");
        }
    }

    #[tokio::test]
    async fn problem_responses_are_problem_json_with_code_and_message() {
        let response = warp::test::request()
            .method("POST")
            .path("/api/qty")
            .header("content-type", "application/json")
            .body("{bad")
            .reply(&qty_route())
            .await;
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        let body: Value = serde_json::from_slice(response.body()).expect("problem is JSON");
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Bad Request");
        assert_eq!(body["status"], 400);
        assert_eq!(body["code"], "malformed_json");
        assert_eq!(body["message"], body["detail"]);
    }

    #[tokio::test]
    async fn body_at_the_limit_is_accepted() {
        let prefix = r#"{"qty":3}"#;
        let padding = usize::try_from(BODY_BYTES_MAX).expect("fits") - prefix.len();
        let body = format!("{prefix}{}", " ".repeat(padding));
        assert_eq!(post_json(&body).await, (200, Value::from(3)));
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413() {
        let body = format!(r#"{{"qty":3}}{}"#, " ".repeat(16 * 1024));
        let (status, problem) = post_json(&body).await;
        assert_eq!(status, 413);
        assert_eq!(problem["code"], "payload_too_large");
        assert_eq!(problem["limit_bytes"], BODY_BYTES_MAX);
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_413_before_the_content_type_check() {
        let response = warp::test::request()
            .method("POST")
            .path("/api/qty")
            .header("content-type", "text/plain")
            .body("x")
            .header("content-length", (BODY_BYTES_MAX + 1).to_string())
            .reply(&qty_route())
            .await;
        assert_eq!(response.status(), 413);
    }

    #[tokio::test]
    async fn non_json_content_types_are_415() {
        for content_type in [
            Some("text/plain"),
            None,
            Some("application/x-www-form-urlencoded"),
            Some("application/jsonx"),
            Some("application/+json"),
            Some("json"),
            Some(""),
            Some("application/json; charset=iso-8859-1"),
        ] {
            let (status, problem) = post_qty(content_type, r#"{"qty":3}"#).await;
            assert_eq!(status, 415, "content type {content_type:?}");
            assert_eq!(problem["code"], "unsupported_media_type");
        }
    }

    #[tokio::test]
    async fn json_content_type_variants_are_accepted() {
        for content_type in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "Application/JSON",
            "application/merge-patch+json",
            "application/vnd.flashsale.v1+json; charset=utf-8",
        ] {
            let (status, _) = post_qty(Some(content_type), r#"{"qty":3}"#).await;
            assert_eq!(status, 200, "content type {content_type:?}");
        }
    }

    #[tokio::test]
    async fn malformed_json_is_400() {
        for body in [
            "{bad",
            "",
            "{\"qty\":3",
            "{\"qty\":3} trailing",
            "{\"qty\":\"x\", oops",
        ] {
            let (status, problem) = post_json(body).await;
            assert_eq!(status, 400, "body {body:?}");
            assert_eq!(problem["code"], "malformed_json", "body {body:?}");
        }
    }

    #[tokio::test]
    async fn ill_typed_values_are_422_naming_the_field() {
        for body in [
            r#"{"qty":"x"}"#,
            r#"{"qty":-1}"#,
            r#"{"qty":1.5}"#,
            r#"{"qty":99999999999}"#,
            r#"{"qty":null}"#,
            "{\n  \"qty\":\n    true\n}",
        ] {
            let (status, problem) = post_json(body).await;
            assert_eq!(status, 422, "body {body:?}");
            assert_eq!(problem["code"], "validation_failed", "body {body:?}");
            assert_eq!(problem["field"], "qty", "body {body:?}");
        }
    }

    #[tokio::test]
    async fn validation_details_say_ranges_not_rust_types() {
        for (body, detail) in [
            (
                r#"{"qty":-1}"#,
                "invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"qty":4294967296}"#,
                "invalid value: integer `4294967296`, expected a whole number from 0 to 4294967295",
            ),
        ] {
            let (status, problem) = post_json(body).await;
            assert_eq!(status, 422, "body {body:?}");
            assert_eq!(problem["detail"], detail, "body {body:?}");
        }
    }

    #[tokio::test]
    async fn validation_detail_has_no_byte_position() {
        let (_, problem) = post_json(r#"{"qty":"x"}"#).await;
        assert_eq!(
            problem["detail"],
            r#"invalid type: string "x", expected a whole number from 0 to 4294967295"#
        );
    }

    #[tokio::test]
    async fn missing_field_is_422_naming_it() {
        let (status, problem) = post_json("{}").await;
        assert_eq!(status, 422);
        assert_eq!(problem["field"], "qty");
    }

    #[tokio::test]
    async fn unknown_field_is_422_naming_it() {
        let (status, problem) = post_json(r#"{"qty":1,"extra":2}"#).await;
        assert_eq!(status, 422);
        assert_eq!(problem["field"], "extra");
    }

    #[tokio::test]
    async fn wrong_top_level_type_is_422_without_a_field() {
        let (status, problem) = post_json("[]").await;
        assert_eq!(status, 422);
        assert!(problem.get("field").is_none(), "{problem}");
    }

    #[test]
    fn nested_fields_are_named_by_path() {
        let cases = [
            (r#"{"items":[{"qty":1},{"qty":"x"}]}"#, "items[1].qty"),
            (r#"{"items":[{"qty":1},{}]}"#, "items[1].qty"),
            (r#"{"items":[{"qty":1,"x\"y":2}]}"#, "items[0].x\"y"),
            (r#"{"items":{}}"#, "items"),
        ];
        for (body, field) in cases {
            let problem = parse_json::<ItemsBody>(body.as_bytes()).expect_err(body);
            assert_eq!(problem.status, 422, "body {body}");
            let named = problem.extra.as_ref().and_then(|extra| extra.get("field"));
            assert_eq!(named, Some(&Value::from(field)), "body {body}");
        }
    }

    #[test]
    fn the_field_named_is_the_one_at_fault_whatever_comes_around_it() {
        // A list where a number belongs is about `qty`, not about an element in it; a missing
        // or unknown field is named in the element it belongs to, across lines and escapes.
        let field = |problem: Problem| problem.extra.and_then(|extra| extra.get("field").cloned());
        for body in [r#"{"qty":[1]}"#, r#"{"qty":{"n":1}}"#] {
            let problem = parse_json::<QtyBody>(body.as_bytes()).expect_err(body);
            assert_eq!(field(problem), Some(Value::from("qty")), "body {body}");
        }
        let body = r#"{"items":[{"qty":[]}]}"#;
        let problem = parse_json::<ItemsBody>(body.as_bytes()).expect_err(body);
        assert_eq!(
            field(problem),
            Some(Value::from("items[0].qty")),
            "body {body}"
        );
        for (body, want) in [
            (r#"{"items":[{},{"qty":1}]}"#, "items[0].qty"),
            ("{\"items\":[{\"qty\":\"x\"},{\"qty\":1}]}", "items[0].qty"),
            ("{\n\"items\":[{},\n{\"qty\":1}]}", "items[0].qty"),
            (
                "{\n\"items\":[{\"qty\":1},\n{}\n,{\"qty\":1}]}",
                "items[1].qty",
            ),
            (
                "{\"items\":[{\"qty\":1,\"x\":2},{\"qty\":1}]}",
                "items[0].x",
            ),
            ("{\"items\":[{\"qty\":1}], \"items\":[]}", "items"),
            ("{\"items\":[{\"qty\":1e3}]}", "items[0].qty"),
            ("{\"items\":[{\"qty\":\"\\u00e9\\u00e9\"}]}", "items[0].qty"),
            ("{\"items\":[{\"qty\":\"ééé\"},{}]}", "items[0].qty"),
        ] {
            let problem = parse_json::<ItemsBody>(body.as_bytes()).expect_err(body);
            assert_eq!(field(problem), Some(Value::from(want)), "body {body}");
        }
    }

    #[tokio::test]
    async fn malformed_media_types_are_415() {
        for content_type in [
            "application/json; charset",
            "application/json; =utf-8",
            "application/json; charset=\"utf-8",
            "application/json;;",
        ] {
            let (status, problem) = post_qty(Some(content_type), r#"{"qty":3}"#).await;
            assert_eq!(status, 415, "content type {content_type:?}");
            assert_eq!(problem["code"], "unsupported_media_type");
        }
    }

    #[test]
    fn long_details_are_truncated_on_a_char_boundary() {
        let body = format!(r#"{{"qty":"{}"}}"#, "é".repeat(1000));
        let problem = parse_json::<QtyBody>(body.as_bytes()).expect_err("string is not u32");
        assert!(problem.detail.len() <= DETAIL_BYTES_MAX + '…'.len_utf8());
    }

    #[tokio::test]
    async fn unknown_path_is_404_through_recover() {
        let response = warp::test::request()
            .path("/nope")
            .reply(&qty_route())
            .await;
        assert_eq!(response.status(), 404);
        let problem: Value = serde_json::from_slice(response.body()).expect("problem is JSON");
        assert_eq!(problem["code"], "not_found");
    }

    #[tokio::test]
    async fn wrong_method_is_405_through_recover() {
        let response = warp::test::request()
            .path("/api/qty")
            .reply(&qty_route())
            .await;
        assert_eq!(response.status(), 405);
        let problem: Value = serde_json::from_slice(response.body()).expect("problem is JSON");
        assert_eq!(problem["code"], "method_not_allowed");
    }

    /// Serves `qty_route` on a real socket, sends `body` with `Transfer-Encoding: chunked`
    /// (no `Content-Length`, which `warp::test` always sets) and returns the status code.
    async fn post_chunked(body: Vec<u8>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("bound address");
        let server = tokio::spawn(warp::serve(qty_route()).incoming(listener).run());
        let status = tokio::task::spawn_blocking(move || send_chunked(address, &body))
            .await
            .expect("client thread");
        server.abort();
        status
    }

    fn send_chunked(address: SocketAddr, body: &[u8]) -> u16 {
        let mut request =
            b"POST /api/qty HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                .to_vec();
        for chunk in body.chunks(1024) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        // The server may answer 413 and close before reading everything; that is the point.
        let _ = stream.write_all(&request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let head = String::from_utf8_lossy(&response);
        head.get(9..12)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunked_body_within_the_limit_is_accepted() {
        assert_eq!(
            post_chunked(format!(r#"{{"qty":3}}{}"#, " ".repeat(4000)).into()).await,
            200
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunked_body_over_the_limit_is_413() {
        let body = format!(r#"{{"qty":3}}{}"#, " ".repeat(20 * 1024));
        assert_eq!(post_chunked(body.into()).await, 413);
    }
}
