//! The flashsale core: a sans-IO state machine for flash-sale holds, orders and payment webhooks.
//!
//! Everything that decides whether a unit may be sold lives here, as small pure functions over the
//! few rows a transaction reads ([`hold::place_holds`], [`order::place_order`],
//! [`payment::decide_webhook`], [`product::restock`]), driven by one step, [`execute`]: a batch
//! of commands decided in order over the rows its [`Plan`] loaded, into one answer each and one
//! [`WriteSet`]. The in-memory [`Ledger`] runs every command through it, and so do the SQL server
//! and the simulator: no decision is written twice.
//!
//! The core reads no clock, does no IO and draws no random numbers: time comes in as a
//! [`Timestamp`] with each command, and nothing assumes it only moves forward. `core/clippy.toml`
//! forbids the clock, randomness and hash-ordered collections.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod command;
pub mod execute;
pub mod hold;
pub mod ids;
pub mod invariants;
pub mod locks;
pub mod order;
pub mod outcome;
pub mod payment;
pub mod plan;
pub mod product;
pub mod request;
pub mod state;
pub mod time;
pub mod writes;

pub use command::Command;
pub use execute::{Executed, execute};
pub use hold::{Hold, HoldGrant, HoldRequest, HoldState, HoldView, HoldsDecided, ReleaseReason};
pub use ids::{Cents, HoldId, ID_MAX, IdempotencyKey, OrderId, ProductId, Qty};
pub use invariants::Violation;
pub use locks::{LockOrder, OutOfOrder, RowLock};
pub use order::{CancelReason, NewOrder, Order, OrderDecided, OrderStatus, Settlement};
pub use outcome::{Outcome, Refusal, Rejection};
pub use payment::{
    Fingerprint, PaymentStatus, WebhookDecision, WebhookEffect, WebhookPayload, WebhookRecord,
    WebhookResult,
};
pub use plan::{Load, Loaded, Plan, Rows};
pub use product::{Counters, NewProduct, Product};
pub use request::{KeyDecision, KeyedRequest, RequestRecord};
pub use state::Ledger;
pub use time::Timestamp;
pub use writes::{Changes, Inserted, NewHold, Pending, WriteSet, pending_hold, pending_order};
