//! Every service error mapped to its answer, in one place: a rejection to its problem and
//! status, a missing row to 404, a key in flight, contention and a full queue to 409 or 503 with
//! `Retry-After`, a database away to 503 counted by cause, a broken invariant to 500 logged at
//! error level.

use flashsale_core::Rejection;
use warp::Reply;
use warp::http::header::{HeaderValue, RETRY_AFTER};
use warp::reply::Response;

use crate::problem::Problem;
use flashsale_service::ServiceError;
use flashsale_service::store::StoreError;

pub(super) fn not_found(what: &'static str, id: u64) -> Response {
    let code = match what {
        "product" => "product_not_found",
        "hold" => "hold_not_found",
        _ => "order_not_found",
    };
    Problem::new(404, code, format!("{what} {id} not found")).into_response()
}

/// Maps a service error to its problem: one place for every status code.
pub(super) fn error_reply(error: ServiceError) -> Response {
    match error {
        ServiceError::Rejected(rejection) => rejection_problem(&rejection).into_response(),
        ServiceError::NotFound { what, id } => not_found(what, id),
        ServiceError::KeyInFlight { key } => {
            let problem = Problem::new(
                409,
                "idempotency_key_in_flight",
                format!("a request under idempotency key {key} is still running; retry"),
            );
            retry_later(problem)
        }
        ServiceError::Busy { attempts } => {
            let problem = Problem::new(
                503,
                "busy",
                format!("contention after {attempts} attempts; retry"),
            );
            retry_later(problem)
        }
        ServiceError::Overloaded { waiting } => {
            tracing::warn!(waiting, "queue full, refusing");
            let problem = Problem::new(
                503,
                "busy",
                format!("{waiting} requests already wait for this server; retry"),
            );
            retry_later(problem)
        }
        ServiceError::Violated(violation) => {
            // Fail closed: nothing was written, and a person must look at the rows.
            tracing::error!(%violation, "invariant violated in stored rows; request refused");
            Problem::new(
                500,
                "invariant_violated",
                "the stored state breaks an invariant; nothing was changed",
            )
            .into_response()
        }
        ServiceError::Store(StoreError::Unavailable(error)) => {
            database_unavailable(DatabaseCause::Unreachable, &error)
        }
        ServiceError::Store(StoreError::Connection(error)) => {
            database_unavailable(DatabaseCause::ConnectionLost, &error)
        }
        ServiceError::Store(StoreError::CommitUnknown(error)) => {
            database_unavailable(DatabaseCause::CommitUnknown, &error)
        }
        ServiceError::Store(error) => {
            tracing::error!(%error, "storage failed");
            Problem::internal().into_response()
        }
    }
}

/// Why a request could not use the database, as `flashsale_database_unavailable_total`'s
/// `cause` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseCause {
    /// No connection within the pool's timeout: the database is down or unreachable, refuses
    /// connections, is a Galera node out of its cluster, or every connection is taken.
    Unreachable,
    /// Every attempt lost its connection before committing: nothing was changed.
    ConnectionLost,
    /// The connection was lost while committing: the request may or may not have taken effect.
    CommitUnknown,
    /// The server is still waiting for its database at start-up.
    Starting,
    /// No answer within the request deadline (`--request-deadline`): the database, or the
    /// queue before it, was too slow; a write may or may not take effect.
    Deadline,
}

impl DatabaseCause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseCause::Unreachable => "unreachable",
            DatabaseCause::ConnectionLost => "connection_lost",
            DatabaseCause::CommitUnknown => "commit_unknown",
            DatabaseCause::Starting => "starting",
            DatabaseCause::Deadline => "deadline",
        }
    }
}

/// The 503 of a request the database failed, logged, and counted by cause: the one place such
/// an answer is made, so `flashsale_database_unavailable_total` counts every one of them (an
/// alert on it fires even when the database is gone entirely, which retries never see).
pub(super) fn database_unavailable(cause: DatabaseCause, error: &str) -> Response {
    metrics::counter!("flashsale_database_unavailable_total", "cause" => cause.as_str())
        .increment(1);
    let problem = match cause {
        DatabaseCause::CommitUnknown => {
            tracing::warn!(%error, "database connection lost while committing");
            Problem::new(
                503,
                "commit_unknown",
                "the database connection was lost while committing, so the request may or \
                 may not have taken effect; retry under the same Idempotency-Key, or read \
                 the resource first",
            )
        }
        DatabaseCause::Deadline => {
            tracing::warn!(deadline = %error, "no answer within the request deadline");
            Problem::new(
                503,
                "deadline_exceeded",
                format!(
                    "no answer within the request deadline ({error}); a write may still take \
                     effect: retry under the same Idempotency-Key, or read the resource first"
                ),
            )
        }
        DatabaseCause::Unreachable | DatabaseCause::ConnectionLost | DatabaseCause::Starting => {
            tracing::warn!(%error, cause = cause.as_str(), "database unavailable");
            Problem::new(
                503,
                "database_unavailable",
                "the database cannot be reached; nothing was changed; retry",
            )
        }
    };
    retry_later(problem)
}

/// The 503 of a request not answered within `deadline` ([`crate::deadline::Deadline`]).
pub fn deadline_passed(deadline: std::time::Duration) -> Response {
    let deadline = humantime::format_duration(deadline).to_string();
    database_unavailable(DatabaseCause::Deadline, &deadline)
}

/// A problem the client should retry in a second: `Retry-After: 1`.
fn retry_later(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn rejection_problem(rejection: &Rejection) -> Problem {
    let detail = rejection.to_string();
    let code = rejection.code();
    match rejection {
        Rejection::InvalidQty { .. } | Rejection::StockOverflow { .. } => {
            Problem::validation_failed(detail, Some("qty".into()))
        }
        Rejection::InvalidName => Problem::validation_failed(detail, Some("name".into())),
        Rejection::InvalidPrice { .. } => {
            Problem::validation_failed(detail, Some("price_cents".into()))
        }
        Rejection::InvalidTtl { .. }
        | Rejection::InvalidPaymentWindow { .. }
        | Rejection::TotalOverflow { .. } => Problem::validation_failed(detail, None),
        Rejection::UnknownProduct { .. } => {
            Problem::new(422, code, detail).with_member("field", "product_id")
        }
        Rejection::UnknownHold { .. } => {
            Problem::new(422, code, detail).with_member("field", "hold_id")
        }
        Rejection::HoldReleased { .. } | Rejection::HoldExpired { .. } => {
            Problem::new(409, code, detail)
        }
        Rejection::InsufficientStock {
            requested,
            available,
        } => Problem::new(409, code, detail)
            .with_member("requested", requested.0)
            .with_member("available", available.0),
        Rejection::IdempotencyKeyReused { field, .. } => {
            Problem::new(422, code, detail).with_member("field", *field)
        }
    }
}
