//! The expiry storm's figures: [`StormSummary`], the `--json` document (the fill, each window
//! per kind of request, and the across/before ratios), and its human form, the two windows side
//! by side so a reader sees at a glance what the lapse did to holds and to reads.
//!
//! Window times are seconds from the earliest deadline of the fill's holds (negative: before
//! it), since that instant, not the run's start, is what the windows are placed around.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use super::ServerUse;
use super::{Filled, KINDS, Measured};
use crate::load::cli::RunArgs;
use crate::load::run::PhaseDone;
use crate::load::stats::{StepSummary, round, status_line};

/// The `run --scenario expiry-storm --json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StormSummary {
    /// Always `expiry-storm`.
    pub scenario: String,
    /// The product every request is about.
    pub product: u64,
    /// Connections of the windows: even-indexed ones hold, odd ones read.
    pub connections: u32,
    /// The fill.
    pub fill: FillSummary,
    /// The window before the earliest deadline.
    pub before: WindowSummary,
    /// The window across the deadlines.
    pub across: WindowSummary,
    /// Across over before.
    pub ratios: Ratios,
}

/// What the fill granted and when those holds lapse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FillSummary {
    /// Connections that placed holds.
    pub connections: u32,
    /// `--fill`.
    pub wanted: u64,
    /// Holds granted; short of `wanted` when the deadline or the time limit stopped the fill,
    /// and past it by fewer than `connections` when requests were in flight at the end.
    pub granted: u64,
    /// From the first request until the last answer.
    pub duration_s: f64,
    /// Holds granted per second.
    pub holds_per_s: f64,
    /// The earliest `expires_at` of the granted holds.
    pub earliest_expires_at: String,
    /// The latest one.
    pub latest_expires_at: String,
    /// From the earliest deadline to the latest.
    pub span_s: f64,
    /// From the end of the fill to the earliest deadline.
    pub ttl_left_s: f64,
    /// Start, in Unix milliseconds, to set against the server's logs.
    pub start_unix_ms: u64,
    /// End, likewise.
    pub end_unix_ms: u64,
    /// Every answer to the fill's holds.
    pub hold: StepSummary,
    /// Connections opened again.
    pub reconnects: u64,
    /// What the fill cost the server (with `--server-pid`).
    pub server: ServerUse,
}

/// One window of the hold/read mix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// From its start until the last answer.
    pub duration_s: f64,
    /// Its start, in seconds from the earliest deadline.
    pub start_s: f64,
    /// Its end (the last answer), likewise.
    pub end_s: f64,
    /// Start, in Unix milliseconds.
    pub start_unix_ms: u64,
    /// End, likewise.
    pub end_unix_ms: u64,
    /// `POST /api/holds` on the product.
    pub hold: StepSummary,
    /// `GET /api/products/{product}`.
    pub get: StepSummary,
    /// Connections opened again.
    pub reconnects: u64,
    /// What the window cost the server (with `--server-pid`).
    pub server: ServerUse,
}

/// Across over before; absent when the before figure is zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// Of hold answers per second.
    pub hold_rps: Option<f64>,
    /// Of GET answers per second.
    pub get_rps: Option<f64>,
    /// Of the holds' p99 latency.
    pub hold_p99: Option<f64>,
    /// Of the GETs' p99 latency.
    pub get_p99: Option<f64>,
}

/// Builds the document from the three phases.
///
/// # Errors
/// A phase without the stats its plan gives (a bug), or a deadline out of chrono's range.
pub(super) fn storm_summary(
    args: &RunArgs,
    wanted: u64,
    fill: &Filled,
    before: &Measured,
    across: &Measured,
) -> anyhow::Result<StormSummary> {
    let fill_summary = fill_summary(args, wanted, fill)?;
    let (earliest_ms, _) = fill
        .span
        .deadlines_ms
        .context("a storm is only summed up after a fill with grants")?;
    let before = window_summary(before, earliest_ms)?;
    let across = window_summary(across, earliest_ms)?;
    let ratios = Ratios {
        hold_rps: ratio(across.hold.rps, before.hold.rps),
        get_rps: ratio(across.get.rps, before.get.rps),
        hold_p99: ratio(across.hold.p99_ms, before.hold.p99_ms),
        get_p99: ratio(across.get.p99_ms, before.get.p99_ms),
    };
    Ok(StormSummary {
        scenario: "expiry-storm".to_owned(),
        product: args.product,
        connections: args.connections,
        fill: fill_summary,
        before,
        across,
        ratios,
    })
}

/// `across / before` to 3 decimals; `None` when `before` is zero or either is not finite.
pub fn ratio(across: f64, before: f64) -> Option<f64> {
    let value = across / before;
    (before > 0.0 && value.is_finite()).then(|| round(value, 3))
}

/// The fill's answers as [`status_line`] groups them, for the error of a fill without grants.
pub(super) fn fill_answers(done: &PhaseDone) -> String {
    match done.stats.steps.first() {
        Some(step) => {
            let step = step.summary(done.elapsed_s);
            status_line(&step.status, step.errors)
        }
        None => "no answers".to_owned(),
    }
}

fn fill_summary(args: &RunArgs, wanted: u64, fill: &Filled) -> anyhow::Result<FillSummary> {
    let (earliest_ms, latest_ms) = fill
        .span
        .deadlines_ms
        .context("a storm is only summed up after a fill with grants")?;
    let elapsed_s = fill.done.elapsed_s;
    let hold = fill
        .done
        .stats
        .steps
        .first()
        .context("the fill's plan has one kind of request")?
        .summary(elapsed_s);
    let holds_per_s = if elapsed_s > 0.0 {
        round(fill.span.granted as f64 / elapsed_s, 1)
    } else {
        0.0
    };
    Ok(FillSummary {
        connections: args.fill_connections.unwrap_or(args.connections),
        wanted,
        granted: fill.span.granted,
        duration_s: round(elapsed_s, 3),
        holds_per_s,
        earliest_expires_at: rfc3339(earliest_ms)?,
        latest_expires_at: rfc3339(latest_ms)?,
        span_s: seconds_between(earliest_ms, latest_ms),
        ttl_left_s: seconds_between(fill.end_ms, earliest_ms),
        start_unix_ms: fill.start_ms,
        end_unix_ms: fill.end_ms,
        hold,
        reconnects: fill.done.stats.reconnects,
        server: fill.server,
    })
}

fn window_summary(window: &Measured, earliest_ms: u64) -> anyhow::Result<WindowSummary> {
    let elapsed_s = window.done.elapsed_s;
    let step = |kind: usize| {
        window
            .done
            .stats
            .steps
            .get(kind)
            .map(|step| step.summary(elapsed_s))
            .with_context(|| format!("a window's plan has {} kinds of request", KINDS.len()))
    };
    Ok(WindowSummary {
        duration_s: round(elapsed_s, 3),
        start_s: seconds_between(earliest_ms, window.start_ms),
        end_s: seconds_between(earliest_ms, window.end_ms),
        start_unix_ms: window.start_ms,
        end_unix_ms: window.end_ms,
        hold: step(0)?,
        get: step(1)?,
        reconnects: window.done.stats.reconnects,
        server: window.server,
    })
}

/// `to - from` in seconds, negative when `to` is earlier.
fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    round((to_ms as f64 - from_ms as f64) / 1_000.0, 3)
}

/// Unix milliseconds in the server's own form, `2026-11-25T04:22:23.526Z`.
fn rfc3339(unix_ms: u64) -> anyhow::Result<String> {
    let at = i64::try_from(unix_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .with_context(|| format!("{unix_ms} ms is not a date"))?;
    Ok(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl StormSummary {
    /// The human-readable figures: the fill, the windows' placement, then the table.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let fill = &self.fill;
        let holders = self.connections.div_ceil(2);
        let readers = self.connections.saturating_sub(holders);
        let _ = writeln!(
            out,
            "expiry-storm on product {}: the fill over {} connections, the windows over {} \
             ({holders} hold, {readers} GET)",
            self.product, fill.connections, self.connections
        );
        let _ = writeln!(
            out,
            "  fill: {} of {} holds granted in {:.1} s, {:.1} holds/s; ms p50 {:.2} p99 {:.2} \
             max {:.2}",
            fill.granted,
            fill.wanted,
            fill.duration_s,
            fill.holds_per_s,
            fill.hold.p50_ms,
            fill.hold.p99_ms,
            fill.hold.max_ms
        );
        let _ = writeln!(
            out,
            "    {}",
            status_line(&fill.hold.status, fill.hold.errors)
        );
        let _ = writeln!(
            out,
            "    deadlines {} to {} (a span of {:.1} s); {:.1} s of TTL left after the fill",
            fill.earliest_expires_at, fill.latest_expires_at, fill.span_s, fill.ttl_left_s
        );
        if let Some(server) = server_text(&fill.server) {
            let _ = writeln!(out, "    server: {server}");
        }
        let _ = writeln!(
            out,
            "  windows, in seconds from the earliest deadline: before {:.1} to {:.1}, across \
             {:.1} to {:.1} (the latest deadline at {:.1})",
            self.before.start_s,
            self.before.end_s,
            self.across.start_s,
            self.across.end_s,
            fill.span_s
        );
        if let Some(note) = self.uncovered_note() {
            let _ = writeln!(out, "  note: {note}");
        }
        out.push_str(&self.table());
        out
    }

    /// A note when the across window ended before the latest deadline, so the reader knows
    /// part of the lapse went unmeasured and which `--across` would have covered it.
    fn uncovered_note(&self) -> Option<String> {
        let short_s = self.fill.span_s - self.across.end_s;
        (short_s > 0.0).then(|| {
            let covering_s = (self.fill.span_s - self.across.start_s + 1.0).ceil();
            format!(
                "the across window ended {short_s:.1} s before the latest deadline; \
                 --across {covering_s:.0} would cover every deadline of the fill"
            )
        })
    }

    /// The two windows side by side, one row per figure, with the ratio where it means
    /// something (rates and latencies).
    fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![[
            String::new(),
            "before".to_owned(),
            "across".to_owned(),
            "across/before".to_owned(),
        ]];
        let kinds = [
            ("hold", &self.before.hold, &self.across.hold),
            ("get", &self.before.get, &self.across.get),
        ];
        for (kind, before, across) in kinds {
            step_rows(&mut rows, kind, before, across);
        }
        let optional = |value: Option<f64>, unit: f64, decimals: usize| {
            value.map_or("n/a".to_owned(), |value| {
                format!("{:.decimals$}", value / unit)
            })
        };
        let (before, across) = (&self.before, &self.across);
        rows.push([
            "server CPU s".to_owned(),
            optional(before.server.cpu_s, 1.0, 2),
            optional(across.server.cpu_s, 1.0, 2),
            String::new(),
        ]);
        // The windows differ in length, so only the share of a core compares across them.
        let (before_cpu, across_cpu) = (cpu_percent(before), cpu_percent(across));
        rows.push([
            "server CPU %".to_owned(),
            optional(before_cpu, 1.0, 1),
            optional(across_cpu, 1.0, 1),
            ratio_text(before_cpu, across_cpu),
        ]);
        let rss = |server: &ServerUse| server.rss_kib.map(|kib| kib as f64);
        rows.push([
            "server RSS MiB".to_owned(),
            optional(rss(&before.server), 1024.0, 1),
            optional(rss(&across.server), 1024.0, 1),
            String::new(),
        ]);
        rows.push([
            "reconnects".to_owned(),
            before.reconnects.to_string(),
            across.reconnects.to_string(),
            String::new(),
        ]);
        let mut out = String::new();
        for [label, before, across, ratio] in rows {
            let line = format!("  {label:<16}{before:>12}{across:>12}{ratio:>15}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// One figure of a [`StepSummary`].
type Figure = fn(&StepSummary) -> f64;

/// One kind's rows: rate, latencies, statuses by class, errors. Only the rate and the p99 get a
/// ratio: a median barely moves and a maximum is one request.
fn step_rows(rows: &mut Vec<[String; 4]>, kind: &str, before: &StepSummary, across: &StepSummary) {
    let ratio_of = |figure: Figure| {
        ratio(figure(across), figure(before)).map_or("n/a".to_owned(), |r| format!("{r:.3}"))
    };
    let figures: [(&str, Figure, usize, bool); 4] = [
        ("req/s", |s| s.rps, 1, true),
        ("p50 ms", |s| s.p50_ms, 2, false),
        ("p99 ms", |s| s.p99_ms, 2, true),
        ("max ms", |s| s.max_ms, 2, false),
    ];
    for (label, figure, decimals, with_ratio) in figures {
        rows.push([
            format!("{kind} {label}"),
            format!("{:.decimals$}", figure(before)),
            format!("{:.decimals$}", figure(across)),
            if with_ratio {
                ratio_of(figure)
            } else {
                String::new()
            },
        ]);
    }
    let (before_classes, across_classes) = (classes(before), classes(across));
    for (index, label) in CLASS_LABELS.iter().enumerate() {
        let count = |classes: &[u64; 5]| classes.get(index).copied().unwrap_or(0).to_string();
        rows.push([
            format!("{kind} {label}"),
            count(&before_classes),
            count(&across_classes),
            String::new(),
        ]);
    }
}

/// The rows of [`classes`], in its order.
const CLASS_LABELS: [&str; 5] = ["2xx", "4xx", "5xx", "5xx: 503", "errors"];

/// Answers as 2xx, 4xx, 5xx (503 included), 503 alone, and requests without an answer.
fn classes(step: &StepSummary) -> [u64; 5] {
    let within = |status: &BTreeMap<u16, u64>, low: u16, high: u16| {
        status
            .range(low..high)
            .fold(0_u64, |sum, (_, &count)| sum.saturating_add(count))
    };
    [
        within(&step.status, 200, 300),
        within(&step.status, 400, 500),
        within(&step.status, 500, 600),
        step.status.get(&503).copied().unwrap_or(0),
        step.errors,
    ]
}

fn server_text(server: &ServerUse) -> Option<String> {
    match (server.cpu_s, server.rss_kib) {
        (None, None) => None,
        (cpu_s, rss_kib) => Some(format!(
            "{} CPU s, RSS {} at the end",
            cpu_s.map_or("n/a".to_owned(), |cpu_s| format!("{cpu_s:.2}")),
            rss_kib.map_or("n/a".to_owned(), |kib| format!(
                "{:.1} MiB",
                kib as f64 / 1024.0
            ))
        )),
    }
}

/// The server's CPU time over a window as a percentage of one core.
fn cpu_percent(window: &WindowSummary) -> Option<f64> {
    let cpu_s = window.server.cpu_s?;
    (window.duration_s > 0.0).then(|| cpu_s / window.duration_s * 100.0)
}

fn ratio_text(before: Option<f64>, across: Option<f64>) -> String {
    match (before, across) {
        (Some(before), Some(across)) => {
            ratio(across, before).map_or("n/a".to_owned(), |r| format!("{r:.3}"))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rps: f64, p99_ms: f64, status: &[(u16, u64)], errors: u64) -> StepSummary {
        StepSummary {
            requests: status.iter().map(|(_, count)| count).sum(),
            rps,
            p50_ms: p99_ms / 10.0,
            p90_ms: p99_ms / 2.0,
            p99_ms,
            max_ms: p99_ms * 2.0,
            status: status.iter().copied().collect(),
            errors,
        }
    }

    fn window(start_s: f64, hold: StepSummary, get: StepSummary, cpu_s: f64) -> WindowSummary {
        WindowSummary {
            duration_s: 8.0,
            start_s,
            end_s: start_s + 8.0,
            start_unix_ms: 1_795_580_500_000,
            end_unix_ms: 1_795_580_508_000,
            hold,
            get,
            reconnects: 0,
            server: ServerUse {
                cpu_s: Some(cpu_s),
                rss_kib: Some(30_720),
            },
        }
    }

    fn storm() -> StormSummary {
        let before = window(
            -13.6,
            step(12_000.0, 5.0, &[(201, 96_000)], 0),
            step(40_000.0, 2.0, &[(200, 320_000)], 0),
            12.0,
        );
        let across = window(
            -2.0,
            step(1_500.0, 2_500.0, &[(201, 29_000), (503, 1_000)], 12),
            step(0.0, 0.0, &[], 64),
            15.0,
        );
        let ratios = Ratios {
            hold_rps: ratio(across.hold.rps, before.hold.rps),
            get_rps: ratio(across.get.rps, before.get.rps),
            hold_p99: ratio(across.hold.p99_ms, before.hold.p99_ms),
            get_p99: ratio(across.get.p99_ms, before.get.p99_ms),
        };
        StormSummary {
            scenario: "expiry-storm".to_owned(),
            product: 7,
            connections: 64,
            fill: FillSummary {
                connections: 256,
                wanted: 20_000,
                granted: 20_100,
                duration_s: 1.4,
                holds_per_s: 14_357.1,
                earliest_expires_at: "2026-11-25T04:22:23.526Z".to_owned(),
                latest_expires_at: "2026-11-25T04:22:24.926Z".to_owned(),
                span_s: 1.4,
                ttl_left_s: 13.6,
                start_unix_ms: 1_795_580_528_126,
                end_unix_ms: 1_795_580_529_526,
                hold: step(14_357.1, 30.0, &[(201, 20_100)], 0),
                reconnects: 0,
                server: ServerUse::default(),
            },
            before,
            across,
            ratios,
        }
    }

    #[test]
    fn ratios_are_across_over_before_and_absent_without_a_before_figure() {
        assert_eq!(ratio(1_500.0, 12_000.0), Some(0.125));
        assert_eq!(ratio(2.0, 3.0), Some(0.667));
        assert_eq!(ratio(5.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn statuses_are_counted_by_class_with_503_also_on_its_own() {
        let answers = step(
            1.0,
            1.0,
            &[(200, 3), (201, 4), (409, 5), (500, 1), (503, 2)],
            6,
        );
        assert_eq!(classes(&answers), [7, 5, 3, 2, 6]);
    }

    #[test]
    fn the_windows_are_rendered_side_by_side_with_their_ratios() {
        let text = storm().human();
        let expected = "\
expiry-storm on product 7: the fill over 256 connections, the windows over 64 (32 hold, 32 GET)
  fill: 20100 of 20000 holds granted in 1.4 s, 14357.1 holds/s; ms p50 3.00 p99 30.00 max 60.00
    201: 20100, 409: 0, 503: 0, other: 0, errors: 0
    deadlines 2026-11-25T04:22:23.526Z to 2026-11-25T04:22:24.926Z (a span of 1.4 s); \
13.6 s of TTL left after the fill
  windows, in seconds from the earliest deadline: before -13.6 to -5.6, across -2.0 to 6.0 \
(the latest deadline at 1.4)
                        before      across  across/before
  hold req/s           12000.0      1500.0          0.125
  hold p50 ms             0.50      250.00
  hold p99 ms             5.00     2500.00        500.000
  hold max ms            10.00     5000.00
  hold 2xx               96000       29000
  hold 4xx                   0           0
  hold 5xx                   0        1000
  hold 5xx: 503              0        1000
  hold errors                0          12
  get req/s            40000.0         0.0          0.000
  get p50 ms              0.20        0.00
  get p99 ms              2.00        0.00          0.000
  get max ms              4.00        0.00
  get 2xx               320000           0
  get 4xx                    0           0
  get 5xx                    0           0
  get 5xx: 503               0           0
  get errors                 0          64
  server CPU s           12.00       15.00
  server CPU %           150.0       187.5          1.250
  server RSS MiB          30.0        30.0
  reconnects                 0           0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn an_across_window_that_ends_before_the_latest_deadline_is_noted() {
        let mut storm = storm();
        assert_eq!(storm.uncovered_note(), None);
        storm.fill.span_s = 30.0;
        assert_eq!(
            storm.uncovered_note().as_deref(),
            Some(
                "the across window ended 24.0 s before the latest deadline; --across 33 would \
                 cover every deadline of the fill"
            )
        );
        assert!(
            storm
                .human()
                .contains("\n  note: the across window ended 24.0 s")
        );
    }

    #[test]
    fn the_document_round_trips_through_json_with_each_kind_per_window() -> anyhow::Result<()> {
        let storm = storm();
        let json = serde_json::to_string(&storm)?;
        assert!(json.starts_with(r#"{"scenario":"expiry-storm","product":7,"connections":64,"#));
        assert!(json.contains(r#""ratios":{"hold_rps":0.125,"get_rps":0.0,"#));
        assert!(json.contains(r#""server":{"cpu_s":null,"rss_kib":null}"#));
        let back: StormSummary = serde_json::from_str(&json)?;
        assert_eq!(back, storm);
        Ok(())
    }

    #[test]
    fn deadlines_are_written_in_the_servers_form() -> anyhow::Result<()> {
        assert_eq!(rfc3339(1_795_580_543_526)?, "2026-11-25T04:22:23.526Z");
        assert_eq!(seconds_between(1_000, 500), -0.5);
        Ok(())
    }
}
