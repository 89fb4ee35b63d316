//! `PgServerStore`: PostgreSQL, for production and several server nodes.
//!
//! No missed changes: every push first locks the single `sync_head` row and keeps the
//! lock until it commits, so feed positions are assigned in commit order on every node
//! (a sequence alone would not do: a transaction holding seq 10 can commit after one
//! holding seq 11, and a puller that saw 11 would skip 10 forever). Pulls read the head
//! and the pages in one REPEATABLE READ snapshot. The price is that pushes serialize on
//! that row while they write; a push is a handful of set-based statements, so that is
//! short. Nodes share change notifications through LISTEN/NOTIFY.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgPool, Row};
use sync_core::protocol::MutationOutcome;
use sync_core::{CollectionName, RecordId};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    Asker, PageBuilder, PullItem, PullJob, PullPage, PushContext, PushJob, ServerStore, Touched, detached,
    next_position, owner_filter, plan_push, prefetch_keys, rolling_back_on_release, start_position, touched,
    version_floors,
};
use crate::config::Access;
use crate::cursor;
use crate::error::ServerError;
use crate::events::ChangeHub;
use crate::logic::{StoredRecord, User, WireResult};

/// The PostgreSQL server store.
#[derive(Debug, Clone)]
pub struct PgServerStore {
    pool: PgPool,
    epoch: String,
    channel: String,
}

fn corrupt(message: impl Into<String>) -> ServerError {
    ServerError::Database { message: message.into(), retryable: false }
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

fn forward(hub: &ChangeHub, payload: &str) {
    let Ok(t) = serde_json::from_str::<Value>(payload) else { return };
    let (Some(c), Some(o)) = (t["c"].as_str(), t["o"].as_str()) else { return };
    if let Ok(collection) = CollectionName::new(c) {
        hub.publish(vec![Touched { collection, owner: o.to_owned() }]);
    }
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
    async fn push(&self, job: PushJob) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError> {
        let store = self.clone();
        detached(|asker| async move { store.push_now(&asker, &job.context(), &job.mutations).await }).await
    }

    async fn pull(&self, job: PullJob) -> Result<PullPage, ServerError> {
        let store = self.clone();
        detached(|asker| async move { store.pull_now(&asker, &job.user, &job.items, job.limit).await }).await
    }

    async fn purge_tombstones(&self, older_than: DateTime<Utc>) -> Result<u64, ServerError> {
        let store = self.clone();
        detached(|_| async move { store.purge_now(older_than).await }).await
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
        let (ids, keys) = prefetch_keys(raw);
        let mut conn = self.pool.acquire().await?;
        asker.still_waiting()?;
        let mut tx = conn.begin().await?;
        let head: i64 =
            sqlx::query_scalar("SELECT seq FROM sync_head WHERE id = 1 FOR UPDATE").fetch_one(&mut *tx).await?;
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows =
            sqlx::query("SELECT mutation_id, result FROM sync_ledger WHERE user_name = $1 AND mutation_id = ANY($2)")
                .bind(&ctx.user.name)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        let mut ledger = HashMap::new();
        for row in rows {
            let id: String = row.try_get("mutation_id")?;
            let result: String = row.try_get("result")?;
            let id = Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?;
            let outcome: MutationOutcome = serde_json::from_str(&result).map_err(|e| corrupt(e.to_string()))?;
            ledger.insert(id, outcome);
        }
        let (cols, rids): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
        let rows = sqlx::query(
            "SELECT r.collection, r.id, r.owner, r.version, r.deleted, r.data FROM sync_records r \
              WHERE (r.collection, r.id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&cols)
        .bind(&rids)
        .fetch_all(&mut *tx)
        .await?;
        let mut current = HashMap::new();
        for row in &rows {
            // A stored key that does not parse is corruption: skipping it would plan the
            // record as a new create over the one that exists.
            let c = CollectionName::new(row.try_get::<String, _>("collection")?).map_err(|e| corrupt(e.to_string()))?;
            let r = RecordId::new(row.try_get::<String, _>("id")?).map_err(|e| corrupt(e.to_string()))?;
            current.insert((c, r), stored(row)?);
        }
        let floors: Vec<(String, i64)> =
            sqlx::query_as("SELECT collection, max_version FROM sync_purged").fetch_all(&mut *tx).await?;
        let plan = plan_push(ctx, raw, ledger, current, &version_floors(floors));
        if !plan.writes.is_empty() {
            // One row per record (its final state) with the batch's last position for it:
            // PostgreSQL refuses to touch a row twice in one upsert.
            let mut seq = head;
            let mut last: HashMap<(&str, &str), (i64, &StoredRecord, String)> = HashMap::new();
            for w in &plan.writes {
                seq += 1;
                last.insert((w.collection.as_str(), w.id.as_str()), (seq, &w.record, w.mutation_id.to_string()));
            }
            let now = Utc::now().timestamp_micros();
            let mut c = Vec::new();
            let mut i = Vec::new();
            let mut o = Vec::new();
            let mut v = Vec::new();
            let mut d = Vec::new();
            let mut data = Vec::new();
            let mut s = Vec::new();
            let mut m = Vec::new();
            for ((col, id), (pos, r, mutation)) in &last {
                c.push(*col);
                i.push(*id);
                o.push(r.owner.as_str());
                v.push(i64::try_from(r.version).map_err(|_| corrupt("version overflow"))?);
                d.push(r.deleted);
                data.push(r.data.as_ref().map(Value::to_string));
                s.push(*pos);
                m.push(mutation.as_str());
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
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE sync_head SET seq = $1 WHERE id = 1").bind(seq).execute(&mut *tx).await?;
            for t in touched(&plan) {
                let payload = serde_json::json!({"c": t.collection.as_str(), "o": t.owner}).to_string();
                sqlx::query("SELECT pg_notify($1, $2)").bind(&self.channel).bind(payload).execute(&mut *tx).await?;
            }
        }
        if !plan.ledger.is_empty() {
            let mut ids = Vec::with_capacity(plan.ledger.len());
            let mut results = Vec::with_capacity(plan.ledger.len());
            for (id, outcome) in &plan.ledger {
                ids.push(id.to_string());
                results.push(serde_json::to_string(outcome).map_err(|e| corrupt(e.to_string()))?);
            }
            sqlx::query(
                "INSERT INTO sync_ledger (user_name, mutation_id, result) SELECT $1, m, r FROM unnest($2::text[], $3::text[]) AS t(m, r)",
            )
            .bind(&ctx.user.name)
            .bind(&ids)
            .bind(&results)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let touched = touched(&plan);
        Ok((plan.results, touched))
    }

    async fn pull_now(
        &self,
        asker: &Asker,
        user: &User,
        items: &[PullItem],
        limit: usize,
    ) -> Result<PullPage, ServerError> {
        let mut conn = self.pool.acquire().await?;
        asker.still_waiting()?;
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let head: i64 = sqlx::query_scalar("SELECT seq FROM sync_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let mut response = PageBuilder::default();
        for item in items {
            let parsed = cursor::parse(item.cursor.as_ref(), &self.epoch)?;
            let purged: i64 =
                sqlx::query_scalar("SELECT coalesce(max(through_seq), 0)::int8 FROM sync_purged WHERE collection = $1")
                    .bind(item.collection.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            let (start, reset) = start_position(parsed, purged);
            if reset {
                response.reset.push(item.collection.clone());
            }
            let remaining = limit.saturating_sub(response.count);
            if remaining == 0 {
                response.has_more = true;
                response.cursors.insert(item.collection.clone(), cursor::format(&self.epoch, start));
                continue;
            }
            let everyone = user.admin || item.access == Access::ReadOnly;
            let page_sql = page_sql(everyone);
            let mut page = sqlx::query(&page_sql)
                .bind(item.collection.as_str())
                .bind(start.seq)
                .bind(i64::try_from(remaining).unwrap_or(i64::MAX));
            if !everyone {
                page = page.bind(&user.name);
            }
            let page = page.fetch_one(&mut *tx).await?;
            let n = usize::try_from(page.try_get::<i64, _>("n")?).map_err(|_| corrupt("negative count"))?;
            let last: i64 = page.try_get("last")?;
            let more = if n < remaining {
                false
            } else {
                let more_sql = more_sql(everyone);
                let mut more = sqlx::query_scalar::<_, bool>(&more_sql).bind(item.collection.as_str()).bind(last);
                if !everyone {
                    more = more.bind(&user.name);
                }
                more.fetch_one(&mut *tx).await?
            };
            response.add(page.try_get("page")?, n);
            response.has_more |= more;
            let position = next_position(start, last, more, head);
            response.cursors.insert(item.collection.clone(), cursor::format(&self.epoch, position));
        }
        tx.commit().await?;
        response.finish()
    }

    async fn purge_now(&self, older_than: DateTime<Utc>) -> Result<u64, ServerError> {
        let mut tx = self.pool.begin().await?;
        // Purges take the head lock too, so no push interleaves with the mark.
        sqlx::query("SELECT seq FROM sync_head WHERE id = 1 FOR UPDATE").fetch_one(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO sync_purged (collection, through_seq, max_version) \
             SELECT collection, max(seq), max(version) FROM sync_records WHERE deleted AND updated_at < $1 \
             GROUP BY collection \
             ON CONFLICT (collection) DO UPDATE SET through_seq = GREATEST(sync_purged.through_seq, excluded.through_seq), \
               max_version = GREATEST(sync_purged.max_version, excluded.max_version)",
        )
        .bind(older_than.timestamp_micros())
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM sync_records WHERE deleted AND updated_at < $1")
            .bind(older_than.timestamp_micros())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// One page of a collection's feed after a position, assembled as a JSON array: $1
/// collection, $2 position, $3 limit, and $4 the reader when it may read only its own
/// records (see [`owner_filter`]).
fn page_sql(everyone: bool) -> String {
    format!(
        "SELECT count(*)::int8 AS n, coalesce(max(seq), $2)::int8 AS last, \
           coalesce(json_agg(json_build_object('collection', $1::text, 'record_id', id, 'version', version, \
             'deleted', deleted, 'data', data::json, 'mutation_id', mutation_id) ORDER BY seq), '[]'::json)::text AS page \
         FROM (SELECT id, version, deleted, data, seq, mutation_id FROM sync_records \
                WHERE collection = $1 AND seq > $2 {} ORDER BY seq LIMIT $3) r",
        owner_filter(everyone, "$4")
    )
}

/// Whether the feed holds more after a position: $1 collection, $2 position, $3 reader.
fn more_sql(everyone: bool) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM sync_records WHERE collection = $1 AND seq > $2 {})",
        owner_filter(everyone, "$3")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A connection left inside a transaction holding the feed's head lock (as sqlx can
    /// leave one when a `begin` future is dropped) is rolled back when it comes back to
    /// the pool, so the next push does not wait on that lock.
    #[tokio::test]
    async fn a_connection_that_comes_back_inside_a_transaction_is_rolled_back() {
        let Ok(base) = std::env::var("SYNC_TEST_POSTGRES_URL") else {
            eprintln!("skipped: SYNC_TEST_POSTGRES_URL is not set (no PostgreSQL to test against)");
            return;
        };
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let admin = PgPool::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let store = PgServerStore::open(&format!("{base}{sep}options[search_path]={schema}")).await.unwrap();
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
}
