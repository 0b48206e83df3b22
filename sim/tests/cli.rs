//! The `flashsale-sim` binary as a user meets it: `--help` everywhere with defaults and every
//! planted bug, exit codes, one JSON document from `run --json` and `sweep --json`, a failure's
//! plan file replayed with `--plan`, trace filters, progress lines off a terminal, and shards
//! merged into the whole sweep's summary.
//!
//! Simulation builds only: `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test
//! --release -p flashsale-sim`.

#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flashsale_sim::store::Bug;
use serde_json::Value;

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashsale-sim"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}):\n{}", stdout(output)))
}

/// A fresh directory under the sim target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    dir
}

#[test]
fn help_works_on_every_command_with_defaults_and_exit_codes() {
    let top = sim(&["--help"]);
    assert_eq!(top.status.code(), Some(0), "{}", stderr(&top));
    for command in ["run", "replay", "sweep", "check-determinism", "merge"] {
        assert!(stdout(&top).contains(command), "{command} listed");
        let help = sim(&[command, "--help"]);
        assert_eq!(help.status.code(), Some(0), "{command} --help");
        let text = stdout(&help);
        assert!(text.contains("Exit codes:"), "{command}: {text}");
        if command != "merge" {
            assert!(
                text.contains("[default: 200]"),
                "{command} shows --ops' default"
            );
        }
    }
    let sweep = stdout(&sim(&["sweep", "--help"]));
    assert!(sweep.contains("[default: 1/1]") && sweep.contains("[default: auto]"));
    assert!(sweep.contains("--jobs <N>"), "{sweep}");
    for bug in Bug::ALL {
        let line = sweep
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("- {}:", bug.name())))
            .unwrap_or_else(|| panic!("--help lists {} with what it breaks", bug.name()));
        assert!(line.len() > 30, "a description: {line}");
    }
}

#[test]
fn usage_errors_exit_two() {
    for args in [
        &["run"][..],
        &["run", "--seed", "x"],
        &["sweep", "--seeds", "5..5"],
        &["sweep", "--seeds", "0..10", "--shard", "3/2"],
        &["sweep", "--seeds", "0..10", "--jobs", "0"],
        &["sweep", "--seeds", "0..10", "--jobs", "257"],
        &["run", "--seed", "1", "--bug", "no-such-bug"],
        &["nonsense"],
    ] {
        let output = sim(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let dir = scratch("bad-plan");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"format": "flashsale-sim plan 1"}"#).expect("written");
    let output = sim(&["replay", "--plan", bad.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("is not a plan file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn run_json_is_one_document_and_a_pass_exits_zero() {
    let output = sim(&["run", "--seed", "1", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let document = json(&output);
    assert_eq!(document["seed"], 1);
    assert_eq!(document["failure"], Value::Null);
    assert!(document["requests"].as_u64().is_some_and(|n| n > 100));
}

#[test]
fn a_failure_writes_a_plan_that_replays_to_the_same_failure() {
    let dir = scratch("failure");
    let output = sim(&[
        "run",
        "--seed",
        "0",
        "--bug",
        "forget-release-expired",
        "--json",
        "--plan-dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let document = json(&output);
    let failure = &document["failure"];
    assert_eq!(failure["kind"], "invariant: holds to retire counter");
    // In the API's words, with the request, instance and time it happened at.
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("product 1 counts"), "{message}");
    assert!(failure["request"].is_u64() && failure["instance"].is_u64());
    assert!(failure["at_ms"].is_u64());
    let file = document["shrunk"]["plan_file"]
        .as_str()
        .expect("the plan file is named");
    let text = std::fs::read_to_string(file).expect("the plan file exists");
    assert!(
        text.contains("\"bug\": \"forget-release-expired\""),
        "{text}"
    );
    assert!(document["shrunk"]["ops_after"].as_u64() < document["shrunk"]["ops_before"].as_u64());

    let replayed = sim(&["replay", "--plan", file]);
    assert_eq!(replayed.status.code(), Some(1));
    assert!(
        stdout(&replayed).contains("plan: failed as the file expects (invariant: holds to retire"),
        "{}",
        stdout(&replayed)
    );
    let fixed = sim(&["run", "--plan", file, "--without-bug"]);
    assert_eq!(fixed.status.code(), Some(0), "{}", stdout(&fixed));
}

#[test]
fn trace_filters_keep_only_their_request_or_product() {
    let trace_lines = |output: &Output| -> Vec<String> {
        stdout(output)
            .lines()
            .filter(|l| {
                l.trim_start()
                    .split(' ')
                    .next()
                    .is_some_and(|t| t.ends_with("ms"))
            })
            .map(str::to_owned)
            .collect()
    };
    let all = sim(&["replay", "--seed", "1"]);
    let request = sim(&["replay", "--seed", "1", "--trace-request", "40"]);
    let (all, request) = (trace_lines(&all), trace_lines(&request));
    assert!(all.len() > 500, "a whole trace: {}", all.len());
    assert!(
        request.len() >= 2,
        "sent and answered at least: {request:?}"
    );
    assert!(request.len() < 20);
    for line in &request {
        assert!(
            line.split(' ').any(|w| w.split(',').any(|r| r == "r40")),
            "{line}"
        );
    }
    let product = sim(&["replay", "--seed", "1", "--trace-product", "1"]);
    let product = trace_lines(&product);
    assert!(product.len() > 50 && product.len() < all.len());
    assert!(
        product.iter().all(|l| !l.contains("product_id: 2")),
        "only product 1"
    );
}

#[test]
fn progress_off_a_terminal_is_plain_lines_with_rate_and_eta() {
    let output = sim(&["sweep", "--seeds", "0..20", "--keep-going"]);
    let err = stderr(&output);
    assert!(!err.contains('\r'), "no carriage returns in a log: {err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("seeds/s")).collect();
    assert!(lines.len() >= 5, "periodic lines: {err}");
    assert!(lines.iter().all(|l| l.contains("ETA")), "{err}");
    assert!(
        lines.last().is_some_and(|l| l.contains("20/20 seeds")),
        "{err}"
    );
}

#[test]
fn shards_merge_into_the_whole_sweep() {
    let dir = scratch("shards");
    let mut files = Vec::new();
    for shard in ["1/3", "2/3", "3/3"] {
        let output = sim(&[
            "sweep", "--seeds", "0..30", "--shard", shard, "--json", "--jobs", "1",
        ]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "a shard is not judged on coverage"
        );
        let file = dir.join(format!("shard-{}.json", &shard[..1]));
        std::fs::write(&file, &output.stdout).expect("written");
        files.push(file.to_str().expect("utf-8").to_owned());
    }
    let whole = json(&sim(&[
        "sweep", "--seeds", "0..30", "--json", "--jobs", "2",
    ]));
    let mut args = vec!["merge", "--json"];
    args.extend(files.iter().map(String::as_str));
    let merged = sim(&args);
    let document = json(&merged);
    assert_eq!(document["seeds_run"], 30);
    assert_eq!(document["shards"], serde_json::json!([1, 2, 3]));
    assert_eq!(
        document["coverage"], whole["coverage"],
        "the same seeds, the same coverage"
    );
    assert_eq!(
        document["trace_digest"], whole["trace_digest"],
        "the same seeds, the same traces, on one thread each or two at once"
    );
    assert!(
        whole["trace_digest"]
            .as_str()
            .is_some_and(|d| d.len() == 16)
    );
    assert_eq!(merged.status.code(), whole_code(&whole));

    let twice = sim(&["merge", &files[0], &files[0], &files[1]]);
    assert_eq!(twice.status.code(), Some(2));
    assert!(stderr(&twice).contains("there twice"), "{}", stderr(&twice));
    let missing = sim(&["merge", &files[0], &files[1]]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("shards missing: 3/3"));
}

/// The exit code a whole sweep's summary calls for.
fn whole_code(summary: &Value) -> Option<i32> {
    let failed = summary["failures"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let uncovered = summary["uncovered"]
        .as_array()
        .is_some_and(|u| !u.is_empty());
    Some(if failed || uncovered { 1 } else { 0 })
}

/// No scripts, styles, images or links from elsewhere.
fn assert_self_contained(page: &str) {
    for outside in ["<script", "<link", " src=", " href=", "url("] {
        assert!(!page.contains(outside), "the page loads {outside}");
    }
}

#[test]
fn a_failing_run_report_has_a_timeline_with_the_violating_request_highlighted() {
    let dir = scratch("report");
    let page = dir.join("run.html");
    let output = sim(&[
        "run",
        "--seed",
        "0",
        "--bug",
        "count-expired-holds",
        "--json",
        "--plan-dir",
        dir.to_str().expect("utf-8"),
        "--report",
        page.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let request = json(&output)["shrunk"]["failure"]["request"]
        .as_u64()
        .expect("the shrunk failure names its request");
    let html = std::fs::read_to_string(&page).expect("the report is written");
    assert_self_contained(&html);
    assert!(html.contains("<svg") && html.contains("Fault profile") && html.contains("Coverage"));
    // A lane for each instance of the shrunk plan, the provider and the sweeper.
    let plan = std::fs::read_to_string(dir.join("seed-0-count-expired-holds.json"))
        .expect("the shrunk plan is written");
    let plan: serde_json::Value = serde_json::from_str(&plan).expect("a plan file");
    let servers = plan["plan"]["servers"].as_u64().expect("servers");
    let lanes = (0..servers)
        .map(|i| format!("instance {i}"))
        .chain(["provider".to_owned(), "sweeper".to_owned()]);
    for lane in lanes {
        assert!(
            html.contains(&format!(">{lane}</text>")),
            "a lane for {lane}"
        );
    }
    let violating = format!("class=\"violating\" data-request=\"r{request}\"");
    assert_eq!(
        html.matches(&violating).count(),
        2,
        "in its instance's and its client's lane"
    );
    assert_eq!(html.matches("class=\"violating\"").count(), 2, "only it");
    // The shrunk plan lost its faults and chaos; seed 0's own run has both.
    let whole = dir.join("whole.html");
    let output = sim(&[
        "run",
        "--seed",
        "0",
        "--report",
        whole.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let html = std::fs::read_to_string(&whole).expect("the report is written");
    assert!(
        html.contains("stroke=\"#000\""),
        "injected faults are marked"
    );
    assert!(html.contains("stroke=\"#d00\""), "crashes are marked");
    assert!(
        !html.contains("class=\"violating\""),
        "a passing run highlights nothing"
    );
}

#[test]
fn a_sweep_report_shows_seeds_per_second_and_coverage_per_item() {
    let dir = scratch("sweep-report");
    let page = dir.join("sweep.html");
    let output = sim(&[
        "sweep",
        "--seeds",
        "0..20",
        "--report",
        page.to_str().expect("utf-8"),
    ]);
    assert!(output.status.code().is_some());
    let html = std::fs::read_to_string(&page).expect("the report is written");
    assert_self_contained(&html);
    assert!(html.contains("seeds/s"));
    for item in [
        "fault: deadlock",
        "fault: commit answer lost",
        "chaos: crash",
    ] {
        assert!(html.contains(&format!("<td>{item}</td>")), "{item}");
    }
    assert!(html.contains("20 seeds run"));
}
