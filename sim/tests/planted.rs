//! Proof that the simulator finds bugs: each bug planted in the simulated storage (never in the
//! service) is found within a bounded number of seeds, while the same seeds pass without it;
//! a seed replays to the same trace; and shrinking keeps the failure with a smaller plan.
//!
//! Simulation builds only: `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test
//! --release -p flashsale-sim`.

#![cfg(madsim)]

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
fn first_failure(bug: Option<Bug>) -> Option<(u64, String)> {
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
        let (seed, failure) = found.unwrap_or_default();
        eprintln!("{}: found at seed {seed}: {failure}", bug.name());
        // These leave every invariant intact: only their own checkers can see them.
        let checker = match bug {
            Bug::ForgetRequestKey => Some("idempotency:"),
            Bug::CountExpiredHolds => Some("refinement: answer to request"),
            Bug::LostCommitAsLostConnection => Some("refinement: request"),
            _ => None,
        };
        if let Some(checker) = checker {
            assert!(
                failure.starts_with(checker),
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
