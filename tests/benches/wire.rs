//! `wire`: bytes on the wire and records/s of an initial sync, and bytes of a push
//! backlog, with compression (zstd, negotiated) and without, against the reference
//! server on loopback, through a counting TCP proxy, in the same run.
//!
//! Run with: `cargo bench -p offsync-tests --bench wire` (`WIRE_N` records, default 100,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use shared::{Order, order};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sync_core::{AccountId, CollectionSpec, Credentials, Engine, EngineOptions};
use sync_http::{HttpOptions, HttpTransport};
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::logic::User;
use sync_server::server::{self, from_config};
use sync_server::store::{PushJob, PushRules};
use sync_sqlite::SqliteStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "bench-token";

/// A TCP proxy to `target` counting the bytes each way as they pass (client to server,
/// server to client); connections stay open (keep-alive), so counting cannot wait for them
/// to close.
async fn counting_proxy(target: std::net::SocketAddr) -> (String, Arc<(AtomicU64, AtomicU64)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let shared = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else { return };
            let counts = shared.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else { return };
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                let up_counts = counts.clone();
                let up = tokio::spawn(async move { pump(&mut in_read, &mut out_write, &up_counts.0).await });
                pump(&mut out_read, &mut in_write, &counts.1).await;
                up.abort();
            });
        }
    });
    (url, counts)
}

async fn pump(from: &mut (impl AsyncReadExt + Unpin), to: &mut (impl AsyncWriteExt + Unpin), count: &AtomicU64) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn device(url: &str, dir: &std::path::Path, name: &str, compression: bool) -> Engine {
    let transport = HttpTransport::with_options(
        url,
        HttpOptions { timeout: Duration::from_secs(120), compression, ..HttpOptions::default() },
    )
    .unwrap();
    Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.join(format!("{name}.db"))).await.unwrap()))
        .credentials(Credentials::new(AccountId::new("alice").unwrap(), TOKEN).unwrap())
        .transport(Arc::new(transport))
        .collection(CollectionSpec::of::<Order>(ConflictDetection::new()))
        .options(EngineOptions {
            sync_on_start: false,
            debounce: Duration::from_secs(3600),
            ..EngineOptions::default()
        })
        .build()
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("WIRE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "database = \"sqlite://{}\"\nmax_batch = 1000\nmax_body_bytes = 16777216\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.work_orders]\naccess = \"owner\"\n",
        dir.path().join("server.db").display(),
        token_sha256(TOKEN)
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let user = User::new("alice", false);
    let rules = Arc::new(PushRules {
        collections: config.collections.clone(),
        users: [user.name.clone()].into_iter().collect(),
        actions: Default::default(),
    });
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
    let server = server::start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();
    println!(
        "wire: initial sync of {n} work orders (about 200 bytes of JSON each) over loopback, then a push of 10,000"
    );
    for compression in [false, true] {
        let (url, counts) = counting_proxy(server.addr).await;
        let engine = device(&url, dir.path(), &format!("device-{compression}"), compression).await;
        let start = Instant::now();
        engine.sync_now().await.unwrap();
        let took = start.elapsed();
        let down = counts.1.load(Ordering::Relaxed);
        let up = counts.0.load(Ordering::Relaxed);
        println!(
            "initial sync, compression {:>5}: {:>6.1} bytes/record down ({:.1} MB), {:>7.1} up total, {:>8.0} records/s",
            compression,
            down as f64 / n as f64,
            down as f64 / 1e6,
            up as f64 / 1e3,
            n as f64 / took.as_secs_f64()
        );
        let orders = engine.collection::<Order>().unwrap();
        let edits: Vec<Order> =
            (0..10_000u64).map(|i| order(n as u64 + i + if compression { 10_000 } else { 0 })).collect();
        orders.insert_many(&edits).await.unwrap();
        let before = counts.0.load(Ordering::Relaxed);
        let start = Instant::now();
        engine.sync_now().await.unwrap();
        let took = start.elapsed();
        let up = counts.0.load(Ordering::Relaxed) - before;
        println!(
            "push of 10,000, compression {:>5}: {:>6.1} bytes/mutation up, {:>8.0} mutations/s",
            compression,
            up as f64 / 10_000.0,
            10_000.0 / took.as_secs_f64()
        );
        engine.shutdown().await;
    }
    server.stop().await.unwrap();
}
