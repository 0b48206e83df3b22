//! The flashsale deterministic simulator: the server's own service layer, run under madsim over a
//! simulated storage with row locks, latency and faults, several instances with their own
//! clocks, racing clients and a misbehaving payment provider — all reproducible from one seed.
//!
//! The simulation exists only with `RUSTFLAGS="--cfg madsim"` (built in its own target
//! directory, `target/sim`); a plain build compiles the plan and trace modules, the
//! commit-order replay check ([`refine`], over the log [`recording`] keeps and the answers in
//! [`history`]'s words, with its [`failure`] and [`words`]) and [`logged`],
//! which puts that check over any storage (the real databases' tests use it), and a stub
//! binary.

// The simulator's arithmetic is on small bounded counts and durations of its own making, where a
// wrap would be a simulator bug that the runs would show; the lint guards the service's money and
// units, which live in the core and the server.
#![allow(clippy::arithmetic_side_effects)]

pub mod failure;
pub mod history;
pub mod logged;
pub mod plan;
pub mod recording;
pub mod refine;
pub mod trace;
pub mod words;

#[cfg(madsim)]
pub mod cli;
#[cfg(madsim)]
pub mod clock;
#[cfg(madsim)]
pub mod exit;
#[cfg(madsim)]
pub mod planfile;
#[cfg(madsim)]
pub mod report;
#[cfg(madsim)]
pub mod shrink;
#[cfg(madsim)]
pub mod store;
#[cfg(madsim)]
pub mod summary;
#[cfg(madsim)]
pub mod sweep;
#[cfg(madsim)]
pub mod workload;
#[cfg(madsim)]
pub mod world;
