//! Identifiers and amounts as newtypes, so a hold id can never be passed where an order id is
//! expected and money is never a float.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

/// The largest id of a product, hold or order: ids are stored as signed 64-bit integers
/// (SQLite has no unsigned ones), so `i64::MAX`. An id above it names nothing, and a request
/// naming one is refused before it reaches a storage.
pub const ID_MAX: u64 = 9_223_372_036_854_775_807;

/// Whether `id` can name a stored row (at most [`ID_MAX`]). A command naming a larger one
/// reads nothing: its plan loads no row by it (a storage could not keep it exactly, and the
/// ids above are a batch's pending ones), and its decision answers that the product or hold is
/// unknown.
pub fn storable(id: u64) -> bool {
    id <= ID_MAX
}

id_newtype!(
    /// A product's id, allocated by whoever stores products (the ledger, or the database).
    ProductId
);
id_newtype!(
    /// A hold's id.
    HoldId
);
id_newtype!(
    /// An order's id.
    OrderId
);

/// An idempotency key: the payment provider's for one webhook delivery, or a client's for one
/// hold or order request.
///
/// Parsing checks the length and character set once, at the boundary, so every later use can rely
/// on it ("parse, don't validate").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key accepted, in bytes; the databases index the column at this width.
    pub const BYTES_MAX: usize = 255;

    /// Parses a key: 1 to [`Self::BYTES_MAX`] bytes of printable ASCII, no spaces.
    pub fn parse(key: &str) -> Option<Self> {
        let length_ok = !key.is_empty() && key.len() <= Self::BYTES_MAX;
        let chars_ok = key.bytes().all(|b| b.is_ascii_graphic());
        (length_ok && chars_ok).then(|| Self(key.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money in cents. Never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cents(pub u64);

impl Cents {
    /// The price of `qty` units at `self` each, or `None` if it does not fit.
    pub fn times(self, qty: Qty) -> Option<Cents> {
        self.0.checked_mul(u64::from(qty.0)).map(Cents)
    }
}

/// A number of units of one product: a hold's or an order's size, or a product's stock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Qty(pub u32);

impl Qty {
    /// No units.
    pub const ZERO: Qty = Qty(0);

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Qty) -> Option<Qty> {
        self.0.checked_add(other.0).map(Qty)
    }

    /// `self - other`, or `None` if `other` is larger.
    pub fn checked_sub(self, other: Qty) -> Option<Qty> {
        self.0.checked_sub(other.0).map(Qty)
    }

    /// `self - other`, or zero if `other` is larger.
    pub fn saturating_sub(self, other: Qty) -> Qty {
        Qty(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Qty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_rejects_empty_long_and_unprintable_keys() {
        assert!(IdempotencyKey::parse("evt_123").is_some());
        assert!(IdempotencyKey::parse("").is_none());
        assert!(IdempotencyKey::parse(&"k".repeat(IdempotencyKey::BYTES_MAX)).is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(IdempotencyKey::BYTES_MAX + 1)).is_none());
        assert!(IdempotencyKey::parse("has space").is_none());
        assert!(IdempotencyKey::parse("tab\t").is_none());
        assert!(IdempotencyKey::parse("é").is_none());
    }

    #[test]
    fn cents_times_qty_is_checked() {
        assert_eq!(Cents(500).times(Qty(3)), Some(Cents(1500)));
        assert_eq!(Cents(u64::MAX).times(Qty(2)), None);
    }
}
