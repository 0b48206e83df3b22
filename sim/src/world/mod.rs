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
//!
//! This module orchestrates a run: it sets the world up, starts every actor, waits for them and
//! writes the report. The actors and checks live in its submodules: [`instance`] (a server
//! instance's service and sweeper), [`requests`] (sending one request and keeping what came
//! back), [`answers`] (what an answer is to the replay and the trace), [`clients`] (buyers and the
//! admin), [`provider`] (the payment provider), [`chaos`] (clock steps and crashes), [`checks`]
//! (the liveness phase and the checks at the end of a run) and [`panics`] (a panic as a failure
//! of its seed).

mod answers;
mod chaos;
mod checks;
mod clients;
mod instance;
mod panics;
mod provider;
mod requests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flashsale_check::failure::{Check, Failure};
use flashsale_check::history::{Answer, Read};
use flashsale_check::recording::{OP, OpContext};
use flashsale_core::{Cents, Command, HoldId, ProductId, Qty, WebhookPayload};
use flashsale_service::{Config, Service};
use madsim::rand::{Rng, thread_rng};
use madsim::task::JoinHandle;

use crate::clock::SimClock;
use crate::plan::{FaultProfile, Plan};
use crate::store::{Bug, FaultCounts, SimStore, sim_us};
use crate::trace::Event;

use self::instance::instance_service;
pub use self::panics::quiet_panics;
use self::panics::{IN_RUN, PARTIAL, Partial, panicked};
use self::provider::FirstAnswer;

pub(super) type Svc = Service<SimStore, SimClock>;

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
    /// Product reads answered from an instance's cache while the product's last write was a
    /// sweeper's (it folded, retired or cancelled), before any other write to it.
    pub reads_cached_after_sweep: u64,
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
            committers: plan.committers,
            // Records are never purged: the checkers replay every one (see `purge_records`).
            request_key_retention_ms: u64::MAX,
            webhook_retention_ms: u64::MAX,
            sweep_chunk: plan.sweep_chunk,
            ..Config::default()
        };
        let failure = Arc::new(Mutex::new(None));
        // Products are created as commands of batches, whose transactions carry the requests'
        // contexts as an instance's do.
        let setup = instance_service(&store, SimClock::new(0, 0), service_config, &failure);
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
        // A storm's buyers are clients numbered after the plan's own.
        let storms: Vec<_> = (plan.storms.iter().enumerate())
            .map(|(n, &storm)| {
                let client = plan.clients.len().saturating_add(n);
                madsim::task::spawn(self.clone().storm(client, storm))
            })
            .collect();
        let mut deliveries = Vec::new();
        for client in clients {
            if let Ok(spawned) = client.await {
                deliveries.extend(spawned);
            }
        }
        for handle in (deliveries.into_iter()).chain(strays).chain(restocks) {
            let _ = handle.await;
        }
        for storm in storms {
            let _ = storm.await;
        }
        chaos.abort();
        for sweeper in sweepers {
            sweeper.abort();
        }
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

    fn any_instance(&self) -> usize {
        thread_rng().gen_range(0..lock(&self.instances).len())
    }

    /// The storage's id of plan product `product` (from 1).
    fn product_id(&self, product: usize) -> ProductId {
        self.products[product.saturating_sub(1) % self.products.len()]
    }
}
