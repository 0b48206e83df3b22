//! `flashsale`: the command line. Parsing and dispatch only; the work is in the library.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use flashsale_server::clock::{Clock, SystemClock};
use flashsale_server::config::{Cli, Command, MigrateAction};
use flashsale_server::service::{self, Service};
use flashsale_server::signature::{self, Secret};
use flashsale_server::{reconcile, startup, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => startup::serve(args).await,
        Command::Migrate(args) => {
            let store = startup::connect(&args.database.database_url).await?;
            if args.action == Some(MigrateAction::Status) {
                for m in store.migrations().await.context("reading the migrations")? {
                    let state = if m.applied { "applied" } else { "pending" };
                    println!("{:04} {state:<7} {}", m.version, m.description);
                }
                return Ok(());
            }
            let applied = store.migrate().await.context("migrating")?;
            if applied.is_empty() {
                println!("nothing to apply: every migration is applied");
            }
            for m in applied {
                println!("applied {:04} {}", m.version, m.description);
            }
            Ok(())
        }
        Command::Seed(args) => {
            let service = service_on(&args.database_url).await?;
            let seeded = service.seed_demo().await.context("seeding")?;
            println!("seeded {seeded} products");
            Ok(())
        }
        Command::Sweep(args) => {
            let service = service_on(&args.database.database_url).await?;
            let report = service.sweep().await.context("sweeping")?;
            println!(
                "released {} holds, cancelled {} orders, purged {} records",
                report.holds_released, report.orders_cancelled, report.records_purged
            );
            Ok(())
        }
        Command::Report(args) => {
            // A report reads and never migrates; a database behind this build says so.
            let store = startup::connect(&args.database.database_url).await?;
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
            Ok(())
        }
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
            Ok(())
        }
    }
}

async fn service_on(
    url: &str,
) -> anyhow::Result<Service<flashsale_server::store::sql::SqlStore, Arc<dyn Clock>>> {
    let store = startup::open_store(url).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Service::new(store, clock, service::Config::default()))
}
