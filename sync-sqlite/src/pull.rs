//! The pull side: applying a page of changes and its cursors in one transaction.

use sqlx::Connection;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::{QueryBuilder, Sqlite};
use sync_core::pattern::LocalRecordState;
use sync_core::protocol::Change;
use sync_core::store::{CollectionPage, PageApplied, PullDecider};
use sync_core::{CollectionName, Cursor, Error, MutationId, RecordId};

use crate::SqliteStore;
use crate::codec::{json_text, micros, mutation_id, parse_json, record_id, version, version_param};
use crate::errors::storage;

pub(crate) async fn apply_page(
    store: &SqliteStore,
    pages: Vec<CollectionPage>,
    decide: PullDecider<'_>,
    at: DateTime<Utc>,
) -> Result<PageApplied, Error> {
    let mut result = PageApplied::default();
    let now = micros(at);
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    let mut ends = Vec::new();
    for page in &pages {
        if page.reset && page.subscription.is_none() {
            // A replacement starts: whatever an interrupted one staged is stale.
            sqlx::query("DELETE FROM offsync_stage WHERE collection = ?")
                .bind(page.collection.as_str())
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        if let Some(part) = &page.subscription {
            // A subscription's page: its hold on records, then the changes that still
            // apply, its cursor, and at its end what a reset left behind.
            if page.reset {
                crate::subscriptions::mark_stale(&mut tx, &part.id).await?;
            }
            let changes =
                crate::subscriptions::let_go_of_removed(&mut tx, &part.id, &page.collection, &page.changes).await?;
            apply_changes(&mut tx, &page.collection, &changes, decide, now, &mut result).await?;
            crate::subscriptions::hold_live(&mut tx, &part.id, &page.collection, &changes, now).await?;
            ends.push(crate::subscriptions::PageEnd {
                subscription: &part.id,
                cursor: page.cursor.as_ref(),
                finished: part.finished,
            });
        } else if page.stage {
            stage_changes(&mut tx, &page.collection, &page.changes).await?;
        } else {
            apply_changes(&mut tx, &page.collection, &page.changes, decide, now, &mut result).await?;
            if let Some(cursor) = &page.cursor {
                store_cursor(&mut tx, &page.collection, cursor, now).await?;
            }
        }
    }
    result.changed.extend(crate::subscriptions::finish_pages(&mut tx, &ends, now).await?);
    tx.commit().await.map_err(storage)?;
    Ok(result)
}

/// Swaps a staged replacement in, in one transaction (see `LocalStore::finish_replacement`).
pub(crate) async fn finish_replacement(
    store: &SqliteStore,
    collection: &CollectionName,
    cursor: Option<&Cursor>,
    decide: PullDecider<'_>,
    at: DateTime<Utc>,
) -> Result<PageApplied, Error> {
    let mut result = PageApplied::default();
    let now = micros(at);
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    // Staged records go through the same decisions as a page, 1,000 at a time (memory
    // stays bounded; the transaction does not).
    let mut after = String::new();
    loop {
        let rows = sqlx::query(
            "SELECT id, version, deleted, data, mutation_id FROM offsync_stage \
              WHERE collection = ? AND id > ? ORDER BY id LIMIT 1000",
        )
        .bind(collection.as_str())
        .bind(&after)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage)?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("id").map_err(storage)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let data: Option<String> = row.try_get("data").map_err(storage)?;
            changes.push(Change {
                collection: collection.clone(),
                record_id: record_id(row.try_get("id").map_err(storage)?)?,
                version: version(row.try_get("version").map_err(storage)?)?
                    .ok_or_else(|| crate::errors::corrupt("staged change without a version"))?,
                deleted: row.try_get::<i64, _>("deleted").map_err(storage)? != 0,
                removed: false,
                data: data.map(|d| parse_json(&d)).transpose()?,
                mutation_id: row
                    .try_get::<Option<String>, _>("mutation_id")
                    .map_err(storage)?
                    .map(|m| mutation_id(&m))
                    .transpose()?,
            });
        }
        apply_changes(&mut tx, collection, &changes, decide, now, &mut result).await?;
    }
    // What the server no longer has goes, unless local edits or a conflict hold it.
    let swept = sqlx::query(
        "DELETE FROM offsync_records AS r WHERE r.collection = ? \
           AND NOT EXISTS (SELECT 1 FROM offsync_stage s WHERE s.collection = r.collection AND s.id = r.id AND s.deleted = 0) \
           AND NOT EXISTS (SELECT 1 FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id) \
           AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id) \
         RETURNING id, deleted",
    )
    .bind(collection.as_str())
    .fetch_all(&mut *tx)
    .await
    .map_err(storage)?;
    for row in &swept {
        if row.try_get::<i64, _>("deleted").map_err(storage)? == 0 {
            result.changed.push((collection.clone(), record_id(row.try_get("id").map_err(storage)?)?));
        }
    }
    // A conflict held a record the full set no longer has (deleted, its tombstone
    // purged): its server side is now "missing", or the user would settle on a record
    // that no longer exists and no pull would ever say otherwise.
    sqlx::query(
        "UPDATE offsync_conflicts AS c SET server_exists = 0, server_version = NULL, server_deleted = 0, \
           server_data = NULL \
         WHERE c.collection = ? \
           AND NOT EXISTS (SELECT 1 FROM offsync_stage s WHERE s.collection = c.collection AND s.id = c.record_id)",
    )
    .bind(collection.as_str())
    .execute(&mut *tx)
    .await
    .map_err(storage)?;
    sqlx::query("DELETE FROM offsync_stage WHERE collection = ?")
        .bind(collection.as_str())
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    match cursor {
        Some(cursor) => store_cursor(&mut tx, collection, cursor, now).await?,
        None => {
            sqlx::query("DELETE FROM offsync_cursors WHERE collection = ?")
                .bind(collection.as_str())
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
    }
    tx.commit().await.map_err(storage)?;
    Ok(result)
}

/// Stores a collection's cursor and when its page arrived (`now`, in microseconds).
async fn store_cursor(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    collection: &CollectionName,
    cursor: &Cursor,
    now: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO offsync_cursors (collection, cursor, synced_at) VALUES (?, ?, ?) \
         ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor, synced_at = excluded.synced_at",
    )
    .bind(collection.as_str())
    .bind(&cursor.0)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(storage)?;
    Ok(())
}

/// Writes a staged page: the later change of a record replaces the earlier.
async fn stage_changes(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    collection: &CollectionName,
    changes: &[Change],
) -> Result<(), Error> {
    for chunk in changes.chunks(1000) {
        let mut b: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("INSERT INTO offsync_stage (collection, id, version, deleted, data, mutation_id) ");
        b.push_values(chunk, |mut row, change| {
            row.push_bind(collection.as_str())
                .push_bind(change.record_id.as_str())
                .push_bind(version_param(Some(change.version)).unwrap_or(i64::MAX))
                .push_bind(i64::from(change.deleted))
                .push_bind(change.data.as_ref().map(json_text))
                .push_bind(change.mutation_id.as_ref().map(ToString::to_string));
        });
        b.push(
            " ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version, deleted = excluded.deleted, \
               data = excluded.data, mutation_id = excluded.mutation_id",
        );
        b.build().execute(&mut **tx).await.map_err(storage)?;
    }
    Ok(())
}

/// Applies one collection's changes inside the page transaction: local state read in
/// one query, decisions in memory, writes as multi-row statements.
async fn apply_changes(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    collection: &CollectionName,
    changes: &[Change],
    decide: PullDecider<'_>,
    now: i64,
    result: &mut PageApplied,
) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    // The local state of every record the page touches, in one query.
    let ids = Value::from(changes.iter().map(|c| c.record_id.as_str()).collect::<Vec<_>>()).to_string();
    // `unanswered`: the mutation id of the record's oldest queued entry when a push
    // carried it (attempts > 0) and no answer was heard: the server may have applied it.
    let rows = sqlx::query(
        "SELECT r.id, r.server_version, r.deleted, \
                EXISTS (SELECT 1 FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id) AS pending, \
                EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id) AS conflict, \
                (SELECT CASE WHEN o.attempts > 0 THEN o.mutation_id END FROM offsync_outbox o \
                  WHERE o.collection = r.collection AND o.record_id = r.id AND o.status = 0 \
                  ORDER BY o.seq LIMIT 1) AS unanswered \
           FROM offsync_records r \
          WHERE r.collection = ? AND r.id IN (SELECT value FROM json_each(?))",
    )
    .bind(collection.as_str())
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(storage)?;
    let mut local: HashMap<String, LocalRecordState> = HashMap::with_capacity(rows.len());
    let mut unanswered: HashMap<String, MutationId> = HashMap::new();
    for row in &rows {
        let id: String = row.try_get("id").map_err(storage)?;
        if let Some(mutation) = row.try_get::<Option<String>, _>("unanswered").map_err(storage)? {
            unanswered.insert(id.clone(), mutation_id(&mutation)?);
        }
        local.insert(
            id,
            LocalRecordState {
                server_version: version(row.try_get("server_version").map_err(storage)?)?,
                has_pending: row.try_get::<i64, _>("pending").map_err(storage)? != 0,
                in_conflict: row.try_get::<i64, _>("conflict").map_err(storage)? != 0,
                deleted: row.try_get::<i64, _>("deleted").map_err(storage)? != 0,
            },
        );
    }
    let plan = sync_core::page_fold::plan_page(collection, local, &unanswered, changes, decide);
    result.changed.extend(plan.changed.iter().map(|id| (collection.clone(), (*id).clone())));
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (id, row) in plan.writes {
        match row {
            Some((version, data)) => {
                upserts.push((id, version_param(Some(version)).unwrap_or(i64::MAX), Some(json_text(data))));
            }
            None => deletes.push(id),
        }
    }
    let echoes = plan.echoes.iter().map(|(id, version, data)| {
        (id.as_str(), version_param(Some(*version)).unwrap_or(i64::MAX), data.map(json_text))
    });
    let conflicts = plan.conflicts.iter().map(|change| {
        (
            change.record_id.clone(),
            version_param(Some(change.version)),
            change.deleted,
            change.data.as_ref().map(json_text),
        )
    });
    // Multi-row INSERTs with bound parameters: the same statements a hand-written
    // bulk insert would use (7 parameters a row, 1,000 rows a statement).
    for chunk in upserts.chunks(1000) {
        let mut b: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO offsync_records (collection, id, data, deleted, server_version, base, modified_at) ",
        );
        b.push_values(chunk, |mut row, (id, version, data)| {
            row.push_bind(collection.as_str())
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
        b.build().persistent(true).execute(&mut **tx).await.map_err(storage)?;
    }
    if !deletes.is_empty() {
        sqlx::query("DELETE FROM offsync_records WHERE collection = ? AND id IN (SELECT value FROM json_each(?))")
            .bind(collection.as_str())
            .bind(Value::from(deletes).to_string())
            .execute(&mut **tx)
            .await
            .map_err(storage)?;
    }
    for (id, version, base) in echoes {
        sqlx::query(
            "UPDATE offsync_records SET server_version = ?, base = ? \
              WHERE collection = ? AND id = ? AND (server_version IS NULL OR server_version < ?)",
        )
        .bind(version)
        .bind(base)
        .bind(collection.as_str())
        .bind(id)
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
    }
    for (id, version, deleted, data) in conflicts {
        let created = record_conflict(tx, collection, &id, version, deleted, data, now).await?;
        if created {
            result.conflicts.push((collection.clone(), id));
        }
    }
    Ok(())
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
