//! One measured run: the scenario's requests prepared once (`Plan`), then one task per
//! connection sending them back to back until the deadline (or the `--requests` budget), each
//! with its own [`RunStats`], merged at the end.
//!
//! Timing: the run starts, the warm-up passes (requests are sent but not recorded), then the
//! measured window lasts `--duration`. A request is recorded when it *started* inside the
//! window; no request starts after it, and every request has a timeout, so a run ends by itself
//! within `warmup + duration + timeout` whatever the server does. The window's length for
//! rates is measured up to the moment the last task finished.
//!
//! A request that fails (refused connection, reset, timeout) counts as an error and drops the
//! connection; the next request reconnects. A connection the server closed between requests is
//! reopened silently and counted in `reconnects`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use sha2::Sha256;

use super::cli::{RunArgs, Scenario};
use super::http::{Body, Connection, Target, Template, json_u64_field};
use super::stats::{FLOW_STEPS, RunStats, StepStats, Summary};

/// The webhook signature header, as `server/src/signature.rs` names it.
const SIGNATURE_HEADER: &str = "x-flashsale-signature";

/// Pause after a failed connect before the next attempt, so a server that is down costs a
/// bounded number of attempts rather than a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

type HmacSha256 = Hmac<Sha256>;

/// Runs `args.scenario` and returns its summary.
///
/// # Errors
/// Bad arguments (target URL, missing webhook secret for `flow`). Failed requests are not
/// errors: they are counted in the summary.
pub async fn run(args: &RunArgs) -> anyhow::Result<Summary> {
    let target = Target::parse(&args.target)?;
    let plan = Plan::new(args)?;
    let started = Instant::now();
    let measure_from = started
        .checked_add(args.warmup)
        .context("warm-up too long")?;
    let stop_at = measure_from
        .checked_add(args.duration)
        .context("duration too long")?;
    let shared = Arc::new(Shared {
        target,
        plan,
        measure_from,
        stop_at,
        timeout: args.timeout,
        budget: args.requests,
        issued: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..args.connections)
        .map(|index| tokio::spawn(drive(Arc::clone(&shared), index)))
        .collect();
    let mut total = shared.plan.stats()?;
    for task in tasks {
        let stats = task.await.context("a connection task panicked")??;
        total.merge(&stats)?;
    }
    let elapsed_s = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    total.summary(args.scenario.name(), args.connections, elapsed_s)
}

/// What every task reads: the target, the plan, the clock marks and the request budget.
struct Shared {
    target: Target,
    plan: Plan,
    measure_from: Instant,
    stop_at: Instant,
    timeout: Duration,
    budget: Option<u64>,
    issued: AtomicU64,
}

impl Shared {
    /// Whether another request (or flow) may start: before the deadline and within the budget.
    fn may_start(&self) -> bool {
        if Instant::now() >= self.stop_at {
            return false;
        }
        match self.budget {
            None => true,
            Some(budget) => self.issued.fetch_add(1, Ordering::Relaxed) < budget,
        }
    }

    fn measured(&self, started: Instant) -> bool {
        started >= self.measure_from
    }
}

/// The scenario's requests, built before the run starts.
#[expect(
    clippy::large_enum_variant,
    reason = "one plan per run, built once and shared by reference"
)]
enum Plan {
    /// The same request over and over.
    Single(Template),
    /// One of these requests at a time, drawn at random.
    Spread(Vec<Template>),
    /// Hold, order, signed webhook.
    Flow(FlowPlan),
}

struct FlowPlan {
    /// `POST /api/holds` for each product, in round-robin order.
    holds: Vec<Template>,
    /// `POST /api/orders`; its body is written per flow.
    order: Template,
    /// `POST /api/payments/webhook`; its body and signature are written per flow.
    webhook: Template,
    /// The HMAC keyed with the webhook secret once; each signature clones it.
    mac: HmacSha256,
    /// Unique to this process, so idempotency keys never repeat across runs on one database.
    nonce: String,
    signature_header: HeaderName,
}

impl Plan {
    fn new(args: &RunArgs) -> anyhow::Result<Self> {
        let hold_body = |product: u64| format!(r#"{{"product_id":{product},"qty":1}}"#);
        Ok(match args.scenario {
            Scenario::Healthz => Plan::Single(Template::get("/healthz")?),
            Scenario::GetProduct => {
                Plan::Single(Template::get(&format!("/api/products/{}", args.product))?)
            }
            Scenario::HotHolds => {
                Plan::Single(Template::post_json("/api/holds", hold_body(args.product))?)
            }
            Scenario::SpreadHolds => Plan::Spread(
                args.products
                    .ids()
                    .map(|product| Template::post_json("/api/holds", hold_body(product)))
                    .collect::<anyhow::Result<_>>()?,
            ),
            Scenario::Flow => {
                let secret = args
                    .webhook_secret
                    .as_deref()
                    .filter(|secret| !secret.is_empty())
                    .context("the flow scenario needs --webhook-secret (the server's)")?;
                let mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes())
                    .map_err(|_| anyhow!("the webhook secret is not a valid HMAC key"))?;
                let holds = args
                    .products
                    .ids()
                    .map(|product| Template::post_json("/api/holds", hold_body(product)))
                    .collect::<anyhow::Result<_>>()?;
                Plan::Flow(FlowPlan {
                    holds,
                    order: Template::post_json("/api/orders", Bytes::new())?,
                    webhook: Template::post_json("/api/payments/webhook", Bytes::new())?,
                    mac,
                    nonce: nonce(),
                    signature_header: HeaderName::from_static(SIGNATURE_HEADER),
                })
            }
        })
    }

    fn stats(&self) -> anyhow::Result<RunStats> {
        match self {
            Plan::Single(_) | Plan::Spread(_) => RunStats::new(1, false),
            Plan::Flow(_) => RunStats::new(FLOW_STEPS.len(), true),
        }
    }
}

/// One connection's loop.
async fn drive(shared: Arc<Shared>, index: u32) -> anyhow::Result<RunStats> {
    let mut stats = shared.plan.stats()?;
    let mut link = Link::default();
    let mut flows = 0_u64;
    while shared.may_start() {
        match &shared.plan {
            Plan::Single(template) => {
                let request = template.request(&shared.target);
                link.exchange(&shared, request, &mut stats.steps[0]).await;
            }
            Plan::Spread(templates) => {
                let count = u64::try_from(templates.len()).unwrap_or(u64::MAX);
                let drawn = rand::random::<u64>().checked_rem(count).unwrap_or(0);
                let drawn = usize::try_from(drawn).unwrap_or(0);
                if let Some(template) = templates.get(drawn) {
                    let request = template.request(&shared.target);
                    link.exchange(&shared, request, &mut stats.steps[0]).await;
                }
            }
            Plan::Flow(plan) => {
                flow(&shared, plan, &mut link, &mut stats, index, flows).await;
                flows = flows.wrapping_add(1);
            }
        }
    }
    stats.reconnects = link.reconnects;
    Ok(stats)
}

/// One flow: hold, then (if granted) order, then (if created) the signed `paid` webhook.
/// Flow number `flows` of connection `index` uses the product `index + flows` round robin.
async fn flow(
    shared: &Shared,
    plan: &FlowPlan,
    link: &mut Link,
    stats: &mut RunStats,
    index: u32,
    flows: u64,
) {
    let started = Instant::now();
    let cursor = u64::from(index).wrapping_add(flows);
    let products = u64::try_from(plan.holds.len()).unwrap_or(u64::MAX);
    let product = cursor
        .checked_rem(products)
        .and_then(|product| usize::try_from(product).ok())
        .unwrap_or(0);
    let Some(hold) = plan.holds.get(product) else {
        return;
    };
    let request = hold.request(&shared.target);
    let Some(hold_id) = link
        .exchange(shared, request, &mut stats.steps[0])
        .await
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .and_then(|(_, body)| json_u64_field(&body, "hold_id"))
    else {
        return;
    };
    let body = Bytes::from(format!(r#"{{"hold_id":{hold_id}}}"#));
    let request = plan.order.request_with(&shared.target, body, None);
    let ordered = link.exchange(shared, request, &mut stats.steps[1]).await;
    if !matches!(ordered, Some((StatusCode::CREATED, _))) {
        return;
    }
    let body = format!(
        r#"{{"idempotency_key":"load-{}-{index}-{flows}","hold_id":{hold_id},"status":"paid"}}"#,
        plan.nonce
    );
    let Ok(signature) = HeaderValue::from_str(&sign(&plan.mac, unix_s(), body.as_bytes())) else {
        return;
    };
    let header = Some((plan.signature_header.clone(), signature));
    let request = plan
        .webhook
        .request_with(&shared.target, Bytes::from(body), header);
    let paid = link.exchange(shared, request, &mut stats.steps[2]).await;
    if paid.is_some_and(|(status, _)| status.is_success()) && shared.measured(started) {
        stats.record_flow(started.elapsed());
    }
}

/// The header value `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as
/// `flashsale_server::signature::sign` writes it.
fn sign(mac: &HmacSha256, t: u64, body: &[u8]) -> String {
    let t = t.to_string();
    let mut mac = mac.clone();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

/// A task's connection, opened on demand.
#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    /// Whether a connection was ever opened, so reopening one counts as a reconnect.
    opened: bool,
    reconnects: u64,
}

impl Link {
    /// Sends `request` (connecting first if needed) and records the answer or the failure in
    /// `step` when the request started inside the measured window. `None` when there was no
    /// answer.
    async fn exchange(
        &mut self,
        shared: &Shared,
        request: hyper::Request<Body>,
        step: &mut StepStats,
    ) -> Option<(StatusCode, Bytes)> {
        if self.connection.as_ref().is_none_or(Connection::is_closed) {
            self.connection = None;
            match Connection::open(&shared.target, shared.timeout).await {
                Ok(connection) => {
                    if self.opened {
                        self.reconnects = self.reconnects.saturating_add(1);
                    }
                    self.opened = true;
                    self.connection = Some(connection);
                }
                Err(_) => {
                    if shared.measured(Instant::now()) {
                        step.error();
                    }
                    let left = shared.stop_at.saturating_duration_since(Instant::now());
                    tokio::time::sleep(RECONNECT_PAUSE.min(left)).await;
                    return None;
                }
            }
        }
        let connection = self.connection.as_mut()?;
        let started = Instant::now();
        match connection.send(request, shared.timeout).await {
            Ok((status, body)) => {
                if shared.measured(started) {
                    step.record(status, started.elapsed());
                }
                Some((status, body))
            }
            Err(_) => {
                self.connection = None;
                if shared.measured(started) {
                    step.error();
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_servers_format() -> anyhow::Result<()> {
        // HMAC-SHA256("sec", "1700000000.{}"), computed independently with openssl:
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac sec
        let mac = <HmacSha256 as KeyInit>::new_from_slice(b"sec").map_err(|_| anyhow!("key"))?;
        let header = sign(&mac, 1_700_000_000, b"{}");
        let expected = "ff6970faa1dc67a9fa5a149541fec6ff33853a0c89dbeec72522094028fca2b8";
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
        Ok(())
    }
}
