//! The flashsale core: a sans-IO state machine for flash-sale holds, orders and payment webhooks.
//!
//! Everything that decides whether a unit may be sold lives here, as small pure functions over the
//! few rows a transaction reads ([`hold::place_holds`], [`order::place_order`],
//! [`payment::decide_webhook`], [`product::restock`]), driven by one step, [`execute()`]: a batch
//! of commands decided in order over the rows its [`Plan`] loaded, into one answer each and one
//! [`WriteSet`]. The in-memory [`Ledger`] runs every command through it, and so do the SQL server
//! and the simulator: no decision is written twice.
//!
//! The core reads no clock, does no IO and draws no random numbers: time comes in as a
//! [`Timestamp`] with each command, and nothing assumes it only moves forward. `core/clippy.toml`
//! forbids the clock, randomness and hash-ordered collections.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The layers, each importing only those above it in this list (`tests/layers.rs` checks it):
// 1. ids and time;
pub mod ids;
pub mod time;
// 2. the rows and their lifecycles;
pub mod rows;
// 3. why a decision did not go through;
pub mod errors;
// 4. what a batch reads, locks, writes and answers;
pub mod command;
pub mod locks;
pub mod outcome;
pub mod plan;
pub mod writes;
// 5. the decisions;
pub mod hold;
pub mod order;
pub mod payment;
pub mod product;
pub mod request;
// 6. the invariants over stored rows, and the one step that decides a batch;
pub mod driver;
pub mod execute;
pub mod invariants;
// 7. the in-memory ledger, which runs that step and checks those invariants.
pub mod ledger;

pub use command::Command;
pub use driver::{Decided, Steps, decide};
pub use errors::{Refusal, Rejection, Violation};
pub use execute::{Executed, execute};
pub use hold::{HoldRequest, HoldsDecided};
pub use ids::{Cents, HoldId, ID_MAX, IdempotencyKey, OrderId, ProductId, Qty};
pub use invariants::Stored;
pub use ledger::Ledger;
pub use locks::{LockOrder, OutOfOrder, RowLock};
pub use order::OrderDecided;
pub use outcome::{Outcome, WebhookChange};
pub use payment::{WebhookDecision, WebhookEffect};
pub use plan::{Budget, Load, Loaded, Plan, Rows};
pub use request::KeyDecision;
pub use rows::expiry::{BucketChange, DUE_BUCKETS_MAX, ExpiryBucket, Folded, OpenBucket};
pub use rows::hold::{Hold, HoldGrant, HoldState, HoldView, ReleaseReason};
pub use rows::order::{CancelReason, NewOrder, Order, OrderStatus, Settlement};
pub use rows::payment::{Fingerprint, PaymentStatus, WebhookPayload, WebhookRecord, WebhookResult};
pub use rows::product::{Counters, NewProduct, Product};
pub use rows::request::{KeyedRequest, RequestRecord};
pub use time::Timestamp;
pub use writes::{
    BucketRead, Changes, Inserted, NewHold, Pending, Put, Tables, WriteSet, lay, pending_hold,
    pending_order, pending_product,
};
