//! The push side of the outbox: claiming batches and recording the server's answers.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Connection;
use sync_core::protocol::{ErrorCode, MutationOutcome, Op};
use sync_core::store::{IdAssigned, OutboxEntry, PushApplied, Relations};
use sync_core::{CollectionName, Error};

use crate::SqliteStore;
use crate::codec::{OUTBOX_COLUMNS, json_text, micros, outbox_entry, version_param};
use crate::errors::storage;
use crate::renames;

pub(crate) async fn claim(
    store: &SqliteStore,
    collections: &[CollectionName],
    limit: usize,
    relations: &Relations,
) -> Result<Vec<OutboxEntry>, Error> {
    let names = Value::from(collections.iter().map(|c| c.as_str()).collect::<Vec<_>>()).to_string();
    // The one-to-many guards only when there are foreign keys: apps without them pay
    // nothing for them.
    let keys = (!relations.foreign_keys.is_empty()).then(|| foreign_keys_json(relations));
    let (parents_first, children_deleted_first) =
        if keys.is_some() { (PARENTS_FIRST, CHILDREN_DELETED_FIRST) } else { ("", "") };
    // One statement: choosing the batch, counting the attempt and fixing the base version
    // are atomic, so a local write can never fold into an entry being pushed. A versioned
    // write goes with the version of the last live state the device knows of the record
    // (its `base` holds that state's data), or with base 0, "create only if absent", when
    // it knows none: the server never acknowledged the record to it, or what it knows is
    // a tombstone (its own delete acknowledged, or a deletion pulled). Two devices
    // creating the same id then conflict instead of overwriting, and creating an id again
    // after a deletion the device saw applies, tombstone purged or not.
    // `+o.collection` keeps SQLite off the collection index: walking the outbox in seq
    // order stops after `limit` entries, where the index would visit every entry of the
    // collection and sort them (O(outbox) per batch, measured: push fell to 10k/s).
    let sql = format!(
        "UPDATE offsync_outbox \
            SET attempts = attempts + 1, \
                base_version = CASE WHEN versioned = 1 THEN coalesce( \
                    (SELECT CASE WHEN op = 'action' OR r.base IS NOT NULL THEN r.server_version END \
                       FROM offsync_records r \
                      WHERE r.collection = offsync_outbox.collection AND r.id = offsync_outbox.record_id), \
                    CASE WHEN op = 'action' THEN NULL ELSE 0 END) END \
          WHERE seq IN ( \
            SELECT o.seq FROM offsync_outbox o \
             WHERE o.status = 0 \
               AND +o.collection IN (SELECT value FROM json_each(?)) \
               AND (o.record_id IS NULL OR ( \
                    NOT EXISTS (SELECT 1 FROM offsync_outbox p \
                                 WHERE p.collection = o.collection AND p.record_id = o.record_id AND p.seq < o.seq) \
                AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c \
                                 WHERE c.collection = o.collection AND c.record_id = o.record_id))) \
               {parents_first} \
               {children_deleted_first} \
             ORDER BY o.seq LIMIT ?) \
         RETURNING {OUTBOX_COLUMNS}"
    );
    let mut query = sqlx::query(&sql).bind(names);
    if let Some(keys) = &keys {
        query = query.bind(keys.clone()).bind(keys.clone());
    }
    let rows = query
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *store.write_conn().await?)
        .await
        .map_err(storage)?;
    let mut entries = rows.iter().map(outbox_entry).collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// A child's upsert waits while the parent it points at is stored here and the server
/// never acknowledged it: with server-assigned ids its key is not even known yet, and a
/// server with foreign keys would refuse it. (A parent that is not stored here, or was
/// deleted before it was ever sent, holds nothing.)
const PARENTS_FIRST: &str = "AND NOT EXISTS ( \
    SELECT 1 FROM json_each(?) k \
      JOIN offsync_records p ON p.collection = json_extract(k.value, '$.parent') \
                            AND p.id = json_extract(o.data, json_extract(k.value, '$.path')) \
     WHERE o.op = 'upsert' AND json_extract(k.value, '$.child') = o.collection \
       AND p.server_version IS NULL)";

/// A parent's delete waits while a child that points at it, in its local data or in the
/// data the server has (its base), has mutations queued or parked: children go first.
const CHILDREN_DELETED_FIRST: &str = "AND NOT EXISTS ( \
    SELECT 1 FROM json_each(?) k \
      JOIN offsync_outbox q ON q.collection = json_extract(k.value, '$.child') AND q.seq <> o.seq \
      JOIN offsync_records c ON c.collection = q.collection AND c.id = q.record_id \
     WHERE o.op = 'delete' AND json_extract(k.value, '$.parent') = o.collection \
       AND (json_extract(c.data, json_extract(k.value, '$.path')) = o.record_id \
            OR json_extract(c.base, json_extract(k.value, '$.path')) = o.record_id))";

/// The foreign keys as the JSON the claim reads with `json_each`.
fn foreign_keys_json(relations: &Relations) -> String {
    let keys: Vec<Value> = relations
        .foreign_keys
        .iter()
        .map(|k| json!({"child": k.child.as_str(), "path": k.field.json_path(), "parent": k.parent.as_str()}))
        .collect();
    Value::from(keys).to_string()
}

pub(crate) async fn record_results(
    store: &SqliteStore,
    outcomes: Vec<(OutboxEntry, MutationOutcome)>,
    relations: &Relations,
    at: DateTime<Utc>,
) -> Result<PushApplied, Error> {
    let mut result = PushApplied::default();
    let mut applied_seqs = Vec::new();
    let mut acks = Vec::new();
    let mut renames = Vec::new();
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    for (entry, outcome) in outcomes {
        match outcome {
            MutationOutcome::Applied { version, record_id: server_id } => {
                applied_seqs.push(entry.seq);
                result.applied += 1;
                if let (Some(local_id), Some(server_id), Op::Upsert) = (&entry.record_id, server_id, entry.op) {
                    if *local_id != server_id && relations.server_assigns_ids(&entry.collection) {
                        renames.push(IdAssigned {
                            collection: entry.collection.clone(),
                            local_id: local_id.clone(),
                            server_id,
                        });
                    }
                }
                if let (Some(id), Op::Upsert | Op::Delete) = (&entry.record_id, entry.op) {
                    // The acknowledged data is read from the outbox row itself, below.
                    acks.push(json!({"c": entry.collection.as_str(), "id": id.as_str(), "v": version_param(Some(version)), "s": entry.seq}));
                }
            }
            MutationOutcome::Conflict { server } => {
                let Some(id) = &entry.record_id else {
                    // A conflict on an action without a record cannot be held by a record:
                    // park it so the app sees it.
                    park(
                        &mut tx,
                        &entry,
                        &ErrorCode::Conflict,
                        "the server reported a conflict for an action without a record",
                    )
                    .await?;
                    result.rejected.push((entry, ErrorCode::Conflict, "conflict on an action without a record".into()));
                    continue;
                };
                let (exists, version, deleted, data) = match &server {
                    Some(s) => {
                        (1i64, version_param(Some(s.version)), i64::from(s.deleted), s.data.as_ref().map(json_text))
                    }
                    None => (0, None, 0, None),
                };
                sqlx::query(
                    "INSERT INTO offsync_conflicts \
                       (collection, record_id, mutation_id, server_exists, server_version, server_deleted, server_data, detected_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (collection, record_id) DO UPDATE SET \
                       server_exists = excluded.server_exists, server_version = excluded.server_version, \
                       server_deleted = excluded.server_deleted, server_data = excluded.server_data",
                )
                .bind(entry.collection.as_str())
                .bind(id.as_str())
                .bind(entry.mutation_id.to_string())
                .bind(exists)
                .bind(version)
                .bind(deleted)
                .bind(data)
                .bind(micros(at))
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                result.conflicts.push((entry.collection.clone(), id.clone()));
            }
            MutationOutcome::Rejected { error } => {
                park(&mut tx, &entry, &error.code, &error.message).await?;
                result.rejected.push((entry, error.code, error.message));
            }
        }
    }
    let acks_json = Value::from(acks).to_string();
    if acks_json != "[]" {
        // The acknowledged data becomes the record's base (read from the outbox row, so
        // it is not shipped to SQLite again), and its version the one the next local edit
        // is based on (never moving backwards).
        sqlx::query(
            "UPDATE offsync_records AS r \
                SET server_version = a.v, base = CASE WHEN o.op = 'upsert' THEN o.data END \
               FROM (SELECT json_extract(value, '$.c') AS c, json_extract(value, '$.id') AS id, \
                            json_extract(value, '$.v') AS v, json_extract(value, '$.s') AS s \
                       FROM json_each(?)) AS a \
               JOIN offsync_outbox AS o ON o.seq = a.s \
              WHERE r.collection = a.c AND r.id = a.id \
                AND (r.server_version IS NULL OR r.server_version < a.v)",
        )
        .bind(&acks_json)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    }
    if !applied_seqs.is_empty() {
        sqlx::query("DELETE FROM offsync_outbox WHERE seq IN (SELECT value FROM json_each(?))")
            .bind(Value::from(applied_seqs).to_string())
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
    }
    // A local tombstone whose delete the server applied stays, with the tombstone's
    // version, until the pull that brings the echo of that delete (`pull.rs`): the echo
    // is then known as ours, even when the app has created the id again in between.
    // Renames come last: the acknowledgements above find the records by their local id.
    for rename in renames {
        if let Some(repointed) = renames::rename(&mut tx, &rename, relations).await? {
            result.repointed.extend(repointed);
            result.renamed.push(rename);
        }
    }
    tx.commit().await.map_err(storage)?;
    Ok(result)
}

async fn park(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    entry: &OutboxEntry,
    code: &ErrorCode,
    message: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE offsync_outbox SET status = 1, last_error = ? WHERE seq = ?")
        .bind(format!("{code}: {message}"))
        .bind(entry.seq)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
    Ok(())
}
