//! Reads: records and queries, counts, cursors, the outbox, the client id.

use sqlx::{QueryBuilder, Row, Sqlite};
use sync_core::store::{Counts, Order, OutboxEntry, Query, StoredRecord};
use sync_core::{ClientId, CollectionName, Cursor, Error, RecordId};
use uuid::Uuid;

use crate::SqliteStore;
use crate::codec::{OUTBOX_COLUMNS, STATE_EXPR, json_text, outbox_entry, stored_record};
use crate::errors::storage;

pub(crate) async fn client_id(store: &SqliteStore) -> Result<ClientId, Error> {
    sqlx::query("INSERT OR IGNORE INTO offsync_meta (key, value) VALUES ('client_id', ?)")
        .bind(Uuid::now_v7().to_string())
        .execute(&mut *store.write_conn().await?)
        .await
        .map_err(storage)?;
    let id: String = sqlx::query_scalar("SELECT value FROM offsync_meta WHERE key = 'client_id'")
        .fetch_one(&mut *store.write_conn().await?)
        .await
        .map_err(storage)?;
    Ok(ClientId(id))
}

fn record_select() -> String {
    format!("SELECT r.id, r.data, r.server_version, r.modified_at, {STATE_EXPR} AS state FROM offsync_records r ")
}

pub(crate) async fn get(
    store: &SqliteStore,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<Option<StoredRecord>, Error> {
    let sql = format!("{} WHERE r.collection = ? AND r.id = ? AND r.deleted = 0", record_select());
    let row = sqlx::query(&sql)
        .bind(collection.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *store.read_conn().await?)
        .await
        .map_err(storage)?;
    row.map(|r| stored_record(collection, &r)).transpose()
}

pub(crate) async fn query(store: &SqliteStore, query: &Query) -> Result<Vec<StoredRecord>, Error> {
    let select = record_select();
    let mut b: QueryBuilder<'_, Sqlite> = QueryBuilder::new(select);
    b.push("WHERE r.collection = ").push_bind(query.collection.as_str()).push(" AND r.deleted = 0");
    for (field, value) in &query.filters {
        // Both sides go through json_extract, so strings, numbers, booleans and null
        // compare as SQLite values; `IS` makes null equal null.
        b.push(" AND json_extract(r.data, ")
            .push_bind(field.json_path())
            .push(") IS json_extract(")
            .push_bind(json_text(value))
            .push(", '$')");
    }
    if let Some((field, order)) = &query.order_by {
        b.push(" ORDER BY json_extract(r.data, ").push_bind(field.json_path()).push(")");
        b.push(match order {
            Order::Asc => " ASC, r.id ASC",
            Order::Desc => " DESC, r.id DESC",
        });
    } else {
        b.push(" ORDER BY r.id");
    }
    if let Some(limit) = query.limit {
        b.push(" LIMIT ").push_bind(i64::from(limit));
    }
    let rows = b.build().fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(|r| stored_record(&query.collection, r)).collect()
}

pub(crate) async fn counts(store: &SqliteStore) -> Result<Counts, Error> {
    counts_on(&mut *store.read_conn().await?).await
}

/// The counts, read through any connection to a store's database.
pub(crate) async fn counts_on(conn: &mut sqlx::SqliteConnection) -> Result<Counts, Error> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM offsync_outbox WHERE status = 0) AS pending, \
                (SELECT count(*) FROM offsync_conflicts) AS conflicts, \
                (SELECT count(*) FROM offsync_outbox WHERE status = 1) AS failed",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(storage)?;
    let get = |name: &str| -> Result<u64, Error> {
        let n: i64 = row.try_get(name).map_err(storage)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(Counts { pending: get("pending")?, conflicts: get("conflicts")?, failed: get("failed")? })
}

pub(crate) async fn cursor(store: &SqliteStore, collection: &CollectionName) -> Result<Option<Cursor>, Error> {
    let cursor: Option<String> = sqlx::query_scalar("SELECT cursor FROM offsync_cursors WHERE collection = ?")
        .bind(collection.as_str())
        .fetch_optional(&mut *store.read_conn().await?)
        .await
        .map_err(storage)?;
    Ok(cursor.map(Cursor))
}

pub(crate) async fn holds_acknowledged(store: &SqliteStore, collection: &CollectionName) -> Result<bool, Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM offsync_records WHERE collection = ? AND server_version IS NOT NULL)",
    )
    .bind(collection.as_str())
    .fetch_one(&mut *store.read_conn().await?)
    .await
    .map_err(storage)
}

pub(crate) async fn outbox(store: &SqliteStore, only_failed: bool) -> Result<Vec<OutboxEntry>, Error> {
    let filter = if only_failed { "WHERE status = 1" } else { "" };
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM offsync_outbox {filter} ORDER BY seq");
    let rows = sqlx::query(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(outbox_entry).collect()
}
