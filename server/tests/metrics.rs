//! The service's domain metrics as `GET /metrics` renders them. A test binary of its own: the
//! Prometheus recorder is global to the process, so nothing else may record into it.

mod common;

use common::{T0, TTL_MS, sqlite};
use flashsale_core::{Command, Qty};
use flashsale_service::clock::ManualClock;

/// The line of `text` for `metric`, e.g. `flashsale_holds_granted_total 3`.
fn value<'a>(text: &'a str, metric: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_count_their_size_grants_refusals_and_expiry_work_by_path() {
    let handle = flashsale_server::metrics::install().expect("the recorder");
    let db = sqlite().await;
    let clock = ManualClock::new(T0);
    let service = db.service(&clock).await;
    let p = service
        .create_product("P", flashsale_core::Cents(100), Qty(3))
        .await
        .expect("created")
        .id;
    service.place_hold(p, Qty(3)).await.expect("granted");
    clock.advance(TTL_MS as i64);
    // Refused, then a grant folding the expired hold's bucket, then a grant finding none.
    let commands = [4, 1, 2].map(|qty| Command::PlaceHold {
        product_id: p,
        qty: Qty(qty),
        ttl_ms: TTL_MS,
        key: None,
    });
    service.execute_batch(&commands).await;
    let text = flashsale_server::metrics::render(&handle, service.store());
    let expected = [
        ("flashsale_holds_granted_total", "3"),
        (
            "flashsale_holds_rejected_total{code=\"insufficient_stock\"}",
            "1",
        ),
        ("flashsale_holds_expired_total{path=\"request\"}", "1"),
        ("flashsale_units_expired_total{path=\"request\"}", "3"),
        ("flashsale_holds_retired_total{path=\"sweeper\"}", "0"),
        // The product's creation, the first hold, then the three holds together.
        ("flashsale_batch_size_count", "3"),
        ("flashsale_batch_size_sum", "5"),
    ];
    for (metric, wanted) in expected {
        assert_eq!(value(&text, metric), Some(wanted), "{metric} in:\n{text}");
    }
    // The sweeper retires the expired hold's row, and says none are left to retire.
    service.sweep().await.expect("swept");
    let text = flashsale_server::metrics::render(&handle, service.store());
    let expected = [
        ("flashsale_holds_retired_total{path=\"sweeper\"}", "1"),
        ("flashsale_holds_expired_total{path=\"sweeper\"}", "0"),
        ("flashsale_holds_expired_unretired", "0"),
    ];
    for (metric, wanted) in expected {
        assert_eq!(value(&text, metric), Some(wanted), "{metric} in:\n{text}");
    }
    db.finish(&service).await;
}
