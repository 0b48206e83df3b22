//! The payment provider: for each hold its verdict calls for, webhooks delivered late, early,
//! twice (one after the other or at once), with a conflicting verdict, retried like a provider
//! retrying on 5xx; every answer to one key must be the same.

use std::sync::Arc;
use std::time::Duration;

use flashsale_check::failure::{Check, Failure};
use flashsale_core::{
    Command, HoldId, IdempotencyKey, PaymentStatus, ProductId, WebhookPayload, WebhookResult,
};
use flashsale_service::ServiceError;
use madsim::rand::{Rng, thread_rng};

use super::requests::CallError;
use super::{Lane, World, lock};
use crate::plan::Verdict;

/// How many times the provider delivers one key before leaving it for the liveness phase.
const DELIVERY_ATTEMPTS_MAX: u32 = 6;

/// A webhook key's first answer: its result, its order, and the request it answered.
pub(super) type FirstAnswer = (WebhookResult, Option<u64>, u64);

impl World {
    pub(super) fn payload(&self, hold_id: HoldId, paid: bool) -> WebhookPayload {
        let mut next = lock(&self.next_key);
        *next += 1;
        let key =
            IdempotencyKey::parse(&format!("evt-{}", *next)).unwrap_or_else(|| unreachable!());
        let status = if paid {
            PaymentStatus::Paid
        } else {
            PaymentStatus::Failed
        };
        WebhookPayload {
            key,
            hold_id,
            status,
        }
    }

    /// The payment provider's deliveries for one hold.
    pub(super) async fn provider(self: Arc<Self>, hold: flashsale_core::Hold, verdict: Verdict) {
        let (hold_id, product) = (hold.id, Some(hold.product_id));
        madsim::time::sleep(Duration::from_millis(verdict.delay_ms)).await;
        let payload = self.payload(hold_id, verdict.paid);
        if verdict.early {
            self.race("early");
        }
        if verdict.copies > 1 {
            self.race(if verdict.concurrent {
                "duplicate_concurrent"
            } else {
                "duplicate_sequential"
            });
        }
        let mut copies = Vec::new();
        for _ in 0..verdict.copies {
            let world = self.clone();
            let payload = payload.clone();
            let copy = madsim::task::spawn(async move { world.deliver(payload, product).await });
            if verdict.concurrent {
                copies.push(copy);
            } else {
                let _ = copy.await;
                madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(0..500))).await;
            }
        }
        if verdict.conflicting {
            self.race("conflicting");
            self.deliver(self.payload(hold_id, !verdict.paid), product)
                .await;
        }
        for copy in copies {
            let _ = copy.await;
        }
    }

    /// Delivers one webhook until the service answers, like a provider retrying on 5xx.
    pub(super) async fn deliver(&self, payload: WebhookPayload, product: Option<ProductId>) {
        for attempt in 0..DELIVERY_ATTEMPTS_MAX {
            let sent = payload.clone();
            let (op, answer) = self
                .call(
                    (self.any_instance(), Lane::Provider),
                    product,
                    Command::ApplyWebhook(payload.clone()),
                    None,
                    move |s| async move { s.apply_webhook(&sent).await },
                )
                .await;
            match answer {
                Ok(answer) => {
                    let key = payload.key.as_str().to_owned();
                    let result = answer.record.result;
                    let seen = (result, answer.record.order_id.map(|o| o.0), op);
                    let first = *lock(&self.answers).entry(key.clone()).or_insert(seen);
                    if (first.0, first.1) != (seen.0, seen.1) {
                        let words = |(result, order, _): FirstAnswer| {
                            let order = order.map(|o| format!(", order_id: {o}"));
                            format!(
                                "{{result: {}{}}}",
                                result.as_str(),
                                order.unwrap_or_default()
                            )
                        };
                        self.fail(
                            Failure::new(
                                Check::Webhook,
                                "key answered differently",
                                format!(
                                    "webhook {key} was answered `200 {}` to r{op}, after `200 {}` \
                                     to r{}: a key must always answer the same",
                                    words(seen),
                                    words(first),
                                    first.2
                                ),
                            )
                            .at_request(Some(op)),
                        );
                    }
                    self.count(|s| {
                        *s.webhooks.entry(result.as_str().to_owned()).or_default() += 1;
                        if answer.replayed {
                            *s.webhooks.entry("replayed".to_owned()).or_default() += 1;
                        }
                    });
                    if result == WebhookResult::RefundRequired {
                        self.race("after_expiry");
                    }
                    return;
                }
                Err(CallError::Service(ServiceError::Rejected(rejection))) => {
                    self.fail(
                        Failure::new(
                            Check::Webhook,
                            "webhook refused",
                            format!(
                                "webhook {} was refused: {} {rejection}",
                                payload.key,
                                rejection.code()
                            ),
                        )
                        .at_request(Some(op)),
                    );
                    return;
                }
                Err(_) => {
                    let backoff = 100u64.saturating_mul(1 << attempt.min(5));
                    madsim::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
        lock(&self.undelivered).push((payload, product));
    }
}
