//! Shared code of the flashsale benches. The criterion benches of the core live in their bench
//! targets (`benches/core.rs`); [`load`] is the HTTP load generator behind the `flashsale-load`
//! binary, kept in the library so its pieces (argument parsing, statistics, the report) are plain
//! modules a test or another tool can reuse.

pub mod load;
