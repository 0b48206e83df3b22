//! One measured run: the scenario's requests prepared once (`Plan`), then one task per
//! connection sending them back to back until the deadline (or the `--requests` budget), each
//! with its own [`RunStats`], merged at the end. That is one `Phase`, driven by `drive_phase`;
//! the expiry storm ([`super::storm`]) drives three phases with the same loop, one of them
//! counting hold grants and their deadlines (`Grants`) as its budget.
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

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use sha2::Sha256;

use super::cli::{RunArgs, Scenario};
use super::cost::{self, Cost};
use super::http::{
    Body, Connection, Target, Template, json_str_field, json_u64_field, rfc3339_unix_ms,
};
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
/// Bad arguments (target URL, missing webhook secret for `flow`; `expiry-storm`, which has
/// phases of its own in [`super::storm`]). Failed requests are not errors: they are counted in
/// the summary.
pub async fn run(args: &RunArgs) -> anyhow::Result<Summary> {
    let target = Target::parse(&args.target)?;
    let plan = Plan::new(args)?;
    let window = Window::after(Instant::now(), args.warmup, args.duration)?;
    let budget = match args.requests {
        Some(requests) => Budget::Requests(requests),
        None => Budget::Window,
    };
    let phase = Phase {
        plan,
        window,
        budget,
        connections: args.connections,
        timeout: args.timeout,
    };
    let database_pid = args.db_pid.or_else(|| cost::local_database_pid(&target));
    let first = tokio::spawn({
        let target = target.clone();
        let measure_from = tokio::time::Instant::from_std(window.measure_from);
        async move {
            tokio::time::sleep_until(measure_from).await;
            cost::sample(&target, database_pid).await
        }
    });
    let done = drive_phase(&target, phase).await?;
    let last = cost::sample(&target, database_pid).await;
    let first = first
        .await
        .context("the first cost sample's task panicked")?;
    let mut summary =
        (done.stats).summary(args.scenario.name(), args.connections, done.elapsed_s)?;
    summary.cost = Some(Cost::between(&first, &last, summary.requests));
    Ok(summary)
}

/// One stretch of requests over `connections` connection tasks: what each sends, when, and how
/// many. A plain run is one phase; the expiry storm runs three.
pub(crate) struct Phase {
    pub plan: Plan,
    pub window: Window,
    pub budget: Budget,
    pub connections: u32,
    /// A request slower than this fails and counts as an error.
    pub timeout: Duration,
}

/// When a phase records and when it stops starting requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Requests started before this are sent but not recorded (the warm-up).
    pub measure_from: Instant,
    /// No request starts at or after this.
    pub stop_at: Instant,
}

impl Window {
    /// A window that measures from `start + warmup` for `duration`.
    ///
    /// # Errors
    /// The instants overflow (a warm-up or duration of centuries).
    pub fn after(start: Instant, warmup: Duration, duration: Duration) -> anyhow::Result<Self> {
        let measure_from = start.checked_add(warmup).context("warm-up too long")?;
        let stop_at = measure_from
            .checked_add(duration)
            .context("duration too long")?;
        Ok(Self {
            measure_from,
            stop_at,
        })
    }
}

/// What, besides the window, ends a phase.
pub(crate) enum Budget {
    /// Only the window.
    Window,
    /// At most this many requests (flows, for `flow`) started in all (`--requests`).
    Requests(u64),
    /// Hold grants counted as they come; see [`Grants`].
    Grants(Grants),
}

/// A phase's hold grants: how many were granted and between which deadlines they lapse, read
/// from each 201's `expires_at`. The phase stops starting requests once `wanted` were granted, or
/// once the earliest deadline is `cutoff_ms` away, since the expiry storm's later phases must
/// fit before it and a longer fill could only fail. Requests in flight when either happens still
/// count, so the count may pass `wanted` by fewer than the phase's connections.
pub(crate) struct Grants {
    wanted: u64,
    cutoff_ms: u64,
    granted: AtomicU64,
    /// Grants whose `expires_at` was missing or did not parse.
    unreadable: AtomicU64,
    /// `u64::MAX` until the first grant.
    earliest_ms: AtomicU64,
    latest_ms: AtomicU64,
}

/// What [`Grants`] saw once its phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrantSpan {
    /// Holds granted (201).
    pub granted: u64,
    /// Grants whose `expires_at` was missing or did not parse: a server whose answers changed.
    pub unreadable: u64,
    /// The earliest and the latest readable `expires_at`, in Unix milliseconds; `None` when
    /// there was none.
    pub deadlines_ms: Option<(u64, u64)>,
}

impl Grants {
    /// Counts up to `wanted` grants, stopping early when the earliest deadline is `cutoff`
    /// away.
    pub fn new(wanted: u64, cutoff: Duration) -> Self {
        Self {
            wanted,
            cutoff_ms: u64::try_from(cutoff.as_millis()).unwrap_or(u64::MAX),
            granted: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            earliest_ms: AtomicU64::new(u64::MAX),
            latest_ms: AtomicU64::new(0),
        }
    }

    fn may_start(&self, now_ms: u64) -> bool {
        let earliest_ms = self.earliest_ms.load(Ordering::Relaxed);
        self.granted.load(Ordering::Relaxed) < self.wanted
            && now_ms.saturating_add(self.cutoff_ms) < earliest_ms
    }

    /// Counts `answer` if it granted a hold, and its deadline.
    fn note(&self, answer: Option<&(StatusCode, Bytes)>) {
        let Some((StatusCode::CREATED, body)) = answer else {
            return;
        };
        self.granted.fetch_add(1, Ordering::Relaxed);
        match json_str_field(body, "expires_at").and_then(rfc3339_unix_ms) {
            Some(expires_ms) => {
                self.earliest_ms.fetch_min(expires_ms, Ordering::Relaxed);
                self.latest_ms.fetch_max(expires_ms, Ordering::Relaxed);
            }
            None => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn span(&self) -> GrantSpan {
        let earliest_ms = self.earliest_ms.load(Ordering::Relaxed);
        let latest_ms = self.latest_ms.load(Ordering::Relaxed);
        GrantSpan {
            granted: self.granted.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            deadlines_ms: (earliest_ms <= latest_ms).then_some((earliest_ms, latest_ms)),
        }
    }
}

/// What a phase measured: every connection's stats merged, the window's length up to the
/// moment the last task finished, and the grants when its budget counted them.
pub(crate) struct PhaseDone {
    pub stats: RunStats,
    pub elapsed_s: f64,
    pub grants: Option<GrantSpan>,
}

/// Runs `phase` against `target`: one task per connection, each sending until the window or
/// the budget ends, then their stats merged. It returns within the window plus one request
/// timeout, whatever the server does.
///
/// # Errors
/// A connection task panicked (a bug), or a histogram failed to merge (never in practice).
pub(crate) async fn drive_phase(target: &Target, phase: Phase) -> anyhow::Result<PhaseDone> {
    let measure_from = phase.window.measure_from;
    let shared = Arc::new(Shared {
        target: target.clone(),
        plan: phase.plan,
        measure_from,
        stop_at: phase.window.stop_at,
        timeout: phase.timeout,
        budget: phase.budget,
        issued: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..phase.connections)
        .map(|index| tokio::spawn(drive(Arc::clone(&shared), index)))
        .collect();
    let mut stats = shared.plan.stats()?;
    for task in tasks {
        let task_stats = task.await.context("a connection task panicked")??;
        stats.merge(&task_stats)?;
    }
    let elapsed_s = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let grants = match &shared.budget {
        Budget::Grants(grants) => Some(grants.span()),
        Budget::Window | Budget::Requests(_) => None,
    };
    Ok(PhaseDone {
        stats,
        elapsed_s,
        grants,
    })
}

/// What every task reads: the target, the plan, the clock marks and the budget.
struct Shared {
    target: Target,
    plan: Plan,
    measure_from: Instant,
    stop_at: Instant,
    timeout: Duration,
    budget: Budget,
    issued: AtomicU64,
}

impl Shared {
    /// Whether another request (or flow) may start: before the deadline and within the budget.
    fn may_start(&self) -> bool {
        if Instant::now() >= self.stop_at {
            return false;
        }
        match &self.budget {
            Budget::Window => true,
            Budget::Requests(budget) => self.issued.fetch_add(1, Ordering::Relaxed) < *budget,
            Budget::Grants(grants) => grants.may_start(unix_ms()),
        }
    }

    fn measured(&self, started: Instant) -> bool {
        started >= self.measure_from
    }

    /// Hands an answer to the budget, which counts grants when it is [`Budget::Grants`].
    fn note(&self, answer: Option<&(StatusCode, Bytes)>) {
        if let Budget::Grants(grants) = &self.budget {
            grants.note(answer);
        }
    }
}

/// The scenario's requests, built before the run starts.
#[expect(
    clippy::large_enum_variant,
    reason = "one plan per run, built once and shared by reference"
)]
pub(crate) enum Plan {
    /// The same request over and over.
    Single(Template),
    /// One of these requests at a time, drawn at random.
    Spread(Vec<Template>),
    /// Connection `i` sends only the `(i mod n)`-th of these `n` requests and records it as
    /// kind `i mod n`: a fixed mix of kinds, each with its own stats (the expiry storm's holds
    /// and reads).
    Split(Vec<Template>),
    /// Hold, order, signed webhook.
    Flow(FlowPlan),
}

pub(crate) struct FlowPlan {
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
        Ok(match args.scenario {
            Scenario::Healthz => Plan::Single(Template::get("/healthz")?),
            Scenario::GetProduct => Plan::Single(get_product(args.product)?),
            Scenario::HotHolds => Plan::Single(hold(args.product)?),
            Scenario::SpreadHolds => Plan::Spread(
                args.products
                    .ids()
                    .map(hold)
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
                    .map(hold)
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
            Scenario::ExpiryStorm => {
                bail!("expiry-storm runs in phases of its own (load::storm), not as one plan")
            }
        })
    }

    fn stats(&self) -> anyhow::Result<RunStats> {
        match self {
            Plan::Single(_) | Plan::Spread(_) => RunStats::new(1, false),
            Plan::Split(templates) => RunStats::new(templates.len(), false),
            Plan::Flow(_) => RunStats::new(FLOW_STEPS.len(), true),
        }
    }
}

/// `POST /api/holds {"product_id":<product>,"qty":1}`.
pub(crate) fn hold(product: u64) -> anyhow::Result<Template> {
    Template::post_json(
        "/api/holds",
        format!(r#"{{"product_id":{product},"qty":1}}"#),
    )
}

/// `GET /api/products/<product>`.
pub(crate) fn get_product(product: u64) -> anyhow::Result<Template> {
    Template::get(&format!("/api/products/{product}"))
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
                let answer = link.exchange(&shared, request, &mut stats.steps[0]).await;
                shared.note(answer.as_ref());
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
            Plan::Split(templates) => {
                let kind = usize::try_from(index)
                    .ok()
                    .and_then(|index| index.checked_rem(templates.len()));
                let (Some(template), Some(step)) = (
                    kind.and_then(|kind| templates.get(kind)),
                    kind.and_then(|kind| stats.steps.get_mut(kind)),
                ) else {
                    break; // An empty split has nothing to send.
                };
                let request = template.request(&shared.target);
                let answer = link.exchange(&shared, request, step).await;
                shared.note(answer.as_ref());
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

/// The wall clock in Unix milliseconds, the unit of the server's `expires_at`. The server runs
/// on the same machine (or a synchronised one), so its deadlines and this clock agree.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
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

    fn granted(expires_at: &str) -> Option<(StatusCode, Bytes)> {
        let body = format!(r#"{{"hold_id":1,"expires_at":"{expires_at}","state":"held"}}"#);
        Some((StatusCode::CREATED, Bytes::from(body)))
    }

    #[test]
    fn grants_keep_the_earliest_and_the_latest_deadline() {
        let grants = Grants::new(10, Duration::from_secs(9));
        grants.note(granted("2026-11-25T04:22:24.000Z").as_ref());
        grants.note(granted("2026-11-25T04:22:23.500Z").as_ref());
        grants.note(granted("2026-11-25T04:22:25.250Z").as_ref());
        grants.note(Some(&(StatusCode::CONFLICT, Bytes::from_static(b"{}"))));
        grants.note(None);
        let span = grants.span();
        assert_eq!(span.granted, 3);
        assert_eq!(span.unreadable, 0);
        assert_eq!(
            span.deadlines_ms,
            Some((1_795_580_543_500, 1_795_580_545_250))
        );
    }

    #[test]
    fn a_grant_without_a_readable_deadline_is_counted_as_unreadable() {
        let grants = Grants::new(10, Duration::from_secs(9));
        grants.note(granted("soon").as_ref());
        let span = grants.span();
        assert_eq!((span.granted, span.unreadable), (1, 1));
        assert_eq!(span.deadlines_ms, None);
    }

    #[test]
    fn grants_stop_at_the_wanted_count_or_when_the_earliest_deadline_nears() {
        let deadline_ms = 1_795_580_543_500;
        let grants = Grants::new(2, Duration::from_secs(9));
        assert!(grants.may_start(deadline_ms), "no deadline is known yet");
        grants.note(granted("2026-11-25T04:22:23.500Z").as_ref());
        assert!(grants.may_start(deadline_ms - 9_001));
        assert!(
            !grants.may_start(deadline_ms - 9_000),
            "the cutoff has come"
        );
        grants.note(granted("2026-11-25T04:22:30.000Z").as_ref());
        assert!(
            !grants.may_start(deadline_ms - 60_000),
            "all wanted were granted"
        );
    }

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
