//! The flashsale deterministic simulator: the server's own service layer, run under madsim over a
//! simulated storage with row locks, latency and faults, several instances with their own
//! clocks, racing clients and a misbehaving payment provider — all reproducible from one seed.
//!
//! The simulation exists only with `RUSTFLAGS="--cfg madsim"` (built in its own target
//! directory, `target/sim`); a plain build compiles the plan and trace modules and a stub
//! binary. The commit-order replay check every run ends with (and the words its failures are
//! written in) is the `flashsale-check` crate's, which the server's storage tests put over the
//! real databases too.

// The simulator's arithmetic is on small bounded counts and durations of its own making, where a
// wrap would be a simulator bug that the runs would show; the lint guards the service's money and
// units, which live in the core and the server.
#![allow(clippy::arithmetic_side_effects)]

pub mod jobs;
pub mod plan;
pub mod trace;

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
