//! The `flashsale` command line. Every flag can also come from the environment variable named in
//! its help, so a container or a systemd unit configures the server without arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// The embedded default database: a SQLite file in the working directory.
pub const DATABASE_URL_DEFAULT: &str = "sqlite:flashsale.db";
/// The variable that sets `--log-format`.
pub const LOG_FORMAT_ENV: &str = "FLASHSALE_LOG_FORMAT";

/// Flashsale: an inventory-hold service that cannot oversell.
#[derive(Debug, Parser)]
#[command(name = "flashsale", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = LOG_FORMAT_ENV,
        default_value = "human"
    )]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// The subcommands.
// Parsed once per process: `serve`'s settings being larger than the others' costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, seed the demo products on the embedded default, and serve HTTP.
    Serve(ServeArgs),
    /// Apply pending database migrations and list what was applied; `migrate status` lists
    /// every migration, applied or pending, and changes nothing.
    Migrate(MigrateArgs),
    /// Seed the ten demo products into an empty database (idempotent).
    Seed(DatabaseArgs),
    /// Run one sweep pass: release expired holds, cancel orders past their payment window.
    Sweep(SweepArgs),
    /// Print the `X-Flashsale-Signature` header value for a webhook body.
    SignWebhook(SignArgs),
    /// List the payments that did not become a sale: webhooks answered refund_required,
    /// conflict or unmatched, and orders cancelled when their payment window closed (the same
    /// records as `GET /api/admin/webhooks` and `GET /api/admin/orders`). Exits 3 when there
    /// is any, 0 when there is none.
    Report(ReportArgs),
    /// The webhook secret `serve` generated for a SQLite database (`show` prints it).
    WebhookSecret(WebhookSecretArgs),
    /// Print a shell's completion script, e.g. `flashsale completions bash >
    /// /usr/share/bash-completion/completions/flashsale`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `flashsale man > /usr/share/man/man1/flashsale.1`.
    Man,
}

/// `flashsale completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes `shell`'s completion script for `flashsale` to `out`, from the command line's own
/// definition, so it never lags behind a new flag.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "flashsale", out);
}

/// Writes the man page of `flashsale` (roff) to `out`, from the command line's own definition.
///
/// # Errors
/// `out` refuses the page.
pub fn write_man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// `flashsale webhook-secret`.
#[derive(Debug, Args)]
pub struct WebhookSecretArgs {
    /// What to do with it.
    #[arg(value_enum)]
    pub action: WebhookSecretAction,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What `flashsale webhook-secret` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WebhookSecretAction {
    /// Print the secret kept beside the SQLite database.
    Show,
}

/// `flashsale report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `flashsale migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// `status`: list the migrations instead of applying them.
    #[arg(value_enum)]
    pub action: Option<MigrateAction>,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What `flashsale migrate` does instead of applying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrateAction {
    /// List every migration, applied or pending.
    Status,
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database URL: `sqlite:PATH` or `mysql://USER:PASS@HOST:PORT/DB` (MariaDB 10.5+).
    #[arg(long, env = "DATABASE_URL", default_value = DATABASE_URL_DEFAULT)]
    pub database_url: String,
}

/// `flashsale serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: `HOST:PORT`, the host a name (`localhost`) or an address.
    #[arg(long, env = "FLASHSALE_BIND", default_value = "127.0.0.1:8000")]
    pub bind: String,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// How long a hold lasts (1s to 24h).
    #[arg(long, env = "FLASHSALE_HOLD_TTL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub hold_ttl: Duration,
    /// How long an order waits for its payment (1s to 7 days).
    #[arg(long, env = "FLASHSALE_PAYMENT_WINDOW", default_value = "15m", value_parser = humantime::parse_duration)]
    pub payment_window: Duration,
    /// Webhook signing secret (at least 16 bytes); repeat (or separate with commas) to accept
    /// several while rotating. Without one on SQLite, a secret is generated the first time,
    /// kept beside the database file and printed once (`flashsale webhook-secret show` prints
    /// it again).
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secret: Vec<String>,
    /// Read the webhook signing secrets from this file instead (one a line, or comma-separated),
    /// so they stay out of the environment and the process list. Under systemd,
    /// `LoadCredential=webhook-secret:PATH` does the same without this flag.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_SECRET_FILE",
        conflicts_with = "webhook_secret"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// Bearer token for the admin routes (at least 16 bytes); without one they are off (404).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read the admin token from this file instead. Under systemd,
    /// `LoadCredential=admin-token:PATH` does the same without this flag.
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Seed the ten demo products into an empty database (always done on the embedded default).
    /// The variable takes true/false, 1/0, yes/no, on/off.
    #[arg(
        long,
        env = "FLASHSALE_SEED_DEMO",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub seed_demo: bool,
    /// The most database connections this instance opens (16 on MySQL/MariaDB and 8 on
    /// SQLite unless set). Keep instances × this below the database's `max_connections`.
    #[arg(long, env = "FLASHSALE_DB_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: Option<u32>,
    /// How often the background sweep runs.
    #[arg(long, env = "FLASHSALE_SWEEP_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,
    /// How many expired hold rows, and how many overdue orders, one sweep transaction of a
    /// product retires and cancels at most: the product's lock is held that long. A product
    /// with more left gets its next chunk at the next sweep.
    #[arg(long, env = "FLASHSALE_SWEEP_CHUNK", default_value_t = flashsale_service::SWEEP_CHUNK_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(flashsale_service::SWEEP_CHUNK_MAX)))]
    pub sweep_chunk: u32,
    /// How many requests (holds, orders, webhooks, restocks, on any products) that arrive
    /// while a transaction runs the next transaction decides together, at most; 1 runs one
    /// transaction per request (for comparison).
    #[arg(long, env = "FLASHSALE_BATCH_MAX", default_value_t = flashsale_service::BATCH_MAX_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_max: u16,
    /// How many requests may wait for the next transaction before new ones get 503 `busy`.
    #[arg(long, env = "FLASHSALE_QUEUE_MAX", default_value_t = flashsale_service::QUEUE_MAX_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub queue_max: u16,
    /// How many group committers run, each deciding its own batches in its own transaction
    /// (holding one connection while it runs): requests go to the committer of their product,
    /// so batches of different products run side by side. On 2 cores more than one cost more
    /// CPU per request than it won (docs/PERFORMANCE.md, "Two committers"); on SQLite, which
    /// lets one transaction write at a time, a second only waits.
    #[arg(long, env = "FLASHSALE_COMMITTERS", default_value_t = flashsale_service::COMMITTERS_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(flashsale_service::COMMITTERS_MAX)))]
    pub committers: u16,
    /// How long `GET /api/products/{id}` may answer from this instance's cache (its own writes
    /// are always seen at once; other instances' at most this late); `0s` turns it off.
    #[arg(long, env = "FLASHSALE_CACHE_STALENESS", default_value = "1s", value_parser = humantime::parse_duration)]
    pub cache_staleness: Duration,
    /// How long the sweeper keeps a client request's `Idempotency-Key` record; a key used after
    /// its record is purged is a new request.
    #[arg(long, env = "FLASHSALE_REQUEST_KEY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub request_key_retention: Duration,
    /// How long the sweeper keeps a webhook's record; keep it past the payment provider's
    /// redeliveries: a delivery after its record is purged is applied as new.
    #[arg(long, env = "FLASHSALE_WEBHOOK_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub webhook_retention: Duration,
    /// How many client connections are served at once; more wait in the kernel's backlog until
    /// one closes. Keep it below the open-file limit (`ulimit -n`) minus the database pool.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a connection may take to send a request's headers, and may sit idle between
    /// requests, before it is closed.
    #[arg(long, env = "FLASHSALE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// How long a request may wait for its answer: past it the client gets 503
    /// `deadline_exceeded` with `Retry-After`, whatever the database is doing (a Galera cluster
    /// changing its members holds every commit for seconds). A write answered so may still take
    /// effect; a retry under the same `Idempotency-Key` answers what it did. At least 100ms.
    #[arg(long, env = "FLASHSALE_REQUEST_DEADLINE", default_value = "5s",
          value_parser = parse_request_deadline)]
    pub request_deadline: Duration,
    /// How long to keep trying to reach the database at start-up before giving up (exit 1):
    /// `forever` (the default, as a supervisor such as systemd wants: the server answers
    /// `/healthz` meanwhile and serves once the database answers) or a duration, `0s` for one
    /// attempt.
    #[arg(long, env = "FLASHSALE_CONNECT_TIMEOUT", default_value = "forever",
          value_parser = parse_connect_timeout)]
    pub connect_timeout: ConnectTimeout,
    /// Test only: this instance's clock runs this many milliseconds ahead of the system's
    /// (negative: behind), to test instances with skewed clocks on one database.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_offset_ms: i64,
}

/// How long `serve` keeps trying to reach its database at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectTimeout {
    /// Until it answers.
    Forever,
    /// At most this long; the attempt under way when it runs out is the last.
    After(Duration),
}

/// `forever`, or a duration as humantime writes it (`0s`, `30s`, `5m`).
/// The shortest request deadline taken: below it, a busy machine's ordinary answers would pass it.
const REQUEST_DEADLINE_MIN: Duration = Duration::from_millis(100);

fn parse_request_deadline(text: &str) -> Result<Duration, String> {
    let deadline = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if deadline < REQUEST_DEADLINE_MIN {
        return Err(format!(
            "a request deadline of {text} would refuse every request; at least {} is taken",
            humantime::format_duration(REQUEST_DEADLINE_MIN)
        ));
    }
    Ok(deadline)
}

fn parse_connect_timeout(text: &str) -> Result<ConnectTimeout, String> {
    if text == "forever" {
        return Ok(ConnectTimeout::Forever);
    }
    humantime::parse_duration(text)
        .map(ConnectTimeout::After)
        .map_err(|error| format!("{error}; expected `forever` or a duration such as 30s"))
}

/// `flashsale sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `flashsale sign-webhook`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The signing secrets, as `serve` takes them (repeat or comma-separate to rotate); it signs
    /// with the first.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_SECRET",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    pub webhook_secret: Vec<String>,
    /// The exact request body to sign.
    #[arg(long)]
    pub body: String,
    /// Unix time to sign at; now by default.
    #[arg(long)]
    pub timestamp: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_deadline_below_the_minimum_is_refused_with_the_minimum() {
        for short in ["0s", "99ms"] {
            let refused = parse_request_deadline(short).expect_err(short);
            assert!(refused.contains("100ms"), "{refused}");
        }
        assert_eq!(
            parse_request_deadline("100ms"),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(parse_request_deadline("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_request_deadline("soon").is_err());
    }
}
