//! One hold transaction, and one batch of 100 hold requests decided by one transaction (on one
//! product, and spread over 100), on each database: what group commit buys per request, without
//! HTTP in the way.
//!
//! `cargo bench -p flashsale-benches --bench store`. MariaDB is `FLASHSALE_BENCH_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306`); each run creates a fresh database and drops it at the
//! end. Durable commits on both: SQLite `synchronous = FULL`, InnoDB as configured.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashsale_core::{Cents, Command, ProductId, Qty};
use flashsale_server::sql::SqlStore;
use flashsale_service::clock::SystemClock;
use flashsale_service::{Config, Service};
use sqlx::Executor;

/// Requests per batch in the batched bench.
const BATCH: usize = 100;

type BenchService = Service<SqlStore, SystemClock>;

/// A fresh database of each kind, named by the process, with its service and one product whose
/// stock outlasts any run.
async fn databases() -> Vec<(&'static str, BenchService, Vec<ProductId>)> {
    let mut services = Vec::new();
    let dir = std::env::temp_dir().join(format!("flashsale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = format!("sqlite:{}", dir.join("bench.db").display());
    services.push(("sqlite", sqlite));
    let base = std::env::var("FLASHSALE_BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    match sqlx::MySqlPool::connect(&base).await {
        Ok(admin) => {
            let name = format!("fs_bench_{}", std::process::id());
            let create = format!("CREATE DATABASE IF NOT EXISTS {name}");
            admin
                .execute(sqlx::AssertSqlSafe(create))
                .await
                .expect("create database");
            services.push(("mariadb", format!("{base}/{name}")));
        }
        Err(error) => eprintln!("MariaDB at {base} not reachable ({error}); benching SQLite only"),
    }
    let mut ready = Vec::new();
    for (name, url) in services {
        let store = SqlStore::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let config = Config {
            hold_ttl_ms: 60 * 60 * 1_000,
            ..Config::default()
        };
        let service = Service::new(store, SystemClock, config);
        let mut products = Vec::new();
        for _ in 0..BATCH {
            let product = service
                .create_product("bench", Cents(100), Qty(u32::MAX))
                .await
                .expect("product");
            products.push(product.id);
        }
        ready.push((name, service, products));
    }
    ready
}

async fn drop_mariadb() {
    let base = std::env::var("FLASHSALE_BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    if let Ok(admin) = sqlx::MySqlPool::connect(&base).await {
        let drop = format!("DROP DATABASE IF EXISTS fs_bench_{}", std::process::id());
        let _ = admin.execute(sqlx::AssertSqlSafe(drop)).await;
    }
}

fn bench_hold_transactions(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let services = runtime.block_on(databases());
    for (name, service, products) in &services {
        let hold = |product_id| Command::PlaceHold {
            product_id,
            qty: Qty(1),
            ttl_ms: 60 * 60 * 1_000,
            key: None,
        };
        let one = [hold(products[0])];
        let hot: Vec<Command> = (0..BATCH).map(|_| hold(products[0])).collect();
        let spread: Vec<Command> = products.iter().map(|&p| hold(p)).collect();
        let mut group = c.benchmark_group(format!("hold_transaction/{name}"));
        group.measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Elements(1));
        group.bench_function("one_request", |b| {
            b.iter(|| runtime.block_on(service.execute_batch(black_box(&one))));
        });
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function("batch_of_100", |b| {
            b.iter(|| runtime.block_on(service.execute_batch(black_box(&hot))));
        });
        group.bench_function("batch_of_100_over_100_products", |b| {
            b.iter(|| runtime.block_on(service.execute_batch(black_box(&spread))));
        });
        group.finish();
    }
    runtime.block_on(drop_mariadb());
}

criterion_group!(benches, bench_hold_transactions);
criterion_main!(benches);
