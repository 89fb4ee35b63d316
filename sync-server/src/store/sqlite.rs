//! `SqliteServerStore`: the embedded default backend. One writer at a time (SQLite's
//! rule), so a change's seq is assigned and committed in order: a cursor can never pass
//! a change that commits later.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::skeleton::{
    self, AudienceStatements, Dialect, FeedPage, MatchPage, MatchShape, PositionedWrite, PullStatements,
    PurgeStatements, PushStatements, corrupt,
};
use super::{
    Asker, PoolUse, PullItem, PullJob, PullPage, PushContext, PushJob, ServerStore, SubscriptionItem, Touched,
    detached, rolling_back_on_release,
};
use std::collections::BTreeMap;

use sync_core::CollectionName;

use crate::config::CollectionConfig;
use crate::error::ServerError;
use crate::logic::{StoredRecord, WireResult};
use crate::rules::ReadScope;
use crate::subscriptions::{self, Key, Subscription, SubscriptionIndex};

/// The SQLite server store.
#[derive(Debug, Clone)]
pub struct SqliteServerStore {
    /// The one connection every write goes through: a pool of one, so that pushes queue
    /// for it in arrival order instead of each holding a connection and waiting on
    /// SQLite's lock (whose busy handler sleeps and retries: with hundreds of clients,
    /// throughput fell while the CPU idled).
    writer: SqlitePool,
    /// Read-only connections for pulls, which WAL lets run beside the writer; the writer
    /// itself for an in-memory database (other connections would see another database).
    readers: SqlitePool,
    epoch: String,
}

impl SqliteServerStore {
    /// Opens (creating if needed) and migrates `sqlite://path` (or `sqlite::memory:`).
    ///
    /// # Errors
    /// [`ServerError::Database`] when it cannot be opened or migrated.
    pub async fn open(url: &str) -> Result<Self, ServerError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Only another process on the same file can hold the lock the writer waits for.
            .busy_timeout(Duration::from_secs(10));
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        // One connection, never closed for being idle or old: an in-memory database
        // lives as long as it does. Requests wait for it in a fair queue.
        let writer = rolling_back_on_release(SqlitePoolOptions::new())
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| ServerError::Database { message: format!("migration failed: {e}"), retryable: false })?;
        sqlx::query("INSERT OR IGNORE INTO sync_meta (key, value) VALUES ('epoch', ?), ('seq', '0')")
            .bind(Uuid::now_v7().simple().to_string()[..12].to_owned())
            .execute(&writer)
            .await?;
        let epoch: String =
            sqlx::query_scalar("SELECT value FROM sync_meta WHERE key = 'epoch'").fetch_one(&writer).await?;
        let readers = if memory {
            writer.clone()
        } else {
            rolling_back_on_release(SqlitePoolOptions::new())
                .max_connections(8)
                .min_connections(0)
                .idle_timeout(Some(Duration::from_secs(600)))
                .max_lifetime(Some(Duration::from_secs(1800)))
                .connect_with(options.read_only(true))
                .await?
        };
        Ok(Self { writer, readers, epoch })
    }

    /// SQLite's plan (`EXPLAIN QUERY PLAN`, one step a line) for a page of the first
    /// phase of `subscription` under `scope`: an operator's check that a subscription
    /// reads its index's range, not the collection.
    ///
    /// # Errors
    /// [`ServerError::Database`], also when the subscription's index does not exist
    /// (`INDEXED BY` fails rather than scan).
    pub async fn explain_subscription(
        &self,
        subscription: &Subscription,
        scope: &ReadScope,
    ) -> Result<String, ServerError> {
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            skeleton::matching_sql(&SQLITE, subscription, scope, false, MatchShape::Page)
        );
        let rows =
            bind_matching(sqlx::query(&sql), subscription, scope, None)?.bind(1000i64).fetch_all(&self.readers).await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("detail")?))
            .collect::<Result<Vec<_>, ServerError>>()
            .map(|l| l.join("\n"))
    }
}

fn stored(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRecord, ServerError> {
    let data: Option<String> = row.try_get("data")?;
    let version: i64 = row.try_get("version")?;
    Ok(StoredRecord {
        version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        owner: row.try_get("owner")?,
        data: data.map(|d| serde_json::from_str(&d)).transpose().map_err(|e| corrupt(e.to_string()))?,
    })
}

#[async_trait]
impl ServerStore for SqliteServerStore {
    fn pool_use(&self) -> Vec<PoolUse> {
        vec![PoolUse::of("writer", &self.writer), PoolUse::of("readers", &self.readers)]
    }

    async fn push(&self, job: PushJob) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError> {
        let store = self.clone();
        detached(|asker| async move { store.push_now(&asker, &job.context(), &job.mutations).await }).await
    }

    async fn pull(&self, job: PullJob) -> Result<PullPage, ServerError> {
        let store = self.clone();
        detached(|asker| async move { store.pull_now(&asker, &job.items, &job.subscriptions, job.limit).await }).await
    }

    async fn prepare_rules(
        &self,
        collections: &BTreeMap<CollectionName, CollectionConfig>,
    ) -> Result<u64, ServerError> {
        let mut keyed = 0;
        for (name, config) in collections {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            keyed += skeleton::rebuild_audience_in(&mut *tx, name.as_str(), &config.rules.read).await?;
            tx.commit().await?;
        }
        Ok(keyed)
    }

    async fn purge_tombstones(&self, older_than: DateTime<Utc>) -> Result<u64, ServerError> {
        let store = self.clone();
        detached(|_| async move { store.purge_now(older_than).await }).await
    }

    async fn prepare_indexes(
        &self,
        collections: &BTreeMap<CollectionName, CollectionConfig>,
    ) -> Result<(), ServerError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sync_records' \
              AND name LIKE 'sync\\_sub\\_%' ESCAPE '\\'",
        )
        .fetch_all(&mut *tx)
        .await?;
        let wanted = subscriptions::declared(collections);
        let (stale, missing) = subscriptions::plan_indexes(&existing, &wanted);
        for name in stale {
            sqlx::query(&format!("DROP INDEX IF EXISTS \"{name}\"")).execute(&mut *tx).await?;
        }
        for index in missing {
            sqlx::query(&sub_index_sql(index)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl SqliteServerStore {
    async fn push_now(
        &self,
        asker: &Asker,
        ctx: &PushContext<'_>,
        raw: &[Value],
    ) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError> {
        let mut conn = self.writer.acquire().await?;
        asker.still_waiting()?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let answer = skeleton::push_in(&mut *tx, ctx, raw).await?;
        tx.commit().await?;
        Ok(answer)
    }

    async fn pull_now(
        &self,
        asker: &Asker,
        items: &[PullItem],
        subscriptions: &[SubscriptionItem],
        limit: usize,
    ) -> Result<PullPage, ServerError> {
        // One read transaction: every query sees the same snapshot, so the feed's end
        // read first is exactly what the pages can see.
        let mut conn = self.readers.acquire().await?;
        asker.still_waiting()?;
        let mut tx = conn.begin().await?;
        let page = skeleton::pull_in(&mut *tx, &self.epoch, items, subscriptions, limit).await?;
        tx.commit().await?;
        Ok(page)
    }

    async fn purge_now(&self, older_than: DateTime<Utc>) -> Result<u64, ServerError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let purged = skeleton::purge_in(&mut *tx, older_than).await?;
        tx.commit().await?;
        Ok(purged)
    }
}

/// The head position, kept as text in `sync_meta`.
async fn read_head(conn: &mut SqliteConnection) -> Result<i64, ServerError> {
    let head: String = sqlx::query_scalar("SELECT value FROM sync_meta WHERE key = 'seq'").fetch_one(conn).await?;
    head.parse().map_err(|_| corrupt("bad seq counter"))
}

/// SQLite's statements. Batches travel as one JSON array each, unpacked with
/// `json_each`: a push costs a few statements, not a round trip per mutation. The write
/// transaction is `BEGIN IMMEDIATE` on the one writer, so positions commit in order.
#[async_trait]
impl PushStatements for SqliteConnection {
    async fn head(&mut self) -> Result<i64, ServerError> {
        read_head(self).await
    }

    async fn ledger(&mut self, user: &str, ids: &[Uuid]) -> Result<Vec<(String, String)>, ServerError> {
        let ids = Value::from(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()).to_string();
        Ok(sqlx::query_as(
            "SELECT mutation_id, result FROM sync_ledger WHERE user_name = ? AND mutation_id IN (SELECT value FROM json_each(?))",
        )
        .bind(user)
        .bind(ids)
        .fetch_all(self)
        .await?)
    }

    async fn records(&mut self, keys: &[(String, String)]) -> Result<Vec<(String, String, StoredRecord)>, ServerError> {
        let keys = Value::from(keys.iter().map(|(c, r)| json!([c, r])).collect::<Vec<_>>()).to_string();
        let rows = sqlx::query(
            "SELECT r.collection, r.id, r.owner, r.version, r.deleted, r.data FROM sync_records r \
              WHERE (r.collection, r.id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
        )
        .bind(keys)
        .fetch_all(self)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("collection")?, row.try_get("id")?, stored(row)?))).collect()
    }

    async fn purged_versions(&mut self) -> Result<Vec<(String, i64)>, ServerError> {
        Ok(sqlx::query_as("SELECT collection, max_version FROM sync_purged").fetch_all(self).await?)
    }

    async fn write_records(&mut self, rows: &[PositionedWrite<'_>], now: i64) -> Result<(), ServerError> {
        let rows: Vec<Value> = rows
            .iter()
            .map(|w| {
                json!([
                    w.collection,
                    w.id,
                    w.record.owner,
                    w.record.version,
                    i64::from(w.record.deleted),
                    w.record.data.as_ref().map(Value::to_string),
                    w.seq,
                    w.mutation_id
                ])
            })
            .collect();
        sqlx::query(
            "INSERT INTO sync_records (collection, id, owner, version, deleted, data, seq, mutation_id, updated_at) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                    json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
                    json_extract(value, '$[6]'), json_extract(value, '$[7]'), ? \
               FROM json_each(?) WHERE true \
             ON CONFLICT (collection, id) DO UPDATE SET owner = excluded.owner, version = excluded.version, \
               deleted = excluded.deleted, data = excluded.data, seq = excluded.seq, \
               mutation_id = excluded.mutation_id, updated_at = excluded.updated_at",
        )
        .bind(now)
        .bind(Value::from(rows).to_string())
        .execute(self)
        .await?;
        Ok(())
    }

    async fn write_audience(&mut self, rows: &[PositionedWrite<'_>]) -> Result<(), ServerError> {
        let rows = Value::from(
            rows.iter()
                .map(|w| json!([w.collection, w.id, w.seq, w.keys.into_iter().flatten().collect::<Vec<_>>()]))
                .collect::<Vec<_>>(),
        )
        .to_string();
        // Keys the record holds now stay present; the others it held become absent.
        sqlx::query(
            "UPDATE sync_access SET seq = w.seq, \
               present = sync_access.key IN (SELECT value FROM json_each(w.keys)) \
             FROM (SELECT json_extract(value, '$[0]') AS c, json_extract(value, '$[1]') AS id, \
                          json_extract(value, '$[2]') AS seq, json_extract(value, '$[3]') AS keys FROM json_each(?)) w \
             WHERE sync_access.collection = w.c AND sync_access.id = w.id AND sync_access.present = 1",
        )
        .bind(&rows)
        .execute(&mut *self)
        .await?;
        sqlx::query(
            "INSERT INTO sync_access (collection, id, key, seq, present) \
             SELECT json_extract(w.value, '$[0]'), json_extract(w.value, '$[1]'), k.value, json_extract(w.value, '$[2]'), 1 \
               FROM json_each(?) w, json_each(json_extract(w.value, '$[3]')) k WHERE true \
             ON CONFLICT (collection, id, key) DO UPDATE SET seq = excluded.seq, present = 1",
        )
        .bind(&rows)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn set_head(&mut self, head: i64) -> Result<(), ServerError> {
        sqlx::query("UPDATE sync_meta SET value = ? WHERE key = 'seq'").bind(head.to_string()).execute(self).await?;
        Ok(())
    }

    async fn remember(&mut self, user: &str, entries: &[(String, String)]) -> Result<(), ServerError> {
        let entries = Value::from(entries.iter().map(|(id, result)| json!([id, result])).collect::<Vec<_>>());
        sqlx::query(
            "INSERT INTO sync_ledger (user_name, mutation_id, result) \
             SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)",
        )
        .bind(user)
        .bind(entries.to_string())
        .execute(self)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl PullStatements for SqliteConnection {
    async fn head(&mut self) -> Result<i64, ServerError> {
        read_head(self).await
    }

    async fn purged_through(&mut self, collection: &str) -> Result<i64, ServerError> {
        Ok(sqlx::query_scalar("SELECT coalesce(max(through_seq), 0) FROM sync_purged WHERE collection = ?")
            .bind(collection)
            .fetch_one(self)
            .await?)
    }

    async fn page(
        &mut self,
        collection: &str,
        after: i64,
        limit: i64,
        scope: &ReadScope,
        filter: Option<&Subscription>,
    ) -> Result<FeedPage, ServerError> {
        let sql = page_sql(scope, filter);
        let query = bind_scope(sqlx::query(&sql).bind(collection).bind(after).bind(limit), scope)?;
        let terms = filter.map(Subscription::terms).unwrap_or_default();
        let row = bind_values(query, terms.iter().map(|t| t.2)).fetch_one(self).await?;
        Ok(FeedPage { count: row.try_get("n")?, last: row.try_get("last")?, json: row.try_get("page")? })
    }

    async fn more_after(&mut self, collection: &str, after: i64, scope: &ReadScope) -> Result<bool, ServerError> {
        let sql = more_sql(scope);
        let query = sqlx::query(&sql).bind(collection).bind(after);
        let row = bind_scope(query, scope)?.fetch_one(self).await?;
        Ok(row.try_get::<bool, _>(0)?)
    }

    async fn matching(
        &mut self,
        subscription: &Subscription,
        scope: &ReadScope,
        after: Option<&Key>,
        limit: i64,
    ) -> Result<MatchPage, ServerError> {
        let sql = skeleton::matching_sql(&SQLITE, subscription, scope, after.is_some(), MatchShape::Page);
        let row = bind_matching(sqlx::query(&sql), subscription, scope, after)?.bind(limit).fetch_one(self).await?;
        let last: Option<String> = row.try_get("last")?;
        Ok(MatchPage {
            count: row.try_get("n")?,
            last: last.as_deref().map(skeleton::parse_key).transpose()?,
            json: row.try_get("page")?,
        })
    }

    async fn more_matching(
        &mut self,
        subscription: &Subscription,
        scope: &ReadScope,
        after: &Key,
    ) -> Result<bool, ServerError> {
        let sql = skeleton::matching_sql(&SQLITE, subscription, scope, true, MatchShape::Exists);
        let row = bind_matching(sqlx::query(&sql), subscription, scope, Some(after))?.fetch_one(self).await?;
        Ok(row.try_get::<bool, _>(0)?)
    }

    async fn count_matching(&mut self, subscription: &Subscription, scope: &ReadScope) -> Result<i64, ServerError> {
        let sql = skeleton::matching_sql(&SQLITE, subscription, scope, false, MatchShape::Count);
        let row = bind_matching(sqlx::query(&sql), subscription, scope, None)?.fetch_one(self).await?;
        Ok(row.try_get::<i64, _>(0)?)
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds JSON scalars (strings and numbers, as subscriptions hold) as SQLite values, so
/// that they compare with `json_extract`'s results as the stored JSON would.
fn bind_values<'q, 'v>(mut query: SqliteQuery<'q>, values: impl Iterator<Item = &'v Value>) -> SqliteQuery<'q> {
    for value in values {
        query = match value {
            Value::String(s) => query.bind(s.clone()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => query.bind(i),
                None => query.bind(n.as_f64()),
            },
            Value::Bool(b) => query.bind(i64::from(*b)),
            Value::Null | Value::Array(_) | Value::Object(_) => query.bind(None::<i64>),
        };
    }
    query
}

/// Binds a first-phase query's parameters in [`matching_sql`]'s order: the terms, the
/// keyset position (range value and id, or id), the scope's.
fn bind_matching<'q>(
    query: SqliteQuery<'q>,
    subscription: &Subscription,
    scope: &ReadScope,
    after: Option<&Key>,
) -> Result<SqliteQuery<'q>, ServerError> {
    let terms = subscription.terms();
    let mut query = bind_values(query, terms.iter().map(|t| t.2));
    if let Some(key) = after {
        if subscription.key_field().is_some() {
            query = bind_values(query, std::iter::once(key.value.as_ref().unwrap_or(&Value::Null)));
        }
        query = query.bind(key.id.clone());
    }
    bind_scope(query, scope)
}

/// SQLite's words for a subscription's SQL: `json_extract` values, numbered `?`
/// parameters, `INDEXED BY` (the statement fails rather than walk the collection).
const SQLITE: Dialect = Dialect {
    parameter: |n| format!("?{n}"),
    field: |column, field| format!("json_extract({column}, '$.{}')", field.as_str()),
    value: |parameter| parameter,
    live: "r.deleted = 0",
    key_in: |parameter| format!("a.key IN (SELECT value FROM json_each({parameter}))"),
    from: |index| match index {
        Some(index) => format!("sync_records r INDEXED BY \"{}\"", index.name()),
        None => "sync_records r".to_owned(),
    },
    page: |collection| {
        format!(
            "SELECT (SELECT count(*) FROM page) AS n, \
               (SELECT json_array(k, id) FROM page ORDER BY k DESC, id DESC LIMIT 1) AS last, \
               (SELECT json_group_array(json_object('collection', '{collection}', 'record_id', id, 'version', version, \
                  'deleted', json('false'), 'data', json(data), 'mutation_id', mutation_id) ORDER BY k, id) \
                FROM page) AS page"
        )
    },
};

/// `CREATE INDEX` for a declared subscription index: the collection, the fields, the id,
/// over the collection's live records. The names are validated (collection
/// `[a-z][a-z0-9_]*`, paths of letters, digits, `_` and `.`), and must be literals for
/// SQLite to use a partial index.
fn sub_index_sql(index: &SubscriptionIndex) -> String {
    let columns: Vec<String> = index.fields.iter().map(|f| (SQLITE.field)("data", f)).collect();
    format!(
        "CREATE INDEX IF NOT EXISTS \"{}\" ON sync_records (collection, {}, id) WHERE collection = '{}' AND deleted = 0",
        index.name(),
        columns.join(", "),
        index.collection
    )
}

/// Binds a scope's parameter (the next one): the owner, the key, or the keys as a JSON
/// array.
fn bind_scope<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    scope: &ReadScope,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>, ServerError> {
    Ok(match scope {
        ReadScope::Everything => query,
        ReadScope::Owned(owner) => query.bind(owner.clone()),
        ReadScope::Keys(keys) => match keys.first() {
            Some(key) if keys.len() == 1 => query.bind(key.clone()),
            _ => query.bind(Value::from(keys.iter().cloned().collect::<Vec<_>>()).to_string()),
        },
    })
}

#[async_trait]
impl AudienceStatements for SqliteConnection {
    async fn rule_mark(&mut self, collection: &str) -> Result<Option<String>, ServerError> {
        Ok(sqlx::query_scalar("SELECT value FROM sync_meta WHERE key = 'rules:' || ?")
            .bind(collection)
            .fetch_optional(self)
            .await?)
    }

    async fn set_rule_mark(&mut self, collection: &str, mark: Option<&str>) -> Result<(), ServerError> {
        let key = format!("rules:{collection}");
        match mark {
            Some(mark) => {
                sqlx::query("INSERT INTO sync_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                    .bind(key)
                    .bind(mark)
                    .execute(self)
                    .await?
            }
            None => sqlx::query("DELETE FROM sync_meta WHERE key = ?").bind(key).execute(self).await?,
        };
        Ok(())
    }

    async fn drop_audience(&mut self, collection: &str) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM sync_access WHERE collection = ?").bind(collection).execute(self).await?;
        Ok(())
    }

    async fn records_after(
        &mut self,
        collection: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, StoredRecord)>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, seq, owner, version, deleted, data FROM sync_records \
              WHERE collection = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(collection)
        .bind(after)
        .bind(limit)
        .fetch_all(self)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("seq")?, stored(row)?))).collect()
    }
}

#[async_trait]
impl PurgeStatements for SqliteConnection {
    async fn hold_head(&mut self) -> Result<(), ServerError> {
        // BEGIN IMMEDIATE on the one writer already holds it.
        Ok(())
    }

    async fn mark_purged(&mut self, before: i64) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO sync_purged (collection, through_seq, max_version) \
             SELECT collection, max(seq), max(version) FROM sync_records WHERE deleted = 1 AND updated_at < ? \
             GROUP BY collection \
             ON CONFLICT (collection) DO UPDATE SET through_seq = max(through_seq, excluded.through_seq), \
               max_version = max(max_version, excluded.max_version)",
        )
        .bind(before)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn delete_purged(&mut self, before: i64) -> Result<u64, ServerError> {
        sqlx::query(
            "DELETE FROM sync_access WHERE (collection, id) IN \
               (SELECT collection, id FROM sync_records WHERE deleted = 1 AND updated_at < ?)",
        )
        .bind(before)
        .execute(&mut *self)
        .await?;
        let done = sqlx::query("DELETE FROM sync_records WHERE deleted = 1 AND updated_at < ?")
            .bind(before)
            .execute(self)
            .await?;
        Ok(done.rows_affected())
    }
}

/// One page of a collection's feed after a position, assembled as a JSON array: ?1
/// collection, ?2 position, ?3 limit, and ?4 the scope's owner or keys (see
/// [`bind_scope`]). Each scope reads through its own index: the feed, the
/// (collection, owner, seq) index, or the audience keys' (collection, key, seq) index,
/// so a pull reads the changes after its cursor that the user may read, never every
/// user's changes. (A single `(everyone OR owner = ?)` filter once kept both backends
/// on the feed index: every pull of an owner collection read every other user's
/// changes after its cursor, and 500 devices got about half the requests/s of 100;
/// BENCHMARKS.md, `server_load`.)
fn page_sql(scope: &ReadScope, filter: Option<&Subscription>) -> String {
    let records = match scope {
        ReadScope::Everything | ReadScope::Owned(_) => format!(
            "SELECT id, version, deleted, data, seq, mutation_id, 1 AS present FROM sync_records \
              WHERE collection = ?1 AND seq > ?2 {} ORDER BY seq LIMIT ?3",
            if matches!(scope, ReadScope::Owned(_)) { "AND owner = ?4" } else { "" }
        ),
        // One key (`<field> = user`): one row per record, read straight down the index.
        ReadScope::Keys(keys) if keys.len() == 1 => "SELECT a.id, r.version, r.deleted, r.data, a.seq, r.mutation_id, \
                  a.present AND r.id IS NOT NULL AS present \
             FROM (SELECT id, seq, present FROM sync_access \
                    WHERE collection = ?1 AND key = ?4 AND seq > ?2 ORDER BY seq LIMIT ?3) a \
             LEFT JOIN sync_records r ON r.collection = ?1 AND r.id = a.id"
            .to_owned(),
        // A record under several of the user's keys is one change: present when any
        // key is (present rows carry the record's latest position). Grouping by id
        // tempts SQLite's planner into the primary key, a walk of the whole collection;
        // `INDEXED BY` holds it to the rows after the cursor under the user's keys.
        ReadScope::Keys(_) => "SELECT a.id, r.version, r.deleted, r.data, a.seq, r.mutation_id, \
                  a.present AND r.id IS NOT NULL AS present \
             FROM (SELECT id, max(seq) AS seq, max(present) AS present FROM sync_access INDEXED BY sync_access_feed \
                    WHERE collection = ?1 AND key IN (SELECT value FROM json_each(?4)) AND seq > ?2 \
                    GROUP BY id ORDER BY seq LIMIT ?3) a \
             LEFT JOIN sync_records r ON r.collection = ?1 AND r.id = a.id"
            .to_owned(),
    };
    // A subscription's changes: a live record that no longer matches is a removal.
    // Its terms' parameters follow the scope's.
    let present = skeleton::filter_sql(&SQLITE, filter, if matches!(scope, ReadScope::Everything) { 4 } else { 5 });
    format!(
        "SELECT count(*) AS n, coalesce(max(seq), ?2) AS last, \
           json_group_array(iif({present}, \
             json_object('collection', ?1, 'record_id', id, 'version', version, \
               'deleted', json(iif(deleted, 'true', 'false')), 'data', json(data), 'mutation_id', mutation_id), \
             json_object('collection', ?1, 'record_id', id, 'version', coalesce(version, 1), \
               'deleted', json('true'), 'removed', json('true'), 'data', NULL)) ORDER BY seq) AS page \
         FROM ({records})"
    )
}

/// Whether the feed holds more after a position in a scope: ?1 collection, ?2
/// position, ?3 the scope's owner or keys (see [`bind_scope`]).
fn more_sql(scope: &ReadScope) -> String {
    match scope {
        ReadScope::Everything => "SELECT EXISTS (SELECT 1 FROM sync_records WHERE collection = ?1 AND seq > ?2)".into(),
        ReadScope::Owned(_) => {
            "SELECT EXISTS (SELECT 1 FROM sync_records WHERE collection = ?1 AND seq > ?2 AND owner = ?3)".into()
        }
        ReadScope::Keys(keys) if keys.len() == 1 => {
            "SELECT EXISTS (SELECT 1 FROM sync_access WHERE collection = ?1 AND key = ?3 AND seq > ?2)".into()
        }
        ReadScope::Keys(_) => "SELECT EXISTS (SELECT 1 FROM sync_access WHERE collection = ?1 \
              AND key IN (SELECT value FROM json_each(?3)) AND seq > ?2)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sqlx::SqliteConnection;

    use super::*;

    async fn store_in(dir: &tempfile::TempDir) -> (SqliteServerStore, String) {
        let url = format!("sqlite://{}", dir.path().join("server.db").display());
        (SqliteServerStore::open(&url).await.unwrap(), url)
    }

    /// Another connection to the file that does not wait for locks: it writes only if
    /// nobody holds SQLite's write lock.
    async fn write_lock_is_free(url: &str) -> bool {
        let options = SqliteConnectOptions::from_str(url).unwrap().busy_timeout(Duration::ZERO);
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("UPDATE sync_meta SET value = value WHERE key = 'seq'").execute(&mut other).await.is_ok()
    }

    /// Leaves the pooled connection inside a `BEGIN IMMEDIATE` that nothing will end, as
    /// sqlx does when the future of `begin_with` is dropped at the wrong moment.
    async fn leave_a_transaction_open(pool: &SqlitePool) {
        let mut conn = pool.acquire().await.unwrap();
        std::mem::forget(conn.begin_with("BEGIN IMMEDIATE").await.unwrap());
        assert!(conn.is_in_transaction());
    }

    #[tokio::test]
    async fn a_connection_that_comes_back_inside_a_transaction_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, url) = store_in(&dir).await;
        leave_a_transaction_open(&store.writer).await;
        // The writer pool has one connection: this waits until it is back in the pool.
        let conn = store.writer.acquire().await.unwrap();
        assert!(!conn.is_in_transaction());
        drop(conn);
        assert!(write_lock_is_free(&url).await, "the write lock is still held");
    }

    /// The control: the same pool without the release check keeps the transaction, and
    /// with it SQLite's write lock (the jam the check prevents).
    #[tokio::test]
    async fn without_the_release_check_the_transaction_and_its_lock_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, url) = store_in(&dir).await;
        let plain = SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        leave_a_transaction_open(&plain).await;
        let conn = plain.acquire().await.unwrap();
        assert!(conn.is_in_transaction());
        assert!(!write_lock_is_free(&url).await);
    }

    /// A pull of an owner collection reads only the reader's rows through the
    /// (collection, owner, seq) index; one under a rule of fields, groups or attributes
    /// only the reader's keys through the audience index; one of a collection everyone
    /// reads, the feed index. None scans the collection.
    /// A subscription's download reads its index's range only (`SEARCH`, never `SCAN`),
    /// for its page, its `has_more` and its count, under every kind of scope; one with
    /// no fields reads a range of its collection (the primary key's, or a partial index's
    /// of its live records).
    #[tokio::test]
    async fn subscriptions_read_through_their_index_only() {
        use sync_core::protocol::{RangeBounds, SubscriptionQuery};
        use sync_core::store::FieldPath;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_in(&dir).await;
        let jobs = CollectionName::new("jobs").unwrap();
        let mut config = CollectionConfig::new(crate::config::Access::ReadOnly);
        config.subscription_indexes = vec![
            vec![FieldPath::new("assigned_to").unwrap(), FieldPath::new("due").unwrap()],
            vec![FieldPath::new("region").unwrap()],
        ];
        store.prepare_indexes(&BTreeMap::from([(jobs.clone(), config.clone())])).await.unwrap();
        let region = SubscriptionQuery {
            collection: jobs.clone(),
            equals: BTreeMap::from([("region".to_owned(), json!("north"))]),
            range: None,
        };
        let window = SubscriptionQuery {
            collection: jobs.clone(),
            equals: BTreeMap::from([("assigned_to".to_owned(), json!("tom"))]),
            range: Some(RangeBounds { field: "due".into(), gte: Some(json!("2026-12-01")), ..RangeBounds::default() }),
        };
        let whole = SubscriptionQuery { collection: jobs, equals: BTreeMap::new(), range: None };
        let after = Key { value: Some(json!("2026-12-02")), id: "r9".into() };
        let scopes = [
            ReadScope::Everything,
            ReadScope::Owned("tom".into()),
            ReadScope::Keys(["u:tom".to_owned()].into()),
            ReadScope::Keys(["u:tom".to_owned(), "g:north".to_owned()].into()),
        ];
        for (query, wanted) in
            [(&window, "USING INDEX sync_sub_jobs_"), (&region, "USING INDEX sync_sub_jobs_"), (&whole, "USING")]
        {
            let subscription = Subscription::check(query, &config.subscription_indexes).unwrap();
            for scope in &scopes {
                for (shape, position) in [
                    (MatchShape::Page, None),
                    (MatchShape::Page, Some(&after)),
                    (MatchShape::Exists, Some(&after)),
                    (MatchShape::Count, None),
                ] {
                    let sql = skeleton::matching_sql(&SQLITE, &subscription, scope, position.is_some(), shape);
                    let explain = format!("EXPLAIN QUERY PLAN {sql}");
                    let mut q = bind_matching(sqlx::query(&explain), &subscription, scope, position).unwrap();
                    if shape == MatchShape::Page {
                        q = q.bind(10i64);
                    }
                    let rows = q.fetch_all(&store.readers).await.unwrap();
                    let plan = rows.iter().map(|r| r.get::<String, _>("detail")).collect::<Vec<_>>().join("; ");
                    assert!(plan.contains(&format!("SEARCH r {wanted}")), "{sql}\n  {plan}");
                    assert!(!plan.contains("SCAN r"), "{sql}\n  {plan}");
                    // The page is read in index order: no sort of every match per page.
                    let steps: Vec<&str> = plan.split("; ").collect();
                    let search = steps.iter().position(|s| s.starts_with("SEARCH r")).unwrap();
                    let next = steps.get(search + 1).copied().unwrap_or_default();
                    assert_ne!(next, "USE TEMP B-TREE FOR ORDER BY", "{sql}\n  {plan}");
                }
            }
        }
    }

    #[tokio::test]
    async fn pulls_read_through_the_index_of_what_the_reader_may_see() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_in(&dir).await;
        let owned = ReadScope::Owned("alice".into());
        let keys = ReadScope::Keys(["u:alice".to_owned(), "g:north".to_owned()].into());
        let one = ReadScope::Keys(["u:alice".to_owned()].into());
        for (sql, scope, index) in [
            (page_sql(&owned, None), &owned, "sync_records_owner_feed (collection=? AND owner=? AND seq>?)"),
            (more_sql(&owned), &owned, "sync_records_owner_feed (collection=? AND owner=? AND seq>?)"),
            (page_sql(&keys, None), &keys, "sync_access_feed (collection=? AND key=? AND seq>?)"),
            (more_sql(&keys), &keys, "sync_access_feed (collection=? AND key=? AND seq>?)"),
            (page_sql(&one, None), &one, "sync_access_feed (collection=? AND key=? AND seq>?)"),
            (more_sql(&one), &one, "sync_access_feed (collection=? AND key=? AND seq>?)"),
            (
                page_sql(&ReadScope::Everything, None),
                &ReadScope::Everything,
                "sync_records_feed (collection=? AND seq>?)",
            ),
        ] {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain).bind("c").bind(0i64);
            if sql.contains("LIMIT ?3") {
                query = query.bind(10i64);
            }
            let rows = bind_scope(query, scope).unwrap().fetch_all(&store.readers).await.unwrap();
            let plan = rows.iter().map(|r| r.get::<String, _>("detail")).collect::<Vec<_>>().join("; ");
            assert!(plan.contains(index), "{sql}\n  {plan}");
            assert!(!plan.contains("SCAN sync_records") && !plan.contains("SCAN sync_access"), "{sql}\n  {plan}");
        }
    }
}
