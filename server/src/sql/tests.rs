//! How database errors are sorted, on real errors of each kind: the service retries
//! contention and lost connections and nothing else, so a slip here turns a retry into a 500
//! or a 500 into a retry. The MySQL errors need the MariaDB at `FLASHSALE_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306`); they fail, not skip, when it is away.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::AssertSqlSafe;

use super::writes::{consume_holds_sql, release_holds_sql, settle_orders_sql};
use super::*;
use flashsale_service::store::Transaction;

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
    let SqlTx::MySql(tx, _) = tx else {
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
