//! The service layer over the real storages, checked against the core's `Ledger`: random command
//! sequences with clock steps both ways (products, restocks, holds and orders with and without
//! an `Idempotency-Key`, keys retried and reused, webhooks early, duplicate and conflicting,
//! reads, sweeps) run through a `Service` on SQLite and on MariaDB and through the `Ledger`. Every
//! answer must equal the ledger's outcome, every read the ledger's rows and availability, and at
//! the end the database's rows must equal the ledger's and keep the invariants. proptest shrinks
//! a failure to a minimal sequence.
//!
//! The concurrent variant runs eight clients at once on three services with skewed clocks over
//! one database, while the clocks pass hold deadlines, and checks the database's own state
//! against every answer the clients got, then runs the commit-order replay (`flashsale-check`,
//! the simulator's check) on it:
//! the services' storage logs each transaction's end in commit order (`flashsale_check::logged`),
//! and the log replayed through the ledger must give every answer, every read a state it may have
//! seen, and the database's final rows.
//!
//! Cases: 48 on SQLite and 16 on MariaDB by default, 24 each for the concurrent variant (each case
//! is a fresh database); set `STORAGE_MODEL_CASES` for more.

// Test arithmetic is on small generated numbers; an overflow would panic the test, as it should.
#![allow(clippy::arithmetic_side_effects)]

// The service-layer tests' fresh databases and test service, shared with the server's tests.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{Db, T0, TTL_MS, TestService, WINDOW_MS, mariadb, sqlite};
use flashsale_check::history::{Answer, Read, ReadAnswer, Target};
use flashsale_check::logged::{Logged, Noting};
use flashsale_check::recording::{OP, OpContext, RequestContexts};
use flashsale_check::refine;
use flashsale_check::words;
use flashsale_core::{
    Cents, Command, Folded, HoldId, IdempotencyKey, Ledger, OrderId, Outcome, PaymentStatus,
    ProductId, Qty, Rejection, Timestamp, WebhookPayload,
};
use flashsale_server::sql::SqlStore;
use flashsale_service::clock::ManualClock;
use flashsale_service::{Service, ServiceError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// One step of a sequence. Ids are small, so most name rows that exist.
#[derive(Clone, Debug)]
enum Op {
    /// Move the clock by this many ms (backwards too; never before the start).
    Clock(i64),
    /// Move the clock to the next hold or payment deadline, plus this many ms (-1, 0 or 1):
    /// boundaries are where a one-place slip hides.
    AtDeadline(i64),
    CreateProduct {
        stock: u32,
        blank: bool,
    },
    Restock {
        product: u64,
        qty: u32,
    },
    Hold {
        product: u64,
        qty: u32,
        key: Option<u8>,
    },
    Order {
        hold: u64,
        key: Option<u8>,
    },
    Webhook {
        key: u8,
        hold: u64,
        paid: bool,
    },
    Read {
        product: u64,
        hold: u64,
        order: u64,
    },
    Sweep,
    /// A mass expiry on a product of its own, stocked for it: `holds` holds of one unit granted
    /// at one instant (one deadline, one bucket), one transaction each (a batch's multi-row
    /// insert leaves gaps in MariaDB's ids, which this sequential test compares with the
    /// ledger's one for one); then the clock past their deadline,
    /// a read (which counts the due bucket), a grant (which folds it, writing no hold row), a
    /// read again, and sweeps until every expired hold's row is retired.
    MassExpiry {
        holds: u16,
    },
}

/// A product id: one of the two every sequence starts with, sometimes a third or none.
fn product() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..=2, 1 => Just(3u64), 1 => Just(0u64)]
}

/// A hold or order id: mostly among the first few, sometimes one that does not exist.
fn row() -> impl Strategy<Value = u64> {
    prop_oneof![9 => 1u64..=5, 1 => Just(99u64)]
}

/// A sequence: two products, then the steps.
fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..48).prop_map(|steps| {
        let start = [
            Op::CreateProduct {
                stock: 12,
                blank: false,
            },
            Op::CreateProduct {
                stock: 3,
                blank: false,
            },
        ];
        start.into_iter().chain(steps).collect()
    })
}

fn op() -> impl Strategy<Value = Op> {
    let clock = prop_oneof![
        4 => 0i64..5_000,
        3 => 5_000i64..(2 * TTL_MS as i64),
        1 => Just(WINDOW_MS as i64 + 1),
        2 => -(TTL_MS as i64)..0,
    ];
    let key = prop_oneof![2 => Just(None), 1 => (0u8..4).prop_map(Some)];
    prop_oneof![
        3 => clock.prop_map(Op::Clock),
        2 => (-1i64..=1).prop_map(Op::AtDeadline),
        1 => (0u32..6, prop::bool::weighted(0.1))
            .prop_map(|(stock, blank)| Op::CreateProduct { stock, blank }),
        1 => (product(), 0u32..4).prop_map(|(product, qty)| Op::Restock { product, qty }),
        6 => (product(), prop_oneof![9 => 1u32..4, 1 => Just(0u32)], key.clone())
            .prop_map(|(product, qty, key)| Op::Hold { product, qty, key }),
        4 => (row(), key).prop_map(|(hold, key)| Op::Order { hold, key }),
        4 => (0u8..12, row(), any::<bool>())
            .prop_map(|(key, hold, paid)| Op::Webhook { key, hold, paid }),
        2 => (product(), row(), row())
            .prop_map(|(product, hold, order)| Op::Read { product, hold, order }),
        1 => Just(Op::Sweep),
        1 => (100u16..300).prop_map(|holds| Op::MassExpiry { holds }),
    ]
}

fn key(name: String) -> IdempotencyKey {
    IdempotencyKey::parse(&name).expect("generated keys are valid")
}

/// The service's answer as the ledger words it, or the rejection; anything else fails the case.
fn rejection_or_fail<T>(
    answer: Result<T, ServiceError>,
) -> Result<Result<T, Rejection>, TestCaseError> {
    match answer {
        Ok(value) => Ok(Ok(value)),
        Err(ServiceError::Rejected(rejection)) => Ok(Err(rejection)),
        Err(other) => Err(TestCaseError::fail(format!("the service failed: {other}"))),
    }
}

struct Run {
    service: TestService,
    clock: ManualClock,
    ledger: Ledger,
    now: Timestamp,
}

impl Run {
    fn ledger_apply(&mut self, command: Command) -> Result<Outcome, Rejection> {
        self.ledger.apply(self.now, command)
    }

    /// The ledger's sweep, as the service reports one: folded, holds retired, orders cancelled.
    fn ledger_sweep(&mut self) -> Result<(Folded, usize, usize), TestCaseError> {
        match self.ledger_apply(Command::Sweep) {
            Ok(Outcome::Swept {
                folded,
                holds_retired,
                orders_cancelled,
            }) => Ok((folded, holds_retired.len(), orders_cancelled.len())),
            want => Err(TestCaseError::fail(format!("the ledger's sweep: {want:?}"))),
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op.clone() {
            Op::Clock(dt) => {
                let at = self.now.as_ms().saturating_add_signed(dt).max(T0.as_ms());
                self.now = Timestamp(at);
                self.clock.set(self.now);
            }
            Op::AtDeadline(offset) => {
                if let Some(deadline) = self.ledger.next_deadline() {
                    let at = deadline
                        .as_ms()
                        .saturating_add_signed(offset)
                        .max(T0.as_ms());
                    self.now = Timestamp(at);
                    self.clock.set(self.now);
                }
            }
            Op::CreateProduct { stock, blank } => {
                let name = if blank { " " } else { "P" };
                let got = self
                    .service
                    .create_product(name, Cents(100), Qty(stock))
                    .await;
                let got = rejection_or_fail(got)?.map(Outcome::ProductCreated);
                let want = self.ledger_apply(Command::CreateProduct {
                    name: name.into(),
                    price_cents: Cents(100),
                    stock: Qty(stock),
                });
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::Restock { product, qty } => {
                let got = self.service.restock(ProductId(product), Qty(qty)).await;
                let got = rejection_or_fail(got)?.map(|view| Outcome::Restocked {
                    product: view.product,
                    available: view.available,
                });
                let want = self.ledger_apply(Command::Restock {
                    product_id: ProductId(product),
                    qty: Qty(qty),
                });
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::Hold {
                product,
                qty,
                key: k,
            } => {
                // The ledger keeps the keys' records too: a retry replays there as here, and a
                // key reused with another body is refused by both.
                let key = k.map(|k| key(format!("h{k}")));
                let got = self
                    .service
                    .place_hold_keyed(key.as_ref(), ProductId(product), Qty(qty))
                    .await;
                let got = rejection_or_fail(got)?.map(|keyed| Outcome::HoldPlaced {
                    hold: keyed.value.hold,
                    folded: keyed.value.folded,
                    replayed: keyed.replayed,
                });
                let want = self.ledger_apply(Command::PlaceHold {
                    product_id: ProductId(product),
                    qty: Qty(qty),
                    ttl_ms: TTL_MS,
                    key,
                });
                prop_assert_eq!(&got, &want, "{:?}", op);
            }
            Op::Order { hold, key: k } => {
                let key = k.map(|k| key(format!("o{k}")));
                let got = self
                    .service
                    .place_order_keyed(key.as_ref(), HoldId(hold))
                    .await;
                let got = rejection_or_fail(got)?.map(|keyed| Outcome::OrderPlaced {
                    order: keyed.value.order,
                    created: keyed.value.created,
                    replayed: keyed.replayed,
                });
                let want = self.ledger_apply(Command::PlaceOrder {
                    hold_id: HoldId(hold),
                    payment_window_ms: WINDOW_MS,
                    key,
                });
                prop_assert_eq!(&got, &want, "{:?}", op);
            }
            Op::Webhook { key: k, hold, paid } => {
                let payload = WebhookPayload {
                    key: key(format!("evt_{k}")),
                    hold_id: HoldId(hold),
                    status: if paid {
                        PaymentStatus::Paid
                    } else {
                        PaymentStatus::Failed
                    },
                };
                let got = self.service.apply_webhook(&payload).await;
                let got = rejection_or_fail(got)?;
                let want = self.ledger_apply(Command::ApplyWebhook(payload));
                let got = got.map(|answer| Outcome::WebhookApplied {
                    record: answer.record,
                    replayed: answer.replayed,
                    order: answer.order,
                    change: answer.change,
                });
                prop_assert_eq!(&got, &want, "{:?}", op);
            }
            Op::Read {
                product,
                hold,
                order,
            } => {
                let read = rejection_or_fail(self.service.product(ProductId(product)).await);
                match read {
                    Ok(Ok(view)) => {
                        prop_assert_eq!(
                            Some(&view.product),
                            self.ledger.product(ProductId(product))
                        );
                        prop_assert_eq!(
                            Some(view.available),
                            self.ledger.available(ProductId(product), self.now),
                            "available of product {} at {}",
                            product,
                            self.now
                        );
                    }
                    _ => {
                        let missing = matches!(
                            self.service.product(ProductId(product)).await,
                            Err(ServiceError::NotFound { .. })
                        );
                        prop_assert!(missing && self.ledger.product(ProductId(product)).is_none());
                    }
                }
                let held = self.service.hold(HoldId(hold)).await.ok().map(|(h, _)| h);
                prop_assert_eq!(
                    held.as_ref(),
                    self.ledger.hold(HoldId(hold)),
                    "hold {}",
                    hold
                );
                let ordered = self.service.order(OrderId(order)).await.ok();
                prop_assert_eq!(
                    ordered.as_ref(),
                    self.ledger.order(OrderId(order)),
                    "order {}",
                    order
                );
            }
            Op::MassExpiry { holds } => self.mass_expiry(holds).await?,
            Op::Sweep => {
                let report = self
                    .service
                    .sweep()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    (report.folded, report.holds_retired, report.orders_cancelled),
                    self.ledger_sweep()?
                );
            }
        }
        Ok(())
    }

    /// [`Op::MassExpiry`].
    async fn mass_expiry(&mut self, holds: u16) -> Result<(), TestCaseError> {
        let stock = Qty(u32::from(holds) + 1);
        let created = self.service.create_product("M", Cents(100), stock).await;
        let created = rejection_or_fail(created)?;
        let want = self.ledger_apply(Command::CreateProduct {
            name: "M".into(),
            price_cents: Cents(100),
            stock,
        });
        prop_assert_eq!(created.clone().map(Outcome::ProductCreated), want);
        let Ok(product) = created else {
            return Ok(());
        };
        let hold = Command::PlaceHold {
            product_id: product.id,
            qty: Qty(1),
            ttl_ms: TTL_MS,
            key: None,
        };
        for _ in 0..holds {
            let one = std::slice::from_ref(&hold);
            let got: Vec<_> = (self.service.execute_batch(one).await.into_iter())
                .map(rejection_or_fail)
                .collect::<Result<_, _>>()?;
            let want = self.ledger.apply_batch(self.now, one);
            prop_assert_eq!(got, want, "a hold of the mass expiry");
        }
        self.now = Timestamp(self.now.as_ms() + TTL_MS + 1_000);
        self.clock.set(self.now);
        let id = product.id.0;
        let read = Op::Read {
            product: id,
            hold: 1,
            order: 1,
        };
        Box::pin(self.step(&read)).await?;
        let grant = Op::Hold {
            product: id,
            qty: 1,
            key: None,
        };
        Box::pin(self.step(&grant)).await?;
        Box::pin(self.step(&read)).await?;
        let report = self
            .service
            .sweep_all()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (_, holds_retired, orders_cancelled) = self.ledger_sweep()?;
        prop_assert_eq!(
            (report.holds_retired, report.orders_cancelled),
            (holds_retired, orders_cancelled)
        );
        Ok(())
    }

    /// The database's rows equal the ledger's, and keep the invariants.
    async fn rows_agree(&self) -> Result<(), TestCaseError> {
        let dump = self
            .service
            .dump()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(violation) = dump.clone().check() {
            return Err(TestCaseError::fail(format!("invariant: {violation}")));
        }
        let products: Vec<_> = self.ledger.products().cloned().collect();
        let holds: Vec<_> = self.ledger.holds().copied().collect();
        let orders: Vec<_> = self.ledger.orders().copied().collect();
        let mut webhooks: Vec<_> = self.ledger.webhooks().cloned().collect();
        webhooks.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        prop_assert_eq!(&dump.products, &products);
        prop_assert_eq!(&dump.holds, &holds);
        prop_assert_eq!(&dump.orders, &orders);
        prop_assert_eq!(&dump.webhooks, &webhooks);
        Ok(())
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("STORAGE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runtime for the services, and a proptest runner of `cases` cases.
fn runner(cases: u32, max_shrink_iters: u32) -> (tokio::runtime::Runtime, TestRunner) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let config = Config {
        cases,
        max_shrink_iters,
        failure_persistence: None,
        ..Config::default()
    };
    (runtime, TestRunner::new(config))
}

/// Runs the property on fresh databases made by `make`.
fn check<F, Fut>(make: F, cases: u32)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Db>,
{
    let (runtime, mut runner) = runner(cases, 200);
    let result = runner.run(&sequence(), |ops| {
        runtime.block_on(async {
            let db = make().await;
            let clock = ManualClock::new(T0);
            let service = db.service(&clock).await;
            let mut run = Run {
                service,
                clock,
                ledger: Ledger::new(),
                now: T0,
            };
            let mut outcome = Ok(());
            for op in &ops {
                outcome = run.step(op).await;
                if outcome.is_err() {
                    break;
                }
            }
            if outcome.is_ok() {
                outcome = run.rows_agree().await;
            }
            // `rows_agree` checked the invariants already.
            db.discard(&run.service).await;
            outcome
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn the_service_on_sqlite_agrees_with_the_ledger() {
    check(sqlite, cases(48));
}

#[test]
fn the_service_on_mariadb_agrees_with_the_ledger() {
    check(mariadb, cases(16));
}

/// What one concurrent client does: a few hold attempts, each followed maybe by an order and a
/// payment webhook (sometimes delivered twice, sometimes before the order).
#[derive(Clone, Debug)]
struct Journey {
    product: u64,
    qty: u32,
    order: bool,
    webhook: Option<(bool, bool)>,
    early: bool,
}

fn journey() -> impl Strategy<Value = Journey> {
    (
        1u64..=2,
        1u32..=3,
        any::<bool>(),
        prop::option::of((any::<bool>(), any::<bool>())),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(product, qty, order, webhook, early)| Journey {
            product,
            qty,
            order,
            webhook,
            early,
        })
}

/// What the clients were told, to check against the database afterwards.
#[derive(Debug, Default)]
struct Told {
    holds: Vec<(HoldId, ProductId, Qty)>,
    orders: Vec<(OrderId, HoldId, bool)>,
    webhooks: Vec<(String, HoldId, bool, flashsale_core::WebhookResult)>,
}

/// A service of the concurrent variant: over a logged storage and a noting clock, so the
/// simulator's commit-order replay can check every answer against the database's own rows.
type LoggedService = Service<Logged<SqlStore>, Noting<ManualClock>>;

/// The requests the clients sent and what they were answered, for the replay.
#[derive(Debug, Default)]
struct Recorder {
    next: AtomicU64,
    answers: Mutex<BTreeMap<u64, Answer>>,
    reads: Mutex<Vec<Read>>,
}

impl Recorder {
    /// Runs `request` as the next request number, doing `command` (or reading, without one) on
    /// `instance`, and returns its number and result.
    async fn run<T, Fut>(
        &self,
        instance: usize,
        command: Option<Command>,
        request: Fut,
    ) -> (u64, Fut::Output)
    where
        Fut: std::future::Future<Output = T>,
    {
        let op = self.next.fetch_add(1, Ordering::Relaxed);
        let context = OpContext::on(op, command, None, instance, None);
        (op, OP.scope(context, request).await)
    }

    /// Runs `request`, doing `command` on `instance`, and records its answer (an outcome or a
    /// refusal) for the replay; an error the replay does not decide (busy, a database error)
    /// is not recorded.
    async fn command<T, Fut>(
        &self,
        instance: usize,
        command: Command,
        request: Fut,
    ) -> Result<T, ServiceError>
    where
        Fut: std::future::Future<Output = Result<T, ServiceError>>,
        for<'a> &'a T: Into<Answer>,
    {
        let (op, result) = self.run(instance, Some(command), request).await;
        let answer = match &result {
            Ok(value) => Some(value.into()),
            Err(ServiceError::Rejected(rejection)) => Some(Answer::Rejected(rejection.clone())),
            Err(_) => None,
        };
        if let Some(answer) = answer {
            self.answers.lock().expect("answers").insert(op, answer);
        }
        result
    }

    /// Reads `target` through `service` on `instance` and records the read with the log
    /// positions it may have seen: from the log's length when it was sent to its length when it
    /// was answered.
    async fn read(
        &self,
        service: &LoggedService,
        instance: usize,
        target: Target,
    ) -> Result<(), String> {
        let from = service.store().len().await;
        let (op, answer) = self
            .run(instance, None, ReadAnswer::read(service, target))
            .await;
        let to = service.store().len().await;
        match answer.map(|answer| Read::of(op, target, from..to, answer)) {
            Ok(Some(read)) => {
                self.reads.lock().expect("reads").push(read);
                Ok(())
            }
            Ok(None) => Err(format!("read r{op} of {target:?} read no clock")),
            Err(ServiceError::Busy { .. }) => Ok(()),
            Err(other) => Err(format!("read r{op} of {target:?}: {other}")),
        }
    }
}

/// One client on one of the services: each request runs as a numbered request whose answer
/// the replay checks; it reads the hold and its product after a grant and the order after an
/// order.
async fn client(
    service: LoggedService,
    instance: usize,
    recorder: Arc<Recorder>,
    journeys: Vec<Journey>,
    client: usize,
) -> Result<Told, String> {
    let mut told = Told::default();
    for (n, j) in journeys.into_iter().enumerate() {
        let (product, qty) = (ProductId(j.product), Qty(j.qty));
        let command = Command::PlaceHold {
            product_id: product,
            qty,
            ttl_ms: TTL_MS,
            key: None,
        };
        let placed = recorder
            .command(instance, command, service.place_hold(product, qty))
            .await;
        let hold = match placed {
            Ok(placed) => placed.hold,
            Err(ServiceError::Rejected(Rejection::InsufficientStock { .. })) => continue,
            Err(ServiceError::Busy { .. }) => continue,
            Err(other) => return Err(format!("client {client}: hold: {other}")),
        };
        told.holds.push((hold.id, hold.product_id, hold.qty));
        recorder
            .read(&service, instance, Target::Hold(hold.id))
            .await?;
        recorder
            .read(&service, instance, Target::Product(product))
            .await?;
        let deliver = async |told: &mut Told, paid: bool, twice: bool| -> Result<(), String> {
            let key = format!("evt_{client}_{n}");
            let payload = WebhookPayload {
                key: IdempotencyKey::parse(&key).ok_or("a key")?,
                hold_id: hold.id,
                status: if paid {
                    PaymentStatus::Paid
                } else {
                    PaymentStatus::Failed
                },
            };
            for _ in 0..if twice { 2 } else { 1 } {
                let command = Command::ApplyWebhook(payload.clone());
                match recorder
                    .command(instance, command, service.apply_webhook(&payload))
                    .await
                {
                    Ok(answer) => {
                        told.webhooks
                            .push((key.clone(), hold.id, paid, answer.record.result))
                    }
                    Err(ServiceError::Busy { .. }) => {}
                    Err(other) => return Err(format!("client {client}: webhook: {other}")),
                }
            }
            Ok(())
        };
        if let (true, Some((paid, twice))) = (j.early, j.webhook) {
            deliver(&mut told, paid, twice).await?;
        }
        if j.order {
            let command = Command::PlaceOrder {
                hold_id: hold.id,
                payment_window_ms: WINDOW_MS,
                key: None,
            };
            match recorder
                .command(instance, command, service.place_order(hold.id))
                .await
            {
                Ok(placed) => {
                    told.orders.push((placed.order.id, hold.id, placed.created));
                    recorder
                        .read(&service, instance, Target::Order(placed.order.id))
                        .await?;
                }
                Err(ServiceError::Rejected(
                    Rejection::HoldExpired { .. } | Rejection::HoldReleased { .. },
                ))
                | Err(ServiceError::Busy { .. }) => {}
                Err(other) => return Err(format!("client {client}: order: {other}")),
            }
        }
        if let (false, Some((paid, twice))) = (j.early, j.webhook) {
            deliver(&mut told, paid, twice).await?;
        }
    }
    Ok(told)
}

/// The database's own state against what the clients were told: the invariants (no unit sold
/// twice, conservation), every granted hold stored as granted and granted once, every created
/// order the one order of its hold, every applied webhook's effect in the rows.
fn told_agrees(dump: &flashsale_service::store::Dump, told: &[Told]) -> Result<(), String> {
    dump.clone().check()?;
    let mut granted = std::collections::HashSet::new();
    for (id, product, qty) in told.iter().flat_map(|t| &t.holds) {
        if !granted.insert(*id) {
            return Err(format!("hold {id} granted to two requests"));
        }
        let row = dump.holds.iter().find(|h| h.id == *id);
        if row.map(|h| (h.product_id, h.qty)) != Some((*product, *qty)) {
            return Err(format!("hold {id} told {product} x{qty}, stored {row:?}"));
        }
    }
    let mut created = std::collections::HashSet::new();
    for (id, hold, was_created) in told.iter().flat_map(|t| &t.orders) {
        let row = dump.orders.iter().find(|o| o.id == *id);
        if row.map(|o| o.hold_id) != Some(*hold) {
            return Err(format!("order {id} of hold {hold}, stored {row:?}"));
        }
        if *was_created && !created.insert(*hold) {
            return Err(format!("two orders created for hold {hold}"));
        }
    }
    for (key, hold, paid, result) in told.iter().flat_map(|t| &t.webhooks) {
        let record = dump.webhooks.iter().find(|w| w.key.as_str() == key);
        if record.map(|r| (r.hold_id, r.result)) != Some((*hold, *result)) {
            return Err(format!("webhook {key} told {result:?}, stored {record:?}"));
        }
        if *result == flashsale_core::WebhookResult::Applied {
            let order = dump
                .orders
                .iter()
                .find(|o| o.hold_id == *hold)
                .map(|o| o.status);
            let hold_row = dump.holds.iter().find(|h| h.id == *hold).map(|h| h.state);
            let effect = match (paid, order) {
                (true, Some(status)) => status == flashsale_core::OrderStatus::Paid,
                (false, Some(status)) => status == flashsale_core::OrderStatus::Cancelled,
                (false, None) => matches!(hold_row, Some(flashsale_core::HoldState::Released(_))),
                (true, None) => false,
            };
            if !effect {
                return Err(format!(
                    "webhook {key} applied, but hold {hold} is {hold_row:?}, its order {order:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Eight clients at once on three services with skewed clocks over one database, while the
/// clocks move past hold deadlines; then the database's state against what they were told, and
/// the simulator's commit-order replay: the committed transactions replayed through the core's
/// ledger in the order the database committed them must give every answer a client got, every
/// read a state it may have seen, and the database's final rows.
fn check_concurrent<F, Fut>(make: F, cases: u32)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Db>,
{
    // Shrinking would rerun a different interleaving: a failure is reported as it happened.
    let (runtime, mut runner) = runner(cases, 0);
    let plans = prop::collection::vec(prop::collection::vec(journey(), 1..8), 8);
    // Transactions that decided requests of several kinds together, over every case: without
    // any, the replay would have checked no mixed batch at all.
    let mixed = AtomicU64::new(0);
    let result = runner.run(&plans, |plans| {
        runtime.block_on(async {
            let db = make().await;
            // Three services, one database, clocks 0, +300 ms and -300 ms from the first; reads
            // go to the database (the cache is the simulator's to check), and records are kept
            // for the replay.
            let config = Db::config(flashsale_service::Config {
                cache_staleness_ms: 0,
                request_key_retention_ms: u64::MAX,
                webhook_retention_ms: u64::MAX,
                ..Default::default()
            });
            let skews = [0_i64, 300, -300];
            let clocks: Vec<ManualClock> = skews
                .iter()
                .map(|&skew| {
                    // From the simulator's epoch, so a failure's times read as from the start.
                    ManualClock::new(Timestamp(words::EPOCH_MS.saturating_add_signed(skew)))
                })
                .collect();
            let logged = Logged::new(db.store().await);
            let mut services = Vec::new();
            for (n, clock) in clocks.iter().enumerate() {
                let store = if n == 0 {
                    logged.clone()
                } else {
                    logged.beside(db.store().await)
                };
                let service = Service::new(store, Noting(clock.clone()), config)
                    .with_batch_scope(Arc::new(RequestContexts));
                services.push(service);
            }
            let recorder = Arc::new(Recorder::default());
            let first = &services[0];
            for (name, stock) in [("P", 20), ("Q", 4)] {
                let command = Command::CreateProduct {
                    name: name.into(),
                    price_cents: Cents(100),
                    stock: Qty(stock),
                };
                let (_, product) = recorder
                    .run(
                        0,
                        Some(command),
                        first.create_product(name, Cents(100), Qty(stock)),
                    )
                    .await;
                product.expect("a product");
            }
            let mover = {
                let clocks = clocks.clone();
                tokio::spawn(async move {
                    for _ in 0..40 {
                        tokio::task::yield_now().await;
                        for clock in &clocks {
                            clock.advance(TTL_MS as i64 / 8);
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                })
            };
            let tasks: Vec<_> = plans
                .into_iter()
                .enumerate()
                .map(|(n, journeys)| {
                    let instance = n % services.len();
                    let service = services[instance].clone();
                    tokio::spawn(client(service, instance, recorder.clone(), journeys, n))
                })
                .collect();
            let mut told = Vec::new();
            let mut failure = None;
            for task in tasks {
                match task.await {
                    Ok(Ok(t)) => told.push(t),
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => failure = Some(format!("a client panicked: {e}")),
                }
            }
            let _ = mover.await;
            // A sweep on every service, then the final state.
            for (instance, service) in services.iter().enumerate() {
                let _ = recorder
                    .run(instance, Some(Command::Sweep), service.sweep())
                    .await;
            }
            let dump = first
                .dump()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let log = logged.log().await;
            mixed.fetch_add(mixed_batches(&log), Ordering::Relaxed);
            let verdict = match failure {
                Some(e) => Err(e),
                None => {
                    told_agrees(&dump, &told).and_then(|()| replay_agrees(&dump, &log, &recorder))
                }
            };
            db.remove(logged.inner()).await;
            verdict.map_err(TestCaseError::fail)
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let mixed = mixed.into_inner();
    eprintln!("{mixed} transactions decided requests of several kinds together");
    assert!(
        mixed > 0,
        "no transaction decided requests of several kinds together"
    );
}

/// How many transactions of `log` decided requests of more than one kind together.
fn mixed_batches(log: &[flashsale_check::recording::Entry]) -> u64 {
    let mut kinds: BTreeMap<u64, std::collections::BTreeSet<String>> = BTreeMap::new();
    for entry in log {
        // The command's words up to its first space: its method, `POST /api/holds` and such.
        let words = words::command(&entry.command);
        let kind = words.split(" {").next().unwrap_or_default().to_owned();
        kinds.entry(entry.tx).or_default().insert(kind);
    }
    kinds.values().filter(|k| k.len() > 1).count() as u64
}

/// The simulator's refinement check on the database's own state: the log replayed through the
/// ledger in commit order gives every recorded answer (each checked, none left over), every
/// read a state it may have seen, and the final rows.
fn replay_agrees(
    dump: &flashsale_service::store::Dump,
    log: &[flashsale_check::recording::Entry],
    recorder: &Recorder,
) -> Result<(), String> {
    let stored = dump.clone().into_ledger();
    let answers = recorder.answers.lock().expect("answers").clone();
    let reads = recorder.reads.lock().expect("reads").clone();
    let checked = refine::check(&stored, log, &answers, &reads).map_err(|failure| {
        // The log up to the failing request's last entry, as the simulator's trace tail.
        let end = failure
            .request
            .and_then(|op| log.iter().rposition(|e| e.op == op))
            .map_or(log.len(), |i| i + 1);
        let tail: Vec<String> = log[end.saturating_sub(12)..end]
            .iter()
            .map(|e| {
                let ended = if e.wrote {
                    "committed"
                } else {
                    "ended without writes"
                };
                format!(
                    "  tx{} r{}: {} at {} {ended}",
                    e.tx,
                    e.op,
                    words::command(&e.command),
                    words::time(e.now)
                )
            })
            .collect();
        format!("{failure}\nthe commit log before it:\n{}", tail.join("\n"))
    })?;
    if checked.answers != answers.len() || checked.reads != reads.len() {
        return Err(format!(
            "the replay checked {} of {} answers and {} of {} reads",
            checked.answers,
            answers.len(),
            checked.reads,
            reads.len()
        ));
    }
    Ok(())
}

#[test]
fn concurrent_clients_on_skewed_services_on_sqlite_keep_their_answers() {
    check_concurrent(sqlite, cases(24));
}

#[test]
fn concurrent_clients_on_skewed_services_on_mariadb_keep_their_answers() {
    check_concurrent(mariadb, cases(24));
}
