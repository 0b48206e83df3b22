//! Scenario tests: every rule of docs/DESIGN.md's "Domain" section and every row of the webhook
//! table in `payment.rs`, each told as a short story against the in-memory [`Ledger`].
//!
//! Each line of a story is one command at one instant with the answer it must get
//! (`s.step(now_ms, command, expect_...)`), or a look at the state (`s.expect_available(..)`), so
//! a reviewer reads the rule top to bottom. After every step the harness checks the invariants
//! on the rows, and that a rejection or a replayed webhook changed no row. The first seven tests
//! re-express the original Laravel service's feature tests; the eighth pins its oversell bug.
//! Times are milliseconds; a hold placed at `0` expires at [`TTL_MS`], an order placed at `0` is
//! due at [`WINDOW_MS`].

use flashsale_core::WebhookResult::{AlreadyApplied, Applied, Conflict, RefundRequired, Unmatched};
use flashsale_core::rows::hold::{HOLD_QTY_MAX, HOLD_TTL_MS_MAX};
use flashsale_core::rows::order::PAYMENT_WINDOW_MS_MAX;
use flashsale_core::rows::product::PRICE_CENTS_MAX;
use flashsale_core::{
    Cents, Command, Folded, Hold, HoldId, HoldState, HoldView, IdempotencyKey, Ledger, Order,
    OrderId, OrderStatus, Outcome, PaymentStatus, Product, ProductId, Qty, Rejection,
    ReleaseReason, Timestamp, WebhookPayload, WebhookRecord, WebhookResult,
};

/// The TTL of every hold in these stories, unless one says otherwise.
const TTL_MS: u64 = 60_000;
/// The payment window of every order in these stories.
const WINDOW_MS: u64 = 900_000;

const EXPIRED: HoldState = HoldState::Released(ReleaseReason::Expired);
const PAYMENT_FAILED: HoldState = HoldState::Released(ReleaseReason::PaymentFailed);

// The original service's feature tests.

#[test]
fn a_product_with_stock_five_shows_five_available() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 5);
    s.expect_stock(p, 5);
    s.expect_available(p, 0, 5);
}

#[test]
fn holding_two_of_three_leaves_one_available() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    s.step(0, hold(p, 2), expect_granted(2));
    s.expect_available(p, 0, 1);
    // Held units are not sold: they stay in stock.
    s.expect_stock(p, 3);
}

#[test]
fn an_expired_hold_returns_its_units_to_available() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.expect_available(p, TTL_MS - 1, 1);
    // A deadline is past from its own instant on.
    s.expect_available(p, TTL_MS, 3);
    // Looking is not a transition: the hold is still held, and shows as expired.
    s.expect_hold(h, HoldState::Held);
    s.expect_hold_view(h, TTL_MS, HoldView::Expired);
}

#[test]
fn an_order_consumes_its_hold_and_moves_its_units_out_of_stock() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let order = s.step(1_000, order(h), expect_new_order()).order();
    assert_eq!(order.total_cents, Cents(1_000), "price times qty");
    assert_eq!(order.qty, Qty(2));
    s.expect_hold(h, HoldState::Consumed(order.id));
    s.expect_stock(p, 1);
    s.expect_available(p, 1_000, 1);
    // The consumed hold's expiry changes nothing: its units are sold, not held.
    s.expect_available(p, TTL_MS, 1);
}

#[test]
fn a_paid_webhook_delivered_twice_pays_the_order_once() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(1_000, paid("evt-1", h), expect_webhook(Applied));
    s.step(2_000, paid("evt-1", h), expect_replayed(Applied));
    // The provider may also resend under a new key: that is no second payment either.
    s.step(3_000, paid("evt-2", h), expect_webhook(AlreadyApplied));
    s.expect_order(o, OrderStatus::Paid);
    s.expect_stock(p, 1);
}

#[test]
fn a_paid_webhook_before_the_order_creates_the_order_paid() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let answer = s.step(1_000, paid("evt-1", h), expect_webhook(Applied));
    let record = answer.record();
    let o = record.order_id.expect("names the order");
    s.expect_order(o, OrderStatus::Paid);
    s.expect_hold(h, HoldState::Consumed(o));
    s.expect_stock(p, 1);
    // The buyer's own order request arrives late: it answers the paid order, creating nothing.
    s.step(2_000, order(h), expect_same_order(o, OrderStatus::Paid));
    s.expect_stock(p, 1);
}

#[test]
fn a_hold_larger_than_available_is_rejected_naming_what_is_available() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    s.step(0, hold(p, 2), expect_granted(2));
    s.step(0, hold(p, 2), expect_rejected(insufficient(2, 1)));
    s.step(0, hold(p, 1), expect_granted(1));
    s.step(0, hold(p, 1), expect_rejected(insufficient(1, 0)));
}

// The original service's oversell bug.

#[test]
fn an_ordered_unit_is_never_sold_again_after_its_hold_expires() {
    // The original kept ordered units in stock and counted them out only through the hold, so
    // once the hold's TTL passed the unit showed as available and was sold a second time.
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 1);
    let h = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    s.step(1_000, order(h), expect_new_order());
    s.expect_available(p, 1_000, 0);
    s.expect_available(p, TTL_MS + 1, 0);
    s.step(TTL_MS + 1, hold(p, 1), expect_rejected(insufficient(1, 0)));
    s.step(TTL_MS + 2, paid("evt-1", h), expect_webhook(Applied));
    let much_later = 10 * WINDOW_MS;
    s.step(much_later, sweep(), expect_swept(&[], &[]));
    s.step(much_later, hold(p, 1), expect_rejected(insufficient(1, 0)));
    s.expect_stock(p, 0);
}

// Unit accounting.

#[test]
fn available_counts_only_held_unexpired_holds() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 100, 10);
    s.step(0, hold_for(p, 3, TTL_MS), expect_granted(3));
    s.step(0, hold_for(p, 2, 2 * TTL_MS), expect_granted(2));
    let sold = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    s.step(0, order(sold), expect_new_order());
    // Stock 9 (one unit sold), 5 of them held.
    s.expect_stock(p, 9);
    s.expect_available(p, 0, 4);
    s.expect_available(p, TTL_MS, 7);
    s.expect_available(p, 2 * TTL_MS, 9);
    s.step(0, hold(p, 4), expect_granted(4));
    // Every unit held: available is zero, never below.
    s.expect_available(p, 0, 0);
}

#[test]
fn a_failed_webhook_returns_an_orders_units_exactly_once() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.expect_stock(p, 1);
    s.step(1_000, failed("evt-1", h), expect_webhook(Applied));
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 3);
    s.step(2_000, failed("evt-2", h), expect_webhook(AlreadyApplied));
    s.step(3_000, failed("evt-1", h), expect_replayed(Applied));
    // The sweep does not cancel it a second time either.
    s.step(2 * WINDOW_MS, sweep(), expect_swept(&[], &[]));
    s.expect_stock(p, 3);
    s.expect_available(p, 2 * WINDOW_MS, 3);
}

// Expiry is a transition.

#[test]
fn granting_a_hold_first_folds_the_products_due_expiry_bucket() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 5);
    let q = s.create_product("Q", 500, 5);
    let h1 = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let h2 = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    let young = s.step(10_000, hold(p, 1), expect_granted(1)).hold_id();
    let other = s.step(0, hold(q, 1), expect_granted(1)).hold_id();
    // One bucket for the two holds of one deadline: two holds and three units back on sale,
    // and neither hold's row written.
    s.step(TTL_MS, hold(p, 1), expect_granted(1).folding(2, 3));
    s.expect_hold(h1, HoldState::Held);
    s.expect_hold(h2, HoldState::Held);
    s.expect_hold_view(h1, TTL_MS, HoldView::Expired);
    s.expect_hold(young, HoldState::Held);
    s.expect_available(p, TTL_MS, 3);
    // Only the product being held from is touched: Q's bucket waits for its own turn.
    s.expect_hold(other, HoldState::Held);
    s.expect_hold_view(other, TTL_MS, HoldView::Expired);
    // The sweeper retires the rows of the holds expired for good, and Q's once folded.
    s.step(TTL_MS, sweep(), expect_swept(&[h1, h2, other], &[]));
    s.expect_hold(h1, EXPIRED);
    s.expect_hold(young, HoldState::Held);
}

#[test]
fn a_rejected_hold_releases_nothing() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    // Decided as if the expired hold were released (3 available), but a rejection writes nothing.
    s.step(TTL_MS, hold(p, 4), expect_rejected(insufficient(4, 3)));
    s.expect_hold(h, HoldState::Held);
    s.expect_hold_view(h, TTL_MS, HoldView::Expired);
}

#[test]
fn a_hold_expired_for_good_is_never_ordered_even_when_the_clock_jumps_back() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 2);
    let h = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    // The grant folds h's bucket: its unit is on sale again, and may be held by anyone.
    s.step(TTL_MS, hold(p, 1), expect_granted(1).folding(1, 1));
    // Another server's clock, one second after the hold was granted: the product decides no
    // earlier than what it folded, so h is expired there too.
    s.step(1_000, order(h), expect_rejected(hold_expired(h)));
    s.step(1_000, paid("evt-1", h), expect_webhook(RefundRequired));
    s.expect_hold(h, EXPIRED);
    s.expect_stock(p, 2);
}

#[test]
fn an_expired_unreleased_hold_looks_young_again_when_the_clock_jumps_back() {
    // Intended (STYLE.md, "The sans-IO core"): the core never assumes time moves forward, so a
    // held hold is judged by the `now` it is given. A backward jump may make a hold look young
    // again, never one expired for good; its units were never handed to anyone else, because
    // granting a hold folds the due buckets first, and a hold whose bucket was folded is
    // expired whatever the clock says.
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 1);
    let h = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    s.step(TTL_MS, order(h), expect_rejected(hold_expired(h)));
    s.step(TTL_MS - 1, order(h), expect_new_order());
    s.expect_stock(p, 0);
}

// Orders.

#[test]
fn ordering_an_expired_hold_is_rejected_as_expired() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(TTL_MS, order(h), expect_rejected(hold_expired(h)));
    s.expect_hold(h, HoldState::Held);
    s.expect_stock(p, 3);
}

#[test]
fn ordering_a_released_hold_is_rejected_as_released() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(TTL_MS, sweep(), expect_swept(&[h], &[]));
    s.step(TTL_MS, order(h), expect_rejected(hold_released(h)));
    s.expect_stock(p, 3);
}

#[test]
fn ordering_an_unknown_hold_is_rejected() {
    let mut s = Scenario::new();
    s.create_product("P", 500, 3);
    let h = HoldId(999);
    let unknown = Rejection::UnknownHold { hold_id: h };
    s.step(0, order(h), expect_rejected(unknown));
}

#[test]
fn ordering_the_same_hold_twice_answers_the_same_order() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    // Even after the hold's TTL: the hold is consumed, and a consumed hold answers its order.
    let again = expect_same_order(o, OrderStatus::PrePayment);
    s.step(TTL_MS + 1, order(h), again);
    s.expect_stock(p, 1);
}

#[test]
fn the_largest_price_times_the_largest_hold_is_a_valid_order_total() {
    // Prices are bounded at creation, so no order, and no `paid` webhook creating one, can be
    // refused for a total that does not fit.
    let mut s = Scenario::new();
    let max = HOLD_QTY_MAX.0;
    let p = s.create_product("P", PRICE_CENTS_MAX.0, max);
    let h = s.step(0, hold(p, max), expect_granted(max)).hold_id();
    let order = s.step(0, order(h), expect_new_order()).order();
    let total = PRICE_CENTS_MAX.times(HOLD_QTY_MAX);
    assert_eq!(Some(order.total_cents), total);
}

// The webhook table (payment.rs), row by row. The rows "held, paid" and "paid, paid" are the
// feature tests above.

#[test]
fn a_paid_webhook_for_an_unknown_hold_is_recorded_as_unmatched() {
    let mut s = Scenario::new();
    let h = HoldId(999);
    let answer = s.step(0, paid("evt-1", h), expect_webhook(Unmatched));
    assert_eq!(answer.record().order_id, None);
    s.step(1, paid("evt-1", h), expect_replayed(Unmatched));
}

#[test]
fn a_failed_webhook_for_an_unknown_hold_is_recorded_as_unmatched() {
    let mut s = Scenario::new();
    s.step(0, failed("evt-1", HoldId(999)), expect_webhook(Unmatched));
}

#[test]
fn a_failed_webhook_before_the_order_releases_the_hold() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(1_000, failed("evt-1", h), expect_webhook(Applied));
    s.expect_hold(h, PAYMENT_FAILED);
    s.expect_available(p, 1_000, 3);
    s.step(2_000, order(h), expect_rejected(hold_released(h)));
}

#[test]
fn a_paid_webhook_on_an_expired_hold_releases_it_and_asks_for_a_refund() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(TTL_MS, paid("evt-1", h), expect_webhook(RefundRequired));
    s.expect_hold(h, EXPIRED);
    s.expect_stock(p, 3);
    // Released, not only expired: a clock running behind cannot sell it after the refund.
    s.step(1_000, order(h), expect_rejected(hold_released(h)));
}

#[test]
fn a_failed_webhook_on_an_expired_hold_releases_it() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(TTL_MS, failed("evt-1", h), expect_webhook(Applied));
    s.expect_hold(h, PAYMENT_FAILED);
    s.step(1_000, order(h), expect_rejected(hold_released(h)));
}

#[test]
fn a_paid_webhook_on_a_released_hold_asks_for_a_refund() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(TTL_MS, sweep(), expect_swept(&[h], &[]));
    s.step(TTL_MS, paid("evt-1", h), expect_webhook(RefundRequired));
    s.expect_hold(h, EXPIRED);
    s.expect_stock(p, 3);
}

#[test]
fn a_failed_webhook_on_a_released_hold_is_already_applied() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(TTL_MS, sweep(), expect_swept(&[h], &[]));
    s.step(TTL_MS, failed("evt-1", h), expect_webhook(AlreadyApplied));
    s.expect_hold(h, EXPIRED);
}

#[test]
fn a_paid_webhook_pays_a_pre_payment_order_within_its_window() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    let answer = s.step(WINDOW_MS - 1, paid("evt-1", h), expect_webhook(Applied));
    assert_eq!(answer.record().order_id, Some(o));
    s.expect_order(o, OrderStatus::Paid);
    s.expect_stock(p, 1);
}

#[test]
fn a_failed_webhook_cancels_a_pre_payment_order_and_returns_its_units() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(1_000, failed("evt-1", h), expect_webhook(Applied));
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 3);
    s.expect_available(p, 1_000, 3);
}

#[test]
fn a_paid_webhook_after_the_payment_window_cancels_the_order_and_asks_for_a_refund() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    // Due at WINDOW_MS and not swept yet: the webhook closes the sale itself.
    s.step(WINDOW_MS, paid("evt-1", h), expect_webhook(RefundRequired));
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 3);
}

#[test]
fn a_failed_webhook_after_the_payment_window_cancels_the_order() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(WINDOW_MS, failed("evt-1", h), expect_webhook(Applied));
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 3);
}

#[test]
fn a_failed_webhook_on_a_paid_order_is_a_conflict_and_the_order_stays_paid() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(1_000, paid("evt-1", h), expect_webhook(Applied));
    s.step(2_000, failed("evt-2", h), expect_webhook(Conflict));
    s.expect_order(o, OrderStatus::Paid);
    s.expect_stock(p, 1);
}

#[test]
fn a_paid_webhook_on_a_cancelled_order_asks_for_a_refund() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(WINDOW_MS, sweep(), expect_swept(&[], &[o]));
    // Whatever the clock says: a cancelled order is terminal.
    s.step(1_000, paid("evt-1", h), expect_webhook(RefundRequired));
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 3);
}

#[test]
fn a_failed_webhook_on_a_cancelled_order_is_already_applied() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(WINDOW_MS, sweep(), expect_swept(&[], &[o]));
    let already = expect_webhook(AlreadyApplied);
    s.step(WINDOW_MS, failed("evt-1", h), already);
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 3);
}

#[test]
fn an_overdue_unswept_order_can_still_be_paid_when_the_clock_jumps_back() {
    // Intended, like a hold that looks young again: an order is cancelled only by a transaction,
    // and until then its units are still out of stock, so paying it sells nothing twice.
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    // The window closes at WINDOW_MS; a later command on the product leaves the order waiting.
    let closed = WINDOW_MS + 1;
    let later = s.step(closed, hold(p, 1), expect_granted(1)).hold_id();
    s.expect_order(o, OrderStatus::PrePayment);
    // A server whose clock runs behind receives the payment.
    s.step(WINDOW_MS - 1, paid("evt-1", h), expect_webhook(Applied));
    s.expect_order(o, OrderStatus::Paid);
    s.step(2 * WINDOW_MS, sweep(), expect_swept(&[later], &[]));
    s.expect_stock(p, 1);
}

// Webhook idempotency.

#[test]
fn cancelled_is_accepted_as_failed() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    let answer = s.step(1_000, cancelled("evt-1", h), expect_webhook(Applied));
    assert_eq!(answer.record().status, PaymentStatus::Failed);
    s.expect_order(o, OrderStatus::Cancelled);
    // The same key with the other word for the same verdict is the same payload: a replay.
    s.step(2_000, failed("evt-1", h), expect_replayed(Applied));
}

#[test]
fn reusing_a_key_for_another_hold_is_rejected_naming_hold_id() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    let other = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    s.step(0, paid("evt-1", h), expect_webhook(Applied));
    // Both fields differ: the first differing one is named.
    let reused = key_reused("evt-1", "hold_id");
    s.step(1_000, failed("evt-1", other), expect_rejected(reused));
    s.expect_hold(other, HoldState::Held);
}

#[test]
fn reusing_a_key_with_another_status_is_rejected_naming_status() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    let o = s.step(0, order(h), expect_new_order()).order_id();
    s.step(0, paid("evt-1", h), expect_webhook(Applied));
    let reused = key_reused("evt-1", "status");
    s.step(1_000, failed("evt-1", h), expect_rejected(reused));
    s.expect_order(o, OrderStatus::Paid);
}

#[test]
fn a_replayed_key_answers_its_stored_record_even_after_the_state_moved_on() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    // A verdict for a hold that does not exist yet (hold ids are allocated in sequence from 1).
    let next = HoldId(1);
    let first = s.step(0, paid("evt-1", next), expect_webhook(Unmatched));
    let h = s.step(1_000, hold(p, 1), expect_granted(1)).hold_id();
    assert_eq!(h, next, "the hold the early verdict named now exists");
    // The stored answer, not a new decision: the hold is not turned into a paid order.
    let replay = s.step(2_000, paid("evt-1", h), expect_replayed(Unmatched));
    assert_eq!(replay.record(), first.record(), "received_at too");
    s.expect_hold(h, HoldState::Held);

    // An applied verdict replayed after the payment window closed is still `applied`.
    let o = s.step(2_000, order(h), expect_new_order()).order_id();
    s.step(3_000, paid("evt-2", h), expect_webhook(Applied));
    s.step(10 * WINDOW_MS, paid("evt-2", h), expect_replayed(Applied));
    s.expect_order(o, OrderStatus::Paid);
}

// The sweep and the next deadline.

#[test]
fn a_sweep_releases_expired_holds_and_cancels_overdue_orders() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 5);
    let q = s.create_product("Q", 500, 5);
    let hp = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let hq = s.step(0, hold(q, 1), expect_granted(1)).hold_id();
    let young = s.step(0, hold_for(q, 1, 2 * WINDOW_MS), expect_granted(1));
    let young = young.hold_id();
    let sold = s.step(0, hold(p, 3), expect_granted(3)).hold_id();
    let o = s.step(0, order(sold), expect_new_order()).order_id();
    s.expect_stock(p, 2);
    s.step(WINDOW_MS, sweep(), expect_swept(&[hp, hq], &[o]));
    s.expect_hold(hp, EXPIRED);
    s.expect_hold(hq, EXPIRED);
    s.expect_hold(young, HoldState::Held);
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(p, 5);
    s.expect_available(p, WINDOW_MS, 5);
    s.expect_available(q, WINDOW_MS, 4);
    // A second sweep finds nothing left to do.
    s.step(WINDOW_MS, sweep(), expect_swept(&[], &[]));
}

#[test]
fn a_sweep_of_one_product_leaves_the_other_products_alone() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 5);
    let q = s.create_product("Q", 500, 5);
    let hp = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let hq = s.step(0, hold(q, 1), expect_granted(1)).hold_id();
    let sold = s.step(0, hold(q, 3), expect_granted(3)).hold_id();
    let o = s.step(0, order(sold), expect_new_order()).order_id();
    let only_q = Command::SweepProduct {
        product_id: q,
        holds: vec![hq],
        orders: vec![o],
    };
    s.step(WINDOW_MS, only_q, expect_swept(&[hq], &[o]));
    s.expect_hold(hp, HoldState::Held);
    s.expect_hold(hq, EXPIRED);
    s.expect_order(o, OrderStatus::Cancelled);
    s.expect_stock(q, 5);
    s.step(WINDOW_MS, sweep(), expect_swept(&[hp], &[]));
}

#[test]
fn a_sweep_before_any_deadline_changes_nothing() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 5);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    let sold = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    let o = s.step(0, order(sold), expect_new_order()).order_id();
    s.step(TTL_MS - 1, sweep(), expect_swept(&[], &[]));
    s.expect_hold(h, HoldState::Held);
    s.expect_order(o, OrderStatus::PrePayment);
}

#[test]
fn next_deadline_is_the_earliest_pending_deadline_and_none_when_nothing_is_pending() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 5);
    s.expect_next_deadline(None);
    let sold = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    s.expect_next_deadline(Some(TTL_MS));
    let o = s.step(1_000, order(sold), expect_new_order()).order_id();
    // The order is now the only thing pending.
    s.expect_next_deadline(Some(1_000 + WINDOW_MS));
    let h = s.step(5_000, hold(p, 1), expect_granted(1)).hold_id();
    s.expect_next_deadline(Some(5_000 + TTL_MS));
    // A passed deadline is still reported until a command acts on it.
    s.expect_next_deadline(Some(5_000 + TTL_MS));
    s.step(5_000 + TTL_MS, sweep(), expect_swept(&[h], &[]));
    s.expect_next_deadline(Some(1_000 + WINDOW_MS));
    s.step(1_000 + WINDOW_MS, sweep(), expect_swept(&[], &[o]));
    s.expect_next_deadline(None);
}

// Check order: the request's own values, then existence, then state, then stock, then limits.

#[test]
fn a_zero_qty_hold_on_an_unknown_product_is_an_invalid_qty() {
    let mut s = Scenario::new();
    let zero = Rejection::InvalidQty { qty: Qty(0) };
    s.step(0, hold(ProductId(999), 0), expect_rejected(zero));
}

#[test]
fn a_hold_qty_above_the_limit_is_an_invalid_qty_even_with_the_stock_for_it() {
    let mut s = Scenario::new();
    let max = HOLD_QTY_MAX.0;
    let p = s.create_product("P", 1, max + 1);
    let invalid = Rejection::InvalidQty { qty: Qty(max + 1) };
    s.step(0, hold(p, max + 1), expect_rejected(invalid));
    s.step(0, hold(p, max), expect_granted(max));
}

#[test]
fn an_out_of_range_ttl_is_reported_before_an_unknown_product() {
    let mut s = Scenario::new();
    let ttl_ms = HOLD_TTL_MS_MAX + 1;
    let invalid = Rejection::InvalidTtl { ttl_ms };
    let unknown = ProductId(999);
    s.step(0, hold_for(unknown, 1, ttl_ms), expect_rejected(invalid));
}

#[test]
fn an_unknown_product_is_reported_before_insufficient_stock() {
    let mut s = Scenario::new();
    let product_id = ProductId(999);
    let unknown = Rejection::UnknownProduct { product_id };
    s.step(0, hold(product_id, 5), expect_rejected(unknown));
}

#[test]
fn an_invalid_payment_window_is_reported_before_an_unknown_hold() {
    let mut s = Scenario::new();
    let payment_window_ms = PAYMENT_WINDOW_MS_MAX + 1;
    let command = Command::PlaceOrder {
        hold_id: HoldId(999),
        payment_window_ms,
        key: None,
    };
    let invalid = Rejection::InvalidPaymentWindow { payment_window_ms };
    s.step(0, command, expect_rejected(invalid));
}

#[test]
fn a_released_hold_is_reported_as_released_rather_than_expired() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 2), expect_granted(2)).hold_id();
    s.step(1_000, failed("evt-1", h), expect_webhook(Applied));
    s.step(TTL_MS, order(h), expect_rejected(hold_released(h)));
}

#[test]
fn a_reused_key_is_reported_before_an_unknown_hold() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 1), expect_granted(1)).hold_id();
    s.step(0, failed("evt-1", h), expect_webhook(Applied));
    let reused = key_reused("evt-1", "hold_id");
    s.step(0, failed("evt-1", HoldId(999)), expect_rejected(reused));
}

// Products and restocks.

#[test]
fn restocking_raises_stock_and_units_received() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let h = s.step(0, hold(p, 3), expect_granted(3)).hold_id();
    s.step(0, order(h), expect_new_order());
    s.step(0, hold(p, 1), expect_rejected(insufficient(1, 0)));
    s.step(1_000, restock(p, 4), expect_restocked(4, 7));
    s.expect_available(p, 1_000, 4);
    s.step(1_000, hold(p, 4), expect_granted(4));
}

#[test]
fn restocking_zero_units_is_rejected() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, 3);
    let zero = Rejection::InvalidQty { qty: Qty(0) };
    s.step(0, restock(p, 0), expect_rejected(zero));
    s.expect_stock(p, 3);
}

#[test]
fn restocking_an_unknown_product_is_rejected() {
    let mut s = Scenario::new();
    let product_id = ProductId(999);
    let unknown = Rejection::UnknownProduct { product_id };
    s.step(0, restock(product_id, 1), expect_rejected(unknown));
    // Validation comes before existence.
    let zero = Rejection::InvalidQty { qty: Qty(0) };
    s.step(0, restock(product_id, 0), expect_rejected(zero));
}

#[test]
fn restocking_past_the_largest_stock_is_rejected() {
    let mut s = Scenario::new();
    let p = s.create_product("P", 500, u32::MAX);
    let overflow = Rejection::StockOverflow { product_id: p };
    s.step(0, restock(p, 1), expect_rejected(overflow));
}

#[test]
fn a_price_above_the_limit_is_rejected_after_the_name() {
    let mut s = Scenario::new();
    let price_cents = Cents(PRICE_CENTS_MAX.0 + 1);
    let too_dear = |name: &str| Command::CreateProduct {
        name: name.to_owned(),
        price_cents,
        stock: Qty(1),
    };
    let invalid = Rejection::InvalidPrice { price_cents };
    s.step(0, too_dear("P"), expect_rejected(invalid));
    s.step(0, too_dear(" "), expect_rejected(Rejection::InvalidName));
}

#[test]
fn a_blank_empty_or_overlong_product_name_is_rejected() {
    let mut s = Scenario::new();
    let invalid = || expect_rejected(Rejection::InvalidName);
    s.step(0, product_named("   "), invalid());
    s.step(0, product_named(""), invalid());
    s.step(0, product_named(&"x".repeat(256)), invalid());
    s.step(0, product_named(&"x".repeat(255)), expect_created());
}

// The harness.

/// A story against one ledger. Every step checks its answer, that a rejection or a replay
/// changed no row, and the invariants.
struct Scenario {
    ledger: Ledger,
    steps: usize,
}

impl Scenario {
    fn new() -> Self {
        Scenario {
            ledger: Ledger::new(),
            steps: 0,
        }
    }

    /// Applies `command` at `now_ms` and checks the answer against `expected`.
    #[track_caller]
    fn step(&mut self, now_ms: u64, command: Command, expected: Expect) -> Answer {
        self.steps = self.steps.checked_add(1).expect("a story of fewer steps");
        let context = format!("step {} at {now_ms} ms, {command:?}", self.steps);
        let before = Rows::of(&self.ledger);
        let answer = self.ledger.apply(Timestamp(now_ms), command);
        expected.check(&answer, &context);
        let replayed = matches!(answer, Ok(Outcome::WebhookApplied { replayed: true, .. }));
        if answer.is_err() || replayed {
            let after = Rows::of(&self.ledger);
            assert_eq!(before, after, "{context}: changed the rows");
        }
        if let Err(violation) = self.ledger.check_invariants() {
            panic!("{context}: invariant violated: {violation}");
        }
        Answer(answer)
    }

    /// The step every story starts with: creating a product at `0`.
    #[track_caller]
    fn create_product(&mut self, name: &str, price_cents: u64, stock: u32) -> ProductId {
        let command = Command::CreateProduct {
            name: name.to_owned(),
            price_cents: Cents(price_cents),
            stock: Qty(stock),
        };
        let product_id = self.step(0, command, expect_created()).product_id();
        self.expect_stock(product_id, stock);
        product_id
    }

    #[track_caller]
    fn expect_available(&self, product_id: ProductId, now_ms: u64, units: u32) {
        let available = self.ledger.available(product_id, Timestamp(now_ms));
        let what = format!("available of {product_id} at {now_ms} ms");
        assert_eq!(available, Some(Qty(units)), "{what}");
    }

    #[track_caller]
    fn expect_stock(&self, product_id: ProductId, units: u32) {
        let stock = self.product(product_id).stock;
        assert_eq!(stock, Qty(units), "stock of {product_id}");
    }

    #[track_caller]
    fn expect_hold(&self, hold_id: HoldId, state: HoldState) {
        assert_eq!(self.hold(hold_id).state, state, "state of hold {hold_id}");
    }

    #[track_caller]
    fn expect_hold_view(&self, hold_id: HoldId, now_ms: u64, view: HoldView) {
        let seen = self.hold(hold_id).view(Timestamp(now_ms));
        assert_eq!(seen, view, "view of hold {hold_id} at {now_ms} ms");
    }

    #[track_caller]
    fn expect_order(&self, order_id: OrderId, status: OrderStatus) {
        let order = self.ledger.order(order_id);
        let order = order.unwrap_or_else(|| panic!("no order {order_id}"));
        assert_eq!(order.status, status, "status of order {order_id}");
    }

    #[track_caller]
    fn expect_next_deadline(&self, at_ms: Option<u64>) {
        let next = self.ledger.next_deadline();
        assert_eq!(next, at_ms.map(Timestamp), "next deadline");
    }

    #[track_caller]
    fn product(&self, id: ProductId) -> &Product {
        let product = self.ledger.product(id);
        product.unwrap_or_else(|| panic!("no product {id}"))
    }

    #[track_caller]
    fn hold(&self, id: HoldId) -> &Hold {
        let hold = self.ledger.hold(id);
        hold.unwrap_or_else(|| panic!("no hold {id}"))
    }
}

/// Every row of a ledger, to compare before and after a step that must change nothing.
#[derive(Debug, PartialEq, Eq)]
struct Rows {
    products: Vec<Product>,
    holds: Vec<Hold>,
    orders: Vec<Order>,
    webhooks: Vec<WebhookRecord>,
}

impl Rows {
    fn of(ledger: &Ledger) -> Self {
        Rows {
            products: ledger.products().cloned().collect(),
            holds: ledger.holds().cloned().collect(),
            orders: ledger.orders().cloned().collect(),
            webhooks: ledger.webhooks().cloned().collect(),
        }
    }
}

/// What a step must answer.
enum Expect {
    Rejected(Rejection),
    ProductCreated,
    Restocked {
        stock: u32,
        units_received: u64,
    },
    HoldGranted {
        qty: u32,
        folded: Folded,
    },
    NewOrder,
    SameOrder {
        order_id: OrderId,
        status: OrderStatus,
    },
    Webhook {
        result: WebhookResult,
        replayed: bool,
    },
    Swept {
        holds_retired: Vec<HoldId>,
        orders_cancelled: Vec<OrderId>,
    },
}

impl Expect {
    /// A granted hold that also folded its product's due buckets, giving back `holds` expired
    /// holds and their `units`.
    fn folding(self, holds: u64, units: u64) -> Expect {
        match self {
            Expect::HoldGranted { qty, .. } => Expect::HoldGranted {
                qty,
                folded: Folded { holds, units },
            },
            _ => panic!("only a granted hold folds buckets"),
        }
    }

    #[track_caller]
    fn check(&self, answer: &Result<Outcome, Rejection>, context: &str) {
        let outcome = match (self, answer) {
            (Expect::Rejected(expected), Err(rejection)) => {
                assert_eq!(rejection, expected, "{context}: rejection");
                return;
            }
            (Expect::Rejected(expected), Ok(outcome)) => {
                panic!("{context}: expected {expected:?}, got {outcome:?}")
            }
            (_, Err(rejection)) => panic!("{context}: unexpected rejection {rejection:?}"),
            (_, Ok(outcome)) => outcome,
        };
        match (self, outcome) {
            (Expect::ProductCreated, Outcome::ProductCreated(_)) => {}
            (
                Expect::Restocked {
                    stock,
                    units_received,
                },
                Outcome::Restocked { product, .. },
            ) => {
                assert_eq!(product.stock, Qty(*stock), "{context}: stock");
                let received = product.units_received;
                assert_eq!(received, *units_received, "{context}: received");
            }
            (
                Expect::HoldGranted { qty, folded },
                Outcome::HoldPlaced {
                    hold,
                    folded: found,
                    ..
                },
            ) => {
                assert_eq!(hold.qty, Qty(*qty), "{context}: qty granted");
                assert_eq!(hold.state, HoldState::Held, "{context}: a new hold is held");
                assert_eq!(found, folded, "{context}: folded");
            }
            (Expect::NewOrder, Outcome::OrderPlaced { order, created, .. }) => {
                assert!(created, "{context}: got {order:?} again");
                assert_eq!(order.status, OrderStatus::PrePayment, "{context}: status");
            }
            (
                Expect::SameOrder { order_id, status },
                Outcome::OrderPlaced { order, created, .. },
            ) => {
                assert!(
                    !created,
                    "{context}: expected {order_id} again, got a new one"
                );
                assert_eq!(order.id, *order_id, "{context}: order id");
                assert_eq!(order.status, *status, "{context}: order status");
            }
            (
                Expect::Webhook { result, replayed },
                Outcome::WebhookApplied {
                    record,
                    replayed: was_replayed,
                    ..
                },
            ) => {
                assert_eq!(record.result, *result, "{context}: webhook result");
                assert_eq!(was_replayed, replayed, "{context}: replayed");
            }
            (
                Expect::Swept {
                    holds_retired,
                    orders_cancelled,
                },
                Outcome::Swept {
                    holds_retired: retired,
                    orders_cancelled: cancelled,
                    ..
                },
            ) => {
                assert_eq!(retired, holds_retired, "{context}: holds retired");
                assert_eq!(cancelled, orders_cancelled, "{context}: orders cancelled");
            }
            (_, outcome) => panic!("{context}: unexpected outcome {outcome:?}"),
        }
    }
}

/// What a step answered, with accessors for the ids later lines refer to.
struct Answer(Result<Outcome, Rejection>);

impl Answer {
    #[track_caller]
    fn product_id(&self) -> ProductId {
        match &self.0 {
            Ok(Outcome::ProductCreated(product)) => product.id,
            other => panic!("not a created product: {other:?}"),
        }
    }

    #[track_caller]
    fn hold_id(&self) -> HoldId {
        match &self.0 {
            Ok(Outcome::HoldPlaced { hold, .. }) => hold.id,
            other => panic!("not a granted hold: {other:?}"),
        }
    }

    #[track_caller]
    fn order(&self) -> Order {
        match &self.0 {
            Ok(Outcome::OrderPlaced { order, .. }) => *order,
            other => panic!("not an order: {other:?}"),
        }
    }

    #[track_caller]
    fn order_id(&self) -> OrderId {
        self.order().id
    }

    #[track_caller]
    fn record(&self) -> WebhookRecord {
        match &self.0 {
            Ok(Outcome::WebhookApplied { record, .. }) => record.clone(),
            other => panic!("not a webhook answer: {other:?}"),
        }
    }
}

// Commands, in the words of the stories.

/// Creating a product named `name`, for the name's validation.
fn product_named(name: &str) -> Command {
    Command::CreateProduct {
        name: name.to_owned(),
        price_cents: Cents(500),
        stock: Qty(3),
    }
}

fn restock(product_id: ProductId, qty: u32) -> Command {
    Command::Restock {
        product_id,
        qty: Qty(qty),
    }
}

/// A hold for [`TTL_MS`].
fn hold(product_id: ProductId, qty: u32) -> Command {
    hold_for(product_id, qty, TTL_MS)
}

fn hold_for(product_id: ProductId, qty: u32, ttl_ms: u64) -> Command {
    Command::PlaceHold {
        product_id,
        qty: Qty(qty),
        ttl_ms,
        key: None,
    }
}

/// An order with a payment window of [`WINDOW_MS`].
fn order(hold_id: HoldId) -> Command {
    Command::PlaceOrder {
        hold_id,
        payment_window_ms: WINDOW_MS,
        key: None,
    }
}

fn paid(key: &str, hold_id: HoldId) -> Command {
    webhook(key, hold_id, "paid")
}

fn failed(key: &str, hold_id: HoldId) -> Command {
    webhook(key, hold_id, "failed")
}

fn cancelled(key: &str, hold_id: HoldId) -> Command {
    webhook(key, hold_id, "cancelled")
}

/// A webhook in the API's words: `status` is `paid`, `failed` or `cancelled`.
fn webhook(key: &str, hold_id: HoldId, status: &str) -> Command {
    Command::ApplyWebhook(WebhookPayload {
        key: IdempotencyKey::parse(key).expect("a valid key"),
        hold_id,
        status: PaymentStatus::parse(status).expect("a valid status"),
    })
}

fn sweep() -> Command {
    Command::Sweep
}

// Expected answers.

fn expect_rejected(rejection: Rejection) -> Expect {
    Expect::Rejected(rejection)
}

fn expect_created() -> Expect {
    Expect::ProductCreated
}

fn expect_restocked(stock: u32, units_received: u64) -> Expect {
    Expect::Restocked {
        stock,
        units_received,
    }
}

/// A granted hold of `qty` that folded nothing.
fn expect_granted(qty: u32) -> Expect {
    Expect::HoldGranted {
        qty,
        folded: Folded::default(),
    }
}

/// A new order, waiting for its payment.
fn expect_new_order() -> Expect {
    Expect::NewOrder
}

/// The order the hold already has, answered again.
fn expect_same_order(order_id: OrderId, status: OrderStatus) -> Expect {
    Expect::SameOrder { order_id, status }
}

fn expect_webhook(result: WebhookResult) -> Expect {
    Expect::Webhook {
        result,
        replayed: false,
    }
}

fn expect_replayed(result: WebhookResult) -> Expect {
    Expect::Webhook {
        result,
        replayed: true,
    }
}

fn expect_swept(holds_retired: &[HoldId], orders_cancelled: &[OrderId]) -> Expect {
    Expect::Swept {
        holds_retired: holds_retired.to_vec(),
        orders_cancelled: orders_cancelled.to_vec(),
    }
}

fn insufficient(requested: u32, available: u32) -> Rejection {
    Rejection::InsufficientStock {
        requested: Qty(requested),
        available: Qty(available),
    }
}

fn hold_expired(hold_id: HoldId) -> Rejection {
    Rejection::HoldExpired { hold_id }
}

fn hold_released(hold_id: HoldId) -> Rejection {
    Rejection::HoldReleased { hold_id }
}

fn key_reused(key: &str, field: &'static str) -> Rejection {
    Rejection::IdempotencyKeyReused {
        key: IdempotencyKey::parse(key).expect("a valid key"),
        field,
    }
}
