//! The `flashsale-sim` command line (clap): `run`, `replay`, `sweep`, `check-determinism` and
//! `merge`. Every command documents its defaults in `--help`; the exit codes are listed in
//! [`EXIT_CODES`] and in docs/SIMULATION.md. What each seed's plan is drawn with is
//! [`Workload`] (shared with the sweeps).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::exit::{EXIT_CODES, EXIT_USAGE};
use crate::jobs::Jobs;
use crate::planfile::PlanFile;
use crate::summary::{self, Seeds, Shard};
use crate::sweep::{self, FailureOptions, ProgressMode};
use crate::trace::Event;
use crate::workload::Workload;
use crate::world::{self, Report, RunConfig};

/// Where failing plans are written by default.
pub const PLAN_DIR_DEFAULT: &str = "target/sim/failures";

#[derive(Debug, Parser)]
#[command(
    name = "flashsale-sim",
    version,
    about = "Seeded deterministic simulations of the flashsale service layer (madsim).",
    long_about = "Seeded deterministic simulations of the flashsale service layer (madsim): \
                  several server instances over a simulated storage with row locks, faults, \
                  clock steps and crashes, racing clients and a misbehaving payment provider. \
                  Everything in a run follows from its seed (or its plan file). \
                  See docs/SIMULATION.md.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one seed (or a plan file) and prints what happened; a failure is shrunk, explained
    /// and its plan written to a file.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Runs one seed or plan file like `run`, and prints its trace (filtered with
    /// --trace-request and --trace-product).
    #[command(after_help = EXIT_CODES)]
    Replay(RunArgs),
    /// Runs a range of seeds (or one shard of it) and checks coverage across them.
    #[command(after_help = EXIT_CODES)]
    Sweep(SweepArgs),
    /// Runs each seed twice and compares the trace hashes.
    #[command(after_help = EXIT_CODES)]
    CheckDeterminism(DeterminismArgs),
    /// Adds up the JSON summaries of a sweep's shards (`sweep --shard K/N --json > FILE`) and
    /// judges coverage over the whole range.
    #[command(after_help = EXIT_CODES)]
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// The shard summaries, one per shard.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Prints the merged summary as one JSON document.
    #[arg(long)]
    json: bool,
    /// Writes a self-contained HTML report of the merged sweep to this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

/// Where failures go.
#[derive(Debug, Args)]
struct FailureArgs {
    /// Directory the shrunk plan of each failure is written to (as seed-N[-BUG].json).
    #[arg(long, default_value = PLAN_DIR_DEFAULT)]
    plan_dir: PathBuf,
}

impl FailureArgs {
    fn options(&self) -> FailureOptions {
        FailureOptions {
            plan_dir: self.plan_dir.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The seed: madsim's scheduler, latencies and faults, and the plan drawn from it.
    #[arg(long, required_unless_present = "plan")]
    seed: Option<u64>,
    /// Runs a plan file (a failure's shrunk plan, or a regression) instead of drawing one:
    /// its seed, bug and workload come from the file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seed", "ops", "clients", "servers", "bug"])]
    plan: Option<PathBuf>,
    /// With --plan: runs it without its planted bug (a regression must then pass).
    #[arg(long, requires = "plan")]
    without_bug: bool,
    #[command(flatten)]
    workload: Workload,
    /// Prints one JSON document (the summary and any failure) instead of text.
    #[arg(long)]
    json: bool,
    /// Prints the trace (always on for `replay`).
    #[arg(long)]
    trace: bool,
    /// Prints only the trace lines of request N (the `rN` of the trace and of failures).
    #[arg(long, value_name = "N")]
    trace_request: Option<u64>,
    /// Prints only the trace lines about product P (numbered from 1, as the API does).
    #[arg(long, value_name = "P")]
    trace_product: Option<u64>,
    /// Does not shrink a failure (nor write its plan).
    #[arg(long)]
    no_shrink: bool,
    #[command(flatten)]
    failures: FailureArgs,
    /// Writes a self-contained HTML report (plan, faults, coverage, and for a failure a
    /// timeline) to this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// The seeds, A..B: from A up to but not including B.
    #[arg(long, value_parser = Seeds::parse)]
    seeds: Seeds,
    /// Runs only shard K of N (1 <= K <= N): the seeds whose offset from A is K-1 modulo N.
    #[arg(long, value_parser = Shard::parse, default_value = "1/1")]
    shard: Shard,
    #[command(flatten)]
    workload: Workload,
    /// Goes on after a failing seed instead of stopping at the first.
    #[arg(long)]
    keep_going: bool,
    /// Runs N seeds at once, each on its own thread (1 to 256; the default is the machine's
    /// cores). Each seed runs alone in its own simulation and the seeds are added up in order,
    /// so every seed's trace, the summary and the first failure are the same whatever N.
    #[arg(long, value_name = "N", value_parser = Jobs::parse, default_value_t = Jobs::available())]
    jobs: Jobs,
    /// Prints one JSON document (the sweep's summary, which `merge` reads) instead of text.
    #[arg(long)]
    json: bool,
    /// Progress on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    #[command(flatten)]
    failures: FailureArgs,
    /// Writes a self-contained HTML report (seeds per second, coverage per item, failures) to
    /// this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DeterminismArgs {
    /// The seeds, A..B: from A up to but not including B.
    #[arg(long, value_parser = Seeds::parse)]
    seeds: Seeds,
    #[command(flatten)]
    workload: Workload,
}

/// Runs the command line. See [`EXIT_CODES`].
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    world::quiet_panics();
    match cli.command {
        Command::Run(args) => run_one(&args, args.trace),
        Command::Replay(args) => run_one(&args, true),
        Command::Sweep(args) => sweep::sweep(&sweep::SweepOptions {
            seeds: args.seeds,
            shard: args.shard,
            workload: args.workload,
            keep_going: args.keep_going,
            json: args.json,
            progress: args.progress,
            failures: args.failures.options(),
            report: args.report,
            jobs: args.jobs,
        }),
        Command::CheckDeterminism(args) => check_determinism(&args),
        Command::Merge(args) => sweep::merge(&args.files, args.json, args.report.as_deref()),
    }
}

/// The run `args` ask for: a plan file's, or a seed's; and the file, if any.
fn run_config(args: &RunArgs) -> Result<(RunConfig, Option<PlanFile>), String> {
    match &args.plan {
        Some(path) => {
            let (file, mut config) = PlanFile::read(path)?;
            if args.without_bug {
                config.bug = None;
            }
            Ok((config, Some(file)))
        }
        None => Ok((args.workload.config(args.seed.unwrap_or_default()), None)),
    }
}

/// Whether the trace shows `event` under the filters.
fn shown(args: &RunArgs, event: &Event) -> bool {
    args.trace_request.is_none_or(|r| event.is_about_request(r))
        && args.trace_product.is_none_or(|p| event.is_about_product(p))
}

fn run_one(args: &RunArgs, trace: bool) -> ExitCode {
    let (mut config, file) = match run_config(args) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let filtered = args.trace_request.is_some() || args.trace_product.is_some();
    config.trace = trace || filtered || args.report.is_some();
    let wall = Instant::now();
    let mut report = world::run(&config);
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    if report.failure.is_some() && !config.trace {
        // Once more with the trace kept, for the words of its last lines (the run is the same).
        config.trace = true;
        report = world::run(&config);
    }
    if (trace || filtered) && !args.json {
        for event in report.trace.iter().filter(|e| shown(args, e)) {
            println!("{event}");
        }
    }
    if !args.json {
        print!("{}", summary::run_text(&report, wall_ms));
    }
    let expected = file.as_ref().map(|f| expectation(f, &config, &report));
    if let (Some(line), false) = (&expected, args.json) {
        println!("{line}");
    }
    let explained = match (&report.failure, args.no_shrink || file.is_some()) {
        (Some(failure), false) => {
            eprintln!("\nFAILED seed {}: {failure}", report.seed);
            let explained =
                sweep::explain(&args.workload, &config, &report, &args.failures.options());
            eprint!("{}", explained.text);
            Some(explained)
        }
        (Some(failure), true) => {
            eprintln!("\nFAILED seed {}: {failure}", report.seed);
            for line in &failure.trace_tail {
                eprintln!("  {line}");
            }
            None
        }
        (None, _) => None,
    };
    if args.json {
        let mut document = summary::run_json(&report, wall_ms);
        if let Some(explained) = &explained {
            document["shrunk"] = explained.json.clone();
        }
        if let Some(line) = &expected {
            document["expectation"] = serde_json::json!(line);
        }
        println!("{document:#}");
    }
    if let Some(path) = &args.report {
        let shrunk = explained.as_ref().map(|e| &e.shrunk);
        sweep::write_report(path, &crate::report::run_page(&config, &report, shrunk));
    }
    if report.failure.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What a plan file's run showed against what the file expects.
fn expectation(file: &PlanFile, config: &RunConfig, report: &Report) -> String {
    let kind = report.failure.as_ref().map(|f| f.kind.as_str());
    let bug = config.bug.map_or("no planted bug".to_owned(), |b| {
        format!("--bug {}", b.name())
    });
    match (&file.expect, kind) {
        (Some(want), Some(got)) if want.kind == got => {
            format!("plan: failed as the file expects ({got}), with {bug}")
        }
        (Some(want), got) => format!(
            "plan: the file expects {:?}, the run {} (with {bug})",
            want.kind,
            got.map_or("passed".to_owned(), |g| format!("failed with {g:?}"))
        ),
        (None, None) => format!("plan: passed as the file expects, with {bug}"),
        (None, Some(got)) => format!("plan: the file expects a pass, the run failed with {got:?}"),
    }
}

fn check_determinism(args: &DeterminismArgs) -> ExitCode {
    let Seeds { start, end } = args.seeds;
    for seed in start..end {
        let config = args.workload.config(seed);
        let a = world::run(&config);
        let b = world::run(&config);
        if (a.trace_hash, a.trace_events) != (b.trace_hash, b.trace_events) {
            println!(
                "NOT deterministic: seed {seed} gave trace {:016x} ({} events) then {:016x} \
                 ({} events)",
                a.trace_hash, a.trace_events, b.trace_hash, b.trace_events
            );
            return ExitCode::FAILURE;
        }
    }
    println!("deterministic: seeds {start}..{end} each gave the same trace hash twice");
    ExitCode::SUCCESS
}
