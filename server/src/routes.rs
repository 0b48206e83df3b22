//! The HTTP API (DESIGN.md's table): one warp filter per route, each a thin handler that parses
//! the request into core types, calls one service script, and maps its answer or error to JSON or
//! an RFC 9457 problem. No rule is decided here.
//!
//! Every route matches its path before its method, so an unknown path is 404 and a known path
//! with the wrong method is 405. Every GET route answers HEAD too, and a path with a trailing
//! slash is another (unknown) path. Client request bodies refuse unknown fields (a typo must not pass
//! silently); the webhook accepts and ignores them, because payment providers add fields.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flashsale_core::{
    Cents, HoldId, HoldView, IdempotencyKey, OrderId, PaymentStatus, ProductId, Qty, Rejection,
    WebhookPayload, WebhookResult,
};
use headers::HeaderMapExt;
use headers::authorization::{Authorization, Bearer};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::http::header::{HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::api::{OPENAPI_JSON, hold_json, order_json, product_json};
use crate::body;
use crate::clock::Clock;
use crate::problem::{self, Problem};
use crate::reconcile;
use crate::service::{Keyed, ProductView, Service, ServiceError};
use crate::signature::{self, Secret};
use crate::store::StoreError;
use crate::store::sql::SqlStore;

/// How long `/readyz` waits for the database before saying it is not ready.
const READY_PING_TIMEOUT: Duration = Duration::from_millis(900);

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
fn get_or_head() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// One URL per resource: a path ending in `/` (other than `/` itself) names no route, so it is
/// 404 rather than answered under another path's name (and counted as an unknown route).
fn no_trailing_slash() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
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
fn with_location(mut response: Response, location: String) -> Response {
    if response.status() == StatusCode::CREATED
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn with_app(app: SharedApp) -> impl Filter<Extract = (SharedApp,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// `GET /api/products/{id}`
fn product(app: SharedApp) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "products" / u64)
        .and(get_or_head())
        .and(with_app(app))
        .then(|id: u64, app: SharedApp| async move {
            match app.service.product(ProductId(id)).await {
                Ok(view) => json_reply(StatusCode::OK, &product_json(&view)),
                Err(error) => error_reply(error),
            }
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    product_id: u64,
    qty: u32,
}

/// The optional `Idempotency-Key` header, parsed: 1 to 255 printable ASCII characters, else 400.
fn idempotency_key()
-> impl Filter<Extract = (Option<IdempotencyKey>,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned().and_then(|headers: HeaderMap| async move {
        let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
            return Ok(None);
        };
        match value.to_str().ok().and_then(IdempotencyKey::parse) {
            Some(key) => Ok(Some(key)),
            None => {
                let problem = Problem::new(
                    400,
                    "invalid_idempotency_key",
                    "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
                )
                .with_member("field", "Idempotency-Key");
                Err(problem.into_rejection())
            }
        }
    })
}

/// `POST /api/holds {product_id, qty}`, with an optional `Idempotency-Key`.
fn place_hold(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "holds")
        .and(warp::post())
        .and(idempotency_key())
        .and(body::json_body::<HoldRequest>())
        .and(with_app(app))
        .then(
            |key: Option<IdempotencyKey>, request: HoldRequest, app: SharedApp| async move {
                let placed = app.service.place_hold_keyed(
                    key.as_ref(),
                    ProductId(request.product_id),
                    Qty(request.qty),
                );
                match placed.await {
                    Ok(Keyed { value, replayed }) => with_location(
                        keyed_reply(
                            StatusCode::CREATED,
                            &hold_json(&value.hold, HoldView::Held),
                            replayed,
                        ),
                        format!("/api/holds/{}", value.hold.id),
                    ),
                    Err(error) => error_reply(error),
                }
            },
        )
}

/// `GET /api/holds/{id}`
fn hold(app: SharedApp) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "holds" / u64)
        .and(get_or_head())
        .and(with_app(app))
        .then(|id: u64, app: SharedApp| async move {
            match app.service.hold(HoldId(id)).await {
                Ok((hold, view)) => json_reply(StatusCode::OK, &hold_json(&hold, view)),
                Err(error) => error_reply(error),
            }
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    hold_id: u64,
}

/// `POST /api/orders {hold_id}`, with an optional `Idempotency-Key`: 201 when created, 200 with
/// the same order when the hold already became one.
fn place_order(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "orders")
        .and(warp::post())
        .and(idempotency_key())
        .and(body::json_body::<OrderRequest>())
        .and(with_app(app))
        .then(
            |key: Option<IdempotencyKey>, request: OrderRequest, app: SharedApp| async move {
                let placed = app
                    .service
                    .place_order_keyed(key.as_ref(), HoldId(request.hold_id));
                match placed.await {
                    Ok(Keyed { value, replayed }) => {
                        if value.created && !replayed {
                            metrics::counter!("flashsale_orders_total", "status" => "created")
                                .increment(1);
                        }
                        let status = if value.created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        with_location(
                            keyed_reply(status, &order_json(&value.order), replayed),
                            format!("/api/orders/{}", value.order.id),
                        )
                    }
                    Err(error) => error_reply(error),
                }
            },
        )
}

/// `GET /api/orders/{id}`
fn order(app: SharedApp) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "orders" / u64)
        .and(get_or_head())
        .and(with_app(app))
        .then(|id: u64, app: SharedApp| async move {
            match app.service.order(OrderId(id)).await {
                Ok(order) => json_reply(StatusCode::OK, &order_json(&order)),
                Err(error) => error_reply(error),
            }
        })
}

#[derive(Deserialize)]
struct WebhookRequest {
    idempotency_key: String,
    hold_id: u64,
    status: String,
}

/// `POST /api/payments/webhook {idempotency_key, hold_id, status}`, signed.
fn webhook(app: SharedApp) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "payments" / "webhook")
        .and(warp::post())
        .and(warp::header::optional::<String>(
            signature::SIGNATURE_HEADER,
        ))
        .and(body::json_bytes())
        .and(with_app(app))
        .then(
            |header: Option<String>, body: Bytes, app: SharedApp| async move {
                match apply_webhook(&app, header.as_deref(), &body).await {
                    Ok(response) | Err(response) => response,
                }
            },
        )
}

async fn apply_webhook(app: &App, header: Option<&str>, body: &[u8]) -> Result<Response, Response> {
    // Signature first: an unsigned body is not even parsed, so nothing about it is trusted.
    let now_s = i64::try_from(app.service.now().as_ms() / 1_000).unwrap_or(i64::MAX);
    if let Err(error) = signature::verify(header, body, &app.webhook_secrets, now_s) {
        tracing::warn!(%error, "webhook refused: bad signature");
        let problem = Problem::new(401, error.code(), error.to_string());
        return Err(problem.into_response());
    }
    let payload = decode_webhook(body).map_err(Problem::into_response)?;
    let answer = app.service.apply_webhook(&payload).await.map_err(|error| {
        if let ServiceError::Rejected(Rejection::IdempotencyKeyReused { key, field }) = &error {
            tracing::warn!(%key, field, "conflicting webhook: key reused with another payload");
        }
        error_reply(error)
    })?;
    let record = &answer.record;
    if answer.replayed {
        tracing::info!(key = %record.key, result = record.result.as_str(), "duplicate webhook");
    } else {
        metrics::counter!("flashsale_webhooks_total", "result" => record.result.as_str())
            .increment(1);
        match &answer.order {
            Some(order) if record.result == WebhookResult::Applied => {
                metrics::counter!("flashsale_orders_total", "status" => order.status.as_str())
                    .increment(1);
            }
            // A failed payment for a hold not yet ordered releases the hold.
            None if record.result == WebhookResult::Applied
                && record.status == PaymentStatus::Failed =>
            {
                metrics::counter!("flashsale_holds_released_total", "reason" => "payment_failed")
                    .increment(1);
            }
            _ => {}
        }
    }
    match record.result {
        WebhookResult::Conflict | WebhookResult::RefundRequired | WebhookResult::Unmatched => {
            tracing::warn!(key = %record.key, hold_id = %record.hold_id,
                result = record.result.as_str(), "webhook needs attention");
        }
        WebhookResult::Applied | WebhookResult::AlreadyApplied => {}
    }
    let mut body = json!({
        "ok": true,
        "result": record.result.as_str(),
        "replayed": answer.replayed,
        "hold_id": record.hold_id.0,
    });
    if let Some(order) = &answer.order {
        body["order_id"] = json!(order.id.0);
        body["order_status"] = json!(order.status.as_str());
    }
    let status = match record.result {
        WebhookResult::Unmatched => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok(json_reply(status, &body))
}

/// A signed webhook's body as the service's payload.
// One problem per bad request, on a cold path.
#[allow(clippy::result_large_err)]
fn decode_webhook(body: &[u8]) -> Result<WebhookPayload, Problem> {
    let request: WebhookRequest = body::parse_json(body)?;
    let invalid =
        |detail: &str, field: &str| Problem::validation_failed(detail, Some(field.to_owned()));
    let key = IdempotencyKey::parse(&request.idempotency_key).ok_or_else(|| {
        invalid(
            "idempotency_key must be 1 to 255 printable ASCII characters",
            "idempotency_key",
        )
    })?;
    let status = PaymentStatus::parse(&request.status)
        .ok_or_else(|| invalid("status must be paid, failed or cancelled", "status"))?;
    Ok(WebhookPayload {
        key,
        hold_id: HoldId(request.hold_id),
        status,
    })
}

/// Decodes `body` as the route named `route` (as [`ROUTES`] names it) decodes its JSON body,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProductRequest {
    name: String,
    price_cents: u64,
    stock: u32,
}

/// Admin routes need `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 §11.1);
/// without a configured token they do not exist (404). The token is compared in constant time,
/// so the time of a refusal says nothing about how much of a guess was right.
fn admin(app: SharedApp) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and(with_app(app))
        .and_then(|headers: HeaderMap, app: SharedApp| async move {
            let Some(token) = app.admin_token.as_deref() else {
                return Err(warp::reject::not_found());
            };
            let given = headers.typed_get::<Authorization<Bearer>>();
            if given
                .is_some_and(|given| bool::from(given.token().as_bytes().ct_eq(token.as_bytes())))
            {
                Ok(())
            } else {
                let problem = Problem::new(
                    401,
                    "unauthorized",
                    "a valid admin bearer token is required",
                );
                Err(problem.into_rejection())
            }
        })
        .untuple_one()
}

/// `POST /api/admin/products {name, price_cents, stock}`
fn admin_create_product(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "admin" / "products")
        .and(warp::post())
        .and(admin(app.clone()))
        .and(body::json_body::<CreateProductRequest>())
        .and(with_app(app))
        .then(|request: CreateProductRequest, app: SharedApp| async move {
            let created = app.service.create_product(
                &request.name,
                Cents(request.price_cents),
                Qty(request.stock),
            );
            match created.await {
                Ok(product) => {
                    let view = ProductView {
                        available: product.stock,
                        product,
                    };
                    with_location(
                        json_reply(StatusCode::CREATED, &product_json(&view)),
                        format!("/api/products/{}", view.product.id),
                    )
                }
                Err(error) => error_reply(error),
            }
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockRequest {
    qty: u32,
}

/// `POST /api/admin/products/{id}/restock {qty}`
fn admin_restock(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "admin" / "products" / u64 / "restock")
        .and(warp::post())
        .and(admin(app.clone()))
        .and(body::json_body::<RestockRequest>())
        .and(with_app(app))
        .then(
            |id: u64, request: RestockRequest, app: SharedApp| async move {
                match app.service.restock(ProductId(id), Qty(request.qty)).await {
                    Ok(view) => json_reply(StatusCode::OK, &product_json(&view)),
                    Err(ServiceError::Rejected(Rejection::UnknownProduct { product_id })) => {
                        not_found("product", product_id.0)
                    }
                    Err(error) => error_reply(error),
                }
            },
        )
}

/// The query string as name/value pairs, in order, for parsers that name what they refuse.
fn query_pairs() -> impl Filter<Extract = (Vec<(String, String)>,), Error = warp::Rejection> + Clone
{
    warp::query::<Vec<(String, String)>>()
}

/// `GET /api/admin/webhooks?result=&cursor=&limit=`: webhook records, oldest first; with
/// `result=refund_required` (or `conflict`, `unmatched`) the payments to follow up.
fn admin_webhooks(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "admin" / "webhooks")
        .and(get_or_head())
        .and(admin(app.clone()))
        .and(query_pairs())
        .and(with_app(app))
        .then(|params: Vec<(String, String)>, app: SharedApp| async move {
            let query = match reconcile::WebhookQuery::parse(&params) {
                Ok(query) => query,
                Err(problem) => return problem.into_response(),
            };
            match reconcile::webhooks(app.service.store(), &query).await {
                Ok(page) => json_reply(StatusCode::OK, &page),
                Err(error) => error_reply(ServiceError::Store(error)),
            }
        })
}

/// `GET /api/admin/orders?status=&cancel_reason=&cursor=&limit=`: orders by id; with
/// `cancel_reason=payment_window_closed` the orders whose payment never came.
fn admin_orders(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "admin" / "orders")
        .and(get_or_head())
        .and(admin(app.clone()))
        .and(query_pairs())
        .and(with_app(app))
        .then(|params: Vec<(String, String)>, app: SharedApp| async move {
            let query = match reconcile::OrderQuery::parse(&params) {
                Ok(query) => query,
                Err(problem) => return problem.into_response(),
            };
            match reconcile::orders(app.service.store(), &query).await {
                Ok(page) => json_reply(StatusCode::OK, &page),
                Err(error) => error_reply(ServiceError::Store(error)),
            }
        })
}

/// `GET /healthz`: the process answers.
fn healthz() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("healthz")
        .and(get_or_head())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})))
}

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 description.
fn openapi() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "openapi.json")
        .and(get_or_head())
        .map(|| {
            let mut response = Response::new(OPENAPI_JSON.into());
            response.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        })
}

/// `GET /metrics`: Prometheus text exposition.
fn metrics(app: SharedApp) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("metrics")
        .and(get_or_head())
        .and(with_app(app))
        .and_then(|app: SharedApp| async move {
            let Some(handle) = &app.metrics else {
                return Err(warp::reject::not_found());
            };
            let text = crate::metrics::render(handle, app.service.store());
            Ok::<_, warp::Rejection>(metrics_reply(text))
        })
}

/// Prometheus text exposition.
fn metrics_reply(text: String) -> Response {
    let mut response = Response::new(text.into());
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /readyz`: the database serves this schema ([`SqlStore::serves`]).
fn readyz(app: SharedApp) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("readyz")
        .and(get_or_head())
        .and(with_app(app))
        .then(|app: SharedApp| async move {
            if app.service.store().serves(READY_PING_TIMEOUT).await {
                json_reply(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                let problem =
                    Problem::new(503, "database_unavailable", "the database does not answer");
                problem.into_response()
            }
        })
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A JSON answer to a request that may carry an idempotency key; a replay says so in a header.
fn keyed_reply(status: StatusCode, body: &Value, replayed: bool) -> Response {
    let mut response = json_reply(status, body);
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

fn not_found(what: &'static str, id: u64) -> Response {
    let code = match what {
        "product" => "product_not_found",
        "hold" => "hold_not_found",
        _ => "order_not_found",
    };
    Problem::new(404, code, format!("{what} {id} not found")).into_response()
}

/// Maps a service error to its problem: one place for every status code.
fn error_reply(error: ServiceError) -> Response {
    match error {
        ServiceError::Rejected(rejection) => rejection_problem(&rejection).into_response(),
        ServiceError::NotFound { what, id } => not_found(what, id),
        ServiceError::KeyInFlight { key } => {
            let problem = Problem::new(
                409,
                "idempotency_key_in_flight",
                format!("a request under idempotency key {key} is still running; retry"),
            );
            retry_later(problem)
        }
        ServiceError::Busy { attempts } => {
            let problem = Problem::new(
                503,
                "busy",
                format!("contention after {attempts} attempts; retry"),
            );
            retry_later(problem)
        }
        ServiceError::Overloaded { waiting } => {
            tracing::warn!(waiting, "queue full, refusing");
            let problem = Problem::new(
                503,
                "busy",
                format!("{waiting} requests already wait for this server; retry"),
            );
            retry_later(problem)
        }
        ServiceError::Violated(violation) => {
            // Fail closed: nothing was written, and a person must look at the rows.
            tracing::error!(%violation, "invariant violated in stored rows; request refused");
            Problem::new(
                500,
                "invariant_violated",
                "the stored state breaks an invariant; nothing was changed",
            )
            .into_response()
        }
        ServiceError::Store(StoreError::Unavailable(error)) => {
            database_unavailable(DatabaseCause::Unreachable, &error)
        }
        ServiceError::Store(StoreError::Connection(error)) => {
            database_unavailable(DatabaseCause::ConnectionLost, &error)
        }
        ServiceError::Store(StoreError::CommitUnknown(error)) => {
            database_unavailable(DatabaseCause::CommitUnknown, &error)
        }
        ServiceError::Store(error) => {
            tracing::error!(%error, "storage failed");
            Problem::internal().into_response()
        }
    }
}

/// Why a request could not use the database, as `flashsale_database_unavailable_total`'s
/// `cause` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseCause {
    /// No connection within the pool's timeout: the database is down or unreachable, refuses
    /// connections, is a Galera node out of its cluster, or every connection is taken.
    Unreachable,
    /// Every attempt lost its connection before committing: nothing was changed.
    ConnectionLost,
    /// The connection was lost while committing: the request may or may not have taken effect.
    CommitUnknown,
    /// The server is still waiting for its database at start-up.
    Starting,
}

impl DatabaseCause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseCause::Unreachable => "unreachable",
            DatabaseCause::ConnectionLost => "connection_lost",
            DatabaseCause::CommitUnknown => "commit_unknown",
            DatabaseCause::Starting => "starting",
        }
    }
}

/// The 503 of a request the database failed, logged, and counted by cause: the one place such
/// an answer is made, so `flashsale_database_unavailable_total` counts every one of them (an
/// alert on it fires even when the database is gone entirely, which retries never see).
fn database_unavailable(cause: DatabaseCause, error: &str) -> Response {
    metrics::counter!("flashsale_database_unavailable_total", "cause" => cause.as_str())
        .increment(1);
    let problem = match cause {
        DatabaseCause::CommitUnknown => {
            tracing::warn!(%error, "database connection lost while committing");
            Problem::new(
                503,
                "commit_unknown",
                "the database connection was lost while committing, so the request may or \
                 may not have taken effect; retry under the same Idempotency-Key, or read \
                 the resource first",
            )
        }
        DatabaseCause::Unreachable | DatabaseCause::ConnectionLost | DatabaseCause::Starting => {
            tracing::warn!(%error, cause = cause.as_str(), "database unavailable");
            Problem::new(
                503,
                "database_unavailable",
                "the database cannot be reached; nothing was changed; retry",
            )
        }
    };
    retry_later(problem)
}

/// The routes served while `serve` waits for its database at start-up: `/healthz` (the process
/// runs), `/readyz` (503: not ready), `/metrics` and `/api/openapi.json`; every other request
/// is 503 `database_unavailable` with `Retry-After`, counted with cause `starting`.
pub fn starting_routes(
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let readyz = warp::path!("readyz").and(get_or_head()).map(|| {
        Problem::new(503, "database_unavailable", "waiting for the database").into_response()
    });
    let metrics = warp::path!("metrics").and(get_or_head()).and_then(move || {
        let rendered = metrics.as_ref().map(crate::metrics::render_starting);
        async move {
            rendered
                .map(metrics_reply)
                .ok_or_else(warp::reject::not_found)
        }
    });
    let others = warp::any().map(|| {
        database_unavailable(
            DatabaseCause::Starting,
            "the server is waiting for its database",
        )
    });
    no_trailing_slash()
        .and(
            healthz()
                .or(readyz)
                .unify()
                .or(metrics)
                .unify()
                .or(openapi())
                .unify(),
        )
        .or(others)
        .unify()
}

/// A problem the client should retry in a second: `Retry-After: 1`.
fn retry_later(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn rejection_problem(rejection: &Rejection) -> Problem {
    let detail = rejection.to_string();
    let code = rejection.code();
    match rejection {
        Rejection::InvalidQty { .. } | Rejection::StockOverflow { .. } => {
            Problem::validation_failed(detail, Some("qty".into()))
        }
        Rejection::InvalidName => Problem::validation_failed(detail, Some("name".into())),
        Rejection::InvalidPrice { .. } => {
            Problem::validation_failed(detail, Some("price_cents".into()))
        }
        Rejection::InvalidTtl { .. }
        | Rejection::InvalidPaymentWindow { .. }
        | Rejection::TotalOverflow { .. } => Problem::validation_failed(detail, None),
        Rejection::UnknownProduct { .. } => {
            Problem::new(422, code, detail).with_member("field", "product_id")
        }
        Rejection::UnknownHold { .. } => {
            Problem::new(422, code, detail).with_member("field", "hold_id")
        }
        Rejection::HoldReleased { .. } | Rejection::HoldExpired { .. } => {
            Problem::new(409, code, detail)
        }
        Rejection::InsufficientStock {
            requested,
            available,
        } => Problem::new(409, code, detail)
            .with_member("requested", requested.0)
            .with_member("available", available.0),
        Rejection::IdempotencyKeyReused { field, .. } => {
            Problem::new(422, code, detail).with_member("field", *field)
        }
    }
}

#[cfg(test)]
mod openapi_tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::ROUTES;

    fn document() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    #[test]
    fn the_document_describes_exactly_the_routes() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                documented.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(path, method)| ((*path).to_owned(), (*method).to_owned()))
            .collect();
        assert_eq!(documented, served);
    }

    /// `"word"` at the start of `text` (after blanks), when `word` is a code: `[a-z_]+`.
    fn code_literal(text: &str) -> Option<&str> {
        let (word, _) = text.trim_start().strip_prefix('"')?.split_once('"')?;
        let is_code = !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        is_code.then_some(word)
    }

    /// The code each `Problem::new(<status>, "<code>"` in `source` names.
    fn problem_codes(source: &str, constructor: &str, out: &mut BTreeSet<String>) {
        for (at, marker) in source.match_indices(constructor) {
            let rest = source
                .get(at.saturating_add(marker.len())..)
                .unwrap_or_default();
            let rest = rest
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            if let Some(word) = rest.trim_start().strip_prefix(',').and_then(code_literal) {
                out.insert(word.to_owned());
            }
        }
    }

    /// The source before its tests.
    fn without_tests(text: &str) -> &str {
        text.split_once("#[cfg(test)]")
            .map_or(text, |(code, _)| code)
    }

    /// Every `code` a problem can carry, read from the code that builds problems: the
    /// literals given to `Problem::new` and the words of each error type's `code()` and of
    /// `not_found`.
    fn codes_in_source() -> BTreeSet<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut codes = BTreeSet::new();
        let sources = [
            "src/routes.rs",
            "src/problem.rs",
            "src/body.rs",
            "src/startup.rs",
            "src/reconcile/mod.rs",
            "src/request_log.rs",
        ];
        for file in sources {
            let text = std::fs::read_to_string(root.join(file)).expect("source");
            problem_codes(without_tests(&text), "Problem::new(", &mut codes);
            problem_codes(without_tests(&text), "Self::new(", &mut codes);
        }
        codes.extend(crate::refusals::AUTOMATIC.iter().map(|a| a.2.to_owned()));
        let mappings = [
            ("../core/src/outcome.rs", "fn code("),
            ("src/signature.rs", "fn code("),
            ("src/routes.rs", "fn not_found("),
        ];
        for (file, function) in mappings {
            let text = std::fs::read_to_string(root.join(file)).expect("source");
            let body = text
                .split_once(function)
                .and_then(|(_, rest)| rest.split_once("\n    }\n"))
                .map(|(body, _)| body)
                .expect("the function that maps errors to codes");
            for piece in body.split("=> ").skip(1) {
                if let Some(word) = code_literal(piece) {
                    codes.insert(word.to_owned());
                }
            }
        }
        codes
    }

    #[test]
    fn the_document_declares_the_request_id_rule_the_code_applies_on_every_operation() {
        let doc = document();
        // Any value is taken (the parameter has no pattern: an id is replaced, never refused);
        // the answer's header says which ones are kept.
        let header = &doc["components"]["headers"]["X-Request-Id"];
        assert_eq!(
            header["schema"]["pattern"],
            crate::request_log::REQUEST_ID_PATTERN
        );
        let parameter = &doc["components"]["parameters"]["X-Request-Id"];
        assert_eq!(parameter["schema"], json!({"type": "string"}));
        let reference = json!({"$ref": "#/components/parameters/X-Request-Id"});
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let declared = operation["parameters"]
                    .as_array()
                    .is_some_and(|parameters| parameters.contains(&reference));
                assert!(declared, "{method} {path} declares X-Request-Id");
            }
        }
    }

    #[test]
    fn the_document_names_every_problem_code_and_no_other() {
        let doc = document();
        let documented: BTreeSet<String> =
            doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
                .as_array()
                .expect("a code enum")
                .iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect();
        let built = codes_in_source();
        assert!(built.len() > 20, "the scan finds the codes: {built:?}");
        assert_eq!(
            documented, built,
            "openapi.json's Problem.code enum and the codes the server builds"
        );
    }
}
