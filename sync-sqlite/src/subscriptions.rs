//! Subscriptions in the store (migration 0008): their rows, which records each holds
//! (`offsync_members`), and letting go of records no subscription holds any more.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sync_core::protocol::{Change, SubscriptionQuery};
use sync_core::subscription::{SubscriptionId, SubscriptionRow};
use sync_core::{CollectionName, Cursor, Error, RecordId};

use crate::SqliteStore;
use crate::codec::{collection, from_micros, micros, record_id};
use crate::errors::storage;

type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

fn corrupt(message: String) -> Error {
    Error::Storage { kind: sync_core::StorageErrorKind::Corrupt, message }
}

pub(crate) async fn save(store: &SqliteStore, row: &SubscriptionRow) -> Result<(), Error> {
    let query = serde_json::to_string(&row.query).map_err(|e| corrupt(format!("subscription query: {e}")))?;
    let ttl = i64::try_from(row.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut writer = store.write_conn().await?;
    sqlx::query(
        "INSERT INTO offsync_subscriptions (id, collection, query, ttl_ms, keep_synced, active, released_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET query = excluded.query, ttl_ms = excluded.ttl_ms, \
           keep_synced = excluded.keep_synced, active = excluded.active, released_at = excluded.released_at",
    )
    .bind(row.id.as_str())
    .bind(row.query.collection.as_str())
    .bind(query)
    .bind(ttl)
    .bind(row.keep_synced)
    .bind(row.active)
    .bind(row.released_at.map(micros))
    .execute(&mut *writer)
    .await
    .map_err(storage)?;
    Ok(())
}

pub(crate) async fn all(store: &SqliteStore) -> Result<Vec<SubscriptionRow>, Error> {
    let rows = sqlx::query(
        "SELECT id, query, cursor, ttl_ms, keep_synced, active, released_at, synced_at FROM offsync_subscriptions ORDER BY id",
    )
    .fetch_all(&mut *store.read_conn().await?)
    .await
    .map_err(storage)?;
    rows.iter()
        .map(|row| {
            let query: String = row.try_get("query").map_err(storage)?;
            let query: SubscriptionQuery =
                serde_json::from_str(&query).map_err(|e| corrupt(format!("stored subscription: {e}")))?;
            let ttl: i64 = row.try_get("ttl_ms").map_err(storage)?;
            let at = |name: &str| -> Result<_, Error> {
                row.try_get::<Option<i64>, _>(name).map_err(storage)?.map(from_micros).transpose()
            };
            Ok(SubscriptionRow {
                id: SubscriptionId::from_stored(row.try_get("id").map_err(storage)?),
                query,
                cursor: row.try_get::<Option<String>, _>("cursor").map_err(storage)?.map(Cursor),
                ttl: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
                keep_synced: row.try_get("keep_synced").map_err(storage)?,
                active: row.try_get("active").map_err(storage)?,
                released_at: at("released_at")?,
                synced_at: at("synced_at")?,
            })
        })
        .collect()
}

/// Forgets `ids` and lets go of what only they held, in one transaction.
pub(crate) async fn drop_all(
    store: &SqliteStore,
    ids: &[SubscriptionId],
) -> Result<Vec<(CollectionName, RecordId)>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids = Value::from(ids.iter().map(|i| i.as_str()).collect::<Vec<_>>()).to_string();
    let mut writer = store.write_conn().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *writer, "BEGIN IMMEDIATE").await.map_err(storage)?;
    let held: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM offsync_members WHERE subscription IN (SELECT value FROM json_each(?)) RETURNING collection, id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(storage)?;
    sqlx::query("DELETE FROM offsync_subscriptions WHERE id IN (SELECT value FROM json_each(?))")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
    let dropped = let_go(&mut tx, &held).await?;
    tx.commit().await.map_err(storage)?;
    Ok(dropped)
}

/// Keeps a subscription page's hold on records and returns the changes the page still
/// applies. A record sent with data is held by the subscription; a tombstone is gone for
/// every subscription; a removal lets go of the record for this subscription only, and
/// applies (dropping the record as any removal would) only when no other subscription
/// holds it.
pub(crate) async fn hold(
    tx: &mut Tx<'_>,
    subscription: &SubscriptionId,
    collection: &CollectionName,
    changes: &[Change],
) -> Result<Vec<Change>, Error> {
    // A page names each record once, so each kind of change is one statement.
    let ids = |pick: fn(&Change) -> bool| {
        let ids: Vec<&str> = changes.iter().filter(|c| pick(c)).map(|c| c.record_id.as_str()).collect();
        (!ids.is_empty()).then(|| Value::from(ids).to_string())
    };
    if let Some(live) = ids(|c| !c.deleted) {
        sqlx::query(
            "INSERT INTO offsync_members (collection, id, subscription, stale) \
             SELECT ?, value, ?, 0 FROM json_each(?) WHERE true \
             ON CONFLICT (collection, id, subscription) DO UPDATE SET stale = 0",
        )
        .bind(collection.as_str())
        .bind(subscription.as_str())
        .bind(live)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
    }
    if let Some(gone) = ids(|c| c.deleted && !c.removed) {
        sqlx::query("DELETE FROM offsync_members WHERE collection = ? AND id IN (SELECT value FROM json_each(?))")
            .bind(collection.as_str())
            .bind(gone)
            .execute(&mut **tx)
            .await
            .map_err(storage)?;
    }
    let Some(removed) = ids(|c| c.removed) else { return Ok(changes.to_vec()) };
    sqlx::query(
        "DELETE FROM offsync_members WHERE collection = ? AND subscription = ? \
           AND id IN (SELECT value FROM json_each(?))",
    )
    .bind(collection.as_str())
    .bind(subscription.as_str())
    .bind(&removed)
    .execute(&mut **tx)
    .await
    .map_err(storage)?;
    let held: HashSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT id FROM offsync_members WHERE collection = ? \
           AND id IN (SELECT value FROM json_each(?)) AND subscription <> ?",
    )
    .bind(collection.as_str())
    .bind(&removed)
    .bind(subscription.as_str())
    .fetch_all(&mut **tx)
    .await
    .map_err(storage)?
    .into_iter()
    .collect();
    Ok(changes.iter().filter(|c| !(c.removed && held.contains(c.record_id.as_str()))).cloned().collect())
}

/// A subscription's download starts over: its records are marked until sent again.
pub(crate) async fn mark_stale(tx: &mut Tx<'_>, subscription: &SubscriptionId) -> Result<(), Error> {
    sqlx::query("UPDATE offsync_members SET stale = 1 WHERE subscription = ?")
        .bind(subscription.as_str())
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Where a subscription's page left it: its cursor, and whether its download ended.
pub(crate) struct PageEnd<'a> {
    pub(crate) subscription: &'a SubscriptionId,
    pub(crate) cursor: Option<&'a Cursor>,
    pub(crate) finished: bool,
}

/// Stores the subscriptions' cursors (and, for those whose download ended, the synced
/// time), and lets go of what a reset marked and the server did not send again: two
/// statements for all the subscriptions of a pull page, however many there are.
pub(crate) async fn finish_pages(
    tx: &mut Tx<'_>,
    ends: &[PageEnd<'_>],
    now: i64,
) -> Result<Vec<(CollectionName, RecordId)>, Error> {
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Value> = ends
        .iter()
        .map(|e| serde_json::json!([e.subscription.as_str(), e.cursor.map(|c| c.0.as_str()), e.finished]))
        .collect();
    sqlx::query(
        "UPDATE offsync_subscriptions SET cursor = coalesce(p.cursor, offsync_subscriptions.cursor), \
           synced_at = CASE WHEN p.finished THEN ? ELSE offsync_subscriptions.synced_at END \
           FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS cursor, \
                        json_extract(value, '$[2]') AS finished FROM json_each(?)) AS p \
          WHERE offsync_subscriptions.id = p.id",
    )
    .bind(now)
    .bind(Value::from(rows).to_string())
    .execute(&mut **tx)
    .await
    .map_err(storage)?;
    let finished: Vec<&str> = ends.iter().filter(|e| e.finished).map(|e| e.subscription.as_str()).collect();
    if finished.is_empty() {
        return Ok(Vec::new());
    }
    let stale: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM offsync_members WHERE stale = 1 AND subscription IN (SELECT value FROM json_each(?)) \
         RETURNING collection, id",
    )
    .bind(Value::from(finished).to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(storage)?;
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let_go(tx, &stale).await
}

/// Drops those of `records` that no subscription holds and that have no pending write
/// and no open conflict; returns them.
async fn let_go(tx: &mut Tx<'_>, records: &[(String, String)]) -> Result<Vec<(CollectionName, RecordId)>, Error> {
    let mut dropped = Vec::new();
    for chunk in records.chunks(500) {
        let keys = Value::from(chunk.iter().map(|(c, i)| serde_json::json!([c, i])).collect::<Vec<_>>()).to_string();
        let rows = sqlx::query(
            "DELETE FROM offsync_records \
              WHERE (collection, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)) \
                AND NOT EXISTS (SELECT 1 FROM offsync_members m \
                                 WHERE m.collection = offsync_records.collection AND m.id = offsync_records.id) \
                AND NOT EXISTS (SELECT 1 FROM offsync_outbox o \
                                 WHERE o.collection = offsync_records.collection AND o.record_id = offsync_records.id) \
                AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c \
                                 WHERE c.collection = offsync_records.collection AND c.record_id = offsync_records.id) \
              RETURNING collection, id",
        )
        .bind(keys)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage)?;
        for row in rows {
            dropped.push((
                collection(row.try_get("collection").map_err(storage)?)?,
                record_id(row.try_get("id").map_err(storage)?)?,
            ));
        }
    }
    Ok(dropped)
}
