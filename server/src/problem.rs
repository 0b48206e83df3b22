//! Errors on the wire: RFC 9457 `application/problem+json` bodies, and the one `recover`
//! function that turns every warp rejection into such a body. Every problem carries a stable
//! `code` member that clients can match on, and a `message` member equal to `detail` because
//! the original Laravel service answered with `message` and existing clients read it. The
//! request bodies that fail to decode are the most common client errors; their problems are
//! made in [`crate::body`].

use std::borrow::Cow;
use std::convert::Infallible;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use warp::http::header::CONTENT_TYPE;
use warp::http::{HeaderValue, StatusCode};
use warp::{Rejection, Reply};

/// The media type of every error response (RFC 9457, section 3).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The RFC 9457 `type` for problems that need no more semantics than their status code (the
/// stable `code` member distinguishes them); with it, `title` is the status's reason phrase.
pub const ABOUT_BLANK: &str = "about:blank";

/// Largest request body any route accepts, in bytes. The API's bodies are a few small fields,
/// so 16 KiB is generous for clients and keeps a flood of large bodies from costing memory.
pub const BODY_BYTES_MAX: u64 = 16 * 1024;

/// Longest `detail` we send for a body that failed to decode. serde's messages quote the
/// offending value, which may be most of a 16 KiB body; the client already has that value.
pub(crate) const DETAIL_BYTES_MAX: usize = 256;

/// Member names the problem itself writes; `extra` members with these names are dropped so a
/// handler can never send a body whose `status` disagrees with the response's status.
const RESERVED_MEMBERS: [&str; 6] = ["type", "title", "status", "detail", "code", "message"];

/// One RFC 9457 problem. Serializes as
/// `{"type", "title", "status", "detail", "code", "message", ...extra}`.
///
/// Build it with [`Problem::new`] and the `with_*` methods; answer it directly (it is a
/// [`Reply`]) or reject with it (`Err(problem.into())` in a handler) and let [`recover`] answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// HTTP status. A value that is not a valid status code is answered as 500.
    pub status: u16,
    /// Stable machine-readable code, e.g. `insufficient_stock`; part of the API contract.
    pub code: &'static str,
    /// RFC 9457 `type`: [`ABOUT_BLANK`] unless set with [`Problem::with_type`].
    pub type_uri: &'static str,
    /// Short human-readable summary of the problem type; not for this occurrence's details.
    pub title: Cow<'static, str>,
    /// Human-readable explanation of this occurrence; also sent as `message`.
    pub detail: String,
    /// Extension members merged at the top level, e.g. `available` or `field`.
    pub extra: Option<Map<String, Value>>,
}

impl Problem {
    /// A problem of type `about:blank` whose title is the status's reason phrase.
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Self {
        let title = StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Error");
        Self {
            status,
            code,
            type_uri: ABOUT_BLANK,
            title: Cow::Borrowed(title),
            detail: detail.into(),
            extra: None,
        }
    }

    /// Sets the RFC 9457 `type` (an absolute URI, e.g. `urn:flashsale:problem:...`) and the
    /// title that goes with it: a non-blank type should carry its own title.
    pub fn with_type(
        mut self,
        type_uri: &'static str,
        title: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.type_uri = type_uri;
        self.title = title.into();
        self
    }

    /// Adds an extension member at the top level of the body, replacing an earlier one with
    /// the same name. Names of the standard members (`status`, `code`, ...) are ignored.
    pub fn with_member(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra
            .get_or_insert_with(Map::new)
            .insert(name.into(), value.into());
        self
    }

    /// The status as a typed code; 500 if `status` is not a valid HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// 500 `internal`. The detail is deliberately generic: the cause goes to the log, never
    /// to the client.
    pub fn internal() -> Self {
        Self::new(500, "internal", "The server failed to handle the request.")
    }

    /// 400 `malformed_json`: the body is not syntactically valid JSON.
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(400, "malformed_json", detail)
    }

    /// 422 `validation_failed`, naming the offending field when it is known.
    pub fn validation_failed(detail: impl Into<String>, field: Option<String>) -> Self {
        let problem = Self::new(422, "validation_failed", detail);
        match field {
            Some(field) => problem.with_member("field", field),
            None => problem,
        }
    }

    /// 413 `payload_too_large`, stating the limit so a client knows what to send instead.
    pub fn payload_too_large() -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("The request body is larger than {BODY_BYTES_MAX} bytes."),
        )
        .with_member("limit_bytes", BODY_BYTES_MAX)
    }

    /// 415 `unsupported_media_type`: the body is not declared as JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            415,
            "unsupported_media_type",
            "The request body must be JSON, sent with Content-Type: application/json.",
        )
    }

    /// Wraps the problem in a rejection that [`recover`] answers unchanged.
    pub fn into_rejection(self) -> Rejection {
        warp::reject::custom(ProblemRejection(self))
    }
}

impl From<Problem> for Rejection {
    fn from(problem: Problem) -> Self {
        problem.into_rejection()
    }
}

impl Serialize for Problem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", self.type_uri)?;
        map.serialize_entry("title", &self.title)?;
        map.serialize_entry("status", &self.status_code().as_u16())?;
        map.serialize_entry("detail", &self.detail)?;
        map.serialize_entry("code", self.code)?;
        map.serialize_entry("message", &self.detail)?;
        for (name, value) in self.extra.iter().flatten() {
            if !RESERVED_MEMBERS.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl Reply for Problem {
    fn into_response(self) -> warp::reply::Response {
        // The request's id, so a client's report of a problem finds the server's log lines.
        let problem = match crate::request_log::current() {
            Some(id) => self.with_member("request_id", id),
            None => self,
        };
        problem.answer()
    }
}

impl Problem {
    fn answer(self) -> warp::reply::Response {
        let status = self.status_code();
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            // Unreachable with string keys and `Value`s, but an error path must not panic.
            Err(err) => {
                tracing::error!(error = %err, code = self.code, "problem failed to serialize");
                br#"{"type":"about:blank","status":500,"code":"internal"}"#.to_vec()
            }
        };
        let mut response = warp::reply::Response::new(body.into());
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        response
    }
}

/// A rejection carrying a [`Problem`], for handlers and filters that refuse a request with a
/// specific status and code. [`recover`] answers it exactly as built.
#[derive(Debug)]
pub struct ProblemRejection(pub Problem);

impl warp::reject::Reject for ProblemRejection {}

/// Turns any rejection into a problem+json reply; install it once with `.recover(recover)` on
/// the whole route tree.
///
/// A [`ProblemRejection`] wins over everything else: it means a route matched and refused the
/// request on purpose, while the other rejections in a combined one come from routes that
/// did not match. warp's own rejections map to stable codes: `not_found` (404),
/// `method_not_allowed` (405), `payload_too_large` (413), `unsupported_media_type` (415),
/// `length_required` (411), `malformed_json`, `missing_header`, `invalid_header`,
/// `invalid_query`, `missing_cookie` (400) and `cors_forbidden` (403). Anything else is a bug
/// on our side: logged at error level and answered 500 `internal` without details.
///
/// Routes should match the path before the method: warp reports 405 whenever some route's
/// method filter refused, even if no route has that path.
pub async fn recover(rejection: Rejection) -> Result<impl Reply, Infallible> {
    Ok(problem_for(&rejection))
}

fn problem_for(rejection: &Rejection) -> Problem {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingCookie,
        MissingHeader, PayloadTooLarge, UnsupportedMediaType,
    };

    if let Some(ProblemRejection(problem)) = rejection.find() {
        return problem.clone();
    }
    if rejection.is_not_found() {
        return Problem::new(404, "not_found", "No resource exists at this path.");
    }
    // Ordered from the most to the least specific, as warp itself prefers them: a route that
    // got as far as the body outranks one that only refused the method.
    if rejection.find::<PayloadTooLarge>().is_some() {
        return Problem::payload_too_large();
    }
    if rejection.find::<UnsupportedMediaType>().is_some() {
        return Problem::unsupported_media_type();
    }
    if rejection.find::<LengthRequired>().is_some() {
        return Problem::new(
            411,
            "length_required",
            "A Content-Length header is required.",
        );
    }
    if let Some(err) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        return Problem::malformed_json(truncated(err.to_string()));
    }
    if let Some(err) = rejection.find::<MissingHeader>() {
        return Problem::new(
            400,
            "missing_header",
            format!("Missing header {}.", err.name()),
        )
        .with_member("header", err.name());
    }
    if let Some(err) = rejection.find::<InvalidHeader>() {
        return Problem::new(
            400,
            "invalid_header",
            format!("Invalid header {}.", err.name()),
        )
        .with_member("header", err.name());
    }
    if rejection.find::<InvalidQuery>().is_some() {
        return Problem::new(400, "invalid_query", "The query string is invalid.");
    }
    if let Some(err) = rejection.find::<MissingCookie>() {
        return Problem::new(
            400,
            "missing_cookie",
            format!("Missing cookie {}.", err.name()),
        );
    }
    if rejection
        .find::<warp::filters::cors::CorsForbidden>()
        .is_some()
    {
        return Problem::new(403, "cors_forbidden", "The CORS request is not allowed.");
    }
    if rejection.find::<MethodNotAllowed>().is_some() {
        return Problem::new(
            405,
            "method_not_allowed",
            "This path does not accept that method.",
        );
    }
    tracing::error!(?rejection, "unhandled rejection answered 500");
    Problem::internal()
}

/// Cuts `text` to at most [`DETAIL_BYTES_MAX`] bytes on a character boundary.
pub(crate) fn truncated(mut text: String) -> String {
    if text.len() > DETAIL_BYTES_MAX {
        let cut = (0..=DETAIL_BYTES_MAX)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use warp::Filter;

    use super::*;

    #[tokio::test]
    async fn problem_rejection_passes_through_with_extra_members() {
        let route = warp::path("hold")
            .and_then(|| async {
                let problem = Problem::new(409, "insufficient_stock", "Only 2 left.")
                    .with_member("available", 2)
                    .with_member("status", 200); // Reserved: must not override the status.
                Err::<String, Rejection>(problem.into())
            })
            .recover(recover);
        let response = warp::test::request().path("/hold").reply(&route).await;
        assert_eq!(response.status(), 409);
        let problem: Value = serde_json::from_slice(response.body()).expect("problem is JSON");
        assert_eq!(problem["code"], "insufficient_stock");
        assert_eq!(problem["available"], 2);
        assert_eq!(problem["status"], 409);
        assert_eq!(problem["message"], "Only 2 left.");
    }

    #[tokio::test]
    async fn warp_header_and_query_rejections_are_400() {
        #[derive(Debug, Deserialize)]
        struct Page {
            #[allow(dead_code)] // Only the decoding is under test.
            n: u32,
        }
        let route = warp::path("h")
            .and(warp::header::<u32>("x-n"))
            .map(|n: u32| n.to_string())
            .or(warp::path("q")
                .and(warp::query::<Page>())
                .map(|_| String::new()))
            .recover(recover);
        let cases = [
            (warp::test::request().path("/h"), "missing_header"),
            (
                warp::test::request().path("/h").header("x-n", "x"),
                "invalid_header",
            ),
            (warp::test::request().path("/q?n=x"), "invalid_query"),
        ];
        for (request, code) in cases {
            let response = request.reply(&route).await;
            assert_eq!(response.status(), 400, "{code}");
            let problem: Value = serde_json::from_slice(response.body()).expect("JSON");
            assert_eq!(problem["code"], code);
        }
    }

    #[tokio::test]
    async fn unknown_rejection_is_500_internal() {
        #[derive(Debug)]
        struct Surprise;
        impl warp::reject::Reject for Surprise {}
        let route = warp::any()
            .and_then(|| async { Err::<String, Rejection>(warp::reject::custom(Surprise)) })
            .recover(recover);
        let response = warp::test::request().reply(&route).await;
        assert_eq!(response.status(), 500);
        let problem: Value = serde_json::from_slice(response.body()).expect("problem is JSON");
        assert_eq!(problem["code"], "internal");
        assert!(!problem["detail"].to_string().contains("Surprise"));
    }

    #[test]
    fn invalid_status_is_answered_500() {
        let response = Problem::new(42, "weird", "x").into_response();
        assert_eq!(response.status(), 500);
    }
}
