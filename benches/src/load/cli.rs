//! The `flashsale-load` command line: `run` (one measured scenario), `setup` (create products
//! through the admin API) and `report` (turn a file of `run --json` summaries into the markdown
//! table and the SVG chart of `docs/PERFORMANCE.md`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Most connections one run opens; far above what the 2-core machines here can use, it only
/// stops a typo from opening a million sockets.
pub const CONNECTIONS_MAX: u32 = 10_000;

/// Most products one `setup` creates, for the same reason.
pub const SETUP_PRODUCTS_MAX: u32 = 100_000;

/// Most holds an `expiry-storm` fill asks for: ten times the storm the scripts measure, and few
/// enough that a fill ends in minutes at the hot-hold rates of the machines here.
pub const FILL_HOLDS_MAX: u64 = 10_000_000;

/// HTTP load generator for the flashsale server.
#[derive(Debug, Parser)]
#[command(name = "flashsale-load", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one scenario over N keep-alive connections and print latency and status figures.
    Run(RunArgs),
    /// Create products through the admin API and print their ids.
    Setup(SetupArgs),
    /// Write the markdown table and SVG chart from a file of `run --json` results.
    Report(ReportArgs),
}

/// What each connection sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// `GET /healthz`: the ceiling of the HTTP stack, no database.
    Healthz,
    /// `GET /api/products/{--product}`.
    GetProduct,
    /// `POST /api/holds {"product_id":--product,"qty":1}`: every connection on one product.
    HotHolds,
    /// `POST /api/holds {"product_id":P,"qty":1}`, each request on a product P drawn at random
    /// from `--products A..B`: a sale over many products at once.
    SpreadHolds,
    /// Hold, then order, then a signed `paid` webhook, over `--products A..B`.
    Flow,
    /// Fill `--product` with `--fill N` holds, then measure holds and GETs on it for
    /// `--before` seconds before the first of them lapse and `--across` seconds across the
    /// lapse; see `load::storm`.
    ExpiryStorm,
}

impl Scenario {
    /// The name as typed on the command line, used in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthz => "healthz",
            Scenario::GetProduct => "get-product",
            Scenario::HotHolds => "hot-holds",
            Scenario::SpreadHolds => "spread-holds",
            Scenario::Flow => "flow",
            Scenario::ExpiryStorm => "expiry-storm",
        }
    }
}

/// `flashsale-load run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Server base URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub target: String,
    /// What to send.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONNECTIONS_MAX)))]
    pub connections: u32,
    /// Measured time after the warm-up: seconds (`10`, `2.5`) or humantime (`10s`, `1m`).
    /// `expiry-storm` ignores it, and `--warmup` and `--requests`: its windows are `--before`
    /// and `--across`.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time before the measured window whose samples are discarded.
    #[arg(long, default_value = "1", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Stop after this many requests in all (flows, for `flow`), warm-up included; the run
    /// still ends at the duration. For setup phases such as "place exactly N holds".
    #[arg(long)]
    pub requests: Option<u64>,
    /// Product for `get-product`, `hot-holds` and `expiry-storm`.
    #[arg(long, default_value_t = 1)]
    pub product: u64,
    /// Products for `flow` and `spread-holds`: `A..B` (inclusive), one id, or a comma-separated
    /// list (a Galera cluster numbers rows with gaps, one id in N per node). A `flow`
    /// connection i starts at the i-th and each flow moves to the next, round robin; each
    /// `spread-holds` request draws one at random.
    #[arg(long, default_value = "1..100", value_parser = parse_product_range)]
    pub products: ProductIds,
    /// Webhook signing secret (the server's `--webhook-secret`); required by `flow`.
    #[arg(long, env = "FLASHSALE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A request slower than this fails, counts as an error and drops its connection, so a
    /// stalled server cannot keep the run going past its duration.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `expiry-storm` (required there): holds to grant on `--product` before the windows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=FILL_HOLDS_MAX))]
    pub fill: Option<u64>,
    /// `expiry-storm`: connections of the fill; `--connections` when absent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONNECTIONS_MAX)))]
    pub fill_connections: Option<u32>,
    /// `expiry-storm`: the window measured after the fill, which must end before the first
    /// granted hold lapses.
    #[arg(long, default_value = "8", value_parser = parse_duration)]
    pub before: Duration,
    /// `expiry-storm`: the window measured across the lapse, from just before the first
    /// granted hold's deadline.
    #[arg(long, default_value = "20", value_parser = parse_duration)]
    pub across: Duration,
    /// `expiry-storm`: the server's process id, when it runs on this machine; each phase
    /// then reports the server's CPU time and resident memory, read from `/proc`.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The database's process id, for its CPU per request. By default, when the target is on
    /// this machine, the first process named `mariadbd` or `mysqld`.
    #[arg(long)]
    pub db_pid: Option<u32>,
    /// Runtime threads. One by default: the generator shares the cores with the server, and a
    /// single thread drives hundreds of connections without contending for them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Print one JSON document on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON document to this file (the human summary still goes to stdout
    /// unless `--json`), so a script can log the one and keep the other.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// `flashsale-load setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Server base URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub target: String,
    /// The server's `--admin-token`.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Stock of each product (at most u32::MAX).
    #[arg(long)]
    pub stock: u32,
    /// How many products to create.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(SETUP_PRODUCTS_MAX)))]
    pub products: u32,
    /// Product names are `<NAME> 1`, `<NAME> 2`, ...
    #[arg(long, default_value = "Load")]
    pub name: String,
    /// Price of each product in cents.
    #[arg(long, default_value_t = 100)]
    pub price_cents: u64,
    /// Print `{"ids":[...]}` instead of one id per line.
    #[arg(long)]
    pub json: bool,
}

/// `flashsale-load report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// JSON lines, one per run: `{"db":..,"figure":..,"connections":..,"result":<run --json>}`.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the SVG bar chart.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Markdown file whose `<!-- load:begin -->`..`<!-- load:end -->` region is replaced (a
    /// `## HTTP load` section with the markers is appended when they are absent).
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Markdown placed before the table (command, machine, date, commit).
    #[arg(long)]
    pub preamble: Option<PathBuf>,
}

/// The product ids a run spreads its requests over, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductIds {
    ids: Vec<u64>,
}

impl ProductIds {
    /// The ids in order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter().copied()
    }
}

/// Parses `A..B` (inclusive, `A <= B`), a single id `A`, or a list `A,B,C`.
pub fn parse_product_range(text: &str) -> Result<ProductIds, String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not a product id"))
    };
    let ids: Vec<u64> = if text.contains(',') {
        text.split(',').map(parse).collect::<Result<_, _>>()?
    } else {
        let (first, last) = match text.split_once("..") {
            Some((a, b)) => (parse(a)?, parse(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let id = parse(text)?;
                (id, id)
            }
        };
        if first > last {
            return Err(format!("empty range {first}..{last}"));
        }
        if last.saturating_sub(first) >= u64::from(SETUP_PRODUCTS_MAX) {
            return Err(format!("more than {SETUP_PRODUCTS_MAX} products"));
        }
        (first..=last).collect()
    };
    if ids.len() > SETUP_PRODUCTS_MAX as usize {
        return Err(format!("more than {SETUP_PRODUCTS_MAX} products"));
    }
    Ok(ProductIds { ids })
}

/// Parses plain seconds (`10`, `2.5`) or a humantime duration (`10s`, `1m30s`, `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2_500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn product_ranges_are_inclusive_and_lists_are_kept_in_order() {
        let ids = |ids: &[u64]| Ok(ProductIds { ids: ids.to_vec() });
        let range = parse_product_range("3..5");
        assert_eq!(range, ids(&[3, 4, 5]));
        assert_eq!(parse_product_range("3..=5"), range);
        assert_eq!(parse_product_range("7"), ids(&[7]));
        assert_eq!(parse_product_range("1,4, 7"), ids(&[1, 4, 7]));
        assert!(parse_product_range("1,x").is_err());
        assert!(parse_product_range("5..3").is_err());
        assert!(parse_product_range("a..3").is_err());
        assert!(parse_product_range("1..1000000").is_err());
    }
}
