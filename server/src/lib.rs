//! The flashsale server: the core's imperative shell.
//!
//! - [`service`]: transaction scripts over the [`store::Storage`] trait, free of sqlx and warp,
//!   so the simulator runs them under madsim (the group-commit queue from `flashsale-sync`);
//! - [`store::sql`]: the MySQL/MariaDB and SQLite storages (feature `sql`, on by default);
//! - `routes`, `config`, `startup`: the warp HTTP API and the `flashsale` command line (`sql`).
//!
//! Parsing and checking at the edge use crates (`headers`, `subtle`, `mime`,
//! `serde_path_to_error`, `clap`); the shared state the service keeps between requests (hold
//! queues, the availability cache, idempotency keys in flight) stays hand-written in
//! `flashsale-sync`, because loom can model only the atomics and locks it substitutes, and a
//! crate's internals would be invisible to the models that check those races.

pub mod backoff;
pub mod clock;
pub mod service;
pub mod store;

#[cfg(feature = "sql")]
pub mod api;
#[cfg(feature = "sql")]
pub mod body;
#[cfg(feature = "sql")]
pub mod config;
#[cfg(feature = "sql")]
pub mod deadline;
#[cfg(feature = "sql")]
pub mod metrics;
#[cfg(feature = "sql")]
pub mod problem;
#[cfg(feature = "sql")]
pub mod reconcile;
#[cfg(feature = "sql")]
pub mod refusals;
#[cfg(feature = "sql")]
pub mod request_log;
#[cfg(feature = "sql")]
pub mod routes;
#[cfg(feature = "sql")]
pub mod secrets;
#[cfg(feature = "sql")]
pub mod signature;
#[cfg(feature = "sql")]
pub mod startup;
#[cfg(feature = "sql")]
pub mod telemetry;
