//! Throughput of the core's one entry point, `Ledger::apply`, on hold-heavy command mixes, and of
//! the batch hold decision `hold::place_holds`.
//!
//! The mixes model a flash sale: mostly hold requests, some orders on granted holds, some payment
//! webhooks (with provider retries), periodic restocks and sweeps, and a clock that advances so
//! holds expire and their units turn over. Each mix is generated once, deterministically, by
//! running it against a scratch ledger (so orders and webhooks name holds that really were
//! granted or ordered); the measured loop then replays the same commands on a fresh copy of the
//! starting ledger and does nothing but `apply`. Release builds skip the debug-only invariant
//! checks, so this measures the decisions and the in-memory indexes, not the checker. Figures are
//! compared as ratios within one run; see docs/PERFORMANCE.md.

// The workspace lint guards units and money in the product. Here arithmetic only counts commands
// and draws bench inputs, bounded far below overflow by COMMANDS_PER_RUN.
#![allow(
    clippy::arithmetic_side_effects,
    reason = "bench counters, bounded by the run size"
)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flashsale_core::hold::{self, HoldRequest};
use flashsale_core::rows::hold::HOLD_TTL_MS_DEFAULT;
use flashsale_core::{
    Cents, Command, HoldId, IdempotencyKey, Ledger, Outcome, PaymentStatus, Product, ProductId,
    Qty, Timestamp, WebhookPayload,
};

/// Commands in one measured run. Large enough that the ledger grows the way a busy minute
/// makes it grow; small enough that a run takes tens of milliseconds.
const COMMANDS_PER_RUN: u64 = 100_000;
/// The simulated clock advances one millisecond every this many commands: 10,000 commands/s.
const COMMANDS_PER_MS: u64 = 10;
/// Hold TTL in the mixes: one second, so a hold lives 10,000 commands and expiry keeps turning
/// units over within a run.
const TTL_MS: u64 = 1_000;
/// Payment window of the orders in the mixes.
const WINDOW_MS: u64 = 2_000;
/// Commands between two sweeps (one every 100 simulated ms).
const SWEEP_EVERY: u64 = 1_000;
/// The start of the simulated clock.
const START_MS: u64 = 1_700_000_000_000;

/// A command mix: how many products share the load and how their stock is fed.
#[derive(Clone, Copy)]
struct Mix {
    name: &'static str,
    products: u32,
    stock_initial: u32,
    restock_every: u64,
    restock_qty: u32,
    /// Percent of commands that are hold requests; the rest are orders and webhooks.
    holds_percent: u64,
}

const MIXES: [Mix; 4] = [
    // Only hold requests, on one product with stock to spare: the 5 M commands/s target.
    Mix {
        name: "one_product/holds_only_granted",
        products: 1,
        stock_initial: 10_000_000,
        restock_every: 1_000,
        restock_qty: 1_000,
        holds_percent: 100,
    },
    // The hold-heavy mix, stock fed fast enough that nearly every hold is granted.
    Mix {
        name: "one_product/mix_granted",
        products: 1,
        stock_initial: 100_000,
        restock_every: 1_000,
        restock_qty: 1_000,
        holds_percent: 80,
    },
    // The same mix sold out: a trickle of restocks and expiries, most holds rejected.
    Mix {
        name: "one_product/mix_sold_out",
        products: 1,
        stock_initial: 500,
        restock_every: 1_000,
        restock_qty: 10,
        holds_percent: 80,
    },
    // The mix spread over 10,000 products with stock to spare.
    Mix {
        name: "10k_products/mix_granted",
        products: 10_000,
        stock_initial: 100,
        restock_every: 1_000,
        restock_qty: 1_000,
        holds_percent: 80,
    },
];

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(COMMANDS_PER_RUN));
    for mix in MIXES {
        let workload = Workload::generate(mix);
        eprintln!("{}: {}", mix.name, workload.stats);
        group.bench_function(mix.name, |b| {
            b.iter_batched(
                || (workload.start.clone(), workload.commands.clone()),
                |(mut ledger, commands)| {
                    for (now, command) in commands {
                        let _ = black_box(ledger.apply(now, command));
                    }
                    // Returned, so dropping the ledger is not measured.
                    ledger
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn bench_place_holds(c: &mut Criterion) {
    const BATCH: usize = 64;
    let product = Product {
        id: ProductId(1),
        name: "hot".to_owned(),
        price_cents: Cents(500),
        stock: Qty(1_000),
        units_held: Qty(900),
        units_received: 1_000,
        expired_through: Timestamp(0),
        holds_to_retire: 0,
        open_bucket: Default::default(),
    };
    let mut rng = SplitMix64(7);
    let requests: Vec<HoldRequest> = (0..BATCH)
        .map(|_| {
            let qty = Qty(1 + rng.below(3) as u32);
            HoldRequest::new(qty, HOLD_TTL_MS_DEFAULT, None).expect("a valid request")
        })
        .collect();
    let mut group = c.benchmark_group("place_holds");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch_of_64", |b| {
        b.iter(|| {
            hold::place_holds(
                black_box(&product),
                black_box(&[]),
                black_box(&requests),
                black_box(Timestamp(START_MS)),
            )
        });
    });
    group.finish();
}

/// A starting ledger and the timed commands to apply to it.
struct Workload {
    start: Ledger,
    commands: Vec<(Timestamp, Command)>,
    stats: Stats,
}

/// What the generated commands did on the scratch ledger, to report the mix's real shape.
#[derive(Default)]
struct Stats {
    holds_granted: u64,
    holds_rejected: u64,
    holds_expired: u64,
    orders_created: u64,
    orders_rejected: u64,
    webhooks_new: u64,
    webhooks_replayed: u64,
    restocks: u64,
    sweeps: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "holds granted {} rejected {} expired {}; orders created {} rejected {}; \
             webhooks new {} replayed {}; restocks {}; sweeps {}",
            self.holds_granted,
            self.holds_rejected,
            self.holds_expired,
            self.orders_created,
            self.orders_rejected,
            self.webhooks_new,
            self.webhooks_replayed,
            self.restocks,
            self.sweeps
        )
    }
}

impl Workload {
    /// Builds the mix by running it on a scratch ledger, so later commands can name the holds
    /// earlier ones granted. The ledger is deterministic, so a replay answers the same.
    fn generate(mix: Mix) -> Workload {
        let mut start = Ledger::new();
        let products: Vec<ProductId> = (0..mix.products)
            .map(|i| {
                let command = Command::CreateProduct {
                    name: format!("product-{i}"),
                    price_cents: Cents(1_999),
                    stock: Qty(mix.stock_initial),
                };
                match start.apply(Timestamp(START_MS), command) {
                    Ok(Outcome::ProductCreated(product)) => product.id,
                    other => panic!("product creation failed: {other:?}"),
                }
            })
            .collect();
        let mut generator = Generator {
            mix,
            products,
            ledger: start.clone(),
            rng: SplitMix64(42),
            granted: VecDeque::new(),
            ordered: VecDeque::new(),
            sent: Vec::new(),
            keys: 0,
            stats: Stats::default(),
        };
        let commands = (0..COMMANDS_PER_RUN).map(|i| generator.next(i)).collect();
        Workload {
            start,
            commands,
            stats: generator.stats,
        }
    }
}

/// Recent holds remembered for orders and webhooks to name.
const RECENT_MAX: usize = 1_024;

struct Generator {
    mix: Mix,
    products: Vec<ProductId>,
    ledger: Ledger,
    rng: SplitMix64,
    granted: VecDeque<HoldId>,
    ordered: VecDeque<HoldId>,
    sent: Vec<WebhookPayload>,
    keys: u64,
    stats: Stats,
}

impl Generator {
    /// The `i`th command, applied to the scratch ledger before it is returned.
    fn next(&mut self, i: u64) -> (Timestamp, Command) {
        let now = Timestamp(START_MS + i / COMMANDS_PER_MS);
        let command = self.choose(i);
        let outcome = self.ledger.apply(now, command.clone());
        self.record(&command, outcome);
        (now, command)
    }

    fn choose(&mut self, i: u64) -> Command {
        if i % SWEEP_EVERY == SWEEP_EVERY / 2 {
            return Command::Sweep;
        }
        if i.is_multiple_of(self.mix.restock_every) && i > 0 {
            return Command::Restock {
                product_id: self.product(),
                qty: Qty(self.mix.restock_qty),
            };
        }
        let roll = self.rng.below(100);
        if roll < self.mix.holds_percent {
            return Command::PlaceHold {
                product_id: self.product(),
                qty: Qty(1 + self.rng.below(2) as u32),
                ttl_ms: TTL_MS,
                key: None,
            };
        }
        let orders_percent = (100 - self.mix.holds_percent) * 2 / 3;
        if roll < self.mix.holds_percent + orders_percent
            && let Some(hold_id) = self.granted.pop_back()
        {
            return Command::PlaceOrder {
                hold_id,
                payment_window_ms: WINDOW_MS,
                key: None,
            };
        }
        Command::ApplyWebhook(self.webhook())
    }

    /// A webhook: one in ten a provider retry of an earlier delivery, else a new verdict on a
    /// recently ordered hold (one in five a failure), or a `paid` that beats its order.
    fn webhook(&mut self) -> WebhookPayload {
        if !self.sent.is_empty() && self.rng.below(10) == 0 {
            let index = self.rng.below(self.sent.len() as u64) as usize;
            return self.sent[index].clone();
        }
        let (hold_id, status) = match self.ordered.pop_front() {
            Some(hold_id) if self.rng.below(5) == 0 => (hold_id, PaymentStatus::Failed),
            Some(hold_id) => (hold_id, PaymentStatus::Paid),
            None => (
                self.granted.pop_back().unwrap_or(HoldId(0)),
                PaymentStatus::Paid,
            ),
        };
        self.keys += 1;
        let key = IdempotencyKey::parse(&format!("evt-{}", self.keys));
        let payload = WebhookPayload {
            key: key.unwrap_or_else(|| panic!("generated keys are valid")),
            hold_id,
            status,
        };
        if self.sent.len() < RECENT_MAX {
            self.sent.push(payload.clone());
        } else {
            let index = self.rng.below(RECENT_MAX as u64) as usize;
            self.sent[index] = payload.clone();
        }
        payload
    }

    fn product(&mut self) -> ProductId {
        self.products[self.rng.below(self.products.len() as u64) as usize]
    }

    fn record(&mut self, command: &Command, outcome: Result<Outcome, flashsale_core::Rejection>) {
        let stats = &mut self.stats;
        match (command, outcome) {
            (_, Ok(Outcome::HoldPlaced { hold, folded, .. })) => {
                stats.holds_granted += 1;
                stats.holds_expired += folded.holds;
                remember(&mut self.granted, hold.id);
            }
            (Command::PlaceHold { .. }, Err(_)) => stats.holds_rejected += 1,
            (_, Ok(Outcome::OrderPlaced { order, .. })) => {
                stats.orders_created += 1;
                remember(&mut self.ordered, order.hold_id);
            }
            (Command::PlaceOrder { .. }, Err(_)) => stats.orders_rejected += 1,
            (_, Ok(Outcome::WebhookApplied { replayed: true, .. })) => {
                stats.webhooks_replayed += 1;
            }
            (_, Ok(Outcome::WebhookApplied { .. })) => stats.webhooks_new += 1,
            (_, Ok(Outcome::Restocked { .. })) => stats.restocks += 1,
            (_, Ok(Outcome::Swept { folded, .. })) => {
                stats.sweeps += 1;
                stats.holds_expired += folded.holds;
            }
            (command, outcome) => panic!("unexpected answer to {command:?}: {outcome:?}"),
        }
    }
}

fn remember(recent: &mut VecDeque<HoldId>, hold_id: HoldId) {
    if recent.len() == RECENT_MAX {
        recent.pop_front();
    }
    recent.push_back(hold_id);
}

/// A tiny deterministic PRNG (SplitMix64), so every run benches the same commands.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; `bound` is small, so the modulo bias does not matter here.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_apply, bench_place_holds
}
criterion_main!(benches);
