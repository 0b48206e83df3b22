//! The checks at the end of a run: the liveness phase (faults stop, clocks heal, time passes
//! every deadline and everything must settle), then the commit-order replay of every answer and
//! read, and a record for every webhook key answered.

use std::time::Duration;

use flashsale_check::failure::{Check, Failure};
use flashsale_check::recording::{OP, OpContext};
use flashsale_check::refine;
use flashsale_check::words;
use flashsale_core::rows::hold::HOLD_DEADLINE_TICK_MS;
use flashsale_core::{Command, HoldState, IdempotencyKey, OrderStatus, Timestamp};

use super::{World, lock};
use crate::clock::true_now;
use crate::plan::{FaultProfile, Plan};

impl World {
    /// Faults stop, clocks heal, time passes every deadline: everything must settle.
    pub(super) async fn liveness(&self, plan: &Plan) {
        self.store.set_faults(FaultProfile::CALM);
        for instance in lock(&self.instances).iter() {
            instance.clock.heal();
        }
        let pending = std::mem::take(&mut *lock(&self.undelivered));
        for (payload, product) in pending {
            self.deliver(payload, product).await;
        }
        // A deadline set by a clock that ran ahead lies that far beyond true time; wait for the
        // latest one, but never longer than the largest skew plus a TTL or window allows (and a
        // hold's deadline rounded up to its tick, docs/ARCHITECTURE.md "deadline").
        let deadline_bound = true_now()
            .saturating_add_ms(plan.hold_ttl_ms.max(plan.payment_window_ms))
            .saturating_add_ms(HOLD_DEADLINE_TICK_MS)
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
        // Passes until nothing is left: a sweep transaction retires a chunk per product.
        let op = OpContext::new(self.next_op(), Command::Sweep, None);
        if let Err(error) = OP.scope(op, service.sweep_all()).await {
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
    pub(super) fn latest_deadline(&self) -> Timestamp {
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
    pub(super) fn skew_max_ms(&self) -> u64 {
        *lock(&self.skew_max_ms)
    }
}
