//! Shared helpers for the flashsale benches live in the bench targets themselves.
