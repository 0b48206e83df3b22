//! The real server when things break: killed with SIGKILL under load, its database killed and
//! restarted under it, instances with skewed clocks on one database, several instances starting
//! at once on an empty one, a migration a crash left half-done, and ids beyond what a storage
//! keeps. Buyers (see `workload.rs`) record every acknowledged answer, which must all be found
//! again in the database; every answer must be one the API documents.

use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::json;

use crate::harness::{Database, Db, TestApp, spawn_app, spawn_on, spawn_together};
use crate::mariadbd::Mariadbd;
use crate::workload::{Endpoint, Seen, buy_until};

on_both_databases!(
    killed_with_sigkill_under_load_it_loses_nothing_acknowledged,
    instances_starting_together_on_an_empty_database_all_start,
    ids_beyond_the_stored_range_are_refused,
    a_request_the_database_holds_past_its_deadline_is_answered_and_its_retry_replays,
);

/// How many kill -9 cycles.
const KILLS: usize = 5;
/// How many times the database is killed and started again under one server process.
const DATABASE_OUTAGES: usize = 3;

/// Products with little stock each, so sales sell out and refusals happen too.
async fn products(app: &TestApp, count: usize, stock: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(app.create_product(500, stock).await);
    }
    ids
}

#[track_caller]
fn assert_all_documented(seen: &Seen, what: &str) {
    assert!(
        seen.wrong.is_empty(),
        "{what}: {} answers the API does not document, e.g. {:?}",
        seen.wrong.len(),
        seen.wrong.iter().take(5).collect::<Vec<_>>()
    );
}

async fn killed_with_sigkill_under_load_it_loses_nothing_acknowledged(db: Db) -> TestApp {
    let mut app = spawn_app(db, &[]).await;
    let products = products(&app, 20, 6).await;
    let mut seen = Seen::default();
    let mut next = 0;
    for _ in 0..KILLS {
        let run_for = Duration::from_millis(rand::rng().random_range(300..1_500));
        let servers = [Endpoint::of(&app)];
        let (cycle, after) = buy_until(&servers, &products, 8, next, async {
            tokio::time::sleep(run_for).await;
            // Killed while the buyers' requests are in flight; they are abandoned after.
            app.kill9();
        })
        .await;
        next = after;
        seen.merge(cycle);
        app.restart().await;
        let dump = app.dump().await;
        if let Err(lost) = seen.acks.check(&dump) {
            panic!("after a kill -9: {lost}");
        }
    }
    assert_all_documented(&seen, "kill -9 under load");
    assert!(
        seen.acks.holds.len() > 20
            && !seen.acks.orders.is_empty()
            && !seen.acks.webhooks.is_empty(),
        "the load reached every step: {seen:?}"
    );
    // Every acknowledged keyed request, asked again, answers what it answered before.
    let endpoint = Endpoint::of(&app);
    let dump = app.dump().await;
    for (hold_id, key) in seen.acks.holds.iter().take(40) {
        let hold = dump.holds.iter().find(|h| h.id.0 == *hold_id);
        let product_id = hold.map(|h| h.product_id.0).unwrap_or_default();
        let again = endpoint
            .post(
                "/api/holds",
                Some(key),
                &json!({"product_id": product_id, "qty": 1}),
            )
            .await
            .unwrap_or_else(|e| panic!("retrying hold key {key}: {e}"));
        assert_eq!(again.status, 201, "retry of hold key {key}: {again:?}");
        assert!(again.replayed, "retry of hold key {key} replays: {again:?}");
        assert_eq!(again.body["hold_id"], *hold_id, "retry of hold key {key}");
    }
    for (order_id, _, key) in seen.acks.orders.iter().take(40) {
        let order = dump.orders.iter().find(|o| o.id.0 == *order_id);
        let hold_id = order.map(|o| o.hold_id.0).unwrap_or_default();
        let again = endpoint
            .post("/api/orders", Some(key), &json!({"hold_id": hold_id}))
            .await
            .unwrap_or_else(|e| panic!("retrying order key {key}: {e}"));
        assert!(
            again.replayed,
            "retry of order key {key} replays: {again:?}"
        );
        assert_eq!(
            again.body["order_id"], *order_id,
            "retry of order key {key}"
        );
    }
    for (key, hold_id, status, result) in seen.acks.webhooks.iter().take(40) {
        let again = endpoint
            .webhook(key, *hold_id, status)
            .await
            .unwrap_or_else(|e| panic!("redelivering webhook {key}: {e}"));
        assert!(
            again.replayed || again.body["replayed"] == true,
            "{again:?}"
        );
        assert_eq!(again.body["result"], result.as_str(), "redelivery of {key}");
    }
    app
}

async fn instances_starting_together_on_an_empty_database_all_start(db: Db) -> TestApp {
    let database = Database::create(db).await;
    let mut apps = spawn_together(database, &[&[], &[], &[]]).await;
    // Each instance serves, on the one schema.
    let mut ids = Vec::new();
    for app in &apps {
        ids.push(app.create_product(100, 3).await);
    }
    for (app, id) in apps.iter().zip(&ids) {
        app.hold(*id, 1).await;
    }
    let first = apps.remove(0);
    for other in apps {
        drop(other);
    }
    first
}

/// A private MariaDB server is killed with SIGKILL under load and started again, three times:
/// meanwhile every answer is a documented 503 within a bounded time (never a 500, never a hang),
/// `/readyz` says not ready within a second, and once the database is back the same server
/// process serves again; nothing it acknowledged is lost.
#[tokio::test]
async fn the_database_goes_away_and_comes_back() {
    let mut mariadb = Mariadbd::start_fresh().await;
    let url = mariadb.database_url("flashsale");
    let create = Database::External { url: mariadb.url() };
    create.execute("CREATE DATABASE flashsale").await;
    let app = spawn_on(&url, &[]).await;
    let products = products(&app, 10, 50).await;
    let servers = [Endpoint::of(&app)];
    let mut seen = Seen::default();

    let mut next = 0;
    for cycle in 0..DATABASE_OUTAGES {
        let (before, after_before) = buy_until(
            &servers,
            &products,
            6,
            next,
            tokio::time::sleep(Duration::from_millis(700)),
        )
        .await;
        seen.merge(before);
        let mut readyz_while_down = Vec::new();
        let (down, after_down) = buy_until(&servers, &products, 6, after_before, async {
            mariadb.kill();
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let started = Instant::now();
                let ready = servers[0].get("/readyz").await;
                readyz_while_down.push((ready.map(|r| r.status), started.elapsed()));
            }
        })
        .await;
        next = after_down;
        for (status, took) in &readyz_while_down {
            assert_eq!(
                status,
                &Ok(503),
                "outage {cycle}: /readyz while the database is down"
            );
            assert!(
                *took < Duration::from_secs(1),
                "outage {cycle}: /readyz answered in {took:?}"
            );
        }
        assert!(
            down.statuses.get(&503).copied().unwrap_or(0) > 0,
            "outage {cycle}: requests while the database was down were answered 503: {:?}",
            down.statuses
        );
        assert_eq!(
            down.unanswered, 0,
            "outage {cycle}: every request got an answer: {down:?}"
        );
        eprintln!(
            "outage {cycle}: answers {:?}, slowest {:?}",
            down.statuses, down.slowest
        );
        seen.merge(down);
        mariadb.start(&[]).await;
        servers[0]
            .await_ready(&app, "/readyz says ready again")
            .await;
    }
    let (after, _) = buy_until(
        &servers,
        &products,
        6,
        next,
        tokio::time::sleep(Duration::from_secs(1)),
    )
    .await;
    assert!(
        after.statuses.get(&201).copied().unwrap_or(0) > 0,
        "the same server process sells again once the database is back: {:?}",
        after.statuses
    );
    seen.merge(after);
    assert_all_documented(&seen, "the database away and back");
    if let Err(lost) = seen.acks.check(&app.dump().await) {
        panic!("after the database came back: {lost}");
    }
    app.finish().await;
}

/// Three instances on one MariaDB database, two with clocks minutes off in opposite directions,
/// buyers moving between them: each instance expires, releases and sells by its own clock.
/// No unit is sold twice, no released hold becomes an order, the invariants hold.
#[tokio::test]
async fn instances_with_skewed_clocks_on_one_database() {
    let database = Database::create(Db::MariaDb).await;
    let ttl: &[&str] = &["--hold-ttl", "60s", "--sweep-interval", "200ms"];
    let ahead = [ttl, &["--clock-offset-ms", "150000"]].concat();
    let behind = [ttl, &["--clock-offset-ms", "-150000"]].concat();
    let mut apps = spawn_together(database, &[ttl, &ahead, &behind]).await;
    let products = products(&apps[0], 8, 10).await;
    let servers: Vec<Endpoint> = apps.iter().map(Endpoint::of).collect();
    let (seen, _) = buy_until(
        &servers,
        &products,
        9,
        0,
        tokio::time::sleep(Duration::from_secs(4)),
    )
    .await;
    assert_all_documented(&seen, "skewed clocks");
    assert!(
        seen.statuses.get(&409).copied().unwrap_or(0) > 0,
        "some holds expired under a skewed clock or sold out: {:?}",
        seen.statuses
    );
    let first = apps.remove(0);
    if let Err(lost) = seen.acks.check(&first.dump().await) {
        panic!("with skewed clocks: {lost}");
    }
    drop(apps);
    first.finish().await;
}

/// A MySQL migration a killed process left half-applied (its tables created, its row marked
/// unfinished, as sqlx leaves it) is run again by the next start, which then serves.
#[tokio::test]
async fn a_migration_a_crash_left_unfinished_is_resumed() {
    let database = Database::create(Db::MariaDb).await;
    database
        .execute(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL); \
             INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (1, 'init', FALSE, x'00', -1); \
             CREATE TABLE products (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             name VARCHAR(255) NOT NULL, price_cents BIGINT UNSIGNED NOT NULL, \
             stock INT UNSIGNED NOT NULL, units_received BIGINT UNSIGNED NOT NULL) ENGINE = InnoDB;",
        )
        .await;
    let mut apps = spawn_together(database, &[&[]]).await;
    let app = apps.remove(0);
    let product = app.create_product(100, 2).await;
    app.hold(product, 2).await;
    app.finish().await;
}

/// On a shared database the server refuses to start without a configured webhook secret: each
/// instance would generate its own and refuse the others' signatures.
#[tokio::test]
async fn a_shared_database_needs_a_configured_webhook_secret() {
    let database = Database::create(Db::MariaDb).await;
    let args = [
        "serve".to_owned(),
        "--bind".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--database-url".to_owned(),
        database.url().to_owned(),
    ];
    let mut process = crate::harness::start_process(&args);
    let failure = process
        .listening()
        .await
        .expect_err("the server refuses to start");
    assert!(
        failure.contains("no webhook secret configured")
            && failure.contains("FLASHSALE_WEBHOOK_SECRET"),
        "{failure}"
    );
    database.destroy().await;
}

/// Connections that send nothing, or half a request's headers, are closed after the header
/// timeout, and the connection cap keeps them from using up the server's descriptors: with
/// every slot taken by idle sockets, a real request still gets its answer once they are closed.
#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app(
        Db::Sqlite,
        &["--max-connections", "8", "--header-timeout", "1s"],
    )
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for n in 0..20 {
        let mut socket = tokio::net::TcpStream::connect(&address)
            .await
            .expect("the server accepts or queues a connection");
        if n % 2 == 0 {
            // Half of a request's head, never finished.
            socket
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("the partial head is sent");
        }
        idle.push(socket);
    }
    let started = Instant::now();
    let reply = app.get("/healthz").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a real request behind 20 idle sockets waited {:?}",
        started.elapsed()
    );
    for (n, mut socket) in idle.into_iter().enumerate() {
        let mut buffer = [0_u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer)).await;
        match read {
            // Closed, with nothing, or with the 408 hyper may send first: either way closed.
            Ok(Ok(_)) | Ok(Err(_)) => {}
            Err(_) => panic!("idle socket {n} is still open after 10 s"),
        }
    }
    app.finish().await;
}

/// A webhook naming a hold id beyond what a storage keeps is refused (422 `unknown_hold`), the
/// same way on every redelivery, and stores nothing: it used to be recorded with the id clamped
/// and its fingerprint not, so every redelivery answered 500.
async fn ids_beyond_the_stored_range_are_refused(db: Db) -> TestApp {
    let app = spawn_app(db, &[]).await;
    for _ in 0..3 {
        let reply = app.webhook("huge-hold", u64::MAX, "paid").await;
        let problem = reply.expect_problem(422, "unknown_hold");
        assert_eq!(problem["field"], "hold_id", "{problem}");
    }
    let dump = app.dump().await;
    assert!(
        dump.webhooks.is_empty(),
        "nothing stored: {:?}",
        dump.webhooks
    );
    app
}

/// A hold whose product the database keeps locked is answered at the request deadline: 503
/// `deadline_exceeded` with `Retry-After`, counted, where without a deadline it would wait out
/// the database's lock timeout and its retries. The command stays queued: once the lock goes it
/// takes effect, and a retry under the same key replays that one hold.
async fn a_request_the_database_holds_past_its_deadline_is_answered_and_its_retry_replays(
    db: Db,
) -> TestApp {
    let app = spawn_app(db, &["--request-deadline", "500ms"]).await;
    let product = app.create_product(100, 5).await;
    let body = json!({"product_id": product, "qty": 1});
    let locker = app.lock_product(product).await;
    let answer = app
        .client
        .post(app.url("/api/holds"))
        .header("idempotency-key", "past-the-deadline")
        .json(&body)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 503);
    assert_eq!(
        answer.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "a deadline answer says when to retry"
    );
    let problem: serde_json::Value = answer.json().await.expect("a problem body");
    assert_eq!(problem["code"], "deadline_exceeded", "{problem}");
    let metrics = app.scrape().await;
    assert!(
        metrics.contains("flashsale_database_unavailable_total{cause=\"deadline\"} 1"),
        "the deadline answer is counted: {metrics}"
    );
    locker.release().await;
    // Retried as a client does after a 503, for as long as the first command may still be
    // deciding.
    let retrying = Instant::now();
    let retried = loop {
        let retried = app
            .post_keyed("/api/holds", "past-the-deadline", &body)
            .await;
        if retried.status != 503 || retrying.elapsed() > Duration::from_secs(30) {
            break retried;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hold = retried.expect_status(201)["hold_id"].clone();
    assert!(
        retried.replayed,
        "the retry replays the first request's hold: {retried:?}"
    );
    let again = app
        .post_keyed("/api/holds", "past-the-deadline", &body)
        .await;
    assert_eq!(again.expect_status(201)["hold_id"], hold);
    assert_eq!(app.available(product).await, 4, "one unit held for the key");
    app
}
