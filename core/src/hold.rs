//! The hold decisions: granting a batch of holds on one product, and releasing expired ones.
//!
//! The rows they decide over are in [`crate::rows::hold`].

use crate::errors::{Rejection, Violation};
use crate::ids::{HoldId, IdempotencyKey, ProductId, Qty};
use crate::product;
use crate::rows::hold::{
    HOLD_QTY_MAX, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN, Hold, HoldGrant, HoldState, ReleaseReason,
};
use crate::rows::product::Product;
use crate::rows::request::{KeyedRequest, RequestRecord};
use crate::time::Timestamp;
use crate::writes::{Changes, WriteSet};

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

/// One hold request of a batch: the units asked for, and the client's idempotency key if it sent
/// one (the key's record is written with the grant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    /// Units asked for.
    pub qty: Qty,
    /// The request's idempotency key, already decided fresh by the shell.
    pub key: Option<IdempotencyKey>,
}

impl HoldRequest {
    /// A request without a key.
    pub fn unkeyed(qty: Qty) -> Self {
        HoldRequest { qty, key: None }
    }
}

/// A batch's decisions, one per request in order, and what they write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldsDecided {
    /// Each request's grant or rejection; the `n`th grant is the `n`th hold inserted (pending
    /// id [`crate::writes::pending_hold`]`(n)`).
    pub decisions: Vec<Result<HoldGrant, Rejection>>,
    /// The product's expired holds released (only when something was granted), by id.
    pub holds_released: Vec<HoldId>,
    /// The writes: nothing when nothing was granted, so a refused batch changes nothing.
    pub writes: WriteSet,
}

impl HoldsDecided {
    /// The holds the `n`th request's decision released, as the same requests one by one would
    /// have it: the first grant releases the expired holds, and every later one finds none.
    pub fn released_by(&self, n: usize) -> &[HoldId] {
        match self.decisions.iter().position(Result::is_ok) {
            Some(first) if first == n => &self.holds_released,
            _ => &[],
        }
    }
}

/// Decides a batch of hold requests on one product, granted in arrival order: each request is
/// granted if its `qty` fits in what the earlier grants left available, else rejected with
/// [`Rejection::InsufficientStock`] naming what was available to it. The result has one entry per
/// request, in order, so a batch decides exactly as the same requests one by one would.
///
/// `expired` are the product's holds in state held whose deadline has passed at `now` (the shell
/// reads them through an index). They do not count against `available`, and when anything is
/// granted they are released by the same write-set, so expiry is a transition, not a query.
///
/// # Errors
/// A [`Violation`] when the product's counters disagree with `expired` or its stock.
pub fn place_holds(
    product: &Product,
    expired: &[Hold],
    requests: &[HoldRequest],
    now: Timestamp,
    ttl_ms: u64,
) -> Result<HoldsDecided, Violation> {
    let units_expired = expired_units(product.id, expired, now)?;
    let mut available = product::available(product, units_expired)?;
    let decisions: Vec<_> = requests
        .iter()
        .map(|request| decide(&mut available, request.qty, now, ttl_ms))
        .collect();
    debug_assert_eq!(decisions.len(), requests.len(), "one decision per request");
    if decisions.iter().all(Result::is_err) {
        // Nothing granted: the expired holds stay as they were, and nothing is written.
        return Ok(HoldsDecided {
            decisions,
            holds_released: Vec::new(),
            writes: WriteSet::default(),
        });
    }
    let mut changes = Changes::on(product);
    for hold in expired {
        changes.release(hold, ReleaseReason::Expired)?;
    }
    for (request, decision) in requests.iter().zip(&decisions) {
        let Ok(grant) = decision else { continue };
        let hold_id = changes.grant(*grant)?;
        if let Some(key) = &request.key {
            changes.record_request(RequestRecord {
                key: key.clone(),
                request: KeyedRequest::PlaceHold {
                    product_id: product.id,
                    qty: request.qty,
                },
                resource_id: hold_id.0,
                created: true,
                created_at: now,
            });
        }
    }
    let mut holds_released: Vec<HoldId> = expired.iter().map(|h| h.id).collect();
    holds_released.sort_unstable();
    Ok(HoldsDecided {
        decisions,
        holds_released,
        writes: changes.finish(),
    })
}

/// Releases the product's expired holds (`expired`, as for [`place_holds`]) on their own, as the
/// sweeper does.
///
/// # Errors
/// A [`Violation`] when the product's counters disagree with `expired`.
pub fn release_expired(
    changes: &mut Changes,
    expired: &[Hold],
    now: Timestamp,
) -> Result<(), Violation> {
    expired_units(changes.product().id, expired, now)?;
    expired
        .iter()
        .try_for_each(|hold| changes.release(hold, ReleaseReason::Expired))
}

/// The units of `expired`, after checking each is a held hold of the product past its deadline.
///
/// # Errors
/// A [`Violation`] when a hold is not a held hold of the product past its deadline, or the
/// units overflow.
pub(crate) fn expired_units(
    product_id: ProductId,
    expired: &[Hold],
    now: Timestamp,
) -> Result<Qty, Violation> {
    let mut units = Qty::ZERO;
    for hold in expired {
        let fits = hold.product_id == product_id && hold.state == HoldState::Held;
        if !fits || !hold.is_expired(now) {
            return Err(Violation::HoldNotHeld { hold_id: hold.id });
        }
        units = units
            .checked_add(hold.qty)
            .ok_or(Violation::CounterOutOfRange {
                product_id,
                counter: "units_held",
            })?;
    }
    Ok(units)
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
    use crate::rows::hold::{HOLD_TTL_MS_DEFAULT, HoldView};

    fn product(stock: u32) -> Product {
        Product {
            id: ProductId(1),
            name: "p".into(),
            price_cents: Cents(100),
            stock: Qty(stock),
            units_held: Qty::ZERO,
            units_received: u64::from(stock),
        }
    }

    #[test]
    fn a_batch_is_granted_in_arrival_order_against_what_is_left() {
        let now = Timestamp(1_000);
        let requests = [2, 3, 1, 1].map(|qty| HoldRequest::unkeyed(Qty(qty)));
        let held = Product {
            units_held: Qty(1),
            ..product(5)
        };
        let decided = place_holds(&held, &[], &requests, now, HOLD_TTL_MS_DEFAULT).unwrap();
        let decisions = decided.decisions;
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
        let one = |qty, ttl_ms| {
            let request = [HoldRequest::unkeyed(Qty(qty))];
            let decided = place_holds(&p, &[], &request, now, ttl_ms).unwrap();
            assert!(decided.writes.is_empty(), "a refusal writes nothing");
            decided.decisions[0].clone()
        };
        assert_eq!(
            one(0, HOLD_TTL_MS_DEFAULT),
            Err(Rejection::InvalidQty { qty: Qty(0) })
        );
        assert_eq!(
            one(1, HOLD_TTL_MS_MAX + 1),
            Err(Rejection::InvalidTtl {
                ttl_ms: HOLD_TTL_MS_MAX + 1
            })
        );
    }

    #[test]
    fn a_grant_releases_the_expired_holds_and_a_refusal_keeps_them() {
        let expired = HoldGrant {
            qty: Qty(3),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        }
        .with_id(HoldId(4), ProductId(1));
        let p = Product {
            units_held: Qty(3),
            ..product(3)
        };
        let ask = |qty| [HoldRequest::unkeyed(Qty(qty))];
        let now = Timestamp(10);
        let granted = place_holds(&p, &[expired], &ask(3), now, HOLD_TTL_MS_DEFAULT).unwrap();
        assert_eq!(granted.holds_released, vec![HoldId(4)]);
        let counters = granted.writes.product(ProductId(1)).map(|p| p.units_held);
        assert_eq!(counters, Some(Qty(3)));
        let refused = place_holds(&p, &[expired], &ask(4), now, HOLD_TTL_MS_DEFAULT).unwrap();
        assert!(refused.writes.is_empty());
        let early = place_holds(&p, &[expired], &ask(1), Timestamp(9), HOLD_TTL_MS_DEFAULT);
        assert_eq!(early, Err(Violation::HoldNotHeld { hold_id: HoldId(4) }));
    }

    #[test]
    fn in_a_batch_the_first_grant_releases_the_expired_holds_as_one_by_one() {
        let expired = HoldGrant {
            qty: Qty(3),
            created_at: Timestamp(0),
            expires_at: Timestamp(10),
        }
        .with_id(HoldId(4), ProductId(1));
        let p = Product {
            units_held: Qty(3),
            ..product(3)
        };
        let asked = [9, 1, 2].map(|qty| HoldRequest::unkeyed(Qty(qty)));
        let now = Timestamp(10);
        let batch = place_holds(&p, &[expired], &asked, now, HOLD_TTL_MS_DEFAULT).unwrap();
        let released: Vec<&[HoldId]> = (0..3).map(|n| batch.released_by(n)).collect();
        // The first request is refused, so the second is the first grant.
        assert_eq!(released, [&[][..], &[HoldId(4)][..], &[][..]]);
        // One by one: the refusal releases nothing, the first grant releases, the next finds
        // nothing left to release.
        let first = place_holds(&p, &[expired], &asked[1..2], now, HOLD_TTL_MS_DEFAULT).unwrap();
        assert_eq!(first.released_by(0), &[HoldId(4)]);
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
