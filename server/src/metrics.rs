//! Prometheus metrics at `GET /metrics`, through the `metrics` crate's global recorder.
//!
//! The service layer records its domain counters with the `metrics` macros (a no-op without a
//! recorder, as in the simulator); [`install`] sets the Prometheus recorder once per process,
//! and [`render`] writes the exposition text, after reading the gauges that are sampled rather
//! than counted (the database pool).
//!
//! Every family, with its kind, labels (and the values each takes) and meaning, is listed once,
//! in [`FAMILIES`]: the documentation (`docs/OPERATIONS.md` points here), and what a test holds
//! the rendered `/metrics` to, so a family renamed or added in one place fails until the list says
//! so too.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::sql::SqlStore;

/// A metric family's kind, as its `# TYPE` line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value sampled or set.
    Gauge,
    /// Observations in buckets, with `_bucket`, `_sum` and `_count` series.
    Histogram,
}

impl Kind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One label of a family: its name, and every value it takes (empty for an open set, such as a
/// route or a status code).
#[derive(Clone, Copy, Debug)]
pub struct Label {
    /// The label's name.
    pub name: &'static str,
    /// Its values; empty when they are not a fixed list.
    pub values: &'static [&'static str],
}

/// When a family first has a series in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appears {
    /// From the first scrape on.
    Start,
    /// Once what it counts first happens in ordinary use (a request, a hold, a sweep).
    FirstUse,
    /// Only once a fault happens (contention, a lost connection).
    OnFault,
}

/// One metric family.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: &'static [Label],
    /// What it measures, as its `# HELP` line says it.
    pub help: &'static str,
    /// When it first appears.
    pub appears: Appears,
}

const fn open(name: &'static str) -> Label {
    Label { name, values: &[] }
}

/// Which path did an expiry's work: a request's transaction, or the sweeper's.
const PATH: Label = Label {
    name: "path",
    values: &["request", "sweeper"],
};

/// Every family this server renders at `/metrics`.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "flashsale_http_requests_total",
        kind: Kind::Counter,
        labels: &[open("route"), open("status")],
        help: "HTTP requests answered, by route (ids as {id}; `other` for any unknown path) and status.",
        appears: Appears::FirstUse,
    },
    Family {
        name: "flashsale_http_request_duration_seconds",
        kind: Kind::Histogram,
        labels: &[open("route")],
        help: "Time to answer an HTTP request, by route.",
        appears: Appears::FirstUse,
    },
    Family {
        name: "flashsale_holds_granted_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Holds granted.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_holds_rejected_total",
        kind: Kind::Counter,
        labels: &[open("code")],
        help: "Hold requests refused, by problem code (insufficient_stock, ...).",
        appears: Appears::FirstUse,
    },
    Family {
        name: "flashsale_holds_released_total",
        kind: Kind::Counter,
        labels: &[Label {
            name: "reason",
            values: &["payment_failed"],
        }],
        help: "Held holds released before their deadline, their units back on sale: by a failed payment.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_holds_expired_total",
        kind: Kind::Counter,
        labels: &[PATH],
        help: "Held holds whose units went back on sale at their deadline, by the path that folded their expiry bucket: a request (a grant on the product) or the sweeper.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_units_expired_total",
        kind: Kind::Counter,
        labels: &[PATH],
        help: "Units of those holds, by the same path.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_holds_retired_total",
        kind: Kind::Counter,
        labels: &[PATH],
        help: "Rows of holds expired for good moved to released, by the path: the sweeper, in chunks, or a request (a webhook on an expired hold).",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_holds_expired_unretired",
        kind: Kind::Gauge,
        labels: &[],
        help: "Held holds expired for good (their units back on sale) whose rows the sweeper has yet to retire, as its last pass read them.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_orders_total",
        kind: Kind::Counter,
        labels: &[Label {
            name: "status",
            values: &["created", "paid", "cancelled"],
        }],
        help: "Orders created, and moved to paid or cancelled by a webhook.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_webhooks_total",
        kind: Kind::Counter,
        labels: &[Label {
            name: "result",
            values: &[
                "applied",
                "already_applied",
                "conflict",
                "refund_required",
                "unmatched",
            ],
        }],
        help: "Webhooks recorded (replays of a key not counted), by result.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_retries_total",
        kind: Kind::Counter,
        labels: &[
            open("script"),
            Label {
                name: "cause",
                values: &["contention", "connection"],
            },
        ],
        help: "Transaction scripts run again, by script and cause (contention, a lost connection).",
        appears: Appears::OnFault,
    },
    Family {
        name: "flashsale_db_statements_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Statements sent to the database, each one round trip (BEGIN and COMMIT included).",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_db_transactions_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Database transactions begun: batches, reads, sweeps, scripts.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_batch_size",
        kind: Kind::Histogram,
        labels: &[],
        help: "Requests one transaction decided together (group commit).",
        appears: Appears::FirstUse,
    },
    Family {
        name: "flashsale_queue_waiting",
        kind: Kind::Gauge,
        labels: &[],
        help: "Requests queued for this instance's next transaction.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_product_cache_total",
        kind: Kind::Counter,
        labels: &[Label {
            name: "outcome",
            values: &["hit", "miss"],
        }],
        help: "GET of a product answered from this instance's cache (hit) or the database (miss).",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_sweep_orders_cancelled_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Orders the sweeper cancelled when their payment window closed.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_sweep_records_purged_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Idempotency-key and webhook records the sweeper purged past their retention.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_db_connections",
        kind: Kind::Gauge,
        labels: &[Label {
            name: "state",
            values: &["in_use", "idle"],
        }],
        help: "The database pool's connections, in use or idle.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_db_connections_max",
        kind: Kind::Gauge,
        labels: &[],
        help: "The database pool's size (--db-max-connections).",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_database_up",
        kind: Kind::Gauge,
        labels: &[],
        help: "1 when the database served this instance's last read of the products table (one a second, through the pool: a pool busy for 0.9 s reads as down; a Galera node outside the primary component reads as down), else 0.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_database_unavailable_total",
        kind: Kind::Counter,
        labels: &[Label {
            name: "cause",
            values: &[
                "unreachable",
                "connection_lost",
                "commit_unknown",
                "starting",
                "deadline",
            ],
        }],
        help: "503 answers the database caused, by cause.",
        appears: Appears::Start,
    },
    Family {
        name: "flashsale_build_info",
        kind: Kind::Gauge,
        labels: &[open("version"), open("commit")],
        help: "1, labelled with this build's version and commit (FLASHSALE_COMMIT at build time).",
        appears: Appears::Start,
    },
    process(
        "process_cpu_seconds_total",
        Kind::Counter,
        "CPU time, user and system, in whole seconds.",
    ),
    process("process_open_fds", Kind::Gauge, "Open file descriptors."),
    process(
        "process_max_fds",
        Kind::Gauge,
        "The open-file limit (0: unlimited).",
    ),
    process(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size.",
    ),
    process(
        "process_virtual_memory_max_bytes",
        Kind::Gauge,
        "The address-space limit (0: unlimited).",
    ),
    process(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size.",
    ),
    process(
        "process_start_time_seconds",
        Kind::Gauge,
        "When the process started, in Unix seconds.",
    ),
    process("process_threads", Kind::Gauge, "OS threads."),
];

/// A process family, as `metrics-process` names, describes and renders it (at every scrape).
const fn process(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family {
        name,
        kind,
        labels: &[],
        help,
        appears: Appears::Start,
    }
}

/// This build's commit, when the build was given one (`FLASHSALE_COMMIT`, as CI and the
/// container build set it); a build from a working tree says `unknown`.
pub const BUILD_COMMIT: &str = match option_env!("FLASHSALE_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// The process's CPU, memory, descriptors and threads, read from `/proc` at each scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(metrics_process::Collector::default);

/// Latency buckets, in seconds: from a cached read to a contended batch.
const SECONDS_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];
/// Batch size buckets, in requests.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the Prometheus recorder for this process and returns the handle that renders it.
///
/// # Errors
/// A recorder is already installed, or the buckets are invalid.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("flashsale_batch_size".into()), &BATCH_BUCKETS)?
        .install_recorder()?;
    describe_and_register();
    PROCESS.describe();
    metrics::gauge!(
        "flashsale_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => BUILD_COMMIT
    )
    .set(1.0);
    Ok(handle)
}

/// Gives every family of [`FAMILIES`] its `# HELP`, and registers at zero each series whose
/// labels take listed values only: such a family renders from the first scrape, so a `rate()`
/// or `increase()` over it (the documented alerts) has a series before its first event. (The
/// process families are described by their collector.)
fn describe_and_register() {
    for family in FAMILIES.iter().filter(|f| f.name.starts_with("flashsale_")) {
        match family.kind {
            Kind::Counter => metrics::describe_counter!(family.name, family.help),
            Kind::Gauge => metrics::describe_gauge!(family.name, family.help),
            Kind::Histogram => metrics::describe_histogram!(family.name, family.help),
        }
        let listed = family.labels.iter().all(|label| !label.values.is_empty());
        if !listed || family.kind == Kind::Histogram {
            continue;
        }
        for labels in label_sets(family.labels) {
            match family.kind {
                Kind::Counter => metrics::counter!(family.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(family.name, labels).increment(0.0),
                Kind::Histogram => {}
            }
        }
    }
}

/// Every combination of the listed values of `labels` (one empty set when there are none).
fn label_sets(labels: &[Label]) -> Vec<Vec<metrics::Label>> {
    labels.iter().fold(vec![Vec::new()], |sets, label| {
        sets.iter()
            .flat_map(|set| {
                label.values.iter().map(move |value| {
                    let mut set = set.clone();
                    set.push(metrics::Label::new(label.name, *value));
                    set
                })
            })
            .collect()
    })
}

/// How often [`upkeep_forever`] drains the recorded histogram samples.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains the histograms' recorded samples into their buckets every `UPKEEP_INTERVAL`, for
/// as long as the server runs. The recorder keeps every sample until it is drained, and only
/// rendering `/metrics` drains otherwise: unscraped, the server's memory grew by about 6 MiB a
/// minute under load (16 to 72 MiB in ten minutes of `benches/soak.sh`).
pub async fn upkeep_forever(handle: PrometheusHandle) {
    let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticker.tick().await;
        handle.run_upkeep();
    }
}

/// How often [`watch_database_forever`] asks the database whether it answers.
const DATABASE_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long one such question may take before the database counts as down.
const DATABASE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Sets `flashsale_database_up`: 1 when the database answered the last question, else 0.
pub fn set_database_up(up: bool) {
    metrics::gauge!("flashsale_database_up").set(if up { 1.0 } else { 0.0 });
}

/// Asks the database every `DATABASE_WATCH_INTERVAL` whether it answers, for as long as the
/// server runs: sets `flashsale_database_up`, and logs each change. The gauge is what an alert
/// watches; the 503s it causes are counted apart (`flashsale_database_unavailable_total`),
/// and neither needs a request to have come.
pub async fn watch_database_forever(store: SqlStore) {
    let mut ticker = tokio::time::interval(DATABASE_WATCH_INTERVAL);
    let mut was_up = true;
    loop {
        ticker.tick().await;
        let up = store.serves(DATABASE_PING_TIMEOUT).await;
        set_database_up(up);
        match (was_up, up) {
            (true, false) => tracing::warn!("the database does not answer"),
            (false, true) => tracing::info!("the database answers again"),
            _ => {}
        }
        was_up = up;
    }
}

/// The exposition text while the server waits for its database at start-up.
pub fn render_starting(handle: &PrometheusHandle) -> String {
    set_database_up(false);
    sample_sent();
    PROCESS.collect();
    handle.render()
}

/// The statements and transactions sent so far ([`crate::sql::sent`]), as counters.
fn sample_sent() {
    let (statements, transactions) = crate::sql::sent::totals();
    metrics::counter!("flashsale_db_statements_total").absolute(statements);
    metrics::counter!("flashsale_db_transactions_total").absolute(transactions);
}

/// The exposition text, with the pool's connections sampled now.
pub fn render(handle: &PrometheusHandle, store: &SqlStore) -> String {
    let (in_use, idle) = store.connections();
    metrics::gauge!("flashsale_db_connections", "state" => "in_use").set(f64::from(in_use));
    metrics::gauge!("flashsale_db_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("flashsale_db_connections_max").set(f64::from(store.max_connections()));
    sample_sent();
    PROCESS.collect();
    handle.render()
}

#[cfg(test)]
mod tests {
    //! The example alert rules of `docs/OPERATIONS.md`, held to what the server emits: an alert
    //! on a series that never exists can never fire.

    use std::collections::BTreeSet;

    use super::*;

    fn operations_md() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md");
        std::fs::read_to_string(path).expect("docs/OPERATIONS.md")
    }

    /// The GitHub anchors of the document's headings.
    fn anchors(markdown: &str) -> BTreeSet<String> {
        markdown
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .map(|heading| {
                heading
                    .trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect()
    }

    /// The example rules: the YAML block after "Example alert rules", one text per alert.
    fn alert_rules(markdown: &str) -> Vec<String> {
        let (_, after) = markdown
            .split_once("Example alert rules")
            .expect("the example rules");
        let block = after
            .split_once("```yaml")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(block, _)| block)
            .expect("a YAML block");
        block
            .split("- alert: ")
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    /// The metric names a PromQL text names, with each one's label matchers (`name`, `op`,
    /// `value`): words starting `flashsale_` or `process_`.
    fn series(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(['f', 'p']) {
            let candidate = rest.get(at..).unwrap_or_default();
            let word: String = candidate
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let boundary = at == 0
                || !rest
                    .get(..at)
                    .and_then(|before| before.chars().last())
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let after = candidate.get(word.len()..).unwrap_or_default();
            if boundary && (word.starts_with("flashsale_") || word.starts_with("process_")) {
                let matchers = after
                    .strip_prefix('{')
                    .and_then(|inner| inner.split_once('}'))
                    .map(|(inner, _)| matchers(inner))
                    .unwrap_or_default();
                found.push((word.clone(), matchers));
            }
            rest = candidate.get(word.len().max(1)..).unwrap_or_default();
        }
        found
    }

    /// `a="x",b=~"y|z"` as (label, value) pairs, one per alternative of a regex; a negative
    /// matcher only names its label.
    fn matchers(inner: &str) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for matcher in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let Some((label, value)) = matcher.split_once('=') else {
                continue;
            };
            let negative = label.ends_with('!');
            let label = label.trim_end_matches('!').trim().to_owned();
            let value = value.trim_start_matches('~').trim().trim_matches('"');
            if negative {
                pairs.push((label, String::new()));
            } else {
                pairs.extend(value.split('|').map(|v| (label.clone(), v.to_owned())));
            }
        }
        pairs
    }

    /// The family a series name belongs to: a histogram's series carry a suffix.
    fn family(series: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.name == series).or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = series.strip_suffix(suffix)?;
                FAMILIES
                    .iter()
                    .find(|f| f.name == base && f.kind == Kind::Histogram)
            })
        })
    }

    #[test]
    fn the_example_alerts_watch_emitted_series_with_a_severity_and_a_runbook() {
        let markdown = operations_md();
        let anchors = anchors(&markdown);
        let rules = alert_rules(&markdown);
        assert!(rules.len() >= 4, "the example rules: {rules:?}");
        for rule in &rules {
            let name = rule.lines().next().unwrap_or_default().trim();
            let severity = rule
                .lines()
                .find_map(|l| l.trim().strip_prefix("severity:"))
                .map(str::trim);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{name}: a severity label"
            );
            let runbook = rule
                .lines()
                .find_map(|l| l.trim().strip_prefix("runbook_url:"))
                .and_then(|url| url.trim().split_once('#'))
                .map(|(_, anchor)| anchor.to_owned());
            let runbook = runbook.unwrap_or_else(|| panic!("{name}: a runbook_url with an anchor"));
            assert!(
                anchors.contains(&runbook),
                "{name}: #{runbook} is a heading"
            );
            let expr = rule
                .split_once("expr:")
                .map(|(_, rest)| rest.split("labels:").next().unwrap_or(rest))
                .unwrap_or_else(|| panic!("{name}: an expr"));
            let named = series(expr);
            assert!(!named.is_empty(), "{name}: watches a series");
            for (series, matchers) in named {
                let family =
                    family(&series).unwrap_or_else(|| panic!("{name}: {series} is not emitted"));
                for (label, value) in matchers {
                    if label == "le" && family.kind == Kind::Histogram {
                        continue;
                    }
                    let listed = family.labels.iter().find(|l| l.name == label);
                    let listed =
                        listed.unwrap_or_else(|| panic!("{name}: {series} has no {label}"));
                    assert!(
                        value.is_empty()
                            || listed.values.is_empty()
                            || listed.values.contains(&value.as_str()),
                        "{name}: {series}{{{label}=\"{value}\"}} is never emitted"
                    );
                }
            }
        }
    }
}
