//! End-to-end tests: the real `flashsale` server, started as a child process, driven over HTTP,
//! once on SQLite and once on MariaDB. One binary (so it links once), one module per area.
//!
//! Each test is written once as `async fn name(db: Db) -> TestApp`, generic over the database,
//! and [`on_both_databases!`] instantiates it as `<module>::sqlite::name` and
//! `<module>::mariadb::name`. The MariaDB instances fail (never skip) when MariaDB is not
//! reachable at `FLASHSALE_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`); start it
//! with `bash .ci/mariadb.sh`. Every test returns its app so the harness can check the
//! database's invariants after the last request; see `harness.rs`. Run with
//! `cargo test -p flashsale-tests`; `TEST_LOG=1` shows the servers' logs.

/// Instantiates each named test function of the calling module for both databases, as
/// `#[tokio::test]`s in submodules `sqlite` and `mariadb`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::harness::run(crate::harness::Db::Sqlite, super::$name).await;
                }
            )*
        }

        mod mariadb {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::harness::run(crate::harness::Db::MariaDb, super::$name).await;
                }
            )*
        }
    };
}

mod admin;
mod api;
mod cli;
mod concurrency;
mod configuration;
mod contract;
mod corruption;
mod deploy;
mod expiry;
mod exposition;
mod faults;
mod features;
mod harness;
mod http;
mod idempotency;
mod logs;
#[allow(
    dead_code,
    reason = "its Galera cluster serves the cluster suite (tests/cluster)"
)]
mod mariadbd;
mod openapi;
mod operations;
mod proxy;
mod reconcile;
mod retention;
mod validation;
mod webhooks;
mod workload;
