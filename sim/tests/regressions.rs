//! Every plan in `sim/regressions/*.json` is replayed: a plan that expects a failure must fail
//! the same way again (so the checker that found it still can), and, when it needs a planted
//! bug, must pass without it (so the failure is the bug's, not the plan's); a plan that expects
//! nothing must pass. docs/SIMULATION.md shows how a failure becomes such a file.
//!
//! Simulation builds only: `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test
//! --release -p flashsale-sim`.

#![cfg(madsim)]

use std::path::PathBuf;

use flashsale_sim::planfile::PlanFile;
use flashsale_sim::world::{self, RunConfig};

fn plans() -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/regressions"));
    let mut plans: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/regressions exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    plans.sort();
    plans
}

#[test]
fn every_regression_plan_replays_to_what_it_expects() {
    world::quiet_panics();
    let plans = plans();
    assert!(!plans.is_empty(), "no plans in sim/regressions");
    for path in plans {
        let (file, config) = PlanFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let report = world::run(&config);
        let kind = report.failure.as_ref().map(|f| f.kind.clone());
        match &file.expect {
            Some(expected) => assert_eq!(
                kind.as_deref(),
                Some(expected.kind.as_str()),
                "{}: expected a failure of kind {:?} ({}), got {:?}",
                path.display(),
                expected.kind,
                expected.message,
                report.failure.map(|f| f.to_string())
            ),
            None => assert_eq!(kind, None, "{} must pass", path.display()),
        }
        if config.bug.is_some() {
            let without = world::run(&RunConfig {
                bug: None,
                ..config.clone()
            });
            assert_eq!(
                without.failure.map(|f| f.to_string()),
                None,
                "{} must pass without its planted bug",
                path.display()
            );
        }
    }
}
