//! The service layer over the real storages, checked against the core's `Ledger`: random command
//! sequences with clock steps both ways (products, restocks, holds and orders with and without
//! an `Idempotency-Key`, keys retried and reused, webhooks early, duplicate and conflicting,
//! reads, sweeps) run through a `Service` on SQLite and on MariaDB and through the `Ledger`. Every
//! answer must equal the ledger's outcome, every read the ledger's rows and availability, and at
//! the end the database's rows must equal the ledger's and keep the invariants. proptest shrinks
//! a failure to a minimal sequence.
//!
//! Cases: 48 on SQLite and 16 on MariaDB by default (each case is a fresh database); set
//! `STORAGE_MODEL_CASES` for more.

// Test arithmetic is on small generated numbers; an overflow would panic the test, as it should.
#![allow(clippy::arithmetic_side_effects)]

mod common;

use std::collections::HashMap;

use common::{Db, T0, TTL_MS, TestService, WINDOW_MS, mariadb, sqlite};
use flashsale_core::{
    Cents, Command, HoldId, IdempotencyKey, Ledger, OrderId, Outcome, PaymentStatus, ProductId,
    Qty, Rejection, Timestamp, WebhookPayload,
};
use flashsale_server::clock::ManualClock;
use flashsale_server::service::ServiceError;
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

/// What a key answered first, so a retry can be checked against it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stored {
    Hold {
        product: u64,
        qty: u32,
        hold_id: HoldId,
    },
    Order {
        hold: u64,
        order_id: OrderId,
        created: bool,
    },
}

struct Run {
    service: TestService,
    clock: ManualClock,
    ledger: Ledger,
    now: Timestamp,
    keys: HashMap<String, Stored>,
}

impl Run {
    fn ledger_apply(&mut self, command: Command) -> Result<Outcome, Rejection> {
        self.ledger.apply(self.now, command)
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
                let got = rejection_or_fail(got)?.map(|view| Outcome::Restocked(view.product));
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
                let name = k.map(|k| format!("h{k}"));
                let idem = name.clone().map(key);
                let got = self
                    .service
                    .place_hold_keyed(idem.as_ref(), ProductId(product), Qty(qty))
                    .await;
                let got = rejection_or_fail(got)?;
                // A request the core refuses on its own terms is refused before its key is
                // looked at, so it neither replays nor counts as reusing the key.
                let stored = match qty {
                    0 => None,
                    _ => name.as_ref().and_then(|n| self.keys.get(n)).cloned(),
                };
                match stored {
                    Some(Stored::Hold {
                        product: p,
                        qty: q,
                        hold_id,
                    }) if (p, q) == (product, qty) => {
                        let keyed =
                            got.map_err(|r| TestCaseError::fail(format!("retry refused: {r}")))?;
                        prop_assert!(keyed.replayed, "a retry replays: {:?}", op);
                        prop_assert_eq!(keyed.value.hold.id, hold_id);
                    }
                    Some(_) => {
                        let reused = matches!(got, Err(Rejection::IdempotencyKeyReused { .. }));
                        prop_assert!(
                            reused,
                            "a key reused with another body: {:?} -> {:?}",
                            op,
                            got
                        );
                    }
                    None => {
                        let want = self.ledger_apply(Command::PlaceHold {
                            product_id: ProductId(product),
                            qty: Qty(qty),
                            ttl_ms: TTL_MS,
                        });
                        let got = got.map(|keyed| {
                            assert!(!keyed.replayed, "a first request is no replay");
                            Outcome::HoldPlaced {
                                hold: keyed.value.hold,
                                holds_released: keyed.value.holds_released,
                            }
                        });
                        prop_assert_eq!(&got, &want, "{:?}", op);
                        if let (Some(name), Ok(Outcome::HoldPlaced { hold, .. })) = (name, want) {
                            self.keys.insert(
                                name,
                                Stored::Hold {
                                    product,
                                    qty,
                                    hold_id: hold.id,
                                },
                            );
                        }
                    }
                }
            }
            Op::Order { hold, key: k } => {
                let name = k.map(|k| format!("o{k}"));
                let idem = name.clone().map(key);
                let got = self
                    .service
                    .place_order_keyed(idem.as_ref(), HoldId(hold))
                    .await;
                let got = rejection_or_fail(got)?;
                match name.as_ref().and_then(|n| self.keys.get(n)).cloned() {
                    Some(Stored::Order {
                        hold: h,
                        order_id,
                        created,
                    }) if h == hold => {
                        let keyed =
                            got.map_err(|r| TestCaseError::fail(format!("retry refused: {r}")))?;
                        prop_assert!(keyed.replayed, "a retry replays: {:?}", op);
                        prop_assert_eq!(keyed.value.created, created);
                        // The order as it is now.
                        prop_assert_eq!(Some(&keyed.value.order), self.ledger.order(order_id));
                    }
                    Some(_) => {
                        let reused = matches!(got, Err(Rejection::IdempotencyKeyReused { .. }));
                        prop_assert!(
                            reused,
                            "a key reused with another body: {:?} -> {:?}",
                            op,
                            got
                        );
                    }
                    None => {
                        let want = self.ledger_apply(Command::PlaceOrder {
                            hold_id: HoldId(hold),
                            payment_window_ms: WINDOW_MS,
                        });
                        let got = got.map(|keyed| {
                            assert!(!keyed.replayed, "a first request is no replay");
                            Outcome::OrderPlaced {
                                order: keyed.value.order,
                                created: keyed.value.created,
                            }
                        });
                        prop_assert_eq!(&got, &want, "{:?}", op);
                        if let (Some(name), Ok(Outcome::OrderPlaced { order, created })) =
                            (name, want)
                        {
                            self.keys.insert(
                                name,
                                Stored::Order {
                                    hold,
                                    order_id: order.id,
                                    created,
                                },
                            );
                        }
                    }
                }
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
                let order_now = got.as_ref().ok().and_then(|a| a.order);
                let got = got.map(|answer| Outcome::WebhookApplied {
                    record: answer.record,
                    replayed: answer.replayed,
                });
                prop_assert_eq!(&got, &want, "{:?}", op);
                if let Some(order) = order_now {
                    prop_assert_eq!(
                        Some(&order),
                        self.ledger.order(order.id),
                        "the answer's order"
                    );
                }
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
            Op::Sweep => {
                let report = self
                    .service
                    .sweep()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = self.ledger_apply(Command::Sweep);
                let Ok(Outcome::Swept {
                    holds_released,
                    orders_cancelled,
                }) = want
                else {
                    return Err(TestCaseError::fail(format!("the ledger's sweep: {want:?}")));
                };
                prop_assert_eq!(
                    (report.holds_released, report.orders_cancelled),
                    (holds_released.len(), orders_cancelled.len())
                );
            }
        }
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

/// Runs the property on fresh databases made by `make`.
fn check<F, Fut>(make: F, cases: u32)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Db>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let config = Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
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
                keys: HashMap::new(),
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
