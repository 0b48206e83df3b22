//! The payment provider's webhook (`POST /api/payments/webhook`): the signature is checked
//! before the body is even parsed, the body is decoded into the core's payload, and the
//! service's answer is counted, logged and rendered. Unknown fields are accepted and ignored,
//! because providers add fields; the fingerprint covers only `hold_id` and `status`.

use bytes::Bytes;
use flashsale_core::{
    HoldId, IdempotencyKey, PaymentStatus, Rejection, ReleaseReason, WebhookChange, WebhookPayload,
    WebhookResult,
};
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::errors::error_reply;
use super::{App, SharedApp, json_reply, with_app};
use crate::body;
use crate::problem::Problem;
use crate::signature;
use flashsale_service::ServiceError;

#[derive(Deserialize)]
struct WebhookRequest {
    idempotency_key: String,
    hold_id: u64,
    status: String,
}

/// `POST /api/payments/webhook {idempotency_key, hold_id, status}`, signed.
pub(super) fn webhook(
    app: SharedApp,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
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
        // What the core decided it changed (docs/DESIGN.md's webhook table).
        match answer.change {
            WebhookChange::OrderPaid | WebhookChange::PaidOrderCreated => {
                metrics::counter!("flashsale_orders_total", "status" => "paid").increment(1);
            }
            WebhookChange::OrderCancelled => {
                metrics::counter!("flashsale_orders_total", "status" => "cancelled").increment(1);
            }
            WebhookChange::HoldReleased(ReleaseReason::PaymentFailed) => {
                metrics::counter!("flashsale_holds_released_total", "reason" => "payment_failed")
                    .increment(1);
            }
            // A hold past its deadline: not a release before it, which the family counts.
            WebhookChange::HoldReleased(ReleaseReason::Expired) | WebhookChange::None => {}
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
pub(super) fn decode_webhook(body: &[u8]) -> Result<WebhookPayload, Problem> {
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
