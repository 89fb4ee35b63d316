//! Local writes: one INSERT into the `offsync_write` view per write, many per statement
//! for `write_many`.

use sqlx::Connection;
use sqlx::QueryBuilder;
use sqlx::Sqlite;
use sync_core::Error;
use sync_core::store::{LocalWrite, WriteKind};

use crate::SqliteStore;
use crate::codec::{json_text, micros};
use crate::errors::{storage, write_error};

/// Rows per multi-row INSERT: 8 parameters each stays far below SQLite's 32,766 limit.
const ROWS_PER_STATEMENT: usize = 1000;

const INSERT_WRITE: &str =
    "INSERT INTO offsync_write (kind, collection, record_id, data, mutation_id, action, versioned, at) ";

/// The view's columns for one write.
struct WriteRow {
    kind: &'static str,
    data: Option<String>,
    action: Option<String>,
}

fn row(write: &LocalWrite) -> WriteRow {
    match &write.kind {
        WriteKind::Insert { data } => WriteRow { kind: "insert", data: Some(data.as_str().to_owned()), action: None },
        WriteKind::Update { data } => WriteRow { kind: "update", data: Some(data.as_str().to_owned()), action: None },
        WriteKind::Delete => WriteRow { kind: "delete", data: None, action: None },
        WriteKind::Action { name, args } => {
            WriteRow { kind: "action", data: Some(json_text(args)), action: Some(name.clone()) }
        }
    }
}

pub(crate) async fn write(store: &SqliteStore, write: LocalWrite) -> Result<(), Error> {
    let r = row(&write);
    sqlx::query(
        "INSERT INTO offsync_write (kind, collection, record_id, data, mutation_id, action, versioned, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.kind)
    .bind(write.collection.as_str())
    .bind(write.record_id.as_ref().map(|id| id.as_str()))
    .bind(r.data)
    .bind(write.mutation_id.to_string())
    .bind(r.action)
    .bind(i64::from(write.versioned))
    .bind(micros(write.at))
    .execute(&mut *store.write_conn().await?)
    .await
    .map_err(|e| write_error(e, &write.collection, write.record_id.as_ref()))?;
    Ok(())
}

pub(crate) async fn write_many(store: &SqliteStore, writes: Vec<LocalWrite>) -> Result<(), Error> {
    if writes.is_empty() {
        return Ok(());
    }
    if writes.iter().all(|w| w.record_id.is_some() && matches!(w.kind, WriteKind::Insert { .. })) {
        return insert_many(store, &writes).await;
    }
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    for chunk in writes.chunks(ROWS_PER_STATEMENT) {
        let mut builder: QueryBuilder<'_, Sqlite> = QueryBuilder::new(INSERT_WRITE);
        builder.push_values(chunk, |mut b, write| {
            let r = row(write);
            b.push_bind(r.kind)
                .push_bind(write.collection.as_str())
                .push_bind(write.record_id.as_ref().map(|id| id.as_str()))
                .push_bind(r.data)
                .push_bind(write.mutation_id.to_string())
                .push_bind(r.action)
                .push_bind(i64::from(write.versioned))
                .push_bind(micros(write.at));
        });
        if let Err(e) = builder.build().persistent(true).execute(&mut *tx).await {
            let _ = tx.rollback().await;
            let culprit = match &e {
                sqlx::Error::Database(db) if db.message().contains("offsync:") => {
                    Some(find_failing(&mut writer, db.message(), chunk).await?)
                }
                _ => None,
            };
            return Err(match culprit {
                Some(w) => write_error(e, &w.collection, w.record_id.as_ref()),
                None => storage(e),
            });
        }
    }
    tx.commit().await.map_err(storage)
}

/// The bulk path for inserts, two multi-row statements per chunk as a hand-written bulk
/// insert would be. An insert never folds (only a live record can have an unsent create,
/// and an insert requires the record not to be live), so the triggers' work reduces to:
/// write the record unless it is live, and queue an upsert.
async fn insert_many(store: &SqliteStore, writes: &[LocalWrite]) -> Result<(), Error> {
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    for chunk in writes.chunks(ROWS_PER_STATEMENT) {
        let mut records: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("INSERT INTO offsync_records (collection, id, data, deleted, modified_at) ");
        records.push_values(chunk, |mut b, w| {
            b.push_bind(w.collection.as_str())
                .push_bind(w.record_id.as_ref().map(|id| id.as_str()))
                .push_bind(insert_data(w))
                .push_bind(0i64)
                .push_bind(micros(w.at));
        });
        // A live record (stored, or earlier in this batch) is left alone, and the
        // shortfall in changed rows reveals it.
        records.push(
            " ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data, deleted = 0, \
               modified_at = excluded.modified_at WHERE offsync_records.deleted = 1",
        );
        let changed = records.build().persistent(true).execute(&mut *tx).await.map_err(storage)?.rows_affected();
        if changed != chunk.len() as u64 {
            let _ = tx.rollback().await;
            let culprit = find_failing(&mut writer, "offsync:already_exists", chunk).await?;
            return Err(Error::AlreadyExists {
                collection: culprit.collection.clone(),
                id: culprit.record_id.clone().ok_or_else(|| crate::errors::corrupt("insert without record id"))?,
            });
        }
        let mut outbox: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, data, versioned, created_at) ",
        );
        outbox.push_values(chunk, |mut b, w| {
            b.push_bind(w.mutation_id.to_string())
                .push_bind(w.collection.as_str())
                .push_bind(w.record_id.as_ref().map(|id| id.as_str()))
                .push_bind("upsert")
                .push_bind(insert_data(w))
                .push_bind(i64::from(w.versioned))
                .push_bind(micros(w.at));
        });
        outbox.build().persistent(true).execute(&mut *tx).await.map_err(storage)?;
    }
    tx.commit().await.map_err(storage)
}

fn insert_data(w: &LocalWrite) -> Option<&str> {
    match &w.kind {
        WriteKind::Insert { data } | WriteKind::Update { data } => Some(data.as_str()),
        _ => None,
    }
}

/// Finds the write a trigger refused (only on the error path, after the rollback): an
/// insert whose record exists, an update or delete whose record does not, or an insert
/// repeating an id earlier in the batch.
async fn find_failing<'w>(
    conn: &mut sqlx::SqliteConnection,
    message: &str,
    chunk: &'w [LocalWrite],
) -> Result<&'w LocalWrite, Error> {
    let mut seen = std::collections::HashSet::new();
    for w in chunk {
        let Some(id) = &w.record_id else { continue };
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM offsync_records WHERE collection = ? AND id = ? AND deleted = 0)",
        )
        .bind(w.collection.as_str())
        .bind(id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(storage)?;
        let inserted_before = !seen.insert((&w.collection, id));
        let refused = match &w.kind {
            WriteKind::Insert { .. } => message.contains("already_exists") && (exists || inserted_before),
            WriteKind::Update { .. } | WriteKind::Delete => {
                message.contains("not_found") && !exists && !inserted_before
            }
            WriteKind::Action { .. } => false,
        };
        if refused {
            return Ok(w);
        }
    }
    chunk.first().ok_or_else(|| crate::errors::corrupt("empty write batch"))
}
