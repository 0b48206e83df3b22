//! The routes for operating the server: `/healthz` (the process answers), `/readyz` (the
//! database serves this schema), `/metrics` (Prometheus text) and `/api/openapi.json`; and the
//! few of them served while `serve` waits for its database at start-up.

use std::convert::Infallible;
use std::time::Duration;

use serde_json::json;
use warp::http::StatusCode;
use warp::http::header::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::errors::{DatabaseCause, database_unavailable};
use super::{SharedApp, get_or_head, json_reply, no_trailing_slash, with_app};
use crate::api::OPENAPI_JSON;
use crate::problem::Problem;

/// How long `/readyz` waits for the database before saying it is not ready.
const READY_PING_TIMEOUT: Duration = Duration::from_millis(900);

/// `GET /healthz`: the process answers.
pub(super) fn healthz() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("healthz")
        .and(get_or_head())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})))
}

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 description.
pub(super) fn openapi() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
pub(super) fn metrics(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
pub(super) fn readyz(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
