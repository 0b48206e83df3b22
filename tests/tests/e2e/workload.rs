//! Buyers for the fault tests: each walks hold -> order -> signed webhook against one or more
//! servers, checks that every answer is one the API documents, and records what the servers
//! acknowledged (2xx), so the test can find it all again in the database afterwards.
//!
//! A buyer holds only an [`Endpoint`] (an address and a client), never the [`TestApp`]: the test
//! can kill the server under it, and the buyer sees what a real client sees.

#![allow(
    clippy::arithmetic_side_effects,
    reason = "test bookkeeping (answer counts, buyer numbers, round-robin indexes), never units or money"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale_service::store::Dump;
use serde_json::{Value, json};

use crate::harness::{Reply, TestApp, now_unix_s, send_request, sign};

/// Where one server answers, and a client for it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    client: reqwest::Client,
}

/// Longest a single request may take before the buyer calls it a hang: above the server's
/// request deadline (5 s by default, `--request-deadline`), far below the client's timeout.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(8);

impl Endpoint {
    /// The endpoint of `app` as it runs now (a restart may change its port).
    pub fn of(app: &TestApp) -> Endpoint {
        Endpoint {
            base: app.address.clone(),
            client: app.client.clone(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, String> {
        send_request(request).await
    }

    /// Waits until `/readyz` answers 200, failing the test after the harness's poll timeout.
    pub async fn await_ready(&self, app: &TestApp, what: &str) {
        app.poll_until(what, async || {
            self.get("/readyz").await.is_ok_and(|r| r.status == 200)
        })
        .await;
    }

    /// `POST path` with `body`, under `key` when set.
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Result<Reply, String> {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        self.send(request).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Reply, String> {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// A webhook signed now.
    pub async fn webhook(&self, key: &str, hold_id: u64, status: &str) -> Result<Reply, String> {
        let body = json!({"idempotency_key": key, "hold_id": hold_id, "status": status});
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let request = self
            .client
            .post(format!("{}/api/payments/webhook", self.base))
            .header("content-type", "application/json")
            .header("x-flashsale-signature", sign(&body, now_unix_s()))
            .body(body);
        self.send(request).await
    }
}

/// Whether `reply` is an answer the API documents for a request that may meet contention, a
/// sold-out product, an expired hold or a database that went away. A 500, a non-problem error
/// body or an undocumented code is not.
pub fn documented(reply: &Reply) -> Result<(), String> {
    if (200..300).contains(&reply.status) {
        return Ok(());
    }
    let code = reply.body["code"].as_str().unwrap_or_default();
    let expected = match reply.status {
        409 => matches!(
            code,
            "insufficient_stock" | "hold_expired" | "hold_released" | "idempotency_key_in_flight"
        ),
        503 => matches!(
            code,
            "busy" | "database_unavailable" | "commit_unknown" | "deadline_exceeded"
        ),
        _ => false,
    };
    if expected && reply.content_type == "application/problem+json" {
        Ok(())
    } else {
        Err(format!(
            "undocumented answer {}: {}",
            reply.status, reply.body
        ))
    }
}

/// What the servers acknowledged with a 2xx.
#[derive(Clone, Debug, Default)]
pub struct Acks {
    /// Granted holds: `(hold id, its Idempotency-Key)`.
    pub holds: Vec<(u64, String)>,
    /// Orders answered: `(order id, status answered, its Idempotency-Key or "")`.
    pub orders: Vec<(u64, String, String)>,
    /// Webhooks answered: `(key, hold id, status, result answered)`.
    pub webhooks: Vec<(String, u64, String, String)>,
}

impl Acks {
    /// Checks that everything acknowledged is in `dump`, in the acknowledged state or a legal
    /// later one.
    pub fn check(&self, dump: &Dump) -> Result<(), String> {
        for (hold_id, key) in &self.holds {
            if !dump.holds.iter().any(|h| h.id.0 == *hold_id) {
                return Err(format!("acknowledged hold {hold_id} (key {key}) is lost"));
            }
        }
        for (order_id, status, key) in &self.orders {
            let Some(order) = dump.orders.iter().find(|o| o.id.0 == *order_id) else {
                return Err(format!("acknowledged order {order_id} (key {key}) is lost"));
            };
            let now = order.status.as_str();
            // Pre-payment may become anything; a final status never changes.
            if status != "pre_payment" && status != now {
                return Err(format!(
                    "order {order_id} was acknowledged {status} and is now {now}"
                ));
            }
        }
        for (key, hold_id, status, result) in &self.webhooks {
            let Some(record) = dump.webhooks.iter().find(|w| w.key.as_str() == key) else {
                return Err(format!("acknowledged webhook {key} is lost"));
            };
            if record.hold_id.0 != *hold_id
                || record.status.as_str() != status
                || record.result.as_str() != result
            {
                return Err(format!(
                    "webhook {key} was acknowledged {result} for hold {hold_id} {status}, and \
                     is stored as {record:?}"
                ));
            }
        }
        Ok(())
    }

    /// Everything acknowledged, summed over buyers.
    pub fn merge(&mut self, other: Acks) {
        self.holds.extend(other.holds);
        self.orders.extend(other.orders);
        self.webhooks.extend(other.webhooks);
    }
}

/// What one buyer saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// What was acknowledged.
    pub acks: Acks,
    /// Answers by status.
    pub statuses: std::collections::BTreeMap<u16, u32>,
    /// Answers the API does not document, and answers slower than [`ANSWER_WITHIN`].
    pub wrong: Vec<String>,
    /// Requests that got no answer (the server was down, or dropped the connection).
    pub unanswered: u32,
    /// The slowest answer.
    pub slowest: Duration,
}

impl Seen {
    /// Counts `answer` (from a request that took `took`), returning the reply if there was one.
    fn note(&mut self, what: &str, answer: Result<Reply, String>, took: Duration) -> Option<Reply> {
        self.slowest = self.slowest.max(took);
        if took > ANSWER_WITHIN {
            self.wrong
                .push(format!("{what} took {took:?}, above {ANSWER_WITHIN:?}"));
        }
        match answer {
            Ok(reply) => {
                *self.statuses.entry(reply.status).or_default() += 1;
                if let Err(wrong) = documented(&reply) {
                    let at = chrono::Utc::now().format("%H:%M:%S%.3f");
                    self.wrong.push(format!("{at} {what}: {wrong}"));
                }
                Some(reply)
            }
            Err(_) => {
                self.unanswered += 1;
                None
            }
        }
    }

    /// Sums `other` into this.
    pub fn merge(&mut self, other: Seen) {
        self.acks.merge(other.acks);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.wrong.extend(other.wrong);
        self.unanswered += other.unanswered;
        self.slowest = self.slowest.max(other.slowest);
    }
}

/// One buyer's walk, number `n` (it names the buyer's keys): a keyed hold of one unit of
/// `product` on `servers[n % len]`, a keyed order from it on the next server, and a signed
/// webhook (paid, or failed for every third buyer) on the one after, delivered twice, to two
/// servers at once. Every answer goes into `seen`.
pub async fn buy(servers: &[Endpoint], product: u64, n: u64, seen: &Arc<Mutex<Seen>>) {
    let pick = |i: u64| {
        let len = u64::try_from(servers.len()).unwrap_or(1).max(1);
        let index = usize::try_from((n.wrapping_add(i)) % len).unwrap_or(0);
        servers.get(index).cloned()
    };
    let (Some(first), Some(second), Some(third)) = (pick(0), pick(1), pick(2)) else {
        return;
    };
    let hold_key = format!("hold-{n}");
    let started = Instant::now();
    let answer = first
        .post(
            "/api/holds",
            Some(&hold_key),
            &json!({"product_id": product, "qty": 1}),
        )
        .await;
    let what = format!("hold {hold_key} on {}", first.base);
    let Some(hold) = record(seen, &what, answer, started) else {
        // The server is away: a real client would not spin on it either.
        tokio::time::sleep(Duration::from_millis(20)).await;
        return;
    };
    let Some(hold_id) = hold.body["hold_id"].as_u64().filter(|_| hold.status == 201) else {
        return;
    };
    lock(seen).acks.holds.push((hold_id, hold_key));
    let order_key = format!("order-{n}");
    let started = Instant::now();
    let answer = second
        .post(
            "/api/orders",
            Some(&order_key),
            &json!({"hold_id": hold_id}),
        )
        .await;
    let what = format!(
        "order {order_key} on {} (hold {hold_id} on {})",
        second.base, first.base
    );
    if let Some(order) = record(seen, &what, answer, started)
        && (200..300).contains(&order.status)
        && let (Some(order_id), Some(status)) = (
            order.body["order_id"].as_u64(),
            order.body["status"].as_str(),
        )
    {
        lock(seen)
            .acks
            .orders
            .push((order_id, status.to_owned(), order_key));
    }
    let status = if n.is_multiple_of(3) {
        "failed"
    } else {
        "paid"
    };
    let webhook_key = format!("webhook-{n}");
    let started = Instant::now();
    let (once, twice) = tokio::join!(
        third.webhook(&webhook_key, hold_id, status),
        first.webhook(&webhook_key, hold_id, status)
    );
    for answer in [once, twice] {
        if let Some(reply) = record(seen, &format!("webhook {webhook_key}"), answer, started)
            && (200..300).contains(&reply.status)
            && let Some(result) = reply.body["result"].as_str()
        {
            lock(seen).acks.webhooks.push((
                webhook_key.clone(),
                hold_id,
                status.to_owned(),
                result.to_owned(),
            ));
        }
    }
}

fn record(
    seen: &Arc<Mutex<Seen>>,
    what: &str,
    answer: Result<Reply, String>,
    started: Instant,
) -> Option<Reply> {
    lock(seen).note(what, answer, started.elapsed())
}

fn lock(seen: &Arc<Mutex<Seen>>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `buyers` concurrent buyers against `servers` until `stop` resolves, buyer numbers
/// starting at `first_n`, products chosen round-robin from `products`; returns what they saw
/// and the next free buyer number. Buyers in flight when `stop` resolves are abandoned, as a
/// client whose server died would.
pub async fn buy_until(
    servers: &[Endpoint],
    products: &[u64],
    buyers: u64,
    first_n: u64,
    stop: impl Future<Output = ()>,
) -> (Seen, u64) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first_n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..buyers {
        let servers = servers.to_vec();
        let products = products.to_vec();
        let seen = seen.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let len = u64::try_from(products.len()).unwrap_or(1).max(1);
                let index = usize::try_from(n % len).unwrap_or(0);
                let Some(product) = products.get(index).copied() else {
                    return;
                };
                buy(&servers, product, n, &seen).await;
            }
        });
    }
    stop.await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let next_n = next.load(std::sync::atomic::Ordering::Relaxed);
    let seen = std::mem::take(&mut *lock(&seen));
    (seen, next_n)
}
