//! `flashsale-load`: the HTTP load generator's entry point. It parses the command line, builds
//! the runtime (one thread by default, since the generator shares the cores with the server it
//! measures) and hands over to `flashsale_benches::load`; see that module for how runs work and
//! `benches/load.sh` for the suite behind `docs/PERFORMANCE.md`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use flashsale_benches::load::cli::{Cli, Command, RunArgs, Scenario};
use flashsale_benches::load::{report, run, setup, storm};
use serde::Serialize;

fn main() -> ExitCode {
    // One line on stderr and a failing status: a script reads the cause, not a backtrace.
    match run_command(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flashsale-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) if args.scenario == Scenario::ExpiryStorm => {
            let summary = runtime(args.threads)?.block_on(storm::storm(&args))?;
            print_run(&args, &summary, &summary.human())
        }
        Command::Run(args) => {
            let summary = runtime(args.threads)?.block_on(run::run(&args))?;
            print_run(&args, &summary, &summary.human())
        }
        Command::Setup(args) => {
            let ids = runtime(1)?.block_on(setup::setup(&args))?;
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{}", serde_json::json!({ "ids": ids }))?;
            } else {
                for id in ids {
                    writeln!(out, "{id}")?;
                }
            }
            Ok(())
        }
        Command::Report(args) => {
            let table = report::report(&args)?;
            print!("{table}");
            Ok(())
        }
    }
}

fn runtime(threads: u32) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::try_from(threads).unwrap_or(1));
        builder
    };
    builder.enable_all().build().context("starting the runtime")
}

/// Writes `summary` to `--output`, then prints it as JSON with `--json` or as `human`.
fn print_run(args: &RunArgs, summary: &impl Serialize, human: &str) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        let mut json = serde_json::to_string(summary)?;
        json.push('\n');
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, summary)?;
        writeln!(out)?;
    } else {
        write!(out, "{human}")?;
    }
    Ok(())
}
