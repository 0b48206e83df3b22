//! Sweeps: a range of seeds (or one shard of it) with progress on stderr, each failure shrunk
//! and written as a plan file; the sweep's summary; and `merge`, which adds shard summaries up.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::exit::EXIT_USAGE;
use crate::planfile::PlanFile;
use crate::shrink;
use crate::summary::{SWEEP_FORMAT, SeedFailure, Seeds, Shard, SweepSummary};
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
    let started = Instant::now();
    let seeds: Vec<u64> = options.shard.seeds(options.seeds).collect();
    let label = if options.shard.count > 1 {
        format!("sweep {} shard {}", options.seeds, options.shard)
    } else {
        format!("sweep {}", options.seeds)
    };
    let mut progress = Progress::new(options.progress, seeds.len() as u64, label);
    let mut summary = empty_summary(options);
    for (done, &seed) in seeds.iter().enumerate() {
        let config = options.workload.config(seed);
        let report = world::run(&config);
        summary.tally(&report);
        if let Some(failure) = &report.failure {
            progress.say(&format!("\nFAILED seed {seed}: {failure}"));
            let explained = explain(&options.workload, &config, &report, &options.failures);
            progress.say(&explained.text);
            summary.failures.push(SeedFailure {
                seed,
                failure: failure.to_string(),
                replay: workload::replay_command(&options.workload, seed),
                plan_file: explained.plan_file.clone(),
            });
            if !options.keep_going {
                summary.stopped_early = done.saturating_add(1) < seeds.len();
                progress.update(done as u64 + 1, summary.failures.len());
                break;
            }
        }
        progress.update(done as u64 + 1, summary.failures.len());
    }
    progress.finish();
    summary.wall_s = started.elapsed().as_secs_f64();
    if let Some(path) = &options.report {
        write_report(path, &crate::report::sweep_page(&summary));
    }
    finish(&summary)
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
    for (name, c) in part.coverage {
        let entry = sum.coverage.entry(name).or_default();
        entry.times = entry.times.saturating_add(c.times);
        entry.seeds = entry.seeds.saturating_add(c.seeds);
    }
    sum.wall_s += part.wall_s;
    Ok(sum)
}
