//! What a run measured. Each connection task keeps its own [`RunStats`] (no locks or atomics in
//! the hot loop) and the run merges them when every task is done. Latencies are microseconds in
//! an HDR histogram with 3 significant digits; statuses are counted by exact code; a request
//! that got no answer (connect failure, reset, timeout) is an error, not a status.
//!
//! [`Summary`] is the `run --json` document, and what `report` reads back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

/// Largest latency the histograms track exactly, in microseconds (60 s); longer ones are
/// recorded as this value. The request timeout is what really bounds a request.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Significant decimal digits kept by the histograms: 0.1% relative error, about 185 KiB each.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Names of the flow's steps, in order; also the keys of [`FlowSteps`].
pub const FLOW_STEPS: [&str; 3] = ["hold", "order", "webhook"];

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS).context("histogram bounds")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)
}

/// Latencies, statuses and errors of one kind of request.
#[derive(Clone, Debug)]
pub struct StepStats {
    latency_us: Histogram<u64>,
    status: BTreeMap<u16, u64>,
    errors: u64,
}

impl StepStats {
    /// Empty stats.
    ///
    /// # Errors
    /// Never in practice: the histogram bounds are constants.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency_us: histogram()?,
            status: BTreeMap::new(),
            errors: 0,
        })
    }

    /// Records an answered request.
    pub fn record(&mut self, status: StatusCode, latency: Duration) {
        self.latency_us.saturating_record(micros(latency));
        let count = self.status.entry(status.as_u16()).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Records a request that got no answer.
    pub fn error(&mut self) {
        self.errors = self.errors.saturating_add(1);
    }

    /// Adds `other` into `self`.
    ///
    /// # Errors
    /// Never in practice: all histograms share the same bounds.
    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .context("merging histograms")?;
        for (&code, &count) in &other.status {
            let total = self.status.entry(code).or_insert(0);
            *total = total.saturating_add(count);
        }
        self.errors = self.errors.saturating_add(other.errors);
        Ok(())
    }

    /// The figures over a window of `elapsed_s` seconds.
    pub fn summary(&self, elapsed_s: f64) -> StepSummary {
        let latency = latency_summary(&self.latency_us, elapsed_s);
        StepSummary {
            requests: latency.count,
            rps: latency.rate_per_s,
            p50_ms: latency.p50_ms,
            p90_ms: latency.p90_ms,
            p99_ms: latency.p99_ms,
            max_ms: latency.max_ms,
            status: self.status.clone(),
            errors: self.errors,
        }
    }
}

/// Everything one connection task (or, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// One entry per kind of request: one for the single-request scenarios, [`FLOW_STEPS`] for
    /// the flow.
    pub steps: Vec<StepStats>,
    /// Whole-flow latency of completed flows (hold granted, order created, webhook applied).
    pub flow_us: Option<Histogram<u64>>,
    /// Connections opened again after the server closed one or a request failed.
    pub reconnects: u64,
}

impl RunStats {
    /// Empty stats with `steps` kinds of request, and a flow histogram when `flow`.
    ///
    /// # Errors
    /// Never in practice: the histogram bounds are constants.
    pub fn new(steps: usize, flow: bool) -> anyhow::Result<Self> {
        Ok(Self {
            steps: (0..steps)
                .map(|_| StepStats::new())
                .collect::<anyhow::Result<_>>()?,
            flow_us: if flow { Some(histogram()?) } else { None },
            reconnects: 0,
        })
    }

    /// Records one completed flow.
    pub fn record_flow(&mut self, latency: Duration) {
        if let Some(flow_us) = &mut self.flow_us {
            flow_us.saturating_record(micros(latency));
        }
    }

    /// Adds `other` (the same shape) into `self`.
    ///
    /// # Errors
    /// Never in practice: all histograms share the same bounds.
    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        for (mine, theirs) in self.steps.iter_mut().zip(&other.steps) {
            mine.merge(theirs)?;
        }
        if let (Some(mine), Some(theirs)) = (&mut self.flow_us, &other.flow_us) {
            mine.add(theirs).context("merging histograms")?;
        }
        self.reconnects = self.reconnects.saturating_add(other.reconnects);
        Ok(())
    }

    /// The summary of a run of `scenario` over `connections` connections, measured for
    /// `elapsed_s` seconds.
    ///
    /// # Errors
    /// Never in practice: all histograms share the same bounds.
    pub fn summary(
        &self,
        scenario: &str,
        connections: u32,
        elapsed_s: f64,
    ) -> anyhow::Result<Summary> {
        let mut overall = StepStats::new()?;
        for step in &self.steps {
            overall.merge(step)?;
        }
        let flow = self
            .flow_us
            .as_ref()
            .map(|flow_us| latency_summary(flow_us, elapsed_s));
        let steps = (self.steps.len() == FLOW_STEPS.len() && flow.is_some()).then(|| FlowSteps {
            hold: self.steps[0].summary(elapsed_s),
            order: self.steps[1].summary(elapsed_s),
            webhook: self.steps[2].summary(elapsed_s),
        });
        let overall = overall.summary(elapsed_s);
        Ok(Summary {
            scenario: scenario.to_owned(),
            connections,
            duration_s: round(elapsed_s, 3),
            requests: overall.requests,
            rps: overall.rps,
            p50_ms: overall.p50_ms,
            p90_ms: overall.p90_ms,
            p99_ms: overall.p99_ms,
            max_ms: overall.max_ms,
            status: overall.status,
            errors: overall.errors,
            reconnects: self.reconnects,
            flows_per_s: flow.as_ref().map(|flow| flow.rate_per_s),
            flow,
            steps,
            cost: None,
        })
    }
}

/// Figures of one kind of request. `requests` counts answered requests (any status); `errors`
/// counts requests that got no answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    /// Answered requests in the window.
    pub requests: u64,
    /// Answered requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile latency.
    pub p90_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// Answers by HTTP status code.
    pub status: BTreeMap<u16, u64>,
    /// Requests without an answer.
    pub errors: u64,
}

/// Latency figures of a population of events (completed flows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Events in the window.
    pub count: u64,
    /// Events per second.
    pub rate_per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile latency.
    pub p90_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest event.
    pub max_ms: f64,
}

/// The flow's steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSteps {
    /// `POST /api/holds`.
    pub hold: StepSummary,
    /// `POST /api/orders`.
    pub order: StepSummary,
    /// `POST /api/payments/webhook`.
    pub webhook: StepSummary,
}

/// The `run --json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The scenario's command-line name.
    pub scenario: String,
    /// Connections used.
    pub connections: u32,
    /// The measured window: from the end of the warm-up until the last task finished.
    pub duration_s: f64,
    /// Answered requests, all kinds together (any status).
    pub requests: u64,
    /// Answered requests per second.
    pub rps: f64,
    /// Median latency of all requests.
    pub p50_ms: f64,
    /// 90th percentile latency of all requests.
    pub p90_ms: f64,
    /// 99th percentile latency of all requests.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// Answers by HTTP status code.
    pub status: BTreeMap<u16, u64>,
    /// Requests without an answer (connect failure, reset, timeout).
    pub errors: u64,
    /// Connections opened again during the run.
    pub reconnects: u64,
    /// Completed flows per second (`flow` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_per_s: Option<f64>,
    /// Whole-flow latency of completed flows (`flow` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<LatencySummary>,
    /// Each step on its own (`flow` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<FlowSteps>,
    /// What the measured window cost ([`super::cost`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<super::cost::Cost>,
}

impl Summary {
    /// All requests of the run together, as one step.
    pub fn overall(&self) -> StepSummary {
        StepSummary {
            requests: self.requests,
            rps: self.rps,
            p50_ms: self.p50_ms,
            p90_ms: self.p90_ms,
            p99_ms: self.p99_ms,
            max_ms: self.max_ms,
            status: self.status.clone(),
            errors: self.errors,
        }
    }

    /// The human-readable summary, several lines.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} connections, {:.1} s measured",
            self.scenario, self.connections, self.duration_s
        );
        write_step(&mut out, "all", &self.overall());
        let _ = writeln!(out, "  reconnects {}", self.reconnects);
        if let (Some(flow), Some(steps)) = (&self.flow, &self.steps) {
            let _ = writeln!(
                out,
                "  flows: {} completed, {:.1} flows/s; flow ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
                flow.count, flow.rate_per_s, flow.p50_ms, flow.p90_ms, flow.p99_ms, flow.max_ms
            );
            for (name, step) in FLOW_STEPS
                .iter()
                .zip([&steps.hold, &steps.order, &steps.webhook])
            {
                write_step(&mut out, name, step);
            }
        }
        if let Some(cost) = &self.cost {
            let _ = writeln!(out, "{}", cost.human());
        }
        out
    }
}

fn write_step(out: &mut String, name: &str, step: &StepSummary) {
    let _ = writeln!(
        out,
        "  {name}: {} requests, {:.1} req/s; ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        step.requests, step.rps, step.p50_ms, step.p90_ms, step.p99_ms, step.max_ms
    );
    let _ = writeln!(out, "    {}", status_line(&step.status, step.errors));
}

/// Statuses grouped as `2xx by code, 409, 503, other, errors`, e.g.
/// `201: 1200, 409: 3, 503: 0, other: 0, errors: 0`.
pub fn status_line(status: &BTreeMap<u16, u64>, errors: u64) -> String {
    let mut line = String::new();
    let mut other = 0_u64;
    for (&code, &count) in status {
        if (200..300).contains(&code) {
            let _ = write!(line, "{code}: {count}, ");
        } else if code != 409 && code != 503 {
            other = other.saturating_add(count);
        }
    }
    let of = |code| status.get(&code).copied().unwrap_or(0);
    let _ = write!(
        line,
        "409: {}, 503: {}, other: {other}, errors: {errors}",
        of(409),
        of(503)
    );
    line
}

fn latency_summary(latency_us: &Histogram<u64>, elapsed_s: f64) -> LatencySummary {
    let ms = |us: u64| round(us as f64 / 1_000.0, 3);
    let count = latency_us.len();
    let rate_per_s = if elapsed_s > 0.0 {
        round(count as f64 / elapsed_s, 1)
    } else {
        0.0
    };
    LatencySummary {
        count,
        rate_per_s,
        p50_ms: ms(latency_us.value_at_quantile(0.50)),
        p90_ms: ms(latency_us.value_at_quantile(0.90)),
        p99_ms: ms(latency_us.value_at_quantile(0.99)),
        max_ms: ms(latency_us.max()),
    }
}

/// `value` rounded to `decimals` decimal places, as every figure of the summaries is.
pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_add_counts_and_keep_the_slowest() -> anyhow::Result<()> {
        let mut a = RunStats::new(1, false)?;
        let mut b = RunStats::new(1, false)?;
        a.steps[0].record(StatusCode::CREATED, Duration::from_millis(1));
        b.steps[0].record(StatusCode::CREATED, Duration::from_millis(3));
        b.steps[0].record(StatusCode::CONFLICT, Duration::from_millis(2));
        b.steps[0].error();
        a.merge(&b)?;
        let summary = a.summary("hot-holds", 2, 2.0)?;
        assert_eq!(summary.requests, 3);
        assert_eq!(summary.rps, 1.5);
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.status.get(&201), Some(&2));
        assert_eq!(summary.status.get(&409), Some(&1));
        assert!((summary.max_ms - 3.0).abs() < 0.01);
        assert!(summary.steps.is_none());
        Ok(())
    }

    #[test]
    fn the_summary_round_trips_through_json() -> anyhow::Result<()> {
        let mut stats = RunStats::new(FLOW_STEPS.len(), true)?;
        stats.steps[0].record(StatusCode::CREATED, Duration::from_micros(800));
        stats.steps[1].record(StatusCode::CREATED, Duration::from_micros(900));
        stats.steps[2].record(StatusCode::OK, Duration::from_micros(1_000));
        stats.record_flow(Duration::from_micros(2_700));
        let summary = stats.summary("flow", 1, 1.0)?;
        let json = serde_json::to_string(&summary)?;
        assert!(
            json.starts_with(
                r#"{"scenario":"flow","connections":1,"duration_s":1.0,"requests":3,"#
            )
        );
        assert!(json.contains(r#""status":{"200":1,"201":2}"#));
        assert!(json.contains(r#""flows_per_s":1.0"#));
        let back: Summary = serde_json::from_str(&json)?;
        assert_eq!(back, summary);
        Ok(())
    }

    #[test]
    fn the_status_line_groups_codes() {
        let status = BTreeMap::from([(200, 5), (201, 7), (404, 1), (409, 2), (500, 1)]);
        assert_eq!(
            status_line(&status, 4),
            "200: 5, 201: 7, 409: 2, 503: 0, other: 2, errors: 4"
        );
    }
}
