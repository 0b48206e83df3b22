//! The group committers: every command of an instance joins the queue of the committer its rows
//! fall to ([`committer_of`]), and one drainer task at a time per queue takes the next batch (up
//! to `batch_max` commands, any mix of kinds and products) through the one transaction script
//! ([`Service::execute_batch`]: the core's one driver, [`decide`], plans, loads in the global
//! lock order, executes and writes; the script commits once), then answers each caller after the
//! commit. With `batch_max` 1 each request runs the script alone in its own task. A batch found
//! stale is decided again in two parts; one that fails on what may be one poisoned command, one
//! command at a time; a database found away answers every request queued behind the batch at
//! once.
//!
//! An instance runs `committers` of them (one by default; docs/PERFORMANCE.md, "Two
//! committers"): while one committer's transaction waits on the database, another's batch may be
//! planned, locked and decided. A command goes to the committer of its product, so two batches of
//! an instance lock the same product only through an order or a webhook (known by its hold until
//! its rows are read); they then wait on each other's lock, in the global lock order, as two
//! instances' batches do. Each committer answers its batch only after that batch's commit.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use flashsale_core::{
    self as core, Command, HoldId, Inserted, Load, Loaded, OrderId, Outcome, ProductId, Steps,
    Timestamp, WriteSet, decide,
};
use flashsale_sync::batch::{Batches, Waiting};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{Answer, Service, ServiceError};
use crate::clock::Clock;
use crate::store::{Storage, StoreError, Transaction, TxMode};

/// A queued request's context, carried from its own task to the batch that decides it.
pub type BatchTag = Box<dyn std::any::Any + Send>;

/// A batch's transaction script, boxed so a [`BatchScope`] can wrap it.
pub type BatchRun<'a> = Pin<Box<dyn Future<Output = Vec<Answer>> + Send + 'a>>;

/// Lets a driver carry each queued request's context to the transaction that decides it, which
/// runs on the drainer's task. The server needs none; the simulator uses it so its storage can
/// tell which requests a batch's transaction served.
pub trait BatchScope: Send + Sync + std::fmt::Debug + 'static {
    /// Called on the request's own task as it joins the queue.
    fn capture(&self) -> Option<BatchTag>;
    /// Wraps a batch's transaction, given its requests' tags in arrival order.
    fn scope<'a>(&self, tags: Vec<Option<BatchTag>>, run: BatchRun<'a>) -> BatchRun<'a>;
}

/// A queued request's way back, and its driver's context.
#[derive(Debug)]
pub struct Reply {
    sender: oneshot::Sender<Answer>,
    tag: Option<BatchTag>,
}

/// What one run of a batch's script came to.
enum Decided {
    /// Committed (or nothing to commit): one answer per command.
    Answers(Vec<Answer>),
    /// Rolled back: the command at this index missed a hold an earlier command of the batch
    /// inserted ([`flashsale_core::Executed::stale`]), so the batch is decided again in two parts.
    SplitAt(usize),
}

/// Counts a committed batch: its size, its hold requests' grants and refusals by code, and the
/// expiry work its write-set did (buckets folded, hold rows retired), by path: the sweeper's
/// transactions, or a request's.
fn count_batch(commands: &[Command], answers: &[Answer], writes: &WriteSet) {
    metrics::histogram!("flashsale_batch_size").record(commands.len() as f64);
    let holds = commands
        .iter()
        .zip(answers)
        .filter(|(command, _)| matches!(command, Command::PlaceHold { .. }));
    for (_, answer) in holds {
        match answer {
            Ok(Outcome::HoldPlaced {
                replayed: false, ..
            }) => {
                metrics::counter!("flashsale_holds_granted_total").increment(1);
            }
            Err(ServiceError::Rejected(rejection)) => {
                metrics::counter!("flashsale_holds_rejected_total", "code" => rejection.code())
                    .increment(1);
            }
            Ok(_) | Err(_) => {}
        }
    }
    let sweeping = (commands.iter()).any(|c| matches!(c, Command::SweepProduct { .. }));
    let path = if sweeping { "sweeper" } else { "request" };
    let folded = writes.folded();
    metrics::counter!("flashsale_holds_expired_total", "path" => path).increment(folded.holds);
    metrics::counter!("flashsale_units_expired_total", "path" => path).increment(folded.units);
    let retired = u64::try_from(writes.holds_retired.len()).unwrap_or(u64::MAX);
    metrics::counter!("flashsale_holds_retired_total", "path" => path).increment(retired);
}

/// Whether a whole batch's failure may come from one of its commands, so deciding them one at
/// a time gives each its own answer: the database refused a value or found a row corrupt. Not
/// contention, a lost or unknown commit, or an unreachable database, which every command of the
/// batch shares.
fn poisoned(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Violated(_)
            | ServiceError::Store(StoreError::Corrupt(_) | StoreError::Database(_))
    )
}

/// The answer a request's task gets when the batch's task ended without answering it: the
/// batch may have committed.
pub(super) fn unanswered() -> Answer {
    Err(StoreError::CommitUnknown("the batch ended without an answer".into()).into())
}

/// Names the product in the current span's `product_id`, when the driver's span has the field
/// (the server's request span does). A span shows a field once per time it is recorded, so each
/// request names its product once.
pub(super) fn name_product(product_id: ProductId) {
    tracing::Span::current().record("product_id", tracing::field::display(product_id));
}

/// The queues of `config.committers` committers (at least one), holding `config.queue_max`
/// waiting commands between them.
pub(super) fn queues(config: &super::Config) -> std::sync::Arc<[Batches<Command, Reply>]> {
    let committers = config.committers.max(1);
    let queue_max = config.queue_max.div_ceil(committers);
    (0..committers)
        .map(|_| Batches::new(config.batch_max, queue_max))
        .collect()
}

/// The committer a command goes to, of `committers`: its product's, else its hold's (an order,
/// a webhook), so the commands of one product share one committer's batches and their order.
fn committer_of(command: &Command, committers: usize) -> usize {
    let key = match command {
        Command::PlaceOrder { hold_id, .. } => Some(hold_id.0),
        Command::ApplyWebhook(payload) => Some(payload.hold_id.0),
        _ => command.product().map(|product| product.0),
    };
    let committers = u64::try_from(committers).unwrap_or(1);
    let at = key.unwrap_or(0).checked_rem(committers).unwrap_or(0);
    usize::try_from(at).unwrap_or(0)
}

/// A batch taken from the queue, as its commands and their replies; the queue gauge moves down
/// by its size.
fn taken(batch: Vec<Waiting<Command, Reply>>) -> (Vec<Command>, Vec<Reply>) {
    let size = f64::from(u32::try_from(batch.len()).unwrap_or(u32::MAX));
    metrics::gauge!("flashsale_queue_waiting").decrement(size);
    batch.into_iter().map(|w| (w.command, w.reply)).unzip()
}

/// Answers every command waiting now in `batches` with `error`, the database found away: each
/// would otherwise wait out its own connection timeout behind the ones before it, where one
/// transaction per request would have waited once. The next batch tries the database again.
fn refuse_waiting(batches: &Batches<Command, Reply>, error: &ServiceError) {
    let mut left = batches.waiting();
    while left > 0 {
        let Some(batch) = batches.next_batch() else {
            return;
        };
        left = left.saturating_sub(batch.len());
        let (_, replies) = taken(batch);
        for reply in replies {
            let _ = reply.sender.send(Err(error.clone()));
        }
    }
}

impl<S: Storage + Clone, C: Clock + Clone> Service<S, C> {
    /// Decides one command: in the next transaction with whatever else arrives meanwhile, or
    /// alone in this task's own transaction when `batch_max` is 1.
    ///
    /// # Errors
    /// [`ServiceError::Overloaded`] at once when the queue is full; the command's own answer
    /// otherwise.
    pub async fn execute(&self, command: Command) -> Answer {
        // The request's lines from here on (its log line above all) name the product, once: the
        // command's own, so a refusal names it too, or else the one its outcome found.
        let named = command.product();
        if let Some(product_id) = named {
            name_product(product_id);
        }
        let answer = self.decide(command).await;
        if named.is_none()
            && let Some(product_id) = answer.as_ref().ok().and_then(Outcome::product)
        {
            name_product(product_id);
        }
        answer
    }

    async fn decide(&self, command: Command) -> Answer {
        if self.config.batch_max <= 1 {
            let mut answers = self.execute_batch(std::slice::from_ref(&command)).await;
            return answers.pop().unwrap_or_else(unanswered);
        }
        let (sender, answer) = oneshot::channel();
        let tag = self.batch_scope.as_ref().and_then(|scope| scope.capture());
        let committer = committer_of(&command, self.batches.len());
        let Some(batches) = self.batches.get(committer) else {
            return unanswered();
        };
        let waiting = Waiting {
            command,
            reply: Reply { sender, tag },
        };
        // Counted before it is queued: the drainer may take it at once.
        let queue_waiting = metrics::gauge!("flashsale_queue_waiting");
        queue_waiting.increment(1.0);
        match batches.push(waiting) {
            Err(waiting) => {
                queue_waiting.decrement(1.0);
                return Err(ServiceError::Overloaded { waiting });
            }
            Ok(true) => {
                // The drainer runs on its own task: a caller that goes away (a closed
                // connection) must not take the other callers' answers with it.
                let service = self.clone();
                tokio::spawn(async move { service.drain(committer).await });
            }
            Ok(false) => {}
        }
        answer.await.unwrap_or_else(|_| unanswered())
    }

    /// Decides the waiting commands of one committer, batch after batch, until none wait. Each
    /// batch's answers go out only after its commit, and the next batch starts at once, so the
    /// database works on one batch while the last one's callers read their answers.
    async fn drain(&self, committer: usize) {
        let Some(batches) = self.batches.get(committer) else {
            return;
        };
        while let Some(batch) = batches.next_batch() {
            let (commands, replies) = taken(batch);
            let (senders, tags): (Vec<_>, Vec<_>) =
                replies.into_iter().map(|r| (r.sender, r.tag)).unzip();
            let run: BatchRun<'_> = Box::pin(self.execute_batch(&commands));
            let answers = match &self.batch_scope {
                Some(scope) => scope.scope(tags, run).await,
                None => run.await,
            };
            let away = answers.iter().find_map(|answer| match answer {
                Err(error @ ServiceError::Store(StoreError::Unavailable(_))) => Some(error.clone()),
                _ => None,
            });
            for (sender, answer) in senders.into_iter().zip(answers) {
                let _ = sender.send(answer);
            }
            if let Some(error) = away {
                refuse_waiting(batches, &error);
            }
        }
    }

    /// The one transaction script, for a batch of any commands: [`decide`] (plan their row
    /// loads in the global lock order, load, execute, write), commit. Returns one answer per command, in
    /// order. A batch the core finds stale is decided again in two parts; one whose transaction
    /// fails on what may be one poisoned command is decided again one command at a time.
    pub fn execute_batch<'a>(
        &'a self,
        commands: &'a [Command],
    ) -> Pin<Box<dyn Future<Output = Vec<Answer>> + Send + 'a>> {
        let span = tracing::info_span!("batch", commands = commands.len());
        Box::pin(
            async move {
                match self.transact(commands).await {
                    Ok(Decided::Answers(answers)) => answers,
                    Ok(Decided::SplitAt(at)) => {
                        let (before, after) = commands.split_at(at);
                        let mut answers = self.execute_batch(before).await;
                        answers.extend(self.execute_batch(after).await);
                        answers
                    }
                    Err(error) if commands.len() > 1 && poisoned(&error) => {
                        tracing::warn!(%error, "batch failed; deciding its commands one by one");
                        let mut answers = Vec::with_capacity(commands.len());
                        for command in commands {
                            let alone = self.execute_batch(std::slice::from_ref(command));
                            answers.extend(alone.await);
                        }
                        answers
                    }
                    Err(error) => commands.iter().map(|_| Err(error.clone())).collect(),
                }
            }
            .instrument(span),
        )
    }

    /// Runs the batch's script until it commits, rolls back stale, or fails for good.
    async fn transact(&self, commands: &[Command]) -> Result<Decided, ServiceError> {
        self.retrying("batch", || self.transact_once(commands))
            .await
    }

    /// One attempt: a transaction driven through the core's [`decide`], committed unless the
    /// batch is stale.
    async fn transact_once(&self, commands: &[Command]) -> Result<Decided, ServiceError> {
        let mut tx = self.store.begin(TxMode::Write).await?;
        let mut steps = TxSteps {
            tx: &mut tx,
            clock: &self.clock,
        };
        let (answers, writes) = match decide(&mut steps, commands).await? {
            // Dropped without a commit: rolled back.
            core::Decided::SplitAt(at) => return Ok(Decided::SplitAt(at)),
            core::Decided::Answers { answers, writes } => (answers, writes),
        };
        tx.commit().await?;
        // After the commit and before any caller is answered: each reads its own writes.
        for counters in &writes.products {
            self.cache.invalidate(counters.id);
        }
        let answers: Vec<Answer> = answers
            .into_iter()
            .map(|answer| answer.map_err(ServiceError::from))
            .collect();
        count_batch(commands, &answers, &writes);
        Ok(Decided::Answers(answers))
    }
}

/// A database transaction's steps as the core's driver takes them: each load in one read with
/// the locks it names, the time from the service's clock.
struct TxSteps<'t, T, C> {
    tx: &'t mut T,
    clock: &'t C,
}

impl<T: Transaction, C: Clock> Steps for TxSteps<'_, T, C> {
    type Error = StoreError;

    fn now(&mut self) -> Timestamp {
        self.clock.now()
    }

    async fn load(
        &mut self,
        load: &Load,
        now: Option<Timestamp>,
    ) -> Result<Loaded<'static>, StoreError> {
        let tx = &mut *self.tx;
        Ok(match load {
            Load::FirstProduct => {
                let first = tx.first_product().await?;
                Loaded::Products(first.into_iter().map(Cow::Owned).collect())
            }
            Load::RequestKeys(keys) => Loaded::RequestKeys(tx.lock_request_keys(keys).await?),
            Load::FindHolds(ids) => Loaded::Holds(tx.holds(ids, false).await?),
            Load::Products(ids) => {
                let products = tx.lock_products(ids).await?;
                Loaded::Products(products.into_iter().map(Cow::Owned).collect())
            }
            Load::Holds(ids) => {
                let ids: Vec<HoldId> = ids.iter().map(|&(_, id)| id).collect();
                Loaded::Holds(tx.holds(&ids, true).await?)
            }
            Load::Orders(ids) => {
                let ids: Vec<OrderId> = ids.iter().map(|&(_, id)| id).collect();
                Loaded::Orders(tx.orders(&ids, true).await?)
            }
            Load::DueBuckets(ids) => {
                let now = now.unwrap_or_else(|| self.clock.now());
                Loaded::Buckets(tx.due_buckets(ids, now).await?)
            }
            Load::Webhooks(keys) => {
                let records = tx.lock_webhooks(keys).await?;
                Loaded::Webhooks(records.into_iter().map(Cow::Owned).collect())
            }
        })
    }

    async fn write(&mut self, writes: &WriteSet) -> Result<Inserted, StoreError> {
        self.tx.write(writes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_core::{IdempotencyKey, PaymentStatus, Qty, WebhookPayload};

    fn hold(product: u64) -> Command {
        Command::PlaceHold {
            product_id: ProductId(product),
            qty: Qty(1),
            ttl_ms: 1_000,
            key: None,
        }
    }

    #[test]
    fn a_product_has_one_committer_and_an_order_or_webhook_goes_to_its_holds() {
        assert_eq!(committer_of(&hold(7), 1), 0, "one committer takes all");
        assert_eq!(committer_of(&hold(7), 2), committer_of(&hold(9), 2));
        assert_ne!(committer_of(&hold(7), 2), committer_of(&hold(8), 2));
        let restock = Command::Restock {
            product_id: ProductId(7),
            qty: Qty(3),
        };
        assert_eq!(committer_of(&restock, 3), committer_of(&hold(7), 3));
        let order = Command::PlaceOrder {
            hold_id: HoldId(5),
            payment_window_ms: 1_000,
            key: None,
        };
        let webhook = Command::ApplyWebhook(WebhookPayload {
            key: IdempotencyKey::parse("k-0123456789abcdef").expect("a valid key"),
            hold_id: HoldId(5),
            status: PaymentStatus::Paid,
        });
        assert_eq!(committer_of(&order, 3), 2);
        assert_eq!(committer_of(&webhook, 3), 2);
        assert_eq!(
            committer_of(&Command::SeedDemo, 3),
            0,
            "no rows named: the first"
        );
        for committers in 1..=5 {
            for product in 0..20 {
                assert!(committer_of(&hold(product), committers) < committers);
            }
        }
    }

    #[test]
    fn the_queues_share_the_bound_and_there_is_always_one() {
        let config = |committers, queue_max| super::super::Config {
            committers,
            queue_max,
            ..super::super::Config::default()
        };
        assert_eq!(queues(&config(0, 10)).len(), 1);
        assert_eq!(queues(&config(3, 10)).len(), 3);
        // 3 waiting commands between 2 committers: 2 each, at most 4 in all.
        let two = queues(&config(2, 3));
        let waiting = || Waiting {
            command: hold(1),
            reply: Reply {
                sender: oneshot::channel().0,
                tag: None,
            },
        };
        for batches in two.iter() {
            assert!(batches.push(waiting()).is_ok());
            assert!(batches.push(waiting()).is_ok());
            assert_eq!(batches.push(waiting()).err(), Some(2), "full at 2");
        }
    }
}
