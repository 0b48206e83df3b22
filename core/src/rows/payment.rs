//! The payment rows: the provider's verdict on a hold as a webhook delivers it, and the stored
//! record of each webhook idempotency key with the result it was answered with.

use std::fmt;

use crate::ids::{HoldId, IdempotencyKey, OrderId};
use crate::time::Timestamp;

/// The provider's verdict. `cancelled` is accepted as an alias of `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PaymentStatus {
    /// The buyer paid.
    Paid,
    /// The payment failed or was cancelled.
    Failed,
}

impl PaymentStatus {
    /// Parses the API's words: `paid`, `failed`, or `cancelled` (an alias of `failed`).
    pub fn parse(status: &str) -> Option<Self> {
        match status {
            "paid" => Some(PaymentStatus::Paid),
            "failed" | "cancelled" => Some(PaymentStatus::Failed),
            _ => None,
        }
    }

    /// The canonical word, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Paid => "paid",
            PaymentStatus::Failed => "failed",
        }
    }
}

/// What the service answered a webhook with; stored with its record and answered again on replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WebhookResult {
    /// It changed the order or hold as asked.
    Applied,
    /// The order or hold already was where the webhook asks it to be.
    AlreadyApplied,
    /// A `failed` verdict on a paid order; the order stays paid for a person to look at.
    Conflict,
    /// A `paid` verdict on a sale that no longer exists: the money must be refunded.
    RefundRequired,
    /// The hold is unknown; kept so the verdict is never silently dropped.
    Unmatched,
}

impl WebhookResult {
    /// The API's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Applied => "applied",
            WebhookResult::AlreadyApplied => "already_applied",
            WebhookResult::Conflict => "conflict",
            WebhookResult::RefundRequired => "refund_required",
            WebhookResult::Unmatched => "unmatched",
        }
    }

    /// Parses a stored word.
    pub fn parse(result: &str) -> Option<Self> {
        [
            WebhookResult::Applied,
            WebhookResult::AlreadyApplied,
            WebhookResult::Conflict,
            WebhookResult::RefundRequired,
            WebhookResult::Unmatched,
        ]
        .into_iter()
        .find(|r| r.as_str() == result)
    }
}

/// A webhook delivery, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookPayload {
    /// The provider's idempotency key.
    pub key: IdempotencyKey,
    /// The hold the payment is for.
    pub hold_id: HoldId,
    /// The verdict.
    pub status: PaymentStatus,
}

impl WebhookPayload {
    /// The fingerprint of the fields that decide the webhook's meaning.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.hold_id, self.status)
    }
}

/// A stable 64-bit FNV-1a hash of a payload's canonical form `"<hold_id>:<status>"`, so `failed`
/// and `cancelled` fingerprint alike. Stable across builds and platforms: it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    /// The fingerprint of a payload with these fields.
    pub fn of(hold_id: HoldId, status: PaymentStatus) -> Fingerprint {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let canonical = format!("{}:{}", hold_id.0, status.as_str());
        let hash = canonical.bytes().fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
        Fingerprint(hash)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The stored record of one idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRecord {
    /// The key; unique.
    pub key: IdempotencyKey,
    /// The payload's hold.
    pub hold_id: HoldId,
    /// The payload's verdict.
    pub status: PaymentStatus,
    /// The payload's fingerprint.
    pub fingerprint: Fingerprint,
    /// What it was answered with.
    pub result: WebhookResult,
    /// The order it concerned, if there was one after it was applied.
    pub order_id: Option<OrderId>,
    /// When it was received, by the receiving server's clock.
    pub received_at: Timestamp,
}
