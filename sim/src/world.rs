//! One simulated run: server instances with their own clocks sharing one [`SimStore`], clients
//! following the plan's journeys, a payment provider that delivers late, early, twice, at once,
//! with conflicting verdicts and for unknown holds, an admin restocking, and chaos (clock steps,
//! crashes). Clients that send an `Idempotency-Key` retry under it after errors. The checks: the
//! invariants after every commit (in the store); every answer to one webhook key the same; every
//! idempotency key applied at most once and always answering the same resource; every answer a
//! client saw equal to the commit-order replay's, and every read a client made (some read around
//! exact hold deadlines) given by a state of the replay it may have seen (see `refine`); and a
//! liveness phase at the end
//! in which faults stop, clocks heal, time passes every deadline and everything must settle.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flashsale_core::{
    Cents, Command, HoldId, HoldState, IdempotencyKey, Order, OrderStatus, PaymentStatus,
    ProductId, Qty, Rejection, Timestamp, WebhookPayload, WebhookResult,
};
use flashsale_server::clock::Clock;
use flashsale_server::service::{
    BatchRun, BatchScope, BatchTag, Config, HoldPlaced, Keyed, OrderPlaced, ProductView, Service,
    ServiceError, SweepReport, WebhookAnswer,
};
use flashsale_server::store::StoreError;
use madsim::rand::{Rng, thread_rng};
use madsim::task::JoinHandle;

use crate::clock::{SimClock, true_now};
use crate::failure::{Check, Failure};
use crate::plan::FaultProfile;
use crate::plan::{Chaos, Journey, Plan, Verdict};
use crate::refine::{self, Answer, OP, OpContext, Read, Request, Seen, Target};
use crate::store::{Bug, FaultCounts, SimStore, sim_us};
use crate::trace::Event;
use crate::words;

type Svc = Service<SimStore, SimClock>;

/// One server instance's service: queued requests carry their request context to the batch that
/// decides them, so the storage logs a batch's transaction for each of its requests, and a panic
/// while deciding a batch fails the seed at the batch's first request.
fn instance_service(
    store: &SimStore,
    clock: SimClock,
    config: Config,
    failure: &Arc<Mutex<Option<Failure>>>,
) -> Arc<Svc> {
    let service = Service::new(store.clone(), clock, config);
    let scope = BatchOfRequests {
        store: store.clone(),
        failure: failure.clone(),
    };
    Arc::new(service.with_batch_scope(Arc::new(scope)))
}

/// An instance's batch scope: its requests' contexts carried to the batch's transaction
/// ([`refine::RequestContexts`]), and a panic while deciding the batch recorded as the seed's
/// failure at the batch's first request, as a panic in a request's own task is; the batch's
/// requests are then answered that their commit is unknown.
#[derive(Debug)]
struct BatchOfRequests {
    store: SimStore,
    failure: Arc<Mutex<Option<Failure>>>,
}

impl BatchScope for BatchOfRequests {
    fn capture(&self) -> Option<BatchTag> {
        refine::RequestContexts.capture()
    }

    fn scope<'a>(&self, tags: Vec<Option<BatchTag>>, run: BatchRun<'a>) -> BatchRun<'a> {
        let first = tags
            .iter()
            .flatten()
            .find_map(|tag| tag.downcast_ref::<OpContext>().map(|op| op.id));
        let size = tags.len();
        let run = refine::RequestContexts.scope(tags, run);
        let (store, failure) = (self.store.clone(), self.failure.clone());
        Box::pin(async move {
            match (CatchUnwind {
                inner: Box::pin(run),
            })
            .await
            {
                Ok(answers) => answers,
                Err(message) => {
                    let panicked =
                        Failure::new(Check::Panic, "panic", format!("panicked: {message}"));
                    record_failure(&failure, &store, panicked.at_request(first));
                    let unknown = || StoreError::CommitUnknown("the batch panicked".into());
                    (0..size).map(|_| Err(unknown().into())).collect()
                }
            }
        })
    }
}

/// How long a client waits for an answer before giving up on a request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times the provider delivers one key before leaving it for the liveness phase.
const DELIVERY_ATTEMPTS_MAX: u32 = 6;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed: madsim's scheduler, latencies and faults, and (through the plan) the workload.
    pub seed: u64,
    /// The workload.
    pub plan: Plan,
    /// A planted bug, for proving the checks.
    pub bug: Option<Bug>,
    /// Keep every trace event for printing.
    pub trace: bool,
}

/// Counters of what happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent to the service (holds, orders, webhooks, sweeps).
    pub requests: u64,
    /// Holds granted.
    pub holds_granted: u64,
    /// Holds refused for stock.
    pub holds_rejected: u64,
    /// Orders created.
    pub orders_created: u64,
    /// Order requests answered with an existing order.
    pub orders_existing: u64,
    /// Orders refused (hold expired or released).
    pub orders_refused: u64,
    /// Requests that failed (busy, lost connection, crash, timeout).
    pub request_errors: u64,
    /// Webhook answers by result word, plus `replayed`.
    pub webhooks: BTreeMap<String, u64>,
    /// Webhook races exercised: early, duplicate_concurrent, duplicate_sequential, conflicting,
    /// after_expiry, unknown_hold.
    pub races: BTreeMap<String, u64>,
    /// Crashes.
    pub crashes: u64,
    /// Clock steps forward.
    pub clock_steps_forward: u64,
    /// Clock steps back.
    pub clock_steps_back: u64,
    /// Hold and order requests retried under their idempotency key.
    pub keyed_retries: u64,
    /// Keyed requests answered from their key's record.
    pub keyed_replays: u64,
    /// Keyed requests refused because the key was still in flight on that server.
    pub keys_in_flight: u64,
    /// Restocks answered.
    pub restocks: u64,
    /// Client answers checked against the commit-order replay.
    pub answers_checked: u64,
    /// Client reads checked against the states of the commit-order replay they may have seen.
    pub reads_checked: u64,
    /// Product reads decided exactly at a hold's deadline on their instance's clock.
    pub reads_at_deadline: u64,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Operations planned.
    pub ops: usize,
    /// How often they fired.
    pub fault_counts: FaultCounts,
    /// What happened.
    pub stats: Stats,
    /// Simulated time, in milliseconds.
    pub sim_ms: u64,
    /// Hash of the trace.
    pub trace_hash: u64,
    /// Trace events recorded.
    pub trace_events: u64,
    /// The kept trace, with `trace`.
    pub trace: Vec<Event>,
    /// Every request sent, in the order they were answered.
    pub requests: Vec<RequestSpan>,
    /// The first failure, if any.
    pub failure: Option<Failure>,
}

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// A client, from 0.
    Client(usize),
    /// The payment provider.
    Provider,
    /// The admin.
    Admin,
    /// An instance's sweeper.
    Sweeper,
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lane::Client(c) => write!(f, "client {c}"),
            Lane::Provider => f.write_str("provider"),
            Lane::Admin => f.write_str("admin"),
            Lane::Sweeper => f.write_str("sweeper"),
        }
    }
}

/// One request: who sent it where, when, and what came back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RequestSpan {
    /// Its number in the run (`r<N>` in the trace).
    pub request: u64,
    /// The instance it was sent to.
    pub instance: usize,
    /// Who sent it.
    pub lane: Lane,
    /// Simulated time it was sent at, in microseconds since the run began.
    pub start_us: u64,
    /// Simulated time it was answered (or given up) at.
    pub end_us: u64,
    /// The request in the API's words (with `trace`; empty otherwise).
    pub what: String,
    /// The answer in the API's words (with `trace`; empty otherwise).
    pub outcome: String,
}

/// Runs one seed to completion in its own madsim runtime. A panic anywhere in the run (an
/// assertion in the core, the service or the simulator) is a failure of that seed, reported
/// with its message, what the run did until then and the last trace lines before it.
pub fn run(config: &RunConfig) -> Report {
    let runtime =
        madsim::runtime::Runtime::with_seed_and_config(config.seed, madsim::Config::default());
    let owned = config.clone();
    IN_RUN.with(|in_run| in_run.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        runtime.block_on(async move { World::run(owned).await })
    }));
    IN_RUN.with(|in_run| in_run.set(false));
    let partial = PARTIAL.with(|slot| slot.borrow_mut().take());
    outcome.unwrap_or_else(|payload| panicked(config, &*payload, partial))
}

/// What a run that panicked outside a request leaves: its storage and counters so far.
struct Partial {
    store: SimStore,
    stats: Arc<Mutex<Stats>>,
    failure: Arc<Mutex<Option<Failure>>>,
    requests: Arc<Mutex<Vec<RequestSpan>>>,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    static PARTIAL: std::cell::RefCell<Option<Partial>> = const { std::cell::RefCell::new(None) };
    static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic's message and where it happened.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic".to_owned());
    let location = LAST_PANIC.with(|last| last.borrow_mut().take());
    match location {
        Some(location) => format!("{message} ({location})"),
        None => message,
    }
}

/// The report of a run that panicked outside any request (the run itself cannot go on).
fn panicked(
    config: &RunConfig,
    payload: &(dyn std::any::Any + Send),
    partial: Option<Partial>,
) -> Report {
    let message = panic_message(payload);
    let mut failure = Failure::new(Check::Panic, "panic", format!("panicked: {message}"));
    let Some(partial) = partial else {
        return Report {
            seed: config.seed,
            ops: config.plan.ops(),
            fault_counts: FaultCounts::default(),
            stats: Stats::default(),
            sim_ms: 0,
            trace_hash: 0,
            trace_events: 0,
            trace: Vec::new(),
            requests: Vec::new(),
            failure: Some(failure),
        };
    };
    let trace = partial.store.trace();
    failure.trace_tail = trace.tail();
    failure.at_ms = Some(trace.last_at_us() / 1_000);
    let first = partial
        .store
        .violation()
        .or_else(|| lock(&partial.failure).clone());
    Report {
        seed: config.seed,
        ops: config.plan.ops(),
        fault_counts: partial.store.counts(),
        stats: lock(&partial.stats).clone(),
        sim_ms: trace.last_at_us() / 1_000,
        trace_hash: trace.hash(),
        trace_events: trace.len(),
        trace: trace.events().to_vec(),
        requests: lock(&partial.requests).clone(),
        failure: Some(first.unwrap_or(failure)),
    }
}

/// Keeps panics inside a run quiet (a failing seed is reported, and shrinking panics many
/// times) while remembering where the last one happened. Panics outside a run (a failing test's
/// assertion) still go to the hook that was there before.
pub fn quiet_panics() {
    let before = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_RUN.with(std::cell::Cell::get) {
            let location = info
                .location()
                .map(|l| format!("at {}:{}", l.file(), l.line()));
            LAST_PANIC.with(|last| *last.borrow_mut() = location);
        } else {
            before(info);
        }
    }));
}

/// A future that turns a panic while polling it into `Err` with the panic's message, so a
/// panic in one request fails the seed without taking the run down.
struct CatchUnwind<F> {
    inner: std::pin::Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

struct Instance {
    clock: SimClock,
    service: Arc<Svc>,
    inflight: Vec<JoinHandle<()>>,
}

struct World {
    store: SimStore,
    service_config: Config,
    instances: Mutex<Vec<Instance>>,
    stats: Arc<Mutex<Stats>>,
    /// Each webhook key's first answer (result, order) and the request it answered.
    answers: Mutex<BTreeMap<String, FirstAnswer>>,
    undelivered: Mutex<Vec<(WebhookPayload, Option<ProductId>)>>,
    failure: Arc<Mutex<Option<Failure>>>,
    requests: Arc<Mutex<Vec<RequestSpan>>>,
    /// Whether to keep what each request sent and was answered, for a report.
    keep: bool,
    skew_max_ms: Mutex<u64>,
    products: Vec<ProductId>,
    next_key: Mutex<u64>,
    next_op: Mutex<u64>,
    /// What clients saw, by request number, for the replay to check.
    client_answers: Mutex<BTreeMap<u64, Answer>>,
    /// What clients read, for the replay to check.
    client_reads: Mutex<Vec<Read>>,
}

/// What a client saw, as the commit-order replay decides it; `None` for answers it does not
/// decide (a replay from a request key's record, which the world checks itself, or a sweep).
trait Answered {
    fn answer(&self) -> Option<Answer>;

    /// The answer in the API's words, for the trace.
    fn describe(&self) -> String;

    /// What the trace hash takes of the answer: its kind and ids.
    fn digest(&self) -> [u64; 3];
}

/// A keyed answer's words: a replay from the key's record says so.
fn keyed_words(replayed: bool, answer: &Answer) -> String {
    let replay = if replayed {
        " (replayed from its key's record)"
    } else {
        ""
    };
    format!("{}{replay}", words::answer(answer))
}

impl Answered for Keyed<HoldPlaced> {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        words::answer(&Answer::from(self))
    }

    fn digest(&self) -> [u64; 3] {
        [1, self.value.hold.id.0, u64::from(self.replayed)]
    }
}

impl Answered for Keyed<OrderPlaced> {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        words::answer(&Answer::from(self))
    }

    fn digest(&self) -> [u64; 3] {
        let flags = u64::from(self.value.created) | u64::from(self.replayed) << 1;
        [2, self.value.order.id.0, flags]
    }
}

impl Answered for WebhookAnswer {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        self.answer()
            .map(|a| keyed_words(self.replayed, &a))
            .unwrap_or_default()
    }

    fn digest(&self) -> [u64; 3] {
        let order = self.record.order_id.map_or(u64::MAX, |o| o.0);
        [
            3,
            self.record.result as u64 | u64::from(self.replayed) << 8,
            order,
        ]
    }
}

impl Answered for ProductView {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        self.answer().map(|a| words::answer(&a)).unwrap_or_default()
    }

    fn digest(&self) -> [u64; 3] {
        [
            4,
            u64::from(self.product.stock.0),
            self.product.units_received,
        ]
    }
}

/// What a read was answered, and the clock reading its request decided at.
struct ReadAnswer {
    seen: Seen,
    now: Option<Timestamp>,
}

impl Answered for ReadAnswer {
    fn answer(&self) -> Option<Answer> {
        // Reads are checked against every state they may have seen, not at one log entry.
        None
    }

    fn describe(&self) -> String {
        words::seen(&self.seen)
    }

    fn digest(&self) -> [u64; 3] {
        match &self.seen {
            Seen::Product { product, available } => [10, product.id.0, u64::from(available.0)],
            Seen::Hold { hold, view } => [11, hold.id.0, *view as u64],
            Seen::Order(order) => [12, order.id.0, order.status as u64],
        }
    }
}

impl Answered for SweepReport {
    fn answer(&self) -> Option<Answer> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "sweep released {} holds, cancelled {} orders",
            self.holds_released, self.orders_cancelled
        )
    }

    fn digest(&self) -> [u64; 3] {
        [5, self.holds_released as u64, self.orders_cancelled as u64]
    }
}

/// Records `failure` in `slot` unless a failure came first, with the trace's last lines and the
/// time now.
fn record_failure(slot: &Mutex<Option<Failure>>, store: &SimStore, mut failure: Failure) {
    let mut first = lock(slot);
    if first.is_none() {
        if failure.trace_tail.is_empty() {
            failure.trace_tail = store.trace().tail();
        }
        failure.at_ms = failure.at_ms.or(Some(sim_us() / 1_000));
        *first = Some(failure);
    }
}

/// A webhook key's first answer: its result, its order, and the request it answered.
type FirstAnswer = (WebhookResult, Option<u64>, u64);

/// Why a client request got no answer from the service.
#[derive(Debug)]
enum CallError {
    Service(ServiceError),
    Crashed,
    Timeout,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl World {
    async fn run(config: RunConfig) -> Report {
        let faults = config.plan.faults;
        let store = SimStore::new(FaultProfile::CALM, config.bug);
        if config.trace {
            store.keep_trace();
        }
        let plan = config.plan.clone();
        let service_config = Config {
            hold_ttl_ms: plan.hold_ttl_ms,
            payment_window_ms: plan.payment_window_ms,
            batch_max: plan.batch_max,
            // Records are never purged: the checkers replay every one (see `purge_records`).
            request_key_retention_ms: u64::MAX,
            webhook_retention_ms: u64::MAX,
            ..Config::default()
        };
        let setup = Service::new(store.clone(), SimClock::new(0, 0), service_config);
        let mut products = Vec::new();
        for (i, &stock) in plan.stocks.iter().enumerate() {
            let name = format!("P{i}");
            let price_cents = Cents(100);
            let command = Command::CreateProduct {
                name: name.clone(),
                price_cents,
                stock: Qty(stock),
            };
            let create = setup.create_product(&name, price_cents, Qty(stock));
            let op = OpContext::new(i as u64, command, None);
            let created = OP.scope(op, create).await;
            products.push(created.map(|p| p.id).unwrap_or(ProductId(0)));
        }
        store.set_faults(faults);
        let failure = Arc::new(Mutex::new(None));
        let instances = (0..plan.servers)
            .map(|_| {
                let mut rng = thread_rng();
                let clock = SimClock::new(rng.gen_range(-2_000..2_000), rng.gen_range(-500..500));
                let service = instance_service(&store, clock.clone(), service_config, &failure);
                Instance {
                    clock,
                    service,
                    inflight: Vec::new(),
                }
            })
            .collect();
        let world = Arc::new(World {
            store: store.clone(),
            service_config,
            instances: Mutex::new(instances),
            stats: Arc::new(Mutex::new(Stats::default())),
            answers: Mutex::new(BTreeMap::new()),
            undelivered: Mutex::new(Vec::new()),
            failure,
            requests: Arc::new(Mutex::new(Vec::new())),
            keep: config.trace,
            skew_max_ms: Mutex::new(2_500),
            next_op: Mutex::new(products.len() as u64),
            products,
            next_key: Mutex::new(0),
            client_answers: Mutex::new(BTreeMap::new()),
            client_reads: Mutex::new(Vec::new()),
        });
        PARTIAL.with(|slot| {
            *slot.borrow_mut() = Some(Partial {
                store: store.clone(),
                stats: world.stats.clone(),
                failure: world.failure.clone(),
                requests: world.requests.clone(),
            });
        });
        let started = madsim::time::Instant::now();
        world.clone().chaos_and_load(&plan).await;
        world.liveness(&plan).await;
        let failure = store.violation().or_else(|| lock(&world.failure).clone());
        let requests = lock(&world.requests).clone();
        let failure = failure.map(|f| world.located(f, &requests));
        let trace = store.trace();
        Report {
            seed: config.seed,
            ops: plan.ops(),
            fault_counts: store.counts(),
            stats: lock(&world.stats).clone(),
            sim_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            trace_hash: trace.hash(),
            trace_events: trace.len(),
            trace: trace.events().to_vec(),
            requests,
            failure,
        }
    }

    /// Runs the clients, the provider, the sweepers and the chaos until every journey is done.
    async fn chaos_and_load(self: Arc<Self>, plan: &Plan) {
        let sweepers: Vec<_> = (0..plan.servers)
            .map(|i| madsim::task::spawn(self.clone().sweep_forever(i)))
            .collect();
        let chaos = madsim::task::spawn(self.clone().chaos(plan.chaos.clone()));
        let strays: Vec<_> = plan
            .strays
            .iter()
            .enumerate()
            .map(|(i, &crate::plan::Stray { at_ms, paid })| {
                let world = self.clone();
                madsim::task::spawn(async move {
                    madsim::time::sleep(Duration::from_millis(at_ms)).await;
                    world.race("unknown_hold");
                    let hold_id = HoldId(1_000_000 + i as u64);
                    world.deliver(world.payload(hold_id, paid), None).await;
                })
            })
            .collect();
        let restocks: Vec<_> = plan
            .restocks
            .iter()
            .map(
                |&crate::plan::Restock {
                     at_ms,
                     product,
                     qty,
                 }| {
                    let world = self.clone();
                    madsim::task::spawn(async move {
                        madsim::time::sleep(Duration::from_millis(at_ms)).await;
                        world.restock(product, Qty(qty)).await;
                    })
                },
            )
            .collect();
        let clients: Vec<_> = plan
            .clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(c, journeys)| madsim::task::spawn(self.clone().client(c, journeys)))
            .collect();
        let mut deliveries = Vec::new();
        for client in clients {
            if let Ok(spawned) = client.await {
                deliveries.extend(spawned);
            }
        }
        for handle in deliveries.into_iter().chain(strays).chain(restocks) {
            let _ = handle.await;
        }
        chaos.abort();
        for sweeper in sweepers {
            sweeper.abort();
        }
    }

    /// Faults stop, clocks heal, time passes every deadline: everything must settle.
    async fn liveness(&self, plan: &Plan) {
        self.store.set_faults(FaultProfile::CALM);
        for instance in lock(&self.instances).iter() {
            instance.clock.heal();
        }
        let pending = std::mem::take(&mut *lock(&self.undelivered));
        for (payload, product) in pending {
            self.deliver(payload, product).await;
        }
        // A deadline set by a clock that ran ahead lies that far beyond true time; wait for the
        // latest one, but never longer than the largest skew plus a TTL or window allows.
        let deadline_bound = true_now()
            .saturating_add_ms(plan.hold_ttl_ms.max(plan.payment_window_ms))
            .saturating_add_ms(self.skew_max_ms());
        let latest = self.latest_deadline();
        if latest > deadline_bound {
            self.fail(Failure::new(
                Check::Liveness,
                "deadline out of reach",
                format!(
                    "a deadline at {} lies beyond any clock's reach",
                    words::time(latest)
                ),
            ));
        }
        let wait_ms = latest
            .as_ms()
            .saturating_sub(true_now().as_ms())
            .saturating_add(1_000);
        madsim::time::sleep(Duration::from_millis(wait_ms)).await;
        let service = lock(&self.instances)[0].service.clone();
        let op = OpContext::new(self.next_op(), Command::Sweep, None);
        if let Err(error) = OP.scope(op, service.sweep()).await {
            self.fail(Failure::new(
                Check::Liveness,
                "sweep failed",
                format!("the sweep failed with faults off: {error}"),
            ));
        }
        let ledger = self.store.ledger();
        if let Some(hold) = ledger.holds().find(|h| h.state == HoldState::Held) {
            self.fail(Failure::new(
                Check::Liveness,
                "hold still held",
                format!(
                    "{} is still held after every deadline passed",
                    words::hold(hold)
                ),
            ));
        }
        if let Some(order) = ledger
            .orders()
            .find(|o| o.status == OrderStatus::PrePayment)
        {
            self.fail(Failure::new(
                Check::Liveness,
                "order still awaits payment",
                format!(
                    "{} still awaits payment after its window",
                    words::order(order)
                ),
            ));
        }
        if let Some((payload, _)) = lock(&self.undelivered).first() {
            self.fail(Failure::new(
                Check::Liveness,
                "webhook never answered",
                format!("webhook {} was never answered with faults off", payload.key),
            ));
        }
        let log = self.store.commit_log();
        let answers = lock(&self.client_answers).clone();
        let reads = std::mem::take(&mut *lock(&self.client_reads));
        match refine::check(&ledger, &log, &answers, &reads) {
            Ok(checked) => self.count(|s| {
                s.answers_checked = checked.answers as u64;
                s.reads_checked = checked.reads as u64;
            }),
            Err(difference) => self.fail(difference),
        }
        let answered: Vec<String> = lock(&self.answers).keys().cloned().collect();
        for key in answered {
            let recorded = IdempotencyKey::parse(&key).and_then(|k| ledger.webhook(&k).cloned());
            if recorded.is_none() {
                self.fail(Failure::new(
                    Check::Liveness,
                    "webhook without record",
                    format!("webhook {key} was answered but has no record"),
                ));
            }
        }
    }

    /// The latest deadline of a held hold or a pre-payment order.
    fn latest_deadline(&self) -> Timestamp {
        let ledger = self.store.ledger();
        let holds = ledger
            .holds()
            .filter(|h| h.state == HoldState::Held)
            .map(|h| h.expires_at);
        let orders = ledger
            .orders()
            .filter(|o| o.status == OrderStatus::PrePayment);
        holds
            .chain(orders.map(|o| o.payment_due_at))
            .max()
            .unwrap_or_default()
    }

    /// The largest clock offset any instance reached, in milliseconds.
    fn skew_max_ms(&self) -> u64 {
        *lock(&self.skew_max_ms)
    }

    /// Records the run's first failure, with the trace's last lines and the time now.
    fn fail(&self, failure: Failure) {
        record_failure(&self.failure, &self.store, failure);
    }

    /// The failure with its request's instance and the simulated time it was sent at, where
    /// the checker that found it did not know them.
    fn located(&self, mut failure: Failure, requests: &[RequestSpan]) -> Failure {
        let span = failure
            .request
            .and_then(|r| requests.iter().find(|span| span.request == r));
        if let Some(span) = span {
            failure.instance = failure.instance.or(Some(span.instance));
            if failure.check != Check::Invariant && failure.check != Check::Panic {
                failure.at_ms = Some(span.start_us / 1_000);
            }
        }
        failure
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut lock(&self.stats));
    }

    fn race(&self, name: &str) {
        self.count(|s| *s.races.entry(name.to_owned()).or_default() += 1);
    }

    fn next_op(&self) -> u64 {
        let mut next = lock(&self.next_op);
        *next += 1;
        *next
    }

    /// Sends `request` to an instance as a task that a crash of that instance cuts off, and
    /// keeps what the client saw for the replay to check. A panic in the request fails the run
    /// and answers the client as a crash would. Returns the request's number and its answer.
    async fn call<T, F, Fut>(
        &self,
        (instance, lane): (usize, Lane),
        product: Option<ProductId>,
        asked: impl Into<Request>,
        key: Option<IdempotencyKey>,
        request: F,
    ) -> (u64, Result<T, CallError>)
    where
        T: Answered + Send + 'static,
        F: FnOnce(Arc<Svc>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        self.count(|s| s.requests += 1);
        let op = self.next_op();
        let start_us = sim_us();
        let lane_code = match lane {
            Lane::Client(c) => c as u64,
            Lane::Provider => 1 << 32,
            Lane::Admin => 2 << 32,
            Lane::Sweeper => 3 << 32,
        };
        let asked = asked.into();
        // Words cost: they are written out only when the trace is kept.
        let what = if self.keep {
            let key = key
                .as_ref()
                .map(|k| format!(" with Idempotency-Key {k}"))
                .unwrap_or_default();
            format!("{}{key}", words::request(&asked))
        } else {
            String::new()
        };
        let sent = if self.keep {
            format!("{lane} sends {what}")
        } else {
            String::new()
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let instance = {
            let mut instances = lock(&self.instances);
            let count = instances.len();
            let index = instance % count;
            let instance = &mut instances[index];
            let future = request(instance.service.clone());
            instance.inflight.retain(|handle| !handle.is_finished());
            let command = match asked {
                Request::Command(command) => Some(command),
                Request::Read(_) => None,
            };
            let context = OpContext::on(op, command, key, index, product);
            let scoped = CatchUnwind {
                inner: Box::pin(OP.scope(context, future)),
            };
            let (store, failure) = (self.store.clone(), self.failure.clone());
            instance.inflight.push(madsim::task::spawn(async move {
                match scoped.await {
                    Ok(answer) => {
                        let _ = sender.send(answer);
                    }
                    Err(message) => {
                        let failure_of_request =
                            Failure::new(Check::Panic, "panic", format!("panicked: {message}"))
                                .at_request(Some(op));
                        record_failure(&failure, &store, failure_of_request);
                    }
                }
            }));
            index
        };
        self.store.note(Event {
            at_us: start_us,
            instance: Some(instance),
            requests: vec![op],
            tx: None,
            product: product.map(|p| p.0),
            text: sent,
            digest: Some([0, lane_code, 0, 0]),
        });
        let answer = match madsim::time::timeout(CLIENT_TIMEOUT, receiver).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(CallError::Service(error)),
            Ok(Err(_)) => Err(CallError::Crashed),
            Err(_) => Err(CallError::Timeout),
        };
        let seen = match &answer {
            Ok(value) => value.answer(),
            Err(CallError::Service(ServiceError::Rejected(rejection))) => {
                Some(Answer::Rejected(rejection.clone()))
            }
            Err(_) => None,
        };
        let digest = match &answer {
            Ok(value) => value.digest(),
            Err(CallError::Service(ServiceError::Rejected(r))) => {
                let code = r
                    .code()
                    .bytes()
                    .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
                [6, code, 0]
            }
            Err(CallError::Service(_)) => [7, 0, 0],
            Err(CallError::Crashed) => [8, 0, 0],
            Err(CallError::Timeout) => [9, 0, 0],
        };
        let outcome = if self.keep {
            match &answer {
                Ok(value) => value.describe(),
                Err(CallError::Service(ServiceError::Rejected(r))) => {
                    format!("{} {r}", r.code())
                }
                Err(CallError::Service(error)) => format!("error: {error}"),
                Err(CallError::Crashed) => "no answer: the instance crashed".to_owned(),
                Err(CallError::Timeout) => "no answer: timed out".to_owned(),
            }
        } else {
            String::new()
        };
        let answered = if self.keep {
            format!("{lane} is answered {outcome}")
        } else {
            String::new()
        };
        let end_us = sim_us();
        self.store.note(Event {
            at_us: end_us,
            instance: Some(instance),
            requests: vec![op],
            tx: None,
            product: product.map(|p| p.0),
            text: answered,
            digest: Some([1, lane_code, digest[0] << 32 | digest[1], digest[2]]),
        });
        lock(&self.requests).push(RequestSpan {
            request: op,
            instance,
            lane,
            start_us,
            end_us,
            what,
            outcome,
        });
        if let Some(seen) = seen {
            lock(&self.client_answers).insert(op, seen);
        }
        if matches!(&answer, Err(CallError::Crashed | CallError::Timeout))
            || matches!(&answer, Err(CallError::Service(e)) if !matches!(e, ServiceError::Rejected(_)))
        {
            self.count(|s| s.request_errors += 1);
        }
        (op, answer)
    }

    fn any_instance(&self) -> usize {
        thread_rng().gen_range(0..lock(&self.instances).len())
    }

    /// One client: its journeys in order. Returns the provider deliveries it set off.
    async fn client(self: Arc<Self>, client: usize, journeys: Vec<Journey>) -> Vec<JoinHandle<()>> {
        let mut deliveries = Vec::new();
        for journey in journeys {
            madsim::time::sleep(Duration::from_millis(journey.start_ms)).await;
            deliveries.extend(self.clone().journey(client, journey).await);
        }
        deliveries
    }

    /// The storage's id of plan product `product` (from 1).
    fn product_id(&self, product: usize) -> ProductId {
        self.products[product.saturating_sub(1) % self.products.len()]
    }

    /// One journey. Returns the tasks it set off: the provider's deliveries, and the reads
    /// around the hold's and the order's deadlines.
    async fn journey(self: Arc<Self>, client: usize, journey: Journey) -> Vec<JoinHandle<()>> {
        let mut spawned = Vec::new();
        let product_id = self.product_id(journey.product);
        // Drawn only for a crowd, so a plan without one runs as it did before crowds existed.
        let crowd_at = if journey.crowd > 0 {
            self.any_instance()
        } else {
            0
        };
        for n in 0..journey.crowd {
            let world = self.clone();
            let qty = Qty(journey.qty);
            let product_id = match journey.crowd_spread {
                true => self.product_id(journey.product.saturating_add(usize::from(n))),
                false => product_id,
            };
            spawned.push(madsim::task::spawn(async move {
                world.crowd_buyer(client, crowd_at, product_id, qty).await;
            }));
        }
        let Some(hold) = self
            .hold(client, product_id, Qty(journey.qty), &journey)
            .await
        else {
            return spawned;
        };
        if journey.reads {
            self.read(client, Target::Hold(hold.id)).await;
            self.read(client, Target::Product(product_id)).await;
            spawned.push(madsim::task::spawn(
                self.clone().read_at_deadline(client, hold),
            ));
        }
        if let Some(verdict) = journey.verdict.clone().filter(|v| v.early) {
            spawned.push(madsim::task::spawn(self.clone().provider(hold, verdict)));
        }
        let Some(after_ms) = journey.order_after_ms else {
            return spawned;
        };
        madsim::time::sleep(Duration::from_millis(after_ms)).await;
        let Some(order) = self.order(client, &hold, journey.keyed).await else {
            return spawned;
        };
        if journey.reads {
            self.read(client, Target::Order(order.id)).await;
            self.read(client, Target::Hold(hold.id)).await;
            spawned.push(madsim::task::spawn(
                self.clone().read_at_payment_deadline(client, order),
            ));
        }
        if let Some(verdict) = journey.verdict.filter(|v| !v.early) {
            spawned.push(madsim::task::spawn(self.clone().provider(hold, verdict)));
        }
        spawned
    }

    /// One read by `client` from any instance, kept for the replay to check.
    async fn read(&self, client: usize, target: Target) -> Option<Timestamp> {
        self.read_on(self.any_instance(), client, target).await
    }

    /// One read by `client` from `instance`, kept for the replay to check with the log's
    /// positions it may have seen. Returns the clock reading it decided at.
    async fn read_on(&self, instance: usize, client: usize, target: Target) -> Option<Timestamp> {
        let product = match target {
            Target::Product(id) => Some(id),
            Target::Hold(_) | Target::Order(_) => None,
        };
        let from = match target {
            // A cached product may be as old as the cache allows, on a clock that may run
            // slow by the largest drift (500 ppm), plus a millisecond of rounding.
            Target::Product(_) => {
                let stale_us = self
                    .service_config
                    .cache_staleness_ms
                    .saturating_mul(1_001)
                    .saturating_add(1_000);
                self.store.log_len_at(sim_us().saturating_sub(stale_us))
            }
            Target::Hold(_) | Target::Order(_) => self.store.log_len(),
        };
        let call = self.call(
            (instance, Lane::Client(client)),
            product,
            Request::Read(target),
            None,
            move |s| async move {
                Seen::read(&s, target).await.map(|seen| ReadAnswer {
                    seen,
                    now: OpContext::now_of_current(),
                })
            },
        );
        let (op, answer) = call.await;
        let to = self.store.log_len();
        let Ok(ReadAnswer { seen, now }) = answer else {
            return None;
        };
        let now = target.reading(now)?;
        lock(&self.client_reads).push(Read {
            op,
            target,
            now,
            from,
            to,
            seen,
        });
        Some(now)
    }

    /// Waits until `instance`'s clock reads `at` (or later, if it steps past it).
    async fn sleep_until_clock(&self, instance: usize, at: Timestamp) {
        let clock = {
            let instances = lock(&self.instances);
            instances[instance % instances.len()].clock.clone()
        };
        for _ in 0..16 {
            let ahead_ms = at.as_ms().saturating_sub(clock.now().as_ms());
            if ahead_ms == 0 {
                return;
            }
            // Short of it by more than the largest drift (500 ppm), so never past it.
            madsim::time::sleep(Duration::from_millis(ahead_ms - ahead_ms / 500)).await;
        }
    }

    /// The instance whose clock will reach `at` first, if none has yet: the one where a hold
    /// expiring at `at` is still held when it gets there.
    fn first_to_reach(&self, at: Timestamp) -> Option<usize> {
        let instances = lock(&self.instances);
        let (index, now) = instances
            .iter()
            .map(|instance| instance.clock.now())
            .enumerate()
            .max_by_key(|&(_, now)| now)?;
        (now < at).then_some(index)
    }

    /// Reads the hold's product one millisecond before, at and after the hold's deadline on one
    /// instance's clock, and the hold at it: the moments where a read and a grant must agree on
    /// whether the hold still counts. The reads wait side by side, so one's latency does not
    /// make the next late.
    async fn read_at_deadline(self: Arc<Self>, client: usize, hold: flashsale_core::Hold) {
        let at = |delta: i64| Timestamp(hold.expires_at.as_ms().saturating_add_signed(delta));
        let Some(instance) = self.first_to_reach(at(-1)) else {
            return;
        };
        let world = &self;
        let product = |delta: i64| async move {
            world.sleep_until_clock(instance, at(delta)).await;
            let now = world
                .read_on(instance, client, Target::Product(hold.product_id))
                .await;
            if now == Some(hold.expires_at) {
                world.count(|s| s.reads_at_deadline += 1);
            }
        };
        let hold_read = async {
            self.sleep_until_clock(instance, at(0)).await;
            self.read_on(instance, client, Target::Hold(hold.id)).await;
        };
        tokio::join!(product(-1), product(0), product(1), hold_read);
    }

    /// Reads the order at its payment deadline on one instance's clock, and just after it.
    async fn read_at_payment_deadline(self: Arc<Self>, client: usize, order: Order) {
        let instance = self.any_instance();
        for delta in [0_i64, 1] {
            let at = Timestamp(order.payment_due_at.as_ms().saturating_add_signed(delta));
            self.sleep_until_clock(instance, at).await;
            self.read_on(instance, client, Target::Order(order.id))
                .await;
        }
    }

    /// A fresh client idempotency key.
    fn request_key(&self, what: &str) -> IdempotencyKey {
        let mut next = lock(&self.next_key);
        *next += 1;
        IdempotencyKey::parse(&format!("{what}-{}", *next)).unwrap_or_else(|| unreachable!())
    }

    /// Counts a keyed request answered from its key's record. What it was answered is checked
    /// by the replay, whose ledger keeps the keys' records too.
    fn keyed_answer(&self, replayed: bool) {
        if replayed {
            self.count(|s| s.keyed_replays += 1);
        }
    }

    /// Asks for a hold. With a key the client retries under it after errors, so a hold whose
    /// answer was lost comes back instead of a second one; without, it gives up.
    async fn hold(
        &self,
        client: usize,
        product_id: ProductId,
        qty: Qty,
        journey: &Journey,
    ) -> Option<flashsale_core::Hold> {
        let key = journey.keyed.then(|| self.request_key("hold"));
        let attempts = if journey.keyed { 4 } else { 1 };
        for attempt in 0..attempts {
            if attempt > 0 {
                self.count(|s| s.keyed_retries += 1);
                madsim::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let instance = (self.any_instance(), Lane::Client(client));
            let placed = if journey.double_submit && attempt == 0 {
                let (first, second) = tokio::join!(
                    self.place_hold(instance, key.as_ref(), product_id, qty),
                    self.place_hold(instance, key.as_ref(), product_id, qty)
                );
                match second {
                    Ok(Keyed { replayed, .. }) => {
                        self.keyed_answer(replayed);
                    }
                    Err(CallError::Service(ServiceError::KeyInFlight { .. })) => {
                        self.count(|s| s.keys_in_flight += 1);
                    }
                    Err(_) => {}
                }
                first
            } else {
                self.place_hold(instance, key.as_ref(), product_id, qty)
                    .await
            };
            match placed {
                Ok(Keyed { value, replayed }) => {
                    self.count(|s| s.holds_granted += 1);
                    self.keyed_answer(replayed);
                    return Some(value.hold);
                }
                Err(CallError::Service(ServiceError::Rejected(rejection))) => {
                    if matches!(rejection, Rejection::InsufficientStock { .. }) {
                        self.count(|s| s.holds_rejected += 1);
                    }
                    return None;
                }
                Err(CallError::Service(ServiceError::KeyInFlight { .. })) => {
                    self.count(|s| s.keys_in_flight += 1);
                }
                Err(_) => {}
            }
        }
        None
    }

    /// One buyer of a crowd: one hold request without a key to `instance`, whatever it gets
    /// abandoned.
    async fn crowd_buyer(&self, client: usize, instance: usize, product_id: ProductId, qty: Qty) {
        let lane = (instance, Lane::Client(client));
        match self.place_hold(lane, None, product_id, qty).await {
            Ok(_) => self.count(|s| s.holds_granted += 1),
            Err(CallError::Service(ServiceError::Rejected(Rejection::InsufficientStock {
                ..
            }))) => self.count(|s| s.holds_rejected += 1),
            Err(_) => {}
        }
    }

    /// One hold request to one instance.
    async fn place_hold(
        &self,
        instance: (usize, Lane),
        key: Option<&IdempotencyKey>,
        product_id: ProductId,
        qty: Qty,
    ) -> Result<Keyed<HoldPlaced>, CallError> {
        let sent = key.cloned();
        let command = Command::PlaceHold {
            product_id,
            qty,
            ttl_ms: self.service_config.hold_ttl_ms,
            key: key.cloned(),
        };
        let call = self.call(
            instance,
            Some(product_id),
            command,
            key.cloned(),
            move |s| async move { s.place_hold_keyed(sent.as_ref(), product_id, qty).await },
        );
        call.await.1
    }

    /// Orders a hold, retrying on errors (each retry is answered by the order it made, if any),
    /// under one idempotency key when `keyed`.
    async fn order(
        &self,
        client: usize,
        hold: &flashsale_core::Hold,
        keyed: bool,
    ) -> Option<Order> {
        let hold_id = hold.id;
        let key = keyed.then(|| self.request_key("order"));
        for attempt in 0..4 {
            if attempt > 0 && keyed {
                self.count(|s| s.keyed_retries += 1);
            }
            let sent = key.clone();
            let command = Command::PlaceOrder {
                hold_id,
                payment_window_ms: self.service_config.payment_window_ms,
                key: key.clone(),
            };
            let call = self.call(
                (self.any_instance(), Lane::Client(client)),
                Some(hold.product_id),
                command,
                key.clone(),
                move |s| async move { s.place_order_keyed(sent.as_ref(), hold_id).await },
            );
            match call.await.1 {
                Ok(Keyed { value, replayed }) => {
                    self.count(|s| {
                        if value.created {
                            s.orders_created += 1
                        } else {
                            s.orders_existing += 1
                        }
                    });
                    self.keyed_answer(replayed);
                    return Some(value.order);
                }
                Err(CallError::Service(ServiceError::Rejected(_))) => {
                    self.count(|s| s.orders_refused += 1);
                    return None;
                }
                Err(CallError::Service(ServiceError::KeyInFlight { .. })) => {
                    self.count(|s| s.keys_in_flight += 1);
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(100)).await,
            }
        }
        None
    }

    /// An admin restocks a product.
    async fn restock(&self, product: usize, qty: Qty) {
        let product_id = self.product_id(product);
        let command = Command::Restock { product_id, qty };
        let call = self.call(
            (self.any_instance(), Lane::Admin),
            Some(product_id),
            command,
            None,
            move |s| async move { s.restock(product_id, qty).await },
        );
        if call.await.1.is_ok() {
            self.count(|s| s.restocks += 1);
        }
    }

    fn payload(&self, hold_id: HoldId, paid: bool) -> WebhookPayload {
        let mut next = lock(&self.next_key);
        *next += 1;
        let key =
            IdempotencyKey::parse(&format!("evt-{}", *next)).unwrap_or_else(|| unreachable!());
        let status = if paid {
            PaymentStatus::Paid
        } else {
            PaymentStatus::Failed
        };
        WebhookPayload {
            key,
            hold_id,
            status,
        }
    }

    /// The payment provider's deliveries for one hold.
    async fn provider(self: Arc<Self>, hold: flashsale_core::Hold, verdict: Verdict) {
        let (hold_id, product) = (hold.id, Some(hold.product_id));
        madsim::time::sleep(Duration::from_millis(verdict.delay_ms)).await;
        let payload = self.payload(hold_id, verdict.paid);
        if verdict.early {
            self.race("early");
        }
        if verdict.copies > 1 {
            self.race(if verdict.concurrent {
                "duplicate_concurrent"
            } else {
                "duplicate_sequential"
            });
        }
        let mut copies = Vec::new();
        for _ in 0..verdict.copies {
            let world = self.clone();
            let payload = payload.clone();
            let copy = madsim::task::spawn(async move { world.deliver(payload, product).await });
            if verdict.concurrent {
                copies.push(copy);
            } else {
                let _ = copy.await;
                madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(0..500))).await;
            }
        }
        if verdict.conflicting {
            self.race("conflicting");
            self.deliver(self.payload(hold_id, !verdict.paid), product)
                .await;
        }
        for copy in copies {
            let _ = copy.await;
        }
    }

    /// Delivers one webhook until the service answers, like a provider retrying on 5xx.
    async fn deliver(&self, payload: WebhookPayload, product: Option<ProductId>) {
        for attempt in 0..DELIVERY_ATTEMPTS_MAX {
            let sent = payload.clone();
            let (op, answer) = self
                .call(
                    (self.any_instance(), Lane::Provider),
                    product,
                    Command::ApplyWebhook(payload.clone()),
                    None,
                    move |s| async move { s.apply_webhook(&sent).await },
                )
                .await;
            match answer {
                Ok(answer) => {
                    let key = payload.key.as_str().to_owned();
                    let result = answer.record.result;
                    let seen = (result, answer.record.order_id.map(|o| o.0), op);
                    let first = *lock(&self.answers).entry(key.clone()).or_insert(seen);
                    if (first.0, first.1) != (seen.0, seen.1) {
                        let words = |(result, order, _): FirstAnswer| {
                            let order = order.map(|o| format!(", order_id: {o}"));
                            format!(
                                "{{result: {}{}}}",
                                result.as_str(),
                                order.unwrap_or_default()
                            )
                        };
                        self.fail(
                            Failure::new(
                                Check::Webhook,
                                "key answered differently",
                                format!(
                                    "webhook {key} was answered `200 {}` to r{op}, after `200 {}` \
                                     to r{}: a key must always answer the same",
                                    words(seen),
                                    words(first),
                                    first.2
                                ),
                            )
                            .at_request(Some(op)),
                        );
                    }
                    self.count(|s| {
                        *s.webhooks.entry(result.as_str().to_owned()).or_default() += 1;
                        if answer.replayed {
                            *s.webhooks.entry("replayed".to_owned()).or_default() += 1;
                        }
                    });
                    if result == WebhookResult::RefundRequired {
                        self.race("after_expiry");
                    }
                    return;
                }
                Err(CallError::Service(ServiceError::Rejected(rejection))) => {
                    self.fail(
                        Failure::new(
                            Check::Webhook,
                            "webhook refused",
                            format!(
                                "webhook {} was refused: {} {rejection}",
                                payload.key,
                                rejection.code()
                            ),
                        )
                        .at_request(Some(op)),
                    );
                    return;
                }
                Err(_) => {
                    let backoff = 100u64.saturating_mul(1 << attempt.min(5));
                    madsim::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
        lock(&self.undelivered).push((payload, product));
    }

    async fn sweep_forever(self: Arc<Self>, instance: usize) {
        loop {
            madsim::time::sleep(Duration::from_millis(1_000)).await;
            let call = self.call(
                (instance, Lane::Sweeper),
                None,
                Command::Sweep,
                None,
                |s| async move { s.sweep().await },
            );
            let _ = call.await;
        }
    }

    async fn chaos(self: Arc<Self>, mut events: Vec<crate::plan::ChaosAt>) {
        events.sort_by_key(|e| e.at_ms);
        let start = madsim::time::Instant::now();
        for event in events {
            let at = Duration::from_millis(event.at_ms);
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                madsim::time::sleep(wait).await;
            }
            match event.chaos {
                Chaos::ClockStep { instance, delta_ms } => {
                    let instances = lock(&self.instances);
                    let clock = &instances[instance % instances.len()].clock;
                    clock.step(delta_ms);
                    let offset = clock.offset_ms().unsigned_abs().saturating_add(500);
                    drop(instances);
                    let mut skew = lock(&self.skew_max_ms);
                    *skew = (*skew).max(offset);
                    drop(skew);
                    self.count(|s| {
                        if delta_ms < 0 {
                            s.clock_steps_back += 1
                        } else {
                            s.clock_steps_forward += 1
                        }
                    });
                    self.store.note(Event {
                        at_us: sim_us(),
                        instance: Some(instance),
                        text: format!("chaos: the clock steps {delta_ms:+} ms"),
                        ..Event::default()
                    });
                }
                Chaos::Crash { instance: index } => {
                    let mut instances = lock(&self.instances);
                    let count = instances.len();
                    let instance = &mut instances[index % count];
                    for handle in instance.inflight.drain(..) {
                        handle.abort();
                    }
                    let clock = instance.clock.clone();
                    instance.service =
                        instance_service(&self.store, clock, self.service_config, &self.failure);
                    drop(instances);
                    self.count(|s| s.crashes += 1);
                    self.store.note(Event {
                        at_us: sim_us(),
                        instance: Some(index % count),
                        text: "chaos: crash and restart".to_owned(),
                        ..Event::default()
                    });
                }
            }
        }
    }
}
