//! The buyer's routes: a product, holds and orders (`GET /api/products/{id}`, `POST /api/holds`,
//! `GET /api/holds/{id}`, `POST /api/orders`, `GET /api/orders/{id}`), with the optional
//! `Idempotency-Key` header on the two POSTs. Their bodies refuse unknown fields: a typo must not
//! pass silently.

use flashsale_core::{HoldId, HoldView, IdempotencyKey, OrderId, ProductId, Qty};
use serde::Deserialize;
use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::HeaderMap;
use warp::reply::Response;

use super::errors::error_reply;
use super::{
    IDEMPOTENCY_KEY_HEADER, SharedApp, get_or_head, json_reply, keyed_reply, with_app,
    with_location,
};
use crate::api::{hold_json, order_json, product_json};
use crate::body;
use crate::problem::Problem;
use flashsale_service::Keyed;

/// `GET /api/products/{id}`
pub(super) fn product(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
pub(super) struct HoldRequest {
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
pub(super) fn place_hold(
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
pub(super) fn hold(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
pub(super) struct OrderRequest {
    hold_id: u64,
}

/// `POST /api/orders {hold_id}`, with an optional `Idempotency-Key`: 201 when created, 200 with
/// the same order when the hold already became one.
pub(super) fn place_order(
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
pub(super) fn order(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
