//! What the service-layer tests share: fresh databases (a SQLite file, or a MariaDB database
//! dropped at the end), a service over one with the tests' TTL and payment window, and the
//! invariant check every test ends with.
//!
//! The MariaDB half fails, never skips, when `FLASHSALE_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`) cannot be reached: start it with `bash .ci/mariadb.sh`.

#![allow(dead_code, reason = "each test file uses its own part")]

use std::sync::atomic::{AtomicU32, Ordering};

use flashsale_core::Timestamp;
use flashsale_server::sql::SqlStore;
use flashsale_service::clock::ManualClock;
use flashsale_service::{Config, Service};
use sqlx::Executor;

pub const T0: Timestamp = Timestamp(1_800_000_000_000);
pub const TTL_MS: u64 = 60_000;
pub const WINDOW_MS: u64 = 600_000;

pub type TestService = Service<SqlStore, ManualClock>;

/// A fresh database; dropped MariaDB databases are removed at the end of the test.
pub struct Db {
    pub url: String,
    cleanup: Option<String>,
    dir: Option<std::path::PathBuf>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn sqlite() -> Db {
    let dir = std::env::temp_dir().join(format!("flashsale-service-{}", unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite:{}", dir.join("flashsale.db").display());
    Db {
        url,
        cleanup: None,
        dir: Some(dir),
    }
}

pub async fn mariadb() -> Db {
    let base = std::env::var("FLASHSALE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    let admin = sqlx::MySqlPool::connect(&base).await.unwrap_or_else(|e| {
        panic!("MariaDB not reachable at {base} ({e}); start it with `bash .ci/mariadb.sh`")
    });
    let name = format!("fs_service_{}", unique());
    let create = format!("CREATE DATABASE {name}");
    admin
        .execute(sqlx::AssertSqlSafe(create))
        .await
        .expect("create database");
    admin.close().await;
    Db {
        url: format!("{base}/{name}"),
        cleanup: Some(name),
        dir: None,
    }
}

impl Db {
    pub async fn service(&self, clock: &ManualClock) -> TestService {
        self.service_with(clock, Config::default()).await
    }

    /// A service with `config`, but the tests' TTL and payment window.
    pub async fn service_with(&self, clock: &ManualClock, config: Config) -> TestService {
        Service::new(self.store().await, clock.clone(), Db::config(config))
    }

    /// `config` with the tests' TTL and payment window.
    pub fn config(config: Config) -> Config {
        Config {
            hold_ttl_ms: TTL_MS,
            payment_window_ms: WINDOW_MS,
            ..config
        }
    }

    /// A new pool of connections to the database, migrated.
    pub async fn store(&self) -> SqlStore {
        let store = SqlStore::connect(&self.url).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// Runs one statement on the database from outside any service (to corrupt a row, say).
    pub async fn execute(&self, sql: &str) {
        let statement = sqlx::AssertSqlSafe(sql.to_owned());
        if self.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.url).await.expect("connect");
            pool.execute(statement).await.expect("executed");
            pool.close().await;
        } else {
            let pool = sqlx::MySqlPool::connect(&self.url).await.expect("connect");
            pool.execute(statement).await.expect("executed");
            pool.close().await;
        }
    }

    /// Checks the invariants on the database's rows, then drops a MariaDB database.
    pub async fn finish(self, service: &TestService) {
        let dump = service.dump().await.expect("dump");
        if let Err(violation) = dump.check() {
            panic!("invariant violated in {}: {violation}", self.url);
        }
        self.discard(service).await;
    }

    /// Closes the service's pool and removes the database, checking nothing.
    pub async fn discard(self, service: &TestService) {
        self.remove(service.store()).await;
    }

    /// Closes `store`'s pool and removes the database, checking nothing.
    pub async fn remove(self, store: &SqlStore) {
        store.close().await;
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(name) = self.cleanup {
            let base = self.url.trim_end_matches(&format!("/{name}")).to_owned();
            let admin = sqlx::MySqlPool::connect(&base).await.expect("reconnect");
            let drop = format!("DROP DATABASE {name}");
            admin
                .execute(sqlx::AssertSqlSafe(drop))
                .await
                .expect("drop database");
        }
    }
}
