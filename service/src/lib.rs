//! The service layer: one transaction script for every command, over a
//! [`Storage`](store::Storage), and the group committer that shares its transactions between the
//! requests that arrive together.
//!
//! The script ([`Service::execute_batch`]) opens a transaction and lends its steps to the core's
//! one driver ([`flashsale_core::decide`]), which loads the rows the batch's
//! [`Plan`](flashsale_core::Plan) asks for, each with its lock, in the global order
//! ([`flashsale_core::locks`]: request keys, products, their holds and orders, webhook records),
//! reads the clock, lets the core [`execute`](flashsale_core::execute()) the commands in arrival
//! order and writes the one write-set it returns; the script commits once. No business rule is decided here:
//! every `if` that matters is in `flashsale-core`. A refused command writes nothing, and the
//! others still commit. Contention (deadlocks, lock-wait timeouts, Galera certification
//! failures, busy databases, a key taken by a concurrent insert) and a connection lost before the
//! commit retry the whole script a bounded number of times, then answer [`ServiceError::Busy`]
//! (or the lost connection). A connection lost while committing is never retried: the
//! transaction may have committed.
//!
//! Requests that arrive while a transaction is in flight queue up (`flashsale_sync::batch`), and
//! the next transaction takes up to `batch_max` of them, any mix of products and kinds; answers
//! go out only after the commit. A batch that fails on one poisoned command (a corrupt row the
//! database refuses) is decided again one command at a time, so only that request gets the error.
//!
//! This crate names neither sqlx nor warp, and its only runtime dependency is `tokio` through
//! madsim-tokio, so the simulator runs it unchanged under `--cfg madsim`, over its own
//! [`Storage`](store::Storage); the server (`flashsale-server`) runs it over SQL. Its other
//! modules: [`store`] (the `Storage` and `Transaction` traits a storage implements), [`clock`]
//! (where time comes from) and [`backoff`] (the delay between two attempts of a script).

pub mod backoff;
pub mod clock;
mod service;
pub mod store;

pub use service::{
    ATTEMPTS_MAX_DEFAULT, Answer, BATCH_MAX_DEFAULT, BatchRun, BatchScope, BatchTag,
    CACHE_STALENESS_MS_DEFAULT, COMMITTERS_DEFAULT, COMMITTERS_MAX, Config, HoldAnswer, HoldPlaced,
    Keyed, OrderPlaced, PURGE_BATCH, ProductView, QUEUE_MAX_DEFAULT,
    REQUEST_KEY_RETENTION_MS_DEFAULT, Reply, SWEEP_CHUNK_DEFAULT, SWEEP_CHUNK_MAX,
    SWEEP_PRODUCTS_PER_BATCH, Service, ServiceError, SweepReport, WEBHOOK_RETENTION_MS_DEFAULT,
    WebhookAnswer,
};
