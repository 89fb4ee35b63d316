//! The pull side: applying a page of changes and its cursors in one transaction.

use sqlx::Connection;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::{QueryBuilder, Sqlite};
use sync_core::pattern::{LocalRecordState, PullAction};
use sync_core::store::{CollectionPage, PageApplied, PullDecider};
use sync_core::{CollectionName, Error, RecordId};

use crate::SqliteStore;
use crate::codec::{json_text, micros, version, version_param};
use crate::errors::storage;

pub(crate) async fn apply_page(
    store: &SqliteStore,
    pages: Vec<CollectionPage>,
    decide: PullDecider<'_>,
    at: DateTime<Utc>,
) -> Result<PageApplied, Error> {
    let mut result = PageApplied::default();
    let now = micros(at);
    let mut writer = store.write_conn().await;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    for page in &pages {
        if page.reset {
            // The cursor was too old: drop what is clean and take the full set that follows.
            sqlx::query(
                "DELETE FROM offsync_records AS r WHERE r.collection = ? \
                   AND NOT EXISTS (SELECT 1 FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id) \
                   AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id)",
            )
            .bind(page.collection.as_str())
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            sqlx::query("DELETE FROM offsync_cursors WHERE collection = ?")
                .bind(page.collection.as_str())
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        if page.changes.is_empty() {
            continue;
        }
        // The local state of every record the page touches, in one query.
        let ids = Value::from(page.changes.iter().map(|c| c.record_id.as_str()).collect::<Vec<_>>()).to_string();
        let rows = sqlx::query(
            "SELECT r.id, r.server_version, r.deleted, \
                    EXISTS (SELECT 1 FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id) AS pending, \
                    EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id) AS conflict \
               FROM offsync_records r \
              WHERE r.collection = ? AND r.id IN (SELECT value FROM json_each(?))",
        )
        .bind(page.collection.as_str())
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage)?;
        let mut local: HashMap<String, LocalRecordState> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id").map_err(storage)?;
            local.insert(
                id,
                LocalRecordState {
                    server_version: version(row.try_get("server_version").map_err(storage)?),
                    has_pending: row.try_get::<i64, _>("pending").map_err(storage)? != 0,
                    in_conflict: row.try_get::<i64, _>("conflict").map_err(storage)? != 0,
                    deleted: row.try_get::<i64, _>("deleted").map_err(storage)? != 0,
                },
            );
        }
        // The last applied change of each record wins (a page may hold several).
        let mut applied: HashMap<&str, Option<(i64, Option<String>)>> = HashMap::new();
        let mut conflicts = Vec::new();
        for change in &page.changes {
            let state = local.get(change.record_id.as_str());
            match decide(&page.collection, state, change) {
                PullAction::Skip => {}
                PullAction::Apply => {
                    if change.deleted {
                        if state.is_some() {
                            applied.insert(change.record_id.as_str(), None);
                            result.changed.push((page.collection.clone(), change.record_id.clone()));
                        }
                    } else {
                        let version = version_param(Some(change.version)).unwrap_or(i64::MAX);
                        applied.insert(change.record_id.as_str(), Some((version, change.data.as_ref().map(json_text))));
                        result.changed.push((page.collection.clone(), change.record_id.clone()));
                    }
                    // A later change to the same record in this page sees this one.
                    local.insert(
                        change.record_id.to_string(),
                        LocalRecordState {
                            server_version: Some(change.version),
                            has_pending: false,
                            in_conflict: false,
                            deleted: change.deleted,
                        },
                    );
                }
                PullAction::Conflict | PullAction::RefreshConflict => {
                    let data = change.data.as_ref().map(json_text);
                    conflicts.push((
                        change.record_id.clone(),
                        version_param(Some(change.version)),
                        change.deleted,
                        data,
                    ));
                    if let Some(state) = local.get_mut(change.record_id.as_str()) {
                        state.in_conflict = true;
                    }
                }
            }
        }
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (id, row) in applied {
            match row {
                Some((version, data)) => upserts.push((id, version, data)),
                None => deletes.push(id),
            }
        }
        // Multi-row INSERTs with bound parameters: the same statements a hand-written
        // bulk insert would use (7 parameters a row, 1,000 rows a statement).
        for chunk in upserts.chunks(1000) {
            let mut b: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
                "INSERT INTO offsync_records (collection, id, data, deleted, server_version, base, modified_at) ",
            );
            b.push_values(chunk, |mut row, (id, version, data)| {
                row.push_bind(page.collection.as_str())
                    .push_bind(*id)
                    .push_bind(data.as_deref())
                    .push_bind(0i64)
                    .push_bind(*version)
                    .push_bind(data.as_deref())
                    .push_bind(now);
            });
            b.push(
                " ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data, deleted = 0, \
                   server_version = excluded.server_version, base = excluded.base, modified_at = excluded.modified_at",
            );
            b.build().persistent(true).execute(&mut *tx).await.map_err(storage)?;
        }
        if !deletes.is_empty() {
            sqlx::query("DELETE FROM offsync_records WHERE collection = ? AND id IN (SELECT value FROM json_each(?))")
                .bind(page.collection.as_str())
                .bind(Value::from(deletes).to_string())
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        for (id, version, deleted, data) in conflicts {
            let created = record_conflict(&mut tx, &page.collection, &id, version, deleted, data, now).await?;
            if created {
                result.conflicts.push((page.collection.clone(), id));
            }
        }
    }
    for page in &pages {
        if let Some(cursor) = &page.cursor {
            sqlx::query("INSERT INTO offsync_cursors (collection, cursor) VALUES (?, ?) ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor")
                .bind(page.collection.as_str())
                .bind(&cursor.0)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
    }
    tx.commit().await.map_err(storage)?;
    Ok(result)
}

/// Stores the server's side of a conflict found by a pull; true when it is new.
async fn record_conflict(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    collection: &CollectionName,
    id: &RecordId,
    version: Option<i64>,
    deleted: bool,
    data: Option<String>,
    now: i64,
) -> Result<bool, Error> {
    let existed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM offsync_conflicts WHERE collection = ? AND record_id = ?)")
            .bind(collection.as_str())
            .bind(id.as_str())
            .fetch_one(&mut **tx)
            .await
            .map_err(storage)?;
    sqlx::query(
        "INSERT INTO offsync_conflicts \
           (collection, record_id, mutation_id, server_exists, server_version, server_deleted, server_data, detected_at) \
         VALUES (?, ?, (SELECT mutation_id FROM offsync_outbox WHERE collection = ? AND record_id = ? ORDER BY seq LIMIT 1), \
                 1, ?, ?, ?, ?) \
         ON CONFLICT (collection, record_id) DO UPDATE SET \
           server_exists = 1, server_version = excluded.server_version, \
           server_deleted = excluded.server_deleted, server_data = excluded.server_data",
    )
    .bind(collection.as_str())
    .bind(id.as_str())
    .bind(collection.as_str())
    .bind(id.as_str())
    .bind(version)
    .bind(i64::from(deleted))
    .bind(data)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(storage)?;
    Ok(!existed)
}
