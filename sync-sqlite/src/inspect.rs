//! Looking inside a store without an engine: a summary (schema, identity, counts, each
//! collection's records, queue and cursor, the sync lease) and one record in full, with
//! its base and queued mutations. For tools (the `offsync` CLI) and support screens;
//! everything is read through the store's readers, so a store opened with
//! [`SqliteStore::open_read_only`] answers it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sync_core::lease::Lease;
use sync_core::store::{Counts, OutboxEntry, RecordState};
use sync_core::{CollectionName, Cursor, Error, RecordId, Version};

use crate::SqliteStore;
use crate::codec::{
    OUTBOX_COLUMNS, STATE_EXPR, collection, from_micros, opt_json, outbox_entry, record_state, version,
};
use crate::errors::storage;

/// A store at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSummary {
    /// The newest schema step applied to the file (its migration number).
    pub schema_version: i64,
    /// The device's client id, once an engine has asked for it.
    pub client_id: Option<String>,
    /// The account the store is bound to, if any.
    pub account: Option<String>,
    /// Queued, conflicted and parked counts, as the engine's status shows them.
    pub counts: Counts,
    /// Every collection that holds records, a cursor or queued mutations, by name.
    pub collections: Vec<CollectionSummary>,
    /// The sync lease as stored: who syncs the store now (it may have lapsed).
    pub lease: Option<Lease>,
}

/// One collection in a [`StoreSummary`].
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSummary {
    /// The collection.
    pub name: CollectionName,
    /// Live records stored here.
    pub records: u64,
    /// Mutations waiting to be sent (not parked).
    pub pending: u64,
    /// The server's cursor for it; None before its first page.
    pub cursor: Option<Cursor>,
    /// When it last took a page from the server (None: never, or before offsync
    /// recorded it).
    pub synced_at: Option<DateTime<Utc>>,
}

/// One record in full, as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordDetail {
    /// The collection.
    pub collection: CollectionName,
    /// The record id.
    pub id: RecordId,
    /// The local data (None once deleted here).
    pub data: Option<Value>,
    /// The data the server last acknowledged (the base of a three-way merge).
    pub base: Option<Value>,
    /// Deleted here (a pending delete or a tombstone not yet swept).
    pub deleted: bool,
    /// The server version the local data is based on (None: never acknowledged).
    pub server_version: Option<Version>,
    /// Its sync state.
    pub state: RecordState,
    /// When it last changed, locally or from the server.
    pub modified_at: DateTime<Utc>,
    /// Its mutations in the outbox, oldest first.
    pub queued: Vec<QueuedMutation>,
}

/// A mutation in the outbox, and whether it is parked.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMutation {
    /// The entry.
    pub entry: OutboxEntry,
    /// Refused by the server and parked until retried or discarded (the ones behind
    /// it wait).
    pub parked: bool,
}

pub(crate) async fn summary(store: &SqliteStore) -> Result<StoreSummary, Error> {
    let mut conn = store.read_conn().await?;
    let schema_version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(storage)?;
    let meta =
        |key: &'static str| sqlx::query_scalar::<_, String>("SELECT value FROM offsync_meta WHERE key = ?").bind(key);
    let client_id = meta("client_id").fetch_optional(&mut *conn).await.map_err(storage)?;
    let account = meta("account").fetch_optional(&mut *conn).await.map_err(storage)?;
    let rows = sqlx::query(
        "SELECT n.collection, \
                (SELECT COUNT(*) FROM offsync_records r WHERE r.collection = n.collection AND r.deleted = 0) AS records, \
                (SELECT COUNT(*) FROM offsync_outbox o WHERE o.collection = n.collection AND o.status = 0) AS pending, \
                c.cursor, c.synced_at \
           FROM (SELECT collection FROM offsync_records UNION SELECT collection FROM offsync_cursors \
                 UNION SELECT collection FROM offsync_outbox) n \
           LEFT JOIN offsync_cursors c ON c.collection = n.collection \
          ORDER BY n.collection",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(storage)?;
    let collections = rows
        .iter()
        .map(|row| {
            Ok(CollectionSummary {
                name: collection(row.try_get("collection").map_err(storage)?)?,
                records: count(row.try_get("records").map_err(storage)?),
                pending: count(row.try_get("pending").map_err(storage)?),
                cursor: row.try_get::<Option<String>, _>("cursor").map_err(storage)?.map(Cursor),
                synced_at: row.try_get::<Option<i64>, _>("synced_at").map_err(storage)?.map(from_micros).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let lease = sqlx::query("SELECT holder, expires_at FROM offsync_lease WHERE name = 'sync'")
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?
        .map(|row| {
            Ok::<_, Error>(Lease {
                holder: row.try_get("holder").map_err(storage)?,
                expires_at: from_micros(row.try_get("expires_at").map_err(storage)?)?,
            })
        })
        .transpose()?;
    let counts = crate::reads::counts_on(&mut conn).await?;
    Ok(StoreSummary { schema_version, client_id, account, counts, collections, lease })
}

pub(crate) async fn record(
    store: &SqliteStore,
    collection_name: &CollectionName,
    id: &RecordId,
) -> Result<Option<RecordDetail>, Error> {
    let mut conn = store.read_conn().await?;
    let sql = format!(
        "SELECT r.data, r.base, r.deleted, r.server_version, r.modified_at, {STATE_EXPR} AS state \
           FROM offsync_records r WHERE r.collection = ? AND r.id = ?"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(collection_name.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?
    else {
        return Ok(None);
    };
    let server_version = version(row.try_get("server_version").map_err(storage)?)?;
    let state: Option<String> = row.try_get("state").map_err(storage)?;
    let queued = sqlx::query(&format!(
        "SELECT {OUTBOX_COLUMNS}, status FROM offsync_outbox WHERE collection = ? AND record_id = ? ORDER BY seq"
    ))
    .bind(collection_name.as_str())
    .bind(id.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(storage)?
    .iter()
    .map(|row| {
        let parked = row.try_get::<i64, _>("status").map_err(storage)? == 1;
        Ok(QueuedMutation { entry: outbox_entry(row)?, parked })
    })
    .collect::<Result<Vec<_>, Error>>()?;
    Ok(Some(RecordDetail {
        collection: collection_name.clone(),
        id: id.clone(),
        data: opt_json(row.try_get("data").map_err(storage)?)?,
        base: opt_json(row.try_get("base").map_err(storage)?)?,
        deleted: row.try_get::<i64, _>("deleted").map_err(storage)? != 0,
        server_version,
        state: record_state(state.as_deref(), server_version.is_some())?,
        modified_at: from_micros(row.try_get("modified_at").map_err(storage)?)?,
        queued,
    }))
}

/// A `COUNT(*)` as a count (SQLite never answers a negative one).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}
