//! The sweeper's pass: for each product with something due, one transaction through the same
//! script as every command that folds its due expiry buckets, retires a chunk of its holds
//! expired for good and cancels a chunk of its orders past their payment window; then purges
//! request-key and webhook records past their retention. Every transaction's work is bounded by
//! the chunk (`Config::sweep_chunk`), so the sweeper never holds a product's lock longer than one
//! chunk takes, and a backlog (a mass expiry's hundreds of thousands of hold rows) drains one
//! chunk per product per pass. Correctness never depends on it running: every decision checks
//! the deadlines it meets itself, and a grant folds what is due on its own.

use std::collections::BTreeSet;

use flashsale_core::{Command, Folded, Outcome, ProductId, Timestamp};
use tracing::Instrument;

use super::committer::unanswered;
use super::{
    PURGE_BATCH, SWEEP_PRODUCTS_PER_BATCH, Service, ServiceError, SweepReport, in_transaction,
    mismatched,
};
use crate::clock::Clock;
use crate::store::{RecordKind, Storage, Transaction, TxMode};

impl<S: Storage + Clone, C: Clock + Clone> Service<S, C> {
    /// One sweep pass: for each product with a bucket due, holds to retire or orders overdue,
    /// one transaction of at most a chunk of each; then the record purge. A product with more
    /// than a chunk left gets its next one in the next pass.
    ///
    /// # Errors
    /// `Busy`; storage.
    pub async fn sweep(&self) -> Result<SweepReport, ServiceError> {
        let mut report = SweepReport::default();
        let mut swept = BTreeSet::new();
        loop {
            let due = in_transaction!(self, TxMode::Read, "sweep_scan", |tx| async {
                Ok::<_, ServiceError>(
                    tx.products_due(self.clock.now(), SWEEP_PRODUCTS_PER_BATCH)
                        .await?,
                )
            })?;
            let batch_full = due.len() >= SWEEP_PRODUCTS_PER_BATCH as usize;
            let fresh: Vec<ProductId> = due.into_iter().filter(|id| swept.insert(*id)).collect();
            if fresh.is_empty() {
                break;
            }
            for product_id in fresh {
                let (folded, retired, cancelled) = self.sweep_product(product_id).await?;
                report.products_swept = report.products_swept.saturating_add(1);
                report.folded.holds = report.folded.holds.saturating_add(folded.holds);
                report.folded.units = report.folded.units.saturating_add(folded.units);
                report.holds_retired = report.holds_retired.saturating_add(retired);
                report.orders_cancelled = report.orders_cancelled.saturating_add(cancelled);
            }
            if !batch_full {
                break;
            }
        }
        report.records_purged = self.purge_records().await?;
        let to_retire = in_transaction!(self, TxMode::Read, "sweep_gauge", |tx| async {
            Ok::<_, ServiceError>(tx.holds_to_retire().await?)
        })?;
        metrics::gauge!("flashsale_holds_expired_unretired").set(to_retire as f64);
        metrics::counter!("flashsale_sweep_orders_cancelled_total")
            .increment(report.orders_cancelled as u64);
        metrics::counter!("flashsale_sweep_records_purged_total").increment(report.records_purged);
        Ok(report)
    }

    /// Sweep passes until one finds no product with anything due: every due bucket folded,
    /// every hold expired for good retired, every overdue order cancelled (`flashsale sweep`).
    ///
    /// # Errors
    /// As [`Service::sweep`].
    pub async fn sweep_all(&self) -> Result<SweepReport, ServiceError> {
        let mut total = SweepReport::default();
        loop {
            let pass = self.sweep().await?;
            total.folded.holds = total.folded.holds.saturating_add(pass.folded.holds);
            total.folded.units = total.folded.units.saturating_add(pass.folded.units);
            total.holds_retired = total.holds_retired.saturating_add(pass.holds_retired);
            total.orders_cancelled = total.orders_cancelled.saturating_add(pass.orders_cancelled);
            total.records_purged = total.records_purged.saturating_add(pass.records_purged);
            total.products_swept = total.products_swept.saturating_add(pass.products_swept);
            if pass.products_swept == 0 {
                return Ok(total);
            }
        }
    }

    /// Deletes request-key and webhook records older than their retention, in transactions of
    /// at most [`PURGE_BATCH`], oldest cut-off by this instance's clock.
    async fn purge_records(&self) -> Result<u64, ServiceError> {
        let now = self.clock.now().as_ms();
        let mut purged: u64 = 0;
        for (kind, retention_ms) in [
            (
                RecordKind::RequestKeys,
                self.config.request_key_retention_ms,
            ),
            (RecordKind::Webhooks, self.config.webhook_retention_ms),
        ] {
            let before = Timestamp(now.saturating_sub(retention_ms));
            if before == Timestamp(0) {
                continue;
            }
            loop {
                let deleted = in_transaction!(self, TxMode::Write, "purge_records", |tx| async {
                    Ok::<_, ServiceError>(tx.purge_records(kind, before, PURGE_BATCH).await?)
                })?;
                purged = purged.saturating_add(deleted);
                if deleted < u64::from(PURGE_BATCH) {
                    break;
                }
            }
        }
        Ok(purged)
    }

    /// Sweeps one product in a transaction of its own, through the same script as every command:
    /// the holds and orders it names are the first chunk of each, read without locks; the
    /// transaction folds the product's due buckets first, then retires those holds expired for
    /// good and cancels those orders still overdue.
    async fn sweep_product(
        &self,
        product_id: ProductId,
    ) -> Result<(Folded, usize, usize), ServiceError> {
        let chunk = self.config.sweep_chunk;
        let candidates = in_transaction!(self, TxMode::Read, "sweep_candidates", |tx| async {
            let now = self.clock.now();
            Ok::<_, ServiceError>(tx.sweep_candidates(product_id, now, chunk).await?)
        })?;
        let command = Command::SweepProduct {
            product_id,
            holds: candidates.holds,
            orders: candidates.orders,
        };
        let swept = self
            .execute_batch(std::slice::from_ref(&command))
            .instrument(tracing::info_span!("sweep", %product_id))
            .await
            .pop()
            .unwrap_or_else(unanswered)?;
        let Outcome::Swept {
            folded,
            holds_retired,
            orders_cancelled,
        } = swept
        else {
            return Err(mismatched(&swept));
        };
        let (retired, cancelled) = (holds_retired.len(), orders_cancelled.len());
        if !folded.is_empty() || retired > 0 || cancelled > 0 {
            tracing::info!(
                %product_id,
                holds_expired = folded.holds,
                units_expired = folded.units,
                holds_retired = retired,
                orders_cancelled = cancelled,
                "swept"
            );
        }
        Ok((folded, retired, cancelled))
    }
}
