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
        WriteKind::Insert { data } => WriteRow { kind: "insert", data: Some(json_text(data)), action: None },
        WriteKind::Update { data } => WriteRow { kind: "update", data: Some(json_text(data)), action: None },
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
    .execute(&mut *store.write_conn().await)
    .await
    .map_err(|e| write_error(e, &write.collection, write.record_id.as_ref()))?;
    Ok(())
}

pub(crate) async fn write_many(store: &SqliteStore, writes: Vec<LocalWrite>) -> Result<(), Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut writer = store.write_conn().await;
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
