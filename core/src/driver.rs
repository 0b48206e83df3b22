//! The one driver of a batch's transaction: plan its reads, load them in the lock order,
//! [`execute()`], write the write-set, and resolve the answers' pending ids to the ids the
//! storage assigned, as TigerBeetle's state machine runs one prefetch, one execute and one
//! commit per batch. It knows nothing of IO (as quinn-proto's state machine does not): a
//! storage's transaction lends it its steps ([`Steps`]), and it says what came of the batch
//! ([`Decided`]). The service layer drives its database transactions through it
//! (`flashsale_service`'s group committer, in the server and in the simulator), and the
//! [`crate::Ledger`] its in-memory ones; committing, rolling back and retrying are theirs.

use std::future::Future;

use crate::command::Command;
use crate::errors::{Refusal, Violation};
use crate::execute::execute;
use crate::outcome::Outcome;
use crate::plan::{Load, Loaded, Plan, Rows};
use crate::time::Timestamp;
use crate::writes::{Inserted, WriteSet};

/// The steps of one storage transaction that the driver takes, in order: loads (each kind of
/// row in one read, with the locks the load names), then one write.
pub trait Steps: Send {
    /// What a step fails with; a [`Violation`] when a storage's answer does not fit the batch
    /// (an inserted row whose id it did not return).
    type Error: From<Violation> + Send;

    /// Reads the time: once per batch, when a load first needs it, or after the last load, so
    /// a batch that waited for a lock decides at the time it got it.
    fn now(&mut self) -> Timestamp;

    /// Reads (and locks, as [`Load::locks`] says) the rows of `load`; `now` is the batch's time
    /// for a load that needs one ([`Load::needs_now`]).
    fn load(
        &mut self,
        load: &Load,
        now: Option<Timestamp>,
    ) -> impl Future<Output = Result<Loaded<'static>, Self::Error>> + Send;

    /// Writes a batch's write-set; returns the ids it assigned to the rows it inserted.
    fn write(
        &mut self,
        writes: &WriteSet,
    ) -> impl Future<Output = Result<Inserted, Self::Error>> + Send;
}

/// What came of a batch's transaction, short of its commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Decided and written, to be committed: one answer per command in stored ids, and the
    /// write-set written.
    Answers {
        /// Each command's outcome or refusal, in order.
        answers: Vec<Result<Outcome, Refusal>>,
        /// What the transaction wrote.
        writes: Box<WriteSet>,
    },
    /// To roll back: the command at this index named a hold an earlier command of the batch
    /// inserted ([`crate::Executed::stale`]). Decided again in two parts, the commands before it
    /// and the rest, every answer is the one arrival order gives.
    SplitAt(usize),
}

/// Runs `commands` through one transaction's `steps`: the plan's loads in the lock order, the
/// time, [`execute()`], the write, and the answers resolved to the ids the storage assigned.
///
/// # Errors
/// A step's error; a [`Violation`] when an answer names an inserted row whose id the storage
/// did not return (the whole batch fails, before its commit).
pub async fn decide<S: Steps>(steps: &mut S, commands: &[Command]) -> Result<Decided, S::Error> {
    let plan = Plan::new(commands);
    let mut rows = Rows::default();
    let mut now = None;
    while let Some(load) = plan.next(&rows) {
        if load.needs_now() && now.is_none() {
            now = Some(steps.now());
        }
        let loaded = steps.load(&load, now).await?;
        rows.put(load, loaded);
    }
    let now = match now {
        Some(now) => now,
        None => steps.now(),
    };
    let executed = execute(&rows, now, commands);
    let inserted = steps.write(&executed.writes).await?;
    if let Some(at) = executed.stale(&inserted) {
        return Ok(Decided::SplitAt(at));
    }
    let resolve = |answer: Result<Outcome, Refusal>| match answer {
        Ok(outcome) => Ok(Ok(outcome.resolve(&inserted)?)),
        Err(refusal) => Ok(Err(refusal)),
    };
    let answers = executed.answers.into_iter().map(resolve);
    let answers = answers.collect::<Result<Vec<_>, Violation>>()?;
    Ok(Decided::Answers {
        answers,
        writes: Box::new(executed.writes),
    })
}
