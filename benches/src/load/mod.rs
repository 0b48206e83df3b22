//! `flashsale-load`: an HTTP/1.1 load generator for the flashsale server.
//!
//! It opens N keep-alive connections, each driven by one task that sends requests back to back
//! for a fixed time (after a warm-up whose samples are dropped), records every latency in an HDR
//! histogram per task and merges them at the end. It is deliberately small: it shares a 2-core
//! machine with the server it measures, so requests are built from bodies made once, each
//! connection is one hyper `SendRequest` reused for the whole run, and the runtime defaults to a
//! single thread. See `benches/load.sh` for the suite that writes `docs/PERFORMANCE.md`.
//!
//! - [`cli`]: the command line (clap).
//! - [`http`]: the target address, one client connection, and request templates.
//! - [`run`]: the scenarios and the per-connection loop.
//! - [`stats`]: histograms, status counts and the JSON summary.
//! - [`storm`]: the `expiry-storm` scenario, three phases of the same loop around the moment
//!   a product's holds lapse together.
//! - [`setup`]: creating products through the admin API.
//! - [`report`]: the markdown table and the SVG chart from a file of summaries.
//! - [`cost`]: what a run cost the server, the database and the generator per request, the
//!   cores busy and the round trips per batch; [`process`]: the `/proc` readings behind it.

pub mod cli;
pub mod cost;
pub mod http;
pub mod process;
pub mod report;
pub mod run;
pub mod setup;
pub mod stats;
pub mod storm;
