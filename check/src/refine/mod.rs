//! Refinement: the simulated storage's final rows must equal what the core's in-memory
//! [`Ledger`] produces when it replays the committed operations in commit order, each at the time
//! its server's clock gave inside the transaction; and every answer a client saw must be the one
//! the ledger gives at that point of the order. If the row locks serialise the transactions as
//! they should, commit order is a legal sequential order and the two agree; a transaction that
//! decided on rows another one changed underneath it shows up here as a difference.
//!
//! The log it replays is recorded as [`crate::recording`] describes; the answers and reads it
//! checks are in [`crate::history`]'s words; `ids` translates the storage's ids to the
//! ledger's. This module is the check itself.

mod ids;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use flashsale_core::{Command, HoldId, Ledger, OrderId, ProductId, WebhookRecord};

use self::ids::{Ids, translate_hold};
use crate::failure::{Check, Failure};
use crate::history::{Answer, Read};
use crate::recording::Entry;
use crate::words;

/// What `check` checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Answers to commands, each at its request's last log entry.
    pub answers: usize,
    /// Reads, each against the states of its positions.
    pub reads: usize,
}

/// Replays `log` through a fresh ledger, checks every answer in `answers` (by request number)
/// against the ledger's at its request's last entry and every read in `reads` against the
/// states of its positions, and compares the result with `stored`, the storage's final rows.
/// Returns how many answers and reads it checked.
///
/// # Errors
/// The first disagreement: a committed transaction the ledger refuses, a different number of
/// rows created, an answer the ledger would not have given at that point, a read no state of
/// its positions gives, or a final row that differs.
#[allow(
    clippy::result_large_err,
    reason = "a failure ends the run's check: it is returned once, never on a hot path"
)]
pub fn check(
    stored: &Ledger,
    log: &[Entry],
    answers: &BTreeMap<u64, Answer>,
    reads: &[Read],
) -> Result<Checked, Failure> {
    let mut last = BTreeMap::new();
    // One request attempt commits its effect at most once: the service must never run a
    // transaction again after a commit whose answer it lost. (A sweep is one request over many
    // products, a transaction each.)
    let mut committed: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, entry) in log.iter().enumerate() {
        last.insert(entry.op, i);
        let sweeping = matches!(entry.command, Command::Sweep | Command::SweepProduct { .. });
        if entry.wrote
            && !entry.replayed
            && !sweeping
            && let Some(first) = committed.insert(entry.op, i)
        {
            return Err(Failure::new(
                Check::Refinement,
                "request committed twice",
                format!(
                    "request r{} ({}) committed twice, in tx{} and tx{}: a transaction ran \
                     again after a commit that had applied",
                    entry.op,
                    words::command(&entry.command),
                    log[first].tx,
                    entry.tx
                ),
            )
            .at_request(Some(entry.op)));
        }
    }
    let mut ledger = Ledger::new();
    let mut ids = Ids::default();
    let mut checked = 0usize;
    let mut readings = Readings::new(reads);
    let mut start = 0;
    while start < log.len() {
        readings.at(start, &ledger, &ids, log)?;
        // One transaction: one entry, or a batch's entries in arrival order.
        let tx = log[start].tx;
        let end = log[start..]
            .iter()
            .position(|e| e.tx != tx)
            .map_or(log.len(), |n| start + n);
        checked = checked.saturating_add(replay_transaction(
            &mut ledger,
            &mut ids,
            log,
            start..end,
            |i| {
                answers
                    .get(&log[i].op)
                    .filter(|_| last.get(&log[i].op) == Some(&i))
            },
        )?);
        start = end;
    }
    readings.at(log.len(), &ledger, &ids, log)?;
    compare(stored, &ledger, &ids)
        .map_err(|message| Failure::new(Check::Refinement, "final rows differ", message))?;
    Ok(Checked {
        answers: checked,
        reads: readings.checked,
    })
}

/// The reads being checked while the log replays: each is tried at every position from its
/// first to its last, and passes at the first state that gives its answer.
struct Readings<'a> {
    /// By first position.
    waiting: std::iter::Peekable<std::vec::IntoIter<&'a Read>>,
    /// Reads whose first position has passed, not yet matched.
    open: Vec<&'a Read>,
    checked: usize,
}

impl<'a> Readings<'a> {
    fn new(reads: &'a [Read]) -> Self {
        let mut waiting: Vec<&Read> = reads.iter().collect();
        waiting.sort_by_key(|r| r.from);
        Readings {
            waiting: waiting.into_iter().peekable(),
            open: Vec::new(),
            checked: 0,
        }
    }

    /// Tries the open reads against the state at log position `position`.
    #[allow(
        clippy::result_large_err,
        reason = "a failure ends the run's check: it is returned once, never on a hot path"
    )]
    fn at(
        &mut self,
        position: usize,
        ledger: &Ledger,
        ids: &Ids,
        log: &[Entry],
    ) -> Result<(), Failure> {
        while let Some(read) = self.waiting.next_if(|r| r.from <= position) {
            self.open.push(read);
        }
        let mut failed = None;
        let mut checked = 0usize;
        self.open.retain(|read| {
            if ids.read(ledger, read).as_ref() == Some(&read.seen) {
                checked = checked.saturating_add(1);
                false
            } else if read.to <= position {
                if failed.is_none() {
                    failed = Some((*read, ids.read(ledger, read)));
                }
                false
            } else {
                true
            }
        });
        self.checked = self.checked.saturating_add(checked);
        match failed {
            None => Ok(()),
            Some((read, last)) => {
                let tx = |at: usize| {
                    log.get(at)
                        .map_or("the end".to_owned(), |e| format!("tx{}", e.tx))
                };
                Err(Failure::new(
                    Check::Refinement,
                    "read differs",
                    format!(
                        "read r{} ({} at {} on its instance's clock) was answered `{}`, but no \
                         state in commit order from before {} to before {} gives that; the last \
                         one gives `{}`",
                        read.op,
                        words::target(read.target),
                        words::time(read.now),
                        words::seen(&read.seen),
                        tx(read.from),
                        tx(read.to),
                        last.map_or("nothing: no such row".to_owned(), |s| words::seen(&s))
                    ),
                )
                .at_request(Some(read.op)))
            }
        }
    }
}

/// A replay that could not go on: an id the storage never committed, or an outcome no client is
/// answered with.
fn broken(message: String, entry: &Entry) -> Failure {
    Failure::new(Check::Refinement, "replay broken", message).at_request(Some(entry.op))
}

/// Replays the entries `range` of one transaction through `ledger`: each request in order at its
/// clock reading, then (if it wrote) the rows it created against the storage's, then each
/// answered request's answer. Returns how many answers it checked.
#[allow(
    clippy::result_large_err,
    reason = "a failure ends the run's check: it is returned once, never on a hot path"
)]
fn replay_transaction<'a>(
    ledger: &mut Ledger,
    ids: &mut Ids,
    log: &[Entry],
    range: std::ops::Range<usize>,
    answer_of: impl Fn(usize) -> Option<&'a Answer>,
) -> Result<usize, Failure> {
    let first = range.start;
    let wrote = log[first].wrote;
    let alone = range.len() == 1;
    let before = counts(ledger);
    let mut pending = Vec::new();
    let mut checked = 0usize;
    for i in range.clone() {
        let entry = &log[i];
        let answer = answer_of(i);
        if !wrote && answer.is_none() {
            // A rolled-back attempt nobody was answered by has nothing to replay. A replay under
            // a client's key is replayed too: the ledger keeps the keys' records, and answers
            // it from its own.
            continue;
        }
        let command = ids
            .command(&entry.command)
            .map_err(|e| broken(format!("tx{}: {e}", entry.tx), entry))?;
        let result = ledger.apply(entry.now, command.clone());
        if wrote
            && alone
            && let Err(rejection) = &result
        {
            return Err(Failure::new(
                Check::Refinement,
                "commit the replay refuses",
                format!(
                    "request r{} ({} at {}) committed writes in tx{}, but in commit order it is \
                     refused: {} {rejection}",
                    entry.op,
                    words::command(&entry.command),
                    words::time(entry.now),
                    entry.tx,
                    rejection.code()
                ),
            )
            .at_request(Some(entry.op)));
        }
        if let Some(answer) = answer {
            let replayed = Answer::of(result)
                .map_err(|e| broken(e, entry))?
                .normalised();
            pending.push((i, command, answer, replayed));
        }
    }
    if wrote {
        // The ledger allocates each kind's ids densely from 1, so what it created is the ids
        // past the counts from before.
        let after = counts(ledger);
        let new_ids = |from: usize, to: usize| (from as u64 + 1..=to as u64).collect::<Vec<u64>>();
        let products: Vec<ProductId> = new_ids(before.0, after.0)
            .into_iter()
            .map(ProductId)
            .collect();
        let holds: Vec<HoldId> = new_ids(before.1, after.1).into_iter().map(HoldId).collect();
        let orders: Vec<OrderId> = new_ids(before.2, after.2)
            .into_iter()
            .map(OrderId)
            .collect();
        let counts = (products.len(), holds.len(), orders.len());
        let entry = &log[first];
        let stored_counts = (
            entry.products_inserted.len(),
            entry.holds_inserted.len(),
            entry.orders_inserted.len(),
        );
        if counts != stored_counts {
            return Err(Failure::new(
                Check::Refinement,
                "rows inserted differ",
                format!(
                    "tx{} ({}, {} requests) inserted (products, holds, orders) \
                     {stored_counts:?}; in commit order it inserts {counts:?}",
                    entry.tx,
                    words::command(&entry.command),
                    range.len()
                ),
            )
            .at_request(Some(entry.op)));
        }
        ids.products
            .extend(entry.products_inserted.iter().copied().zip(products));
        ids.holds
            .extend(entry.holds_inserted.iter().copied().zip(holds));
        ids.orders
            .extend(entry.orders_inserted.iter().copied().zip(orders));
    }
    for (i, _command, answer, replayed) in pending {
        let entry = &log[i];
        let seen = ids
            .answer(answer)
            .map_err(|e| broken(e, entry))?
            .normalised();
        if seen != replayed {
            let in_storage_ids = ids.to_storage(&replayed);
            return Err(Failure::new(
                Check::Refinement,
                "answer differs",
                format!(
                    "request r{} ({}, decided at {} on its instance's clock in tx{}): the \
                     client was answered `{}`, but in commit order the answer is `{}`",
                    entry.op,
                    words::command(&entry.command),
                    words::time(entry.now),
                    entry.tx,
                    words::answer(&answer.clone().normalised()),
                    words::answer(&in_storage_ids)
                ),
            )
            .at_request(Some(entry.op)));
        }
        checked = checked.saturating_add(1);
    }
    Ok(checked)
}

/// Rows of each kind: products, holds, orders, webhook records.
fn counts(ledger: &Ledger) -> (usize, usize, usize, usize) {
    (
        ledger.products().count(),
        ledger.holds().count(),
        ledger.orders().count(),
        ledger.webhooks().count(),
    )
}

fn compare(stored: &Ledger, replayed: &Ledger, ids: &Ids) -> Result<(), String> {
    for product in stored.products() {
        let id = ids.product(product.id)?;
        let counters = |p: &flashsale_core::Product| {
            let (through, to_retire) = (p.expired_through, p.holds_to_retire);
            (p.stock, p.units_held, p.units_received, through, to_retire)
        };
        let want = replayed.product(id).map(counters);
        if want != Some(counters(product)) {
            return Err(format!(
                "product {}: stored {product:?}, replayed {want:?}",
                product.id
            ));
        }
    }
    for hold in stored.holds() {
        let translated = translate_hold(hold, ids)?;
        let want = replayed.hold(translated.id);
        if want != Some(&translated) {
            return Err(format!(
                "hold {}: stored {hold:?}, replayed {want:?}",
                hold.id
            ));
        }
    }
    let mut replayed_buckets = replayed.buckets();
    for bucket in stored.buckets() {
        let translated = flashsale_core::ExpiryBucket {
            product_id: ids.product(bucket.product_id)?,
            ..*bucket
        };
        if replayed_buckets.next() != Some(&translated) {
            return Err(format!("expiry bucket {bucket:?}: not the replay's"));
        }
    }
    if let Some(extra) = replayed_buckets.next() {
        return Err(format!(
            "expiry bucket {extra:?}: replayed, not stored (stored: {:?}; replayed: {:?})",
            stored.buckets().collect::<Vec<_>>(),
            replayed.buckets().collect::<Vec<_>>()
        ));
    }
    for order in stored.orders() {
        let translated = ids.order_row(order)?;
        let want = replayed.order(translated.id);
        if want != Some(&translated) {
            return Err(format!(
                "order {}: stored {order:?}, replayed {want:?}",
                order.id
            ));
        }
    }
    for record in stored.webhooks() {
        let order_id = record.order_id.map(|id| ids.order(id)).transpose()?;
        let translated = WebhookRecord {
            hold_id: ids.hold(record.hold_id),
            order_id,
            ..record.clone()
        };
        let want = replayed.webhook(&record.key);
        // The fingerprint covers the hold id as the provider sent it: compare the rest.
        let same = want.is_some_and(|w| {
            (w.hold_id, w.status, w.result, w.order_id, w.received_at)
                == (
                    translated.hold_id,
                    translated.status,
                    translated.result,
                    translated.order_id,
                    translated.received_at,
                )
        });
        if !same {
            return Err(format!(
                "webhook {}: stored {record:?}, replayed {want:?}",
                record.key
            ));
        }
    }
    for record in stored.request_keys() {
        let translated = ids.request_record(record)?;
        let want = replayed.request_key(&record.key);
        if want != Some(&translated) {
            return Err(format!(
                "Idempotency-Key {}: stored {record:?}, replayed {want:?}",
                record.key
            ));
        }
    }
    if stored.request_keys().count() != replayed.request_keys().count() {
        return Err(format!(
            "request-key records: stored {}, replayed {}",
            stored.request_keys().count(),
            replayed.request_keys().count()
        ));
    }
    if counts(stored) != counts(replayed) {
        return Err(format!(
            "row counts: stored {:?}, replayed {:?}",
            counts(stored),
            counts(replayed)
        ));
    }
    Ok(())
}
