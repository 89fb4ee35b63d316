//! Reads: records and queries, counts, cursors, the outbox, the client id.

use sqlx::{Row, Sqlite};
use sync_core::store::{Counts, OutboxEntry, Query, StoredRecord};
use sync_core::{ClientId, CollectionName, Cursor, Error, RecordId};
use uuid::Uuid;

use crate::SqliteStore;
use crate::codec::{OUTBOX_COLUMNS, STATE_EXPR, outbox_entry, stored_record};
use crate::errors::storage;
use crate::query_sql::{self, Bind};

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
    let sql = query_sql::select(query);
    let rows = bound(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(|r| stored_record(&query.collection, r)).collect()
}

pub(crate) async fn matching(store: &SqliteStore, query: &Query, ids: &[RecordId]) -> Result<Vec<RecordId>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = query_sql::matching(query, ids);
    let rows = bound(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(|r| crate::codec::record_id(r.try_get("id").map_err(storage)?)).collect()
}

pub(crate) async fn count(store: &SqliteStore, query: &Query) -> Result<u64, Error> {
    let sql = query_sql::count(query);
    let n: i64 =
        bound(&sql).fetch_one(&mut *store.read_conn().await?).await.map_err(storage)?.try_get(0).map_err(storage)?;
    u64::try_from(n).map_err(|_| crate::errors::corrupt("negative count"))
}

/// The SQL with its parameters bound.
fn bound(sql: &query_sql::Sql) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    sql.binds.iter().fold(sqlx::query(&sql.text), |q, b| match b {
        Bind::Null => q.bind(None::<i64>),
        Bind::Int(i) => q.bind(*i),
        Bind::Float(f) => q.bind(*f),
        Bind::Text(t) => q.bind(t.as_str()),
    })
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
