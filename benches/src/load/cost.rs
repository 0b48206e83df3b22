//! What a run cost, read around its measured window: the CPU time the server, the database and
//! the load generator spent per answered request, how many of the machine's cores were busy,
//! and the statements (one round trip each) the server sent its database per batch and per
//! request. The server's own figures come from its `/metrics` (`process_cpu_seconds_total`,
//! `flashsale_db_statements_total`, `flashsale_db_transactions_total`,
//! `flashsale_batch_size_count`), so they are there whatever machine it runs on; the database's
//! CPU, the generator's and the machine's busy time are read from `/proc` ([`super::process`]),
//! so only when they run here. A figure that cannot be read is absent, never a guess.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::http::{Connection, Target, Template};
use super::process;

/// The process names a database runs under, for `--db-pid`'s default.
pub const DATABASE_PROCESSES: [&str; 2] = ["mariadbd", "mysqld"];

/// How long reading `/metrics` may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

/// Readings at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    at: Option<Instant>,
    server_cpu_s: Option<f64>,
    database_cpu_s: Option<f64>,
    generator_cpu_s: Option<f64>,
    busy_s: Option<f64>,
    statements: Option<f64>,
    transactions: Option<f64>,
    batches: Option<f64>,
}

/// What the measured window cost, per answered request unless said otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Server CPU (user and system) per request, in µs.
    pub server_us: Option<f64>,
    /// Database CPU per request, in µs.
    pub database_us: Option<f64>,
    /// The load generator's own CPU per request, in µs.
    pub generator_us: Option<f64>,
    /// Cores busy on average over the window, every process of the machine together.
    pub cores_busy: Option<f64>,
    /// Cores the machine has.
    pub cores: usize,
    /// Statements sent to the database per batch (group-commit transaction).
    pub statements_per_batch: Option<f64>,
    /// Statements sent to the database per request.
    pub statements_per_request: Option<f64>,
    /// Database transactions per request.
    pub transactions_per_request: Option<f64>,
    /// Requests per batch.
    pub requests_per_batch: Option<f64>,
}

/// Reads everything now: the server's `/metrics` (when it answers) and `/proc`.
pub async fn sample(target: &Target, database_pid: Option<u32>) -> Sample {
    let metrics = metrics_text(target).await;
    let value = |name: &str| metrics.as_deref().and_then(|text| metric(text, name));
    Sample {
        at: Some(Instant::now()),
        server_cpu_s: value("process_cpu_seconds_total"),
        database_cpu_s: database_pid.and_then(process::cpu_s),
        generator_cpu_s: process::cpu_s(std::process::id()),
        busy_s: process::busy_s(),
        statements: value("flashsale_db_statements_total"),
        transactions: value("flashsale_db_transactions_total"),
        batches: value("flashsale_batch_size_count"),
    }
}

/// The database's process on this machine, when the target is on this machine too: the first
/// process named as [`DATABASE_PROCESSES`] say.
pub fn local_database_pid(target: &Target) -> Option<u32> {
    let host = target
        .address()
        .rsplit_once(':')
        .map_or("", |(host, _)| host);
    let local = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    local
        .then(|| process::pid_named(&DATABASE_PROCESSES))
        .flatten()
}

impl Cost {
    /// The cost of `requests` answered between `first` and `last`.
    pub fn between(first: &Sample, last: &Sample, requests: u64) -> Cost {
        let requests = requests as f64;
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?).filter(|d| *d >= 0.0);
        let per_request = |a, b| {
            let d = delta(a, b)?;
            (requests > 0.0).then(|| round(d * 1e6 / requests, 1))
        };
        let wall_s = match (first.at, last.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let batches = delta(first.batches, last.batches).filter(|b| *b > 0.0);
        let statements = delta(first.statements, last.statements);
        let ratio = |n: Option<f64>, d: Option<f64>| Some(round(n? / d.filter(|d| *d > 0.0)?, 2));
        Cost {
            server_us: per_request(first.server_cpu_s, last.server_cpu_s),
            database_us: per_request(first.database_cpu_s, last.database_cpu_s),
            generator_us: per_request(first.generator_cpu_s, last.generator_cpu_s),
            cores_busy: delta(first.busy_s, last.busy_s)
                .filter(|_| wall_s > 0.0)
                .map(|busy| round(busy / wall_s, 2)),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            statements_per_batch: ratio(statements, batches),
            statements_per_request: ratio(statements, Some(requests)),
            transactions_per_request: ratio(
                delta(first.transactions, last.transactions),
                Some(requests),
            ),
            requests_per_batch: ratio(Some(requests), batches),
        }
    }

    /// One line for the human summary.
    pub fn human(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let n = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        format!(
            "  cost per request: server {} µs, database {} µs, load generator {} µs of CPU; \
             {} of {} cores busy\n  round trips: {} statements per batch, {} per request; \
             {} transactions per request, {} requests per batch",
            us(self.server_us),
            us(self.database_us),
            us(self.generator_us),
            n(self.cores_busy),
            self.cores,
            n(self.statements_per_batch),
            n(self.statements_per_request),
            n(self.transactions_per_request),
            n(self.requests_per_batch),
        )
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The server's `/metrics` text, if it answers 200.
async fn metrics_text(target: &Target) -> Option<String> {
    let template = Template::get("/metrics").ok()?;
    let mut connection = Connection::open(target, METRICS_TIMEOUT).await.ok()?;
    let (status, body) = connection
        .send(template.request(target), METRICS_TIMEOUT)
        .await
        .ok()?;
    status
        .is_success()
        .then(|| String::from_utf8_lossy(&body).into_owned())
}

/// The value of the series `name` without labels in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_read_by_its_exact_name_without_labels() {
        let text = "# HELP process_cpu_seconds_total CPU.\n\
                    process_cpu_seconds_total 12.5\n\
                    flashsale_db_statements_total_extra 3\n\
                    flashsale_db_statements_total 4200\n\
                    flashsale_batch_size_count{x=\"y\"} 9\n";
        assert_eq!(metric(text, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric(text, "flashsale_db_statements_total"), Some(4200.0));
        assert_eq!(metric(text, "flashsale_batch_size_count"), None);
    }

    #[test]
    fn the_cost_is_per_request_over_the_window_and_absent_when_unread() {
        let start = Instant::now();
        let first = Sample {
            at: Some(start),
            server_cpu_s: Some(10.0),
            database_cpu_s: None,
            generator_cpu_s: Some(1.0),
            busy_s: Some(100.0),
            statements: Some(1_000.0),
            transactions: Some(100.0),
            batches: Some(50.0),
        };
        let last = Sample {
            at: start.checked_add(Duration::from_secs(10)),
            server_cpu_s: Some(10.5),
            database_cpu_s: Some(3.0),
            generator_cpu_s: Some(1.1),
            busy_s: Some(118.0),
            statements: Some(6_000.0),
            transactions: Some(1_100.0),
            batches: Some(1_050.0),
        };
        let cost = Cost::between(&first, &last, 20_000);
        assert_eq!(cost.server_us, Some(25.0));
        assert_eq!(cost.database_us, None, "not read at the start");
        assert_eq!(cost.generator_us, Some(5.0));
        assert_eq!(cost.cores_busy, Some(1.8));
        assert_eq!(cost.statements_per_batch, Some(5.0));
        assert_eq!(cost.statements_per_request, Some(0.25));
        assert_eq!(cost.transactions_per_request, Some(0.05));
        assert_eq!(cost.requests_per_batch, Some(20.0));
        let none = Cost::between(&first, &last, 0);
        assert_eq!((none.server_us, none.statements_per_request), (None, None));
    }
}
