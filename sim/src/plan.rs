//! What a run does, decided up front from the seed: the products, the client journeys, the
//! payment provider's behaviour for each, stray webhooks and the chaos events. Because the plan
//! is explicit, a failing run can be shrunk by removing journeys and chaos events and running the
//! smaller plan again under the same seed.
//!
//! A plan is also a file (see `planfile`): its serde form is the plan file's `plan` field, so
//! the field names and meanings here are a documented format (docs/SIMULATION.md). Products are
//! numbered from 1, as the API numbers them; clients and instances from 0.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A small deterministic generator (SplitMix64) for plans, independent of madsim's own RNG so a
/// plan can be edited and re-run.
#[derive(Clone, Debug)]
pub struct PlanRng(u64);

impl PlanRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        PlanRng(seed ^ 0x5eed_f1a5_4a1e)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How often each fault fires, drawn per seed ("swarm testing": each seed explores its own mix
/// of faults, each class on or off and at its own rate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultProfile {
    /// Probability per storage step of an injected deadlock error.
    pub deadlock: f64,
    /// Probability per storage step of an injected lock-wait timeout.
    pub lock_timeout: f64,
    /// Probability per storage step of losing the connection (the transaction rolls back).
    pub connection_lost: f64,
    /// Probability per commit that the commit applies but its answer is lost.
    pub commit_answer_lost: f64,
    /// Largest latency of one storage step, in microseconds.
    pub latency_us_max: u64,
}

impl FaultProfile {
    /// No faults, little latency: the liveness phase.
    pub const CALM: FaultProfile = FaultProfile {
        deadlock: 0.0,
        lock_timeout: 0.0,
        connection_lost: 0.0,
        commit_answer_lost: 0.0,
        latency_us_max: 200,
    };

    /// A profile drawn from the plan's generator.
    pub fn draw(rng: &mut PlanRng) -> FaultProfile {
        let mut rate = |max_per_mille: u64| {
            if rng.chance(70) {
                rng.below(max_per_mille) as f64 / 1_000.0
            } else {
                0.0
            }
        };
        FaultProfile {
            deadlock: rate(30),
            lock_timeout: rate(20),
            connection_lost: rate(20),
            commit_answer_lost: rate(50),
            latency_us_max: 50 + rng.below(5_000),
        }
    }
}

/// How often a seed's plan has a mass expiry, in percent.
const STORM_PERCENT: u64 = 15;
/// The fewest buyers of a mass expiry: more than a product may have buckets due at once
/// ([`flashsale_core::DUE_BUCKETS_MAX`]), so a read of every expired hold goes over budget.
const STORM_HOLDS_MIN: u32 = 1_000;
/// The most buyers of a mass expiry.
const STORM_HOLDS_MAX: u32 = 3_000;

const _: () = assert!(STORM_HOLDS_MIN as usize > flashsale_core::DUE_BUCKETS_MAX);
const _: () = assert!(STORM_HOLDS_MIN < STORM_HOLDS_MAX);

/// The payment provider's verdict on one hold, and how it delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// `paid`, else `failed`.
    pub paid: bool,
    /// Sent right after the hold is granted, before the client orders.
    pub early: bool,
    /// Delay before the first delivery, after the trigger.
    pub delay_ms: u64,
    /// How many times the same key is delivered (1 to 3).
    pub copies: u8,
    /// Whether the copies go out at once rather than one after another.
    pub concurrent: bool,
    /// Whether the opposite verdict is also sent, under a new key.
    pub conflicting: bool,
}

/// One client's journey: hold, maybe order, and the provider's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journey {
    /// Think time before the hold request.
    pub start_ms: u64,
    /// The product, as the API numbers it: from 1.
    pub product: usize,
    /// Units to hold.
    pub qty: u32,
    /// Delay between the hold and the order; `None` abandons the hold.
    pub order_after_ms: Option<u64>,
    /// The provider's verdict; `None` when it never calls.
    pub verdict: Option<Verdict>,
    /// Whether the client sends an `Idempotency-Key` with its hold and order requests and
    /// retries them under it after an error; without one it gives up after an error.
    pub keyed: bool,
    /// Whether a keyed client sends its hold request twice at once to one server, as a double
    /// click does.
    pub double_submit: bool,
    /// Whether the client reads what it made (`GET` of the product, the hold, the order) after
    /// each step, and the product and hold again one millisecond before, at and after the hold's
    /// deadline on one instance's clock, and the order at its payment deadline.
    #[serde(default)]
    pub reads: bool,
    /// How many other buyers send the same hold request to one instance at the same moment,
    /// without keys, and abandon what they get: a flash sale's crowd, which the instance's queue
    /// decides in batches (the abandoned holds expire, for later batches to release).
    #[serde(default)]
    pub crowd: u8,
    /// Whether the crowd's buyers spread over every product, one after another, so one
    /// transaction decides holds on several products.
    #[serde(default)]
    pub crowd_spread: bool,
}

/// Something the world does to the servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Chaos {
    /// Steps an instance's clock by this many milliseconds, forward or back.
    ClockStep {
        /// The instance.
        instance: usize,
        /// The step.
        delta_ms: i64,
    },
    /// Crashes an instance and restarts it: its in-flight requests are cut off.
    Crash {
        /// The instance.
        instance: usize,
    },
}

/// A chaos event at a point in simulated time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChaosAt {
    /// When, from the start of the run.
    pub at_ms: u64,
    /// What.
    #[serde(flatten)]
    pub chaos: Chaos,
}

/// A webhook for a hold that never existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stray {
    /// When, from the start of the run.
    pub at_ms: u64,
    /// `paid`, else `failed`.
    pub paid: bool,
}

/// An admin restock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// When, from the start of the run.
    pub at_ms: u64,
    /// The product, from 1.
    pub product: usize,
    /// Units added.
    pub qty: u32,
}

/// A mass expiry, the second minute of a sale: `holds` buyers each hold one unit of `product` at
/// once, spread over the instances, and abandon what they get, so the holds share a deadline or
/// two and lapse together one TTL later. Around that deadline the world reads the product on
/// every instance, grants on it from every instance as soon as their clocks pass the deadline
/// (while thousands of holds are due and no sweep has folded them yet, or just after), reads it
/// again after the sweepers' next pass, and (from chaos drawn with the storm) steps clocks
/// across the deadline and crashes an instance while the sweepers fold and retire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    /// When the buyers arrive, from the start of the run.
    pub at_ms: u64,
    /// The product, from 1.
    pub product: usize,
    /// How many buyers, each holding one unit.
    pub holds: u32,
}

/// The sweep chunk of a plan that does not say: the server's default.
fn sweep_chunk_default() -> u32 {
    flashsale_service::SWEEP_CHUNK_DEFAULT
}

/// The committers of a plan that does not say: one, as every instance ran before there were more.
fn committers_default() -> usize {
    1
}

/// Everything a run does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Stock of each product, products 1, 2, ... in order; product 1 is the hot one.
    pub stocks: Vec<u32>,
    /// Hold TTL for every instance.
    pub hold_ttl_ms: u64,
    /// Payment window for every instance.
    pub payment_window_ms: u64,
    /// Server instances.
    pub servers: usize,
    /// Each client's journeys, run one after another.
    pub clients: Vec<Vec<Journey>>,
    /// Webhooks for holds that never existed.
    pub strays: Vec<Stray>,
    /// Chaos events.
    pub chaos: Vec<ChaosAt>,
    /// Admin restocks.
    pub restocks: Vec<Restock>,
    /// The storage faults while the load runs.
    pub faults: FaultProfile,
    /// How many requests that arrive together one transaction of an instance decides, whatever
    /// their kinds and products (1: one transaction per request).
    #[serde(alias = "hold_batch_max")]
    pub batch_max: usize,
    /// Mass expiries.
    #[serde(default)]
    pub storms: Vec<Storm>,
    /// How many holds and orders one sweep transaction of a product retires and cancels at most.
    #[serde(default = "sweep_chunk_default")]
    pub sweep_chunk: u32,
    /// How many group committers each instance runs: each its own queue and transaction, so
    /// two batches of one instance may be in flight at once.
    #[serde(default = "committers_default")]
    pub committers: usize,
}

impl Plan {
    /// Draws a plan of about `ops` journeys for `clients` clients and `servers` instances.
    pub fn draw(seed: u64, ops: usize, clients: usize, servers: usize) -> Plan {
        let mut rng = PlanRng::new(seed);
        let faults = FaultProfile::draw(&mut rng);
        let products = 1 + rng.below(4) as usize;
        let stocks = (0..products)
            .map(|i| {
                if i == 0 {
                    3 + rng.below(25) as u32
                } else {
                    5 + rng.below(50) as u32
                }
            })
            .collect();
        let hold_ttl_ms = 1_000 + rng.below(9_000);
        let payment_window_ms = 2_000 + rng.below(20_000);
        let clients = clients.max(1);
        let per_client = ops.div_ceil(clients);
        let clients: Vec<Vec<Journey>> = (0..clients)
            .map(|_| {
                (0..per_client)
                    .map(|_| journey(&mut rng, products, hold_ttl_ms, payment_window_ms))
                    .collect()
            })
            .collect();
        let span_ms = per_client as u64 * 1_500;
        let strays = (0..1 + rng.below(3))
            .map(|_| Stray {
                at_ms: rng.below(span_ms),
                paid: rng.chance(50),
            })
            .collect();
        let chaos_events = (ops / 25).max(2);
        let chaos = (0..chaos_events)
            .map(|_| ChaosAt {
                at_ms: rng.below(span_ms),
                chaos: chaos(&mut rng, servers, hold_ttl_ms),
            })
            .collect();
        let restocks = (0..rng.below(1 + ops as u64 / 50))
            .map(|_| {
                let product = 1 + rng.below(products as u64) as usize;
                let at_ms = rng.below(span_ms);
                Restock {
                    at_ms,
                    product,
                    qty: 1 + rng.below(5) as u32,
                }
            })
            .collect();
        // Drawn last, so the rest of every seed's plan stays as it was before batching existed.
        let batch_max = [1, 2, 8, 128][rng.below(4) as usize];
        // Drawn after it, for the same reason: reads came later still.
        let mut clients = clients;
        for journey in clients.iter_mut().flatten() {
            journey.reads = rng.chance(30);
        }
        // And crowds after reads.
        for journey in clients.iter_mut().flatten() {
            journey.crowd = if rng.chance(10) {
                2 + rng.below(7) as u8
            } else {
                0
            };
        }
        // And whether a crowd spreads over the products, drawn only for a crowd.
        for journey in clients.iter_mut().flatten().filter(|j| j.crowd > 0) {
            journey.crowd_spread = rng.chance(50);
        }
        let mut plan = Plan {
            stocks,
            hold_ttl_ms,
            payment_window_ms,
            servers: servers.max(1),
            clients,
            strays,
            chaos,
            restocks,
            faults,
            batch_max,
            storms: Vec::new(),
            sweep_chunk: sweep_chunk_default(),
            committers: committers_default(),
        };
        // Storms and sweep chunks came last of all.
        plan.sweep_chunk = [1, 7, 100, sweep_chunk_default()][rng.below(4) as usize];
        if rng.chance(STORM_PERCENT) {
            plan.add_storm(&mut rng, span_ms);
        }
        // Committers came after storms: one, two or three per instance.
        plan.committers = 1 + rng.below(3) as usize;
        plan
    }

    /// Adds a mass expiry on a product of its own, stocked for it, with a clock step across its
    /// deadline and a crash while the sweepers fold and retire.
    fn add_storm(&mut self, rng: &mut PlanRng, span_ms: u64) {
        let holds =
            STORM_HOLDS_MIN + rng.below(u64::from(STORM_HOLDS_MAX - STORM_HOLDS_MIN)) as u32;
        self.stocks.push(holds.saturating_add(rng.below(20) as u32));
        let storm = Storm {
            at_ms: rng.below(span_ms.max(1)),
            product: self.stocks.len(),
            holds,
        };
        let deadline_ms = storm.at_ms.saturating_add(self.hold_ttl_ms);
        let instance = rng.below(self.servers as u64) as usize;
        let step = 1 + rng.below(2 * self.hold_ttl_ms) as i64;
        self.chaos.push(ChaosAt {
            at_ms: deadline_ms.saturating_sub(rng.below(500)),
            chaos: Chaos::ClockStep {
                instance,
                delta_ms: if rng.chance(50) { step } else { -step },
            },
        });
        self.chaos.push(ChaosAt {
            at_ms: deadline_ms.saturating_add(rng.below(2_000)),
            chaos: Chaos::Crash {
                instance: rng.below(self.servers as u64) as usize,
            },
        });
        self.storms.push(storm);
    }

    /// Journeys in the plan.
    pub fn journeys(&self) -> usize {
        self.clients.iter().map(Vec::len).sum()
    }

    /// Operations in the plan: journeys, strays, chaos events, restocks and storms.
    pub fn ops(&self) -> usize {
        self.journeys()
            + self.strays.len()
            + self.chaos.len()
            + self.restocks.len()
            + self.storms.len()
    }

    /// Checks what a hand-edited plan could get wrong: every product and instance it names
    /// exists, and the service's limits hold.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn check(&self) -> Result<(), String> {
        let products = self.stocks.len();
        if products == 0 {
            return Err("stocks: a plan needs at least one product".into());
        }
        if self.servers == 0 {
            return Err("servers: a plan needs at least one server".into());
        }
        if self.batch_max == 0 {
            return Err("batch_max must be at least 1".into());
        }
        let committers_max = usize::from(flashsale_service::COMMITTERS_MAX);
        if !(1..=committers_max).contains(&self.committers) {
            return Err(format!("committers must be 1 to {committers_max}"));
        }
        let product_ok = |p: usize| (1..=products).contains(&p);
        for (c, journeys) in self.clients.iter().enumerate() {
            for (j, journey) in journeys.iter().enumerate() {
                if !product_ok(journey.product) {
                    return Err(format!(
                        "clients[{c}][{j}].product is {}: products are 1 to {products}",
                        journey.product
                    ));
                }
            }
        }
        for (i, restock) in self.restocks.iter().enumerate() {
            if !product_ok(restock.product) {
                return Err(format!(
                    "restocks[{i}].product is {}: products are 1 to {products}",
                    restock.product
                ));
            }
        }
        for (i, storm) in self.storms.iter().enumerate() {
            if !product_ok(storm.product) {
                return Err(format!(
                    "storms[{i}].product is {}: products are 1 to {products}",
                    storm.product
                ));
            }
        }
        let chunk_max = flashsale_service::SWEEP_CHUNK_MAX;
        if !(1..=chunk_max).contains(&self.sweep_chunk) {
            return Err(format!("sweep_chunk must be 1 to {chunk_max}"));
        }
        for (i, event) in self.chaos.iter().enumerate() {
            let (Chaos::ClockStep { instance, .. } | Chaos::Crash { instance }) = event.chaos;
            if instance >= self.servers {
                return Err(format!(
                    "chaos[{i}].instance is {instance}: instances are 0 to {}",
                    self.servers - 1
                ));
            }
        }
        Ok(())
    }
}

fn journey(rng: &mut PlanRng, products: usize, ttl_ms: u64, window_ms: u64) -> Journey {
    let product = if rng.chance(70) {
        1
    } else {
        1 + rng.below(products as u64) as usize
    };
    let order_after_ms = if rng.chance(15) {
        None
    } else if rng.chance(10) {
        // Past the hold's TTL: the order must be refused.
        Some(ttl_ms + rng.below(ttl_ms))
    } else {
        Some(rng.below(ttl_ms / 2))
    };
    let verdict = rng.chance(85).then(|| Verdict {
        paid: rng.chance(80),
        early: rng.chance(15),
        delay_ms: if rng.chance(10) {
            window_ms + rng.below(window_ms)
        } else {
            rng.below(ttl_ms)
        },
        copies: 1 + rng.below(3) as u8,
        concurrent: rng.chance(50),
        conflicting: rng.chance(10),
    });
    let keyed = rng.chance(50);
    Journey {
        start_ms: rng.below(1_000),
        product,
        qty: 1 + rng.below(3) as u32,
        order_after_ms,
        verdict,
        keyed,
        double_submit: keyed && rng.chance(20),
        reads: false,
        crowd: 0,
        crowd_spread: false,
    }
}

fn chaos(rng: &mut PlanRng, servers: usize, ttl_ms: u64) -> Chaos {
    let instance = rng.below(servers.max(1) as u64) as usize;
    if rng.chance(60) {
        let magnitude = 1 + rng.below(2 * ttl_ms) as i64;
        Chaos::ClockStep {
            instance,
            delta_ms: if rng.chance(50) {
                magnitude
            } else {
                -magnitude
            },
        }
    } else {
        Chaos::Crash { instance }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "products (stock) {:?}; hold ttl {} ms; payment window {} ms; {} servers; batches of \
             up to {}; {} committers each",
            self.stocks,
            self.hold_ttl_ms,
            self.payment_window_ms,
            self.servers,
            self.batch_max,
            self.committers
        )?;
        let p = &self.faults;
        writeln!(
            f,
            "faults: deadlock {:.3}, lock timeout {:.3}, connection lost {:.3}, commit answer lost \
             {:.3}, latency up to {} us",
            p.deadlock, p.lock_timeout, p.connection_lost, p.commit_answer_lost, p.latency_us_max
        )?;
        for (client, journeys) in self.clients.iter().enumerate() {
            for j in journeys {
                write!(
                    f,
                    "  client {client}: after {} ms hold {} of product {}{}",
                    j.start_ms,
                    j.qty,
                    j.product,
                    match (j.keyed, j.double_submit) {
                        (true, true) => " (with keys, sent twice at once)",
                        (true, false) => " (with keys)",
                        (false, _) => "",
                    }
                )?;
                if j.reads {
                    write!(f, ", reading")?;
                }
                if j.crowd > 0 {
                    write!(f, ", in a crowd of {} more", j.crowd)?;
                }
                match j.order_after_ms {
                    Some(ms) => write!(f, ", order {ms} ms later")?,
                    None => write!(f, ", abandon")?,
                }
                if let Some(v) = &j.verdict {
                    write!(
                        f,
                        "; provider {}{} after {} ms x{}{}{}",
                        if v.paid { "paid" } else { "failed" },
                        if v.early { " (early)" } else { "" },
                        v.delay_ms,
                        v.copies,
                        if v.concurrent { " at once" } else { "" },
                        if v.conflicting {
                            " + conflicting verdict"
                        } else {
                            ""
                        },
                    )?;
                }
                writeln!(f)?;
            }
        }
        for stray in &self.strays {
            writeln!(
                f,
                "  at {} ms: {} webhook for an unknown hold",
                stray.at_ms,
                if stray.paid { "paid" } else { "failed" }
            )?;
        }
        for c in &self.chaos {
            match c.chaos {
                Chaos::ClockStep { instance, delta_ms } => writeln!(
                    f,
                    "  at {} ms: the clock of instance {instance} steps {delta_ms:+} ms",
                    c.at_ms
                )?,
                Chaos::Crash { instance } => {
                    writeln!(f, "  at {} ms: instance {instance} crashes", c.at_ms)?
                }
            }
        }
        for r in &self.restocks {
            writeln!(
                f,
                "  at {} ms: restock {} of product {}",
                r.at_ms, r.qty, r.product
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_plan() {
        assert_eq!(Plan::draw(42, 100, 4, 3), Plan::draw(42, 100, 4, 3));
        assert_ne!(Plan::draw(42, 100, 4, 3), Plan::draw(43, 100, 4, 3));
    }

    #[test]
    fn a_plan_has_the_journeys_asked_for_spread_over_the_clients() {
        let plan = Plan::draw(7, 100, 4, 2);
        assert_eq!(plan.clients.len(), 4);
        assert_eq!(plan.journeys(), 100);
        assert!(plan.ops() > plan.journeys(), "strays and chaos come on top");
        let instances = plan.chaos.iter().map(|c| match c.chaos {
            Chaos::ClockStep { instance, .. } | Chaos::Crash { instance } => instance,
        });
        assert!(
            instances.into_iter().all(|i| i < 2),
            "chaos names existing instances"
        );
    }

    #[test]
    fn a_plan_reads_back_from_its_json_as_it_was() {
        let plan = Plan::draw(3, 40, 4, 3);
        let text = serde_json::to_string_pretty(&plan).expect("serialises");
        let back: Plan = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, plan);
        assert!(text.contains("\"kind\": \"crash\"") || text.contains("\"kind\": \"clock_step\""));
    }

    #[test]
    fn products_are_numbered_from_one_as_the_api_numbers_them() {
        let plan = Plan::draw(5, 200, 8, 3);
        let products = plan.stocks.len();
        let named = plan.clients.iter().flatten().map(|j| j.product);
        assert!(named.clone().all(|p| (1..=products).contains(&p)));
        assert!(
            plan.clients.iter().flatten().any(|j| j.product == 1),
            "1 is the hot one"
        );
        assert_eq!(plan.check(), Ok(()));
    }

    #[test]
    fn a_hand_edited_plan_that_names_what_it_lacks_is_refused() {
        let mut plan = Plan::draw(5, 20, 2, 2);
        plan.clients[0][0].product = 0;
        assert!(
            plan.check()
                .is_err_and(|e| e.starts_with("clients[0][0].product is 0"))
        );
        let mut plan = Plan::draw(5, 20, 2, 2);
        plan.chaos[0].chaos = Chaos::Crash { instance: 2 };
        assert!(
            plan.check()
                .is_err_and(|e| e.contains("instances are 0 to 1"))
        );
        let typo = r#"{"stocks": [1], "hold_ttl_msx": 1}"#;
        assert!(
            serde_json::from_str::<Plan>(typo).is_err(),
            "unknown fields are refused"
        );
    }
}
