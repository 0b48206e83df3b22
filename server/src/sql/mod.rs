//! The SQL storages: MySQL/MariaDB (InnoDB row locks) and SQLite (one writer at a time).
//!
//! One implementation serves both. Each step's body is written once and expanded for each
//! database by `on_conn!`, with the dialect's SQL picked where the two differ: MySQL locks rows
//! with `FOR UPDATE`; SQLite takes the write lock up front with `BEGIN IMMEDIATE` and has no row
//! locks. Rows are read as tuples and parsed into core types, with every stored word and range
//! checked on the way out ([`StoreError::Corrupt`] otherwise).
//!
//! MySQL sessions run at READ COMMITTED with a 5 s lock-wait timeout (and, on a Galera node, a
//! causal wait when a lookup by id misses a row, `transaction::caught_up`): locking reads see the latest
//! committed rows, no gap locks stretch across keys, and a concurrent insert of the same webhook
//! key fails on the unique key and is retried, finding the record. Batch inserts use `RETURNING`
//! (MariaDB 10.5) and their rows arrive as one `JSON_TABLE` (MariaDB 10.6), so MariaDB 10.6 or
//! later is needed (MySQL 8 lacks `RETURNING`).
//!
//! This file holds the pool: connecting, probing, migrating and beginning a transaction. Its
//! children: `transaction` (the [`Transaction`](flashsale_service::store::Transaction) steps:
//! reads, locks, commit), `writes` (a write-set's statements), `statements` (how statement texts
//! are spelled so they stay prepared), `decode` (rows into core types, checked) and `errors`
//! (what each database error means for the service). The reconciliation pages' queries live next to those pages
//! (`reconcile::queries`), borrowing the row decoding and error sorting from here.

mod decode;
mod errors;
pub mod sent;
mod statements;
#[cfg(test)]
mod tests;
mod transaction;
mod writes;

use std::str::FromStr;
use std::time::Duration;

use flashsale_core::{CancelReason, IdempotencyKey, Order, OrderStatus, Timestamp};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::MaybePoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, MySql, Pool, SqlSafeStr, Sqlite};

use self::errors::unreachable;
use flashsale_service::store::{Storage, StoreError, StoreResult, TxMode};

// What the reconciliation listings (`crate::reconcile::queries`) read rows with: they are
// queries of this store kept next to the pages they serve, so the store never names them.
pub(crate) use self::decode::{OrderRow, WebhookRow, order_from_row, webhook_from_row};
pub(crate) use self::errors::map_err;
pub(crate) use self::statements::int;

static MYSQL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a request waits for a pooled connection (reconnecting if the database went away)
/// before it is answered that the database is unavailable.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long SQLite waits for the write lock before answering busy.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle for longer than this is pinged before it is handed out (the
/// database may have closed it meanwhile, or restarted); see [`ping_if_idle`].
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The pools' check before handing out a connection: a ping, but only for one idle longer than
/// [`PING_IDLE_AFTER`]. sqlx pings every connection as it goes back to the pool, so one used a
/// moment ago was alive then; pinging it again would put a round trip before every
/// transaction's first statement, on the critical path of a hot product's batches. A connection
/// that dies between the two fails its `BEGIN`, which [`SqlStore::begin`] takes again on
/// another.
fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IDLE_AFTER {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// A connection pool on MySQL/MariaDB or SQLite.
#[derive(Clone, Debug)]
pub enum SqlStore {
    /// MySQL or MariaDB.
    MySql(MySqlPool),
    /// SQLite.
    Sqlite(Pool<Sqlite>),
}

/// A pool of connections to MySQL/MariaDB, and whether its server is a Galera node.
#[derive(Clone, Debug)]
pub struct MySqlPool {
    pool: Pool<MySql>,
    galera: bool,
}

impl std::ops::Deref for MySqlPool {
    type Target = Pool<MySql>;

    fn deref(&self) -> &Pool<MySql> {
        &self.pool
    }
}

/// Refuses to go on with a connection to a Galera node that is not synced with its cluster. A
/// node that rejoins takes client statements once it has joined, while it still applies the
/// write sets it missed: the cluster test saw an order through such a node, just after it
/// rejoined, not find a hold granted through another one, though that read was causal. A
/// donor or a node desynced by hand (`wsrep_desync`, for a backup) may lag behind the cluster
/// too, and does not serve either.
async fn synced(conn: &mut sqlx::MySqlConnection) -> StoreResult<()> {
    sent::statements(1);
    let state: Option<(String, String)> =
        sqlx::query_as("SHOW GLOBAL STATUS LIKE 'wsrep_local_state'")
            .fetch_optional(conn)
            .await
            .map_err(map_err)?;
    match state.as_ref().map(|(_, value)| value.as_str()) {
        // 4: synced (1 joining, 2 donor or desynced, 3 joined and catching up).
        Some("4") => Ok(()),
        other => Err(StoreError::Unavailable(format!(
            "this Galera node is not synced with its cluster (wsrep_local_state {}): until it \
             is, its reads may miss what the cluster committed",
            other.unwrap_or("unknown")
        ))),
    }
}

/// The pool's size on MySQL/MariaDB when [`PoolSettings::max_connections`] does not say.
pub const MYSQL_CONNECTIONS_DEFAULT: u32 = 16;
/// The pool's size on SQLite when [`PoolSettings::max_connections`] does not say: one writer at
/// a time, so more connections would only wait for the write lock.
pub const SQLITE_CONNECTIONS_DEFAULT: u32 = 8;

/// How [`SqlStore::connect_with`] opens its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// The most connections the pool opens; `None` for [`MYSQL_CONNECTIONS_DEFAULT`] or
    /// [`SQLITE_CONNECTIONS_DEFAULT`].
    pub max_connections: Option<u32>,
    /// Whether a SQLite file that does not exist is created (serving, migrating) or is an
    /// error (commands that only read must not leave an empty database behind).
    pub create_missing: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: None,
            create_missing: true,
        }
    }
}

impl SqlStore {
    /// Connects to `url` (`mysql://…`, `mariadb://…` or `sqlite:…`) with the default
    /// [`PoolSettings`], creating a SQLite file if missing.
    ///
    /// # Errors
    /// An unsupported scheme or a failed connection.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, PoolSettings::default()).await
    }

    /// The file a `sqlite:` URL names; `None` for another database or an in-memory one.
    pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
        if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
            return None;
        }
        let options = SqliteConnectOptions::from_str(url).ok()?;
        Some(options.get_filename().to_path_buf())
    }

    /// The most connections the pool opens.
    pub fn max_connections(&self) -> u32 {
        match self {
            SqlStore::MySql(pool) => pool.options().get_max_connections(),
            SqlStore::Sqlite(pool) => pool.options().get_max_connections(),
        }
    }

    /// Connects to `url` (`mysql://…`, `mariadb://…` or `sqlite:…`) with `settings`.
    ///
    /// # Errors
    /// An unsupported scheme or a failed connection (on SQLite, a missing file when
    /// `settings.create_missing` is false).
    pub async fn connect_with(url: &str, settings: PoolSettings) -> StoreResult<Self> {
        if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            let url = url.replacen("mariadb:", "mysql:", 1);
            let options = MySqlConnectOptions::from_str(&url)
                .map_err(map_err)?
                .statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
            // One connection first, on its own: the pool retries a failed connect until its
            // timeout and then reports only that it timed out, not why (refused, unknown host,
            // access denied, no such database).
            let mut probe = <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&options)
                .await
                .map_err(unreachable)?;
            // A server without Galera has no `wsrep_on` (MySQL) or has it off (MariaDB).
            let galera = sqlx::query_scalar::<MySql, i64>("SELECT CAST(@@wsrep_on AS SIGNED)")
                .fetch_one(&mut probe)
                .await
                .is_ok_and(|on| on == 1);
            let _ = sqlx::Connection::close(probe).await;
            let pool = MySqlPoolOptions::new()
                .max_connections(
                    settings
                        .max_connections
                        .unwrap_or(MYSQL_CONNECTIONS_DEFAULT),
                )
                .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .before_acquire(ping_if_idle)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .await?;
                        conn.execute("SET SESSION innodb_lock_wait_timeout = 5")
                            .await?;
                        // No causal wait on every read (a Galera node's `wsrep_sync_wait`,
                        // which a server's own configuration may set): only a lookup by id
                        // that misses a row waits, on a connection of its own.
                        conn.execute("SET SESSION wsrep_sync_wait = 0").await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .map_err(unreachable)?;
            Ok(SqlStore::MySql(MySqlPool { pool, galera }))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(map_err)?
                .create_if_missing(settings.create_missing)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(
                    settings
                        .max_connections
                        .unwrap_or(SQLITE_CONNECTIONS_DEFAULT),
                )
                .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .before_acquire(ping_if_idle)
                .connect_with(options)
                .await
                .map_err(map_err)?;
            Ok(SqlStore::Sqlite(pool))
        } else {
            // The URL itself stays out of the message: it may hold a password.
            Err(StoreError::Database(
                "unsupported database URL: expected sqlite:PATH or mysql://USER:PASS@HOST:PORT/DB"
                    .to_owned(),
            ))
        }
    }

    /// Applies the pending migrations, safely when several instances start at once on one
    /// database, and resuming a MySQL migration a killed process left unfinished; returns the
    /// ones this call applied.
    ///
    /// On MySQL the migrations run under a named lock (`GET_LOCK` with a finite wait: sqlx's own
    /// asks for an infinite one, which MariaDB 10.11 refuses at once with NULL). Under the lock a
    /// migration still marked unfinished was left by a process that died holding it, since the
    /// lock ends with its connection; its row is removed and the migration, written to run
    /// again over its own partial work, runs again. SQLite runs each migration in one
    /// transaction, so a killed process leaves nothing half-done; an instance that loses the
    /// race to apply a migration fails on it, and tries again until it sees the migration done.
    ///
    /// # Errors
    /// A migration that fails `MIGRATION_ATTEMPTS` times, or the lock held by another
    /// instance for `MIGRATION_WAIT`.
    pub async fn migrate(&self) -> StoreResult<Vec<MigrationState>> {
        let before = self.migrations().await?;
        self.apply_migrations().await?;
        let after = self.migrations().await?;
        Ok(after
            .into_iter()
            .filter(|m| m.applied && !before.iter().any(|b| b.version == m.version && b.applied))
            .collect())
    }

    async fn apply_migrations(&self) -> StoreResult<()> {
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let result = match self {
                SqlStore::MySql(pool) => migrate_mysql(pool).await,
                SqlStore::Sqlite(pool) => SQLITE_MIGRATOR
                    .run(pool)
                    .await
                    .map_err(|e| StoreError::Database(format!("migration failed: {e}"))),
            };
            match result {
                // On a Galera cluster a migration's DDL and its bookkeeping meet another node's
                // writes: a certification conflict or a brute-force abort is 1213, contention.
                Err(error @ (StoreError::Database(_) | StoreError::Contention(_)))
                    if attempt < MIGRATION_ATTEMPTS =>
                {
                    tracing::info!(%error, "migration did not apply; another instance may be applying it; retrying");
                    tokio::time::sleep(MIGRATION_RETRY_PAUSE).await;
                }
                Err(StoreError::Database(error) | StoreError::Contention(error)) => {
                    return Err(StoreError::Database(format!(
                        "{error} (after {attempt} attempts)"
                    )));
                }
                other => return other,
            }
        }
    }

    /// Every migration this build knows, in order, and whether the database has it applied.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn migrations(&self) -> StoreResult<Vec<MigrationState>> {
        // The versions recorded as applied, or none before the first migration made the table.
        macro_rules! applied_on {
            ($pool:expr, $table_exists:literal) => {{
                let table: Option<String> = sqlx::query_scalar($table_exists)
                    .fetch_optional($pool)
                    .await
                    .map_err(map_err)?;
                if table.is_none() {
                    Vec::new()
                } else {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all($pool)
                        .await
                        .map_err(map_err)?
                }
            }};
        }
        let applied: Vec<i64> = match self {
            SqlStore::MySql(pool) => applied_on!(
                &**pool,
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'"
            ),
            SqlStore::Sqlite(pool) => applied_on!(
                pool,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            ),
        };
        let migrator = match self {
            SqlStore::MySql(_) => &MYSQL_MIGRATOR,
            SqlStore::Sqlite(_) => &SQLITE_MIGRATOR,
        };
        Ok(migrator
            .iter()
            .map(|m| MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.contains(&m.version),
            })
            .collect())
    }

    /// Whether the database answers within `within`.
    pub async fn ping(&self, within: Duration) -> bool {
        let ping = async {
            match self {
                SqlStore::MySql(pool) => pool.execute("SELECT 1").await.is_ok(),
                SqlStore::Sqlite(pool) => pool.execute("SELECT 1").await.is_ok(),
            }
        };
        tokio::time::timeout(within, ping).await.unwrap_or(false)
    }

    /// Whether the database serves this schema within `within`: one read of the products
    /// table. [`SqlStore::ping`] is not enough for readiness: a Galera node outside the primary
    /// component answers a `SELECT 1` but refuses every statement that reads a table (1047),
    /// and an instance in front of it would be called ready while it answers every request with
    /// a 503.
    pub async fn serves(&self, within: Duration) -> bool {
        const READ: &str = "SELECT 1 FROM products LIMIT 1";
        let read = async {
            match self {
                SqlStore::MySql(pool) => {
                    let Ok(mut conn) = pool.acquire().await else {
                        return false;
                    };
                    conn.execute(READ).await.is_ok()
                        && (!pool.galera || synced(&mut conn).await.is_ok())
                }
                SqlStore::Sqlite(pool) => pool.execute(READ).await.is_ok(),
            }
        };
        tokio::time::timeout(within, read).await.unwrap_or(false)
    }

    /// The pool's connections: `(in use, idle)`.
    pub fn connections(&self) -> (u32, u32) {
        let (size, idle) = match self {
            SqlStore::MySql(pool) => (pool.size(), pool.num_idle()),
            SqlStore::Sqlite(pool) => (pool.size(), pool.num_idle()),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        (size.saturating_sub(idle), idle)
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        match self {
            SqlStore::MySql(pool) => pool.close().await,
            SqlStore::Sqlite(pool) => pool.close().await,
        }
    }
}

impl Storage for SqlStore {
    type Tx = SqlTx;

    async fn begin(&self, mode: TxMode) -> StoreResult<SqlTx> {
        let tx = match (self, mode) {
            // Sessions run at READ COMMITTED, where each statement reads anew; a snapshot
            // needs REPEATABLE READ for this one transaction, its read view taken at once.
            (SqlStore::MySql(pool), mode) => {
                let mut tx = match mode {
                    TxMode::Snapshot => {
                        begin_on(
                            pool,
                            Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
                            Some("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"),
                        )
                        .await?
                    }
                    TxMode::Read | TxMode::Write => begin_on(pool, None, None).await?,
                };
                if pool.galera {
                    synced(&mut tx).await?;
                }
                let cluster = pool.galera.then(|| pool.pool.clone());
                SqlTx::MySql(tx, cluster)
            }
            // In WAL mode a read transaction reads one snapshot, taken at its first read.
            (SqlStore::Sqlite(pool), TxMode::Read | TxMode::Snapshot) => {
                SqlTx::Sqlite(begin_on(pool, None, None).await?)
            }
            (SqlStore::Sqlite(pool), TxMode::Write) => {
                SqlTx::Sqlite(begin_on(pool, None, Some("BEGIN IMMEDIATE")).await?)
            }
        };
        Ok(tx)
    }
}

/// A transaction on a pooled connection, begun with `statement` (`BEGIN` by default) after
/// `setup` (a statement that sets the next transaction's properties) when given.
///
/// A pooled connection used a moment ago is handed out unpinged ([`ping_if_idle`]), so one that
/// died since fails its `BEGIN`; nothing ran on it, and the next connection is tried, as many
/// times as the pool has connections. A connection that cannot be had at all is the database
/// being away: [`StoreError::Unavailable`], not a transaction to retry at once.
async fn begin_on<DB: sqlx::Database>(
    pool: &Pool<DB>,
    setup: Option<&'static str>,
    statement: Option<&'static str>,
) -> StoreResult<sqlx::Transaction<'static, DB>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut tries = pool.options().get_max_connections();
    loop {
        let mut conn = pool.acquire().await.map_err(|error| match map_err(error) {
            StoreError::Connection(message) => StoreError::Unavailable(message),
            other => other,
        })?;
        sent::transaction();
        sent::statements(if setup.is_some() { 2 } else { 1 });
        let begun = async {
            if let Some(setup) = setup {
                (&mut *conn).execute(setup).await?;
            }
            let statement = statement.map(SqlSafeStr::into_sql_str);
            sqlx::Transaction::begin(MaybePoolConnection::PoolConnection(conn), statement).await
        };
        match begun.await.map_err(map_err) {
            Err(StoreError::Connection(message)) => {
                tries = tries.saturating_sub(1);
                if tries == 0 {
                    return Err(StoreError::Unavailable(message));
                }
                tracing::info!(%message, "a pooled connection failed its BEGIN; taking another");
            }
            begun => return begun,
        }
    }
}

/// One migration of this build, and whether the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationState {
    /// Its version, the number its file starts with.
    pub version: i64,
    /// Its name.
    pub description: String,
    /// Whether it is applied.
    pub applied: bool,
}

/// An open transaction on either database.
#[derive(Debug)]
pub enum SqlTx {
    /// MySQL or MariaDB; on a Galera node, with its pool, for a causal wait outside the
    /// transaction (`transaction::caught_up`).
    MySql(sqlx::Transaction<'static, MySql>, Option<Pool<MySql>>),
    /// SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl SqlTx {
    /// The SQL this transaction's database speaks.
    fn dialect(&self) -> Dialect {
        match self {
            SqlTx::MySql(..) => Dialect::MySql,
            SqlTx::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

/// Which SQL to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    MySql,
    Sqlite,
}

/// Runs `$body` with `$conn` bound to the transaction's connection and `$dialect` to its SQL
/// dialect, and the type `Db` to its sqlx database; the body is compiled once per database.
macro_rules! on_conn {
    ($tx:expr, |$conn:ident, $dialect:ident| $($body:tt)*) => {{
        $crate::sql::sent::statements(1);
        match $tx {
            $crate::sql::SqlTx::MySql(tx, _) => {
                #[allow(dead_code)]
                type Db = ::sqlx::MySql;
                let $conn = &mut **tx;
                let $dialect = $crate::sql::Dialect::MySql;
                $($body)*
            }
            $crate::sql::SqlTx::Sqlite(tx) => {
                #[allow(dead_code)]
                type Db = ::sqlx::Sqlite;
                let $conn = &mut **tx;
                let $dialect = $crate::sql::Dialect::Sqlite;
                $($body)*
            }
        }
    }};
}
pub(crate) use on_conn;

// The reconciliation listings' parameters and rows, part of this store's public API; the
// listings themselves (`SqlStore::webhook_page`, `SqlStore::order_page`) are in
// `reconcile::queries`.

/// Where a page of webhook records resumes: after this record, in `received_at`, key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookCursor {
    /// The last listed record's arrival.
    pub received_at: Timestamp,
    /// The last listed record's key.
    pub key: IdempotencyKey,
}

/// Which orders to list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only orders cancelled for this reason.
    pub cancel_reason: Option<CancelReason>,
}

/// An order as listed for reconciliation: the order and, when cancelled, why.
pub type ListedOrder = (Order, Option<CancelReason>);

/// How many prepared statements each MySQL connection keeps. Statements are the same text for
/// every batch whose lists round up to one size ([`padded`](statements::padded)), so a few
/// hundred cover them all; one evicted would cost more than its own prepare: sqlx closes it
/// with a `COM_STMT_CLOSE` that has no answer, and the next command's write then waits on
/// Nagle's algorithm for the server's delayed acknowledgement, 40 ms a batch (measured: spread
/// holds fell from 17,500 to 1,100 req/s once batches of many sizes had filled the default 100).
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// How long startup waits for another instance's migrations before giving up.
const MIGRATION_WAIT: Duration = Duration::from_secs(60);
/// How many times startup tries the migrations when they fail (another instance may have applied
/// the same one at the same time, or, on a Galera cluster, another node's write conflicted).
const MIGRATION_ATTEMPTS: u32 = 20;
/// How long a migration that failed waits before it looks again.
const MIGRATION_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// The MySQL named lock the migrations run under.
const MIGRATION_LOCK: &str = "flashsale_migrations";

/// One MySQL migration run under [`MIGRATION_LOCK`], on one connection.
async fn migrate_mysql(pool: &Pool<MySql>) -> StoreResult<()> {
    let mut conn = pool.acquire().await.map_err(map_err)?;
    let wait_s = MIGRATION_WAIT.as_secs();
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(MIGRATION_LOCK)
        .bind(wait_s)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    if locked != Some(1) {
        return Err(StoreError::Unavailable(format!(
            "another instance held the migration lock for {wait_s} s"
        )));
    }
    let result = async {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'",
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        if table.is_some() {
            // Unfinished under the lock we hold: its migrator died with its lock.
            let resumed = sqlx::query("DELETE FROM _sqlx_migrations WHERE success = FALSE")
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            if resumed.rows_affected() > 0 {
                tracing::warn!("rerunning a migration an earlier process left unfinished");
            }
        }
        let mut migrator =
            sqlx::migrate::Migrator::with_migrations(MYSQL_MIGRATOR.iter().cloned().collect());
        migrator.set_locking(false);
        migrator
            .run(&mut *conn)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))
    }
    .await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    if released.is_err() {
        // The lock ends with the connection: make sure the pool does not keep it.
        conn.detach();
    }
    result
}
