//! Server-assigned ids: renaming a record the server stored under an id of its own, and
//! pointing its children's foreign keys at the new id, inside the push-results
//! transaction.

use sqlx::{Row, Sqlite, Transaction};
use sync_core::store::{IdAssigned, Relations};
use sync_core::{CollectionName, Error, RecordId};

use crate::errors::storage;

/// Renames `rename.local_id` to `rename.server_id`: the record (and the id field of its
/// data and base), its queued mutations, its conflict, the foreign keys of every child
/// record and queued child upsert pointing at it; and remembers the mapping. Returns the
/// children whose keys changed, or None when the rename could not be done: a record with
/// the server's id already holds local changes here (a local id that collides with the
/// server's id space); then nothing is renamed and the record keeps its local id.
pub(crate) async fn rename(
    tx: &mut Transaction<'_, Sqlite>,
    rename: &IdAssigned,
    relations: &Relations,
) -> Result<Option<Vec<(CollectionName, RecordId)>>, Error> {
    let (collection, local, server) = (rename.collection.as_str(), rename.local_id.as_str(), rename.server_id.as_str());
    // A record already stored under the server's id is our own create, echoed by a pull
    // after an answer that was lost: the local record replaces it. One with local changes
    // is left alone.
    let occupied: Option<i64> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM offsync_outbox WHERE collection = ?1 AND record_id = ?2) \
             OR EXISTS (SELECT 1 FROM offsync_conflicts WHERE collection = ?1 AND record_id = ?2) \
           FROM offsync_records WHERE collection = ?1 AND id = ?2",
    )
    .bind(collection)
    .bind(server)
    .fetch_optional(&mut **tx)
    .await
    .map_err(storage)?;
    match occupied {
        Some(0) => {
            sqlx::query("DELETE FROM offsync_records WHERE collection = ? AND id = ?")
                .bind(collection)
                .bind(server)
                .execute(&mut **tx)
                .await
                .map_err(storage)?;
        }
        Some(_) => {
            tracing::warn!(collection, local, server, "server-assigned id is taken by a local record; not renamed");
            return Ok(None);
        }
        None => {}
    }
    let id_path = relations
        .server_ids
        .iter()
        .find(|(c, _)| c == &rename.collection)
        .and_then(|(_, field)| field.as_ref())
        .map(|f| f.json_path());
    // The record, its queued entries and its conflict move to the server's id; the id
    // field is rewritten only where the data has it. Every statement binds (collection,
    // local id, server id, id field path) as ?1-?4.
    const MOVES: [&str; 3] = [
        "UPDATE offsync_records \
            SET id = ?3, \
                data = CASE WHEN ?4 IS NOT NULL AND json_type(data, ?4) IS NOT NULL THEN json_set(data, ?4, ?3) ELSE data END, \
                base = CASE WHEN ?4 IS NOT NULL AND json_type(base, ?4) IS NOT NULL THEN json_set(base, ?4, ?3) ELSE base END \
          WHERE collection = ?1 AND id = ?2",
        "UPDATE offsync_outbox \
            SET record_id = ?3, \
                data = CASE WHEN op = 'upsert' AND ?4 IS NOT NULL AND json_type(data, ?4) IS NOT NULL \
                            THEN json_set(data, ?4, ?3) ELSE data END \
          WHERE collection = ?1 AND record_id = ?2",
        "UPDATE offsync_conflicts SET record_id = ?3 WHERE collection = ?1 AND record_id = ?2 AND ?4 IS ?4",
    ];
    for sql in MOVES {
        sqlx::query(sql)
            .bind(collection)
            .bind(local)
            .bind(server)
            .bind(&id_path)
            .execute(&mut **tx)
            .await
            .map_err(storage)?;
    }
    let mut repointed = Vec::new();
    for key in relations.foreign_keys.iter().filter(|k| k.parent == rename.collection) {
        let path = key.field.json_path();
        let rows = sqlx::query(
            "UPDATE offsync_records SET data = json_set(data, ?2, ?4) \
              WHERE collection = ?1 AND json_extract(data, ?2) = ?3 RETURNING id",
        )
        .bind(key.child.as_str())
        .bind(&path)
        .bind(local)
        .bind(server)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage)?;
        for row in rows {
            let id: String = row.try_get(0).map_err(storage)?;
            repointed.push((key.child.clone(), RecordId::new(id)?));
        }
        sqlx::query(
            "UPDATE offsync_outbox SET data = json_set(data, ?2, ?4) \
              WHERE collection = ?1 AND op = 'upsert' AND json_extract(data, ?2) = ?3",
        )
        .bind(key.child.as_str())
        .bind(&path)
        .bind(local)
        .bind(server)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
    }
    sqlx::query(
        "INSERT INTO offsync_id_map (collection, local_id, server_id) VALUES (?, ?, ?) \
         ON CONFLICT (collection, local_id) DO UPDATE SET server_id = excluded.server_id",
    )
    .bind(collection)
    .bind(local)
    .bind(server)
    .execute(&mut **tx)
    .await
    .map_err(storage)?;
    Ok(Some(repointed))
}

/// The server's id for a record created here as `local_id`.
pub(crate) async fn server_id(
    store: &crate::SqliteStore,
    collection: &CollectionName,
    local_id: &RecordId,
) -> Result<Option<RecordId>, Error> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT server_id FROM offsync_id_map WHERE collection = ? AND local_id = ?")
            .bind(collection.as_str())
            .bind(local_id.as_str())
            .fetch_optional(&mut *store.read_conn().await?)
            .await
            .map_err(storage)?;
    id.map(RecordId::new).transpose()
}
