//! What an operator's monitoring and supervisor see when the database is away: the server
//! started before its database keeps trying and serves once it answers, and a database gone
//! under a running server shows in `/metrics` (a gauge, and every unavailable answer counted by
//! cause), so the documented alerts can fire. The database is the test MariaDB behind a proxy
//! the test stops and starts (`proxy.rs`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    Database, Db, WEBHOOK_SECRET, send_request, spawn_on, start_process, start_process_with_env,
};
use crate::mariadbd::free_port;
use crate::proxy::Proxy;

/// How long a test waits for the server to notice a change of its database.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(20);

/// The value of the series `series` (name and labels as rendered) in a `/metrics` text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every series of family `name` in a `/metrics` text.
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// Asks `url` until `check` holds for its answer; fails after [`NOTICE_TIMEOUT`] saying `what`.
async fn until(client: &reqwest::Client, url: &str, what: &str, check: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now()
        .checked_add(NOTICE_TIMEOUT)
        .expect("a deadline");
    loop {
        if let Some((status, body)) = get(client, url).await
            && check(status, &body)
        {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The database behind the proxy goes away under a running server: holds are answered 503
/// `database_unavailable`, and `/metrics` says so twice, in `flashsale_database_up` and in
/// `flashsale_database_unavailable_total` by cause; once it is back the gauge says so too.
#[tokio::test]
async fn a_database_gone_shows_in_the_metrics_and_every_unavailable_answer_is_counted() {
    let database = Database::create(Db::MariaDb).await;
    let mut proxy = Proxy::to_test_mariadb();
    proxy.start().await;
    let app = spawn_on(&proxy.url_of(&database), &[]).await;
    let product = app.create_product(100, 5).await;
    let metrics = app.url("/metrics");
    until(&app.client, &metrics, "the database is up", |_, text| {
        sample(text, "flashsale_database_up") == Some(1.0)
    })
    .await;

    proxy.stop().await;
    let reply = app.place_hold(product, 1).await;
    reply.expect_problem(503, "database_unavailable");
    until(&app.client, &metrics, "the database is down", |_, text| {
        sample(text, "flashsale_database_up") == Some(0.0)
    })
    .await;
    let (_, text) = get(&app.client, &metrics).await.expect("an answer");
    assert!(
        family_sum(&text, "flashsale_database_unavailable_total") >= 1.0,
        "the 503 is counted:\n{text}"
    );

    proxy.start().await;
    until(
        &app.client,
        &metrics,
        "the database is up again",
        |_, text| sample(text, "flashsale_database_up") == Some(1.0),
    )
    .await;
    app.hold(product, 1).await;
    app.finish().await;
    database.destroy().await;
}

/// The arguments of a server on `url` bound to `port`, with the test's secret.
fn serve_args(url: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--database-url",
        url,
        "--webhook-secret",
        WEBHOOK_SECRET,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A server started while its database is down keeps trying, logging each attempt, with
/// `/healthz` 200 and `/readyz` 503 meanwhile (so systemd keeps it and a load balancer keeps
/// it out), and serves once the database answers.
#[tokio::test]
async fn a_server_started_before_its_database_waits_for_it_and_then_serves() {
    let database = Database::create(Db::MariaDb).await;
    let mut proxy = Proxy::to_test_mariadb();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut process = start_process(&serve_args(&proxy.url_of(&database), port, &[]));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    until(
        &client,
        &format!("{base}/healthz"),
        "/healthz answers",
        |s, _| s == 200,
    )
    .await;
    let (ready, _) = get(&client, &format!("{base}/readyz"))
        .await
        .expect("an answer");
    assert_eq!(ready, 503, "not ready without a database");
    let hold = send_request(
        client
            .post(format!("{base}/api/holds"))
            .json(&json!({"product_id": 1, "qty": 1})),
    )
    .await
    .expect("an answer");
    hold.expect_problem(503, "database_unavailable");
    let deadline = Instant::now()
        .checked_add(NOTICE_TIMEOUT)
        .expect("a deadline");
    while process.log_tail().matches("retrying").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "each attempt is logged:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(process.exited().is_none(), "still running");

    proxy.start().await;
    let address = process.listening().await.expect("it serves");
    assert_eq!(address, base);
    until(
        &client,
        &format!("{base}/readyz"),
        "/readyz says ready",
        |s, _| s == 200,
    )
    .await;
    drop(process);
    database.destroy().await;
}

/// `--connect-timeout` gives up on a database that does not answer, for whoever wants a fast
/// failure: the server exits, naming the database and how long it tried.
#[tokio::test]
async fn a_connect_timeout_gives_up_on_a_database_that_does_not_answer() {
    let port = free_port();
    let closed = free_port();
    let url = format!("mysql://root:hunter2@127.0.0.1:{closed}/sale");
    let started = Instant::now();
    let mut process = start_process_with_env(
        &serve_args(&url, port, &[]),
        &[("FLASHSALE_CONNECT_TIMEOUT", "2s")],
    );
    let failure = process.listening().await.expect_err("it gives up");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "it tried for 2 s: {took:?}");
    assert!(took < Duration::from_secs(15), "then gave up: {took:?}");
    assert!(failure.contains("root:***@127.0.0.1"), "{failure}");
    assert!(!failure.contains("hunter2"), "{failure}");
}
