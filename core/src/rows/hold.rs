//! The hold row: a buyer's short claim on units of one product, and its lifecycle.
//!
//! Lifecycle: `Held -> Consumed(order) | Released(Expired | PaymentFailed)`. `Consumed` and
//! `Released` are final. A held hold whose `expires_at` has passed stays in state held until the
//! sweeper retires its row, but it is never granted against and never consumed: its units went
//! back on sale at its deadline, through its product's expiry bucket ([`crate::rows::expiry`]).

use crate::ids::{HoldId, OrderId, ProductId, Qty};
use crate::time::{Timestamp, is_past};

/// The largest quantity one hold may ask for.
pub const HOLD_QTY_MAX: Qty = Qty(10_000);
/// The shortest hold TTL accepted: one second.
pub const HOLD_TTL_MS_MIN: u64 = 1_000;
/// The longest hold TTL accepted: one day.
pub const HOLD_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// The default hold TTL: two minutes, as the original service had it.
pub const HOLD_TTL_MS_DEFAULT: u64 = 2 * 60 * 1_000;
/// Hold deadlines fall on whole multiples of this (one second): a hold lasts its TTL rounded up
/// to the next tick, so the holds of a product granted within one second share one deadline and
/// one expiry bucket ([`crate::rows::expiry`]), however many there are.
pub const HOLD_DEADLINE_TICK_MS: u64 = 1_000;

const _: () = assert!(HOLD_TTL_MS_MIN <= HOLD_TTL_MS_DEFAULT);
const _: () = assert!(HOLD_TTL_MS_DEFAULT <= HOLD_TTL_MS_MAX);
const _: () = assert!(HOLD_QTY_MAX.0 > 0);
// A hold granted at `now` expires after `now`, and after anything its product folded by `now`.
const _: () = assert!(HOLD_DEADLINE_TICK_MS <= HOLD_TTL_MS_MIN);

/// The deadline of a hold granted at `now` for `ttl_ms`: `now + ttl_ms`, rounded up to the next
/// [`HOLD_DEADLINE_TICK_MS`].
pub fn hold_deadline(now: Timestamp, ttl_ms: u64) -> Timestamp {
    now.saturating_add_ms(ttl_ms).ceil_to(HOLD_DEADLINE_TICK_MS)
}

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
    /// [`hold_deadline`]`(created_at, ttl_ms)`.
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
