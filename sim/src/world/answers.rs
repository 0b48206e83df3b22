//! What a request's answer is to the checks and the trace: the answer the commit-order replay
//! decides (if it decides one), its words for a person, and the digest the trace hash takes.

use flashsale_check::history::{Answer, ReadAnswer, Seen};
use flashsale_check::words;
use flashsale_service::{HoldPlaced, Keyed, OrderPlaced, ProductView, SweepReport, WebhookAnswer};

/// What a client saw, as the commit-order replay decides it; `None` for answers it does not
/// decide (a replay from a request key's record, which the world checks itself, or a sweep).
pub(super) trait Answered {
    fn answer(&self) -> Option<Answer>;

    /// The answer in the API's words, for the trace.
    fn describe(&self) -> String;

    /// What the trace hash takes of the answer: its kind and ids.
    fn digest(&self) -> [u64; 3];
}

/// A keyed answer's words: a replay from the key's record says so.
fn keyed_words(replayed: bool, answer: &Answer) -> String {
    let replay = if replayed {
        " (replayed from its key's record)"
    } else {
        ""
    };
    format!("{}{replay}", words::answer(answer))
}

impl Answered for Keyed<HoldPlaced> {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        words::answer(&Answer::from(self))
    }

    fn digest(&self) -> [u64; 3] {
        [1, self.value.hold.id.0, u64::from(self.replayed)]
    }
}

impl Answered for Keyed<OrderPlaced> {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        words::answer(&Answer::from(self))
    }

    fn digest(&self) -> [u64; 3] {
        let flags = u64::from(self.value.created) | u64::from(self.replayed) << 1;
        [2, self.value.order.id.0, flags]
    }
}

impl Answered for WebhookAnswer {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        self.answer()
            .map(|a| keyed_words(self.replayed, &a))
            .unwrap_or_default()
    }

    fn digest(&self) -> [u64; 3] {
        let order = self.record.order_id.map_or(u64::MAX, |o| o.0);
        [
            3,
            self.record.result as u64 | u64::from(self.replayed) << 8,
            order,
        ]
    }
}

impl Answered for ProductView {
    fn answer(&self) -> Option<Answer> {
        Some(Answer::from(self))
    }

    fn describe(&self) -> String {
        self.answer().map(|a| words::answer(&a)).unwrap_or_default()
    }

    fn digest(&self) -> [u64; 3] {
        [
            4,
            u64::from(self.product.stock.0),
            self.product.units_received,
        ]
    }
}

impl Answered for ReadAnswer {
    fn answer(&self) -> Option<Answer> {
        // Reads are checked against every state they may have seen, not at one log entry.
        None
    }

    fn describe(&self) -> String {
        words::seen(&self.seen)
    }

    fn digest(&self) -> [u64; 3] {
        match &self.seen {
            Seen::Product { product, available } => [10, product.id.0, u64::from(available.0)],
            Seen::Hold { hold, view } => [11, hold.id.0, *view as u64],
            Seen::Order(order) => [12, order.id.0, order.status as u64],
        }
    }
}

impl Answered for SweepReport {
    fn answer(&self) -> Option<Answer> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "sweep folded {} expired holds ({} units), retired {} holds, cancelled {} orders",
            self.folded.holds, self.folded.units, self.holds_retired, self.orders_cancelled
        )
    }

    fn digest(&self) -> [u64; 3] {
        let retired = (self.holds_retired as u64) << 32 | self.folded.holds;
        [5, retired, self.orders_cancelled as u64]
    }
}
