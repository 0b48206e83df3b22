//! The hold decisions: granting a batch of holds on one product (folding its due expiry buckets
//! on the way), and retiring the rows of holds expired for good.
//!
//! The rows they decide over are in [`crate::rows::hold`].

use crate::errors::{Rejection, Violation};
use crate::ids::{IdempotencyKey, Qty};
use crate::product;
use crate::rows::expiry::{ExpiryBucket, Folded};
use crate::rows::hold::{
    HOLD_QTY_MAX, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN, Hold, HoldGrant, hold_deadline,
};
use crate::rows::product::Product;
use crate::rows::request::{KeyedRequest, RequestRecord};
use crate::time::{Timestamp, is_past};
use crate::writes::{Changes, WriteSet};

/// One hold request of a batch, its values checked: the units asked for, in
/// `1..=HOLD_QTY_MAX`, for how long, in `HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX`, and the client's
/// idempotency key if it sent one (the key's record is written with the grant). Made only by
/// [`HoldRequest::new`], the one place a hold request's values are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    qty: Qty,
    ttl_ms: u64,
    key: Option<IdempotencyKey>,
}

impl HoldRequest {
    /// A request for `qty` units held `ttl_ms`, under `key`, already decided fresh.
    ///
    /// # Errors
    /// [`Rejection::InvalidQty`], then [`Rejection::InvalidTtl`].
    pub fn new(qty: Qty, ttl_ms: u64, key: Option<IdempotencyKey>) -> Result<Self, Rejection> {
        if qty == Qty::ZERO || qty > HOLD_QTY_MAX {
            return Err(Rejection::InvalidQty { qty });
        }
        if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(Rejection::InvalidTtl { ttl_ms });
        }
        Ok(HoldRequest { qty, ttl_ms, key })
    }

    /// Units asked for.
    pub fn qty(&self) -> Qty {
        self.qty
    }

    /// How long the hold is to last, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }
}

/// A batch's decisions, one per request in order, and what they write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldsDecided {
    /// Each request's grant or rejection; the `n`th grant is the `n`th hold inserted (pending
    /// id [`crate::writes::pending_hold`]`(n)`).
    pub decisions: Vec<Result<HoldGrant, Rejection>>,
    /// What folding the product's due expiry buckets gave back to sale (only when something was
    /// granted).
    pub folded: Folded,
    /// The writes: nothing when nothing was granted, so a refused batch changes nothing.
    pub writes: WriteSet,
}

impl HoldsDecided {
    /// What the `n`th request's decision folded, as the same requests one by one would have it:
    /// the first grant folds the due buckets, and every later one finds none.
    pub fn folded_by(&self, n: usize) -> Folded {
        match self.decisions.iter().position(Result::is_ok) {
            Some(first) if first == n => self.folded,
            _ => Folded::default(),
        }
    }
}

/// Decides a batch of hold requests on one product, granted in arrival order at the product's
/// [`Product::decision_time`]: each request is granted if its `qty` fits in what the earlier
/// grants left available, else rejected with [`Rejection::InsufficientStock`] naming what was
/// available to it. The result has one entry per request, in order, so a batch decides exactly as
/// the same requests one by one would.
///
/// `due` are the product's expiry buckets due at `now` (the shell reads at most
/// [`crate::rows::expiry::DUE_BUCKETS_MAX`] of them, in deadline order). Their units count as
/// available, and when anything is granted they are folded into the counters by the same
/// write-set: the work is one row per bucket, never one per hold that expired.
///
/// # Errors
/// A [`Violation`] when the product's counters disagree with `due` or its stock.
pub fn place_holds(
    product: &Product,
    due: &[ExpiryBucket],
    requests: &[HoldRequest],
    now: Timestamp,
) -> Result<HoldsDecided, Violation> {
    // Deadlines are judged, and the holds stamped, at the product's decision time; the records
    // of the requests' keys keep the clock's own time.
    let at = product.decision_time(now);
    let units_due = due_units(product, due, at)?;
    let mut available = product::available(product, units_due)?;
    let decisions: Vec<_> = requests
        .iter()
        .map(|request| decide(&mut available, request, at))
        .collect();
    debug_assert_eq!(decisions.len(), requests.len(), "one decision per request");
    if decisions.iter().all(Result::is_err) {
        // Nothing granted: the due buckets stay as they were, and nothing is written.
        return Ok(HoldsDecided {
            decisions,
            folded: Folded::default(),
            writes: WriteSet::default(),
        });
    }
    let mut changes = Changes::on(product);
    changes.fold(due, at)?;
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
    Ok(HoldsDecided {
        decisions,
        folded: changes.folded(),
        writes: changes.finish(),
    })
}

/// Retires `holds`, held holds of the product that have expired for good (deadline at or before
/// its `expired_through` as `changes` leave it), as the sweeper does after folding.
///
/// # Errors
/// A [`Violation`] when a hold is not one such, or the counters cannot give it up.
pub fn retire_expired(changes: &mut Changes, holds: &[Hold]) -> Result<(), Violation> {
    holds.iter().try_for_each(|hold| changes.retire(hold))
}

/// The units due at `now`: those of `due`, after checking each is a bucket of the table due at
/// `now`, of the product and not yet folded, and those of the product's open bucket if it is
/// due.
///
/// # Errors
/// [`Violation::ExpiryBucketMismatch`] for a bucket that is not (or that stands at the open
/// bucket's deadline), and [`Violation::CounterOutOfRange`] when the units overflow.
pub fn due_units(
    product: &Product,
    due: &[ExpiryBucket],
    now: Timestamp,
) -> Result<Qty, Violation> {
    let open = product.live_bucket();
    let mut units = Qty::ZERO;
    for bucket in due {
        let fits = bucket.product_id == product.id
            && !product.expired_for_good(bucket.expires_at)
            && is_past(bucket.expires_at, now)
            && open.is_none_or(|open| open.expires_at != bucket.expires_at);
        if !fits {
            return Err(Violation::ExpiryBucketMismatch {
                product_id: bucket.product_id,
                expires_at: bucket.expires_at,
            });
        }
        units = units
            .checked_add(bucket.units)
            .ok_or(Violation::CounterOutOfRange {
                product_id: product.id,
                counter: "units_held",
            })?;
    }
    let open_due = open.filter(|open| is_past(open.expires_at, now));
    let open_units = open_due.map_or(Qty::ZERO, |open| open.units);
    units
        .checked_add(open_units)
        .ok_or(Violation::CounterOutOfRange {
            product_id: product.id,
            counter: "units_held",
        })
}

/// The one hold decision: grant the request out of `available` (and take it), or say what was
/// there.
fn decide(
    available: &mut Qty,
    request: &HoldRequest,
    now: Timestamp,
) -> Result<HoldGrant, Rejection> {
    let qty = request.qty;
    *available = available
        .checked_sub(qty)
        .ok_or(Rejection::InsufficientStock {
            requested: qty,
            available: *available,
        })?;
    Ok(HoldGrant {
        qty,
        created_at: now,
        expires_at: hold_deadline(now, request.ttl_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cents, HoldId, ProductId};
    use crate::rows::expiry::OpenBucket;
    use crate::rows::hold::{HOLD_TTL_MS_DEFAULT, HoldView};

    /// A request for `qty` units held `ttl_ms`, without a key.
    fn asking(qty: u32, ttl_ms: u64) -> HoldRequest {
        HoldRequest::new(Qty(qty), ttl_ms, None).expect("a valid request")
    }

    fn product(stock: u32) -> Product {
        crate::rows::product::NewProduct {
            name: "p".into(),
            price_cents: Cents(100),
            stock: Qty(stock),
        }
        .with_id(ProductId(1))
    }

    fn bucket(expires_at: u64, units: u32, holds: u32) -> ExpiryBucket {
        ExpiryBucket {
            product_id: ProductId(1),
            expires_at: Timestamp(expires_at),
            units: Qty(units),
            holds,
        }
    }

    #[test]
    fn a_batch_is_granted_in_arrival_order_against_what_is_left() {
        let now = Timestamp(1_500);
        let requests = [2, 3, 1, 1].map(|qty| asking(qty, HOLD_TTL_MS_DEFAULT));
        let held = Product {
            units_held: Qty(1),
            ..product(5)
        };
        let decided = place_holds(&held, &[], &requests, now).unwrap();
        let decisions = decided.decisions;
        // The deadline is rounded up to the next whole second.
        let expires_at = Timestamp(122_000);
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
        let writes = decided.writes;
        assert!(
            writes.buckets.is_empty(),
            "no bucket row: the deadline opens in the product row"
        );
        let open = writes.product(ProductId(1)).map(|c| c.open_bucket);
        let open = open.map(|b| (b.expires_at, b.units, b.holds));
        assert_eq!(
            open,
            Some((expires_at, Qty(4), 3)),
            "one open bucket for the batch"
        );
    }

    #[test]
    fn an_open_bucket_whose_holds_all_left_is_not_flushed() {
        // Its one hold was ordered: a later deadline replaces it without a bucket row.
        let mut p = product(5);
        p.open_bucket = OpenBucket {
            expires_at: Timestamp(2_000),
            units: Qty::ZERO,
            holds: 0,
        };
        let request = [asking(1, 1_000)];
        let placed = place_holds(&p, &[], &request, Timestamp(1_500)).unwrap();
        assert!(placed.writes.buckets.is_empty(), "nothing to flush");
        let open = placed.writes.product(ProductId(1)).map(|c| c.open_bucket);
        assert_eq!(
            open,
            Some(OpenBucket {
                expires_at: Timestamp(3_000),
                units: Qty(1),
                holds: 1
            })
        );
    }

    #[test]
    fn a_later_deadline_flushes_the_open_bucket_to_the_table() {
        let p = product(5);
        let request = [asking(1, 1_000)];
        let first = place_holds(&p, &[], &request, Timestamp(1_000)).unwrap();
        let mut p = p;
        p.set_counters(*first.writes.product(ProductId(1)).unwrap());
        let second = place_holds(&p, &[], &request, Timestamp(1_500)).unwrap();
        let flushed: Vec<_> = (second.writes.buckets.iter())
            .map(|b| (b.expires_at, b.units, b.holds))
            .collect();
        assert_eq!(
            flushed,
            [(Timestamp(2_000), 1, 1)],
            "the first second's bucket"
        );
        let open = second
            .writes
            .product(ProductId(1))
            .map(|c| c.open_bucket.expires_at);
        assert_eq!(
            open,
            Some(Timestamp(3_000)),
            "the second's deadline is open"
        );
    }

    #[test]
    fn zero_qty_and_out_of_range_ttl_make_no_request() {
        let one = |qty, ttl_ms| HoldRequest::new(Qty(qty), ttl_ms, None).map(|r| r.qty());
        assert_eq!(
            one(0, HOLD_TTL_MS_DEFAULT),
            Err(Rejection::InvalidQty { qty: Qty(0) })
        );
        assert_eq!(
            one(HOLD_QTY_MAX.0 + 1, HOLD_TTL_MS_DEFAULT),
            Err(Rejection::InvalidQty {
                qty: Qty(HOLD_QTY_MAX.0 + 1)
            })
        );
        assert_eq!(
            one(1, HOLD_TTL_MS_MAX + 1),
            Err(Rejection::InvalidTtl {
                ttl_ms: HOLD_TTL_MS_MAX + 1
            })
        );
        assert_eq!(
            one(1, HOLD_TTL_MS_MIN - 1),
            Err(Rejection::InvalidTtl {
                ttl_ms: HOLD_TTL_MS_MIN - 1
            })
        );
        assert_eq!(one(HOLD_QTY_MAX.0, HOLD_TTL_MS_MIN), Ok(HOLD_QTY_MAX));
    }

    #[test]
    fn a_grant_folds_the_due_buckets_and_a_refusal_keeps_them() {
        let p = Product {
            units_held: Qty(3),
            ..product(3)
        };
        let due = [bucket(10_000, 3, 2)];
        let ask = |qty| [asking(qty, HOLD_TTL_MS_DEFAULT)];
        let now = Timestamp(10_000);
        let granted = place_holds(&p, &due, &ask(3), now).unwrap();
        assert_eq!(granted.folded, Folded { holds: 2, units: 3 });
        let counters = granted.writes.product(ProductId(1)).copied();
        let counters = counters.map(|c| (c.units_held, c.expired_through, c.holds_to_retire));
        assert_eq!(counters, Some((Qty(3), Timestamp(10_000), 2)));
        assert_eq!(granted.writes.buckets_folded, due.to_vec());
        let refused = place_holds(&p, &due, &ask(4), now).unwrap();
        assert!(refused.writes.is_empty());
        let early = place_holds(&p, &due, &ask(1), Timestamp(9_999));
        assert_eq!(
            early,
            Err(Violation::ExpiryBucketMismatch {
                product_id: ProductId(1),
                expires_at: Timestamp(10_000)
            }),
            "a bucket not due is no bucket to fold"
        );
    }

    #[test]
    fn in_a_batch_the_first_grant_folds_the_due_buckets_as_one_by_one() {
        let p = Product {
            units_held: Qty(3),
            ..product(3)
        };
        let due = [bucket(10_000, 3, 1)];
        let asked = [9, 1, 2].map(|qty| asking(qty, HOLD_TTL_MS_DEFAULT));
        let now = Timestamp(10_000);
        let batch = place_holds(&p, &due, &asked, now).unwrap();
        let folded: Vec<Folded> = (0..3).map(|n| batch.folded_by(n)).collect();
        let once = Folded { holds: 1, units: 3 };
        // The first request is refused, so the second is the first grant.
        assert_eq!(folded, [Folded::default(), once, Folded::default()]);
        let first = place_holds(&p, &due, &asked[1..2], now).unwrap();
        assert_eq!(first.folded_by(0), once);
    }

    #[test]
    fn a_product_decides_no_earlier_than_what_it_folded() {
        let folded = Product {
            expired_through: Timestamp(50_000),
            ..product(5)
        };
        let request = [asking(1, 1_000)];
        let behind = Timestamp(20_000);
        let decided = place_holds(&folded, &[], &request, behind).unwrap();
        let grant = decided.decisions[0].clone().unwrap();
        assert_eq!(grant.created_at, Timestamp(50_000));
        assert_eq!(grant.expires_at, Timestamp(51_000));
    }

    #[test]
    fn a_hold_expires_at_its_deadline_and_looks_expired_until_retired() {
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
