//! What a run or a sweep prints: a run's summary as text or JSON, the coverage a sweep tallies,
//! seed ranges and shards, and a sweep's JSON summary (which `merge` reads back).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::world::Report;

/// A range of seeds, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seeds {
    /// The first seed.
    pub start: u64,
    /// One past the last seed.
    pub end: u64,
}

impl Seeds {
    /// Parses `A..B` (A < B).
    ///
    /// # Errors
    /// A message for anything else.
    pub fn parse(text: &str) -> Result<Seeds, String> {
        let (a, b) = text.split_once("..").ok_or(format!(
            "takes A..B (from A up to but not including B), not {text}"
        ))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("not a seed: {v}"));
        let (start, end) = (number(a)?, number(b)?);
        if start >= end {
            return Err(format!("{text} is empty: A must be below B"));
        }
        Ok(Seeds { start, end })
    }
}

impl std::fmt::Display for Seeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// Shard `index` of `count` (1-based): the seeds whose offset from the range's start is
/// `index - 1` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which shard, from 1.
    pub index: u64,
    /// How many shards.
    pub count: u64,
}

impl Shard {
    /// Parses `K/N` (1 <= K <= N).
    ///
    /// # Errors
    /// A message for anything else.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text
            .split_once('/')
            .ok_or(format!("takes K/N (shard K of N, from 1), not {text}"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("not a number: {v}"));
        let (index, count) = (number(k)?, number(n)?);
        if index == 0 || index > count {
            return Err(format!("{text}: K must be from 1 to N"));
        }
        Ok(Shard { index, count })
    }

    /// The seeds of `seeds` in this shard, in order.
    pub fn seeds(self, seeds: Seeds) -> impl Iterator<Item = u64> {
        let skip = self.index.saturating_sub(1);
        (seeds.start..seeds.end)
            .filter(move |seed| seed.saturating_sub(seeds.start) % self.count == skip)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A run's summary as text.
pub fn run_text(report: &Report, wall_ms: f64) -> String {
    let s = &report.stats;
    let c = &report.fault_counts;
    let map = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "seed {} ops {}: {} requests; holds granted {} rejected {}; orders created {} existing \
         {} refused {}; request errors {}; restocks {}\n  keyed: retries {} replays {} in flight \
         {}; answers checked against the replay {}, reads {} ({} at a hold's deadline)\n  webhooks: {}\n  races: {}\n  faults fired: \
         deadlock {}+{} real, lock timeout {}+{} real, connection lost {}, commit answer lost {}; \
         commits {} rollbacks {}; crashes {}, clock steps +{} -{}\n  simulated {} ms in {:.1} ms \
         wall; trace {:016x} ({} events){}\n",
        report.seed,
        report.ops,
        s.requests,
        s.holds_granted,
        s.holds_rejected,
        s.orders_created,
        s.orders_existing,
        s.orders_refused,
        s.request_errors,
        s.restocks,
        s.keyed_retries,
        s.keyed_replays,
        s.keys_in_flight,
        s.answers_checked,
        s.reads_checked,
        s.reads_at_deadline,
        map(&s.webhooks),
        map(&s.races),
        c.deadlock,
        c.deadlock_real,
        c.lock_timeout,
        c.lock_timeout_real,
        c.connection_lost,
        c.commit_answer_lost,
        c.commits,
        c.rollbacks,
        s.crashes,
        s.clock_steps_forward,
        s.clock_steps_back,
        report.sim_ms,
        wall_ms,
        report.trace_hash,
        report.trace_events,
        match &report.failure {
            None => " ok".to_owned(),
            Some(f) => format!("\n  FAILED: {f}"),
        }
    )
}

/// A run's summary as JSON.
pub fn run_json(report: &Report, wall_ms: f64) -> serde_json::Value {
    let s = &report.stats;
    let c = &report.fault_counts;
    json!({
        "seed": report.seed,
        "ops": report.ops,
        "requests": s.requests,
        "holds": {"granted": s.holds_granted, "rejected": s.holds_rejected},
        "orders": {
            "created": s.orders_created, "existing": s.orders_existing,
            "refused": s.orders_refused,
        },
        "request_errors": s.request_errors,
        "restocks": s.restocks,
        "keyed": {
            "retries": s.keyed_retries, "replays": s.keyed_replays,
            "in_flight": s.keys_in_flight,
        },
        "answers_checked": s.answers_checked,
        "reads_checked": s.reads_checked,
        "reads_at_deadline": s.reads_at_deadline,
        "webhooks": s.webhooks,
        "races": s.races,
        "faults": {
            "deadlock": c.deadlock, "deadlock_real": c.deadlock_real,
            "lock_timeout": c.lock_timeout, "lock_timeout_real": c.lock_timeout_real,
            "connection_lost": c.connection_lost, "commit_answer_lost": c.commit_answer_lost,
            "commits": c.commits, "rollbacks": c.rollbacks,
            "crashes": s.crashes, "clock_steps_forward": s.clock_steps_forward,
            "clock_steps_back": s.clock_steps_back,
        },
        "coverage": coverage_of(report),
        "sim_ms": report.sim_ms,
        "wall_ms": wall_ms,
        "trace_hash": format!("{:016x}", report.trace_hash),
        "trace_events": report.trace_events,
        "failure": report.failure.as_ref().map(failure_json),
    })
}

/// A failure as JSON.
pub fn failure_json(failure: &flashsale_check::failure::Failure) -> serde_json::Value {
    serde_json::to_value(failure).unwrap_or(serde_json::Value::Null)
}

/// What must have happened at least once across a sweep, or the sweep proves nothing about it:
/// how often each happened in one run.
pub fn coverage_of(report: &Report) -> BTreeMap<String, u64> {
    let c = &report.fault_counts;
    let s = &report.stats;
    let race = |name: &str| s.races.get(name).copied().unwrap_or(0);
    let items: [(&str, u64); 28] = [
        ("fault: deadlock", c.deadlock),
        ("fault: lock wait timeout", c.lock_timeout),
        ("fault: connection lost", c.connection_lost),
        ("fault: commit answer lost", c.commit_answer_lost),
        ("batch: requests decided together", c.batched),
        ("batch: folding due expiry buckets", c.batched_folding),
        (
            "storm: grant while a mass expiry is due",
            c.grants_folding_storm,
        ),
        (
            "storm: cached read after a sweeper's write",
            s.reads_cached_after_sweep,
        ),
        (
            "batch: several products in one transaction",
            c.batched_products,
        ),
        (
            "batch: several kinds of request in one transaction",
            c.batched_kinds,
        ),
        (
            "batch: two committers of one instance in flight",
            c.committers_overlapped,
        ),
        ("chaos: crash", s.crashes),
        ("chaos: clock step back", s.clock_steps_back),
        ("chaos: clock step forward", s.clock_steps_forward),
        ("race: webhook before order", race("early")),
        (
            "race: duplicate webhooks at once",
            race("duplicate_concurrent"),
        ),
        (
            "race: duplicate webhooks in turn",
            race("duplicate_sequential"),
        ),
        ("race: conflicting verdicts", race("conflicting")),
        ("race: webhook after expiry", race("after_expiry")),
        ("race: webhook for unknown hold", race("unknown_hold")),
        (
            "answer: replayed webhook",
            s.webhooks.get("replayed").copied().unwrap_or(0),
        ),
        ("answer: hold rejected for stock", s.holds_rejected),
        ("answer: order refused", s.orders_refused),
        ("answer: keyed retry replayed", s.keyed_replays),
        ("answer: key in flight", s.keys_in_flight),
        ("admin: restock", s.restocks),
        ("read: checked against the replay", s.reads_checked),
        (
            "read: product at a hold's exact deadline",
            s.reads_at_deadline,
        ),
    ];
    items
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n))
        .collect()
}

/// A failing seed of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// Its failure, in words.
    pub failure: String,
    /// The line that replays it.
    pub replay: String,
    /// Its shrunk plan's file, if written.
    pub plan_file: Option<String>,
}

/// What a sweep keeps of one seed's run: its coverage and its trace's hash and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedTally {
    /// The seed.
    pub seed: u64,
    /// How often each coverage item happened in the run.
    pub coverage: BTreeMap<String, u64>,
    /// The hash of the run's trace.
    pub trace_hash: u64,
    /// The run's trace events.
    pub trace_events: u64,
}

impl SeedTally {
    /// What a sweep keeps of `report`.
    pub fn of(report: &Report) -> SeedTally {
        SeedTally {
            seed: report.seed,
            coverage: coverage_of(report),
            trace_hash: report.trace_hash,
            trace_events: report.trace_events,
        }
    }

    /// The seed's share of [`SweepSummary::trace_digest`]: its seed, trace hash and trace length
    /// mixed into 64 bits.
    pub fn digest(&self) -> u64 {
        mix(mix(mix(self.seed) ^ self.trace_hash) ^ self.trace_events)
    }
}

/// SplitMix64's finalizer: a bijection on 64 bits in which every input bit moves about half
/// the output bits, so that nearby seeds and hashes give unrelated digests.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A 64-bit digest as 16 hex digits in JSON, as a run's trace hash is written (a JSON number
/// that large loses digits in many readers).
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value:016x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// The coverage of one item across a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    /// How often it happened in all.
    pub times: u64,
    /// In how many seeds it happened at least once.
    pub seeds: u64,
}

/// A sweep's (or a shard's, or a merge's) summary: the JSON document `sweep --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    /// `flashsale-sim sweep 2` ([`SWEEP_FORMAT`]): version 2 added the trace digest.
    pub format: String,
    /// The whole range the sweep (or its shards) covers.
    pub seeds: Seeds,
    /// The shards this summary holds, by index (all of `1..=count` after a merge).
    pub shards: Vec<u64>,
    /// How many shards the range was split into.
    pub shard_count: u64,
    /// Journeys per plan.
    pub ops: usize,
    /// Clients per run.
    pub clients: usize,
    /// Server instances per run.
    pub servers: usize,
    /// The planted bug, if any.
    pub bug: Option<String>,
    /// Seeds run.
    pub seeds_run: u64,
    /// Whether the sweep stopped at its first failure before running every seed.
    pub stopped_early: bool,
    /// The failing seeds.
    pub failures: Vec<SeedFailure>,
    /// Each coverage item.
    pub coverage: BTreeMap<String, Covered>,
    /// A digest of every seed run with its trace's hash and length: the wrapping sum of each
    /// seed's [`SeedTally::digest`]. A sum does not depend on the order the seeds are added in,
    /// so a sweep on any number of threads and its shards merged give the same digest, and two
    /// sweeps of one range that ran alike give the same digest.
    #[serde(with = "hex_u64")]
    pub trace_digest: u64,
    /// Wall time, in seconds (summed over shards after a merge).
    pub wall_s: f64,
    /// Whether to print it as JSON (not part of the document).
    #[serde(skip)]
    pub json: bool,
}

/// The format word of [`SweepSummary`].
pub const SWEEP_FORMAT: &str = "flashsale-sim sweep 2";

impl SweepSummary {
    /// Coverage items that never happened.
    pub fn uncovered(&self) -> Vec<String> {
        self.coverage
            .iter()
            .filter(|(_, c)| c.times == 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Seeds per second of wall time.
    pub fn seeds_per_s(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.seeds_run as f64 / self.wall_s
        } else {
            0.0
        }
    }

    /// Whether the summary holds every shard of its range.
    pub fn complete(&self) -> bool {
        self.shards.len() as u64 == self.shard_count
    }

    /// Adds one seed's run: its coverage and its share of the trace digest.
    pub fn tally(&mut self, seed: &SeedTally) {
        for (name, &n) in &seed.coverage {
            let covered = self.coverage.entry(name.clone()).or_default();
            covered.times = covered.times.saturating_add(n);
            if n > 0 {
                covered.seeds = covered.seeds.saturating_add(1);
            }
        }
        self.seeds_run = self.seeds_run.saturating_add(1);
        self.trace_digest = self.trace_digest.wrapping_add(seed.digest());
    }

    /// The summary as text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "sweep {} (shards {} of {}): {} seeds, {} failed in {:.1}s ({:.0} seeds/s)\n",
            self.seeds,
            self.shards
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            self.shard_count,
            self.seeds_run,
            self.failures.len(),
            self.wall_s,
            self.seeds_per_s()
        );
        out.push_str(&format!(
            "trace digest {:016x} (every seed run with its trace's hash)\n",
            self.trace_digest
        ));
        out.push_str("coverage (times, seeds):\n");
        for (name, c) in &self.coverage {
            out.push_str(&format!("  {name:<40} {:>8} {:>6}\n", c.times, c.seeds));
        }
        if !self.failures.is_empty() {
            let seeds: Vec<String> = self.failures.iter().map(|f| f.seed.to_string()).collect();
            out.push_str(&format!("failing seeds: {}\n", seeds.join(", ")));
        }
        out
    }
}
