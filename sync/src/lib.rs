//! The server's in-process shared state, kept apart so loom can model-check it: the group-commit
//! queue every command goes through ([`batch`]), the availability cache ([`cache`]) and the idempotency keys in
//! flight ([`keys`]). Under `--cfg loom` the locks are loom's, and the tests in each
//! module's `loom_tests` explore every interleaving.
//!
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p flashsale-sync`

pub mod batch;
pub mod cache;
pub mod keys;
