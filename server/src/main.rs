//! `flashsale`: the command line. Parsing and dispatch only; the work is in the library.
//!
//! Exit codes: 0 done; 1 an error (said on stderr, as one JSON line under `--log-format json`);
//! 2 a command line that does not parse; 3 `report` found payments to follow up.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use flashsale_server::config::{
    self, Cli, Command, MigrateAction, ReportArgs, WebhookSecretAction,
};
use flashsale_server::signature::{self, Secret};
use flashsale_server::{reconcile, secrets, startup, telemetry};
use flashsale_service::clock::{Clock, SystemClock};
use flashsale_service::{self as service, Service};

/// The exit code of a command line that does not parse, as clap's own.
const EXIT_USAGE: u8 = 2;
/// The exit code of `report` when it lists payments to follow up, for cron and alerting.
const EXIT_REPORT_FOUND: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    telemetry::init(cli.log_format);
    match run(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            telemetry::fatal(cli.log_format, &error);
            ExitCode::FAILURE
        }
    }
}

/// Help and version as clap prints them; a command line that does not parse as clap says it,
/// or as one JSON line when JSON logs were asked for.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let format = telemetry::format_asked_here();
    if informational || format == flashsale_server::config::LogFormat::Human {
        error.exit();
    }
    let message = error.render().to_string();
    telemetry::fatal(format, &anyhow::anyhow!(message.trim().to_owned()));
    ExitCode::from(EXIT_USAGE)
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => startup::serve(args).await?,
        Command::Migrate(args) => {
            let url = &args.database.database_url;
            if args.action == Some(MigrateAction::Status) {
                let store = startup::connect_existing(url).await?;
                for m in store.migrations().await.context("reading the migrations")? {
                    let state = if m.applied { "applied" } else { "pending" };
                    println!("{:04} {state:<7} {}", m.version, m.description);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let store = startup::connect(url).await?;
            let applied = store.migrate().await.context("migrating")?;
            if applied.is_empty() {
                println!("nothing to apply: every migration is applied");
            }
            for m in applied {
                println!("applied {:04} {}", m.version, m.description);
            }
        }
        Command::Seed(args) => {
            let service = service_on(&args.database_url).await?;
            let seeded = service.seed_demo().await.context("seeding")?;
            println!("seeded {seeded} products");
        }
        Command::Sweep(args) => {
            let service = service_on(&args.database.database_url).await?;
            let report = service.sweep_all().await.context("sweeping")?;
            println!(
                "expired {} holds ({} units), retired {} holds, cancelled {} orders, purged {} \
                 records",
                report.folded.holds,
                report.folded.units,
                report.holds_retired,
                report.orders_cancelled,
                report.records_purged
            );
        }
        Command::Report(args) => return report(args).await,
        Command::WebhookSecret(args) => match args.action {
            WebhookSecretAction::Show => {
                println!("{}", secrets::show(&args.database.database_url)?);
            }
        },
        Command::Completions(args) => {
            config::write_completions(args.shell, &mut std::io::stdout());
        }
        Command::Man => config::write_man_page(&mut std::io::stdout())?,
        Command::SignWebhook(args) => {
            let now_s = i64::try_from(SystemClock.now().as_ms() / 1_000).unwrap_or(i64::MAX);
            // The first of the rotation list, as `serve` checks it; an empty one signs nothing.
            let Some(first) = args.webhook_secret.into_iter().find(|s| !s.is_empty()) else {
                anyhow::bail!("--webhook-secret (FLASHSALE_WEBHOOK_SECRET) is empty");
            };
            let secret = Secret::new(first.into_bytes());
            let header = signature::sign(
                &secret,
                args.timestamp.unwrap_or(now_s),
                args.body.as_bytes(),
            );
            println!("{header}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flashsale report`: exits [`EXIT_REPORT_FOUND`] when there is anything to follow up.
async fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    // A report reads and never migrates; a database behind this build says so.
    let store = startup::connect_existing(&args.database.database_url).await?;
    let migrations = store.migrations().await.context("reading the migrations")?;
    if let Some(pending) = migrations.iter().find(|m| !m.applied) {
        anyhow::bail!(
            "migration {:04} {} is pending: run `flashsale migrate` first",
            pending.version,
            pending.description
        );
    }
    let report = reconcile::report(&store)
        .await
        .context("reading the records")?;
    if args.json {
        println!("{report:#}");
    } else {
        print!("{}", reconcile::render_report(&report));
    }
    Ok(if reconcile::records_to_follow_up(&report) > 0 {
        ExitCode::from(EXIT_REPORT_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

async fn service_on(
    url: &str,
) -> anyhow::Result<Service<flashsale_server::sql::SqlStore, Arc<dyn Clock>>> {
    let store = startup::open_store(url).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Service::new(store, clock, service::Config::default()))
}
