//! Sweeps: a range of seeds (or one shard of it) run on one thread or several (`jobs`), added up
//! in seed order with progress on stderr, each failure shrunk and written as a plan file; the
//! sweep's summary; and `merge`, which adds shard summaries up.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::exit::EXIT_USAGE;
use crate::jobs::{self, Jobs};
use crate::planfile::PlanFile;
use crate::shrink;
use crate::summary::{SWEEP_FORMAT, SeedFailure, SeedTally, Seeds, Shard, SweepSummary};
use crate::workload::{self, Workload};
use crate::world::{self, Report, RunConfig};

/// How a sweep shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// A bar with rate and ETA (indicatif).
    Bar,
    /// A plain line now and then (every tenth of the seeds, at most every 5 s): for logs.
    Lines,
    /// Nothing.
    None,
}

/// What to do with a failure.
#[derive(Clone, Debug)]
pub struct FailureOptions {
    /// Where failing plans are written.
    pub plan_dir: PathBuf,
}

/// A sweep's options.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The whole range.
    pub seeds: Seeds,
    /// This sweep's shard of it.
    pub shard: Shard,
    /// What each seed's plan is drawn with.
    pub workload: Workload,
    /// Go on after a failure.
    pub keep_going: bool,
    /// Print the summary as JSON.
    pub json: bool,
    /// Progress on stderr.
    pub progress: ProgressMode,
    /// What to do with failures.
    pub failures: FailureOptions,
    /// Write an HTML report here.
    pub report: Option<PathBuf>,
    /// How many seeds run at once, each on its own thread.
    pub jobs: Jobs,
}

/// Progress on stderr: a bar on a terminal, else plain periodic lines.
struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    total: u64,
    started: Instant,
    last_line: Instant,
    label: String,
}

/// The longest a plain-lines sweep stays silent.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(mode: ProgressMode, total: u64, label: String) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} seeds, {per_sec}, ETA {eta}, {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.clone());
            bar.set_message("0 failed");
            bar
        });
        Progress {
            bar,
            lines: mode == ProgressMode::Lines,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
            label,
        }
    }

    /// Prints `text` on stderr without breaking the bar.
    fn say(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn update(&mut self, done: u64, failed: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{failed} failed"));
            return;
        }
        if !self.lines {
            return;
        }
        let tenth = (self.total / 10).max(1);
        let due = done.is_multiple_of(tenth)
            || self.last_line.elapsed() >= LINE_EVERY
            || done == self.total;
        if due {
            self.last_line = Instant::now();
            eprintln!("{}", self.line(done, failed));
        }
    }

    /// One plain progress line.
    fn line(&self, done: u64, failed: usize) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let left = self.total.saturating_sub(done) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        format!(
            "{}: {done}/{} seeds, {failed} failed, {elapsed:.1}s, {rate:.0} seeds/s, ETA {eta:.0}s",
            self.label, self.total
        )
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Runs a sweep. Exit: 0 when every seed passed and (for a whole range) every coverage item
/// happened; 1 otherwise.
pub fn sweep(options: &SweepOptions) -> ExitCode {
    let summary = run(options);
    if let Some(path) = &options.report {
        write_report(path, &crate::report::sweep_page(&summary));
    }
    finish(&summary)
}

/// One seed's run as a worker hands it back.
struct Ran {
    tally: SeedTally,
    failed: Option<Box<Failed>>,
}

/// A failing seed's run, and its failure shrunk and written down if the worker did that.
struct Failed {
    config: RunConfig,
    report: Report,
    explained: Option<Explained>,
}

/// Runs the sweep's seeds on `options.jobs` threads and adds them up in seed order, saying on
/// stderr how far it is and each failure, shrunk and written down, as it comes in that order.
/// Without `keep_going` it stops at the first failing seed in order (the seeds after it are not
/// run, or their runs dropped), and only that seed is shrunk; with `keep_going` every failing
/// seed is, by the worker that ran it. The summary is the same whatever the number of jobs,
/// but for its wall time.
pub fn run(options: &SweepOptions) -> SweepSummary {
    let started = Instant::now();
    let seeds: Vec<u64> = options.shard.seeds(options.seeds).collect();
    let range = if options.shard.count > 1 {
        format!("sweep {} shard {}", options.seeds, options.shard)
    } else {
        format!("sweep {}", options.seeds)
    };
    let jobs = match options.jobs.get() {
        1 => "1 job".to_owned(),
        n => format!("{n} jobs"),
    };
    let label = format!("{range} ({jobs})");
    let total = seeds.len() as u64;
    let mut progress = Progress::new(options.progress, total, label);
    let mut summary = empty_summary(options);
    let mut done = 0u64;
    let fold = |seed: u64, ran: Ran| {
        summary.tally(&ran.tally);
        done += 1;
        if let Some(failed) = ran.failed {
            summary.stopped_early = !options.keep_going && done < total;
            summary
                .failures
                .push(failed_seed(options, &progress, seed, *failed));
        }
        progress.update(done, summary.failures.len());
    };
    let worker = options.clone();
    let keep_going = options.keep_going;
    jobs::in_seed_order(
        seeds,
        options.jobs,
        move |seed| run_seed(&worker, seed),
        move |ran| ran.failed.is_some() && !keep_going,
        fold,
    );
    progress.finish();
    summary.wall_s = started.elapsed().as_secs_f64();
    summary
}

/// Runs one seed on a worker, and with `keep_going` shrinks and writes down its failure there.
fn run_seed(options: &SweepOptions, seed: u64) -> Ran {
    let config = options.workload.config(seed);
    let report = world::run(&config);
    let tally = SeedTally::of(&report);
    let failed = report.failure.is_some().then(|| {
        let explained = options
            .keep_going
            .then(|| explain(&options.workload, &config, &report, &options.failures));
        Box::new(Failed {
            config,
            report,
            explained,
        })
    });
    Ran { tally, failed }
}

/// Says a failing seed and its failure shrunk (shrinking it now if its worker did not), and
/// what the summary keeps of it.
fn failed_seed(
    options: &SweepOptions,
    progress: &Progress,
    seed: u64,
    failed: Failed,
) -> SeedFailure {
    let failure = failed
        .report
        .failure
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    progress.say(&format!("\nFAILED seed {seed}: {failure}"));
    let explained = failed.explained.unwrap_or_else(|| {
        explain(
            &options.workload,
            &failed.config,
            &failed.report,
            &options.failures,
        )
    });
    progress.say(&explained.text);
    SeedFailure {
        seed,
        failure,
        replay: workload::replay_command(&options.workload, seed),
        plan_file: explained.plan_file,
    }
}

fn empty_summary(options: &SweepOptions) -> SweepSummary {
    SweepSummary {
        format: SWEEP_FORMAT.to_owned(),
        seeds: options.seeds,
        shards: vec![options.shard.index],
        shard_count: options.shard.count,
        ops: options.workload.ops,
        clients: options.workload.clients,
        servers: options.workload.servers,
        bug: options.workload.bug.map(|b| b.name().to_owned()),
        seeds_run: 0,
        stopped_early: false,
        failures: Vec::new(),
        coverage: Default::default(),
        trace_digest: 0,
        wall_s: 0.0,
        json: options.json,
    }
}

/// Prints a summary and decides the exit code.
fn finish(summary: &SweepSummary) -> ExitCode {
    let uncovered = summary.uncovered();
    let judged = summary.complete() && !summary.stopped_early && summary.failures.is_empty();
    if summary.json {
        let mut document = serde_json::to_value(summary).unwrap_or_default();
        document["uncovered"] = json!(uncovered);
        document["seeds_per_s"] = json!(summary.seeds_per_s());
        println!("{document:#}");
    } else {
        print!("{}", summary.text());
        if judged && !uncovered.is_empty() {
            println!(
                "coverage FAILED: never happened in this sweep: {}",
                uncovered.join(", ")
            );
        } else if !summary.complete() {
            println!("coverage is judged when the shards are merged (flashsale-sim merge FILE...)");
        }
    }
    if !summary.failures.is_empty() || (judged && !uncovered.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes an HTML page, saying where.
pub fn write_report(path: &Path, page: &str) {
    match std::fs::write(path, page) {
        Ok(()) => eprintln!("report: {}", path.display()),
        Err(e) => eprintln!("error: cannot write {}: {e}", path.display()),
    }
}

/// A failure shrunk and written down.
pub struct Explained {
    /// What to print.
    pub text: String,
    /// The shrunk plan's file, if it could be written.
    pub plan_file: Option<String>,
    /// The shrunk configuration and its report.
    pub shrunk: (RunConfig, Report),
    /// The same as JSON.
    pub json: serde_json::Value,
}

/// Where the plan of a failing seed goes.
pub fn plan_path(dir: &Path, config: &RunConfig) -> PathBuf {
    let bug = config
        .bug
        .map(|b| format!("-{}", b.name()))
        .unwrap_or_default();
    dir.join(format!("seed-{}{bug}.json", config.seed))
}

/// Shrinks a failing run, writes its plan file, and says how to replay it.
pub fn explain(
    workload: &Workload,
    config: &RunConfig,
    report: &Report,
    options: &FailureOptions,
) -> Explained {
    let (small, _) = shrink::shrink(config, report);
    // Once more with the trace kept, for its words (the run is the same).
    let small_report = world::run(&RunConfig {
        trace: true,
        ..small.clone()
    });
    let failure = small_report.failure.clone();
    let note = format!(
        "seed {} ({} ops) shrunk to {} ops",
        config.seed,
        config.plan.ops(),
        small.plan.ops()
    );
    let file = PlanFile::of(&small, failure.as_ref(), note);
    let path = plan_path(&options.plan_dir, &small);
    let written = file.write(&path);
    let mut text = format!(
        "replay the seed: {}\nshrunk: {} ops -> {} ops: {}\n",
        workload::replay_command(workload, config.seed),
        config.plan.ops(),
        small.plan.ops(),
        failure
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    match &written {
        Ok(()) => text.push_str(&format!(
            "plan written to {p}\nreplay the plan: {} replay --plan {p}\n",
            workload::binary(),
            p = path.display()
        )),
        Err(e) => text.push_str(&format!("the plan could not be written: {e}\n")),
    }
    if let Some(f) = &failure
        && !f.trace_tail.is_empty()
    {
        text.push_str("last trace lines before the failure:\n");
        for line in &f.trace_tail {
            text.push_str(&format!("  {line}\n"));
        }
        if let Some(request) = f.request {
            text.push_str(&format!("trace of request r{request}:\n"));
            let about = small_report
                .trace
                .iter()
                .filter(|e| e.is_about_request(request));
            for event in about {
                text.push_str(&format!("  {event}\n"));
            }
        }
    }
    text.push_str(&format!("smallest failing plan:\n{}", small.plan));
    let plan_file = written.ok().map(|()| path.display().to_string());
    let json = json!({
        "ops_before": config.plan.ops(),
        "ops_after": small.plan.ops(),
        "failure": failure,
        "plan_file": plan_file,
    });
    Explained {
        text,
        plan_file,
        shrunk: (small, small_report),
        json,
    }
}

/// Merges shard summaries. Exit: 0 when every shard is there, no seed failed and every
/// coverage item happened; 1 when a seed failed or an item never happened; 2 when the
/// summaries do not fit together.
pub fn merge(paths: &[PathBuf], json: bool, report: Option<&Path>) -> ExitCode {
    match merged(paths) {
        Ok(mut summary) => {
            summary.json = json;
            if let Some(path) = report {
                write_report(path, &crate::report::sweep_page(&summary));
            }
            finish(&summary)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The summaries at `paths` added up.
///
/// # Errors
/// A file that cannot be read, summaries of different sweeps, a shard twice, a shard missing.
pub fn merged(paths: &[PathBuf]) -> Result<SweepSummary, String> {
    let mut total: Option<SweepSummary> = None;
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let part: SweepSummary = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a sweep summary: {e}", path.display()))?;
        if part.format != SWEEP_FORMAT {
            return Err(format!("{}: format {:?}", path.display(), part.format));
        }
        total = Some(match total {
            None => part,
            Some(sum) => add(sum, part).map_err(|e| format!("{}: {e}", path.display()))?,
        });
    }
    let total = total.ok_or("no summaries to merge")?;
    if !total.complete() {
        let missing: Vec<String> = (1..=total.shard_count)
            .filter(|k| !total.shards.contains(k))
            .map(|k| format!("{k}/{}", total.shard_count))
            .collect();
        return Err(format!("shards missing: {}", missing.join(", ")));
    }
    Ok(total)
}

fn add(mut sum: SweepSummary, part: SweepSummary) -> Result<SweepSummary, String> {
    let same = (
        sum.seeds,
        sum.shard_count,
        sum.ops,
        sum.clients,
        sum.servers,
        &sum.bug,
    ) == (
        part.seeds,
        part.shard_count,
        part.ops,
        part.clients,
        part.servers,
        &part.bug,
    );
    if !same {
        return Err(format!(
            "another sweep: seeds {} in {} shards, ops {}, clients {}, servers {}, bug {:?}",
            part.seeds, part.shard_count, part.ops, part.clients, part.servers, part.bug
        ));
    }
    if let Some(k) = part.shards.iter().find(|k| sum.shards.contains(k)) {
        return Err(format!("shard {k}/{} is there twice", sum.shard_count));
    }
    sum.shards.extend(part.shards);
    sum.shards.sort_unstable();
    sum.seeds_run = sum.seeds_run.saturating_add(part.seeds_run);
    sum.stopped_early |= part.stopped_early;
    sum.failures.extend(part.failures);
    sum.failures.sort_by_key(|f| f.seed);
    sum.trace_digest = sum.trace_digest.wrapping_add(part.trace_digest);
    for (name, c) in part.coverage {
        let entry = sum.coverage.entry(name).or_default();
        entry.times = entry.times.saturating_add(c.times);
        entry.seeds = entry.seeds.saturating_add(c.seeds);
    }
    sum.wall_s += part.wall_s;
    Ok(sum)
}
