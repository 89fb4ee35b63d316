//! Conflicts and parked mutations: listing, resolving, retrying, discarding.

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use sync_core::protocol::ServerRecord;
use sync_core::store::{Conflict, StoreResolution};
use sync_core::{CollectionName, Error, MutationId, RecordId};

use crate::SqliteStore;
use crate::codec::{collection, from_micros, json_text, micros, mutation_id, opt_json, record_id, version};
use crate::errors::storage;

const CONFLICT_SELECT: &str = "SELECT c.collection, c.record_id, c.mutation_id, c.server_exists, c.server_version, \
        c.server_deleted, c.server_data, c.detected_at, r.data AS local_data, r.deleted AS local_deleted, \
        r.base, r.server_version AS base_version \
   FROM offsync_conflicts c \
   LEFT JOIN offsync_records r ON r.collection = c.collection AND r.id = c.record_id ";

fn conflict_row(row: &SqliteRow) -> Result<Conflict, Error> {
    let mutation: Option<String> = row.try_get("mutation_id").map_err(storage)?;
    let server_exists: i64 = row.try_get("server_exists").map_err(storage)?;
    let local_deleted: Option<i64> = row.try_get("local_deleted").map_err(storage)?;
    let server = if server_exists != 0 {
        Some(ServerRecord {
            version: version(row.try_get("server_version").map_err(storage)?)?
                .ok_or_else(|| crate::errors::corrupt("conflict without server version"))?,
            deleted: row.try_get::<i64, _>("server_deleted").map_err(storage)? != 0,
            data: opt_json(row.try_get("server_data").map_err(storage)?)?,
        })
    } else {
        None
    };
    let local = match local_deleted {
        Some(0) => opt_json(row.try_get("local_data").map_err(storage)?)?,
        _ => None,
    };
    Ok(Conflict {
        collection: collection(row.try_get("collection").map_err(storage)?)?,
        record_id: record_id(row.try_get("record_id").map_err(storage)?)?,
        mutation_id: mutation.as_deref().map(mutation_id).transpose()?,
        local,
        server,
        base: opt_json(row.try_get("base").map_err(storage)?)?,
        base_version: version(row.try_get("base_version").map_err(storage)?)?,
        detected_at: from_micros(row.try_get("detected_at").map_err(storage)?)?,
    })
}

pub(crate) async fn list(store: &SqliteStore) -> Result<Vec<Conflict>, Error> {
    let sql = format!("{CONFLICT_SELECT} ORDER BY c.detected_at, c.collection, c.record_id");
    let rows = sqlx::query(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(conflict_row).collect()
}

pub(crate) async fn get(
    store: &SqliteStore,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<Option<Conflict>, Error> {
    let sql = format!("{CONFLICT_SELECT} WHERE c.collection = ? AND c.record_id = ?");
    let row = sqlx::query(&sql)
        .bind(collection.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *store.read_conn().await?)
        .await
        .map_err(storage)?;
    row.as_ref().map(conflict_row).transpose()
}

pub(crate) async fn resolve(
    store: &SqliteStore,
    collection: &CollectionName,
    id: &RecordId,
    resolution: StoreResolution,
    mutation: MutationId,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    let sql = format!("{CONFLICT_SELECT} WHERE c.collection = ? AND c.record_id = ?");
    let row = sqlx::query(&sql)
        .bind(collection.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage)?;
    let Some(row) = row else {
        return Err(Error::NoConflict { collection: collection.clone(), id: id.clone() });
    };
    let conflict = conflict_row(&row)?;
    let server_live = conflict.server.as_ref().filter(|s| !s.deleted);
    let server_version = conflict.server.as_ref().and_then(|s| crate::codec::version_param(Some(s.version)));
    let server_data = server_live.and_then(|s| s.data.as_ref()).map(json_text);
    // The record's upserts and deletes are replaced by the resolution; its actions stay.
    on_record(
        &mut tx,
        "DELETE FROM offsync_outbox WHERE collection = ? AND record_id = ? AND op IN ('upsert', 'delete')",
        collection,
        id,
    )
    .await?;
    on_record(&mut tx, "DELETE FROM offsync_conflicts WHERE collection = ? AND record_id = ?", collection, id).await?;
    // What the record holds afterwards, and what (if anything) to push.
    let (local_after, push): (Option<String>, Option<Option<String>>) = match resolution {
        StoreResolution::KeepServer => (server_data.clone(), None),
        StoreResolution::Merged(value) => {
            let text = json_text(&value);
            (Some(text.clone()), Some(Some(text)))
        }
        StoreResolution::KeepLocal => match conflict.local.as_ref().map(json_text) {
            Some(text) => (Some(text.clone()), Some(Some(text))),
            // Deleted locally: push a delete unless the server has no live record either.
            None => (None, server_live.map(|_| None)),
        },
    };
    if local_after.is_none() && push.is_none() && !store_has_other_entries(&mut tx, collection, id).await? {
        on_record(&mut tx, "DELETE FROM offsync_records WHERE collection = ? AND id = ?", collection, id).await?;
    } else {
        sqlx::query(
            "INSERT INTO offsync_records (collection, id, data, deleted, server_version, base, modified_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data, deleted = excluded.deleted, \
               server_version = excluded.server_version, base = excluded.base, modified_at = excluded.modified_at",
        )
        .bind(collection.as_str())
        .bind(id.as_str())
        .bind(&local_after)
        .bind(i64::from(local_after.is_none()))
        .bind(server_version)
        .bind(&server_data)
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    }
    if let Some(data) = push {
        let op = if data.is_some() { "upsert" } else { "delete" };
        sqlx::query(
            "INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, data, versioned, created_at) \
             VALUES (?, ?, ?, ?, ?, 1, ?)",
        )
        .bind(mutation.to_string())
        .bind(collection.as_str())
        .bind(id.as_str())
        .bind(op)
        .bind(data)
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    }
    tx.commit().await.map_err(storage)
}

/// Runs a statement whose two parameters are a record's collection and id; returns the
/// rows it changed.
async fn on_record(
    conn: &mut sqlx::SqliteConnection,
    sql: &'static str,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<u64, Error> {
    let done = sqlx::query(sql).bind(collection.as_str()).bind(id.as_str()).execute(conn).await.map_err(storage)?;
    Ok(done.rows_affected())
}

async fn store_has_other_entries(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM offsync_outbox WHERE collection = ? AND record_id = ?)")
        .bind(collection.as_str())
        .bind(id.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(storage)
}

pub(crate) async fn retry_failed(store: &SqliteStore, id: MutationId) -> Result<(), Error> {
    let done =
        sqlx::query("UPDATE offsync_outbox SET status = 0, last_error = NULL WHERE mutation_id = ? AND status = 1")
            .bind(id.to_string())
            .execute(&mut *store.write_conn().await?)
            .await
            .map_err(storage)?;
    if done.rows_affected() == 0 {
        return Err(Error::NoFailedMutation { id });
    }
    Ok(())
}

pub(crate) async fn discard_failed(
    store: &SqliteStore,
    id: MutationId,
) -> Result<Option<(CollectionName, RecordId)>, Error> {
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    let row =
        sqlx::query("DELETE FROM offsync_outbox WHERE mutation_id = ? AND status = 1 RETURNING collection, record_id")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage)?;
    let Some(row) = row else {
        return Err(Error::NoFailedMutation { id });
    };
    let coll = collection(row.try_get("collection").map_err(storage)?)?;
    let record: Option<String> = row.try_get("record_id").map_err(storage)?;
    let mut reverted = None;
    if let Some(record) = record {
        let record = record_id(record)?;
        if !store_has_other_entries(&mut tx, &coll, &record).await? {
            // Nothing else will change this record: back to what the server acknowledged
            // (gone, when that is nothing or a tombstone).
            let done = on_record(&mut tx, "DELETE FROM offsync_records AS r WHERE r.collection = ? AND r.id = ? AND (r.server_version IS NULL OR r.base IS NULL) \
                   AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id)", &coll, &record).await?;
            let reverted_rows = on_record(&mut tx, "UPDATE offsync_records AS r SET data = base, deleted = (base IS NULL) \
                  WHERE r.collection = ? AND r.id = ? AND r.base IS NOT NULL \
                    AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id)", &coll, &record).await?;
            if done + reverted_rows > 0 {
                reverted = Some((coll, record));
            }
        }
    }
    tx.commit().await.map_err(storage)?;
    Ok(reverted)
}
