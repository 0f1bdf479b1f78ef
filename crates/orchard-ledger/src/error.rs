//! One error type for the whole crate, so callers (the server, the CLI) can match on what went wrong
//! without string parsing.

use std::path::PathBuf;

/// Everything that can go wrong inside the ledger crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ledger URL could not be understood.
    #[error("invalid ledger URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A SQLite call failed.
    #[error("sqlite ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A PostgreSQL call failed.
    #[error("postgres ledger: {source}")]
    Postgres {
        #[source]
        source: postgres::Error,
    },
    /// The database holds a schema newer than this build knows.
    #[error("ledger schema version {found} is newer than the {supported} this build supports")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A value read back from the database made no sense (e.g. an unknown status string).
    #[error("corrupt ledger value in {column}: {value:?}")]
    CorruptValue { column: &'static str, value: String },
    /// The background writer has stopped (closed or its thread died).
    #[error("ledger writer is closed")]
    WriterClosed,
    /// A commit did not finish within the caller's timeout.
    #[error("ledger commit not confirmed within {waited_ms} ms")]
    CommitTimeout { waited_ms: u64 },
    /// A batch could not be committed (the database is unreachable or the writer shut down
    /// before it came back).
    #[error("ledger commit failed: {reason}")]
    CommitFailed { reason: String },
    /// A row could not be stored even on its own (not a transient database outage).
    #[error("ledger row {request_id:?} rejected by the database: {reason}")]
    RowRejected { request_id: String, reason: String },
    /// The cost model file could not be read or parsed.
    #[error("cost model {path}: {reason}")]
    CostModel { path: PathBuf, reason: String },
    /// The cost model parsed but holds values that make no sense.
    #[error("cost model field {field}: {reason}")]
    InvalidCostModel { field: &'static str, reason: String },
    /// Hashing a new key failed (argon2 parameter error; should not happen with defaults).
    #[error("key hashing failed: {reason}")]
    KeyHash { reason: String },
    /// No key with this id exists.
    #[error("no API key with id {key_id:?}")]
    UnknownKeyId { key_id: String },
    /// Input rejected before it reached the database.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    /// Reading a file failed.
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LedgerError {
    /// Whether retrying the same operation later may succeed (database unreachable, locked, out
    /// of disk) as opposed to the database refusing this input for good.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            LedgerError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    C::DatabaseBusy
                        | C::DatabaseLocked
                        | C::SystemIoFailure
                        | C::DiskFull
                        | C::CannotOpen
                        | C::OutOfMemory
                        | C::FileLockingProtocolFailed
                )
            ),
            LedgerError::Postgres { source } => match source.code() {
                // No SQLSTATE: the connection or the client failed, not the statement.
                None => true,
                // 08 connection, 40 rollback (serialization, deadlock), 53 resources,
                // 57 operator intervention (shutdown), 58 system error.
                Some(state) => matches!(&state.code()[..2], "08" | "40" | "53" | "57" | "58"),
            },
            LedgerError::Io { .. }
            | LedgerError::CommitFailed { .. }
            | LedgerError::CommitTimeout { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn pg(source: postgres::Error) -> Self {
        LedgerError::Postgres { source }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> LedgerError {
        LedgerError::Sqlite {
            path: "x".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn busy_and_full_are_transient_constraint_is_not() {
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).is_transient());
        assert!(!LedgerError::InvalidInput {
            field: "f",
            reason: "r".into()
        }
        .is_transient());
        assert!(LedgerError::CommitFailed { reason: "r".into() }.is_transient());
    }
}
