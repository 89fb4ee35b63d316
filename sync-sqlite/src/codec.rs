//! Conversions between sync-core values and SQLite columns.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use sync_core::protocol::Op;
use sync_core::store::{OutboxEntry, PendingChange, RecordData, RecordState, StoredRecord};
use sync_core::{CollectionName, Error, MutationId, RecordId, Version};

use crate::errors::{corrupt, storage};

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A stored timestamp; one out of chrono's range is corruption, not 1970.
pub(crate) fn from_micros(us: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("stored timestamp {us} is out of range")))
}

pub(crate) fn json_text(value: &Value) -> String {
    value.to_string()
}

pub(crate) fn parse_json(text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("stored JSON does not parse: {e}")))
}

pub(crate) fn opt_json(text: Option<String>) -> Result<Option<Value>, Error> {
    text.as_deref().map(parse_json).transpose()
}

/// A stored version (NULL: none); a negative one is corruption, not "never synced".
pub(crate) fn version(v: Option<i64>) -> Result<Option<Version>, Error> {
    v.map(|v| u64::try_from(v).map(Version).map_err(|_| corrupt(format!("stored version {v} is negative")))).transpose()
}

pub(crate) fn version_param(v: Option<Version>) -> Option<i64> {
    v.and_then(|v| i64::try_from(v.0).ok())
}

fn parse_op(text: &str) -> Result<Op, Error> {
    match text {
        "upsert" => Ok(Op::Upsert),
        "delete" => Ok(Op::Delete),
        "action" => Ok(Op::Action),
        other => Err(corrupt(format!("unknown outbox op {other:?}"))),
    }
}

pub(crate) fn collection(text: String) -> Result<CollectionName, Error> {
    CollectionName::new(text).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn record_id(text: String) -> Result<RecordId, Error> {
    RecordId::new(text).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn mutation_id(text: &str) -> Result<MutationId, Error> {
    MutationId::parse(text).map_err(|e| corrupt(e.to_string()))
}

/// The columns every outbox query selects, in this order.
pub(crate) const OUTBOX_COLUMNS: &str = "seq, mutation_id, collection, record_id, op, action, data, base_version, versioned, created_at, attempts, last_error";

pub(crate) fn outbox_entry(row: &SqliteRow) -> Result<OutboxEntry, Error> {
    let get_err = storage;
    let mutation: String = row.try_get("mutation_id").map_err(get_err)?;
    let record: Option<String> = row.try_get("record_id").map_err(get_err)?;
    let op: String = row.try_get("op").map_err(get_err)?;
    let attempts: i64 = row.try_get("attempts").map_err(get_err)?;
    Ok(OutboxEntry {
        seq: row.try_get("seq").map_err(get_err)?,
        mutation_id: mutation_id(&mutation)?,
        collection: collection(row.try_get("collection").map_err(get_err)?)?,
        record_id: record.map(record_id).transpose()?,
        op: parse_op(&op)?,
        action: row.try_get("action").map_err(get_err)?,
        data: opt_json(row.try_get("data").map_err(get_err)?)?,
        base_version: version(row.try_get("base_version").map_err(get_err)?)?,
        versioned: row.try_get::<i64, _>("versioned").map_err(get_err)? != 0,
        created_at: from_micros(row.try_get("created_at").map_err(get_err)?)?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("stored attempt count {attempts}")))?,
        last_error: row.try_get("last_error").map_err(get_err)?,
    })
}

/// The state column computed by record queries: `conflict`, `failed`, the op of the
/// newest queued entry (`upsert`, `delete`, `action`), or null when nothing waits. Each
/// part is a lookup in the conflicts' primary key or the outbox's (collection, record,
/// seq) index, so a state costs no extra read per row.
pub(crate) const STATE_EXPR: &str = "CASE \
    WHEN EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id) THEN 'conflict' \
    WHEN EXISTS (SELECT 1 FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id AND o.status = 1) THEN 'failed' \
    ELSE (SELECT o.op FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id ORDER BY o.seq DESC LIMIT 1) \
    END";

/// A record's state from the state column and whether the server ever acknowledged it.
pub(crate) fn record_state(state: Option<&str>, acknowledged: bool) -> Result<RecordState, Error> {
    Ok(match state {
        None => RecordState::Synced,
        Some("conflict") => RecordState::Conflict,
        Some("failed") => RecordState::Failed,
        Some("upsert") if acknowledged => RecordState::Pending(PendingChange::Update),
        Some("upsert") => RecordState::Pending(PendingChange::Create),
        Some("delete") => RecordState::Pending(PendingChange::Delete),
        Some("action") => RecordState::Pending(PendingChange::Action),
        Some(other) => return Err(corrupt(format!("stored outbox op {other:?}"))),
    })
}

pub(crate) fn stored_record(collection_name: &CollectionName, row: &SqliteRow) -> Result<StoredRecord, Error> {
    let data: Option<String> = row.try_get("data").map_err(storage)?;
    let state: Option<String> = row.try_get("state").map_err(storage)?;
    let server_version = version(row.try_get("server_version").map_err(storage)?)?;
    Ok(StoredRecord {
        collection: collection_name.clone(),
        id: record_id(row.try_get("id").map_err(storage)?)?,
        data: opt_json(data)?.unwrap_or(Value::Null),
        server_version,
        state: record_state(state.as_deref(), server_version.is_some())?,
        modified_at: from_micros(row.try_get("modified_at").map_err(storage)?)?,
    })
}

/// A row of a data-only select (`query_sql::Columns::Data`). A live record's data is
/// never NULL; one that is reads as corruption, not as an empty record.
pub(crate) fn record_data(row: &SqliteRow) -> Result<RecordData, Error> {
    let json: Option<String> = row.try_get("data").map_err(storage)?;
    let id = record_id(row.try_get("id").map_err(storage)?)?;
    let json = json.ok_or_else(|| corrupt(format!("record {id} has no data")))?;
    Ok(RecordData { id, json })
}

#[cfg(test)]
mod tests {
    use sync_core::StorageErrorKind;

    use super::*;

    fn is_corrupt<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
        matches!(result, Err(Error::Storage { kind: StorageErrorKind::Corrupt, .. }))
    }

    #[test]
    fn stored_values_that_cannot_be_are_corruption_not_defaults() {
        assert_eq!(version(None).ok(), Some(None));
        assert_eq!(version(Some(0)).ok(), Some(Some(Version(0))));
        assert_eq!(version(Some(7)).ok(), Some(Some(Version(7))));
        assert!(is_corrupt(version(Some(-1))), "a negative version is not 'never synced'");
        assert_eq!(from_micros(0).ok(), DateTime::from_timestamp_micros(0));
        assert_eq!(from_micros(1_700_000_000_000_000).map(|t| t.timestamp()).ok(), Some(1_700_000_000));
        assert!(is_corrupt(from_micros(i64::MAX)), "an unreadable time is not 1970");
        assert!(is_corrupt(from_micros(i64::MIN)));
    }

    #[test]
    fn record_states_from_the_state_column() {
        let pending = RecordState::Pending;
        for (column, acknowledged, expected) in [
            (None, true, Some(RecordState::Synced)),
            (Some("conflict"), true, Some(RecordState::Conflict)),
            (Some("failed"), false, Some(RecordState::Failed)),
            (Some("upsert"), false, Some(pending(PendingChange::Create))),
            (Some("upsert"), true, Some(pending(PendingChange::Update))),
            (Some("delete"), true, Some(pending(PendingChange::Delete))),
            (Some("action"), true, Some(pending(PendingChange::Action))),
            (Some("rename"), true, None),
        ] {
            assert_eq!(record_state(column, acknowledged).ok(), expected, "{column:?} {acknowledged}");
        }
    }
}
