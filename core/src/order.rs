//! The order decisions: turning a held hold into a sale, and cancelling orders whose payment
//! window closed. The rows they decide over are in [`crate::rows::order`].

use crate::errors::{Refusal, Rejection, Violation};
use crate::ids::{IdempotencyKey, OrderId};
use crate::rows::hold::{Hold, HoldState};
use crate::rows::order::{
    CancelReason, NewOrder, Order, OrderStatus, PAYMENT_WINDOW_MS_MAX, PAYMENT_WINDOW_MS_MIN,
};
use crate::rows::product::Product;
use crate::rows::request::{KeyedRequest, RequestRecord};
use crate::time::Timestamp;
use crate::writes::{Changes, WriteSet};

/// The decision on an order request, with what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderDecided {
    /// The order the hold already became, answered again; `None` when this decision creates
    /// the order (the first of `writes.orders_inserted`).
    pub existing: Option<OrderId>,
    /// The writes: the new order consuming its hold, and the request's key record if any.
    pub writes: WriteSet,
}

/// Checks a payment window before anything is read.
///
/// # Errors
/// [`Rejection::InvalidPaymentWindow`] outside `PAYMENT_WINDOW_MS_MIN..=PAYMENT_WINDOW_MS_MAX`.
pub fn validate_payment_window(payment_window_ms: u64) -> Result<(), Rejection> {
    if (PAYMENT_WINDOW_MS_MIN..=PAYMENT_WINDOW_MS_MAX).contains(&payment_window_ms) {
        Ok(())
    } else {
        Err(Rejection::InvalidPaymentWindow { payment_window_ms })
    }
}

/// Decides an order for `hold` of `product` at `now`, under the request's idempotency key if it
/// has one (already decided fresh by the shell; its record is written with the answer).
///
/// Checks, first failure wins: the window's range; the hold's state (a consumed hold answers its
/// order, a released one is [`Rejection::HoldReleased`]); its deadline
/// ([`Rejection::HoldExpired`], whatever clock made it look expired, and at no earlier instant
/// than the product's [`Product::decision_time`]); the total's range. A rejection changes
/// nothing, so an expired hold stays held until the sweeper retires it.
///
/// # Errors
/// As listed above, as [`Refusal::Rejected`]; [`Refusal::Violated`] when the product's counters
/// cannot give up the hold's units.
pub fn place_order(
    hold: &Hold,
    product: &Product,
    now: Timestamp,
    payment_window_ms: u64,
    key: Option<&IdempotencyKey>,
) -> Result<OrderDecided, Refusal> {
    assert_eq!(
        hold.product_id, product.id,
        "the caller read the hold's own product"
    );
    validate_payment_window(payment_window_ms)?;
    // Deadlines on the product are judged, and its rows stamped, at its decision time: never
    // before what it folded. The request's record keeps the clock's own time.
    let at = product.decision_time(now);
    let mut changes = Changes::on(product);
    let (existing, answered) = match hold.state {
        HoldState::Consumed(order_id) => (Some(order_id), order_id),
        HoldState::Released(_) => return Err(Rejection::HoldReleased { hold_id: hold.id }.into()),
        HoldState::Held if hold.is_expired(at) => {
            return Err(Rejection::HoldExpired { hold_id: hold.id }.into());
        }
        HoldState::Held => {
            let order = new_order(
                hold,
                product,
                at,
                OrderStatus::PrePayment,
                payment_window_ms,
            )?;
            (None, changes.consume(hold, order)?)
        }
    };
    if let Some(key) = key {
        changes.record_request(RequestRecord {
            key: key.clone(),
            request: KeyedRequest::PlaceOrder { hold_id: hold.id },
            resource_id: answered.0,
            created: existing.is_none(),
            created_at: now,
        });
    }
    Ok(OrderDecided {
        existing,
        writes: changes.finish(),
    })
}

/// Cancels the product's pre-payment orders whose payment window has closed at `now` (the
/// product's decision time), as the sweeper does: their units return to stock.
///
/// # Errors
/// A [`Violation`] when an order is not overdue pre-payment, or the stock would overflow.
pub fn cancel_overdue(
    changes: &mut Changes,
    overdue: &[Order],
    now: Timestamp,
) -> Result<(), Violation> {
    for order in overdue {
        if !order.is_overdue(now) {
            return Err(Violation::TerminalOrderChanged { order_id: order.id });
        }
        changes.cancel(order, CancelReason::PaymentWindowClosed)?;
    }
    Ok(())
}

/// The order that consumes `hold`, with the given status. Shared by [`place_order`] and the
/// `paid`-before-order webhook, so an order is priced in one place.
pub(crate) fn new_order(
    hold: &Hold,
    product: &Product,
    now: Timestamp,
    status: OrderStatus,
    payment_window_ms: u64,
) -> Result<NewOrder, Rejection> {
    let total_cents = product
        .price_cents
        .times(hold.qty)
        .ok_or(Rejection::TotalOverflow { hold_id: hold.id })?;
    Ok(NewOrder {
        hold_id: hold.id,
        product_id: product.id,
        qty: hold.qty,
        total_cents,
        status,
        created_at: now,
        payment_due_at: now.saturating_add_ms(payment_window_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cents, HoldId, ProductId, Qty};
    use crate::rows::hold::{HoldGrant, ReleaseReason};
    use crate::rows::order::{PAYMENT_WINDOW_MS_DEFAULT, Settlement};

    const PAYMENT_FAILED: HoldState = HoldState::Released(ReleaseReason::PaymentFailed);

    fn product() -> Product {
        Product {
            id: ProductId(1),
            name: "p".into(),
            price_cents: Cents(500),
            stock: Qty(3),
            units_held: Qty(2),
            units_received: 3,
            expired_through: Timestamp(0),
            holds_to_retire: 0,
            open_bucket: Default::default(),
        }
    }

    fn hold(state: HoldState) -> Hold {
        let grant = HoldGrant {
            qty: Qty(2),
            created_at: Timestamp(0),
            expires_at: Timestamp(100),
        };
        Hold {
            state,
            ..grant.with_id(HoldId(7), ProductId(1))
        }
    }

    #[test]
    fn the_payment_window_is_one_second_to_seven_days_fifteen_minutes_by_default() {
        assert_eq!(PAYMENT_WINDOW_MS_DEFAULT, 900_000);
        for ok in [1_000, 900_000, 604_800_000] {
            assert_eq!(validate_payment_window(ok), Ok(()), "{ok} ms");
        }
        for refused in [0, 999, 604_800_001] {
            assert_eq!(
                validate_payment_window(refused),
                Err(Rejection::InvalidPaymentWindow {
                    payment_window_ms: refused
                }),
                "{refused} ms"
            );
        }
    }

    #[test]
    fn statuses_have_their_api_words_and_only_paid_and_cancelled_are_final() {
        let words = [
            (OrderStatus::PrePayment, "pre_payment", false, true),
            (OrderStatus::Paid, "paid", true, true),
            (OrderStatus::Cancelled, "cancelled", true, false),
        ];
        for (status, word, terminal, holds_units) in words {
            assert_eq!(status.as_str(), word);
            assert_eq!(OrderStatus::parse(word), Some(status));
            assert_eq!(status.is_terminal(), terminal, "{word}");
            assert_eq!(status.holds_units(), holds_units, "{word}");
        }
        for unknown in ["", "Paid", "pending", "xyzzy"] {
            assert_eq!(OrderStatus::parse(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn a_held_hold_becomes_a_pre_payment_order_priced_at_qty_times_price() {
        let decision = place_order(
            &hold(HoldState::Held),
            &product(),
            Timestamp(50),
            1_000,
            None,
        );
        let Ok(OrderDecided {
            existing: None,
            writes,
        }) = decision
        else {
            panic!("{decision:?}")
        };
        let order = writes.orders_inserted[0];
        let counters = writes
            .product(ProductId(1))
            .map(|p| (p.stock, p.units_held));
        assert_eq!(
            counters,
            Some((Qty(1), Qty(0))),
            "sold: out of stock and held"
        );
        assert_eq!(order.total_cents, Cents(1_000));
        assert_eq!(order.status, OrderStatus::PrePayment);
        assert_eq!(order.payment_due_at, Timestamp(1_050));
    }

    #[test]
    fn a_cancelled_order_says_why_a_closed_window_or_a_failed_payment() {
        use crate::ids::IdempotencyKey;
        use crate::payment::{WebhookDecision, decide_webhook};
        use crate::rows::payment::{PaymentStatus, WebhookPayload};
        let p = product();
        let order = NewOrder {
            hold_id: HoldId(7),
            product_id: p.id,
            qty: Qty(2),
            total_cents: Cents(1_000),
            status: OrderStatus::PrePayment,
            created_at: Timestamp(0),
            payment_due_at: Timestamp(100),
        }
        .with_id(OrderId(3));
        let mut changes = Changes::on(&p);
        cancel_overdue(&mut changes, &[order], Timestamp(100)).expect("overdue");
        assert_eq!(
            changes.finish().orders_updated,
            vec![(
                OrderId(3),
                Settlement::Cancelled(CancelReason::PaymentWindowClosed)
            )]
        );
        let payload = WebhookPayload {
            key: IdempotencyKey::parse("evt").expect("valid"),
            hold_id: HoldId(7),
            status: PaymentStatus::Failed,
        };
        let consumed = hold(HoldState::Consumed(OrderId(3)));
        let decided = decide_webhook(
            None,
            &payload,
            Some((&consumed, &p)),
            Some(&order),
            Timestamp(50),
        );
        let Ok(WebhookDecision::New { writes, .. }) = decided else {
            panic!("{decided:?}")
        };
        assert_eq!(
            writes.orders_updated,
            vec![(
                OrderId(3),
                Settlement::Cancelled(CancelReason::PaymentFailed)
            )]
        );
        for reason in [
            CancelReason::PaymentFailed,
            CancelReason::PaymentWindowClosed,
        ] {
            assert_eq!(CancelReason::parse(reason.as_str()), Some(reason));
            assert_eq!(
                Settlement::Cancelled(reason).status(),
                OrderStatus::Cancelled
            );
            assert_eq!(Settlement::Cancelled(reason).cancel_reason(), Some(reason));
        }
        assert_eq!(Settlement::Paid.cancel_reason(), None);
    }

    #[test]
    fn expired_released_and_consumed_holds_are_answered_without_a_new_order() {
        let p = product();
        let expired = place_order(&hold(HoldState::Held), &p, Timestamp(100), 1_000, None);
        let refused = |rejection: Rejection| Err(Refusal::Rejected(rejection));
        assert_eq!(
            expired,
            refused(Rejection::HoldExpired { hold_id: HoldId(7) })
        );
        let released = place_order(&hold(PAYMENT_FAILED), &p, Timestamp(0), 1_000, None);
        assert_eq!(
            released,
            refused(Rejection::HoldReleased { hold_id: HoldId(7) })
        );
        let consumed = place_order(
            &hold(HoldState::Consumed(OrderId(3))),
            &p,
            Timestamp(500),
            1_000,
            None,
        );
        let found = OrderDecided {
            existing: Some(OrderId(3)),
            writes: WriteSet::default(),
        };
        assert_eq!(consumed, Ok(found));
    }
}
