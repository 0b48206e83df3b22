//! Proof that the simulator finds bugs: each bug planted in the simulated storage (never in the
//! service) is found within a bounded number of seeds, while the same seeds pass without it;
//! a seed replays to the same trace; and shrinking keeps the failure with a smaller plan.
//!
//! Simulation builds only: `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test
//! --release -p flashsale-sim`.

#![cfg(madsim)]

use flashsale_check::failure::Failure;
use flashsale_sim::plan::Plan;
use flashsale_sim::shrink;
use flashsale_sim::store::Bug;
use flashsale_sim::world::{self, RunConfig};

/// Every planted bug must be found within this many seeds.
const SEEDS_MAX: u64 = 50;

fn config(seed: u64, bug: Option<Bug>) -> RunConfig {
    RunConfig {
        seed,
        plan: Plan::draw(seed, 200, 8, 3),
        bug,
        trace: false,
    }
}

/// The first seed below [`SEEDS_MAX`] whose run fails, with its failure.
fn first_failure(bug: Option<Bug>) -> Option<(u64, Failure)> {
    (0..SEEDS_MAX).find_map(|seed| world::run(&config(seed, bug)).failure.map(|f| (seed, f)))
}

#[test]
fn every_planted_bug_is_found_within_fifty_seeds() {
    for bug in Bug::ALL {
        let found = first_failure(Some(bug));
        assert!(
            found.is_some(),
            "{} went unnoticed for {SEEDS_MAX} seeds",
            bug.name()
        );
        let Some((seed, failure)) = found else {
            continue;
        };
        eprintln!("{}: found at seed {seed}: {failure}", bug.name());
        // These leave every invariant intact: only their own checkers can see them.
        let checker = match bug {
            // The ledger keeps the keys' records: a retry the storage runs again is, in
            // commit order, a replay that inserts nothing.
            Bug::ForgetRequestKey => Some("refinement:"),
            // Its wrong answers are a refused hold's, or a read's of the same product: whichever
            // the schedule shows first, only the replay of answers sees it.
            Bug::CountExpiredHolds => Some("refinement:"),
            // Every decision comes out the same: only the work budget sees it, and names the
            // transaction that went over.
            Bug::LoadEveryExpiredHold => Some("work budget: transaction over its budget"),
            Bug::LostCommitAsLostConnection => Some("refinement: request committed twice"),
            Bug::ReadDeadlineAsHeld => Some("refinement: read differs"),
            Bug::PanicInCommit => Some("panic:"),
            _ => None,
        };
        if let Some(checker) = checker {
            assert!(
                failure.kind.starts_with(checker),
                "{} found by another check: {failure}",
                bug.name()
            );
        }
    }
}

#[test]
fn the_same_seeds_pass_without_a_planted_bug() {
    assert_eq!(first_failure(None), None);
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    for seed in [1, 2, 3] {
        let a = world::run(&config(seed, None));
        let b = world::run(&config(seed, None));
        assert!(
            a.trace_events > 100,
            "seed {seed} recorded too little: {}",
            a.trace_events
        );
        assert_eq!(
            (a.trace_hash, a.trace_events),
            (b.trace_hash, b.trace_events),
            "seed {seed}"
        );
    }
    let one = world::run(&config(1, None));
    let two = world::run(&config(2, None));
    assert_ne!(
        one.trace_hash, two.trace_hash,
        "different seeds explore different runs"
    );
}

#[test]
fn shrinking_keeps_the_failure_and_leaves_a_smaller_plan() {
    let bug = Some(Bug::ApplyWebhookTwice);
    let (seed, _) = first_failure(bug).expect("the planted bug is found");
    let config = config(seed, bug);
    let report = world::run(&config);
    let (small, small_report) = shrink::shrink(&config, &report);
    assert!(
        small_report.failure.is_some(),
        "the shrunk plan still fails"
    );
    assert!(
        small.plan.ops() < config.plan.ops(),
        "shrinking removed nothing: {} ops",
        small.plan.ops()
    );
    assert_eq!(
        world::run(&small).failure,
        small_report.failure,
        "the shrunk plan replays"
    );
}

#[test]
fn a_panic_fails_its_seed_with_its_message_request_and_last_trace_lines() {
    world::quiet_panics();
    let report = world::run(&config(0, Some(Bug::PanicInCommit)));
    let failure = report.failure.expect("the planted panic fails the seed");
    assert_eq!(failure.kind, "panic: panic");
    assert!(
        failure.message.contains("planted panic-in-commit")
            && failure.message.contains("sim/src/store/statements.rs"),
        "the message and where: {failure}"
    );
    assert!(
        failure.request.is_some() && failure.instance.is_some(),
        "{failure}"
    );
    assert!(failure.at_ms.is_some_and(|ms| ms > 0), "{failure}");
    assert!(
        failure.trace_tail.len() >= 5,
        "the last trace lines: {:?}",
        failure.trace_tail
    );
    // Not an all-zero summary: the run went on and counted what it did.
    assert!(report.stats.requests > 100, "{:?}", report.stats);
    assert!(report.trace_events > 100 && report.trace_hash != 0);
}
