//! The HTTP API (docs/DESIGN.md's table): one warp filter per route, each a thin handler that
//! parses the request into core types, calls one service script, and maps its answer or error to
//! JSON or an RFC 9457 problem. No rule is decided here.
//!
//! Every route matches its path before its method, so an unknown path is 404 and a known path
//! with the wrong method is 405. Every GET route answers HEAD too, and a path with a trailing
//! slash is another (unknown) path. Client request bodies refuse unknown fields (a typo must not pass
//! silently); the webhook accepts and ignores them, because payment providers add fields.
//!
//! This file holds the route table, the filters every route shares and the JSON replies; its
//! children hold the routes by who calls them: `client` (products, holds, orders), `webhook` (the
//! payment provider's), `admin` (the operator's, behind the bearer token) and `operations`
//! (health, readiness, metrics, the OpenAPI document, and what is served while starting); and
//! `errors`, the one mapping of service errors to answers.

mod admin;
mod client;
mod errors;
mod operations;
mod webhook;

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::Value;
use warp::http::StatusCode;
use warp::http::header::{HeaderValue, LOCATION};
use warp::reply::Response;
use warp::{Filter, Reply};

use self::admin::{
    CreateProductRequest, RestockRequest, admin_create_product, admin_orders, admin_restock,
    admin_webhooks,
};
use self::client::{HoldRequest, OrderRequest, hold, order, place_hold, place_order, product};
pub use self::errors::{DatabaseCause, deadline_passed};
pub use self::operations::starting_routes;
use self::operations::{healthz, metrics, openapi, readyz};
use self::webhook::{decode_webhook, webhook};
use crate::body;
use crate::problem::{self, Problem};
use crate::signature::Secret;
use crate::sql::SqlStore;
use flashsale_service::Service;
use flashsale_service::clock::Clock;

/// Everything a handler needs.
pub struct App {
    /// The transaction scripts.
    pub service: Service<SqlStore, Arc<dyn Clock>>,
    /// Webhook signing secrets; any one verifies (rotation).
    pub webhook_secrets: Vec<Secret>,
    /// The admin bearer token; admin routes are off without one.
    pub admin_token: Option<String>,
    /// Renders `GET /metrics`; without one the route answers 404.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The request header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The response header marking an answer replayed from an idempotency key's record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Shared application state.
pub type SharedApp = Arc<App>;

/// Every route, with rejections recovered into problems.
pub fn routes(app: SharedApp) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let api = product(app.clone())
        .or(place_hold(app.clone()))
        .unify()
        .or(hold(app.clone()))
        .unify()
        .or(place_order(app.clone()))
        .unify()
        .or(order(app.clone()))
        .unify()
        .or(webhook(app.clone()))
        .unify()
        .or(admin_create_product(app.clone()))
        .unify()
        .or(admin_restock(app.clone()))
        .unify()
        .or(admin_webhooks(app.clone()))
        .unify()
        .or(admin_orders(app.clone()))
        .unify()
        .or(healthz())
        .unify()
        .or(readyz(app.clone()))
        .unify()
        .or(metrics(app))
        .unify()
        .or(openapi())
        .unify();
    no_trailing_slash()
        .and(api)
        .recover(problem::recover)
        .map(Reply::into_response)
}

/// GET, and HEAD alike (RFC 9110 §9.3.2: a server answers HEAD wherever it answers GET); hyper
/// sends a HEAD's answer without its body.
pub(super) fn get_or_head() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// One URL per resource: a path ending in `/` (other than `/` itself) names no route, so it is
/// 404 rather than answered under another path's name (and counted as an unknown route).
pub(super) fn no_trailing_slash() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            let path = path.as_str();
            if path.len() > 1 && path.ends_with('/') {
                Err(warp::reject::not_found())
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

/// A 201 with `Location` naming what it created.
pub(super) fn with_location(mut response: Response, location: String) -> Response {
    if response.status() == StatusCode::CREATED
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

pub(super) fn with_app(
    app: SharedApp,
) -> impl Filter<Extract = (SharedApp,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// Decodes `body` as the route named `route` (as [`ROUTES`](crate::api::ROUTES) names it) decodes its JSON body,
/// without calling the service: what the fuzz targets drive (the webhook's after its signature
/// check). `Ok(false)` for a route without a body.
///
/// # Errors
/// The problem the route would answer.
#[allow(clippy::result_large_err)]
pub fn decode_body(route: &str, body: &[u8]) -> Result<bool, Problem> {
    match route {
        "/api/holds" => body::parse_json::<HoldRequest>(body).map(|_| true),
        "/api/orders" => body::parse_json::<OrderRequest>(body).map(|_| true),
        "/api/payments/webhook" => decode_webhook(body).map(|_| true),
        "/api/admin/products" => body::parse_json::<CreateProductRequest>(body).map(|_| true),
        "/api/admin/products/{id}/restock" => {
            body::parse_json::<RestockRequest>(body).map(|_| true)
        }
        _ => Ok(false),
    }
}

pub(super) fn json_reply(status: StatusCode, body: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A JSON answer to a request that may carry an idempotency key; a replay says so in a header.
pub(super) fn keyed_reply(status: StatusCode, body: &Value, replayed: bool) -> Response {
    let mut response = json_reply(status, body);
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}
