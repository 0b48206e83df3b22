//! The order row: a hold turned into a sale, and its lifecycle.
//!
//! Lifecycle: `PrePayment -> Paid | Cancelled`; both are final. Creating an order consumes its
//! hold and moves the hold's units out of `stock` in the same transaction; cancelling it returns
//! them, exactly once, because only a `PrePayment` order can be cancelled.

use crate::ids::{Cents, HoldId, OrderId, ProductId, Qty};
use crate::time::{Timestamp, is_past};

/// The shortest payment window accepted: one second.
pub const PAYMENT_WINDOW_MS_MIN: u64 = 1_000;
/// The longest payment window accepted: seven days.
pub const PAYMENT_WINDOW_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1_000;
/// The default payment window: fifteen minutes.
pub const PAYMENT_WINDOW_MS_DEFAULT: u64 = 15 * 60 * 1_000;

const _: () = assert!(PAYMENT_WINDOW_MS_MIN <= PAYMENT_WINDOW_MS_DEFAULT);
const _: () = assert!(PAYMENT_WINDOW_MS_DEFAULT <= PAYMENT_WINDOW_MS_MAX);

/// Where an order is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrderStatus {
    /// Waiting for the payment webhook until `payment_due_at`.
    PrePayment,
    /// Paid; final.
    Paid,
    /// Payment failed or never came in time; its units went back to stock. Final.
    Cancelled,
}

impl OrderStatus {
    /// Whether the status can never change again.
    pub fn is_terminal(self) -> bool {
        match self {
            OrderStatus::PrePayment => false,
            OrderStatus::Paid | OrderStatus::Cancelled => true,
        }
    }

    /// The API's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PrePayment => "pre_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored word.
    pub fn parse(status: &str) -> Option<Self> {
        [
            OrderStatus::PrePayment,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == status)
    }

    /// Whether the order's units count as sold (out of `stock`).
    pub fn holds_units(self) -> bool {
        match self {
            OrderStatus::PrePayment | OrderStatus::Paid => true,
            OrderStatus::Cancelled => false,
        }
    }
}

/// Why an order was cancelled, stored with it so that an operator can follow up every payment
/// that did not become a sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CancelReason {
    /// A `failed` (or `cancelled`) payment webhook arrived for it.
    PaymentFailed,
    /// Its payment window closed before any payment webhook.
    PaymentWindowClosed,
}

impl CancelReason {
    /// The API's and the storage's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::PaymentFailed => "payment_failed",
            CancelReason::PaymentWindowClosed => "payment_window_closed",
        }
    }

    /// Parses a stored or requested word.
    pub fn parse(reason: &str) -> Option<Self> {
        [
            CancelReason::PaymentFailed,
            CancelReason::PaymentWindowClosed,
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
    }
}

/// What an existing pre-payment order becomes: a terminal status, with its reason when cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Settlement {
    /// Paid.
    Paid,
    /// Cancelled, its units returned to stock.
    Cancelled(CancelReason),
}

impl Settlement {
    /// The order's status after it.
    pub fn status(self) -> OrderStatus {
        match self {
            Settlement::Paid => OrderStatus::Paid,
            Settlement::Cancelled(_) => OrderStatus::Cancelled,
        }
    }

    /// Why the order was cancelled, if it was.
    pub fn cancel_reason(self) -> Option<CancelReason> {
        match self {
            Settlement::Paid => None,
            Settlement::Cancelled(reason) => Some(reason),
        }
    }
}

/// An order for the units of one hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// The hold it consumed; one order per hold.
    pub hold_id: HoldId,
    /// The product sold.
    pub product_id: ProductId,
    /// Units sold, the hold's `qty`.
    pub qty: Qty,
    /// `price_cents * qty` at creation.
    pub total_cents: Cents,
    /// Lifecycle status.
    pub status: OrderStatus,
    /// When it was created, by the creating server's clock.
    pub created_at: Timestamp,
    /// When an unpaid order is cancelled; a `paid` webhook at or after it asks for a refund.
    pub payment_due_at: Timestamp,
    /// Why it was cancelled: set exactly when `status` is `Cancelled`.
    pub cancel_reason: Option<CancelReason>,
}

impl Order {
    /// Whether it still waits for payment but its window has closed at `now`.
    pub fn is_overdue(&self, now: Timestamp) -> bool {
        self.status == OrderStatus::PrePayment && is_past(self.payment_due_at, now)
    }

    /// The order once `settlement` moved it to its terminal status.
    pub fn settled(self, settlement: Settlement) -> Order {
        Order {
            status: settlement.status(),
            cancel_reason: settlement.cancel_reason(),
            ..self
        }
    }
}

/// An order the decision creates; the store assigns its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// The hold it consumes.
    pub hold_id: HoldId,
    /// The product sold.
    pub product_id: ProductId,
    /// Units sold.
    pub qty: Qty,
    /// `price_cents * qty`.
    pub total_cents: Cents,
    /// `PrePayment`, or `Paid` when a webhook created it.
    pub status: OrderStatus,
    /// `now` at the decision.
    pub created_at: Timestamp,
    /// `now + payment_window_ms`.
    pub payment_due_at: Timestamp,
}

impl NewOrder {
    /// The order this becomes once the store gave it `id`.
    pub fn with_id(self, id: OrderId) -> Order {
        Order {
            id,
            hold_id: self.hold_id,
            product_id: self.product_id,
            qty: self.qty,
            total_cents: self.total_cents,
            status: self.status,
            created_at: self.created_at,
            payment_due_at: self.payment_due_at,
            cancel_reason: None,
        }
    }
}
