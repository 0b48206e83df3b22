//! Payment webhooks: the provider's `paid` or `failed` verdict on a hold, applied at most once
//! per idempotency key.
//!
//! Each key gets one [`WebhookRecord`] holding a fingerprint of its payload and the result it was
//! answered with. The same key with the same payload answers the stored record and changes
//! nothing; the same key with another payload is [`Rejection::IdempotencyKeyReused`]. The record
//! and its effect are written in one transaction, so a retry after a lost answer can never apply
//! a webhook twice.
//!
//! What a new webhook does, by the hold's state (docs/DESIGN.md):
//!
//! | hold / order                 | `paid`                              | `failed`                      |
//! |------------------------------|-------------------------------------|-------------------------------|
//! | unknown hold                 | `unmatched`                         | `unmatched`                   |
//! | held, unexpired, no order    | order created paid: `applied`       | hold released: `applied`      |
//! | held but expired, no order   | hold released: `refund_required`    | hold released: `applied`      |
//! | released, no order           | `refund_required`                   | `already_applied`             |
//! | order pre_payment, in window | order paid: `applied`               | order cancelled: `applied`    |
//! | order pre_payment, overdue   | order cancelled: `refund_required`  | order cancelled: `applied`    |
//! | order paid                   | `already_applied`                   | `conflict` (stays paid)       |
//! | order cancelled              | `refund_required`                   | `already_applied`             |

use crate::errors::{Refusal, Rejection, Violation};
use crate::ids::{HoldId, OrderId, storable};
use crate::order;
use crate::outcome::WebhookChange;
use crate::rows::hold::{Hold, HoldState, ReleaseReason};
use crate::rows::order::{CancelReason, NewOrder, Order, OrderStatus};
use crate::rows::payment::{PaymentStatus, WebhookPayload, WebhookRecord, WebhookResult};
use crate::rows::product::Product;
use crate::time::Timestamp;
use crate::writes::{Changes, WriteSet};

/// What applying a new webhook changes, besides storing its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookEffect {
    /// Nothing but the record.
    None,
    /// Mark this `PrePayment` order paid.
    PayOrder(OrderId),
    /// Cancel this `PrePayment` order and return its units to stock.
    CancelOrder(OrderId),
    /// Create this order, already paid, consuming its hold and taking its units out of stock.
    CreatePaidOrder(NewOrder),
    /// Release this held hold.
    ReleaseHold(HoldId, ReleaseReason),
}

impl WebhookEffect {
    /// The change an answer tells of this effect.
    pub fn change(&self) -> WebhookChange {
        match self {
            WebhookEffect::None => WebhookChange::None,
            WebhookEffect::PayOrder(_) => WebhookChange::OrderPaid,
            WebhookEffect::CancelOrder(_) => WebhookChange::OrderCancelled,
            WebhookEffect::CreatePaidOrder(_) => WebhookChange::PaidOrderCreated,
            WebhookEffect::ReleaseHold(_, reason) => WebhookChange::HoldReleased(*reason),
        }
    }
}

/// The decision on one webhook delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookDecision {
    /// The key was seen with the same payload: answer its record, change nothing.
    Replay(WebhookRecord),
    /// A new key: write its record and its effect together.
    New {
        /// The result recorded and answered.
        result: WebhookResult,
        /// The change made, as the module table says.
        effect: WebhookEffect,
        /// The writes: the effect and the key's record (whose `order_id` names the order
        /// concerned, or the pending id of the order the effect inserts). Boxed: it is the large
        /// variant, and a replay is the common answer to a provider's retries.
        writes: Box<WriteSet>,
    },
}

/// Decides a webhook delivery.
///
/// Inputs are the rows the transaction read: the key's record if any, the hold if it exists, its
/// order if any, and the hold's product (required when the hold exists). Checks, first failure
/// wins: a hold id no row can have (above [`crate::ID_MAX`]), the key (replay or
/// [`Rejection::IdempotencyKeyReused`]), then the hold's existence, then its state as the
/// module table says.
///
/// # Errors
/// [`Rejection::UnknownHold`] for a hold id above [`crate::ID_MAX`];
/// [`Rejection::IdempotencyKeyReused`] when the key was used with another payload, naming the
/// first field that differs; a [`Violation`] when the rows read are inconsistent (a consumed hold
/// without its order, counters that cannot move the units).
pub fn decide_webhook(
    record: Option<&WebhookRecord>,
    payload: &WebhookPayload,
    hold_and_product: Option<(&Hold, &Product)>,
    order: Option<&Order>,
    now: Timestamp,
) -> Result<WebhookDecision, Refusal> {
    // Refused rather than recorded as unmatched: the record could not keep the id exactly,
    // and would then not match its own redelivery.
    if !storable(payload.hold_id.0) {
        return Err(Rejection::UnknownHold {
            hold_id: payload.hold_id,
        }
        .into());
    }
    if let Some(record) = record {
        assert_eq!(
            record.key, payload.key,
            "the caller read the payload's own record"
        );
        return Ok(replay(record, payload)?);
    }
    let (result, order_id, effect) = decide_new(payload, hold_and_product, order, now)?;
    let mut changes = hold_and_product.map(|(_, product)| Changes::on(product));
    let mut order_id = order_id;
    match (&mut changes, effect) {
        (_, WebhookEffect::None) => {}
        (Some(changes), WebhookEffect::PayOrder(_)) => changes.pay(order_of(order)?)?,
        (Some(changes), WebhookEffect::CancelOrder(_)) => {
            changes.cancel(order_of(order)?, CancelReason::PaymentFailed)?
        }
        (Some(changes), WebhookEffect::CreatePaidOrder(new)) => {
            order_id = Some(changes.consume(hold_of(hold_and_product)?, new)?);
        }
        (Some(changes), WebhookEffect::ReleaseHold(_, reason)) => {
            changes.release(hold_of(hold_and_product)?, reason)?;
        }
        (None, _) => return Err(Violation::WriteSetUnresolved.into()),
    }
    let mut writes = changes.map_or_else(Changes::none, Changes::finish);
    writes.webhooks.push(WebhookRecord {
        key: payload.key.clone(),
        hold_id: payload.hold_id,
        status: payload.status,
        fingerprint: payload.fingerprint(),
        result,
        order_id,
        received_at: now,
    });
    Ok(WebhookDecision::New {
        result,
        effect,
        writes: Box::new(writes),
    })
}

fn order_of(order: Option<&Order>) -> Result<&Order, Violation> {
    order.ok_or(Violation::WriteSetUnresolved)
}

fn hold_of<'a>(hold_and_product: Option<(&'a Hold, &Product)>) -> Result<&'a Hold, Violation> {
    hold_and_product
        .map(|(hold, _)| hold)
        .ok_or(Violation::WriteSetUnresolved)
}

/// A new key's result, the order concerned if it exists, and the effect, as the table says.
fn decide_new(
    payload: &WebhookPayload,
    hold_and_product: Option<(&Hold, &Product)>,
    order: Option<&Order>,
    now: Timestamp,
) -> Result<(WebhookResult, Option<OrderId>, WebhookEffect), Violation> {
    let Some((hold, product)) = hold_and_product else {
        return Ok(new(WebhookResult::Unmatched, None, WebhookEffect::None));
    };
    assert_eq!(
        hold.id, payload.hold_id,
        "the caller read the payload's own hold"
    );
    assert_eq!(
        hold.product_id, product.id,
        "the caller read the hold's own product"
    );
    // Deadlines on the product are judged at its decision time: never before what it folded.
    let now = product.decision_time(now);
    match (hold.state, order) {
        (HoldState::Consumed(order_id), Some(order)) => {
            assert_eq!(order.id, order_id, "the caller read the hold's own order");
            Ok(decide_for_order(order, payload.status, now))
        }
        (HoldState::Consumed(order_id), None) => Err(Violation::HoldOrderMismatch {
            hold_id: hold.id,
            order_id,
        }),
        (HoldState::Held, _) => Ok(decide_for_held(hold, product, payload.status, now)),
        (HoldState::Released(_), _) => Ok(match payload.status {
            PaymentStatus::Paid => new(WebhookResult::RefundRequired, None, WebhookEffect::None),
            PaymentStatus::Failed => new(WebhookResult::AlreadyApplied, None, WebhookEffect::None),
        }),
    }
}

fn replay(record: &WebhookRecord, payload: &WebhookPayload) -> Result<WebhookDecision, Rejection> {
    let field = if record.hold_id != payload.hold_id {
        Some("hold_id")
    } else if record.status != payload.status {
        Some("status")
    } else {
        None
    };
    match field {
        None => {
            debug_assert_eq!(
                record.fingerprint,
                payload.fingerprint(),
                "fields decide the print"
            );
            Ok(WebhookDecision::Replay(record.clone()))
        }
        Some(field) => Err(Rejection::IdempotencyKeyReused {
            key: payload.key.clone(),
            field,
        }),
    }
}

fn decide_for_order(order: &Order, status: PaymentStatus, now: Timestamp) -> Decided {
    let id = Some(order.id);
    match (order.status, status) {
        (OrderStatus::PrePayment, PaymentStatus::Paid) if order.is_overdue(now) => new(
            WebhookResult::RefundRequired,
            id,
            WebhookEffect::CancelOrder(order.id),
        ),
        (OrderStatus::PrePayment, PaymentStatus::Paid) => new(
            WebhookResult::Applied,
            id,
            WebhookEffect::PayOrder(order.id),
        ),
        (OrderStatus::PrePayment, PaymentStatus::Failed) => new(
            WebhookResult::Applied,
            id,
            WebhookEffect::CancelOrder(order.id),
        ),
        (OrderStatus::Paid, PaymentStatus::Paid)
        | (OrderStatus::Cancelled, PaymentStatus::Failed) => {
            new(WebhookResult::AlreadyApplied, id, WebhookEffect::None)
        }
        (OrderStatus::Paid, PaymentStatus::Failed) => {
            new(WebhookResult::Conflict, id, WebhookEffect::None)
        }
        (OrderStatus::Cancelled, PaymentStatus::Paid) => {
            new(WebhookResult::RefundRequired, id, WebhookEffect::None)
        }
    }
}

fn decide_for_held(
    hold: &Hold,
    product: &Product,
    status: PaymentStatus,
    now: Timestamp,
) -> Decided {
    let release = |reason| WebhookEffect::ReleaseHold(hold.id, reason);
    match status {
        PaymentStatus::Paid if hold.is_expired(now) => {
            // Released here, not left for the sweep: once the money is to be refunded, a clock
            // that runs behind must not let an order consume the hold.
            new(
                WebhookResult::RefundRequired,
                None,
                release(ReleaseReason::Expired),
            )
        }
        PaymentStatus::Paid => {
            // The window is irrelevant for an order born paid; its due time is its creation.
            match order::new_order(hold, product, now, OrderStatus::Paid, 0) {
                Ok(order) => new(
                    WebhookResult::Applied,
                    None,
                    WebhookEffect::CreatePaidOrder(order),
                ),
                // A total too large to record (a price above the core's limit, loaded from
                // rows): the sale cannot be made, so the payment is recorded for a refund
                // rather than dropped (invariant 5).
                Err(_) => new(WebhookResult::RefundRequired, None, WebhookEffect::None),
            }
        }
        PaymentStatus::Failed => new(
            WebhookResult::Applied,
            None,
            release(ReleaseReason::PaymentFailed),
        ),
    }
}

/// A new key's result, the existing order concerned, and the effect.
type Decided = (WebhookResult, Option<OrderId>, WebhookEffect);

fn new(result: WebhookResult, order_id: Option<OrderId>, effect: WebhookEffect) -> Decided {
    (result, order_id, effect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::payment::Fingerprint;

    #[test]
    fn cancelled_is_failed_and_fingerprints_alike() {
        assert_eq!(
            PaymentStatus::parse("cancelled"),
            Some(PaymentStatus::Failed)
        );
        assert_eq!(PaymentStatus::parse("PAID"), None);
        let failed = Fingerprint::of(HoldId(1), PaymentStatus::Failed);
        assert_eq!(
            failed,
            Fingerprint::of(HoldId(1), PaymentStatus::parse("cancelled").unwrap())
        );
        assert_ne!(failed, Fingerprint::of(HoldId(1), PaymentStatus::Paid));
        assert_ne!(failed, Fingerprint::of(HoldId(2), PaymentStatus::Failed));
    }

    #[test]
    fn fingerprints_are_stable_across_builds() {
        // Stored in databases: a change here would turn every replay into a key-reuse error.
        // Known answer: FNV-1a 64 of "1:paid".
        assert_eq!(
            Fingerprint::of(HoldId(1), PaymentStatus::Paid).to_string(),
            "4f45a7fa63333280"
        );
    }

    #[test]
    fn results_round_trip_through_their_words() {
        for word in [
            "applied",
            "already_applied",
            "conflict",
            "refund_required",
            "unmatched",
        ] {
            assert_eq!(
                WebhookResult::parse(word).map(WebhookResult::as_str),
                Some(word)
            );
        }
        assert_eq!(WebhookResult::parse("ok"), None);
    }
}
