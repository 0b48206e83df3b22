//! The API's shape, apart from how it is served: its OpenAPI description, the table of routes
//! and their methods (which the request log, the 405 answers, the metrics and the OpenAPI check
//! read), and the JSON bodies products, holds and orders are shown as (which the routes and the
//! admin reconciliation pages answer with).

use chrono::{DateTime, SecondsFormat, Utc};
use flashsale_core::{Hold, HoldView, Order, Timestamp};
use serde::Serialize;
use serde_json::Value;

use crate::service::ProductView;

/// The OpenAPI 3.1 description of [`ROUTES`], served at `GET /api/openapi.json`. Tests keep
/// the two in step and check every answer of the end-to-end suite against its schemas.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Every route and its method, as [`crate::request_log`] names routes (ids as `{id}`): the
/// `Allow` header of a 405, the metrics' route label, and what `openapi.json` must describe.
/// Kept in step with [`crate::routes::routes`], which it mirrors.
pub const ROUTES: [(&str, &str); 14] = [
    ("/api/products/{id}", "GET"),
    ("/api/holds", "POST"),
    ("/api/holds/{id}", "GET"),
    ("/api/orders", "POST"),
    ("/api/orders/{id}", "GET"),
    ("/api/payments/webhook", "POST"),
    ("/api/admin/products", "POST"),
    ("/api/admin/products/{id}/restock", "POST"),
    ("/api/admin/webhooks", "GET"),
    ("/api/admin/orders", "GET"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/api/openapi.json", "GET"),
];

/// The methods a route answers, for the `Allow` header of a 405: a GET route answers HEAD too.
pub fn allowed_methods(route: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(path, _)| *path == route)
        .map(|(_, method)| {
            if *method == "GET" {
                "GET, HEAD"
            } else {
                method
            }
        })
}

/// A product as the API shows it; fields in the original service's order.
#[derive(Serialize)]
struct ProductBody<'a> {
    id: u64,
    name: &'a str,
    price_cents: u64,
    stock: u32,
    available: u32,
}

pub(crate) fn product_json(view: &ProductView) -> Value {
    to_value(ProductBody {
        id: view.product.id.0,
        name: &view.product.name,
        price_cents: view.product.price_cents.0,
        stock: view.product.stock.0,
        available: view.available.0,
    })
}

/// A hold as the API shows it.
#[derive(Serialize)]
struct HoldBody {
    hold_id: u64,
    product_id: u64,
    qty: u32,
    expires_at: String,
    state: &'static str,
}

pub(crate) fn hold_json(hold: &Hold, view: HoldView) -> Value {
    to_value(HoldBody {
        hold_id: hold.id.0,
        product_id: hold.product_id.0,
        qty: hold.qty.0,
        expires_at: rfc3339(hold.expires_at),
        state: view.as_str(),
    })
}

/// An order as the API shows it.
#[derive(Serialize)]
struct OrderBody {
    order_id: u64,
    hold_id: u64,
    product_id: u64,
    qty: u32,
    total_cents: u64,
    status: &'static str,
    created_at: String,
    payment_due_at: String,
}

pub(crate) fn order_json(order: &Order) -> Value {
    to_value(OrderBody {
        order_id: order.id.0,
        hold_id: order.hold_id.0,
        product_id: order.product_id.0,
        qty: order.qty.0,
        total_cents: order.total_cents.0,
        status: order.status.as_str(),
        created_at: rfc3339(order.created_at),
        payment_due_at: rfc3339(order.payment_due_at),
    })
}

/// Serializes a response body; these structs have no map keys or floats, so it cannot fail.
fn to_value(body: impl Serialize) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T04:00:00.000Z`.
pub(crate) fn rfc3339(at: Timestamp) -> String {
    let ms = i64::try_from(at.as_ms()).unwrap_or(i64::MAX);
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC);
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
