//! Prometheus metrics at `GET /metrics`, through the `metrics` crate's global recorder.
//!
//! The service layer records its domain counters with the `metrics` macros (a no-op without a
//! recorder, as in the simulator); [`install`] sets the Prometheus recorder once per process,
//! and [`render`] writes the exposition text, after reading the gauges that are sampled rather
//! than counted (the database pool).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `flashsale_http_requests_total` | counter | `route`, `status` |
//! | `flashsale_http_request_duration_seconds` | histogram | `route` |
//! | `flashsale_holds_granted_total`, `flashsale_holds_rejected_total` | counter | rejected: `code` |
//! | `flashsale_holds_released_total` | counter | `reason` (`expired`, `payment_failed`, ...) |
//! | `flashsale_orders_total` | counter | `status` a webhook or the sweeper moved it to, or `created` |
//! | `flashsale_webhooks_total` | counter | `result` |
//! | `flashsale_retries_total` | counter | `script`, `cause` (`contention`, `connection`) |
//! | `flashsale_hold_batch_size` | histogram | |
//! | `flashsale_hold_queue_waiting` | gauge | hold requests queued for a batch, all products |
//! | `flashsale_product_cache_total` | counter | `outcome` (`hit`, `miss`) |
//! | `flashsale_sweep_holds_released_total`, `flashsale_sweep_orders_cancelled_total`, `flashsale_sweep_records_purged_total` | counter | |
//! | `flashsale_db_connections` | gauge | `state` (`in_use`, `idle`) |
//! | `flashsale_db_connections_max` | gauge | the pool's size (`--db-max-connections`) |
//! | `flashsale_database_up` | gauge | 1 when the database answered its last ping (each second), else 0 |
//! | `flashsale_database_unavailable_total` | counter | `cause` (`unreachable`, `connection_lost`, `commit_unknown`, `starting`): 503s the database caused |

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::sql::SqlStore;

/// Latency buckets, in seconds: from a cached read to a contended batch.
const SECONDS_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];
/// Batch size buckets, in requests.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the Prometheus recorder for this process and returns the handle that renders it.
///
/// # Errors
/// A recorder is already installed, or the buckets are invalid.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("flashsale_hold_batch_size".into()),
            &BATCH_BUCKETS,
        )?
        .install_recorder()?;
    Ok(handle)
}

/// How often [`upkeep_forever`] drains the recorded histogram samples.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains the histograms' recorded samples into their buckets every [`UPKEEP_INTERVAL`], for
/// as long as the server runs. The recorder keeps every sample until it is drained, and only
/// rendering `/metrics` drains otherwise: unscraped, the server's memory grew by about 6 MiB a
/// minute under load (16 to 72 MiB in ten minutes of `benches/soak.sh`).
pub async fn upkeep_forever(handle: PrometheusHandle) {
    let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticker.tick().await;
        handle.run_upkeep();
    }
}

/// How often [`watch_database_forever`] asks the database whether it answers.
const DATABASE_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long one such question may take before the database counts as down.
const DATABASE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Sets `flashsale_database_up`: 1 when the database answered the last question, else 0.
pub fn set_database_up(up: bool) {
    metrics::gauge!("flashsale_database_up").set(if up { 1.0 } else { 0.0 });
}

/// Asks the database every [`DATABASE_WATCH_INTERVAL`] whether it answers, for as long as the
/// server runs: sets `flashsale_database_up`, and logs each change. The gauge is what an alert
/// watches; the 503s it causes are counted apart (`flashsale_database_unavailable_total`),
/// and neither needs a request to have come.
pub async fn watch_database_forever(store: SqlStore) {
    let mut ticker = tokio::time::interval(DATABASE_WATCH_INTERVAL);
    let mut was_up = true;
    loop {
        ticker.tick().await;
        let up = store.ping(DATABASE_PING_TIMEOUT).await;
        set_database_up(up);
        match (was_up, up) {
            (true, false) => tracing::warn!("the database does not answer"),
            (false, true) => tracing::info!("the database answers again"),
            _ => {}
        }
        was_up = up;
    }
}

/// The exposition text while the server waits for its database at start-up.
pub fn render_starting(handle: &PrometheusHandle) -> String {
    set_database_up(false);
    handle.render()
}

/// The exposition text, with the pool's connections sampled now.
pub fn render(handle: &PrometheusHandle, store: &SqlStore) -> String {
    let (in_use, idle) = store.connections();
    metrics::gauge!("flashsale_db_connections", "state" => "in_use").set(f64::from(in_use));
    metrics::gauge!("flashsale_db_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("flashsale_db_connections_max").set(f64::from(store.max_connections()));
    handle.render()
}
