//! The one place where SQLite's errors, as sqlx and rusqlite report them,
//! become [`StorageError`]s: what the caller can act on, with the driver's
//! error kept as the source for logs.

use rusqlite::ErrorCode;

use crate::storage::StorageError;

/// SQLite's primary result codes (the low byte of an extended code), for
/// errors that reach us through sqlx, which reports them as numbers.
mod code {
    pub const PERM: i32 = 3;
    pub const BUSY: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const NOMEM: i32 = 7;
    pub const READONLY: i32 = 8;
    pub const IOERR: i32 = 10;
    pub const CORRUPT: i32 = 11;
    pub const FULL: i32 = 13;
    pub const CANTOPEN: i32 = 14;
    pub const PROTOCOL: i32 = 15;
    pub const SCHEMA: i32 = 17;
    pub const TOOBIG: i32 = 18;
    pub const CONSTRAINT: i32 = 19;
    pub const MISMATCH: i32 = 20;
    pub const RANGE: i32 = 25;
    pub const NOTADB: i32 = 26;
}

/// What a primary result code means for the caller.
fn classify(primary: i32) -> fn(String, Option<super::super::ErrorSource>) -> StorageError {
    match primary {
        code::CONSTRAINT => StorageError::conflict,
        code::CORRUPT | code::NOTADB | code::SCHEMA => StorageError::corrupt,
        code::TOOBIG | code::MISMATCH | code::RANGE => StorageError::invalid,
        // BUSY, LOCKED, FULL, IOERR, CANTOPEN, READONLY, PERM, NOMEM,
        // PROTOCOL, and whatever else: the database cannot do it now.
        _ => StorageError::unavailable,
    }
}

fn reason(primary: i32) -> &'static str {
    match primary {
        code::BUSY | code::LOCKED => "the database is busy",
        code::FULL => "the disk is full",
        code::IOERR => "the database file could not be read or written",
        code::CANTOPEN | code::PERM | code::READONLY => "the database file cannot be written",
        code::NOMEM => "out of memory",
        code::PROTOCOL => "the database's locking failed",
        code::CONSTRAINT => "a uniqueness rule refused the write",
        code::CORRUPT | code::NOTADB => "the database file is damaged",
        code::SCHEMA => "the database's schema changed underneath",
        code::TOOBIG | code::MISMATCH | code::RANGE => "a value the database cannot hold",
        _ => "the database failed",
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let (make, reason): (fn(String, _) -> StorageError, &str) = match &e {
            E::Database(db) => {
                let primary = db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map_or(-1, |c| c & 0xff);
                (classify(primary), reason(primary))
            }
            E::Io(_) | E::Tls(_) => (
                StorageError::unavailable,
                "the database file could not be read or written",
            ),
            E::PoolTimedOut => (StorageError::unavailable, "the database is busy"),
            E::PoolClosed | E::WorkerCrashed => {
                (StorageError::unavailable, "the database connection stopped")
            }
            E::RowNotFound
            | E::TypeNotFound { .. }
            | E::ColumnIndexOutOfBounds { .. }
            | E::ColumnNotFound(_)
            | E::ColumnDecode { .. }
            | E::Decode(_) => (
                StorageError::corrupt,
                "a stored row is not what this server expects",
            ),
            E::Configuration(_) | E::InvalidArgument(_) | E::Encode(_) => {
                (StorageError::invalid, "the database refused the request")
            }
            E::Migrate(_) => (
                StorageError::corrupt,
                "the database's schema cannot be brought up to date",
            ),
            _ => (StorageError::unavailable, "the database failed"),
        };
        make(reason.to_owned(), Some(Box::new(e)))
    }
}

impl From<sqlx::migrate::MigrateError> for StorageError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError as M;
        match e {
            // The database failed while migrating: as any other statement.
            M::Execute(e) => e.into(),
            // Applied migrations this build does not know, or one that
            // failed halfway before: not a schema this server can use.
            e => StorageError::corrupt(
                "the database's schema cannot be brought up to date",
                Some(Box::new(e)),
            ),
        }
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        let primary = match &e {
            E::SqliteFailure(failure, _) => Some(match failure.code {
                ErrorCode::ConstraintViolation => code::CONSTRAINT,
                ErrorCode::DatabaseCorrupt => code::CORRUPT,
                ErrorCode::NotADatabase => code::NOTADB,
                ErrorCode::SchemaChanged => code::SCHEMA,
                ErrorCode::TooBig => code::TOOBIG,
                ErrorCode::TypeMismatch => code::MISMATCH,
                ErrorCode::ParameterOutOfRange => code::RANGE,
                ErrorCode::DatabaseBusy => code::BUSY,
                ErrorCode::DatabaseLocked => code::LOCKED,
                ErrorCode::DiskFull => code::FULL,
                ErrorCode::SystemIoFailure => code::IOERR,
                ErrorCode::CannotOpen => code::CANTOPEN,
                ErrorCode::ReadOnly => code::READONLY,
                ErrorCode::PermissionDenied => code::PERM,
                ErrorCode::OutOfMemory => code::NOMEM,
                ErrorCode::FileLockingProtocolFailed => code::PROTOCOL,
                _ => -1,
            }),
            _ => None,
        };
        match primary {
            Some(primary) => classify(primary)(reason(primary).to_owned(), Some(Box::new(e))),
            // A value read back that is not of its column's type or range.
            None if matches!(
                e,
                E::FromSqlConversionFailure(..)
                    | E::IntegralValueOutOfRange(..)
                    | E::InvalidColumnType(..)
                    | E::Utf8Error(..)
                    | E::QueryReturnedNoRows
            ) =>
            {
                StorageError::corrupt(
                    "a stored row is not what this server expects",
                    Some(Box::new(e)),
                )
            }
            None => StorageError::unavailable("the database failed", Some(Box::new(e))),
        }
    }
}

/// The store's own worker (a thread of its own) has stopped: nothing can be
/// appended until the server restarts.
pub(super) fn worker_gone() -> StorageError {
    StorageError::unavailable("the store's writer has stopped", None)
}

/// A thread the store needs could not be started.
pub(super) fn no_thread(e: std::io::Error) -> StorageError {
    StorageError::unavailable("the store could not start a worker", Some(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: ErrorCode) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code,
                extended_code: 0,
            },
            Some("detail".into()),
        )
    }

    /// What a caller is told says what happened, not which driver said it;
    /// the driver's error is kept as the source.
    #[test]
    fn driver_errors_become_what_the_caller_can_act_on() {
        let busy = StorageError::from(failure(ErrorCode::DatabaseBusy));
        assert!(matches!(busy, StorageError::Unavailable { .. }), "{busy:?}");
        assert!(busy.is_transient());
        assert!(std::error::Error::source(&busy).is_some());
        assert!(matches!(
            StorageError::from(failure(ErrorCode::ConstraintViolation)),
            StorageError::Conflict { .. }
        ));
        assert!(matches!(
            StorageError::from(failure(ErrorCode::DatabaseCorrupt)),
            StorageError::Corrupt { .. }
        ));
        assert!(matches!(
            StorageError::from(failure(ErrorCode::TooBig)),
            StorageError::Invalid { .. }
        ));
        assert!(matches!(
            StorageError::from(sqlx::Error::PoolTimedOut),
            StorageError::Unavailable { .. }
        ));
        assert!(matches!(
            StorageError::from(sqlx::Error::RowNotFound),
            StorageError::Corrupt { .. }
        ));
        for e in [
            busy,
            StorageError::from(sqlx::Error::WorkerCrashed),
            worker_gone(),
        ] {
            let shown = e.to_string().to_lowercase();
            for driver in ["sqlx", "rusqlite", "sqlite", "thread"] {
                assert!(!shown.contains(driver), "{shown:?} names {driver}");
            }
        }
    }
}
