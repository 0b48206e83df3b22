//! The `flashsale-sim` command line: `run`, `sweep`, `replay` and `check-determinism`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use crate::plan::Plan;
use crate::shrink;
use crate::store::Bug;
use crate::world::{self, Report, RunConfig};

const USAGE: &str = "\
usage:
  flashsale-sim run --seed N [--ops N] [--clients N] [--servers N] [--bug NAME] [--json]
  flashsale-sim replay --seed N [--ops N] [--clients N] [--servers N] [--bug NAME] [--trace]
  flashsale-sim sweep --seeds A..B [--ops N] [--clients N] [--servers N] [--bug NAME] [--keep-going]
  flashsale-sim check-determinism --seeds A..B [--ops N] [--clients N] [--servers N]
bugs (planted in the simulated storage): skip-product-lock, forget-release-expired,
  consume-released-hold, apply-webhook-twice, forget-request-key, count-expired-holds";

/// Defaults for a run.
pub const OPS_DEFAULT: usize = 200;
/// Concurrent clients by default.
pub const CLIENTS_DEFAULT: usize = 8;
/// Server instances by default.
pub const SERVERS_DEFAULT: usize = 3;

#[derive(Debug)]
struct Args {
    command: String,
    seeds: (u64, u64),
    ops: usize,
    clients: usize,
    servers: usize,
    bug: Option<Bug>,
    json: bool,
    trace: bool,
    keep_going: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = args.next().ok_or("missing command")?;
    let mut parsed = Args {
        command,
        seeds: (0, 0),
        ops: OPS_DEFAULT,
        clients: CLIENTS_DEFAULT,
        servers: SERVERS_DEFAULT,
        bug: None,
        json: false,
        trace: false,
        keep_going: false,
    };
    let mut seed_given = false;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--seed" => {
                let seed = number(value()?)?;
                parsed.seeds = (seed, seed.saturating_add(1));
                seed_given = true;
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v
                    .split_once("..")
                    .ok_or(format!("--seeds takes A..B, not {v}"))?;
                let (a, b) = (number(a.to_owned())?, number(b.to_owned())?);
                if a >= b {
                    return Err(format!("--seeds {v}: empty range"));
                }
                parsed.seeds = (a, b);
                seed_given = true;
            }
            "--ops" => {
                parsed.ops = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            "--clients" => {
                parsed.clients = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            "--servers" => {
                parsed.servers = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            "--bug" => {
                let v = value()?;
                parsed.bug = Some(Bug::parse(&v).ok_or(format!("unknown bug {v}"))?);
            }
            "--json" => parsed.json = true,
            "--trace" => parsed.trace = true,
            "--keep-going" => parsed.keep_going = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !seed_given {
        return Err("--seed or --seeds is required".into());
    }
    if parsed.clients == 0 || parsed.servers == 0 || parsed.ops == 0 {
        return Err("--ops, --clients and --servers must be at least 1".into());
    }
    Ok(parsed)
}

/// Runs the command line; returns failure when a run failed or the arguments were wrong.
pub fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    world::quiet_panics();
    match args.command.as_str() {
        "run" | "replay" => run_one(&args),
        "sweep" => sweep(&args),
        "check-determinism" => check_determinism(&args),
        other => {
            eprintln!("error: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn config(args: &Args, seed: u64) -> RunConfig {
    RunConfig {
        seed,
        plan: Plan::draw(seed, args.ops, args.clients, args.servers),
        bug: args.bug,
        trace: args.trace,
    }
}

/// The one line that replays a seed.
pub fn replay_command(
    args_ops: usize,
    clients: usize,
    servers: usize,
    seed: u64,
    bug: Option<Bug>,
) -> String {
    let bug = bug
        .map(|b| format!(" --bug {}", b.name()))
        .unwrap_or_default();
    format!(
        "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo run --release -p flashsale-sim -- \
         replay --seed {seed} --ops {args_ops} --clients {clients} --servers {servers}{bug} --trace"
    )
}

fn run_one(args: &Args) -> ExitCode {
    let config = config(args, args.seeds.0);
    let wall = Instant::now();
    let report = world::run(&config);
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    if args.trace {
        for event in &report.trace {
            println!("{event}");
        }
    }
    if args.json {
        println!("{}", summary_json(&report, wall_ms));
    } else {
        print!("{}", summary(&report, wall_ms));
    }
    match &report.failure {
        None => ExitCode::SUCCESS,
        Some(_) => {
            explain_failure(args, &config, &report);
            ExitCode::FAILURE
        }
    }
}

fn explain_failure(args: &Args, config: &RunConfig, report: &Report) {
    eprintln!(
        "\nFAILED seed {}: {}",
        report.seed,
        report.failure.as_deref().unwrap_or("")
    );
    eprintln!(
        "replay: {}",
        replay_command(args.ops, args.clients, args.servers, report.seed, args.bug)
    );
    eprintln!("shrinking (re-running the seed with less)...");
    let (small, small_report) = shrink::shrink(config, report);
    eprintln!(
        "smallest failing plan ({} ops): {}\n{}",
        small.plan.ops(),
        small_report.failure.as_deref().unwrap_or(""),
        small.plan
    );
}

fn summary(report: &Report, wall_ms: f64) -> String {
    let s = &report.stats;
    let c = &report.fault_counts;
    format!(
        "seed {} ops {}: {} requests; holds granted {} rejected {}; orders created {} existing {} refused {}; \
         request errors {}; restocks {}\n  keyed: retries {} replays {} in flight {}; answers checked against the replay {}\n  \
         webhooks {:?}\n  races {:?}\n  faults fired: deadlock {}+{} real, lock timeout {}+{} real, \
         connection lost {}, commit answer lost {}; commits {} rollbacks {}; crashes {}, clock steps +{} -{}\n  \
         simulated {} ms in {:.1} ms wall; trace {:016x} ({} events){}\n",
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
        s.webhooks,
        s.races,
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

fn summary_json(report: &Report, wall_ms: f64) -> serde_json::Value {
    let s = &report.stats;
    let c = &report.fault_counts;
    json!({
        "seed": report.seed,
        "ops": report.ops,
        "requests": s.requests,
        "holds": {"granted": s.holds_granted, "rejected": s.holds_rejected},
        "orders": {"created": s.orders_created, "existing": s.orders_existing, "refused": s.orders_refused},
        "request_errors": s.request_errors,
        "restocks": s.restocks,
        "keyed": {"retries": s.keyed_retries, "replays": s.keyed_replays, "in_flight": s.keys_in_flight},
        "answers_checked": s.answers_checked,
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
        "sim_ms": report.sim_ms,
        "wall_ms": wall_ms,
        "trace_hash": format!("{:016x}", report.trace_hash),
        "failure": report.failure,
    })
}

/// What must have happened at least once across a sweep, or the sweep proves nothing about it.
fn coverage(total: &BTreeMap<&'static str, u64>) -> Vec<&'static str> {
    total
        .iter()
        .filter(|&(_, &n)| n == 0)
        .map(|(&name, _)| name)
        .collect()
}

fn tally(total: &mut BTreeMap<&'static str, u64>, report: &Report) {
    let c = &report.fault_counts;
    let s = &report.stats;
    let race = |name: &str| s.races.get(name).copied().unwrap_or(0);
    let add = |total: &mut BTreeMap<&'static str, u64>, name: &'static str, n: u64| {
        *total.entry(name).or_default() += n;
    };
    add(total, "fault: deadlock", c.deadlock);
    add(total, "fault: lock wait timeout", c.lock_timeout);
    add(total, "fault: connection lost", c.connection_lost);
    add(total, "fault: commit answer lost", c.commit_answer_lost);
    add(total, "batch: hold requests decided together", c.batched);
    add(total, "chaos: crash", s.crashes);
    add(total, "chaos: clock step back", s.clock_steps_back);
    add(total, "chaos: clock step forward", s.clock_steps_forward);
    add(total, "race: webhook before order", race("early"));
    add(
        total,
        "race: duplicate webhooks at once",
        race("duplicate_concurrent"),
    );
    add(
        total,
        "race: duplicate webhooks in turn",
        race("duplicate_sequential"),
    );
    add(total, "race: conflicting verdicts", race("conflicting"));
    add(total, "race: webhook after expiry", race("after_expiry"));
    add(
        total,
        "race: webhook for unknown hold",
        race("unknown_hold"),
    );
    add(
        total,
        "answer: replayed webhook",
        s.webhooks.get("replayed").copied().unwrap_or(0),
    );
    add(total, "answer: hold rejected for stock", s.holds_rejected);
    add(total, "answer: order refused", s.orders_refused);
    add(total, "answer: keyed retry replayed", s.keyed_replays);
    add(total, "answer: key in flight", s.keys_in_flight);
    add(total, "admin: restock", s.restocks);
}

fn sweep(args: &Args) -> ExitCode {
    let (first, end) = args.seeds;
    let wall = Instant::now();
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let count = end.saturating_sub(first);
    for (done, seed) in (first..end).enumerate() {
        let config = config(args, seed);
        let report = world::run(&config);
        tally(&mut total, &report);
        if report.failure.is_some() {
            eprintln!();
            print!("{}", summary(&report, 0.0));
            explain_failure(args, &config, &report);
            failures.push(seed);
            if !args.keep_going {
                break;
            }
        }
        if done % 10 == 9 || seed + 1 == end {
            let elapsed = wall.elapsed().as_secs_f64();
            eprint!(
                "\r[{:>5}/{count}] {:>6.1}s  {} failed",
                done + 1,
                elapsed,
                failures.len()
            );
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
    let uncovered = coverage(&total);
    println!(
        "sweep {first}..{end}: {} failed in {:.1}s",
        failures.len(),
        wall.elapsed().as_secs_f64()
    );
    println!("coverage: {total:?}");
    if !failures.is_empty() {
        println!("failing seeds: {failures:?}");
        return ExitCode::FAILURE;
    }
    if !uncovered.is_empty() {
        println!("coverage FAILED: never happened in this sweep: {uncovered:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn check_determinism(args: &Args) -> ExitCode {
    let (first, end) = args.seeds;
    for seed in first..end {
        let config = config(args, seed);
        let a = world::run(&config);
        let b = world::run(&config);
        if (a.trace_hash, a.trace_events) != (b.trace_hash, b.trace_events) {
            println!(
                "NOT deterministic: seed {seed} gave trace {:016x} ({} events) then {:016x} ({} events)",
                a.trace_hash, a.trace_events, b.trace_hash, b.trace_events
            );
            return ExitCode::FAILURE;
        }
    }
    println!("deterministic: seeds {first}..{end} each gave the same trace hash twice");
    ExitCode::SUCCESS
}
