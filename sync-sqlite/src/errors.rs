//! Turns sqlx errors into sync-core's typed errors.

use sync_core::{CollectionName, Error, RecordId, StorageErrorKind};

/// Classifies a sqlx error by SQLite's result code.
pub(crate) fn storage(error: sqlx::Error) -> Error {
    let kind = match &error {
        sqlx::Error::Database(db) => match db.code().as_deref().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff) {
            Some(5 | 6) => StorageErrorKind::Busy,
            Some(13) => StorageErrorKind::Full,
            Some(11 | 26) => StorageErrorKind::Corrupt,
            _ => StorageErrorKind::Io,
        },
        sqlx::Error::PoolTimedOut => StorageErrorKind::Busy,
        _ => StorageErrorKind::Io,
    };
    Error::Storage { kind, message: error.to_string() }
}

/// Stored data that cannot be read back.
pub(crate) fn corrupt(message: impl Into<String>) -> Error {
    Error::Storage { kind: StorageErrorKind::Corrupt, message: message.into() }
}

/// Maps the write triggers' RAISE messages to typed errors.
pub(crate) fn write_error(error: sqlx::Error, collection: &CollectionName, id: Option<&RecordId>) -> Error {
    if let sqlx::Error::Database(db) = &error {
        let message = db.message();
        if let Some(id) = id {
            if message.contains("offsync:already_exists") {
                return Error::AlreadyExists { collection: collection.clone(), id: id.clone() };
            }
            if message.contains("offsync:not_found") {
                return Error::NotFound { collection: collection.clone(), id: id.clone() };
            }
        }
    }
    storage(error)
}
