//! Reads: records and queries, counts, cursors, the outbox, the client id.

use sqlx::{Row, Sqlite};
use sync_core::store::{Counts, OutboxEntry, Query, RecordData, StoredRecord};
use sync_core::{ClientId, CollectionName, Cursor, Error, RecordId};
use uuid::Uuid;

use crate::SqliteStore;
use crate::codec::{OUTBOX_COLUMNS, STATE_EXPR, outbox_entry, stored_record};
use crate::errors::storage;
use crate::query_sql::{self, Bind, Columns};

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
    let sql = query_sql::select(query, Columns::Tracked);
    let rows = bound(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(|r| stored_record(&query.collection, r)).collect()
}

pub(crate) async fn query_data(store: &SqliteStore, query: &Query) -> Result<Vec<RecordData>, Error> {
    let sql = query_sql::select(query, Columns::Data);
    let rows = bound(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(crate::codec::record_data).collect()
}

pub(crate) async fn matching(store: &SqliteStore, query: &Query, ids: &[RecordId]) -> Result<Vec<RecordId>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = query_sql::matching(query, ids);
    let rows = bound(&sql).fetch_all(&mut *store.read_conn().await?).await.map_err(storage)?;
    rows.iter().map(|r| crate::codec::record_id(r.try_get("id").map_err(storage)?)).collect()
}

pub(crate) async fn matching_each(
    store: &SqliteStore,
    asks: &[(Query, Vec<RecordId>)],
) -> Result<Vec<Vec<RecordId>>, Error> {
    let mut answers = vec![Vec::new(); asks.len()];
    let mut conn = store.read_conn().await?;
    for sql in query_sql::matching_each(asks) {
        for row in bound(&sql).fetch_all(&mut *conn).await.map_err(storage)? {
            let ask: i64 = row.try_get("ask").map_err(storage)?;
            let answer = usize::try_from(ask)
                .ok()
                .and_then(|i| answers.get_mut(i))
                .ok_or_else(|| crate::errors::corrupt(format!("an answer to ask {ask} of {}", asks.len())))?;
            answer.push(crate::codec::record_id(row.try_get("id").map_err(storage)?)?);
        }
    }
    Ok(answers)
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

/// The counts, read through any connection to a store's database: one row the
/// triggers of migration 0007 keep (see there), so a refresh costs the same with a
/// million queued mutations as with none.
pub(crate) async fn counts_on(conn: &mut sqlx::SqliteConnection) -> Result<Counts, Error> {
    // Debug builds (every test of the workspace) also count, in the same statement (one
    // snapshot, whatever other processes commit), so a write path that escaped the
    // triggers fails the test that took it instead of drifting silently.
    let sql = if cfg!(debug_assertions) { CHECKED } else { KEPT };
    let row = sqlx::query(sql).fetch_one(&mut *conn).await.map_err(storage)?;
    let get = |name: &str| -> Result<u64, Error> {
        let n: i64 = row.try_get(name).map_err(storage)?;
        u64::try_from(n).map_err(|_| crate::errors::corrupt(format!("negative {name} count")))
    };
    let kept = Counts { pending: get("pending")?, conflicts: get("conflicts")?, failed: get("failed")? };
    if cfg!(debug_assertions) {
        let counted = Counts {
            pending: get("pending_counted")?,
            conflicts: get("conflicts_counted")?,
            failed: get("failed_counted")?,
        };
        if counted != kept {
            return Err(crate::errors::corrupt(format!("kept counts {kept:?} differ from a recount {counted:?}")));
        }
    }
    Ok(kept)
}

/// The kept counts.
const KEPT: &str = "SELECT pending, failed, conflicts FROM offsync_counts WHERE id = 0";

/// The kept counts beside the rows' own, for debug builds.
const CHECKED: &str = "SELECT pending, failed, conflicts, \
        (SELECT count(*) FROM offsync_outbox WHERE status = 0) AS pending_counted, \
        (SELECT count(*) FROM offsync_outbox WHERE status = 1) AS failed_counted, \
        (SELECT count(*) FROM offsync_conflicts) AS conflicts_counted \
    FROM offsync_counts WHERE id = 0";

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
