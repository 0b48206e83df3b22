//! The sweeper's pass: releases expired holds and cancels orders past their payment window, one
//! product per transaction through the same script as every command, then purges request-key and
//! webhook records past their retention. Correctness never depends on it running: every decision
//! checks the deadlines it meets itself.

use std::ops::ControlFlow;

use flashsale_core::{Command, Outcome, ProductId, Timestamp};
use tracing::Instrument;

use super::committer::unanswered;
use super::{
    PURGE_BATCH, SWEEP_PRODUCTS_PER_BATCH, Service, ServiceError, SweepReport, backoff,
    in_transaction, mismatched,
};
use crate::clock::Clock;
use crate::store::{RecordKind, Storage, Transaction, TxMode};

impl<S: Storage + Clone, C: Clock + Clone> Service<S, C> {
    /// One sweep pass: releases expired holds and cancels orders past their payment window,
    /// one product per transaction, in batches. Correctness never depends on it running.
    ///
    /// # Errors
    /// `Busy`; storage.
    pub async fn sweep(&self) -> Result<SweepReport, ServiceError> {
        let mut report = SweepReport::default();
        loop {
            let due = in_transaction!(self, TxMode::Read, "sweep_scan", |tx| async {
                Ok::<_, ServiceError>(
                    tx.products_due(self.clock.now(), SWEEP_PRODUCTS_PER_BATCH)
                        .await?,
                )
            })?;
            let batch_full = due.len() >= SWEEP_PRODUCTS_PER_BATCH as usize;
            for product_id in due {
                let (holds, orders) = self.sweep_product(product_id).await?;
                report.holds_released = report.holds_released.saturating_add(holds);
                report.orders_cancelled = report.orders_cancelled.saturating_add(orders);
            }
            if !batch_full {
                break;
            }
        }
        report.records_purged = self.purge_records().await?;
        metrics::counter!("flashsale_sweep_holds_released_total")
            .increment(report.holds_released as u64);
        metrics::counter!("flashsale_sweep_orders_cancelled_total")
            .increment(report.orders_cancelled as u64);
        metrics::counter!("flashsale_sweep_records_purged_total").increment(report.records_purged);
        Ok(report)
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

    /// Sweeps one product in a transaction of its own, through the same script as every command.
    async fn sweep_product(&self, product_id: ProductId) -> Result<(usize, usize), ServiceError> {
        let command = Command::SweepProduct { product_id };
        let swept = self
            .execute_batch(std::slice::from_ref(&command))
            .instrument(tracing::info_span!("sweep", %product_id))
            .await
            .pop()
            .unwrap_or_else(unanswered)?;
        let Outcome::Swept {
            holds_released,
            orders_cancelled,
        } = swept
        else {
            return Err(mismatched(&swept));
        };
        let swept = (holds_released.len(), orders_cancelled.len());
        if swept != (0, 0) {
            tracing::info!(
                %product_id,
                holds_released = swept.0,
                orders_cancelled = swept.1,
                "swept"
            );
        }
        Ok(swept)
    }
}
