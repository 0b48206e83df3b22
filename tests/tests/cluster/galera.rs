//! Scale-out on a Galera cluster: three server instances, each on its own node of a three-node
//! MariaDB Galera cluster started on this machine (`mariadbd.rs`), racing on hot products.
//!
//! Galera's row locks are local to a node; two nodes' transactions conflict only at COMMIT, by
//! the rows they wrote (error 1213, retried like a deadlock). A grant is safe across nodes only
//! because it writes the product row (its `units_held` counter): remove that write and this
//! test oversells.

#![allow(
    clippy::arithmetic_side_effects,
    reason = "test bookkeeping (answer counts, buyer numbers, round-robin indexes), never units or money"
)]

use std::time::{Duration, Instant};

use serde_json::json;

use crate::binlog;
use crate::harness::{ADMIN_TOKEN, Database, TestApp, id, spawn_on};
use crate::mariadbd::Galera;
use crate::workload::{Endpoint, Seen, buy_until, documented};

/// Units of each hot product in the burst.
const STOCK: u32 = 50;
/// Hold requests in the burst, spread over the instances and the hot products.
const BURST: usize = 600;
#[tokio::test]
async fn three_instances_on_three_galera_nodes_never_oversell() {
    let mut cluster = Galera::start(3).await;
    let server = Database::External {
        url: cluster.nodes[0].url(),
    };
    server.execute("CREATE DATABASE flashsale").await;
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.database_url("flashsale"))
        .collect();
    // The first instance migrates; the other two start together and find the schema in place.
    let first = spawn_on(&urls[0], &[]).await;
    let (second, third) = tokio::join!(spawn_on(&urls[1], &[]), spawn_on(&urls[2], &[]));
    let apps = [first, second, third];
    let servers: Vec<Endpoint> = apps.iter().map(Endpoint::of).collect();

    // A burst: every instance takes holds on the same two hot products at once.
    let hot = [
        apps[0].create_product(900, STOCK).await,
        apps[1].create_product(900, STOCK).await,
    ];
    let burst = (0..BURST).map(|i| {
        let server = servers[i % servers.len()].clone();
        let product = hot[i % hot.len()];
        async move {
            let body = json!({"product_id": product, "qty": 1});
            (product, server.post("/api/holds", None, &body).await)
        }
    });
    let answers = futures_util::future::join_all(burst).await;
    let mut granted: Vec<(u64, u64)> = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for (product, answer) in answers {
        let reply = answer.unwrap_or_else(|e| panic!("a hold in the burst got {e}"));
        documented(&reply).unwrap_or_else(|wrong| panic!("a hold in the burst: {wrong}"));
        *statuses.entry(reply.status).or_default() += 1;
        if reply.status == 201 {
            granted.push((product, id(&reply.body, "hold_id")));
        }
    }
    for product in hot {
        let sold = granted.iter().filter(|(p, _)| *p == product).count();
        assert!(
            sold <= STOCK as usize,
            "product {product} with stock {STOCK} granted {sold} holds across three nodes: \
             oversold; answers {statuses:?}"
        );
        assert!(
            sold > 0,
            "the burst granted something on {product}: {statuses:?}"
        );
    }

    // The burst conflicted across nodes: certification failed some commits, or appliers
    // aborted local transactions holding the rows they needed, and the instances retried them.
    let mut conflicts = 0;
    for node in &cluster.nodes {
        conflicts += node
            .query_text(
                "SELECT CAST(SUM(variable_value) AS SIGNED) FROM information_schema.global_status \
                 WHERE variable_name IN ('WSREP_LOCAL_CERT_FAILURES', 'WSREP_LOCAL_BF_ABORTS')",
            )
            .await
            .and_then(|n| n.parse::<u64>().ok())
            .expect("a node's conflict counters");
    }
    let mut retried = 0.0;
    for app in &apps {
        retried += metric_sum(app, "flashsale_retries_total", "cause=\"contention\"").await;
    }
    assert!(
        conflicts > 0 && retried > 0.0,
        "the burst made {conflicts} certification conflicts and {retried} retries"
    );

    // Early and duplicate webhooks for held units, to two instances at once before any order
    // exists; then the order from the third instance finds the order the webhook made.
    for (n, (_, hold_id)) in granted.iter().take(30).enumerate() {
        let key = format!("early-{n}");
        let (a, b) = tokio::join!(
            servers[n % 3].webhook(&key, *hold_id, "paid"),
            servers[(n + 1) % 3].webhook(&key, *hold_id, "paid"),
        );
        for answer in [a, b] {
            let reply = answer.unwrap_or_else(|e| panic!("an early webhook got {e}"));
            documented(&reply).unwrap_or_else(|wrong| panic!("an early webhook: {wrong}"));
        }
        let order = servers[(n + 2) % 3]
            .post("/api/orders", None, &json!({"hold_id": hold_id}))
            .await
            .unwrap_or_else(|e| panic!("an order after an early webhook got {e}"));
        documented(&order).unwrap_or_else(|wrong| panic!("an order after its webhook: {wrong}"));
    }

    // Buyers walk hold -> order -> duplicated webhook across the instances while the admin
    // restocks and one node is killed and rejoins.
    let mut products = Vec::new();
    for (n, app) in apps.iter().cycle().take(6).enumerate() {
        products.push(
            app.create_product(300 + u64::try_from(n).unwrap_or(0), 10)
                .await,
        );
    }
    let mut seen = Seen::default();
    let mut readyz_while_down = None;
    let (during, _) = buy_until(&servers, &products, 9, 0, async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        for (n, product) in products.iter().enumerate() {
            restock(&apps[n % 2], *product, 5).await;
        }
        cluster.kill(2);
        readyz_while_down = Some(not_ready(&servers[2], "the killed node").await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.rejoin(2).await;
    })
    .await;
    assert!(
        readyz_while_down.is_some(),
        "/readyz failed while the node was down"
    );
    seen.merge(during);
    servers[2]
        .await_ready(&apps[2], "the instance on the rejoined node is ready")
        .await;
    let (after, _) = buy_until(
        &servers,
        &products,
        6,
        1_000_000,
        tokio::time::sleep(Duration::from_secs(1)),
    )
    .await;
    seen.merge(after);

    // Node 1 cut off from the other two, as by a network partition: it leaves the primary
    // component and refuses every statement (1047), so its instance answers 503 with
    // `Retry-After` and reports not ready, while the other two go on selling. Healed, the node
    // rejoins by itself, and so does its instance.
    let refused_before = unreachable_answers(&apps[1]).await;
    let (cut, _) = buy_until(&servers, &products, 6, 2_000_000, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.isolate(1).await;
        not_ready(&servers[1], "the isolated node").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.heal(1).await;
    })
    .await;
    seen.merge(cut);
    servers[1]
        .await_ready(&apps[1], "the instance on the healed node is ready")
        .await;
    let refused = unreachable_answers(&apps[1]).await - refused_before;
    assert!(
        refused > 0.0,
        "the instance on the isolated node answered 503 (database unreachable) while cut off"
    );

    // Node 2 loses its disk: started again on an empty data directory, it joins by a full
    // state transfer from a donor while the buyers go on, and its instance serves again.
    let (fresh, _) = buy_until(&servers, &products, 6, 3_000_000, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.replace(2).await;
    })
    .await;
    seen.merge(fresh);
    servers[2]
        .await_ready(&apps[2], "the instance on the replaced node is ready")
        .await;

    assert!(
        seen.wrong.is_empty(),
        "{} answers the API does not document, e.g. {:?}",
        seen.wrong.len(),
        seen.wrong.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        !seen.acks.orders.is_empty() && !seen.acks.webhooks.is_empty(),
        "the buyers got through: {:?}",
        seen.statuses
    );

    // Every node holds the same rows, keeping every invariant, with nothing acknowledged lost.
    let dumps = same_rows_on_every_node(&apps).await;
    for (node, dump) in dumps.into_iter().enumerate() {
        if let Err(lost) = seen.acks.check(&dump) {
            panic!("node {node}: {lost}");
        }
        let rows = format!(
            "{:#?}\n{:#?}\n{:#?}",
            dump.products, dump.holds, dump.orders
        );
        if let Err(violation) = dump.check() {
            panic!("node {node}: invariant violated: {violation}; its rows:\n{rows}");
        }
    }
    // The cluster's history, in its commit order, as the two nodes never killed logged it:
    // the same transactions, each moving the counters by exactly what it did to holds and
    // orders.
    let columns = columns(&server).await;
    let history = binlog::read(&cluster.nodes[0].binlogs(), "flashsale");
    assert!(
        history.len() > 100,
        "node 0 logged the run: {} transactions",
        history.len()
    );
    if let Err(broken) = binlog::check(&history, &columns) {
        panic!("node 0's binary log: {broken}");
    }
    let changes = |history: &[binlog::Logged]| -> Vec<Vec<binlog::Change>> {
        history.iter().map(|tx| tx.changes.clone()).collect()
    };
    assert!(
        changes(&binlog::read(&cluster.nodes[1].binlogs(), "flashsale")) == changes(&history),
        "nodes 0 and 1 logged the same transactions in the same order"
    );
    let [first, second, third] = apps;
    drop((second, third));
    first.finish().await;
}

/// The columns of the tables the replay reads, in order.
async fn columns(server: &Database) -> binlog::Columns {
    use sqlx::Connection;
    let mut connection = sqlx::MySqlConnection::connect(server.url())
        .await
        .expect("a connection to node 0");
    let names: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(table_name AS CHAR), CAST(column_name AS CHAR) FROM information_schema.columns \
         WHERE table_schema = 'flashsale' ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&mut connection)
    .await
    .expect("the schema's columns");
    let _ = connection.close().await;
    let mut columns = binlog::Columns::new();
    for (table, column) in names {
        columns.entry(table).or_default().push(column);
    }
    columns
}

/// How long the instance behind `server` took to report not ready (503 from `/readyz`) after
/// its node failed; fails the test past 5 s.
async fn not_ready(server: &Endpoint, node: &str) -> Duration {
    let started = Instant::now();
    loop {
        let ready = server.get("/readyz").await.map(|r| r.status);
        if ready == Ok(503) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/readyz of the instance on {node} still answers {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The 503 answers `app` made because the database refused it (`Unavailable`: a Galera node
/// outside the primary component, say), as its metrics count them.
async fn unreachable_answers(app: &TestApp) -> f64 {
    metric_sum(
        app,
        "flashsale_database_unavailable_total",
        "cause=\"unreachable\"",
    )
    .await
}

/// The sum of `app`'s samples of the counter `name` with the label `label` (`key="value"`).
async fn metric_sum(app: &TestApp, name: &str, label: &str) -> f64 {
    let metrics = app.scrape().await;
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn restock(app: &TestApp, product: u64, qty: u32) {
    let path = format!("/api/admin/products/{product}/restock");
    let reply = app
        .post_admin(&path, Some(ADMIN_TOKEN), &json!({"qty": qty}))
        .await;
    documented(&reply).unwrap_or_else(|wrong| panic!("a restock: {wrong}"));
}

/// Each node's rows, once replication has brought every node to the same ones.
async fn same_rows_on_every_node(apps: &[TestApp]) -> Vec<flashsale_service::store::Dump> {
    let deadline = crate::mariadbd::deadline_in(Duration::from_secs(20));
    loop {
        let mut dumps = Vec::new();
        for app in apps {
            dumps.push(app.dump().await);
        }
        let same = dumps.windows(2).all(|pair| {
            pair[0].products == pair[1].products
                && pair[0].holds == pair[1].holds
                && pair[0].orders == pair[1].orders
                && pair[0].webhooks == pair[1].webhooks
                && pair[0].request_keys == pair[1].request_keys
        });
        if same {
            return dumps;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes still hold different rows after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
