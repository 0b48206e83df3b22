//! `GET /metrics` held to the list of families in `server/src/metrics.rs` (`FAMILIES`): every
//! family rendered is listed, with its kind, a `# HELP` line, and only the labels and label
//! values the list gives; every listed family is rendered from the first scrape or once what it
//! counts has happened; and the build and the process are described too.

use std::collections::{BTreeMap, BTreeSet};

use flashsale_server::metrics::{Appears, FAMILIES, Family, Kind};

use crate::harness::{Db, TestApp, spawn_app};

on_both_databases!(metrics_are_the_documented_families_each_with_its_help);

/// One sample line: its series name and labels.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

/// The `name{a="x",b="y"} value` of a sample line.
fn sample(line: &str) -> Sample {
    let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
    let Some((name, rest)) = series.split_once('{') else {
        return Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
        };
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}').unwrap_or(rest);
    while let Some((label, after)) = rest.split_once("=\"") {
        let end = after.find('"').unwrap_or(after.len());
        labels.insert(
            label.to_owned(),
            after.get(..end).unwrap_or_default().to_owned(),
        );
        rest = after
            .get(end.saturating_add(1)..)
            .unwrap_or_default()
            .trim_start_matches(',');
    }
    Sample {
        name: name.to_owned(),
        labels,
    }
}

/// A rendered exposition: the families' `# TYPE` and `# HELP` lines and their samples.
#[derive(Default)]
struct Exposition {
    kinds: BTreeMap<String, String>,
    helped: BTreeSet<String>,
    samples: Vec<Sample>,
}

fn parse(text: &str) -> Exposition {
    let mut exposition = Exposition::default();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            exposition.kinds.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            exposition.helped.insert(name.to_owned());
        } else if !line.starts_with('#') {
            exposition.samples.push(sample(line));
        }
    }
    exposition
}

fn documented(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|family| family.name == name)
}

/// The family a sample belongs to: a histogram's series carry a suffix.
fn family_of(exposition: &Exposition, series: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix)
            && exposition.kinds.get(base).map(String::as_str) == Some("histogram")
        {
            return base.to_owned();
        }
    }
    series.to_owned()
}

/// Every family rendered is documented, alike, with its help; every sample has only the
/// documented labels and values.
fn check_against_the_list(exposition: &Exposition) {
    for (name, kind) in &exposition.kinds {
        let family = documented(name).unwrap_or_else(|| panic!("{name} is not in FAMILIES"));
        assert_eq!(kind, family.kind.as_str(), "{name}'s kind");
        assert!(exposition.helped.contains(name), "{name} has a # HELP line");
    }
    for sample in &exposition.samples {
        let name = family_of(exposition, &sample.name);
        let family = documented(&name).unwrap_or_else(|| panic!("{name} is not in FAMILIES"));
        for (label, value) in &sample.labels {
            if family.kind == Kind::Histogram && label == "le" {
                continue;
            }
            let listed = family.labels.iter().find(|l| l.name == label);
            let listed = listed.unwrap_or_else(|| panic!("{name} has no label {label}"));
            assert!(
                listed.values.is_empty() || listed.values.contains(&value.as_str()),
                "{name}{{{label}=\"{value}\"}}: not among {:?}",
                listed.values
            );
        }
    }
}

/// The listed families that `appears` says are due by now and are not rendered.
fn missing(exposition: &Exposition, due: &[Appears]) -> Vec<&'static str> {
    FAMILIES
        .iter()
        .filter(|family| due.contains(&family.appears))
        .filter(|family| !exposition.kinds.contains_key(family.name))
        .map(|family| family.name)
        .collect()
}

/// Grants, refuses, orders, pays, fails a payment, reads from the cache, lets the sweeper
/// release an expired hold, and asks for an unknown path.
async fn use_every_feature(app: &TestApp) {
    let product = app.create_product(100, 5).await;
    let paid = app.hold(product, 1).await;
    app.place_hold(product, 50)
        .await
        .expect_problem(409, "insufficient_stock");
    app.place_order(paid).await.expect_status(201);
    app.webhook("evt-paid", paid, "paid")
        .await
        .expect_status(200);
    let failed = app.hold(product, 1).await;
    app.webhook("evt-failed", failed, "failed")
        .await
        .expect_status(200);
    app.product(product).await;
    app.product(product).await;
    let expiring = app.hold(product, 1).await;
    app.poll_until("the sweeper releases the expired hold", async || {
        app.hold_state(expiring).await == "released"
    })
    .await;
    app.get("/no/such/path")
        .await
        .expect_problem(404, "not_found");
}

async fn metrics_are_the_documented_families_each_with_its_help(db: Db) -> TestApp {
    let app = spawn_app(db, &["--hold-ttl", "1s", "--sweep-interval", "200ms"]).await;
    let fresh = parse(&app.scrape().await);
    check_against_the_list(&fresh);
    let absent = missing(&fresh, &[Appears::Start]);
    assert!(absent.is_empty(), "not rendered from the start: {absent:?}");

    use_every_feature(&app).await;
    let text = app.scrape().await;
    let used = parse(&text);
    check_against_the_list(&used);
    let absent = missing(&used, &[Appears::Start, Appears::FirstUse]);
    assert!(absent.is_empty(), "not rendered once used: {absent:?}");
    for line in [
        r#"flashsale_holds_released_total{reason="payment_failed"} 1"#,
        r#"flashsale_orders_total{status="paid"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    let build = used
        .samples
        .iter()
        .find(|s| s.name == "flashsale_build_info")
        .expect("flashsale_build_info");
    assert_eq!(
        build.labels.get("version").map(String::as_str),
        Some("0.1.0")
    );
    assert!(build.labels.contains_key("commit"), "{text}");
    let resident = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(resident.is_some_and(|bytes| bytes > 1e6), "{text}");
    app
}
