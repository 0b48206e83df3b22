//! Reconciliation: the payments that did not become a sale, listed for the operator who must
//! refund or follow them up. The admin routes (`GET /api/admin/webhooks`, `GET
//! /api/admin/orders`) and `flashsale report` read them through the same two functions here, so
//! the API and the command line always show the same records in the same words.
//!
//! Pages are oldest first and resume from an opaque `next_cursor`; a page is never missing a
//! record that existed when the previous page was read, because the order is a total order on
//! columns that never change (`received_at` then key; the order id). The SQL behind the pages
//! is in `queries`.

// A refused listing is one problem per bad request, on a cold path; boxing it would only add
// noise.
#![allow(clippy::result_large_err)]

mod queries;

use flashsale_core::{
    CancelReason, IdempotencyKey, OrderId, OrderStatus, Timestamp, WebhookResult,
};
use serde_json::{Value, json};

use crate::api::{order_json, rfc3339};
use crate::problem::Problem;
use crate::sql::{OrderFilter, SqlStore, WebhookCursor};
use flashsale_service::store::StoreError;

/// Records per page when the request does not say.
pub const PAGE_LIMIT_DEFAULT: u32 = 100;
/// The most records one page holds.
pub const PAGE_LIMIT_MAX: u32 = 1_000;

/// The webhook results that need a person: the payment did not become a sale.
pub const NEEDS_ATTENTION: [WebhookResult; 3] = [
    WebhookResult::RefundRequired,
    WebhookResult::Conflict,
    WebhookResult::Unmatched,
];

/// A request for one page of webhook records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookQuery {
    /// Only records with this result.
    pub result: Option<WebhookResult>,
    /// Resume after this record.
    pub after: Option<WebhookCursor>,
    /// Page size, 1 to [`PAGE_LIMIT_MAX`].
    pub limit: u32,
}

/// A request for one page of orders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderQuery {
    /// Which orders.
    pub filter: OrderFilter,
    /// Resume after this order.
    pub after: Option<OrderId>,
    /// Page size, 1 to [`PAGE_LIMIT_MAX`].
    pub limit: u32,
}

/// Why a listing request was refused: 400 `invalid_query`, naming the parameter.
fn invalid(parameter: &str, detail: String) -> Problem {
    Problem::new(400, "invalid_query", detail).with_member("parameter", parameter)
}

/// Checks that every parameter is one of `known`.
fn only(params: &[(String, String)], known: &[&str]) -> Result<(), Problem> {
    match params
        .iter()
        .find(|(name, _)| !known.contains(&name.as_str()))
    {
        Some((name, _)) => Err(invalid(
            name,
            format!(
                "unknown query parameter {name}; known: {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn limit(params: &[(String, String)]) -> Result<u32, Problem> {
    let Some(value) = param(params, "limit") else {
        return Ok(PAGE_LIMIT_DEFAULT);
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
        .ok_or_else(|| {
            invalid(
                "limit",
                format!("limit must be an integer from 1 to {PAGE_LIMIT_MAX}"),
            )
        })
}

fn words<T: Copy>(all: &[T], word: impl Fn(T) -> &'static str) -> String {
    all.iter().map(|&t| word(t)).collect::<Vec<_>>().join(", ")
}

const WEBHOOK_RESULTS: [WebhookResult; 5] = [
    WebhookResult::Applied,
    WebhookResult::AlreadyApplied,
    WebhookResult::Conflict,
    WebhookResult::RefundRequired,
    WebhookResult::Unmatched,
];
const ORDER_STATUSES: [OrderStatus; 3] = [
    OrderStatus::PrePayment,
    OrderStatus::Paid,
    OrderStatus::Cancelled,
];
const CANCEL_REASONS: [CancelReason; 2] = [
    CancelReason::PaymentFailed,
    CancelReason::PaymentWindowClosed,
];

impl WebhookQuery {
    /// Parses `?result=&cursor=&limit=`.
    ///
    /// # Errors
    /// 400 `invalid_query` for an unknown parameter, result, cursor or limit.
    pub fn parse(params: &[(String, String)]) -> Result<Self, Problem> {
        only(params, &["result", "cursor", "limit"])?;
        let result = param(params, "result")
            .map(|word| {
                WEBHOOK_RESULTS
                    .into_iter()
                    .find(|r| r.as_str() == word)
                    .ok_or_else(|| {
                        let known = words(&WEBHOOK_RESULTS, WebhookResult::as_str);
                        invalid("result", format!("result must be one of {known}"))
                    })
            })
            .transpose()?;
        let after = param(params, "cursor")
            .map(|c| {
                decode_webhook_cursor(c).ok_or_else(|| {
                    invalid(
                        "cursor",
                        "cursor is not a next_cursor this server gave".into(),
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            result,
            after,
            limit: limit(params)?,
        })
    }
}

impl OrderQuery {
    /// Parses `?status=&cancel_reason=&cursor=&limit=`.
    ///
    /// # Errors
    /// 400 `invalid_query` for an unknown parameter or value, or a `cancel_reason` with a
    /// status other than `cancelled`.
    pub fn parse(params: &[(String, String)]) -> Result<Self, Problem> {
        only(params, &["status", "cancel_reason", "cursor", "limit"])?;
        let status = param(params, "status")
            .map(|word| {
                OrderStatus::parse(word).ok_or_else(|| {
                    let known = words(&ORDER_STATUSES, OrderStatus::as_str);
                    invalid("status", format!("status must be one of {known}"))
                })
            })
            .transpose()?;
        let cancel_reason = param(params, "cancel_reason")
            .map(|word| {
                CancelReason::parse(word).ok_or_else(|| {
                    let known = words(&CANCEL_REASONS, CancelReason::as_str);
                    invalid(
                        "cancel_reason",
                        format!("cancel_reason must be one of {known}"),
                    )
                })
            })
            .transpose()?;
        if cancel_reason.is_some() && status.is_some_and(|s| s != OrderStatus::Cancelled) {
            return Err(invalid(
                "cancel_reason",
                "only cancelled orders have a cancel_reason".into(),
            ));
        }
        let after = param(params, "cursor")
            .map(|c| {
                c.parse::<u64>().ok().map(OrderId).ok_or_else(|| {
                    invalid(
                        "cursor",
                        "cursor is not a next_cursor this server gave".into(),
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            filter: OrderFilter {
                status,
                cancel_reason,
            },
            after,
            limit: limit(params)?,
        })
    }
}

/// `<received_at ms>.<hex of the key>`: opaque to clients, and free of characters a query
/// string would need to escape.
fn encode_webhook_cursor(cursor: &WebhookCursor) -> String {
    format!(
        "{}.{}",
        cursor.received_at.as_ms(),
        hex::encode(cursor.key.as_str())
    )
}

fn decode_webhook_cursor(text: &str) -> Option<WebhookCursor> {
    let (at, key) = text.split_once('.')?;
    let key = String::from_utf8(hex::decode(key).ok()?).ok()?;
    Some(WebhookCursor {
        received_at: Timestamp(at.parse().ok()?),
        key: IdempotencyKey::parse(&key)?,
    })
}

/// Cuts a fetch of `limit + 1` rows to the page; whether a row was cut says there is a next page.
fn truncate_page<T>(rows: &mut Vec<T>, limit: u32) -> bool {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    more
}

/// One page of webhook records as JSON: `{"items": [...], "next_cursor": ...}`, the cursor
/// `null` on the last page.
///
/// # Errors
/// The database failed.
pub async fn webhooks(store: &SqlStore, query: &WebhookQuery) -> Result<Value, StoreError> {
    // One more than the page: whether it exists says whether there is a next page.
    let fetch = query.limit.saturating_add(1);
    let mut records = store
        .webhook_page(query.result, query.after.as_ref(), fetch)
        .await?;
    let more = truncate_page(&mut records, query.limit);
    let next = more.then(|| records.last()).flatten().map(|last| {
        encode_webhook_cursor(&WebhookCursor {
            received_at: last.received_at,
            key: last.key.clone(),
        })
    });
    let items: Vec<Value> = records
        .iter()
        .map(|record| {
            json!({
                "idempotency_key": record.key.as_str(),
                "hold_id": record.hold_id.0,
                "status": record.status.as_str(),
                "result": record.result.as_str(),
                "order_id": record.order_id.map(|id| id.0),
                "received_at": rfc3339(record.received_at),
            })
        })
        .collect();
    Ok(json!({"items": items, "next_cursor": next}))
}

/// One page of orders as JSON, each with its `cancel_reason` (`null` unless cancelled).
///
/// # Errors
/// The database failed.
pub async fn orders(store: &SqlStore, query: &OrderQuery) -> Result<Value, StoreError> {
    let fetch = query.limit.saturating_add(1);
    let mut orders = store.order_page(query.filter, query.after, fetch).await?;
    let more = truncate_page(&mut orders, query.limit);
    let next = more
        .then(|| orders.last())
        .flatten()
        .map(|(last, _)| last.id.0.to_string());
    let items: Vec<Value> = orders
        .iter()
        .map(|(order, reason)| {
            let mut body = order_json(order);
            body["cancel_reason"] = json!(reason.map(CancelReason::as_str));
            body
        })
        .collect();
    Ok(json!({"items": items, "next_cursor": next}))
}

/// Everything `flashsale report` prints: every webhook record that needs a person, by result,
/// and every order cancelled because its payment window closed, oldest first, paged through
/// [`webhooks`] and [`orders`] so that it lists exactly what the admin routes list.
///
/// # Errors
/// The database failed.
pub async fn report(store: &SqlStore) -> Result<Value, StoreError> {
    let mut sections = serde_json::Map::new();
    for result in NEEDS_ATTENTION {
        let mut query = WebhookQuery {
            result: Some(result),
            after: None,
            limit: PAGE_LIMIT_MAX,
        };
        let mut items = Vec::new();
        loop {
            let page = webhooks(store, &query).await?;
            items.extend(page["items"].as_array().into_iter().flatten().cloned());
            match page["next_cursor"].as_str().and_then(decode_webhook_cursor) {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        sections.insert(result.as_str().to_owned(), Value::Array(items));
    }
    let mut query = OrderQuery {
        filter: OrderFilter {
            status: Some(OrderStatus::Cancelled),
            cancel_reason: Some(CancelReason::PaymentWindowClosed),
        },
        after: None,
        limit: PAGE_LIMIT_MAX,
    };
    let mut cancelled = Vec::new();
    loop {
        let page = orders(store, &query).await?;
        cancelled.extend(page["items"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str().and_then(|c| c.parse().ok()) {
            Some(next) => query.after = Some(OrderId(next)),
            None => break,
        }
    }
    Ok(json!({"webhooks": sections, "orders_payment_window_closed": cancelled}))
}

/// How many records of a [`report`] need a person: every listed webhook and order.
pub fn records_to_follow_up(report: &Value) -> usize {
    let webhooks = report["webhooks"]
        .as_object()
        .into_iter()
        .flat_map(|sections| sections.values())
        .filter_map(Value::as_array)
        .map(Vec::len)
        .sum::<usize>();
    let orders = report["orders_payment_window_closed"]
        .as_array()
        .map_or(0, Vec::len);
    webhooks.saturating_add(orders)
}

/// [`report`] as text for a person: one section per kind, one line per record, with what to do.
pub fn render_report(report: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let what = [
        (
            "refund_required",
            "paid after its hold or order was gone: refund the payment",
        ),
        (
            "conflict",
            "contradicts the order's final status: check with the provider",
        ),
        (
            "unmatched",
            "names a hold this service does not know: check with the provider",
        ),
    ];
    for (result, action) in what {
        let items = report["webhooks"][result]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let _ = writeln!(out, "webhooks {result} ({}): {action}", items.len());
        for w in items {
            let _ = writeln!(
                out,
                "  key={} hold={} status={} order={} received_at={}",
                w["idempotency_key"].as_str().unwrap_or("?"),
                w["hold_id"],
                w["status"].as_str().unwrap_or("?"),
                w["order_id"],
                w["received_at"].as_str().unwrap_or("?"),
            );
        }
    }
    let orders = report["orders_payment_window_closed"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let _ = writeln!(
        out,
        "orders cancelled when their payment window closed ({}): follow up with the buyer",
        orders.len()
    );
    for o in orders {
        let _ = writeln!(
            out,
            "  order={} hold={} product={} qty={} total_cents={} payment_due_at={}",
            o["order_id"],
            o["hold_id"],
            o["product_id"],
            o["qty"],
            o["total_cents"],
            o["payment_due_at"].as_str().unwrap_or("?"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_webhook_cursor_round_trips_any_key() {
        for key in ["k", "a.b.c", "key/with%signs&=?", "~!@#$%^&*()"] {
            let cursor = WebhookCursor {
                received_at: Timestamp(1_764_000_000_123),
                key: IdempotencyKey::parse(key).expect("a valid key"),
            };
            let text = encode_webhook_cursor(&cursor);
            assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
            assert_eq!(decode_webhook_cursor(&text), Some(cursor));
        }
        for bad in ["", "1", "x.6b", "1.zz", "1.", "-1.6b"] {
            assert_eq!(decode_webhook_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn queries_refuse_unknown_parameters_values_and_limits() {
        let refused = [
            WebhookQuery::parse(&params(&[("results", "conflict")])),
            WebhookQuery::parse(&params(&[("result", "lost")])),
            WebhookQuery::parse(&params(&[("limit", "0")])),
            WebhookQuery::parse(&params(&[("limit", "1001")])),
            WebhookQuery::parse(&params(&[("cursor", "nope")])),
        ];
        for answer in refused {
            let problem = answer.expect_err("refused");
            assert_eq!((problem.status, problem.code), (400, "invalid_query"));
        }
        let problem = OrderQuery::parse(&params(&[
            ("status", "paid"),
            ("cancel_reason", "payment_failed"),
        ]))
        .expect_err("a paid order has no cancel reason");
        assert_eq!(problem.code, "invalid_query");
        let query = OrderQuery::parse(&params(&[
            ("cancel_reason", "payment_window_closed"),
            ("cursor", "17"),
            ("limit", "5"),
        ]))
        .expect("valid");
        assert_eq!(
            query.filter.cancel_reason,
            Some(CancelReason::PaymentWindowClosed)
        );
        assert_eq!((query.after, query.limit), (Some(OrderId(17)), 5));
        let defaults = WebhookQuery::parse(&[]).expect("no parameters");
        assert_eq!(defaults.limit, PAGE_LIMIT_DEFAULT);
    }
}
