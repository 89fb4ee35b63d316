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

/// Over `offsync_records`: no subscription holds the record (an evicted membership
/// still holds it: the subscription covers it).
pub(crate) const UNHELD: &str = "NOT EXISTS (SELECT 1 FROM offsync_members m \
     WHERE m.collection = offsync_records.collection AND m.id = offsync_records.id)";

/// Over `offsync_records`: no pending or parked write and no open conflict names the
/// record. Nothing is dropped or evicted without it.
pub(crate) const CLEAN: &str = "NOT EXISTS (SELECT 1 FROM offsync_outbox o \
     WHERE o.collection = offsync_records.collection AND o.record_id = offsync_records.id) \
     AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c \
     WHERE c.collection = offsync_records.collection AND c.record_id = offsync_records.id)";

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
    if row.active {
        restart_if_evicted(&mut writer, &row.id).await?;
    }
    Ok(())
}

/// A subscription held again after the budget evicted some of its records downloads
/// again from the start, which brings them back.
async fn restart_if_evicted(writer: &mut sqlx::SqliteConnection, id: &SubscriptionId) -> Result<(), Error> {
    let mut tx = sqlx::Connection::begin_with(&mut *writer, "BEGIN IMMEDIATE").await.map_err(storage)?;
    let evicted: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM offsync_members WHERE subscription = ? AND evicted = 1)")
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(storage)?;
    if evicted {
        restart(&mut tx, id).await?;
    }
    tx.commit().await.map_err(storage)
}

/// The held or kept-synced subscriptions that cover `id`, evicted, download again.
pub(crate) async fn fetch_again(
    store: &SqliteStore,
    collection: &CollectionName,
    id: &RecordId,
) -> Result<bool, Error> {
    let mut writer = store.write_conn().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *writer, "BEGIN IMMEDIATE").await.map_err(storage)?;
    let holders: Vec<String> = sqlx::query_scalar(
        "SELECT m.subscription FROM offsync_members m JOIN offsync_subscriptions s ON s.id = m.subscription \
          WHERE m.collection = ? AND m.id = ? AND m.evicted = 1 AND (s.active OR s.keep_synced)",
    )
    .bind(collection.as_str())
    .bind(id.as_str())
    .fetch_all(&mut *tx)
    .await
    .map_err(storage)?;
    for holder in &holders {
        restart(&mut tx, &SubscriptionId::from_stored(holder.clone())).await?;
    }
    tx.commit().await.map_err(storage)?;
    Ok(!holders.is_empty())
}

/// A subscription downloads again from the start. Like a reset, its records are marked
/// until sent again, so what left it meanwhile goes when that download ends.
async fn restart(tx: &mut Tx<'_>, id: &SubscriptionId) -> Result<(), Error> {
    mark_stale(tx, id).await?;
    sqlx::query("UPDATE offsync_subscriptions SET cursor = NULL, synced_at = NULL WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut **tx)
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

/// Lets go of what a subscription page takes away, and returns the changes the page
/// still applies. A tombstone is gone for every subscription; a removal lets go of the
/// record for this subscription only, and applies (dropping the record as any removal
/// would) only when no other subscription holds it. The records the page sends with data
/// are held by [`hold_live`], once they are stored.
pub(crate) async fn let_go_of_removed(
    tx: &mut Tx<'_>,
    subscription: &SubscriptionId,
    collection: &CollectionName,
    changes: &[Change],
) -> Result<Vec<Change>, Error> {
    // A page names each record once, so each kind of change is one statement.
    if let Some(gone) = ids_of(changes, |c| c.deleted && !c.removed) {
        sqlx::query("DELETE FROM offsync_members WHERE collection = ? AND id IN (SELECT value FROM json_each(?))")
            .bind(collection.as_str())
            .bind(gone)
            .execute(&mut **tx)
            .await
            .map_err(storage)?;
    }
    let Some(removed) = ids_of(changes, |c| c.removed) else { return Ok(changes.to_vec()) };
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
           AND id IN (SELECT value FROM json_each(?)) AND subscription <> ? AND evicted = 0",
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

/// The subscription holds the records its page sent with data, now stored: each
/// membership notes the record's stored size. A record new to the subscription counts
/// as just used; one fetched again after an eviction keeps its last use (so the same
/// records do not push each other out again), which a read of the missing record moved
/// to when the app asked for it.
pub(crate) async fn hold_live(
    tx: &mut Tx<'_>,
    subscription: &SubscriptionId,
    collection: &CollectionName,
    changes: &[Change],
    now: i64,
) -> Result<(), Error> {
    let Some(live) = ids_of(changes, |c| !c.deleted) else { return Ok(()) };
    sqlx::query(
        "INSERT INTO offsync_members (collection, id, subscription, stale, bytes, used_at, evicted) \
         SELECT ?1, j.value, ?2, 0, \
                coalesce((SELECT octet_length(r.id) + coalesce(octet_length(r.data), 0) + coalesce(octet_length(r.base), 0) \
                            FROM offsync_records r WHERE r.collection = ?1 AND r.id = j.value), 0), \
                ?3, 0 \
           FROM json_each(?4) AS j WHERE true \
         ON CONFLICT (collection, id, subscription) DO UPDATE SET stale = 0, bytes = excluded.bytes, evicted = 0",
    )
    .bind(collection.as_str())
    .bind(subscription.as_str())
    .bind(now)
    .bind(live)
    .execute(&mut **tx)
    .await
    .map_err(storage)?;
    Ok(())
}

/// The ids of the changes `pick` chooses, as a JSON array (None when there are none).
fn ids_of(changes: &[Change], pick: fn(&Change) -> bool) -> Option<String> {
    let ids: Vec<&str> = changes.iter().filter(|c| pick(c)).map(|c| c.record_id.as_str()).collect();
    (!ids.is_empty()).then(|| Value::from(ids).to_string())
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

/// Lets go of every unheld clean record of `collections` (see
/// `LocalStore::let_go_all_unheld`): one statement, a scan of those collections' records.
pub(crate) async fn let_go_all_unheld(
    store: &SqliteStore,
    collections: &[CollectionName],
) -> Result<Vec<(CollectionName, RecordId)>, Error> {
    if collections.is_empty() {
        return Ok(Vec::new());
    }
    let names = Value::from(collections.iter().map(|c| c.as_str()).collect::<Vec<_>>()).to_string();
    let mut writer = store.write_conn().await?;
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "DELETE FROM offsync_records WHERE collection IN (SELECT value FROM json_each(?)) \
               AND {UNHELD} AND {CLEAN} RETURNING collection, id"
    ))
    .bind(names)
    .fetch_all(&mut *writer)
    .await
    .map_err(storage)?;
    rows.into_iter().map(|(c, i)| Ok((collection(c)?, record_id(i)?))).collect()
}

/// Lets go of `records` (see `LocalStore::let_go_unheld`), in one transaction.
pub(crate) async fn let_go_unheld(
    store: &SqliteStore,
    records: &[(CollectionName, RecordId)],
) -> Result<Vec<(CollectionName, RecordId)>, Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(String, String)> = records.iter().map(|(c, i)| (c.to_string(), i.to_string())).collect();
    let mut writer = store.write_conn().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *writer, "BEGIN IMMEDIATE").await.map_err(storage)?;
    let dropped = let_go(&mut tx, &keys).await?;
    tx.commit().await.map_err(storage)?;
    Ok(dropped)
}

/// Drops those of `records` that no subscription holds and that have no pending write
/// and no open conflict; returns them.
async fn let_go(tx: &mut Tx<'_>, records: &[(String, String)]) -> Result<Vec<(CollectionName, RecordId)>, Error> {
    let mut dropped = Vec::new();
    for chunk in records.chunks(500) {
        let keys = Value::from(chunk.iter().map(|(c, i)| serde_json::json!([c, i])).collect::<Vec<_>>()).to_string();
        let rows = sqlx::query(
            &format!(
                "DELETE FROM offsync_records \
                  WHERE (collection, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)) \
                    AND {UNHELD} AND {CLEAN} RETURNING collection, id"
            ),
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
