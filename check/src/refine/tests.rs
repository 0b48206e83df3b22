//! The check on small hand-made logs: rows, answers and reads that match the replay pass, and
//! each kind of difference is reported in the API's words.

use std::collections::BTreeMap;

use flashsale_core::{
    Cents, Command, Hold, HoldId, HoldState, HoldView, Ledger, ProductId, Qty, Rejection, Timestamp,
};

use super::{Checked, check};
use crate::failure::Failure;
use crate::history::{Answer, Read, Seen, Target};
use crate::recording::Entry;

fn entry(op: u64, command: Command, now: u64) -> Entry {
    Entry {
        tx: op,
        replayed: false,
        op,
        command,
        key: None,
        now: Timestamp(now),
        at_us: now,
        wrote: true,
        holds_inserted: vec![],
        orders_inserted: vec![],
        products_inserted: vec![],
    }
}

fn log() -> Vec<Entry> {
    let create = Command::CreateProduct {
        name: "P".into(),
        price_cents: Cents(1),
        stock: Qty(3),
    };
    let hold = Command::PlaceHold {
        product_id: ProductId(7),
        qty: Qty(2),
        ttl_ms: 1_000,
        key: None,
    };
    vec![
        Entry {
            products_inserted: vec![7],
            ..entry(1, create, 0)
        },
        Entry {
            holds_inserted: vec![40],
            ..entry(2, hold, 10)
        },
    ]
}

fn stored(qty: u32) -> Ledger {
    let product = flashsale_core::Product {
        id: ProductId(7),
        name: "P".into(),
        price_cents: Cents(1),
        stock: Qty(3),
        // What the replay's grant of 2 leaves, so only the hold can differ.
        units_held: Qty(2),
        units_received: 3,
        expired_through: Timestamp(0),
        holds_to_retire: 0,
        // The hold's deadline is the product's latest: its bucket is the one in its row.
        open_bucket: flashsale_core::OpenBucket {
            expires_at: Timestamp(2_000),
            units: Qty(qty),
            holds: 1,
        },
    };
    let hold = Hold {
        id: HoldId(40),
        product_id: ProductId(7),
        qty: Qty(qty),
        created_at: Timestamp(10),
        // Ten milliseconds plus the TTL's second, rounded up to the next whole second.
        expires_at: Timestamp(2_000),
        state: HoldState::Held,
    };
    Ledger::from_rows([product], [hold], [], [])
}

#[test]
fn rows_that_match_the_replay_pass_whatever_their_ids() {
    assert_eq!(
        check(&stored(2), &log(), &BTreeMap::new(), &[]),
        Ok(Checked {
            answers: 0,
            reads: 0
        })
    );
}

#[test]
fn a_row_that_differs_from_the_replay_is_reported() {
    let difference = check(&stored(1), &log(), &BTreeMap::new(), &[])
        .expect_err("qty 1 is not what was decided");
    assert_eq!(difference.kind, "refinement: final rows differ");
    assert!(difference.message.starts_with("hold 40"), "{difference}");
}

#[test]
fn a_commit_the_ledger_refuses_is_reported() {
    let mut log = log();
    log[1].command = Command::PlaceHold {
        product_id: ProductId(7),
        qty: Qty(4),
        ttl_ms: 1_000,
        key: None,
    };
    let difference =
        check(&stored(2), &log, &BTreeMap::new(), &[]).expect_err("4 of 3 units cannot be held");
    assert_eq!(difference.kind, "refinement: commit the replay refuses");
    assert_eq!(difference.request, Some(2));
    assert!(
        difference
            .message
            .contains("POST /api/holds {product_id: 7, qty: 4}"),
        "{difference}"
    );
}

fn granted(hold_id: u64, qty: u32) -> Answer {
    Answer::Hold {
        hold: Hold {
            id: HoldId(hold_id),
            product_id: ProductId(7),
            qty: Qty(qty),
            created_at: Timestamp(10),
            expires_at: Timestamp(2_000),
            state: HoldState::Held,
        },
        folded: flashsale_core::Folded::default(),
        replayed: false,
    }
}

#[test]
fn answers_that_match_the_replay_pass() {
    let answers = BTreeMap::from([(2, granted(40, 2))]);
    assert_eq!(
        check(&stored(2), &log(), &answers, &[]),
        Ok(Checked {
            answers: 1,
            reads: 0
        })
    );
}

#[test]
fn an_answer_other_than_the_replay_is_reported() {
    let answers = BTreeMap::from([(2, granted(40, 1))]);
    let difference = check(&stored(2), &log(), &answers, &[]).expect_err("the client saw qty 1");
    assert_eq!(difference.kind, "refinement: answer differs");
    assert_eq!(difference.request, Some(2));
    // In the API's ids: hold 40 of product 7, as the storage numbered them.
    assert!(
        difference.message.contains(
            "answered `201 hold 40 {product_id: 7, qty: 1, expires_at: t-1767225598000ms, \
             state: held}`, but in commit order the answer is `201 hold 40 {product_id: 7, \
             qty: 2,"
        ),
        "{difference}"
    );
}

#[test]
fn a_refusal_the_replay_would_not_give_is_reported() {
    // A request for 1 unit, refused at a point where 1 of 3 units was free.
    let mut log = log();
    let ask = Command::PlaceHold {
        product_id: ProductId(7),
        qty: Qty(1),
        ttl_ms: 1_000,
        key: None,
    };
    log.push(Entry {
        wrote: false,
        ..entry(3, ask, 20)
    });
    let refused = Answer::Rejected(Rejection::InsufficientStock {
        requested: Qty(1),
        available: Qty(0),
    });
    let answers = BTreeMap::from([(3, refused)]);
    let difference = check(&stored(2), &log, &answers, &[]).expect_err("a unit was free");
    assert_eq!(difference.request, Some(3));
    assert!(
        difference
            .message
            .contains("answered `insufficient_stock requested 1 units, 0 available`"),
        "{difference}"
    );
    // The same refusal where the ledger refuses too passes, and changes nothing.
    let refused = Answer::Rejected(Rejection::InsufficientStock {
        requested: Qty(2),
        available: Qty(1),
    });
    log[2].command = Command::PlaceHold {
        product_id: ProductId(7),
        qty: Qty(2),
        ttl_ms: 1_000,
        key: None,
    };
    let answers = BTreeMap::from([(3, refused)]);
    assert_eq!(
        check(&stored(2), &log, &answers, &[]),
        Ok(Checked {
            answers: 1,
            reads: 0
        })
    );
}

/// How many of `reads` the check over `log()` and `stored(2)` passed, or its failure.
#[allow(
    clippy::result_large_err,
    reason = "a test helper handing back the check's own failure"
)]
fn reads_checked(reads: &[Read]) -> Result<usize, Failure> {
    check(&stored(2), &log(), &BTreeMap::new(), reads).map(|c| c.reads)
}

/// Product 7 as the storage has it after `log()`'s hold of 2, and a read of it.
fn product_read(now: u64, from: usize, available: u32, units_held: u32) -> Read {
    Read {
        op: 9,
        target: Target::Product(ProductId(7)),
        now: Timestamp(now),
        from,
        to: 2,
        seen: Seen::Product {
            product: flashsale_core::Product {
                id: ProductId(7),
                name: "P".into(),
                price_cents: Cents(1),
                stock: Qty(3),
                units_held: Qty(units_held),
                units_received: 3,
                expired_through: Timestamp(0),
                holds_to_retire: 0,
                // Before the hold, no deadline was granted; after it, the hold's is open.
                open_bucket: if units_held == 0 {
                    flashsale_core::OpenBucket::default()
                } else {
                    flashsale_core::OpenBucket {
                        expires_at: Timestamp(2_000),
                        units: Qty(units_held),
                        holds: 1,
                    }
                },
            },
            available: Qty(available),
        },
    }
}

#[test]
fn a_read_at_a_hold_deadline_must_count_the_hold_free() {
    // Hold 40 of 2 units expires at 2000 (10 ms plus its TTL, rounded up to the second): a read then sees all 3 units free.
    let reads = [product_read(2_000, 1, 3, 2)];
    assert_eq!(reads_checked(&reads), Ok(1));
    // Counting it held, one millisecond too long, matches no state.
    let reads = [product_read(2_000, 1, 1, 2)];
    let difference = reads_checked(&reads).expect_err("the hold is free at its deadline");
    assert_eq!(difference.kind, "refinement: read differs");
    assert_eq!(difference.request, Some(9));
    assert!(
        difference.message.contains("available 1`, but no state")
            && difference.message.ends_with("available 3`"),
        "{difference}"
    );
    // One millisecond before, it is held.
    let reads = [product_read(1_999, 1, 1, 2)];
    assert_eq!(reads_checked(&reads), Ok(1));
}

#[test]
fn a_read_may_show_any_state_of_its_window_and_no_other() {
    // Before the hold: 3 available and none held. From position 1 that state is in the
    // window; from position 2 only the state after the hold is.
    let before_the_hold = product_read(500, 1, 3, 0);
    assert_eq!(reads_checked(&[before_the_hold]), Ok(1));
    let too_old = product_read(500, 2, 3, 0);
    let difference = reads_checked(&[too_old])
        .expect_err("the state before the hold is older than the read's window");
    assert_eq!(difference.kind, "refinement: read differs");
}

#[test]
fn a_hold_read_is_checked_with_its_view_at_the_reading() {
    let read = |now: u64, view: HoldView| Read {
        op: 9,
        target: Target::Hold(HoldId(40)),
        now: Timestamp(now),
        from: 2,
        to: 2,
        seen: Seen::Hold {
            hold: Hold {
                id: HoldId(40),
                product_id: ProductId(7),
                qty: Qty(2),
                created_at: Timestamp(10),
                expires_at: Timestamp(2_000),
                state: HoldState::Held,
            },
            view,
        },
    };
    let ok = [read(1_999, HoldView::Held), read(2_000, HoldView::Expired)];
    assert_eq!(reads_checked(&ok), Ok(2));
    let wrong = [read(2_000, HoldView::Held)];
    let difference = reads_checked(&wrong).expect_err("held past its deadline");
    assert!(difference.message.contains("shown as held"), "{difference}");
}
