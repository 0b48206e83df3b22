//! DESIGN.md's five invariants, checked on the rows alone with no clock, so the same check runs on
//! the ledger after every command and on a database's contents after every transaction.
//!
//! The checks recompute everything from the rows (no index is trusted), and the first violation
//! found is returned, naming the product, hold, order or key involved.

use std::collections::BTreeMap;
use std::fmt;

use crate::hold::{HoldState, ReleaseReason};
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::order::OrderStatus;
use crate::payment::{PaymentStatus, WebhookResult};
use crate::state::Ledger;

/// A broken invariant. Any of these is a bug: it means a unit could be sold twice or a payment
/// lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Invariant 1: the held holds of a product claim more units than it has in stock.
    HeldExceedsStock {
        /// The product.
        product_id: ProductId,
        /// Units in held holds.
        units_held: u64,
        /// Units in stock.
        stock: Qty,
    },
    /// Invariant 1: a product's `units_held` counter differs from the units of its held holds.
    HeldCounterMismatch {
        /// The product.
        product_id: ProductId,
        /// The counter on the product row.
        counter: Qty,
        /// Units in held holds, summed from the rows.
        units_held: u64,
    },
    /// A product counter read from the rows cannot give up or take the units a decision moves:
    /// the rows are corrupt.
    CounterOutOfRange {
        /// The product.
        product_id: ProductId,
        /// `stock` or `units_held`.
        counter: &'static str,
    },
    /// A decision was handed a hold as held that is not held, or not of the locked product.
    HoldNotHeld {
        /// The hold.
        hold_id: HoldId,
    },
    /// Invariant 3: a decision would move an order that is already terminal (or of another
    /// product).
    TerminalOrderChanged {
        /// The order.
        order_id: OrderId,
    },
    /// A write-set names an inserted row whose id the storage did not return.
    WriteSetUnresolved,
    /// Invariant 2: stock plus units sold differs from units ever received.
    UnitsNotConserved {
        /// The product.
        product_id: ProductId,
        /// Units in stock.
        stock: Qty,
        /// Units in pre-payment and paid orders.
        units_sold: u64,
        /// Units ever received.
        units_received: u64,
    },
    /// A hold or order names a product that does not exist.
    DanglingProduct {
        /// The product named.
        product_id: ProductId,
    },
    /// Invariant 3: a hold and an order disagree on who consumed whom (a hold consumed by an
    /// order that does not name it, an order whose hold is not consumed by it, or two orders
    /// for one hold).
    HoldOrderMismatch {
        /// The hold.
        hold_id: HoldId,
        /// The order.
        order_id: OrderId,
    },
    /// Invariant 3: an order's units, product or total disagree with its hold.
    OrderDisagreesWithHold {
        /// The order.
        order_id: OrderId,
    },
    /// Invariant 4: two keys were both applied to one hold.
    WebhookAppliedTwice {
        /// The hold.
        hold_id: HoldId,
        /// The first key applied.
        first: IdempotencyKey,
        /// The second key applied.
        second: IdempotencyKey,
    },
    /// Invariant 4: a record's result does not match the state it claims to have produced.
    WebhookResultMismatch {
        /// The key.
        key: IdempotencyKey,
    },
    /// Invariant 5: a `paid` webhook neither ended as a paid order nor as a refund to make.
    PaymentDropped {
        /// The key.
        key: IdempotencyKey,
        /// The hold it was for.
        hold_id: HoldId,
    },
    /// Invariant 4: a client request key's record names a hold or order that does not exist or
    /// does not match the request (another product, qty or hold), so its replay would answer
    /// something the request never got.
    RequestKeyDangling {
        /// The key.
        key: IdempotencyKey,
    },
    /// An order's cancel reason disagrees with its status: a cancelled order says why, and no
    /// other does.
    CancelReasonMismatch {
        /// The order.
        order_id: OrderId,
    },
    /// A command that is not decided over a plan's rows (creating a product, sweeping every
    /// product) reached [`crate::execute`]: a bug in its caller.
    CommandOutsideExecute,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Checks every invariant on `ledger`'s rows.
///
/// # Errors
/// The first [`Violation`] found.
pub fn check(ledger: &Ledger) -> Result<(), Violation> {
    check_products(ledger)?;
    check_holds_and_orders(ledger)?;
    check_webhooks(ledger)?;
    check_request_keys(ledger)
}

/// Invariants 1 and 2, per product.
fn check_products(ledger: &Ledger) -> Result<(), Violation> {
    let mut units_held: BTreeMap<ProductId, u64> = BTreeMap::new();
    let mut units_sold: BTreeMap<ProductId, u64> = BTreeMap::new();
    for hold in ledger.holds().filter(|h| h.state == HoldState::Held) {
        add(&mut units_held, hold.product_id, hold.qty);
    }
    for order in ledger.orders().filter(|o| o.status.holds_units()) {
        add(&mut units_sold, order.product_id, order.qty);
    }
    let named = units_held.keys().chain(units_sold.keys());
    if let Some(&product_id) = named.into_iter().find(|id| ledger.product(**id).is_none()) {
        return Err(Violation::DanglingProduct { product_id });
    }
    for product in ledger.products() {
        let held = units_held.get(&product.id).copied().unwrap_or(0);
        if held != u64::from(product.units_held.0) {
            return Err(Violation::HeldCounterMismatch {
                product_id: product.id,
                counter: product.units_held,
                units_held: held,
            });
        }
        if held > u64::from(product.stock.0) {
            let (product_id, stock) = (product.id, product.stock);
            return Err(Violation::HeldExceedsStock {
                product_id,
                units_held: held,
                stock,
            });
        }
        let sold = units_sold.get(&product.id).copied().unwrap_or(0);
        if u64::from(product.stock.0).checked_add(sold) != Some(product.units_received) {
            return Err(Violation::UnitsNotConserved {
                product_id: product.id,
                stock: product.stock,
                units_sold: sold,
                units_received: product.units_received,
            });
        }
    }
    Ok(())
}

fn add(sums: &mut BTreeMap<ProductId, u64>, product_id: ProductId, qty: Qty) {
    let sum = sums.entry(product_id).or_insert(0);
    *sum = sum.saturating_add(u64::from(qty.0));
}

/// Invariant 3: one order per hold, and each side names the other.
fn check_holds_and_orders(ledger: &Ledger) -> Result<(), Violation> {
    let mut order_of_hold: BTreeMap<HoldId, OrderId> = BTreeMap::new();
    for order in ledger.orders() {
        let mismatch = Violation::HoldOrderMismatch {
            hold_id: order.hold_id,
            order_id: order.id,
        };
        if order_of_hold.insert(order.hold_id, order.id).is_some() {
            return Err(mismatch);
        }
        let Some(hold) = ledger.hold(order.hold_id) else {
            return Err(mismatch);
        };
        if hold.state != HoldState::Consumed(order.id) {
            return Err(mismatch);
        }
        let Some(product) = ledger.product(order.product_id) else {
            return Err(Violation::DanglingProduct {
                product_id: order.product_id,
            });
        };
        let agrees = hold.product_id == order.product_id
            && hold.qty == order.qty
            && product.price_cents.times(order.qty) == Some(order.total_cents);
        if !agrees {
            return Err(Violation::OrderDisagreesWithHold { order_id: order.id });
        }
        if (order.status == OrderStatus::Cancelled) != order.cancel_reason.is_some() {
            return Err(Violation::CancelReasonMismatch { order_id: order.id });
        }
    }
    for hold in ledger.holds() {
        if ledger.product(hold.product_id).is_none() {
            return Err(Violation::DanglingProduct {
                product_id: hold.product_id,
            });
        }
        if let HoldState::Consumed(order_id) = hold.state
            && order_of_hold.get(&hold.id) != Some(&order_id)
        {
            return Err(Violation::HoldOrderMismatch {
                hold_id: hold.id,
                order_id,
            });
        }
    }
    Ok(())
}

/// Invariants 4 and 5: at most one applied key per hold, every record's result agrees with the
/// state, and every `paid` verdict ended as a paid order or a refund to make.
fn check_webhooks(ledger: &Ledger) -> Result<(), Violation> {
    let mut applied: BTreeMap<HoldId, &IdempotencyKey> = BTreeMap::new();
    for record in ledger.webhooks() {
        let hold = ledger.hold(record.hold_id);
        let order = hold.and_then(|h| match h.state {
            HoldState::Consumed(order_id) => ledger.order(order_id),
            HoldState::Held | HoldState::Released(_) => None,
        });
        let order_status = order.map(|o| o.status);
        let hold_state = hold.map(|h| h.state);
        let dropped = Violation::PaymentDropped {
            key: record.key.clone(),
            hold_id: record.hold_id,
        };
        let mismatch = Violation::WebhookResultMismatch {
            key: record.key.clone(),
        };
        match (record.status, record.result) {
            (PaymentStatus::Paid, WebhookResult::Applied | WebhookResult::AlreadyApplied) => {
                if order_status != Some(OrderStatus::Paid) {
                    return Err(dropped);
                }
            }
            (PaymentStatus::Paid, WebhookResult::RefundRequired) => {
                // A refund and a paid order for one hold would charge the buyer twice.
                if order_status == Some(OrderStatus::Paid) {
                    return Err(mismatch);
                }
            }
            (PaymentStatus::Paid, WebhookResult::Unmatched) => {}
            (PaymentStatus::Paid, WebhookResult::Conflict) => return Err(dropped),
            (PaymentStatus::Failed, WebhookResult::Applied) => {
                let released =
                    hold_state == Some(HoldState::Released(ReleaseReason::PaymentFailed));
                if !released && order_status != Some(OrderStatus::Cancelled) {
                    return Err(mismatch);
                }
            }
            (PaymentStatus::Failed, WebhookResult::Conflict) => {
                if order_status != Some(OrderStatus::Paid) {
                    return Err(mismatch);
                }
            }
            (PaymentStatus::Failed, _) => {}
        }
        if record.result == WebhookResult::Applied
            && let Some(first) = applied.insert(record.hold_id, &record.key)
        {
            return Err(Violation::WebhookAppliedTwice {
                hold_id: record.hold_id,
                first: first.clone(),
                second: record.key.clone(),
            });
        }
    }
    Ok(())
}

/// Invariant 4 for client request keys: every record names the hold or order its request got,
/// which is what a replay answers.
fn check_request_keys(ledger: &Ledger) -> Result<(), Violation> {
    let dangling = ledger
        .request_keys()
        .find(|r| !r.names_its_resource(ledger));
    match dangling {
        Some(record) => Err(Violation::RequestKeyDangling {
            key: record.key.clone(),
        }),
        None => Ok(()),
    }
}
