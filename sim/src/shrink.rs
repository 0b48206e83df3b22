//! Shrinking a failing run: re-run the same seed with less and keep every change after which
//! the run still fails the same way (the same [`Failure::kind`](flashsale_check::failure::Failure)).
//! In order: fault classes off; chaos events, stray webhooks, restocks, storms and each client's
//! journeys removed one chunk at a time (delta debugging: halves, then quarters, down to single
//! items); fewer servers; shorter hold TTL and payment window; each fault rate and the latency
//! halved; hold batches of one; unused products dropped; then the lists once more. What is left
//! is a small plan that still reproduces the failure.

use crate::plan::{Chaos, FaultProfile, Plan};
use crate::world::{self, Report, RunConfig};

/// Runs at most this many candidate plans.
pub const RUNS_MAX: usize = 300;

/// The shortest hold TTL and payment window the service accepts.
const DURATION_MS_MIN: u64 = 1_000;

/// A shrinking in progress: the smallest failing configuration so far, its report, and the
/// budget of runs left.
struct Shrinker {
    best: RunConfig,
    report: Report,
    kind: Option<String>,
    runs: usize,
}

impl Shrinker {
    /// Runs `candidate`; keeps it if it fails the same way. Returns whether it did.
    fn attempt(&mut self, candidate: RunConfig) -> bool {
        if self.runs >= RUNS_MAX || candidate.plan == self.best.plan {
            return false;
        }
        self.runs = self.runs.saturating_add(1);
        let tried = world::run(&candidate);
        let kind = tried.failure.as_ref().map(|f| f.kind.clone());
        let still_fails = kind.is_some() && kind == self.kind;
        if still_fails {
            self.best = candidate;
            self.report = tried;
        }
        still_fails
    }

    /// Tries `change` on the best plan so far.
    fn try_change(&mut self, change: impl FnOnce(&mut Plan)) -> bool {
        let mut candidate = self.best.clone();
        change(&mut candidate.plan);
        self.attempt(candidate)
    }

    /// Tries `change` again and again while the run keeps failing (at most `times`).
    fn repeat(&mut self, times: usize, change: impl Fn(&mut Plan)) {
        for _ in 0..times {
            if !self.try_change(&change) {
                return;
            }
        }
    }
}

/// The smallest failing configuration found from `config`, with its report. `config` must
/// fail.
pub fn shrink(config: &RunConfig, first: &Report) -> (RunConfig, Report) {
    let mut s = Shrinker {
        best: RunConfig {
            trace: false,
            ..config.clone()
        },
        report: first.clone(),
        kind: first.failure.as_ref().map(|f| f.kind.clone()),
        runs: 0,
    };
    let clear: [fn(&mut FaultProfile); 4] = [
        |f| f.deadlock = 0.0,
        |f| f.lock_timeout = 0.0,
        |f| f.connection_lost = 0.0,
        |f| f.commit_answer_lost = 0.0,
    ];
    for clear in clear {
        s.try_change(|p| clear(&mut p.faults));
    }
    shrink_lists(&mut s);
    shrink_servers(&mut s);
    s.repeat(6, |p| {
        p.hold_ttl_ms = (p.hold_ttl_ms / 2).max(DURATION_MS_MIN)
    });
    s.repeat(6, |p| {
        p.payment_window_ms = (p.payment_window_ms / 2).max(DURATION_MS_MIN)
    });
    let halve: [fn(&mut FaultProfile); 5] = [
        |f| f.deadlock = round(f.deadlock / 2.0),
        |f| f.lock_timeout = round(f.lock_timeout / 2.0),
        |f| f.connection_lost = round(f.connection_lost / 2.0),
        |f| f.commit_answer_lost = round(f.commit_answer_lost / 2.0),
        |f| f.latency_us_max = (f.latency_us_max / 2).max(1),
    ];
    for halve in halve {
        s.repeat(4, |p| halve(&mut p.faults));
    }
    s.try_change(|p| p.batch_max = 1);
    s.try_change(|p| p.committers = 1);
    s.try_change(drop_unused_products);
    shrink_lists(&mut s);
    // Clients left without journeys still change the schedule: removing them is a change to
    // try like any other.
    s.try_change(|p| p.clients.retain(|journeys| !journeys.is_empty()));
    (s.best, s.report)
}

/// A rate rounded to a thousandth, as plans draw them, so a plan file stays readable.
fn round(rate: f64) -> f64 {
    (rate * 1_000.0).round() / 1_000.0
}

fn shrink_lists(s: &mut Shrinker) {
    shrink_list(s, |p| &mut p.chaos);
    shrink_list(s, |p| &mut p.strays);
    shrink_list(s, |p| &mut p.restocks);
    shrink_list(s, |p| &mut p.storms);
    for client in 0..s.best.plan.clients.len() {
        shrink_list(s, move |p| &mut p.clients[client]);
    }
}

/// Fewer servers: one, else one fewer at a time; chaos on a removed instance goes with it.
fn shrink_servers(s: &mut Shrinker) {
    let fewer = |servers: usize| {
        move |p: &mut Plan| {
            p.servers = servers;
            p.chaos.retain(|c| {
                let (Chaos::ClockStep { instance, .. } | Chaos::Crash { instance }) = c.chaos;
                instance < servers
            });
        }
    };
    if s.best.plan.servers > 1 && !s.try_change(fewer(1)) {
        while s.best.plan.servers > 2 && s.try_change(fewer(s.best.plan.servers - 1)) {}
    }
}

/// Drops trailing products no journey, restock or storm names (products keep their numbers).
fn drop_unused_products(p: &mut Plan) {
    let used = p
        .clients
        .iter()
        .flatten()
        .map(|j| j.product)
        .chain(p.restocks.iter().map(|r| r.product))
        .chain(p.storms.iter().map(|storm| storm.product))
        .max()
        .unwrap_or(1);
    p.stocks.truncate(used.max(1));
}

/// Delta debugging over one list of the plan: try removing halves, then quarters, down to
/// single items.
fn shrink_list<T: Clone>(s: &mut Shrinker, list: impl Fn(&mut Plan) -> &mut Vec<T>) {
    let mut chunk = list(&mut s.best.plan).len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < list(&mut s.best.plan).len() {
            if s.runs >= RUNS_MAX {
                return;
            }
            let removed = s.try_change(|plan| {
                let items = list(plan);
                let end = start.saturating_add(chunk).min(items.len());
                items.drain(start..end);
            });
            if !removed {
                start = start.saturating_add(chunk);
            }
        }
        if chunk == 1 {
            return;
        }
        chunk = chunk.div_ceil(2);
    }
}
