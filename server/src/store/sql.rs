//! The SQL storages: MySQL/MariaDB (InnoDB row locks) and SQLite (one writer at a time).
//!
//! One implementation serves both. Each step's body is written once and expanded for each
//! database by `on_conn!`, with the dialect's SQL picked where the two differ: MySQL locks rows
//! with `FOR UPDATE`; SQLite takes the write lock up front with `BEGIN IMMEDIATE` and has no row
//! locks. Rows are read as tuples and parsed into core types, with every stored word and range
//! checked on the way out ([`StoreError::Corrupt`] otherwise).
//!
//! MySQL sessions run at READ COMMITTED with a 5 s lock-wait timeout (and, on a Galera node, causal
//! reads for the lookups by id, [`CAUSAL`]): locking reads see the latest
//! committed rows, no gap locks stretch across keys, and a concurrent insert of the same webhook
//! key fails on the unique key and is retried, finding the record. Batch inserts use `RETURNING`,
//! which needs MariaDB 10.5 or later (MySQL 8 lacks it).

use std::str::FromStr;
use std::time::Duration;

use flashsale_core::{
    CancelReason, Cents, Counters, Fingerprint, Hold, HoldId, HoldState, IdempotencyKey, Inserted,
    KeyedRequest, NewHold, NewOrder, Order, OrderId, OrderStatus, PaymentStatus, Product,
    ProductId, Qty, ReleaseReason, RequestRecord, Settlement, Timestamp, WebhookRecord,
    WebhookResult, WriteSet,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::pool::MaybePoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Executor, MySql, Pool, SqlSafeStr, Sqlite};

use super::{Dump, ProductRead, RecordKind, Storage, StoreError, StoreResult, Transaction, TxMode};

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
                        // which a server's own configuration may set): only the reads that
                        // look up rows by id wait, each in its own statement ([`CAUSAL`]).
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
                Err(error @ StoreError::Database(_)) if attempt < MIGRATION_ATTEMPTS => {
                    tracing::info!(%error, "migration did not apply; another instance may be applying it; retrying");
                    tokio::time::sleep(MIGRATION_RETRY_PAUSE).await;
                }
                Err(StoreError::Database(error)) => {
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
                SqlTx::MySql(tx)
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
    /// MySQL or MariaDB.
    MySql(sqlx::Transaction<'static, MySql>),
    /// SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl SqlTx {
    /// The SQL this transaction's database speaks.
    fn dialect(&self) -> Dialect {
        match self {
            SqlTx::MySql(_) => Dialect::MySql,
            SqlTx::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

/// Which SQL to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    MySql,
    Sqlite,
}

/// Runs `$body` with `$conn` bound to the transaction's connection and `$dialect` to its SQL
/// dialect, and the type `Db` to its sqlx database; the body is compiled once per database.
macro_rules! on_conn {
    ($tx:expr, |$conn:ident, $dialect:ident| $($body:tt)*) => {
        match $tx {
            SqlTx::MySql(tx) => {
                #[allow(dead_code)]
                type Db = MySql;
                let $conn = &mut **tx;
                let $dialect = Dialect::MySql;
                $($body)*
            }
            SqlTx::Sqlite(tx) => {
                #[allow(dead_code)]
                type Db = Sqlite;
                let $conn = &mut **tx;
                let $dialect = Dialect::Sqlite;
                $($body)*
            }
        }
    };
}

type ProductRow = (u64, String, u64, u32, u32, u64);
type HoldRow = (u64, u64, u32, u64, u64, String, Option<String>, Option<u64>);
type OrderRow = (u64, u64, u64, u32, u64, String, u64, u64, Option<String>);
type WebhookRow = (String, u64, String, String, String, Option<u64>, u64);
type RequestKeyRow = (
    String,
    String,
    Option<u64>,
    Option<u32>,
    Option<u64>,
    u64,
    bool,
    u64,
);

impl Transaction for SqlTx {
    async fn commit(self) -> StoreResult<()> {
        let committed = match self {
            SqlTx::MySql(tx) => tx.commit().await.map_err(map_err),
            SqlTx::Sqlite(tx) => tx.commit().await.map_err(map_err),
        };
        // The COMMIT was sent: a connection lost now may have lost only its answer.
        committed.map_err(|error| match error {
            StoreError::Connection(message) => StoreError::CommitUnknown(message),
            other => other,
        })
    }

    async fn product_view(
        &mut self,
        id: ProductId,
        now: Timestamp,
    ) -> StoreResult<Option<ProductRead>> {
        type Row = (u64, String, u64, u32, u32, u64, u64, Option<u64>);
        let row: Option<Row> = on_conn!(self, |conn, d| {
            let sql = match d {
                Dialect::MySql => {
                    "SELECT p.id, p.name, p.price_cents, p.stock, p.units_held, p.units_received, \
                     CAST(COALESCE((SELECT SUM(h.qty) FROM holds h WHERE h.product_id = p.id \
                     AND h.state = 'held' AND h.expires_at <= ?), 0) AS UNSIGNED), \
                     (SELECT MIN(h.expires_at) FROM holds h WHERE h.product_id = p.id \
                     AND h.state = 'held' AND h.expires_at > ?) \
                     FROM products p WHERE p.id = ?"
                }
                Dialect::Sqlite => {
                    "SELECT p.id, p.name, p.price_cents, p.stock, p.units_held, p.units_received, \
                     COALESCE((SELECT SUM(h.qty) FROM holds h WHERE h.product_id = p.id \
                     AND h.state = 'held' AND h.expires_at <= ?), 0), \
                     (SELECT MIN(h.expires_at) FROM holds h WHERE h.product_id = p.id \
                     AND h.state = 'held' AND h.expires_at > ?) \
                     FROM products p WHERE p.id = ?"
                }
            };
            sqlx::query_as::<Db, Row>(sql)
                .bind(int(now.as_ms()))
                .bind(int(now.as_ms()))
                .bind(int(id.0))
                .fetch_optional(conn)
                .await
        })
        .map_err(map_err)?;
        let Some((id, name, price_cents, stock, held, received, expired, next)) = row else {
            return Ok(None);
        };
        let product = product_from_row((id, name, price_cents, stock, held, received));
        let expired = u32::try_from(expired).map_err(|_| {
            StoreError::Corrupt(format!("product {id} has {expired} expired units"))
        })?;
        Ok(Some(ProductRead {
            product,
            units_expired: Qty(expired),
            next_deadline: next.map(Timestamp),
        }))
    }

    async fn lock_products(&mut self, ids: &[ProductId]) -> StoreResult<Vec<Product>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT id, name, price_cents, stock, units_held, units_received FROM products \
             WHERE id IN",
            ids.len(),
            "ORDER BY id",
            true,
        );
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<ProductRow> = self.fetch_by_id(sql, &ids, true).await?;
        Ok(rows.into_iter().map(product_from_row).collect())
    }

    async fn insert_product(
        &mut self,
        name: &str,
        price_cents: Cents,
        stock: Qty,
    ) -> StoreResult<Product> {
        let received = u64::from(stock.0);
        let (id,): (u64,) = on_conn!(self, |conn, _d| {
            sqlx::query_as::<Db, _>(
                "INSERT INTO products (name, price_cents, stock, units_held, units_received) \
                 VALUES (?, ?, ?, 0, ?) RETURNING id",
            )
            .bind(name)
            .bind(int(price_cents.0))
            .bind(stock.0)
            .bind(int(received))
            .fetch_one(conn)
            .await
        })
        .map_err(map_err)?;
        Ok(Product {
            id: ProductId(id),
            name: name.to_owned(),
            price_cents,
            stock,
            units_held: Qty::ZERO,
            units_received: received,
        })
    }

    async fn expired_holds(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<Hold>> {
        if products.is_empty() {
            return Ok(Vec::new());
        }
        // Through the products' own index: through (state, expires_at) the locking read would
        // scan, and lock, the expired holds of every product, which other transactions hold
        // under their own products' locks (a deadlock, seen).
        let head = match self.dialect() {
            Dialect::MySql => {
                "SELECT id, product_id, qty, created_at, expires_at, state, release_reason, \
                 order_id FROM holds FORCE INDEX (holds_by_product_state) \
                 WHERE state = 'held' AND expires_at <= ? AND product_id IN"
            }
            Dialect::Sqlite => {
                "SELECT id, product_id, qty, created_at, expires_at, state, release_reason, \
                 order_id FROM holds INDEXED BY holds_by_product_state \
                 WHERE state = 'held' AND expires_at <= ? AND product_id IN"
            }
        };
        let sql = in_list(self.dialect(), head, products.len(), "", true);
        let rows: Vec<HoldRow> = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql)).bind(int(now.as_ms()));
            for id in padded(products) {
                query = query.bind(int(id.0));
            }
            query.fetch_all(conn).await
        })
        .map_err(map_err)?;
        rows.into_iter().map(hold_from_row).collect()
    }

    async fn write(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        match self.write_all(writes).await {
            Err(StoreError::Corrupt(message)) if self.ended_under_its_writes().await => {
                Err(StoreError::Contention(format!(
                    "the transaction ended before its writes, none of which was made (a \
                     Galera node applying another node's write rolls back a transaction that \
                     has only read, and may not say so): {message}"
                )))
            }
            done => done,
        }
    }

    async fn holds(&mut self, ids: &[HoldId], lock: bool) -> StoreResult<Vec<Hold>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT id, product_id, qty, created_at, expires_at, state, release_reason, \
             order_id FROM holds WHERE id IN",
            ids.len(),
            "ORDER BY id",
            lock,
        );
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<HoldRow> = self.fetch_by_id(sql, &ids, lock).await?;
        rows.into_iter().map(hold_from_row).collect()
    }

    async fn orders(&mut self, ids: &[OrderId], lock: bool) -> StoreResult<Vec<Order>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, \
             payment_due_at, cancel_reason FROM orders WHERE id IN",
            ids.len(),
            "ORDER BY id",
            lock,
        );
        let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<OrderRow> = self.fetch_by_id(sql, &ids, lock).await?;
        rows.into_iter().map(order_from_row).collect()
    }

    async fn lock_webhooks(&mut self, keys: &[IdempotencyKey]) -> StoreResult<Vec<WebhookRecord>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT idempotency_key, hold_id, status, fingerprint, result, order_id, \
             received_at FROM webhooks WHERE idempotency_key IN",
            keys.len(),
            "ORDER BY idempotency_key",
            true,
        );
        let keys: Vec<Listed<'_>> = keys.iter().map(|key| Listed::Key(key.as_str())).collect();
        let rows: Vec<WebhookRow> = self.fetch_listed(sql, &keys).await?;
        rows.into_iter().map(webhook_from_row).collect()
    }

    async fn lock_request_keys(
        &mut self,
        keys: &[IdempotencyKey],
    ) -> StoreResult<Vec<RequestRecord>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = in_list(
            self.dialect(),
            "SELECT idempotency_key, request, product_id, qty, hold_id, resource_id, created, \
             created_at FROM request_keys WHERE idempotency_key IN",
            keys.len(),
            "ORDER BY idempotency_key",
            true,
        );
        let keys: Vec<Listed<'_>> = keys.iter().map(|key| Listed::Key(key.as_str())).collect();
        let rows: Vec<RequestKeyRow> = self.fetch_listed(sql, &keys).await?;
        rows.into_iter().map(request_key_from_row).collect()
    }

    async fn products_due(&mut self, now: Timestamp, limit: u32) -> StoreResult<Vec<ProductId>> {
        let rows: Vec<(u64,)> = on_conn!(self, |conn, _d| {
            sqlx::query_as::<Db, _>(
                "SELECT product_id FROM holds WHERE state = 'held' AND expires_at <= ? \
                 UNION SELECT product_id FROM orders WHERE status = 'pre_payment' AND payment_due_at <= ? \
                 ORDER BY 1 LIMIT ?",
            )
            .bind(int(now.as_ms()))
            .bind(int(now.as_ms()))
            .bind(limit)
            .fetch_all(conn)
            .await
        })
        .map_err(map_err)?;
        Ok(rows.into_iter().map(|(id,)| ProductId(id)).collect())
    }

    async fn lock_overdue_orders(
        &mut self,
        products: &[ProductId],
        now: Timestamp,
    ) -> StoreResult<Vec<Order>> {
        if products.is_empty() {
            return Ok(Vec::new());
        }
        // Through the products' own index, for the reason `expired_holds` gives.
        let head = match self.dialect() {
            Dialect::MySql => {
                "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, \
                 payment_due_at, cancel_reason FROM orders \
                 FORCE INDEX (orders_by_product_status_due) WHERE status = 'pre_payment' \
                 AND payment_due_at <= ? AND product_id IN"
            }
            Dialect::Sqlite => {
                "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, \
                 payment_due_at, cancel_reason FROM orders \
                 INDEXED BY orders_by_product_status_due WHERE status = 'pre_payment' \
                 AND payment_due_at <= ? AND product_id IN"
            }
        };
        let sql = in_list(self.dialect(), head, products.len(), "", true);
        let rows: Vec<OrderRow> = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql)).bind(int(now.as_ms()));
            for id in padded(products) {
                query = query.bind(int(id.0));
            }
            query.fetch_all(conn).await
        })
        .map_err(map_err)?;
        rows.into_iter().map(order_from_row).collect()
    }

    async fn purge_records(
        &mut self,
        kind: RecordKind,
        before: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        // SQLite has no DELETE ... LIMIT unless built with it; a rowid subquery is the same.
        let sql = match (kind, self.dialect()) {
            (RecordKind::RequestKeys, Dialect::MySql) => {
                "DELETE FROM request_keys WHERE created_at < ? LIMIT ?"
            }
            (RecordKind::RequestKeys, Dialect::Sqlite) => {
                "DELETE FROM request_keys WHERE rowid IN \
                 (SELECT rowid FROM request_keys WHERE created_at < ? LIMIT ?)"
            }
            (RecordKind::Webhooks, Dialect::MySql) => {
                "DELETE FROM webhooks WHERE received_at < ? LIMIT ?"
            }
            (RecordKind::Webhooks, Dialect::Sqlite) => {
                "DELETE FROM webhooks WHERE rowid IN \
                 (SELECT rowid FROM webhooks WHERE received_at < ? LIMIT ?)"
            }
        };
        let deleted = on_conn!(self, |conn, _d| {
            sqlx::query::<Db>(sql)
                .bind(int(before.as_ms()))
                .bind(limit)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(map_err)?;
        Ok(deleted)
    }

    async fn product_count(&mut self) -> StoreResult<u64> {
        let (count,): (i64,) = on_conn!(self, |conn, _d| {
            sqlx::query_as::<Db, _>("SELECT COUNT(*) FROM products")
                .fetch_one(conn)
                .await
        })
        .map_err(map_err)?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("{count} products")))
    }

    async fn dump(&mut self) -> StoreResult<Dump> {
        let (products, holds, orders, webhooks, request_keys) = on_conn!(self, |conn, _d| {
            let products: Vec<ProductRow> = sqlx::query_as::<Db, _>(
                "SELECT id, name, price_cents, stock, units_held, units_received FROM products \
                 ORDER BY id",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            let holds: Vec<HoldRow> = sqlx::query_as::<Db, _>(
                "SELECT id, product_id, qty, created_at, expires_at, state, release_reason, order_id \
                 FROM holds ORDER BY id",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            let orders: Vec<OrderRow> = sqlx::query_as::<Db, _>(
                "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, payment_due_at, \
                 cancel_reason FROM orders ORDER BY id",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            let webhooks: Vec<WebhookRow> = sqlx::query_as::<Db, _>(
                "SELECT idempotency_key, hold_id, status, fingerprint, result, order_id, received_at \
                 FROM webhooks ORDER BY idempotency_key",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            let request_keys: Vec<RequestKeyRow> = sqlx::query_as::<Db, _>(
                "SELECT idempotency_key, request, product_id, qty, hold_id, resource_id, created, \
                 created_at FROM request_keys ORDER BY idempotency_key",
            )
            .fetch_all(conn)
            .await
            .map_err(map_err)?;
            Ok::<_, StoreError>((products, holds, orders, webhooks, request_keys))
        })?;
        Ok(Dump {
            products: products.into_iter().map(product_from_row).collect(),
            holds: holds
                .into_iter()
                .map(hold_from_row)
                .collect::<StoreResult<_>>()?,
            orders: orders
                .into_iter()
                .map(order_from_row)
                .collect::<StoreResult<_>>()?,
            webhooks: webhooks
                .into_iter()
                .map(webhook_from_row)
                .collect::<StoreResult<_>>()?,
            request_keys: request_keys
                .into_iter()
                .map(request_key_from_row)
                .collect::<StoreResult<_>>()?,
        })
    }
}

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

/// Reconciliation reads: pages of records for an operator, each in one read transaction of
/// its own, never locking a row.
impl SqlStore {
    /// Up to `limit` webhook records with `result` (any when `None`), oldest first, after
    /// `after`.
    ///
    /// # Errors
    /// The database failed, or a stored row is corrupt.
    pub async fn webhook_page(
        &self,
        result: Option<WebhookResult>,
        after: Option<&WebhookCursor>,
        limit: u32,
    ) -> StoreResult<Vec<WebhookRecord>> {
        const COLUMNS: &str = "SELECT idempotency_key, hold_id, status, fingerprint, result, \
            order_id, received_at FROM webhooks WHERE ";
        const AFTER: &str = "(received_at > ? OR (received_at = ? AND idempotency_key > ?)) \
            ORDER BY received_at, idempotency_key LIMIT ?";
        let sql = match result {
            Some(_) => format!("{COLUMNS}result = ? AND {AFTER}"),
            None => format!("{COLUMNS}{AFTER}"),
        };
        // Every key is at least one character long, so (0, "") precedes every record.
        let (at, key) = after.map_or((0, ""), |c| (int(c.received_at.as_ms()), c.key.as_str()));
        let mut tx = self.begin(TxMode::Read).await?;
        let rows: Vec<WebhookRow> = on_conn!(&mut tx, |conn, _d| {
            let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql));
            if let Some(result) = result {
                query = query.bind(result.as_str());
            }
            query
                .bind(at)
                .bind(at)
                .bind(key)
                .bind(limit)
                .fetch_all(conn)
                .await
        })
        .map_err(map_err)?;
        tx.commit().await?;
        rows.into_iter().map(webhook_from_row).collect()
    }

    /// Up to `limit` orders matching `filter`, by id, after order `after`.
    ///
    /// # Errors
    /// The database failed, or a stored row is corrupt.
    pub async fn order_page(
        &self,
        filter: OrderFilter,
        after: Option<OrderId>,
        limit: u32,
    ) -> StoreResult<Vec<ListedOrder>> {
        let mut sql = String::from(
            "SELECT id, hold_id, product_id, qty, total_cents, status, created_at, \
             payment_due_at, cancel_reason FROM orders WHERE id > ?",
        );
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.cancel_reason.is_some() {
            sql.push_str(" AND cancel_reason = ?");
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        let mut tx = self.begin(TxMode::Read).await?;
        let rows: Vec<OrderRow> = on_conn!(&mut tx, |conn, _d| {
            let mut query =
                sqlx::query_as::<Db, _>(AssertSqlSafe(sql)).bind(int(after.map_or(0, |id| id.0)));
            if let Some(status) = filter.status {
                query = query.bind(status.as_str());
            }
            if let Some(reason) = filter.cancel_reason {
                query = query.bind(reason.as_str());
            }
            query.bind(limit).fetch_all(conn).await
        })
        .map_err(map_err)?;
        tx.commit().await?;
        rows.into_iter()
            .map(|row| order_from_row(row).map(|order| (order, order.cancel_reason)))
            .collect()
    }
}

/// The prefix of a read by id that waits, on a Galera node, until the node has applied every
/// write set the cluster committed before it, so a hold or order made through one node is found
/// through any other (an order placed through node B right after its hold through node A). Only
/// these reads wait: a wait goes through the cluster's group communication and cost about a
/// batch's whole time when every statement waited (measured on one node: hot holds 1,300 req/s
/// with a wait on every read, 22,300 without). A locking read waits only when it misses a row
/// ([`SqlTx::fetch_by_id`]): a write decided on a row another node changed meanwhile fails
/// certification at commit and is retried, but a row not applied here yet is no write to
/// certify. No effect on a server that is not in a cluster.
const CAUSAL: &str = "SET STATEMENT wsrep_sync_wait = 1 FOR ";

/// The most ids one statement of a write names. A batch names at most a few per command, but a
/// product's expired holds and overdue orders are released in the transaction that finds them,
/// however many: tens of thousands when a hot product's holds expire together, past what one
/// statement may bind (65,535 placeholders on MySQL, 32,766 on SQLite). A power of two, so the
/// statements stay in the few shapes [`padded`] gives.
const IDS_PER_STATEMENT: usize = 1_024;

/// How many prepared statements each MySQL connection keeps. Statements are the same text for
/// every batch whose lists round up to one size ([`padded`]), so a few hundred cover them all;
/// one evicted would cost more than its own prepare: sqlx closes it with a `COM_STMT_CLOSE`
/// that has no answer, and the next command's write then waits on Nagle's algorithm for the
/// server's delayed acknowledgement, 40 ms a batch (measured: spread holds fell from 17,500 to
/// 1,100 req/s once batches of many sizes had filled the default 100).
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// How many values a list of `n` is padded to: the next power of two, so a statement's text
/// takes one of a few shapes whatever the batch's size, and stays in the statement cache.
fn padded_len(n: usize) -> usize {
    n.max(1).checked_next_power_of_two().unwrap_or(n)
}

/// `items`, then their last repeated up to [`padded_len`]: a value twice in an `IN` list, or
/// twice as a `CASE` arm, changes nothing.
fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let extra = padded_len(items.len()).saturating_sub(items.len());
    items
        .iter()
        .chain(items.last().into_iter().cycle().take(extra))
}

/// The condition every write carries on MySQL, true only inside an explicit transaction: a
/// write that runs after the database ended its transaction changes nothing, and
/// [`Transaction::write`] then reports a conflict instead of committing half a batch.
///
/// A Galera node applying another node's write rolls back a local transaction holding the rows
/// it needs (a brute-force abort). A transaction that has only read is not replicated, and
/// MariaDB 10.11 may end it without an error to its client: the client's next statements then
/// run one by one in autocommit mode. The cluster test's binary logs showed it: a batch's
/// product update and its hold inserts committed as two transactions, the update computed from
/// counters read before the other node's write, which it overwrote.
macro_rules! in_transaction {
    () => {
        "@@in_transaction = 1"
    };
}

/// [`in_transaction!`] in `dialect`: SQLite's transactions end only when the store ends them.
fn in_transaction(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => in_transaction!(),
        Dialect::Sqlite => "1",
    }
}

/// `table` as the target of an update that finds its rows by id and checks their state
/// (`WHERE state = ... AND id IN (...)`). SQLite is told to look the ids up by rowid: its planner
/// otherwise takes the index that starts with the state column and reads every row in that state
/// (every active hold of a hot product: 15 ms a statement with 300,000 of them, and the flow 25x
/// slower). MySQL's optimizer takes the primary key by itself.
fn by_id(dialect: Dialect, table: &'static str) -> String {
    match dialect {
        Dialect::MySql => table.to_owned(),
        Dialect::Sqlite => format!("{table} NOT INDEXED"),
    }
}

/// Releases `n` held holds by id: binds the reason, then the ids.
fn release_holds_sql(dialect: Dialect, n: usize) -> String {
    format!(
        "UPDATE {} SET state = 'released', release_reason = ? \
         WHERE {} AND state = 'held' AND id IN ({})",
        by_id(dialect, "holds"),
        in_transaction(dialect),
        marks(n)
    )
}

/// Marks `n` held holds consumed: binds (hold, order) pairs, then the hold ids.
fn consume_holds_sql(dialect: Dialect, n: usize) -> String {
    format!(
        "UPDATE {} SET state = 'consumed', order_id = CASE id {} END \
         WHERE {} AND state = 'held' AND id IN ({})",
        by_id(dialect, "holds"),
        vec!["WHEN ? THEN ?"; n].join(" "),
        in_transaction(dialect),
        marks(n)
    )
}

/// Settles `n` orders waiting for payment: binds the status and cancel reason, then the ids.
fn settle_orders_sql(dialect: Dialect, n: usize) -> String {
    format!(
        "UPDATE {} SET status = ?, cancel_reason = ? \
         WHERE {} AND status = 'pre_payment' AND id IN ({})",
        by_id(dialect, "orders"),
        in_transaction(dialect),
        marks(n)
    )
}

/// `<head> (?, ?, ...) <tail>` with `n` marks, padded ([`padded_len`]), and MySQL's row-lock
/// suffix when `lock`: one statement reads every row of a kind a batch needs. On the primary
/// key, InnoDB takes the locks in key order, the global lock order.
fn in_list(dialect: Dialect, head: &str, n: usize, tail: &str, lock: bool) -> String {
    let lock = match (dialect, lock) {
        (Dialect::MySql, true) => " FOR UPDATE",
        (Dialect::MySql | Dialect::Sqlite, _) => "",
    };
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(" {tail}")
    };
    format!("{head} ({}){tail}{lock}", marks(padded_len(n)))
}

/// `n` comma-separated `?`.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `n` comma-separated copies of a row's marks, `(?, ?, ...)`.
fn rows_of_marks(n: usize, row: &str) -> String {
    vec![row; n].join(", ")
}

/// The rows of a batch's insert as one JSON array of arrays, for MySQL's `JSON_TABLE`: one
/// statement text whatever the number of rows.
fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> String {
    serde_json::Value::Array(rows.collect()).to_string()
}

/// Checks that a statement changed as many rows as it named: fewer means a row was not in the
/// state the decision read, which the locks rule out unless the data is corrupt.
fn expect_all(rows_affected: u64, expected: usize, what: &str) -> StoreResult<()> {
    if rows_affected == expected as u64 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "{expected} {what} to change, {rows_affected} changed"
        )))
    }
}

/// One value of an `IN` list ([`in_list`]): a row's id or a record's key.
enum Listed<'a> {
    Id(u64),
    Key(&'a str),
}

impl SqlTx {
    /// The rows of `sql`, a read with one `IN` list ([`in_list`]), `values` bound to it in order
    /// and padded as the list is.
    async fn fetch_listed<R>(&mut self, sql: String, values: &[Listed<'_>]) -> StoreResult<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        on_conn!(self, |conn, _d| {
            let mut query = sqlx::query_as::<Db, R>(AssertSqlSafe(sql));
            for value in padded(values) {
                query = match *value {
                    Listed::Id(id) => query.bind(int(id)),
                    Listed::Key(key) => query.bind(key),
                };
            }
            query.fetch_all(conn).await
        })
        .map_err(map_err)
    }

    /// The rows of `sql`, a read of rows by id with one `IN` list ([`in_list`]) of `ids`
    /// (distinct), locking them when `lock`. On MySQL a read without locks is causal
    /// ([`CAUSAL`]). A locking read is not, at first: a row another node changed meanwhile makes
    /// this transaction fail certification at commit, and it is retried. But a row another node
    /// made and this one has not applied yet is simply missing, and a refusal (an unknown hold,
    /// say) writes nothing for certification to catch; so a locking read that misses some of
    /// its ids is made again, causal, before the batch decides they do not exist.
    async fn fetch_by_id<R>(&mut self, sql: String, ids: &[u64], lock: bool) -> StoreResult<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        let listed: Vec<Listed<'_>> = ids.iter().map(|&id| Listed::Id(id)).collect();
        if self.dialect() == Dialect::Sqlite {
            return self.fetch_listed(sql, &listed).await;
        }
        if !lock {
            return self.fetch_listed(format!("{CAUSAL}{sql}"), &listed).await;
        }
        let rows: Vec<R> = self.fetch_listed(sql.clone(), &listed).await?;
        if rows.len() >= ids.len() {
            return Ok(rows);
        }
        self.fetch_listed(format!("{CAUSAL}{sql}"), &listed).await
    }
}

/// The statements [`Transaction::write`] is made of: one per kind of row change, each covering
/// every row of its kind the batch writes.
impl SqlTx {
    /// Every statement of [`Transaction::write`], in order.
    async fn write_all(&mut self, writes: &WriteSet) -> StoreResult<Inserted> {
        let mut inserted = Inserted::default();
        self.update_products(&writes.products).await?;
        self.release_holds(&writes.holds_released).await?;
        inserted.holds = self.insert_holds(&writes.holds_inserted).await?;
        inserted.orders = self.insert_orders(&writes.orders_inserted).await?;
        let unresolved = |v: flashsale_core::Violation| StoreError::Corrupt(v.to_string());
        let consumed = (writes.orders_inserted.iter().zip(&inserted.orders))
            .map(|(order, &id)| Ok((inserted.hold(order.hold_id)?, id)))
            .collect::<Result<Vec<_>, flashsale_core::Violation>>()
            .map_err(unresolved)?;
        self.consume_holds(&consumed).await?;
        let settled = (writes.orders_updated.iter())
            .map(|&(id, settlement)| Ok((inserted.order(id)?, settlement)))
            .collect::<Result<Vec<_>, flashsale_core::Violation>>()
            .map_err(unresolved)?;
        self.settle_orders(&settled).await?;
        let webhooks = (writes.webhooks.iter())
            .map(|record| inserted.webhook_record(record))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unresolved)?;
        self.insert_webhooks(&webhooks).await?;
        let keys = (writes.request_keys.iter())
            .map(|record| inserted.request_record(record))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unresolved)?;
        self.insert_request_keys(&keys).await?;
        Ok(inserted)
    }

    /// Whether the database ended this transaction before its writes ran: they then ran, one
    /// by one, outside it and changed nothing ([`in_transaction!`]). Never on SQLite.
    async fn ended_under_its_writes(&mut self) -> bool {
        match self {
            SqlTx::MySql(tx) => {
                sqlx::query_scalar::<MySql, i64>("SELECT CAST(@@in_transaction AS SIGNED)")
                    .fetch_one(&mut **tx)
                    .await
                    .is_ok_and(|open| open == 0)
            }
            SqlTx::Sqlite(_) => false,
        }
    }

    /// Sets the counters of every product written, in one statement.
    async fn update_products(&mut self, products: &[Counters]) -> StoreResult<()> {
        if products.is_empty() {
            return Ok(());
        }
        let n = padded_len(products.len());
        let case = |column: &str| {
            let arms = vec!["WHEN ? THEN ?"; n].join(" ");
            format!("{column} = CASE id {arms} END")
        };
        let sql = format!(
            "UPDATE products SET {}, {}, {} WHERE {} AND id IN ({})",
            case("stock"),
            case("units_held"),
            case("units_received"),
            in_transaction(self.dialect()),
            marks(n)
        );
        let done = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
            for p in padded(products) {
                query = query.bind(int(p.id.0)).bind(p.stock.0);
            }
            for p in padded(products) {
                query = query.bind(int(p.id.0)).bind(p.units_held.0);
            }
            for p in padded(products) {
                query = query.bind(int(p.id.0)).bind(int(p.units_received));
            }
            for p in padded(products) {
                query = query.bind(int(p.id.0));
            }
            query.execute(conn).await.map(|r| r.rows_affected())
        })
        .map_err(map_err)?;
        expect_all(done, products.len(), "products")
    }

    /// Releases held holds, one statement per reason and [`IDS_PER_STATEMENT`] holds; each must
    /// still be held.
    async fn release_holds(&mut self, released: &[(HoldId, ReleaseReason)]) -> StoreResult<()> {
        for reason in [ReleaseReason::Expired, ReleaseReason::PaymentFailed] {
            let all: Vec<u64> = released
                .iter()
                .filter(|&&(_, r)| r == reason)
                .map(|&(id, _)| id.0)
                .collect();
            for ids in all.chunks(IDS_PER_STATEMENT) {
                let sql = release_holds_sql(self.dialect(), padded_len(ids.len()));
                let done = on_conn!(self, |conn, _d| {
                    let mut query =
                        sqlx::query::<Db>(AssertSqlSafe(sql.clone())).bind(reason.as_str());
                    for &id in padded(ids) {
                        query = query.bind(int(id));
                    }
                    query.execute(conn).await.map(|r| r.rows_affected())
                })
                .map_err(map_err)?;
                expect_all(done, ids.len(), "held holds to release")?;
            }
        }
        Ok(())
    }

    /// Inserts granted holds in one statement; returns their ids, in order.
    async fn insert_holds(&mut self, holds: &[NewHold]) -> StoreResult<Vec<HoldId>> {
        if holds.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<(u64,)> = match self.dialect() {
            Dialect::MySql => {
                let rows = json_rows(holds.iter().map(|new| {
                    serde_json::json!([
                        int(new.product_id.0),
                        new.grant.qty.0,
                        int(new.grant.created_at.as_ms()),
                        int(new.grant.expires_at.as_ms())
                    ])
                }));
                on_conn!(self, |conn, _d| {
                    sqlx::query_as::<Db, _>(concat!(
                        "INSERT INTO holds (product_id, qty, created_at, expires_at, state) \
                         SELECT product_id, qty, created_at, expires_at, 'held' FROM JSON_TABLE(?, \
                         '$[*]' COLUMNS (n FOR ORDINALITY, product_id BIGINT PATH '$[0]', \
                         qty INT UNSIGNED PATH '$[1]', created_at BIGINT PATH '$[2]', \
                         expires_at BIGINT PATH '$[3]')) AS batch WHERE ",
                        in_transaction!(),
                        " ORDER BY n RETURNING id"
                    ))
                    .bind(rows)
                    .fetch_all(conn)
                    .await
                })
            }
            Dialect::Sqlite => {
                let sql = format!(
                    "INSERT INTO holds (product_id, qty, created_at, expires_at, state) VALUES {} \
                     RETURNING id",
                    rows_of_marks(holds.len(), "(?, ?, ?, ?, 'held')")
                );
                on_conn!(self, |conn, _d| {
                    let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql));
                    for new in holds {
                        query = query
                            .bind(int(new.product_id.0))
                            .bind(new.grant.qty.0)
                            .bind(int(new.grant.created_at.as_ms()))
                            .bind(int(new.grant.expires_at.as_ms()));
                    }
                    query.fetch_all(conn).await
                })
            }
        }
        .map_err(map_err)?;
        ascending(ids, holds.len(), "holds").map(|ids| ids.into_iter().map(HoldId).collect())
    }

    /// Inserts orders in one statement; returns their ids, in order.
    async fn insert_orders(&mut self, orders: &[NewOrder]) -> StoreResult<Vec<OrderId>> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<(u64,)> = match self.dialect() {
            Dialect::MySql => {
                let rows = json_rows(orders.iter().map(|order| {
                    serde_json::json!([
                        int(order.hold_id.0),
                        int(order.product_id.0),
                        order.qty.0,
                        int(order.total_cents.0),
                        order.status.as_str(),
                        int(order.created_at.as_ms()),
                        int(order.payment_due_at.as_ms())
                    ])
                }));
                on_conn!(self, |conn, _d| {
                    sqlx::query_as::<Db, _>(concat!(
                        "INSERT INTO orders (hold_id, product_id, qty, total_cents, status, \
                         created_at, payment_due_at) SELECT hold_id, product_id, qty, \
                         total_cents, status, created_at, payment_due_at FROM JSON_TABLE(?, \
                         '$[*]' COLUMNS (n FOR ORDINALITY, hold_id BIGINT PATH '$[0]', \
                         product_id BIGINT PATH '$[1]', qty INT UNSIGNED PATH '$[2]', \
                         total_cents BIGINT PATH '$[3]', status VARCHAR(16) PATH '$[4]', \
                         created_at BIGINT PATH '$[5]', payment_due_at BIGINT PATH '$[6]')) \
                         AS batch WHERE ",
                        in_transaction!(),
                        " ORDER BY n RETURNING id"
                    ))
                    .bind(rows)
                    .fetch_all(conn)
                    .await
                })
            }
            Dialect::Sqlite => {
                let sql = format!(
                    "INSERT INTO orders (hold_id, product_id, qty, total_cents, status, \
                     created_at, payment_due_at) VALUES {} RETURNING id",
                    rows_of_marks(orders.len(), "(?, ?, ?, ?, ?, ?, ?)")
                );
                on_conn!(self, |conn, _d| {
                    let mut query = sqlx::query_as::<Db, _>(AssertSqlSafe(sql));
                    for order in orders {
                        query = query
                            .bind(int(order.hold_id.0))
                            .bind(int(order.product_id.0))
                            .bind(order.qty.0)
                            .bind(int(order.total_cents.0))
                            .bind(order.status.as_str())
                            .bind(int(order.created_at.as_ms()))
                            .bind(int(order.payment_due_at.as_ms()));
                    }
                    query.fetch_all(conn).await
                })
            }
        }
        .map_err(map_err)?;
        ascending(ids, orders.len(), "orders").map(|ids| ids.into_iter().map(OrderId).collect())
    }

    /// Marks held holds consumed by their new orders, in one statement.
    async fn consume_holds(&mut self, consumed: &[(HoldId, OrderId)]) -> StoreResult<()> {
        if consumed.is_empty() {
            return Ok(());
        }
        let n = padded_len(consumed.len());
        let sql = consume_holds_sql(self.dialect(), n);
        let done = on_conn!(self, |conn, _d| {
            let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
            for (hold, order) in padded(consumed) {
                query = query.bind(int(hold.0)).bind(int(order.0));
            }
            for (hold, _) in padded(consumed) {
                query = query.bind(int(hold.0));
            }
            query.execute(conn).await.map(|r| r.rows_affected())
        })
        .map_err(map_err)?;
        expect_all(done, consumed.len(), "held holds to consume")
    }

    /// Moves pre-payment orders to their terminal status, with the reason when cancelled: one
    /// statement per settlement and [`IDS_PER_STATEMENT`] orders; anything but every named row
    /// updated is corruption.
    async fn settle_orders(&mut self, settled: &[(OrderId, Settlement)]) -> StoreResult<()> {
        let kinds = [
            Settlement::Paid,
            Settlement::Cancelled(CancelReason::PaymentFailed),
            Settlement::Cancelled(CancelReason::PaymentWindowClosed),
        ];
        for settlement in kinds {
            let all: Vec<u64> = (settled.iter())
                .filter(|&&(_, s)| s == settlement)
                .map(|&(id, _)| id.0)
                .collect();
            for ids in all.chunks(IDS_PER_STATEMENT) {
                let sql = settle_orders_sql(self.dialect(), padded_len(ids.len()));
                let done = on_conn!(self, |conn, _d| {
                    let mut query = sqlx::query::<Db>(AssertSqlSafe(sql.clone()))
                        .bind(settlement.status().as_str())
                        .bind(settlement.cancel_reason().map(CancelReason::as_str));
                    for &id in padded(ids) {
                        query = query.bind(int(id));
                    }
                    query.execute(conn).await.map(|r| r.rows_affected())
                })
                .map_err(map_err)?;
                expect_all(done, ids.len(), "pre-payment orders to settle")?;
            }
        }
        Ok(())
    }

    /// Inserts webhook records in one statement.
    async fn insert_webhooks(&mut self, records: &[WebhookRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self.dialect() {
            Dialect::MySql => {
                let rows = json_rows(records.iter().map(|record| {
                    serde_json::json!([
                        record.key.as_str(),
                        int(record.hold_id.0),
                        record.status.as_str(),
                        record.fingerprint.to_string(),
                        record.result.as_str(),
                        record.order_id.map(|id| int(id.0)),
                        int(record.received_at.as_ms())
                    ])
                }));
                on_conn!(self, |conn, _d| {
                    sqlx::query::<Db>(concat!(
                        "INSERT INTO webhooks (idempotency_key, hold_id, status, fingerprint, \
                         result, order_id, received_at) SELECT idempotency_key, hold_id, status, \
                         fingerprint, result, order_id, received_at FROM JSON_TABLE(?, '$[*]' \
                         COLUMNS (n FOR ORDINALITY, idempotency_key VARCHAR(255) PATH '$[0]', \
                         hold_id BIGINT PATH '$[1]', status VARCHAR(16) PATH '$[2]', \
                         fingerprint VARCHAR(16) PATH '$[3]', result VARCHAR(32) PATH '$[4]', \
                         order_id BIGINT PATH '$[5]', received_at BIGINT PATH '$[6]')) AS batch \
                         WHERE ",
                        in_transaction!(),
                        " ORDER BY n"
                    ))
                    .bind(rows)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
                })
            }
            Dialect::Sqlite => {
                let sql = format!(
                    "INSERT INTO webhooks (idempotency_key, hold_id, status, fingerprint, result, \
                     order_id, received_at) VALUES {}",
                    rows_of_marks(records.len(), "(?, ?, ?, ?, ?, ?, ?)")
                );
                on_conn!(self, |conn, _d| {
                    let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
                    for record in records {
                        query = query
                            .bind(record.key.as_str())
                            .bind(int(record.hold_id.0))
                            .bind(record.status.as_str())
                            .bind(record.fingerprint.to_string())
                            .bind(record.result.as_str())
                            .bind(record.order_id.map(|id| int(id.0)))
                            .bind(int(record.received_at.as_ms()));
                    }
                    query.execute(conn).await.map(|r| r.rows_affected())
                })
            }
        }
        .map_err(map_err)
        .and_then(|done| expect_all(done, records.len(), "webhook records to insert"))
    }

    /// Inserts client request-key records in one statement.
    async fn insert_request_keys(&mut self, records: &[RequestRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let fields = |record: &RequestRecord| match record.request {
            KeyedRequest::PlaceHold { product_id, qty } => (Some(product_id.0), Some(qty.0), None),
            KeyedRequest::PlaceOrder { hold_id } => (None, None, Some(hold_id.0)),
        };
        match self.dialect() {
            Dialect::MySql => {
                let rows = json_rows(records.iter().map(|record| {
                    let (product_id, qty, hold_id) = fields(record);
                    serde_json::json!([
                        record.key.as_str(),
                        record.request.name(),
                        product_id.map(int),
                        qty,
                        hold_id.map(int),
                        int(record.resource_id),
                        u8::from(record.created),
                        int(record.created_at.as_ms())
                    ])
                }));
                on_conn!(self, |conn, _d| {
                    sqlx::query::<Db>(concat!(
                        "INSERT INTO request_keys (idempotency_key, request, product_id, qty, \
                         hold_id, resource_id, created, created_at) SELECT idempotency_key, \
                         request, product_id, qty, hold_id, resource_id, created, created_at \
                         FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, \
                         idempotency_key VARCHAR(255) PATH '$[0]', request VARCHAR(16) PATH \
                         '$[1]', product_id BIGINT PATH '$[2]', qty INT UNSIGNED PATH '$[3]', \
                         hold_id BIGINT PATH '$[4]', resource_id BIGINT PATH '$[5]', \
                         created TINYINT PATH '$[6]', created_at BIGINT PATH '$[7]')) AS batch \
                         WHERE ",
                        in_transaction!(),
                        " ORDER BY n"
                    ))
                    .bind(rows)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
                })
            }
            Dialect::Sqlite => {
                let sql = format!(
                    "INSERT INTO request_keys (idempotency_key, request, product_id, qty, \
                     hold_id, resource_id, created, created_at) VALUES {}",
                    rows_of_marks(records.len(), "(?, ?, ?, ?, ?, ?, ?, ?)")
                );
                on_conn!(self, |conn, _d| {
                    let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
                    for record in records {
                        let (product_id, qty, hold_id) = fields(record);
                        query = query
                            .bind(record.key.as_str())
                            .bind(record.request.name())
                            .bind(product_id.map(int))
                            .bind(qty)
                            .bind(hold_id.map(int))
                            .bind(int(record.resource_id))
                            .bind(record.created)
                            .bind(int(record.created_at.as_ms()));
                    }
                    query.execute(conn).await.map(|r| r.rows_affected())
                })
            }
        }
        .map_err(map_err)
        .and_then(|done| expect_all(done, records.len(), "request keys to insert"))
    }
}

/// The ids one multi-row `INSERT ... RETURNING` assigned, in row order: ids ascend within one
/// statement (whatever the auto-increment lock mode interleaves between statements), while
/// `RETURNING` does not promise row order.
fn ascending(ids: Vec<(u64,)>, rows: usize, what: &str) -> StoreResult<Vec<u64>> {
    if ids.len() != rows {
        return Err(StoreError::Corrupt(format!(
            "{rows} {what} inserted, {} ids returned",
            ids.len()
        )));
    }
    let mut ids: Vec<u64> = ids.into_iter().map(|(id,)| id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A `u64` as SQLite and MySQL both bind it. Ids and amounts stay far below `i64::MAX` (the core
/// bounds prices and quantities); only a timestamp saturated at the far future is clamped, which
/// keeps it in the far future.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn product_from_row(row: ProductRow) -> Product {
    let (id, name, price_cents, stock, units_held, units_received) = row;
    Product {
        id: ProductId(id),
        name,
        price_cents: Cents(price_cents),
        stock: Qty(stock),
        units_held: Qty(units_held),
        units_received,
    }
}

fn corrupt(what: &str, id: impl std::fmt::Display, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}: unexpected value {value:?}"))
}

fn hold_from_row(row: HoldRow) -> StoreResult<Hold> {
    let (id, product_id, qty, created_at, expires_at, state, reason, order_id) = row;
    let state = match (state.as_str(), reason.as_deref(), order_id) {
        ("held", None, None) => HoldState::Held,
        ("consumed", None, Some(order_id)) => HoldState::Consumed(OrderId(order_id)),
        ("released", Some(reason), None) => HoldState::Released(
            ReleaseReason::parse(reason).ok_or_else(|| corrupt("hold", id, reason))?,
        ),
        _ => return Err(corrupt("hold", id, &state)),
    };
    Ok(Hold {
        id: HoldId(id),
        product_id: ProductId(product_id),
        qty: Qty(qty),
        created_at: Timestamp(created_at),
        expires_at: Timestamp(expires_at),
        state,
    })
}

fn order_from_row(row: OrderRow) -> StoreResult<Order> {
    let (id, hold_id, product_id, qty, total_cents, status, created_at, payment_due_at, reason) =
        row;
    let cancel_reason = reason
        .map(|r| CancelReason::parse(&r).ok_or_else(|| corrupt("order", id, &r)))
        .transpose()?;
    Ok(Order {
        id: OrderId(id),
        hold_id: HoldId(hold_id),
        product_id: ProductId(product_id),
        qty: Qty(qty),
        total_cents: Cents(total_cents),
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt("order", id, &status))?,
        created_at: Timestamp(created_at),
        payment_due_at: Timestamp(payment_due_at),
        cancel_reason,
    })
}

fn webhook_from_row(row: WebhookRow) -> StoreResult<WebhookRecord> {
    let (key, hold_id, status, fingerprint, result, order_id, received_at) = row;
    let parsed_key = IdempotencyKey::parse(&key).ok_or_else(|| corrupt("webhook", &key, &key))?;
    let status = PaymentStatus::parse(&status).ok_or_else(|| corrupt("webhook", &key, &status))?;
    let result = WebhookResult::parse(&result).ok_or_else(|| corrupt("webhook", &key, &result))?;
    let stored = u64::from_str_radix(&fingerprint, 16)
        .map_err(|_| corrupt("webhook", &key, &fingerprint))?;
    let expected = Fingerprint::of(HoldId(hold_id), status);
    // Paired assertion: the print was computed from these fields when written.
    if stored != expected.0 {
        return Err(corrupt("webhook", &key, &fingerprint));
    }
    Ok(WebhookRecord {
        key: parsed_key,
        hold_id: HoldId(hold_id),
        status,
        fingerprint: expected,
        result,
        order_id: order_id.map(OrderId),
        received_at: Timestamp(received_at),
    })
}

fn request_key_from_row(row: RequestKeyRow) -> StoreResult<RequestRecord> {
    let (key, request, product_id, qty, hold_id, resource_id, created, created_at) = row;
    let parsed_key =
        IdempotencyKey::parse(&key).ok_or_else(|| corrupt("request key", &key, &key))?;
    let request = match (request.as_str(), product_id, qty, hold_id) {
        ("place_hold", Some(product_id), Some(qty), None) => KeyedRequest::PlaceHold {
            product_id: ProductId(product_id),
            qty: Qty(qty),
        },
        ("place_order", None, None, Some(hold_id)) => KeyedRequest::PlaceOrder {
            hold_id: HoldId(hold_id),
        },
        _ => return Err(corrupt("request key", &key, &request)),
    };
    Ok(RequestRecord {
        key: parsed_key,
        request,
        resource_id,
        created,
        created_at: Timestamp(created_at),
    })
}

/// How long startup waits for another instance's migrations before giving up.
const MIGRATION_WAIT: Duration = Duration::from_secs(60);
/// How many times startup tries the migrations when they fail (another instance may have applied
/// the same one at the same time).
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

/// A failed first connection: the database is unreachable (refused, no such host, a timeout)
/// or refuses the login; said as such, not as a lost connection.
fn unreachable(error: sqlx::Error) -> StoreError {
    match map_err(error) {
        StoreError::Connection(message) | StoreError::Unavailable(message) => {
            StoreError::Unavailable(format!("cannot reach the database: {message}"))
        }
        other => other,
    }
}

/// Sorts a database error into what the service can do about it.
fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) => {
            if let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>() {
                match mysql.number() {
                    // 1213: deadlock, or a Galera certification failure at COMMIT; 1205: lock
                    // wait timeout; 1020: record changed (MariaDB). The transaction was rolled
                    // back.
                    1213 | 1205 | 1020 => return StoreError::Contention(error.to_string()),
                    // 1180: a Galera node could not replicate the commit while the cluster
                    // changes its members; the server rolled it back.
                    1180 => return StoreError::Contention(error.to_string()),
                    // 1053: server shutdown in progress; 1927: connection killed.
                    1053 | 1927 => return StoreError::Connection(error.to_string()),
                    // 1047: a Galera node not in the primary component; 1040: too many
                    // connections.
                    1047 | 1040 => return StoreError::Unavailable(error.to_string()),
                    _ => {}
                }
            }
            let sqlite_busy = db.code().is_some_and(|code| {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            });
            if sqlite_busy || db.is_unique_violation() {
                StoreError::Contention(error.to_string())
            } else {
                StoreError::Database(error.to_string())
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
            "no connection within {} s: {error}",
            POOL_ACQUIRE_TIMEOUT.as_secs()
        )),
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            StoreError::Connection(error.to_string())
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(error.to_string()),
        _ => StoreError::Database(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! How database errors are sorted, on real errors of each kind: the service retries
    //! contention and lost connections and nothing else, so a slip here turns a retry into a 500
    //! or a 500 into a retry. The MySQL errors need the MariaDB at `FLASHSALE_TEST_MYSQL_URL`
    //! (default `mysql://root@127.0.0.1:3306`); they fail, not skip, when it is away.

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    static TABLES: AtomicU32 = AtomicU32::new(0);

    fn mysql_url() -> String {
        let base = std::env::var("FLASHSALE_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
        format!("{}/test", base.trim_end_matches('/'))
    }

    async fn mysql() -> Pool<MySql> {
        let url = mysql_url();
        MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("MariaDB not reachable at {url} ({e})"))
    }

    /// A new InnoDB table with rows 1 and 2.
    async fn table(pool: &Pool<MySql>) -> String {
        let n = TABLES.fetch_add(1, Ordering::SeqCst);
        let name = format!("fs_errors_{}_{n}", std::process::id());
        let create = format!("CREATE TABLE {name} (id INT PRIMARY KEY) ENGINE = InnoDB");
        pool.execute(AssertSqlSafe(create)).await.expect("create");
        let insert = format!("INSERT INTO {name} (id) VALUES (1), (2)");
        pool.execute(AssertSqlSafe(insert)).await.expect("rows");
        name
    }

    async fn drop_table(pool: &Pool<MySql>, name: &str) {
        let drop = format!("DROP TABLE {name}");
        pool.execute(AssertSqlSafe(drop)).await.expect("drop");
    }

    fn lock(table: &str, id: u32) -> AssertSqlSafe<String> {
        AssertSqlSafe(format!("SELECT id FROM {table} WHERE id = {id} FOR UPDATE"))
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_a_mariadb_url_connects() {
        match SqlStore::connect("mysql://root@127.0.0.1:1/test").await {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("cannot reach the database"), "{message}");
            }
            Err(other) => panic!("a refused connection sorted as {other:?}"),
            Ok(_) => panic!("port 1 answered"),
        }
        let url = mysql_url().replacen("mysql:", "mariadb:", 1);
        let store = SqlStore::connect(&url)
            .await
            .expect("a mariadb: URL connects");
        assert!(store.ping(Duration::from_secs(5)).await);
        store.close().await;
    }

    #[tokio::test]
    async fn a_store_counts_its_connections_answers_pings_and_closes() {
        let dir = std::env::temp_dir().join(format!("flashsale-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let url = format!("sqlite:{}", dir.join("pool.db").display());
        let store = SqlStore::connect(&url).await.expect("connect");
        assert!(
            store.ping(Duration::from_secs(5)).await,
            "a live store answers"
        );
        let SqlStore::Sqlite(pool) = &store else {
            panic!("a sqlite: URL makes a SQLite store")
        };
        let held = (
            pool.acquire().await.expect("one"),
            pool.acquire().await.expect("two"),
        );
        let (in_use, idle) = store.connections();
        assert_eq!(in_use, 2, "two connections held ({idle} idle)");
        drop(held);
        store.close().await;
        assert!(
            !store.ping(Duration::from_secs(5)).await,
            "a closed store answers no ping"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_lock_wait_timeout_is_contention() {
        let pool = mysql().await;
        let t = table(&pool).await;
        let mut holder = pool.begin().await.expect("begin");
        sqlx::query(lock(&t, 1))
            .execute(&mut *holder)
            .await
            .expect("lock");
        let mut waiter = pool.begin().await.expect("begin");
        sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
            .execute(&mut *waiter)
            .await
            .expect("set");
        let error = sqlx::query(lock(&t, 1)).execute(&mut *waiter).await;
        let error = error.expect_err("the row is locked");
        assert!(
            matches!(map_err(error), StoreError::Contention(_)),
            "a lock wait timeout is contention"
        );
        drop((holder, waiter));
        drop_table(&pool, &t).await;
    }

    #[tokio::test]
    async fn a_deadlock_is_contention_for_its_victim() {
        let pool = mysql().await;
        let t = table(&pool).await;
        let mut a = pool.begin().await.expect("begin");
        let mut b = pool.begin().await.expect("begin");
        sqlx::query(lock(&t, 1))
            .execute(&mut *a)
            .await
            .expect("a locks 1");
        sqlx::query(lock(&t, 2))
            .execute(&mut *b)
            .await
            .expect("b locks 2");
        // Each now asks for the other's row: whichever asks second closes the cycle, and the
        // database rolls one of them back at once.
        let (to_a, to_b) = tokio::join!(
            sqlx::query(lock(&t, 2)).execute(&mut *a),
            sqlx::query(lock(&t, 1)).execute(&mut *b),
        );
        let errors: Vec<StoreError> = [to_a.err(), to_b.err()]
            .into_iter()
            .flatten()
            .map(map_err)
            .collect();
        assert_eq!(errors.len(), 1, "one victim: {errors:?}");
        assert!(
            matches!(errors[0], StoreError::Contention(_)),
            "{:?}",
            errors[0]
        );
        drop((a, b));
        drop_table(&pool, &t).await;
    }

    #[tokio::test]
    async fn a_killed_connection_is_a_lost_connection() {
        let pool = mysql().await;
        let mut victim = pool.acquire().await.expect("acquire");
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *victim)
            .await
            .expect("id");
        pool.execute(AssertSqlSafe(format!("KILL CONNECTION {id}")))
            .await
            .expect("kill");
        let error = sqlx::query("SELECT 1").execute(&mut *victim).await;
        let error = map_err(error.expect_err("the connection is gone"));
        assert!(matches!(error, StoreError::Connection(_)), "{error:?}");
        victim.detach();
    }

    /// The connection id of the session `tx` runs on.
    async fn session_id(tx: &mut SqlTx) -> u64 {
        let SqlTx::MySql(tx) = tx else {
            panic!("a mysql: URL makes MySQL transactions")
        };
        sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut **tx)
            .await
            .expect("id")
    }

    #[tokio::test]
    async fn a_pooled_connection_killed_while_idle_is_replaced_at_begin() {
        // Used a moment ago, so handed out again without a ping: its BEGIN fails, and the
        // transaction begins on a new connection instead of answering that the database is away.
        let store = SqlStore::connect(&mysql_url()).await.expect("connect");
        let SqlStore::MySql(pool) = &store else {
            panic!("a mysql: URL makes a MySQL store")
        };
        let mut tx = store.begin(TxMode::Write).await.expect("begin");
        let first = session_id(&mut tx).await;
        tx.commit().await.expect("commit");
        // Back in the pool (after sqlx's ping on release) and the only connection there.
        for _ in 0..500 {
            if pool.num_idle() == 1 && pool.size() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            (pool.size(), pool.num_idle()),
            (1, 1),
            "one idle connection"
        );
        let mut killer = <sqlx::MySqlConnection as sqlx::Connection>::connect(&mysql_url())
            .await
            .expect("a connection outside the pool");
        killer
            .execute(AssertSqlSafe(format!("KILL CONNECTION {first}")))
            .await
            .expect("kill");
        let mut tx = store
            .begin(TxMode::Write)
            .await
            .expect("a dead pooled connection is replaced, not Unavailable");
        let second = session_id(&mut tx).await;
        assert_ne!(second, first, "the transaction runs on a new connection");
        tx.commit().await.expect("commit");
        store.close().await;
    }

    /// Rows in `table`, read in `tx`.
    async fn count_in(tx: &mut SqlTx, table: &str) -> i64 {
        let sql = AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
        on_conn!(tx, |conn, _d| sqlx::query_scalar::<Db, i64>(sql)
            .fetch_one(conn)
            .await)
        .expect("count")
    }

    #[tokio::test]
    async fn a_snapshot_reads_one_state_while_writes_commit_and_a_read_the_latest() {
        // A dump reads table after table: at READ COMMITTED, a commit between two of its reads
        // shows a product's counter from before it and the holds from after.
        let pool = mysql().await;
        let store = SqlStore::connect(&mysql_url()).await.expect("connect");
        for (mode, sees_the_insert) in [(TxMode::Snapshot, false), (TxMode::Read, true)] {
            let t = table(&pool).await;
            let mut tx = store.begin(mode).await.expect("begin");
            assert_eq!(count_in(&mut tx, &t).await, 2, "{mode:?}: the first read");
            let insert = AssertSqlSafe(format!("INSERT INTO {t} (id) VALUES (3)"));
            pool.execute(insert).await.expect("a commit meanwhile");
            let expected = if sees_the_insert { 3 } else { 2 };
            assert_eq!(
                count_in(&mut tx, &t).await,
                expected,
                "{mode:?}: the second read"
            );
            tx.commit().await.expect("commit");
            drop_table(&pool, &t).await;
        }
        store.close().await;
    }

    #[tokio::test]
    async fn updates_by_id_look_their_rows_up_by_rowid_on_sqlite() {
        // With a list of several ids, SQLite's planner takes the index that starts with the
        // state column the WHERE also names, and reads every row in that state.
        let dir = std::env::temp_dir().join(format!("flashsale-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let url = format!("sqlite:{}", dir.join("plan.db").display());
        let store = SqlStore::connect(&url).await.expect("sqlite");
        store.migrate().await.expect("migrate");
        let SqlStore::Sqlite(pool) = &store else {
            panic!("a sqlite: URL makes a SQLite store")
        };
        for sql in [
            release_holds_sql(Dialect::Sqlite, 4),
            consume_holds_sql(Dialect::Sqlite, 4),
            settle_orders_sql(Dialect::Sqlite, 4),
        ] {
            let explain = AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"));
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(explain)
                .fetch_all(pool)
                .await
                .expect("explain");
            let detail: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            assert!(
                detail
                    .iter()
                    .any(|d| d.contains("USING INTEGER PRIMARY KEY")),
                "{sql}: {detail:?}"
            );
        }
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_duplicate_key_is_contention_on_both_databases() {
        let pool = mysql().await;
        let t = table(&pool).await;
        let insert = AssertSqlSafe(format!("INSERT INTO {t} (id) VALUES (1)"));
        let error = pool.execute(insert).await.expect_err("a duplicate");
        assert!(matches!(map_err(error), StoreError::Contention(_)));
        drop_table(&pool, &t).await;
        let lite = SqlitePoolOptions::new()
            .connect("sqlite::memory:")
            .await
            .expect("sqlite");
        lite.execute("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
            .await
            .expect("table");
        let error = lite.execute("INSERT INTO t VALUES (1)").await;
        let error = map_err(error.expect_err("a duplicate"));
        assert!(matches!(error, StoreError::Contention(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_busy_sqlite_database_is_contention() {
        let dir = std::env::temp_dir().join(format!("flashsale-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.join("busy.db"))
            .create_if_missing(true)
            .busy_timeout(Duration::ZERO);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("sqlite");
        pool.execute("CREATE TABLE t (id INTEGER)")
            .await
            .expect("table");
        let mut writer = pool.acquire().await.expect("acquire");
        writer.execute("BEGIN IMMEDIATE").await.expect("write lock");
        let mut other = pool.acquire().await.expect("acquire");
        let error = other.execute("BEGIN IMMEDIATE").await;
        let error = map_err(error.expect_err("the database is busy"));
        assert!(matches!(error, StoreError::Contention(_)), "{error:?}");
        writer.execute("ROLLBACK").await.expect("rollback");
        drop((writer, other));
        pool.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_value_of_the_wrong_type_is_corrupt_and_an_exhausted_pool_unavailable() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(100))
            .connect("sqlite::memory:")
            .await
            .expect("sqlite");
        let decoded = sqlx::query_scalar::<_, i64>("SELECT 'not a number'")
            .fetch_one(&pool)
            .await;
        let error = map_err(decoded.expect_err("text is no integer"));
        assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
        let _only = pool.acquire().await.expect("the one connection");
        let error = map_err(pool.acquire().await.expect_err("none left"));
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    }
}
