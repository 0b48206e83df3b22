//! End-to-end tests on a Galera cluster the test starts itself (`mariadbd.rs`): three MariaDB
//! nodes, one `flashsale` server on each, their buyers, all on this machine.
//!
//! A binary of its own, so that cargo runs it after the other end-to-end tests instead of beside
//! them: a cluster starved of CPU by a hundred other tests misses its group communication
//! timeouts, leaves its primary component and stalls its commits, which is the machine's
//! overload and not what these tests are about. The support modules are the e2e suite's own.
//! Run with `cargo test -p flashsale-tests --test cluster`.

#[allow(
    dead_code,
    reason = "the e2e suite's support modules; this suite uses part of them"
)]
#[path = "../e2e/contract.rs"]
mod contract;
#[allow(
    dead_code,
    reason = "the e2e suite's support modules; this suite uses part of them"
)]
#[path = "../e2e/harness.rs"]
mod harness;
#[allow(
    dead_code,
    reason = "the e2e suite's support modules; this suite uses part of them"
)]
#[path = "../e2e/mariadbd.rs"]
mod mariadbd;
#[allow(
    dead_code,
    reason = "the e2e suite's support modules; this suite uses part of them"
)]
#[path = "../e2e/workload.rs"]
mod workload;

mod abort;
mod binlog;
mod galera;
