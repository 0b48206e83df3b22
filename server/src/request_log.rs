//! One log line per request, and a request id that follows the request everywhere.
//!
//! [`Logged`] wraps the routes' service. For each request it takes the client's `X-Request-Id`
//! when it is a sensible one (1 to 128 characters of letters, digits, `-`, `_`, `.`) or makes one
//! up, opens a tracing span carrying it (so every line the request logs names it), runs the
//! request with the id in a task-local (so [`crate::problem::Problem`] bodies carry it as
//! `request_id`), echoes it in the response's `X-Request-Id`, and logs one line with the method,
//! the route, the status and the latency. A 405 gets the route's `Allow` header here, where the
//! request's path is known.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;
use warp::http::header::ALLOW;
use warp::http::{HeaderMap, HeaderValue, Request, StatusCode};
use warp::reply::Response;

/// The request id header, read and written.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest request id taken from a client.
const REQUEST_ID_MAX: usize = 128;
/// The ids kept from a client, as `openapi.json` declares its answers' `X-Request-Id` (a test
/// keeps the two equal): what `request_id` keeps; any other id is replaced, never refused.
/// Nothing that a log line or a header could misread (spaces, quotes, `=`, `;`), so an id can
/// be pasted into a log search as it is.
pub const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,128}$";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request this task is answering, if it is answering one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The client's id when it matches [`REQUEST_ID_PATTERN`], else a new one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            (1..=REQUEST_ID_MAX).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(id) => id.to_owned(),
        None => format!("{:016x}", rand::random::<u64>()),
    }
}

/// The label of a response's status in the metrics: one of the statuses the API answers, as a
/// string made once, or else made for this response.
fn status_label(status: StatusCode) -> metrics::SharedString {
    const ANSWERED: [&str; 22] = [
        "200", "201", "204", "304", "400", "401", "403", "404", "405", "406", "408", "409", "411",
        "413", "414", "415", "422", "429", "431", "500", "503", "504",
    ];
    let code = status.as_str();
    match ANSWERED.iter().find(|&&known| known == code) {
        Some(known) => metrics::SharedString::const_str(known),
        None => metrics::SharedString::from_owned(code.to_owned()),
    }
}

/// The path with its numeric segments as `{id}`: the route, for logs, without one label per id.
pub fn route_of(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if crate::api::is_id(segment) {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The routes' service with a request id and a log line per request.
#[derive(Clone, Debug)]
pub struct Logged<S> {
    inner: S,
}

impl<S> Logged<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Logged { inner }
    }
}

impl<S, B> tower_service::Service<Request<B>> for Logged<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let id = request_id(request.headers());
        let method = request.method().clone();
        // A route of the API without a string made for it; any other path as its pattern.
        let known = crate::api::route_of_path(request.uri().path());
        let route: Cow<'static, str> = match known {
            Some(route) => Cow::Borrowed(route),
            None => Cow::Owned(route_of(request.uri().path())),
        };
        // `product_id` is filled in by the service once it knows the product (`lock_hold`).
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            product_id = tracing::field::Empty
        );
        let started = Instant::now();
        let answering = self.inner.call(request);
        let header = HeaderValue::from_str(&id).ok();
        Box::pin(
            REQUEST_ID
                .scope(id, async move {
                    let Ok(mut response) = answering.await;
                    if let Some(header) = header {
                        response.headers_mut().insert(REQUEST_ID_HEADER, header);
                    }
                    if response.status() == StatusCode::METHOD_NOT_ALLOWED
                        && let Some(allow) = known.and_then(crate::api::allowed_methods)
                    {
                        response
                            .headers_mut()
                            .insert(ALLOW, HeaderValue::from_static(allow));
                    }
                    let seconds = started.elapsed().as_secs_f64();
                    // A number in JSON logs, to two decimals: a collector aggregates it.
                    let latency_ms = (seconds * 100_000.0).round() / 100.0;
                    // Unknown paths share one label: a scanner must not mint a series per path.
                    let label = known.unwrap_or("other");
                    metrics::counter!(
                        "flashsale_http_requests_total",
                        "route" => label,
                        "status" => status_label(response.status())
                    )
                    .increment(1);
                    metrics::histogram!("flashsale_http_request_duration_seconds", "route" => label)
                        .record(seconds);
                    tracing::info!(
                        target: "flashsale::request",
                        %method,
                        %route,
                        status = response.status().as_u16(),
                        latency_ms,
                        "request"
                    );
                    Ok(response)
                })
                .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_ids_as_placeholders() {
        assert_eq!(
            route_of("/api/products/12/restock"),
            "/api/products/{id}/restock"
        );
        assert_eq!(route_of("/api/holds"), "/api/holds");
        assert_eq!(route_of("/"), "/");
    }

    #[test]
    fn the_routes_of_the_api_are_found_without_a_string_and_others_are_not() {
        let found = crate::api::route_of_path;
        assert_eq!(found("/api/products/12/restock"), None);
        assert_eq!(
            found("/api/admin/products/12/restock"),
            Some("/api/admin/products/{id}/restock")
        );
        assert_eq!(found("/api/products/7"), Some("/api/products/{id}"));
        assert_eq!(found("/api/holds"), Some("/api/holds"));
        for other in [
            "/api/products/x",
            "/api/products/",
            "/api/products/7/",
            "/",
            "/api",
        ] {
            assert_eq!(found(other), None, "{other}");
        }
        for (route, _) in crate::api::ROUTES {
            let path = route.replace("{id}", "42");
            assert_eq!(found(&path), Some(route), "{path}");
        }
    }

    #[test]
    fn statuses_are_labelled_by_their_code() {
        assert_eq!(&*status_label(StatusCode::CREATED), "201");
        assert_eq!(&*status_label(StatusCode::IM_A_TEAPOT), "418");
    }

    #[test]
    fn a_sensible_client_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(request_id(&headers), "abc-123_x.y");
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(bad) {
                headers.insert(REQUEST_ID_HEADER, value);
            }
            let made = request_id(&headers);
            assert_ne!(made, bad, "{bad:?} is replaced");
            assert_eq!(made.len(), 16, "{made}");
        }
    }
}
