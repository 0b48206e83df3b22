//! The operator's routes, behind the admin bearer token (without a configured token they do
//! not exist): creating and restocking products, and the reconciliation listings of webhook
//! records and orders (read through `reconcile`, as `flashsale report` reads them).

use flashsale_core::{Cents, ProductId, Qty, Rejection};
use headers::HeaderMapExt;
use headers::authorization::{Authorization, Bearer};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::http::header::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::errors::{error_reply, not_found};
use super::{SharedApp, get_or_head, json_reply, with_app, with_location};
use crate::api::product_json;
use crate::body;
use crate::problem::Problem;
use crate::reconcile;
use flashsale_service::{ProductView, ServiceError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateProductRequest {
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
pub(super) fn admin_create_product(
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
pub(super) struct RestockRequest {
    qty: u32,
}

/// `POST /api/admin/products/{id}/restock {qty}`
pub(super) fn admin_restock(
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
pub(super) fn admin_webhooks(
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
pub(super) fn admin_orders(
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
