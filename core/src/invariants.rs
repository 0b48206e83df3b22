//! docs/DESIGN.md's five invariants, checked on the rows alone with no clock, so the same check
//! runs on the ledger after every command and on a database's contents after every transaction.
//!
//! The checks recompute everything from the rows (no index is trusted), and the first violation
//! found is returned, naming the product, hold, order or key involved.

use std::collections::BTreeMap;

use crate::errors::Violation;
use crate::ids::{HoldId, IdempotencyKey, OrderId, ProductId, Qty};
use crate::rows::expiry::ExpiryBucket;
use crate::rows::hold::{Hold, HoldState, ReleaseReason};
use crate::rows::order::{Order, OrderStatus};
use crate::rows::payment::{PaymentStatus, WebhookRecord, WebhookResult};
use crate::rows::product::Product;
use crate::rows::request::{KeyedRequest, RequestRecord};
use crate::time::Timestamp;

/// A read-only view of every stored row: what the invariants are checked on. The in-memory
/// ledger is one; a database's contents read back are another.
pub trait Stored {
    /// Every product.
    fn products(&self) -> impl Iterator<Item = &Product>;
    /// Every hold.
    fn holds(&self) -> impl Iterator<Item = &Hold>;
    /// Every order.
    fn orders(&self) -> impl Iterator<Item = &Order>;
    /// Every webhook record.
    fn webhooks(&self) -> impl Iterator<Item = &WebhookRecord>;
    /// Every request-key record.
    fn request_keys(&self) -> impl Iterator<Item = &RequestRecord>;
    /// Every expiry bucket.
    fn buckets(&self) -> impl Iterator<Item = &ExpiryBucket>;
    /// A product by id.
    fn product(&self, id: ProductId) -> Option<&Product>;
    /// A hold by id.
    fn hold(&self, id: HoldId) -> Option<&Hold>;
    /// An order by id.
    fn order(&self, id: OrderId) -> Option<&Order>;
}

/// Checks every invariant on `ledger`'s rows.
///
/// # Errors
/// The first [`Violation`] found.
pub fn check(rows: &impl Stored) -> Result<(), Violation> {
    check_products(rows)?;
    check_holds_and_orders(rows)?;
    check_webhooks(rows)?;
    check_request_keys(rows)
}

/// Invariants 1 and 2, per product, with the counters and expiry buckets that keep them: a held
/// hold whose deadline is after its product's `expired_through` counts in `units_held` and in its
/// deadline's bucket; one at or before it has expired for good and counts in `holds_to_retire`;
/// no bucket lies at or before `expired_through`.
fn check_products(rows: &impl Stored) -> Result<(), Violation> {
    let mut units_held: BTreeMap<ProductId, u64> = BTreeMap::new();
    let mut to_retire: BTreeMap<ProductId, u64> = BTreeMap::new();
    let mut buckets: BTreeMap<(ProductId, Timestamp), (u64, u64)> = BTreeMap::new();
    let mut units_sold: BTreeMap<ProductId, u64> = BTreeMap::new();
    for hold in rows.holds().filter(|h| h.state == HoldState::Held) {
        let product_id = hold.product_id;
        let product = rows
            .product(product_id)
            .ok_or(Violation::DanglingProduct { product_id })?;
        if product.expired_for_good(hold.expires_at) {
            add(&mut to_retire, product_id, Qty(1));
        } else {
            add(&mut units_held, product_id, hold.qty);
            let bucket = buckets.entry((product_id, hold.expires_at)).or_default();
            bucket.0 = bucket.0.saturating_add(u64::from(hold.qty.0));
            bucket.1 = bucket.1.saturating_add(1);
        }
    }
    for order in rows.orders().filter(|o| o.status.holds_units()) {
        add(&mut units_sold, order.product_id, order.qty);
    }
    if let Some(&product_id) = units_sold.keys().find(|id| rows.product(**id).is_none()) {
        return Err(Violation::DanglingProduct { product_id });
    }
    check_buckets(rows, buckets)?;
    for product in rows.products() {
        let held = units_held.get(&product.id).copied().unwrap_or(0);
        if held != u64::from(product.units_held.0) {
            return Err(Violation::HeldCounterMismatch {
                product_id: product.id,
                counter: product.units_held,
                units_held: held,
            });
        }
        let holds = to_retire.get(&product.id).copied().unwrap_or(0);
        if holds != u64::from(product.holds_to_retire) {
            return Err(Violation::RetireCounterMismatch {
                product_id: product.id,
                counter: product.holds_to_retire,
                holds,
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

/// Every product's live open bucket, and every bucket of the table, equals the units and holds
/// of the held holds of its product and instant (`expected`, which a bucket may hold at zero);
/// a folded open bucket is empty; a table bucket lies after its product's `expired_through` and
/// not at its live open bucket's deadline; and every such instant has its bucket.
fn check_buckets(
    rows: &impl Stored,
    mut expected: BTreeMap<(ProductId, Timestamp), (u64, u64)>,
) -> Result<(), Violation> {
    // A product's open bucket stands in its row for its latest deadline; folded, it is empty.
    for product in rows.products() {
        let open = product.open_bucket;
        let mismatch = Violation::ExpiryBucketMismatch {
            product_id: product.id,
            expires_at: open.expires_at,
        };
        let counts = (u64::from(open.units.0), u64::from(open.holds));
        match product.live_bucket() {
            Some(live) => {
                let counted = expected.remove(&live.key()).unwrap_or_default();
                if counted != counts {
                    return Err(mismatch);
                }
            }
            None if counts != (0, 0) => return Err(mismatch),
            None => {}
        }
    }
    for bucket in rows.buckets() {
        let (product_id, expires_at) = bucket.key();
        let mismatch = Violation::ExpiryBucketMismatch {
            product_id,
            expires_at,
        };
        let product = rows
            .product(product_id)
            .ok_or(Violation::DanglingProduct { product_id })?;
        let counted = expected.remove(&bucket.key()).unwrap_or_default();
        let stored = (u64::from(bucket.units.0), u64::from(bucket.holds));
        let open = product.live_bucket().map(|open| open.expires_at);
        if product.expired_for_good(expires_at) || open == Some(expires_at) || counted != stored {
            return Err(mismatch);
        }
    }
    match expected.into_keys().next() {
        Some((product_id, expires_at)) => Err(Violation::ExpiryBucketMismatch {
            product_id,
            expires_at,
        }),
        None => Ok(()),
    }
}

fn add(sums: &mut BTreeMap<ProductId, u64>, product_id: ProductId, qty: Qty) {
    let sum = sums.entry(product_id).or_insert(0);
    *sum = sum.saturating_add(u64::from(qty.0));
}

/// Invariant 3: one order per hold, and each side names the other.
fn check_holds_and_orders(rows: &impl Stored) -> Result<(), Violation> {
    let mut order_of_hold: BTreeMap<HoldId, OrderId> = BTreeMap::new();
    for order in rows.orders() {
        let mismatch = Violation::HoldOrderMismatch {
            hold_id: order.hold_id,
            order_id: order.id,
        };
        if order_of_hold.insert(order.hold_id, order.id).is_some() {
            return Err(mismatch);
        }
        let Some(hold) = rows.hold(order.hold_id) else {
            return Err(mismatch);
        };
        if hold.state != HoldState::Consumed(order.id) {
            return Err(mismatch);
        }
        let Some(product) = rows.product(order.product_id) else {
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
    for hold in rows.holds() {
        if rows.product(hold.product_id).is_none() {
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
fn check_webhooks(rows: &impl Stored) -> Result<(), Violation> {
    let mut applied: BTreeMap<HoldId, &IdempotencyKey> = BTreeMap::new();
    for record in rows.webhooks() {
        let hold = rows.hold(record.hold_id);
        let order = hold.and_then(|h| match h.state {
            HoldState::Consumed(order_id) => rows.order(order_id),
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
fn check_request_keys(rows: &impl Stored) -> Result<(), Violation> {
    let dangling = rows.request_keys().find(|r| !names_its_resource(r, rows));
    match dangling {
        Some(record) => Err(Violation::RequestKeyDangling {
            key: record.key.clone(),
        }),
        None => Ok(()),
    }
}

/// Whether the hold or order `record` names exists in `rows` and is what its request asked for
/// (the product and qty of a hold, the hold of an order). True of every record a correct service
/// wrote, since the record commits with its resource.
fn names_its_resource(record: &RequestRecord, rows: &impl Stored) -> bool {
    match record.request {
        KeyedRequest::PlaceHold { product_id, qty } => rows
            .hold(HoldId(record.resource_id))
            .is_some_and(|h| (h.product_id, h.qty) == (product_id, qty)),
        KeyedRequest::PlaceOrder { hold_id } => rows
            .order(OrderId(record.resource_id))
            .is_some_and(|o| o.hold_id == hold_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use crate::time::Timestamp;

    fn record(request: KeyedRequest) -> RequestRecord {
        RequestRecord {
            key: IdempotencyKey::parse("k-1").expect("a valid key"),
            request,
            resource_id: 1,
            created: true,
            created_at: Timestamp(0),
        }
    }

    fn hold_request(product: u64, qty: u32) -> KeyedRequest {
        KeyedRequest::PlaceHold {
            product_id: ProductId(product),
            qty: Qty(qty),
        }
    }

    #[test]
    fn a_record_names_its_resource_only_when_it_matches_the_request() {
        let mut ledger = Ledger::new();
        let created = ledger.apply(
            Timestamp(0),
            crate::command::Command::CreateProduct {
                name: "P".into(),
                price_cents: crate::ids::Cents(1),
                stock: Qty(5),
            },
        );
        assert!(created.is_ok());
        let held = ledger.apply(
            Timestamp(0),
            crate::command::Command::PlaceHold {
                product_id: ProductId(1),
                qty: Qty(2),
                ttl_ms: 60_000,
                key: None,
            },
        );
        assert!(held.is_ok());
        let hold = |resource_id, qty| RequestRecord {
            resource_id,
            ..record(hold_request(1, qty))
        };
        assert!(names_its_resource(&hold(1, 2), &ledger));
        assert!(!names_its_resource(&hold(1, 3), &ledger), "another qty");
        assert!(!names_its_resource(&hold(2, 2), &ledger), "no such hold");
        let order = RequestRecord {
            resource_id: 1,
            ..record(KeyedRequest::PlaceOrder { hold_id: HoldId(1) })
        };
        assert!(!names_its_resource(&order, &ledger), "no order yet");
        let ordered = ledger.apply(
            Timestamp(1),
            crate::command::Command::PlaceOrder {
                hold_id: HoldId(1),
                payment_window_ms: 60_000,
                key: None,
            },
        );
        assert!(ordered.is_ok());
        assert!(names_its_resource(&order, &ledger));
    }
}
