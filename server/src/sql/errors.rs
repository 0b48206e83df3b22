//! What a database error means for the service: each sqlx error sorted into a [`StoreError`]
//! by what can be done about it (retry the transaction, answer that the database is away, give
//! up on a commit whose outcome is unknown, report corrupt data). The retry rule itself is
//! [`StoreError::is_retryable`]; this is the one place that decides which errors reach it.

use sqlx::mysql::MySqlDatabaseError;

use super::POOL_ACQUIRE_TIMEOUT;
use flashsale_service::store::StoreError;

/// A failed first connection: the database is unreachable (refused, no such host, a timeout)
/// or refuses the login; said as such, not as a lost connection.
pub(super) fn unreachable(error: sqlx::Error) -> StoreError {
    match map_err(error) {
        StoreError::Connection(message) | StoreError::Unavailable(message) => {
            StoreError::Unavailable(format!("cannot reach the database: {message}"))
        }
        other => other,
    }
}

/// Sorts a database error into what the service can do about it.
pub(crate) fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) => {
            if let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>() {
                match mysql.number() {
                    // 1213: deadlock, or a Galera certification failure at COMMIT; 1205: lock
                    // wait timeout; 1020: record changed (MariaDB). The transaction was rolled
                    // back.
                    1213 | 1205 | 1020 => return StoreError::Contention(error.to_string()),
                    // 1180: a Galera node could not replicate the commit while the cluster
                    // changes its members; the server rolled it back.
                    1180 => return StoreError::Contention(error.to_string()),
                    // 1053: server shutdown in progress; 1927: connection killed.
                    1053 | 1927 => return StoreError::Connection(error.to_string()),
                    // 1047: a Galera node not in the primary component; 1040: too many
                    // connections.
                    1047 | 1040 => return StoreError::Unavailable(error.to_string()),
                    _ => {}
                }
            }
            let sqlite_busy = db.code().is_some_and(|code| {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            });
            if sqlite_busy || db.is_unique_violation() {
                StoreError::Contention(error.to_string())
            } else {
                StoreError::Database(error.to_string())
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
            "no connection within {} s: {error}",
            POOL_ACQUIRE_TIMEOUT.as_secs()
        )),
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            StoreError::Connection(error.to_string())
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(error.to_string()),
        _ => StoreError::Database(error.to_string()),
    }
}
