//! A sweep on several threads is the sweep on one: the same seeds run, the same coverage, the
//! same trace for every seed (the summary's trace digest), and with a planted bug the same first
//! failing seed, or with `--keep-going` the same failures in seed order.
//!
//! Simulation builds only: `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test
//! --release -p flashsale-sim`.

#![cfg(madsim)]

use std::path::{Path, PathBuf};

use flashsale_sim::jobs::Jobs;
use flashsale_sim::store::Bug;
use flashsale_sim::summary::{SeedTally, Seeds, Shard, SweepSummary};
use flashsale_sim::sweep::{self, FailureOptions, ProgressMode, SweepOptions};
use flashsale_sim::workload::Workload;
use flashsale_sim::world;

/// A fresh directory under the sim target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    dir
}

fn workload(bug: Option<Bug>) -> Workload {
    Workload {
        ops: 200,
        clients: 8,
        servers: 3,
        bug,
    }
}

/// A quiet sweep of `start..end` on `jobs` threads; failing plans go to `plan_dir`.
fn options(seeds: (u64, u64), bug: Option<Bug>, jobs: usize, plan_dir: &Path) -> SweepOptions {
    SweepOptions {
        seeds: Seeds {
            start: seeds.0,
            end: seeds.1,
        },
        shard: Shard { index: 1, count: 1 },
        workload: workload(bug),
        keep_going: false,
        json: true,
        progress: ProgressMode::None,
        failures: FailureOptions {
            plan_dir: plan_dir.to_owned(),
        },
        report: None,
        jobs: Jobs::new(jobs).expect("a number of jobs in range"),
    }
}

/// The summary of a sweep, without its wall time (the one thing the jobs may change).
fn summary(options: &SweepOptions) -> SweepSummary {
    SweepSummary {
        wall_s: 0.0,
        ..sweep::run(options)
    }
}

#[test]
fn a_sweep_on_two_threads_adds_up_to_the_sweep_on_one() {
    world::quiet_panics();
    let dir = scratch("jobs-pass");
    let one = summary(&options((0, 40), None, 1, &dir));
    let two = summary(&options((0, 40), None, 2, &dir));
    assert_eq!(one.seeds_run, 40);
    assert!(one.failures.is_empty(), "{:?}", one.failures);
    assert!(!one.stopped_early);
    assert_eq!(one, two, "seeds run, coverage, failures and trace digest");
    // The digest is every seed's own trace, as the seed gives it run alone.
    let alone = (0..40).fold(0u64, |digest, seed| {
        let report = world::run(&workload(None).config(seed));
        digest.wrapping_add(SeedTally::of(&report).digest())
    });
    assert_eq!(one.trace_digest, alone);
}

#[test]
fn a_planted_bug_stops_several_threads_at_the_seed_one_thread_stops_at() {
    world::quiet_panics();
    // Its first failing seeds are 2, 9 and 11: with more threads, later seeds run (and may
    // fail) before seed 2 is done.
    let bug = Some(Bug::LoadEveryExpiredHold);
    let dir = scratch("jobs-stop");
    let one = summary(&options((0, 12), bug, 1, &dir));
    let first = one.failures.first().map(|f| f.seed);
    assert_eq!(first, Some(2), "{:?}", one.failures);
    assert_eq!(one.failures.len(), 1);
    assert_eq!(one.seeds_run, 3);
    assert!(one.stopped_early);
    assert!(
        one.failures.iter().all(|f| f.plan_file.is_some()),
        "shrunk and written: {:?}",
        one.failures
    );
    for jobs in [2, 4] {
        let many = summary(&options((0, 12), bug, jobs, &dir));
        assert_eq!(one, many, "{jobs} jobs");
    }
}

#[test]
fn with_keep_going_several_threads_report_every_failure_in_seed_order() {
    world::quiet_panics();
    let bug = Some(Bug::LoadEveryExpiredHold);
    let dir = scratch("jobs-keep-going");
    let keep_going = |jobs| SweepOptions {
        keep_going: true,
        ..options((0, 10), bug, jobs, &dir)
    };
    let one = summary(&keep_going(1));
    let seeds: Vec<u64> = one.failures.iter().map(|f| f.seed).collect();
    assert_eq!(seeds, [2, 9]);
    assert_eq!(one.seeds_run, 10);
    assert!(!one.stopped_early);
    let two = summary(&keep_going(2));
    assert_eq!(one, two);
}
