//! `local_write`: the cost of a local write through the engine, beside the same work
//! done with raw sqlx on the same schema in the same run.
//!
//! Run with: `cargo bench -p offsync-tests --bench local_write`
//! (`LOCAL_WRITE_N` single writes, default 5,000; `LOCAL_WRITE_BULK` rows, default 100,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use shared::{Order, env, order, percentile, us};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use sync_core::{CollectionSpec, Engine, EngineOptions, MutationId};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

async fn engine(path: &Path) -> Engine {
    let store = SqliteStore::open(path).await.unwrap();
    let options = EngineOptions { start_online: false, sync_on_start: false, ..EngineOptions::default() };
    Engine::builder()
        .store(Arc::new(store))
        .transport(Arc::new(MemoryServer::new()))
        .collection(CollectionSpec::of::<Order>(ConflictDetection::new()))
        .options(options)
        .build()
        .await
        .unwrap()
}

/// A raw connection to a file that has the store's schema.
async fn raw(path: &Path) -> SqliteConnection {
    SqliteStore::open(path).await.unwrap().close().await;
    let url = format!("sqlite://{}", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut conn).await.unwrap();
    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut conn).await.unwrap();
    conn
}

#[tokio::main]
async fn main() {
    let n = env("LOCAL_WRITE_N", 5000);
    let bulk = env("LOCAL_WRITE_BULK", 100_000);
    let dir = tempfile::tempdir().unwrap();
    println!("local_write: file-backed WAL store, synchronous=NORMAL, {n} single writes, {bulk} bulk rows");

    // 1. Single writes: record + outbox entry + change event.
    let engine = engine(&dir.path().join("engine.db")).await;
    let orders = engine.collection::<Order>().unwrap();
    let mut events = engine.events();
    let items: Vec<_> = (0..n as u64).map(order).collect();
    let mut ours = Vec::with_capacity(n);
    for item in &items {
        let start = Instant::now();
        orders.insert(item).await.unwrap();
        ours.push(start.elapsed());
        while events.try_recv().is_ok() {}
    }
    let mut conn = raw(&dir.path().join("raw.db")).await;
    let mut theirs = Vec::with_capacity(n);
    for item in (0..n as u64).map(order) {
        let data = serde_json::to_string(&item).unwrap();
        let start = Instant::now();
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO offsync_records (collection, id, data, deleted, modified_at) VALUES (?, ?, ?, 0, ?)")
            .bind("work_orders")
            .bind(&item.id)
            .bind(&data)
            .bind(0i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, data, versioned, created_at) VALUES (?, ?, ?, 'upsert', ?, 1, ?)")
            .bind(MutationId::generate().to_string())
            .bind("work_orders")
            .bind(&item.id)
            .bind(&data)
            .bind(0i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        theirs.push(start.elapsed());
    }
    ours.sort();
    theirs.sort();
    for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
        let (o, t) = (percentile(&ours, p), percentile(&theirs, p));
        println!(
            "single write {label}: offsync {:>8.1} µs | raw sqlx BEGIN+2 INSERT+COMMIT {:>8.1} µs | raw/offsync {:.2}",
            us(o),
            us(t),
            us(t) / us(o)
        );
    }
    engine.shutdown().await;

    // 2. insert_many: one transaction.
    let engine = self::engine(&dir.path().join("engine_bulk.db")).await;
    let orders = engine.collection::<Order>().unwrap();
    let items: Vec<_> = (0..bulk as u64).map(order).collect();
    let start = Instant::now();
    orders.insert_many(&items).await.unwrap();
    let ours = start.elapsed();
    engine.shutdown().await;

    let mut conn = raw(&dir.path().join("raw_bulk.db")).await;
    let items: Vec<_> = (0..bulk as u64).map(order).map(|o| (serde_json::to_string(&o).unwrap(), o.id)).collect();
    let start = Instant::now();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    for chunk in items.chunks(1000) {
        let mut b: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("INSERT INTO offsync_records (collection, id, data, deleted, modified_at) ");
        b.push_values(chunk, |mut row, (data, id)| {
            row.push_bind("work_orders").push_bind(id).push_bind(data).push_bind(0i64).push_bind(0i64);
        });
        b.build().execute(&mut *tx).await.unwrap();
        let mut b: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, data, versioned, created_at) ",
        );
        b.push_values(chunk, |mut row, (data, id)| {
            row.push_bind(MutationId::generate().to_string())
                .push_bind("work_orders")
                .push_bind(id)
                .push_bind("upsert")
                .push_bind(data)
                .push_bind(1i64)
                .push_bind(0i64);
        });
        b.build().execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let theirs = start.elapsed();
    let (o, t) = (bulk as f64 / ours.as_secs_f64(), bulk as f64 / theirs.as_secs_f64());
    println!(
        "insert_many {bulk}: offsync {o:>9.0} records/s | raw sqlx multi-row INSERT {t:>9.0} records/s | offsync/raw {:.2}",
        o / t
    );
}
