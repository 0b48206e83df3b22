//! The flashsale deterministic simulator: the server's own service layer, run under madsim over a
//! simulated storage with row locks, latency and faults, several instances with their own
//! clocks, racing clients and a misbehaving payment provider — all reproducible from one seed.
//!
//! Everything here exists only with `RUSTFLAGS="--cfg madsim"` (built in its own target
//! directory, `target/sim`); a plain build compiles just the plan and trace modules and a stub
//! binary, so `cargo test --workspace` stays green.

// The simulator's arithmetic is on small bounded counts and durations of its own making, where a
// wrap would be a simulator bug that the runs would show; the lint guards the service's money and
// units, which live in the core and the server.
#![allow(clippy::arithmetic_side_effects)]

pub mod plan;
pub mod trace;

#[cfg(madsim)]
pub mod cli;
#[cfg(madsim)]
pub mod clock;
#[cfg(madsim)]
pub mod failure;
#[cfg(madsim)]
pub mod planfile;
#[cfg(madsim)]
pub mod refine;
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
pub mod words;
#[cfg(madsim)]
pub mod world;
