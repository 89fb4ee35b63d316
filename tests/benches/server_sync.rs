//! `server_sync`: the reference server and HTTP transport under load, on each backend.
//!
//! - initial sync of N records (~200 bytes) from the server to a fresh client over HTTP
//!   on 127.0.0.1, in a separate client process: records/s, the client's peak RSS, and
//!   the ratio to a raw sqlx multi-row insert of the same rows into the client schema;
//! - no-op incremental sync with those N records synced: p50/p99 latency;
//! - push of M queued mutations from a client: mutations/s.
//!
//! Run with: `cargo bench -p offsync-tests --bench server_sync`
//! (`SYNC_BENCH_N`, default 1,000,000; `SYNC_BENCH_PUSH`, default 100,000; PostgreSQL too
//! when `SYNC_TEST_POSTGRES_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use shared::{Order, env, order};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use sync_core::{AccountId, CollectionSpec, Credentials, Engine, EngineOptions};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::logic::User;
use sync_server::server::{self, from_config};
use sync_server::store::{PushJob, PushRules};
use sync_sqlite::SqliteStore;

const TOKEN: &str = "bench-token";

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

async fn client(url: &str, dir: &std::path::Path, name: &str, online: bool, push_batch: usize) -> Engine {
    let store = SqliteStore::open(dir.join(format!("{name}.db"))).await.unwrap();
    let transport = Arc::new(HttpTransport::with_timeout(url, Duration::from_secs(120)).unwrap());
    let credentials = Credentials::new(AccountId::new("bench").unwrap(), TOKEN).unwrap();
    let options = EngineOptions {
        start_online: online,
        sync_on_start: false,
        debounce: Duration::from_secs(3600),
        pull_limit: 1000,
        push_batch,
        ..EngineOptions::default()
    };
    Engine::builder()
        .store(Arc::new(store))
        .credentials(credentials)
        .transport(transport)
        .collection(CollectionSpec::of::<Order>(ConflictDetection::new()))
        .unit(sync_core::SyncUnit::new("push", sync_core::Direction::Push, &["work_orders"]))
        .options(options)
        .build()
        .await
        .unwrap()
}

/// The child process: initial sync, raw baseline, no-op syncs. Prints one line.
async fn client_process(url: &str, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = client(url, dir.path(), "initial", true, 1000).await;
    let start = Instant::now();
    let report = engine.sync_now().await.unwrap();
    let took = start.elapsed();
    assert_eq!(report.pulled as usize, n);
    let rate = n as f64 / took.as_secs_f64();
    let rss = peak_rss_mib();

    let mut noop = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        engine.sync_now().await.unwrap();
        noop.push(start.elapsed());
    }
    noop.sort();
    engine.shutdown().await;

    // Raw sqlx: the same rows, multi-row INSERTs of 1,000 into the client schema.
    let path = dir.path().join("raw.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut conn).await.unwrap();
    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut conn).await.unwrap();
    let start = Instant::now();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    for chunk_start in (0..n as u64).step_by(1000) {
        let rows: Vec<(String, String)> = (chunk_start..(chunk_start + 1000).min(n as u64))
            .map(|i| {
                let o = order(i);
                (o.id.clone(), serde_json::to_string(&o).unwrap())
            })
            .collect();
        let mut b: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO offsync_records (collection, id, data, deleted, server_version, base, modified_at) ",
        );
        b.push_values(&rows, |mut r, (id, data)| {
            r.push_bind("work_orders")
                .push_bind(id)
                .push_bind(data)
                .push_bind(0i64)
                .push_bind(1i64)
                .push_bind(data)
                .push_bind(0i64);
        });
        b.build().execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let raw = n as f64 / start.elapsed().as_secs_f64();
    let p = |q: f64| noop[((noop.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "CLIENT initial_sync_records_per_s={rate:.0} seconds={:.1} peak_rss_mib={rss:.1} raw_sqlx_records_per_s={raw:.0} ratio={:.2} noop_p50_ms={:.2} noop_p99_ms={:.2}",
        took.as_secs_f64(),
        rate / raw,
        p(0.5),
        p(0.99)
    );
}

async fn bench_backend(backend: &str, database: String, n: usize, pushes: usize) {
    let text = format!(
        "database = \"{database}\"\nmax_batch = 1000\nmax_body_bytes = 16777216\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.work_orders]\naccess = \"owner\"\n",
        token_sha256(TOKEN)
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();

    // Seed through the store's push (in process): the server's own push rate.
    let user = User::new("alice", false);
    let rules = Arc::new(PushRules {
        collections: config.collections.clone(),
        users: [user.name.clone()].into_iter().collect(),
        actions: Default::default(),
    });
    let start = Instant::now();
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(1000) {
        let raw: Vec<Value> = chunk
            .iter()
            .map(|i| {
                serde_json::json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": "work_orders",
                    "record_id": order(*i).id, "op": "upsert", "base_version": null, "data": order(*i)})
            })
            .collect();
        store
            .push(PushJob { user: user.clone(), rules: rules.clone(), mutations: raw, client_id: "seed".into() })
            .await
            .unwrap();
    }
    let seeded = start.elapsed();
    println!(
        "[{backend}] seeded {n} records through ServerStore::push in {:.1} s ({:.0} mutations/s)",
        seeded.as_secs_f64(),
        n as f64 / seeded.as_secs_f64()
    );

    let server = server::start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--client", &server.url(), &n.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("CLIENT"))
        .unwrap_or_else(|| panic!("client failed: {}", String::from_utf8_lossy(&out.stderr)));
    println!("[{backend}] {line}");

    // Push: M inserts queued (no trigger fires: no start sync, an hour's debounce),
    // then one push-only cycle drains them over HTTP.
    let dir = tempfile::tempdir().unwrap();
    let engine = client(&server.url(), dir.path(), "pusher", true, 1000).await;
    let orders = engine.collection::<Order>().unwrap();
    let items: Vec<_> = (0..pushes as u64).map(|i| order(10_000_000 + i)).collect();
    orders.insert_many(&items).await.unwrap();
    let start = Instant::now();
    let report = engine.sync_unit("push", Default::default()).await.unwrap();
    assert_eq!(report.pushed, pushes as u64);
    let took = start.elapsed();
    println!(
        "[{backend}] push of {pushes} queued mutations over HTTP: {:.1} s, {:.0} mutations/s",
        took.as_secs_f64(),
        pushes as f64 / took.as_secs_f64()
    );
    engine.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        client_process(&args[i + 1], args[i + 2].parse().unwrap()).await;
        return;
    }
    let n = env("SYNC_BENCH_N", 1_000_000);
    let pushes = env("SYNC_BENCH_PUSH", 100_000);
    let dir = tempfile::tempdir().unwrap();
    bench_backend("sqlite", format!("sqlite://{}", dir.path().join("server.db").display()), n, pushes).await;
    if let Ok(base) = std::env::var("SYNC_TEST_POSTGRES_URL") {
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        bench_backend("postgres", format!("{base}{sep}options[search_path]={schema}"), n, pushes).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await.unwrap();
    }
}
