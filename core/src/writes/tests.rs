//! The write-set builder's unit tests.

use super::*;
use crate::ids::{Cents, IdempotencyKey};
use crate::time::Timestamp;

fn product(stock: u32, units_held: u32) -> Product {
    Product {
        id: ProductId(1),
        name: "p".into(),
        price_cents: Cents(100),
        stock: Qty(stock),
        units_held: Qty(units_held),
        units_received: u64::from(stock),
        expired_through: Timestamp(0),
        holds_to_retire: 0,
        open_bucket: Default::default(),
    }
}

fn grant(qty: u32) -> HoldGrant {
    HoldGrant {
        qty: Qty(qty),
        created_at: Timestamp(0),
        expires_at: Timestamp(10),
    }
}

fn held(id: u64, qty: u32) -> Hold {
    grant(qty).with_id(HoldId(id), ProductId(1))
}

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).unwrap()
}

#[test]
fn a_grant_and_a_release_move_units_held_and_write_the_product_row() {
    let mut changes = Changes::on(&product(5, 2));
    changes
        .release(&held(1, 2), ReleaseReason::Expired)
        .unwrap();
    let own = changes.grant(grant(5)).unwrap();
    assert_eq!(Pending::default().hold(own), pending_hold(0));
    let writes = changes.finish();
    let written = writes
        .product(ProductId(1))
        .map(|p| (p.stock, p.units_held));
    assert_eq!(written, Some((Qty(5), Qty(5))));
    assert_eq!(
        writes.holds_released,
        vec![(HoldId(1), ReleaseReason::Expired)]
    );
}

#[test]
fn a_counter_leaving_its_range_is_a_violation_not_a_wrap() {
    let mut changes = Changes::on(&product(5, 1));
    assert_eq!(
        changes.release(&held(1, 2), ReleaseReason::Expired),
        Err(Violation::CounterOutOfRange {
            product_id: ProductId(1),
            counter: "units_held"
        })
    );
    assert!(matches!(
        changes.grant(grant(5)),
        Err(Violation::HeldExceedsStock { .. })
    ));
}

#[test]
fn pending_ids_lie_above_every_stored_id_and_resolve_to_the_ids_assigned() {
    assert!(pending_hold(0).0 > ID_MAX);
    assert_eq!(pending_index(pending_order(7).0), Some(7));
    assert_eq!(
        pending_index(ID_MAX),
        None,
        "the largest stored id is not pending"
    );
    let mut changes = Changes::on(&product(5, 0));
    changes.grant(grant(1)).unwrap();
    let second = changes.grant(grant(1)).unwrap();
    changes.record_request(RequestRecord {
        key: key("k"),
        request: KeyedRequest::PlaceHold {
            product_id: ProductId(1),
            qty: Qty(1),
        },
        resource_id: second.0,
        created: true,
        created_at: Timestamp(0),
    });
    let mut writes = WriteSet::default();
    writes.append(changes.finish());
    let inserted = Inserted {
        holds: vec![HoldId(7), HoldId(8)],
        orders: vec![],
        products: vec![],
    };
    let record = inserted.request_record(&writes.request_keys[0]).unwrap();
    assert_eq!(record.resource_id, 8);
    assert_eq!(inserted.hold(HoldId(3)), Ok(HoldId(3)), "a stored id stays");
    let short = Inserted::default();
    assert_eq!(
        short.request_record(&writes.request_keys[0]),
        Err(Violation::WriteSetUnresolved)
    );
}

#[test]
fn an_appended_write_set_numbers_its_rows_after_the_first_and_keeps_the_last_counters() {
    let mut first = Changes::on(&product(5, 0));
    first.grant(grant(2)).unwrap();
    let mut batch = WriteSet::default();
    batch.append(first.finish());
    let mut second = Changes::on(&Product {
        units_held: Qty(2),
        ..product(5, 0)
    });
    let id = second.grant(grant(1)).unwrap();
    second.record_request(RequestRecord {
        key: key("k"),
        request: KeyedRequest::PlaceHold {
            product_id: ProductId(1),
            qty: Qty(1),
        },
        resource_id: id.0,
        created: true,
        created_at: Timestamp(0),
    });
    batch.append(second.finish());
    assert_eq!(batch.holds_inserted.len(), 2);
    assert_eq!(batch.request_keys[0].resource_id, pending_hold(1).0);
    assert_eq!(batch.products.len(), 1, "one entry per product");
    assert_eq!(batch.products[0].units_held, Qty(3));
}
