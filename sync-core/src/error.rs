//! The one public error type of sync-core, classified by blame and recoverability.

use crate::ids::{CollectionName, MutationId, RecordId};

/// What went wrong in the local store (the `LocalStore` implementation says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The database stayed locked by another writer past the busy timeout.
    Busy,
    /// The disk or the database is full.
    Full,
    /// The database file is damaged or is not a database.
    Corrupt,
    /// The store was written by a newer version (a schema this one does not know); it
    /// was left unchanged.
    Incompatible,
    /// Any other I/O or database failure.
    Io,
}

/// Every error sync-core and the stores and transports built on it return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A collection name does not match `[a-z][a-z0-9_]{0,62}`.
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidCollectionName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The collection was not registered with the engine.
    #[error("unknown collection {name:?}")]
    UnknownCollection {
        /// The name as given.
        name: String,
    },
    /// A record id is empty, too long or holds control characters.
    #[error("invalid record id {id:?}: {reason}")]
    InvalidRecordId {
        /// The id as given.
        id: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An account id is empty, too long or holds control characters.
    #[error("invalid account id {id:?}: {reason}")]
    InvalidAccountId {
        /// The id as given.
        id: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Credentials that cannot be used: an empty token, or one with characters an HTTP
    /// header cannot carry. The token itself is never part of the message.
    #[error("invalid credentials for account {account:?}: {reason}")]
    InvalidCredentials {
        /// The account the credentials were for.
        account: String,
        /// Why they are refused.
        reason: &'static str,
    },
    /// Credentials or a store of another person: the store (its records, queue and
    /// conflicts) belongs to `bound`, and nothing of it is read or sent for `given`.
    /// Sign out and open the other person's store instead.
    #[error("the store belongs to account {bound:?}, not {given:?}")]
    AccountMismatch {
        /// The account the store belongs to.
        bound: String,
        /// The account that was offered.
        given: String,
    },
    /// The app's token provider failed: it returned an unusable token (empty, or not
    /// sendable as a bearer token), panicked, or kept failing. Syncing pauses
    /// (`auth_required`) until the app supplies credentials; nothing queued is dropped.
    #[error("token provider: {message}")]
    TokenProvider {
        /// What went wrong (never the token itself).
        message: String,
    },
    /// The local store's encryption key is of the wrong form, does not open the store
    /// (another key; a key for a plain store; no key for an encrypted one), or this
    /// build cannot encrypt. Nothing on disk was changed.
    #[error("encryption key: {message}")]
    EncryptionKey {
        /// What is wrong (never the key itself).
        message: String,
    },
    /// A mutation id is not a UUID.
    #[error("invalid mutation id {id:?}")]
    InvalidMutationId {
        /// The id as given.
        id: String,
    },
    /// The engine builder was given an inconsistent configuration.
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An update or delete named a record that does not exist locally.
    #[error("record {collection}/{id} not found")]
    NotFound {
        /// The collection.
        collection: CollectionName,
        /// The record id.
        id: RecordId,
    },
    /// An insert named a record id that already exists locally.
    #[error("record {collection}/{id} already exists")]
    AlreadyExists {
        /// The collection.
        collection: CollectionName,
        /// The record id.
        id: RecordId,
    },
    /// The collection's pattern does not accept local writes (read-only patterns).
    #[error("collection {collection} is read-only on this device")]
    ReadOnlyCollection {
        /// The collection.
        collection: CollectionName,
    },
    /// A record's data does not (de)serialize as the collection's entity type.
    #[error("record {collection}/{id} does not fit the entity type: {message}")]
    InvalidRecord {
        /// The collection.
        collection: CollectionName,
        /// The record id.
        id: String,
        /// serde's explanation.
        message: String,
    },
    /// A query used a field path that is not `name(.name)*` of ASCII letters, digits, `_`.
    #[error("invalid query: {message}")]
    InvalidQuery {
        /// What is wrong.
        message: String,
    },
    /// The app's `ServerMapping` refused a record.
    #[error("mapping of {collection} failed: {message}")]
    Mapping {
        /// The collection.
        collection: CollectionName,
        /// The mapping's explanation.
        message: String,
    },
    /// The server (or transport) answered something that is not a valid reply; nothing
    /// of it was applied.
    #[error("malformed response: {message}")]
    MalformedResponse {
        /// What is wrong with it.
        message: String,
    },
    /// The server could not be reached (connection refused, DNS, network down).
    #[error("server unreachable: {message}")]
    Unreachable {
        /// The transport's explanation.
        message: String,
    },
    /// A transient failure: timeout, 5xx, 429. Retried with backoff.
    #[error("transient failure: {message}")]
    Transient {
        /// The transport's explanation.
        message: String,
    },
    /// The server refused the credentials (401). Pushes pause until new credentials.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's explanation.
        message: String,
    },
    /// The server refused a whole request permanently (a 4xx other than 401 and 429).
    #[error("request rejected ({status} {code}): {message}")]
    Rejected {
        /// The HTTP status or equivalent.
        status: u16,
        /// The machine-readable code from the error body.
        code: crate::protocol::ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The local store failed.
    #[error("local store failure ({kind:?}): {message}")]
    Storage {
        /// The class of failure.
        kind: StorageErrorKind,
        /// The store's explanation.
        message: String,
    },
    /// No open conflict exists for this record.
    #[error("no open conflict for {collection}/{id}")]
    NoConflict {
        /// The collection.
        collection: CollectionName,
        /// The record id.
        id: RecordId,
    },
    /// No parked (failed) mutation has this id.
    #[error("no failed mutation {id}")]
    NoFailedMutation {
        /// The mutation id.
        id: MutationId,
    },
    /// The sync unit was dropped from the queue by a later trigger with `discard_queued`.
    #[error("sync unit {unit:?} was discarded from the queue")]
    Discarded {
        /// The unit.
        unit: String,
    },
    /// Another process that opened the same store (an app and its sync service) is
    /// syncing it now: it pushes this process's queued writes too. This engine tries
    /// again itself when that process's lease lapses (it died) or the next trigger comes.
    #[error("another process is syncing this store (its lease lapses at {until})")]
    SyncedElsewhere {
        /// When the other process's lease lapses unless renewed.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The engine has shut down.
    #[error("the sync engine has shut down")]
    Shutdown,
}

impl Error {
    /// True when trying the same thing again later may succeed without any change by the
    /// app or the user: unreachable server, transient failures and a busy database.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::Transient { .. } | Error::Storage { kind: StorageErrorKind::Busy, .. }
        )
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Error::MalformedResponse { message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        assert!(Error::Transient { message: "503".into() }.is_retryable());
        assert!(Error::Unreachable { message: "refused".into() }.is_retryable());
        assert!(!Error::Unauthorized { message: "401".into() }.is_retryable());
        assert!(!Error::malformed("x").is_retryable());
        assert!(Error::Storage { kind: StorageErrorKind::Busy, message: "locked".into() }.is_retryable());
        assert!(!Error::Storage { kind: StorageErrorKind::Full, message: "full".into() }.is_retryable());
    }
}
