//! Shrinking a failing run: remove fault classes, chaos events, stray webhooks, restocks and
//! journeys one chunk at a time (delta debugging), re-running the same seed after each removal
//! and keeping every removal after which the run still fails. What is left is a small plan that still
//! reproduces the failure, printed as a timeline.

use crate::plan::FaultProfile;
use crate::plan::Plan;
use crate::world::{self, Report, RunConfig};

/// Runs at most this many candidate plans.
pub const RUNS_MAX: usize = 300;

/// The smallest failing configuration found from `config`, with its report. `config` must fail.
pub fn shrink(config: &RunConfig, first: &Report) -> (RunConfig, Report) {
    let mut best = RunConfig {
        trace: false,
        ..config.clone()
    };
    let kind = failure_kind(first);
    let mut report = first.clone();
    let mut runs = 0usize;
    let mut attempt = |candidate: RunConfig, best: &mut RunConfig, report: &mut Report| -> bool {
        if runs >= RUNS_MAX {
            return false;
        }
        runs = runs.saturating_add(1);
        let tried = world::run(&candidate);
        let still_fails = failure_kind(&tried).is_some() && failure_kind(&tried) == kind;
        if still_fails {
            *best = candidate;
            *report = tried;
        }
        still_fails
    };

    // Fault classes, one at a time.
    let clear: [fn(&mut FaultProfile); 4] = [
        |f| f.deadlock = 0.0,
        |f| f.lock_timeout = 0.0,
        |f| f.connection_lost = 0.0,
        |f| f.commit_answer_lost = 0.0,
    ];
    for clear in clear {
        let mut candidate = best.clone();
        clear(&mut candidate.plan.faults);
        if candidate.plan.faults != best.plan.faults {
            attempt(candidate, &mut best, &mut report);
        }
    }
    shrink_list(&mut best, &mut report, &mut attempt, |p| &mut p.chaos);
    shrink_list(&mut best, &mut report, &mut attempt, |p| &mut p.strays);
    shrink_list(&mut best, &mut report, &mut attempt, |p| &mut p.restocks);
    for client in 0..best.plan.clients.len() {
        shrink_list(&mut best, &mut report, &mut attempt, move |p| {
            &mut p.clients[client]
        });
    }
    best.plan.clients.retain(|journeys| !journeys.is_empty());
    (best, report)
}

/// Delta debugging over one list of the plan: try removing halves, then quarters, down to
/// single items.
fn shrink_list<T: Clone>(
    best: &mut RunConfig,
    report: &mut Report,
    attempt: &mut impl FnMut(RunConfig, &mut RunConfig, &mut Report) -> bool,
    list: impl Fn(&mut Plan) -> &mut Vec<T>,
) {
    let mut chunk = list(&mut best.plan).len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < list(&mut best.plan).len() {
            let mut candidate = best.clone();
            let items = list(&mut candidate.plan);
            let end = start.saturating_add(chunk).min(items.len());
            items.drain(start..end);
            if !attempt(candidate, best, report) {
                start = start.saturating_add(chunk);
            }
        }
        if chunk == 1 {
            return;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// What kind of failure a report shows: the words before its details, so shrinking keeps the
/// same failure rather than trading it for another.
fn failure_kind(report: &Report) -> Option<String> {
    let failure = report.failure.as_deref()?;
    let end = failure.find([':', '{', '(']).unwrap_or(failure.len());
    Some(failure[..end].trim().to_owned())
}
