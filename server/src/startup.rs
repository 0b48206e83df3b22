//! Building and running the server: bind, wait for the database (serving health checks
//! meanwhile), migrate, seed, start the sweeper, serve until SIGINT or SIGTERM, then drain and
//! close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use flashsale_core::order::validate_payment_window;
use flashsale_core::rows::hold::{HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN};

use crate::config::{ConnectTimeout, DATABASE_URL_DEFAULT, ServeArgs};
use crate::deadline::Deadline;
use crate::request_log::Logged;
use crate::routes::{self, App};
use crate::sql::{PoolSettings, SqlStore};
use flashsale_service::clock::{Clock, OffsetClock, SystemClock};
use flashsale_service::store::StoreError;
use flashsale_service::{self as service, Service};

/// Connects to `url` and applies the migrations.
///
/// # Errors
/// A failed connection or migration.
pub async fn open_store(url: &str) -> anyhow::Result<SqlStore> {
    open_store_with(url, PoolSettings::default()).await
}

/// Connects to `url` with `settings` and applies the migrations.
///
/// # Errors
/// A failed connection or migration.
pub async fn open_store_with(url: &str, settings: PoolSettings) -> anyhow::Result<SqlStore> {
    let store = connect_with(url, settings).await?;
    let applied = store.migrate().await.context("migrating")?;
    for migration in applied {
        tracing::info!(
            version = migration.version,
            migration = %migration.description,
            "migration applied"
        );
    }
    Ok(store)
}

/// Connects to `url` without migrating.
///
/// # Errors
/// A failed connection, said without the URL's password.
pub async fn connect(url: &str) -> anyhow::Result<SqlStore> {
    connect_with(url, PoolSettings::default()).await
}

/// Connects to `url` with `settings`, without migrating.
///
/// # Errors
/// A failed connection, said without the URL's password.
pub async fn connect_with(url: &str, settings: PoolSettings) -> anyhow::Result<SqlStore> {
    SqlStore::connect_with(url, settings)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// Connects to the database at `url` for a command that only reads: a SQLite file that does not
/// exist is an error, never created (a misspelled path would otherwise leave an empty database
/// behind and say its migrations are pending).
///
/// # Errors
/// A missing SQLite file, or a failed connection.
pub async fn connect_existing(url: &str) -> anyhow::Result<SqlStore> {
    if let Some(file) = SqlStore::sqlite_file(url)
        && !file.exists()
    {
        bail!(
            "{} does not exist: check --database-url (`flashsale migrate` creates a database)",
            file.display()
        );
    }
    let settings = PoolSettings {
        create_missing: false,
        ..PoolSettings::default()
    };
    connect_with(url, settings).await
}

/// The service settings `args` ask for, checked against the core's limits.
///
/// # Errors
/// A TTL or window out of range.
pub fn service_config(args: &ServeArgs) -> anyhow::Result<service::Config> {
    let hold_ttl_ms = u64::try_from(args.hold_ttl.as_millis()).unwrap_or(u64::MAX);
    if !(HOLD_TTL_MS_MIN..=HOLD_TTL_MS_MAX).contains(&hold_ttl_ms) {
        bail!("--hold-ttl must be between 1s and 24h");
    }
    let payment_window_ms = u64::try_from(args.payment_window.as_millis()).unwrap_or(u64::MAX);
    validate_payment_window(payment_window_ms)
        .map_err(|_| anyhow::anyhow!("--payment-window must be between 1s and 7 days"))?;
    Ok(service::Config {
        hold_ttl_ms,
        payment_window_ms,
        batch_max: usize::from(args.batch_max),
        committers: usize::from(args.committers),
        queue_max: usize::from(args.queue_max),
        cache_staleness_ms: u64::try_from(args.cache_staleness.as_millis()).unwrap_or(u64::MAX),
        request_key_retention_ms: retention_ms(
            args.request_key_retention,
            "--request-key-retention",
        )?,
        webhook_retention_ms: retention_ms(args.webhook_retention, "--webhook-retention")?,
        sweep_chunk: args.sweep_chunk,
        ..service::Config::default()
    })
}

/// A retention in milliseconds, at least a second.
fn retention_ms(retention: Duration, flag: &str) -> anyhow::Result<u64> {
    let ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    if ms < 1_000 {
        bail!("{flag} must be at least 1s");
    }
    Ok(ms)
}

/// Runs `flashsale serve` until a shutdown signal.
///
/// The settings are checked and the port bound first. Then, until the database answers and is
/// migrated, the server answers only `/healthz` (200), `/readyz` (503) and `/metrics`, and tries
/// again with a growing, jittered pause (`--connect-timeout` bounds how long): a database down at
/// boot must not make a supervisor give up on the unit. Once ready it prints `listening on
/// http://ADDR` and serves every route.
///
/// # Errors
/// Bad settings, a port that cannot be bound, a database that refuses this server (a wrong
/// password, no such database) or did not answer within `--connect-timeout`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = service_config(&args)?;
    let url = args.database.database_url.clone();
    let admin_token = crate::secrets::admin_token(&args)?;
    let configured = crate::secrets::configured_webhook_secrets(&args)?;
    // Bound before the database is touched or a secret made: a port already taken changes
    // nothing.
    let listener = tokio::net::TcpListener::bind(args.bind.as_str())
        .await
        .with_context(|| format!("binding {} (expected HOST:PORT)", args.bind))?;
    let webhook_secrets = crate::secrets::webhook_secrets(&configured, &url)?;
    let metrics = install_metrics();
    let limits = Limits::of(&args);
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(%local, database = %redact(&url), "accepting connections; waiting for the database");
    let settings = PoolSettings {
        max_connections: args.db_max_connections,
        create_missing: true,
    };
    let waiting = Waiting {
        listener: &listener,
        metrics: metrics.clone(),
        limits,
    };
    let Some(store) = waiting
        .until_ready(&url, settings, args.connect_timeout)
        .await?
    else {
        tracing::info!("stopped before the database was ready");
        return Ok(());
    };
    crate::metrics::set_database_up(true);
    let service = Service::new(store.clone(), clock_of(&args), config);
    if args.seed_demo || url == DATABASE_URL_DEFAULT {
        let seeded = service.seed_demo().await.context("seeding demo products")?;
        if seeded > 0 {
            tracing::info!(seeded, "seeded demo products");
        }
    }
    if admin_token.is_none() {
        tracing::info!("no admin token: admin routes are off");
    }
    let app = Arc::new(App {
        service,
        webhook_secrets,
        admin_token,
        metrics,
    });
    tracing::info!(%local, database = %redact(&url), "listening");
    // Tests and scripts read this line to learn the port when binding port 0.
    println!("listening on http://{local}");
    let mut background = vec![
        tokio::spawn(sweep_forever(app.clone(), args.sweep_interval)),
        tokio::spawn(crate::metrics::watch_database_forever(store.clone())),
    ];
    if let Some(handle) = app.metrics.clone() {
        background.push(tokio::spawn(crate::metrics::upkeep_forever(handle)));
    }
    serve_connections(&listener, routes::routes(app), limits, shutdown_signal()).await;
    for task in background {
        task.abort();
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The Prometheus recorder, or none (the routes answer 404) if another is installed.
fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    match crate::metrics::install() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics are off");
            None
        }
    }
}

/// The clock `args` ask for: the system's, or (in tests) one offset from it.
fn clock_of(args: &ServeArgs) -> Arc<dyn Clock> {
    if args.clock_offset_ms == 0 {
        return Arc::new(SystemClock);
    }
    tracing::warn!(
        offset_ms = args.clock_offset_ms,
        "this instance's clock is offset from the system's (a test setting)"
    );
    Arc::new(OffsetClock {
        offset_ms: args.clock_offset_ms,
    })
}

/// The pause after the first failed attempt to reach the database at start-up; it doubles
/// after each one, up to [`CONNECT_PAUSE_MAX`], and its second half is random, so instances
/// restarted together do not knock on a recovering database together.
const CONNECT_PAUSE_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two attempts to reach the database at start-up.
const CONNECT_PAUSE_MAX: Duration = Duration::from_secs(10);

/// `serve` waiting for its database: serving [`routes::starting_routes`] meanwhile.
struct Waiting<'a> {
    listener: &'a tokio::net::TcpListener,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    limits: Limits,
}

impl Waiting<'_> {
    /// The database at `url`, connected and migrated; `None` when a shutdown signal came first.
    ///
    /// # Errors
    /// A database that refuses this server, or did not answer within `timeout`.
    async fn until_ready(
        self,
        url: &str,
        settings: PoolSettings,
        timeout: ConnectTimeout,
    ) -> anyhow::Result<Option<SqlStore>> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let preparing = async {
            tokio::select! {
                prepared = connect_and_migrate(url, settings, timeout) => {
                    let _ = sender.send(prepared);
                }
                () = shutdown_signal() => {}
            }
        };
        let routes = routes::starting_routes(self.metrics);
        serve_connections(self.listener, routes, self.limits, preparing).await;
        receiver.await.ok().transpose()
    }
}

/// Connects to `url` and migrates, trying again while the database does not answer (down,
/// refusing connections, a Galera node out of its cluster), each attempt logged, for at most
/// `timeout`.
///
/// # Errors
/// The database refused this server (a wrong password, no such database, a failed migration),
/// or still did not answer when `timeout` ran out.
async fn connect_and_migrate(
    url: &str,
    settings: PoolSettings,
    timeout: ConnectTimeout,
) -> anyhow::Result<SqlStore> {
    let started = tokio::time::Instant::now();
    let mut pause = CONNECT_PAUSE_FIRST;
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let error = match open_store_with(url, settings).await {
            Ok(store) => return Ok(store),
            Err(error) if database_away(&error) => error,
            Err(error) => return Err(error),
        };
        let waited = started.elapsed();
        let wait = match timeout {
            ConnectTimeout::After(limit) if waited >= limit => {
                return Err(error.context(format!(
                    "gave up after {attempt} attempts in {:.1} s (--connect-timeout)",
                    waited.as_secs_f64()
                )));
            }
            ConnectTimeout::After(limit) => {
                flashsale_service::backoff::jittered(pause).min(limit.saturating_sub(waited))
            }
            ConnectTimeout::Forever => flashsale_service::backoff::jittered(pause),
        };
        tracing::warn!(
            attempt,
            error = format!("{error:#}"),
            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "the database does not answer; retrying"
        );
        tokio::time::sleep(wait).await;
        pause = pause.saturating_mul(2).min(CONNECT_PAUSE_MAX);
    }
}

/// Whether `error` says the database is away (worth another attempt), not that it refused us.
fn database_away(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(StoreError::Unavailable(_) | StoreError::Connection(_))
        )
    })
}

/// What one instance allows its clients.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once.
    max_connections: usize,
    /// How long a connection may take to send a request's headers or sit idle between requests.
    header_timeout: Duration,
    /// How long a request may wait for its answer ([`Deadline`]).
    request_deadline: Duration,
}

impl Limits {
    fn of(args: &ServeArgs) -> Limits {
        Limits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            header_timeout: args.header_timeout.max(Duration::from_millis(100)),
            request_deadline: args.request_deadline,
        }
    }
}

/// How long shutdown waits for requests in flight before it closes their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 with `filter` on `listener` until `shutdown`, then drains.
///
/// At most `limits.max_connections` connections are open at once: past it the loop stops
/// accepting, and new connections wait in the kernel's backlog, so descriptors cannot run out.
/// A connection whose request headers take longer than `limits.header_timeout`, or that sits
/// idle that long between requests (hyper runs the timer whenever it waits for a request's
/// head), is closed, so idle and slow clients give their slot back.
async fn serve_connections<F>(
    listener: &tokio::net::TcpListener,
    filter: F,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let service = Logged::new(Deadline::new(
        warp::service(filter),
        limits.request_deadline,
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was accepted: pause
                // rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(
                hyper_util::rt::TokioIo::new(crate::refusals::Refusals::new(stream)),
                hyper_util::service::TowerToHyperService::new(service.clone()),
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}

async fn sweep_forever(app: Arc<App>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    loop {
        ticker.tick().await;
        match app.service.sweep().await {
            Ok(report)
                if !report.folded.is_empty()
                    || report.holds_retired > 0
                    || report.orders_cancelled > 0
                    || report.records_purged > 0 =>
            {
                tracing::info!(
                    holds_expired = report.folded.holds,
                    units_expired = report.folded.units,
                    holds_retired = report.holds_retired,
                    orders_cancelled = report.orders_cancelled,
                    records_purged = report.records_purged,
                    "sweep"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sweep failed; next tick retries"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// The URL without its password, for every message that names it.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only URLs with a host have a password, and those accept a replaced one.
            if parsed.set_password(Some("***")).is_err() {
                return "<a database URL>".to_owned();
            }
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        // Not a URL: say nothing of it rather than risk printing a secret.
        Err(_) => "<a database URL that does not parse>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{redact, service, service_config};

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact("mysql://root:hunter2@db.example:3306/sale"),
            "mysql://root:***@db.example:3306/sale"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1:3306/x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(redact("sqlite:flashsale.db"), "sqlite:flashsale.db");
        assert!(!redact("mysql://u:p%40ss@h/db").contains("p%40ss"));
        assert!(!redact("not a url hunter2").contains("hunter2"));
    }

    /// (With no `FLASHSALE_*` setting of these flags in the environment, as in CI.)
    #[test]
    fn serve_without_flags_runs_the_services_defaults() {
        let cli =
            crate::config::Cli::try_parse_from(["flashsale", "serve"]).expect("the defaults parse");
        let crate::config::Command::Serve(args) = cli.command else {
            panic!("serve parses as serve");
        };
        let config = service_config(&args).expect("the defaults are valid");
        assert_eq!(config, service::Config::default());
        // The documented defaults (docs/OPERATIONS.md).
        assert_eq!(config.request_key_retention_ms, 86_400_000, "24h");
        assert_eq!(config.webhook_retention_ms, 2_592_000_000, "30days");
        assert_eq!(config.cache_staleness_ms, 1_000, "1s");
    }
}
