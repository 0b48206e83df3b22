//! The flashsale server: HTTP, SQL and start-up around the service layer (`flashsale-service`,
//! which the simulator runs too).
//!
//! - [`sql`]: the MySQL/MariaDB and SQLite storages, the service layer's `Storage` over sqlx;
//! - [`routes`], [`config`], [`startup`]: the warp HTTP API and the `flashsale` command line.
//!
//! Parsing and checking at the edge use crates (`headers`, `subtle`, `mime`,
//! `serde_path_to_error`, `clap`); the shared state the service keeps between requests (hold
//! queues, the availability cache, idempotency keys in flight) stays hand-written in
//! `flashsale-sync`, because loom can model only the atomics and locks it substitutes, and a
//! crate's internals would be invisible to the models that check those races.

pub mod api;
pub mod body;
pub mod config;
pub mod deadline;
pub mod metrics;
pub mod problem;
pub mod reconcile;
pub mod refusals;
pub mod request_log;
pub mod routes;
pub mod secrets;
pub mod signature;
pub mod sql;
pub mod startup;
pub mod telemetry;
