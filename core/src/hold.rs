//! Holds: a buyer's short claim on units of one product, and the decision to grant a batch of
//! them.
//!
//! Lifecycle: `Held -> Consumed(order) | Released(Expired | PaymentFailed)`. `Consumed` and
//! `Released` are final. A held hold whose `expires_at` has passed still counts as held in the
//! state until a transaction releases it, but it is never granted against and never consumed.

use crate::ids::{HoldId, OrderId, ProductId, Qty};
use crate::outcome::Rejection;
use crate::product::{self, Product};
use crate::time::{Timestamp, is_past};

/// The largest quantity one hold may ask for.
pub const HOLD_QTY_MAX: Qty = Qty(10_000);
/// The shortest hold TTL accepted: one second.
pub const HOLD_TTL_MS_MIN: u64 = 1_000;
/// The longest hold TTL accepted: one day.
pub const HOLD_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// The default hold TTL: two minutes, as the original service had it.
pub const HOLD_TTL_MS_DEFAULT: u64 = 2 * 60 * 1_000;

const _: () = assert!(HOLD_TTL_MS_MIN <= HOLD_TTL_MS_DEFAULT);
const _: () = assert!(HOLD_TTL_MS_DEFAULT <= HOLD_TTL_MS_MAX);
const _: () = assert!(HOLD_QTY_MAX.0 > 0);

/// Why a hold was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReleaseReason {
    /// Its TTL passed before an order consumed it.
    Expired,
    /// A `failed` payment webhook arrived before any order.
    PaymentFailed,
}

impl ReleaseReason {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Expired => "expired",
            ReleaseReason::PaymentFailed => "payment_failed",
        }
    }

    /// Parses a stored word.
    pub fn parse(reason: &str) -> Option<Self> {
        [ReleaseReason::Expired, ReleaseReason::PaymentFailed]
            .into_iter()
            .find(|r| r.as_str() == reason)
    }
}

/// Where a hold is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldState {
    /// Its units are claimed until `expires_at`.
    Held,
    /// An order took its units; final.
    Consumed(OrderId),
    /// Its units went back on sale; final.
    Released(ReleaseReason),
}

/// How a hold looks to a client at some instant: `Expired` is a held hold past its deadline that
/// no transaction has released yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldView {
    /// Held and unexpired.
    Held,
    /// Held in the state, but past `expires_at`.
    Expired,
    /// Consumed by an order.
    Consumed,
    /// Released.
    Released,
}

impl HoldView {
    /// The API's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldView::Held => "held",
            HoldView::Expired => "expired",
            HoldView::Consumed => "consumed",
            HoldView::Released => "released",
        }
    }
}

/// A hold on `qty` units of one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Its id.
    pub id: HoldId,
    /// The product it holds units of.
    pub product_id: ProductId,
    /// Units held.
    pub qty: Qty,
    /// When it was granted, by the granting server's clock.
    pub created_at: Timestamp,
    /// When it stops counting against `available`.
    pub expires_at: Timestamp,
    /// Lifecycle state.
    pub state: HoldState,
}

impl Hold {
    /// Whether its deadline has passed at `now` (whatever its state).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        is_past(self.expires_at, now)
    }

    /// Whether it is in state held and unexpired at `now`: the only holds that count against
    /// `available` and the only ones an order may consume.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.state == HoldState::Held && !self.is_expired(now)
    }

    /// How it looks to a client at `now`.
    pub fn view(&self, now: Timestamp) -> HoldView {
        match self.state {
            HoldState::Held if self.is_expired(now) => HoldView::Expired,
            HoldState::Held => HoldView::Held,
            HoldState::Consumed(_) => HoldView::Consumed,
            HoldState::Released(_) => HoldView::Released,
        }
    }
}

/// A hold the decision granted; the store assigns its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldGrant {
    /// Units granted.
    pub qty: Qty,
    /// `now` at the decision.
    pub created_at: Timestamp,
    /// `now + ttl_ms`.
    pub expires_at: Timestamp,
}

impl HoldGrant {
    /// The hold this becomes once the store gave it `id`.
    pub fn with_id(self, id: HoldId, product_id: ProductId) -> Hold {
        Hold {
            id,
            product_id,
            qty: self.qty,
            created_at: self.created_at,
            expires_at: self.expires_at,
            state: HoldState::Held,
        }
    }
}

/// Checks one hold request's values, before anything is read: `qty` in `1..=HOLD_QTY_MAX` and
/// `ttl_ms` in `HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX`.
///
/// # Errors
/// [`Rejection::InvalidQty`], then [`Rejection::InvalidTtl`].
pub fn validate_request(qty: Qty, ttl_ms: u64) -> Result<(), Rejection> {
    if qty == Qty::ZERO || qty > HOLD_QTY_MAX {
        return Err(Rejection::InvalidQty { qty });
    }
    if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(Rejection::InvalidTtl { ttl_ms });
    }
    Ok(())
}

/// Decides a batch of hold requests on one product, granted in arrival order: each request is
/// granted if its `qty` fits in what the earlier grants left available, else rejected with
/// [`Rejection::InsufficientStock`] naming what was available to it. The result has one entry per
/// request, in order, so a batch decides exactly as the same requests one by one would.
///
/// Precondition: the caller released the product's expired holds at `now` first, so `units_held`
/// is the sum of its held, unexpired holds (and so at most `stock`).
pub fn place_holds(
    product: &Product,
    units_held: Qty,
    requests: &[Qty],
    now: Timestamp,
    ttl_ms: u64,
) -> Vec<Result<HoldGrant, Rejection>> {
    let mut available = available_before(product, units_held);
    let decisions: Vec<_> = requests
        .iter()
        .map(|&qty| decide(&mut available, qty, now, ttl_ms))
        .collect();
    debug_assert_eq!(decisions.len(), requests.len(), "one decision per request");
    decisions
}

/// Decides one hold request: [`place_holds`] with a batch of one, without allocating.
///
/// # Errors
/// As [`place_holds`].
pub fn place_hold(
    product: &Product,
    units_held: Qty,
    qty: Qty,
    now: Timestamp,
    ttl_ms: u64,
) -> Result<HoldGrant, Rejection> {
    let mut available = available_before(product, units_held);
    decide(&mut available, qty, now, ttl_ms)
}

fn available_before(product: &Product, units_held: Qty) -> Qty {
    assert!(
        units_held <= product.stock,
        "invariant 1: units held exceed stock"
    );
    product::available(product, units_held)
}

/// The one hold decision: grant `qty` out of `available` (and take it), or say what was there.
fn decide(
    available: &mut Qty,
    qty: Qty,
    now: Timestamp,
    ttl_ms: u64,
) -> Result<HoldGrant, Rejection> {
    validate_request(qty, ttl_ms)?;
    *available = available
        .checked_sub(qty)
        .ok_or(Rejection::InsufficientStock {
            requested: qty,
            available: *available,
        })?;
    Ok(HoldGrant {
        qty,
        created_at: now,
        expires_at: now.saturating_add_ms(ttl_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Cents;

    fn product(stock: u32) -> Product {
        Product {
            id: ProductId(1),
            name: "p".into(),
            price_cents: Cents(100),
            stock: Qty(stock),
            units_received: u64::from(stock),
        }
    }

    #[test]
    fn a_batch_is_granted_in_arrival_order_against_what_is_left() {
        let now = Timestamp(1_000);
        let requests = [Qty(2), Qty(3), Qty(1), Qty(1)];
        let decisions = place_holds(&product(5), Qty(1), &requests, now, HOLD_TTL_MS_DEFAULT);
        let expires_at = now.saturating_add_ms(HOLD_TTL_MS_DEFAULT);
        let grant = |qty| {
            Ok(HoldGrant {
                qty: Qty(qty),
                created_at: now,
                expires_at,
            })
        };
        let short = |requested, available| {
            Err(Rejection::InsufficientStock {
                requested: Qty(requested),
                available: Qty(available),
            })
        };
        assert_eq!(decisions, vec![grant(2), short(3, 2), grant(1), grant(1)]);
    }

    #[test]
    fn zero_qty_and_out_of_range_ttl_are_rejected_before_stock() {
        let p = product(0);
        let now = Timestamp(0);
        let zero = place_hold(&p, Qty(0), Qty(0), now, HOLD_TTL_MS_DEFAULT);
        assert_eq!(zero, Err(Rejection::InvalidQty { qty: Qty(0) }));
        let ttl = place_hold(&p, Qty(0), Qty(1), now, HOLD_TTL_MS_MAX + 1);
        assert_eq!(
            ttl,
            Err(Rejection::InvalidTtl {
                ttl_ms: HOLD_TTL_MS_MAX + 1
            })
        );
    }

    #[test]
    fn a_hold_expires_at_its_deadline_and_looks_expired_until_released() {
        let hold = HoldGrant {
            qty: Qty(1),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        }
        .with_id(HoldId(1), ProductId(1));
        assert_eq!(hold.view(Timestamp(9)), HoldView::Held);
        assert!(hold.is_live(Timestamp(9)));
        assert_eq!(hold.view(Timestamp(10)), HoldView::Expired);
        assert!(!hold.is_live(Timestamp(10)));
    }
}
