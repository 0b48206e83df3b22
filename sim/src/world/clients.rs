//! The client actors: buyers following their journeys (holds, with and without an
//! `Idempotency-Key` and submitted twice, crowds, orders, reads around exact deadlines), the
//! crowds of a mass expiry, and the admin restocking.

use std::sync::Arc;
use std::time::Duration;

use flashsale_check::history::{Read, ReadAnswer, Request, Target};
use flashsale_core::{Command, Hold, IdempotencyKey, Order, ProductId, Qty, Rejection, Timestamp};
use flashsale_service::clock::Clock;
use flashsale_service::{HoldPlaced, Keyed, ServiceError};
use madsim::task::JoinHandle;

use super::requests::CallError;
use super::{Lane, World, lock};
use crate::plan::{Journey, Storm};
use crate::store::sim_us;

impl World {
    /// One client: its journeys in order. Returns the provider deliveries it set off.
    pub(super) async fn client(
        self: Arc<Self>,
        client: usize,
        journeys: Vec<Journey>,
    ) -> Vec<JoinHandle<()>> {
        let mut deliveries = Vec::new();
        for journey in journeys {
            madsim::time::sleep(Duration::from_millis(journey.start_ms)).await;
            deliveries.extend(self.clone().journey(client, journey).await);
        }
        deliveries
    }

    /// One journey. Returns the tasks it set off: the provider's deliveries, and the reads
    /// around the hold's and the order's deadlines.
    pub(super) async fn journey(
        self: Arc<Self>,
        client: usize,
        journey: Journey,
    ) -> Vec<JoinHandle<()>> {
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
    pub(super) async fn read(&self, client: usize, target: Target) -> Option<Timestamp> {
        self.read_on(self.any_instance(), client, target).await
    }

    /// One read by `client` from `instance`, kept for the replay to check with the log's
    /// positions it may have seen. Returns the clock reading it decided at.
    pub(super) async fn read_on(
        &self,
        instance: usize,
        client: usize,
        target: Target,
    ) -> Option<Timestamp> {
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
            move |s| async move { ReadAnswer::read(&s, target).await },
        );
        let (op, answer) = call.await;
        let to = self.store.log_len();
        let read = Read::of(op, target, from..to, answer.ok()?)?;
        let now = read.now;
        lock(&self.client_reads).push(read);
        Some(now)
    }

    /// Waits until `instance`'s clock reads `at` (or later, if it steps past it).
    pub(super) async fn sleep_until_clock(&self, instance: usize, at: Timestamp) {
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
    pub(super) fn first_to_reach(&self, at: Timestamp) -> Option<usize> {
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
    pub(super) async fn read_at_deadline(
        self: Arc<Self>,
        client: usize,
        hold: flashsale_core::Hold,
    ) {
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
    pub(super) async fn read_at_payment_deadline(self: Arc<Self>, client: usize, order: Order) {
        let instance = self.any_instance();
        for delta in [0_i64, 1] {
            let at = Timestamp(order.payment_due_at.as_ms().saturating_add_signed(delta));
            self.sleep_until_clock(instance, at).await;
            self.read_on(instance, client, Target::Order(order.id))
                .await;
        }
    }

    /// A fresh client idempotency key.
    pub(super) fn request_key(&self, what: &str) -> IdempotencyKey {
        let mut next = lock(&self.next_key);
        *next += 1;
        IdempotencyKey::parse(&format!("{what}-{}", *next)).unwrap_or_else(|| unreachable!())
    }

    /// Counts a keyed request answered from its key's record. What it was answered is checked
    /// by the replay, whose ledger keeps the keys' records too.
    pub(super) fn keyed_answer(&self, replayed: bool) {
        if replayed {
            self.count(|s| s.keyed_replays += 1);
        }
    }

    /// Asks for a hold. With a key the client retries under it after errors, so a hold whose
    /// answer was lost comes back instead of a second one; without, it gives up.
    pub(super) async fn hold(
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
    /// abandoned. Returns the hold it got.
    pub(super) async fn crowd_buyer(
        &self,
        client: usize,
        instance: usize,
        product_id: ProductId,
        qty: Qty,
    ) -> Option<Hold> {
        let lane = (instance, Lane::Client(client));
        match self.place_hold(lane, None, product_id, qty).await {
            Ok(placed) => {
                self.count(|s| s.holds_granted += 1);
                return Some(placed.value.hold);
            }
            Err(CallError::Service(ServiceError::Rejected(Rejection::InsufficientStock {
                ..
            }))) => self.count(|s| s.holds_rejected += 1),
            Err(_) => {}
        }
        None
    }

    /// A mass expiry ([`Storm`]): its buyers at once, spread over the instances, each holding
    /// one unit and abandoning it; then, on each instance as its clock passes their last
    /// deadline, a read of the product and a grant on it (while the holds are due, before or
    /// after a sweeper folded them); and after the sweepers' next pass, two reads on each
    /// instance, the second answered from its cache if nothing wrote the product since.
    pub(super) async fn storm(self: Arc<Self>, client: usize, storm: Storm) {
        madsim::time::sleep(Duration::from_millis(storm.at_ms)).await;
        let product_id = self.product_id(storm.product);
        let servers = lock(&self.instances).len();
        let buyers: Vec<_> = (0..storm.holds as usize)
            .map(|n| {
                let world = self.clone();
                madsim::task::spawn(async move {
                    world
                        .crowd_buyer(client, n % servers, product_id, Qty(1))
                        .await
                })
            })
            .collect();
        let mut deadline = None;
        for buyer in buyers {
            if let Ok(Some(hold)) = buyer.await {
                deadline = deadline.max(Some(hold.expires_at));
            }
        }
        let Some(deadline) = deadline else {
            return;
        };
        let rounds: Vec<_> = (0..servers)
            .map(|instance| {
                let world = self.clone();
                madsim::task::spawn(async move {
                    world.sleep_until_clock(instance, deadline).await;
                    world
                        .read_on(instance, client, Target::Product(product_id))
                        .await;
                    world
                        .crowd_buyer(client, instance, product_id, Qty(1))
                        .await;
                })
            })
            .collect();
        for round in rounds {
            let _ = round.await;
        }
        // The sweepers pass every second: after one, read twice on each instance.
        madsim::time::sleep(Duration::from_millis(1_500)).await;
        for instance in 0..servers {
            self.read_on(instance, client, Target::Product(product_id))
                .await;
            let views = self.store.product_views();
            self.read_on(instance, client, Target::Product(product_id))
                .await;
            let cached = self.store.product_views() == views;
            if cached && self.store.swept_last(product_id) {
                self.count(|s| s.reads_cached_after_sweep += 1);
            }
        }
    }

    /// One hold request to one instance.
    pub(super) async fn place_hold(
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
    pub(super) async fn order(
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
    pub(super) async fn restock(&self, product: usize, qty: Qty) {
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
}
