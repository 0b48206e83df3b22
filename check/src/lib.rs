//! The commit-order replay check, over any storage of the service layer: [`logged`] wraps a
//! storage (and a clock) so every transaction's end is logged in commit order as [`recording`]
//! describes it, [`history`] names what clients asked and were answered, and [`refine`] replays
//! the log through the core's ledger against every answer, every read and the storage's final
//! rows. A failed check is a [`failure::Failure`], in the API's words ([`words`]). Every storage,
//! the simulator's included, feeds one [`observer::TxObserver`] per transaction: the lock-order
//! check and what a transaction's end logs are written once.
//!
//! The simulator checks every seed with it over its simulated storage; the server's storage tests
//! check the real databases (SQLite, MariaDB) with it. Neither depends on the other.

// The check's arithmetic is on counts and positions of a run's own log (rows, entries, request
// numbers), far from any bound; the lint guards the service's money and units, which live in the
// core and the server.
#![allow(clippy::arithmetic_side_effects)]

pub mod failure;
pub mod history;
pub mod logged;
pub mod observer;
pub mod recording;
pub mod refine;
pub mod words;
