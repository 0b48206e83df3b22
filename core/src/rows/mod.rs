//! The rows: what the service stores (products, holds and their expiry buckets, orders, webhook
//! and request-key records), their lifecycles, and the limits on their fields. Rows know nothing
//! of the decisions over them; they import only ids and time.

pub mod expiry;
pub mod hold;
pub mod order;
pub mod payment;
pub mod product;
pub mod request;
