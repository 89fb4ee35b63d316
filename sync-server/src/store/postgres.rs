//! `PgServerStore`: PostgreSQL, for production and several server nodes.
//!
//! No missed changes: every push first locks the single `sync_head` row and keeps the
//! lock until it commits, so feed positions are assigned in commit order on every node
//! (a sequence alone would not do: a transaction holding seq 10 can commit after one
//! holding seq 11, and a puller that saw 11 would skip 10 forever). Pulls read the head
//! and the pages in one REPEATABLE READ snapshot. The price is that pushes serialize on
//! that row while they write; a push is a handful of set-based statements, so that is
//! short. Nodes share change notifications through LISTEN/NOTIFY.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use sync_core::CollectionName;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::skeleton::{
    self, AudienceStatements, Dialect, FeedPage, MatchPage, MatchShape, PositionedWrite, PullStatements,
    PurgeStatements, PushStatements, corrupt,
};
use super::{
    Asker, PoolUse, PullItem, PullJob, PullPage, PushContext, PushJob, ServerStore, SubscriptionItem, Touched,
    detached, rolling_back_on_release,
};
use crate::config::CollectionConfig;
use crate::error::ServerError;
use crate::events::ChangeHub;
use crate::logic::{StoredRecord, WireResult};
use crate::rules::ReadScope;
use crate::subscriptions::{self, Key, Subscription, SubscriptionIndex};
use sync_core::store::FieldPath;

/// The PostgreSQL server store.
#[derive(Debug, Clone)]
pub struct PgServerStore {
    pool: PgPool,
    epoch: String,
    channel: String,
}

impl PgServerStore {
    /// Connects to `postgres://...` and migrates. Tables go into the connection's
    /// `search_path` schema (set it with `?options[search_path]=name` to share a database).
    ///
    /// # Errors
    /// [`ServerError::Database`] when it cannot connect or migrate.
    pub async fn open(url: &str) -> Result<Self, ServerError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = rolling_back_on_release(PgPoolOptions::new())
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| ServerError::Database { message: format!("migration failed: {e}"), retryable: false })?;
        sqlx::query("INSERT INTO sync_meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING")
            .bind(Uuid::now_v7().simple().to_string()[..12].to_owned())
            .execute(&pool)
            .await?;
        let epoch: String =
            sqlx::query_scalar("SELECT value FROM sync_meta WHERE key = 'epoch'").fetch_one(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&pool).await?;
        let channel = format!(
            "offsync_{}",
            schema.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()
        );
        Ok(Self { pool, epoch, channel })
    }

    /// Connects a LISTEN session, then feeds every node's change notifications (this
    /// one's too) into `hub` in the background, reconnecting when the connection drops.
    async fn listen(&self, hub: ChangeHub) -> Result<JoinHandle<()>, ServerError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        let channel = self.channel.clone();
        Ok(tokio::spawn(async move {
            loop {
                // recv reconnects by itself; an error here means it could not.
                match listener.recv().await {
                    Ok(n) => forward(&hub, n.payload()),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = listener.listen(&channel).await;
                    }
                }
            }
        }))
    }
}

/// Publishes one node's notification (`{"c": collection, "a": [keys], "k": client}`).
fn forward(hub: &ChangeHub, payload: &str) {
    let Ok(t) = serde_json::from_str::<Value>(payload) else { return };
    let (Some(c), Some(keys)) = (t["c"].as_str(), t["a"].as_array()) else { return };
    let client = t["k"].as_str().map(str::to_owned);
    let keys = keys.iter().filter_map(Value::as_str).map(str::to_owned).collect();
    if let Ok(collection) = CollectionName::new(c) {
        hub.publish(vec![Touched { collection, keys, client }]);
    }
}

/// NOTIFY payloads must stay under 8000 bytes: a change heard by many keys (a list
/// field of hundreds of members) is announced in several payloads of at most this many
/// bytes of keys.
const NOTIFY_KEY_BYTES: usize = 6000;

/// The payloads announcing `t`, each under PostgreSQL's limit.
fn notify_payloads(t: &Touched) -> Vec<String> {
    let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
    let mut size = 0;
    for key in &t.keys {
        if size + key.len() > NOTIFY_KEY_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += key.len() + 3;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(key);
        }
    }
    chunks
        .into_iter()
        .map(|keys| serde_json::json!({"c": t.collection.as_str(), "a": keys, "k": t.client}).to_string())
        .collect()
}

fn stored(row: &sqlx::postgres::PgRow) -> Result<StoredRecord, ServerError> {
    let data: Option<String> = row.try_get("data")?;
    let version: i64 = row.try_get("version")?;
    Ok(StoredRecord {
        version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
        deleted: row.try_get("deleted")?,
        owner: row.try_get("owner")?,
        data: data.map(|d| serde_json::from_str(&d)).transpose().map_err(|e| corrupt(e.to_string()))?,
    })
}

#[async_trait]
impl ServerStore for PgServerStore {
    fn pool_use(&self) -> Vec<PoolUse> {
        vec![PoolUse::of("main", &self.pool)]
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
            // Every node starting with the new rules runs this; the head lock makes them
            // take turns, and the ones after the first find the mark already set.
            let mut tx = self.pool.begin().await?;
            let mut statements = PgPush { conn: &mut tx, channel: &self.channel };
            keyed += skeleton::rebuild_audience_in(&mut statements, name.as_str(), &config.rules.read).await?;
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
        let mut tx = self.pool.begin().await?;
        // Nodes starting together take turns; the later ones find the indexes built.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('offsync_subscription_indexes'))").execute(&mut *tx).await?;
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
              AND tablename = 'sync_records' AND indexname LIKE 'sync\\_sub\\_%'",
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

    async fn forward_notifications(&self, hub: &ChangeHub) -> Result<Option<JoinHandle<()>>, ServerError> {
        self.listen(hub.clone()).await.map(Some)
    }
}

impl PgServerStore {
    async fn push_now(
        &self,
        asker: &Asker,
        ctx: &PushContext<'_>,
        raw: &[Value],
    ) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError> {
        let mut conn = self.pool.acquire().await?;
        asker.still_waiting()?;
        let mut tx = conn.begin().await?;
        let answer = skeleton::push_in(&mut PgPush { conn: &mut tx, channel: &self.channel }, ctx, raw).await?;
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
        let mut conn = self.pool.acquire().await?;
        asker.still_waiting()?;
        let mut tx = conn.begin().await?;
        // The head and the pages in one snapshot.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let page = skeleton::pull_in(&mut *tx, &self.epoch, items, subscriptions, limit).await?;
        tx.commit().await?;
        Ok(page)
    }

    async fn purge_now(&self, older_than: DateTime<Utc>) -> Result<u64, ServerError> {
        let mut tx = self.pool.begin().await?;
        let purged = skeleton::purge_in(&mut *tx, older_than).await?;
        tx.commit().await?;
        Ok(purged)
    }
}

/// PostgreSQL's push statements: batches travel as arrays unpacked with `unnest`, and
/// the change notifications go out with the commit (`pg_notify` on `channel`).
struct PgPush<'a> {
    conn: &'a mut PgConnection,
    channel: &'a str,
}

#[async_trait]
impl PushStatements for PgPush<'_> {
    async fn head(&mut self) -> Result<i64, ServerError> {
        // Held until commit: positions are assigned in commit order on every node.
        Ok(sqlx::query_scalar("SELECT seq FROM sync_head WHERE id = 1 FOR UPDATE").fetch_one(&mut *self.conn).await?)
    }

    async fn ledger(&mut self, user: &str, ids: &[Uuid]) -> Result<Vec<(String, String)>, ServerError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        Ok(sqlx::query_as("SELECT mutation_id, result FROM sync_ledger WHERE user_name = $1 AND mutation_id = ANY($2)")
            .bind(user)
            .bind(&ids)
            .fetch_all(&mut *self.conn)
            .await?)
    }

    async fn records(&mut self, keys: &[(String, String)]) -> Result<Vec<(String, String, StoredRecord)>, ServerError> {
        let (cols, ids): (Vec<&str>, Vec<&str>) = keys.iter().map(|(c, r)| (c.as_str(), r.as_str())).unzip();
        let rows = sqlx::query(
            "SELECT r.collection, r.id, r.owner, r.version, r.deleted, r.data FROM sync_records r \
              WHERE (r.collection, r.id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&cols)
        .bind(&ids)
        .fetch_all(&mut *self.conn)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("collection")?, row.try_get("id")?, stored(row)?))).collect()
    }

    async fn purged_versions(&mut self) -> Result<Vec<(String, i64)>, ServerError> {
        Ok(sqlx::query_as("SELECT collection, max_version FROM sync_purged").fetch_all(&mut *self.conn).await?)
    }

    async fn write_records(&mut self, rows: &[PositionedWrite<'_>], now: i64) -> Result<(), ServerError> {
        let mut c = Vec::with_capacity(rows.len());
        let mut i = Vec::with_capacity(rows.len());
        let mut o = Vec::with_capacity(rows.len());
        let mut v = Vec::with_capacity(rows.len());
        let mut d = Vec::with_capacity(rows.len());
        let mut data = Vec::with_capacity(rows.len());
        let mut s = Vec::with_capacity(rows.len());
        let mut m = Vec::with_capacity(rows.len());
        for w in rows {
            c.push(w.collection);
            i.push(w.id);
            o.push(w.record.owner.as_str());
            v.push(i64::try_from(w.record.version).map_err(|_| corrupt("version overflow"))?);
            d.push(w.record.deleted);
            data.push(w.record.data.as_ref().map(Value::to_string));
            s.push(w.seq);
            m.push(w.mutation_id.as_str());
        }
        sqlx::query(
            "INSERT INTO sync_records (collection, id, owner, version, deleted, data, seq, mutation_id, updated_at) \
             SELECT c, i, o, v, d, data, s, m, $9 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bool[], $6::text[], $7::int8[], $8::text[]) \
               AS t(c, i, o, v, d, data, s, m) \
             ON CONFLICT (collection, id) DO UPDATE SET owner = excluded.owner, version = excluded.version, \
               deleted = excluded.deleted, data = excluded.data, seq = excluded.seq, \
               mutation_id = excluded.mutation_id, updated_at = excluded.updated_at",
        )
        .bind(&c)
        .bind(&i)
        .bind(&o)
        .bind(&v)
        .bind(&d)
        .bind(&data)
        .bind(&s)
        .bind(&m)
        .bind(now)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    async fn write_audience(&mut self, rows: &[PositionedWrite<'_>]) -> Result<(), ServerError> {
        let c: Vec<&str> = rows.iter().map(|w| w.collection).collect();
        let i: Vec<&str> = rows.iter().map(|w| w.id).collect();
        let s: Vec<i64> = rows.iter().map(|w| w.seq).collect();
        let k: Vec<String> = rows
            .iter()
            .map(|w| serde_json::json!(w.keys.into_iter().flatten().collect::<Vec<_>>()).to_string())
            .collect();
        // Keys the record holds now stay present; the others it held become absent. Two
        // statements: one statement may not change a row twice, and a kept key is both
        // updated and inserted.
        for sql in [
            "UPDATE sync_access a SET seq = w.s, present = a.key = ANY(w.keys) \
               FROM (SELECT c, i, s, ARRAY(SELECT jsonb_array_elements_text(k::jsonb)) AS keys \
                       FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS t(c, i, s, k)) w \
              WHERE a.collection = w.c AND a.id = w.i AND a.present",
            "INSERT INTO sync_access (collection, id, key, seq, present) \
             SELECT t.c, t.i, key, t.s, true FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS t(c, i, s, k), \
                    jsonb_array_elements_text(t.k::jsonb) AS key \
             ON CONFLICT (collection, id, key) DO UPDATE SET seq = excluded.seq, present = true",
        ] {
            sqlx::query(sql).bind(&c).bind(&i).bind(&s).bind(&k).execute(&mut *self.conn).await?;
        }
        Ok(())
    }

    async fn set_head(&mut self, head: i64) -> Result<(), ServerError> {
        sqlx::query("UPDATE sync_head SET seq = $1 WHERE id = 1").bind(head).execute(&mut *self.conn).await?;
        Ok(())
    }

    async fn announce(&mut self, touched: &[Touched]) -> Result<(), ServerError> {
        for payload in touched.iter().flat_map(notify_payloads) {
            sqlx::query("SELECT pg_notify($1, $2)").bind(self.channel).bind(payload).execute(&mut *self.conn).await?;
        }
        Ok(())
    }

    async fn remember(&mut self, user: &str, entries: &[(String, String)]) -> Result<(), ServerError> {
        let (ids, results): (Vec<&str>, Vec<&str>) = entries.iter().map(|(i, r)| (i.as_str(), r.as_str())).unzip();
        sqlx::query(
            "INSERT INTO sync_ledger (user_name, mutation_id, result) SELECT $1, m, r FROM unnest($2::text[], $3::text[]) AS t(m, r)",
        )
        .bind(user)
        .bind(&ids)
        .bind(&results)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl PullStatements for PgConnection {
    async fn head(&mut self) -> Result<i64, ServerError> {
        Ok(sqlx::query_scalar("SELECT seq FROM sync_head WHERE id = 1").fetch_one(self).await?)
    }

    async fn purged_through(&mut self, collection: &str) -> Result<i64, ServerError> {
        Ok(sqlx::query_scalar("SELECT coalesce(max(through_seq), 0)::int8 FROM sync_purged WHERE collection = $1")
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
        let query = bind_scope(sqlx::query(&sql).bind(collection).bind(after).bind(limit), scope);
        let terms = filter.map(Subscription::terms).unwrap_or_default();
        let row = bind_values(query, terms.iter().map(|t| t.2)).fetch_one(self).await?;
        Ok(FeedPage { count: row.try_get("n")?, last: row.try_get("last")?, json: row.try_get("page")? })
    }

    async fn more_after(&mut self, collection: &str, after: i64, scope: &ReadScope) -> Result<bool, ServerError> {
        let sql = more_sql(scope);
        let row = bind_scope(sqlx::query(&sql).bind(collection).bind(after), scope).fetch_one(self).await?;
        Ok(row.try_get::<bool, _>(0)?)
    }

    async fn matching(
        &mut self,
        subscription: &Subscription,
        scope: &ReadScope,
        after: Option<&Key>,
        limit: i64,
    ) -> Result<MatchPage, ServerError> {
        let sql = skeleton::matching_sql(&POSTGRES, subscription, scope, after.is_some(), MatchShape::Page);
        let row = bind_matching(sqlx::query(&sql), subscription, scope, after).bind(limit).fetch_one(self).await?;
        let last: Option<String> = row.try_get("last")?;
        let last = last.as_deref().map(skeleton::parse_key).transpose()?;
        Ok(MatchPage { count: row.try_get("n")?, last, json: row.try_get("page")? })
    }

    async fn more_matching(
        &mut self,
        subscription: &Subscription,
        scope: &ReadScope,
        after: &Key,
    ) -> Result<bool, ServerError> {
        let sql = skeleton::matching_sql(&POSTGRES, subscription, scope, true, MatchShape::Exists);
        let row = bind_matching(sqlx::query(&sql), subscription, scope, Some(after)).fetch_one(self).await?;
        Ok(row.try_get::<bool, _>(0)?)
    }

    async fn count_matching(&mut self, subscription: &Subscription, scope: &ReadScope) -> Result<i64, ServerError> {
        let sql = skeleton::matching_sql(&POSTGRES, subscription, scope, false, MatchShape::Count);
        let row = bind_matching(sqlx::query(&sql), subscription, scope, None).fetch_one(self).await?;
        Ok(row.try_get::<i64, _>(0)?)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds JSON scalars as JSON text, for `$n::jsonb`.
fn bind_values<'q, 'v>(mut query: PgQuery<'q>, values: impl Iterator<Item = &'v Value>) -> PgQuery<'q> {
    for value in values {
        query = query.bind(value.to_string());
    }
    query
}

/// Binds a first-phase query's parameters in [`matching_sql`]'s order: the terms, the
/// keyset position (range value and id, or id), the scope's.
fn bind_matching<'q>(
    query: PgQuery<'q>,
    subscription: &Subscription,
    scope: &ReadScope,
    after: Option<&Key>,
) -> PgQuery<'q> {
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

/// A field's value in a record's JSON (`data` is text), as the subscription indexes
/// hold it: jsonb, which orders numbers as numbers and strings in the database's
/// collation.
fn sub_field(column: &str, field: &FieldPath) -> String {
    format!("({column}::jsonb #> '{{{}}}')", field.as_str().replace('.', ","))
}

/// PostgreSQL's words for a subscription's SQL: jsonb values compared with `$n::jsonb`
/// parameters (bound as JSON text), key lists as text arrays.
const POSTGRES: Dialect = Dialect {
    parameter: |n| format!("${n}"),
    field: sub_field,
    value: |parameter| format!("{parameter}::jsonb"),
    live: "NOT r.deleted",
    key_in: |parameter| format!("a.key = ANY({parameter}::text[])"),
    from: |_| "sync_records r".to_owned(),
    page: |collection| {
        format!(
            "SELECT (SELECT count(*) FROM page)::int8 AS n, \
               (SELECT json_build_array(k, id)::text FROM page ORDER BY k DESC, id DESC LIMIT 1) AS last, \
               (SELECT coalesce(json_agg(json_build_object('collection', '{collection}'::text, 'record_id', id, \
                  'version', version, 'deleted', false, 'data', data::json, 'mutation_id', mutation_id) \
                  ORDER BY k, id), '[]'::json)::text FROM page) AS page"
        )
    },
};

/// `CREATE INDEX` for a declared subscription index: the fields and the id, over the
/// collection's live records (names validated as for SQLite, so literals are safe).
fn sub_index_sql(index: &SubscriptionIndex) -> String {
    let columns: Vec<String> = index.fields.iter().map(|f| sub_field("data", f)).collect();
    format!(
        "CREATE INDEX IF NOT EXISTS \"{}\" ON sync_records ({}, id) WHERE collection = '{}' AND NOT deleted",
        index.name(),
        columns.join(", "),
        index.collection
    )
}

/// Binds a scope's parameter (the next one): the owner, the key, or the keys as a text
/// array.
fn bind_scope<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    scope: &ReadScope,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match scope {
        ReadScope::Everything => query,
        ReadScope::Owned(owner) => query.bind(owner.clone()),
        ReadScope::Keys(keys) => match keys.first() {
            Some(key) if keys.len() == 1 => query.bind(key.clone()),
            _ => query.bind(keys.iter().cloned().collect::<Vec<_>>()),
        },
    }
}

#[async_trait]
impl AudienceStatements for PgPush<'_> {
    async fn rule_mark(&mut self, collection: &str) -> Result<Option<String>, ServerError> {
        Ok(sqlx::query_scalar("SELECT value FROM sync_meta WHERE key = 'rules:' || $1")
            .bind(collection)
            .fetch_optional(&mut *self.conn)
            .await?)
    }

    async fn set_rule_mark(&mut self, collection: &str, mark: Option<&str>) -> Result<(), ServerError> {
        let key = format!("rules:{collection}");
        match mark {
            Some(mark) => {
                sqlx::query("INSERT INTO sync_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                    .bind(key)
                    .bind(mark)
                    .execute(&mut *self.conn)
                    .await?
            }
            None => sqlx::query("DELETE FROM sync_meta WHERE key = $1").bind(key).execute(&mut *self.conn).await?,
        };
        Ok(())
    }

    async fn drop_audience(&mut self, collection: &str) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM sync_access WHERE collection = $1").bind(collection).execute(&mut *self.conn).await?;
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
              WHERE collection = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(collection)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.conn)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("seq")?, stored(row)?))).collect()
    }
}

#[async_trait]
impl PurgeStatements for PgConnection {
    async fn hold_head(&mut self) -> Result<(), ServerError> {
        sqlx::query("SELECT seq FROM sync_head WHERE id = 1 FOR UPDATE").fetch_one(self).await?;
        Ok(())
    }

    async fn mark_purged(&mut self, before: i64) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO sync_purged (collection, through_seq, max_version) \
             SELECT collection, max(seq), max(version) FROM sync_records WHERE deleted AND updated_at < $1 \
             GROUP BY collection \
             ON CONFLICT (collection) DO UPDATE SET through_seq = GREATEST(sync_purged.through_seq, excluded.through_seq), \
               max_version = GREATEST(sync_purged.max_version, excluded.max_version)",
        )
        .bind(before)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn delete_purged(&mut self, before: i64) -> Result<u64, ServerError> {
        sqlx::query(
            "DELETE FROM sync_access a USING sync_records r \
              WHERE a.collection = r.collection AND a.id = r.id AND r.deleted AND r.updated_at < $1",
        )
        .bind(before)
        .execute(&mut *self)
        .await?;
        let done = sqlx::query("DELETE FROM sync_records WHERE deleted AND updated_at < $1")
            .bind(before)
            .execute(self)
            .await?;
        Ok(done.rows_affected())
    }
}

/// One page of a collection's feed after a position, assembled as a JSON array: $1
/// collection, $2 position, $3 limit, and $4 the scope's owner or keys (see
/// [`bind_scope`]); each scope reads through its own index, as on SQLite.
fn page_sql(scope: &ReadScope, filter: Option<&Subscription>) -> String {
    let records = match scope {
        ReadScope::Everything | ReadScope::Owned(_) => format!(
            "SELECT id, version, deleted, data, seq, mutation_id, true AS present FROM sync_records \
              WHERE collection = $1 AND seq > $2 {} ORDER BY seq LIMIT $3",
            if matches!(scope, ReadScope::Owned(_)) { "AND owner = $4" } else { "" }
        ),
        // One key (`<field> = user`): one row per record, read straight down the index.
        ReadScope::Keys(keys) if keys.len() == 1 => "SELECT a.id, r.version, r.deleted, r.data, a.seq, r.mutation_id, \
                  a.present AND r.id IS NOT NULL AS present \
             FROM (SELECT id, seq, present FROM sync_access \
                    WHERE collection = $1 AND key = $4 AND seq > $2 ORDER BY seq LIMIT $3) a \
             LEFT JOIN sync_records r ON r.collection = $1 AND r.id = a.id"
            .to_owned(),
        // A record under several of the user's keys is one change: present when any
        // key is (present rows carry the record's latest position).
        ReadScope::Keys(_) => "SELECT a.id, r.version, r.deleted, r.data, a.seq, r.mutation_id, \
                  a.present AND r.id IS NOT NULL AS present \
             FROM (SELECT id, max(seq) AS seq, bool_or(present) AS present FROM sync_access \
                    WHERE collection = $1 AND key = ANY($4::text[]) AND seq > $2 \
                    GROUP BY id ORDER BY max(seq) LIMIT $3) a \
             LEFT JOIN sync_records r ON r.collection = $1 AND r.id = a.id"
            .to_owned(),
    };
    // A subscription's changes: a live record that no longer matches is a removal.
    // Its terms' parameters follow the scope's.
    let present = skeleton::filter_sql(&POSTGRES, filter, if matches!(scope, ReadScope::Everything) { 4 } else { 5 });
    format!(
        "SELECT count(*)::int8 AS n, coalesce(max(seq), $2)::int8 AS last, \
           coalesce(json_agg(CASE WHEN {present} THEN \
             json_build_object('collection', $1::text, 'record_id', id, 'version', version, \
               'deleted', deleted, 'data', data::json, 'mutation_id', mutation_id) \
           ELSE json_build_object('collection', $1::text, 'record_id', id, 'version', coalesce(version, 1), \
               'deleted', true, 'removed', true, 'data', NULL) END ORDER BY seq), '[]'::json)::text AS page \
         FROM ({records}) r"
    )
}

/// Whether the feed holds more after a position in a scope: $1 collection, $2
/// position, $3 the scope's owner or keys.
fn more_sql(scope: &ReadScope) -> String {
    match scope {
        ReadScope::Everything => "SELECT EXISTS (SELECT 1 FROM sync_records WHERE collection = $1 AND seq > $2)".into(),
        ReadScope::Owned(_) => {
            "SELECT EXISTS (SELECT 1 FROM sync_records WHERE collection = $1 AND seq > $2 AND owner = $3)".into()
        }
        ReadScope::Keys(keys) if keys.len() == 1 => {
            "SELECT EXISTS (SELECT 1 FROM sync_access WHERE collection = $1 AND key = $3 AND seq > $2)".into()
        }
        ReadScope::Keys(_) => "SELECT EXISTS (SELECT 1 FROM sync_access WHERE collection = $1 \
              AND key = ANY($3::text[]) AND seq > $2)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A store on a new schema of the test database, the admin pool and the schema's
    /// name; None (saying so) when `SYNC_TEST_POSTGRES_URL` is not set.
    async fn fresh_store() -> Option<(PgServerStore, PgPool, String)> {
        let Ok(base) = std::env::var("SYNC_TEST_POSTGRES_URL") else {
            eprintln!("skipped: SYNC_TEST_POSTGRES_URL is not set (no PostgreSQL to test against)");
            return None;
        };
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let admin = PgPool::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let store = PgServerStore::open(&format!("{base}{sep}options[search_path]={schema}")).await.unwrap();
        Some((store, admin, schema))
    }

    /// A connection left inside a transaction holding the feed's head lock (as sqlx can
    /// leave one when a `begin` future is dropped) is rolled back when it comes back to
    /// the pool, so the next push does not wait on that lock.
    #[tokio::test]
    async fn a_connection_that_comes_back_inside_a_transaction_is_rolled_back() {
        let Some((store, _, _)) = fresh_store().await else { return };
        {
            let mut conn = store.pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("SELECT seq FROM sync_head WHERE id = 1 FOR UPDATE").execute(&mut *tx).await.unwrap();
            std::mem::forget(tx);
            assert!(conn.is_in_transaction());
        }
        // Every other connection of the pool takes the head lock within a second.
        for _ in 0..4 {
            let mut conn = store.pool.acquire().await.unwrap();
            assert!(!conn.is_in_transaction());
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("SET LOCAL lock_timeout = '1s'").execute(&mut *tx).await.unwrap();
            sqlx::query("SELECT seq FROM sync_head WHERE id = 1 FOR UPDATE").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    /// Pulls under a rule read the user's keys through the audience index: with 100,000
    /// audience rows over 1,000 keys (analyzed), neither the page nor the `has_more`
    /// check scans the table, for one key or several. Prints the plans (BENCHMARKS.md
    /// shows them).
    #[tokio::test]
    async fn pulls_under_a_rule_read_through_the_audience_index() {
        let Some((store, admin, schema)) = fresh_store().await else { return };
        sqlx::query(
            "INSERT INTO sync_records (collection, id, owner, version, deleted, data, seq, updated_at) \
             SELECT 'jobs', 'r' || i, 'root', 1, false, '{}', i, 0 FROM generate_series(1, 100000) i",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO sync_access (collection, id, key, seq, present) \
             SELECT 'jobs', 'r' || i, 'u:u' || (i % 1000), i, true FROM generate_series(1, 100000) i",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
        let one = ReadScope::Keys(["u:u7".to_owned()].into());
        let several = ReadScope::Keys(["u:u7".to_owned(), "u:u8".to_owned()].into());
        for (sql, scope, limit) in [
            (page_sql(&one, None), &one, true),
            (more_sql(&one), &one, false),
            (page_sql(&several, None), &several, true),
            (more_sql(&several), &several, false),
        ] {
            let explain = format!("EXPLAIN {sql}");
            let mut query = sqlx::query(&explain).bind("jobs").bind(50_000i64);
            if limit {
                query = query.bind(1000i64);
            }
            let rows = bind_scope(query, scope).fetch_all(&store.pool).await.unwrap();
            let plan = rows.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>().join("\n");
            eprintln!("{scope:?}:\n{plan}\n");
            assert!(plan.contains("sync_access_feed"), "{sql}\n{plan}");
            assert!(
                !plan.contains("Seq Scan on sync_access") && !plan.contains("Seq Scan on sync_records"),
                "{sql}\n{plan}"
            );
        }
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
    }

    /// A subscription's download reads its index: with 100,000 live jobs over 100
    /// technicians (analyzed), the page, its `has_more` and its count for one
    /// technician's date window use `sync_sub_jobs_*` and never scan the table.
    #[tokio::test]
    async fn subscriptions_read_through_their_index() {
        use sync_core::protocol::{RangeBounds, SubscriptionQuery};
        let Some((store, admin, schema)) = fresh_store().await else { return };
        let jobs = CollectionName::new("jobs").unwrap();
        let mut config = CollectionConfig::new(crate::config::Access::ReadOnly);
        config.subscription_indexes =
            vec![vec![FieldPath::new("assigned_to").unwrap(), FieldPath::new("due").unwrap()]];
        store.prepare_indexes(&BTreeMap::from([(jobs.clone(), config.clone())])).await.unwrap();
        sqlx::query(
            "INSERT INTO sync_records (collection, id, owner, version, deleted, data, seq, updated_at) \
             SELECT 'jobs', 'r' || i, 'root', 1, false, \
               json_build_object('assigned_to', 'u' || (i % 100), 'due', '2026-12-' || lpad((i % 28 + 1)::text, 2, '0'))::text, \
               i, 0 FROM generate_series(1, 100000) i",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
        let window = SubscriptionQuery {
            collection: jobs,
            equals: BTreeMap::from([("assigned_to".to_owned(), serde_json::json!("u7"))]),
            range: Some(RangeBounds {
                field: "due".into(),
                gte: Some(serde_json::json!("2026-12-05")),
                lt: Some(serde_json::json!("2026-12-12")),
                ..RangeBounds::default()
            }),
        };
        let subscription = Subscription::check(&window, &config.subscription_indexes).unwrap();
        let after = Key { value: Some(serde_json::json!("2026-12-06")), id: "r9".into() };
        let mut tx = store.pool.begin().await.unwrap();
        let page = tx.matching(&subscription, &ReadScope::Everything, None, 1000).await.unwrap();
        let total = tx.count_matching(&subscription, &ReadScope::Everything).await.unwrap();
        let expected = (1..=100_000i64).filter(|i| i % 100 == 7 && (5..12).contains(&(i % 28 + 1))).count();
        assert_eq!(total, i64::try_from(expected).unwrap());
        assert_eq!(page.count, total, "one page holds the window");
        tx.rollback().await.unwrap();
        for (shape, position) in
            [(MatchShape::Page, None), (MatchShape::Exists, Some(&after)), (MatchShape::Count, None)]
        {
            let sql =
                skeleton::matching_sql(&POSTGRES, &subscription, &ReadScope::Everything, position.is_some(), shape);
            let explain = format!("EXPLAIN {sql}");
            let mut q = bind_matching(sqlx::query(&explain), &subscription, &ReadScope::Everything, position);
            if shape == MatchShape::Page {
                q = q.bind(1000i64);
            }
            let rows = q.fetch_all(&store.pool).await.unwrap();
            let plan = rows.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>().join("\n");
            eprintln!("{shape:?}:\n{plan}\n");
            assert!(plan.contains("sync_sub_jobs_"), "{sql}\n{plan}");
            assert!(!plan.contains("Seq Scan on sync_records"), "{sql}\n{plan}");
        }
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
    }
}
