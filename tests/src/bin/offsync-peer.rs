//! A second (and third) OS process for the multi-process tests (`tests/tests/processes.rs`):
//! an engine on a store file that another process opens too.
//!
//! - `offsync-peer write <db> <url> <prefix> <count>`: writes `count` work orders
//!   `<prefix>-<n>`, then (online) waits until the shared outbox is empty and prints
//!   `done`; offline it prints `written` and exits.
//! - `offsync-peer watch <db> <url> <id>`: prints `watching` once its live query has
//!   run, then `seen <id>` when a work order with that id appears in it.
//!
//! `PEER_ONLINE=0` keeps the engine offline; `PEER_LEASE_MS` sets its sync lease;
//! `PEER_BATCH=1` writes the work orders in one transaction instead of one by one. Any
//! failure is printed to stderr and exits with status 1.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sync_core::{AccountId, CollectionSpec, Credentials, Engine, EngineOptions, LocalEntity, LocalStore};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WorkOrder {
    id: String,
    title: String,
    n: u32,
}

impl LocalEntity for WorkOrder {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

type Failure = Box<dyn std::error::Error>;

async fn engine(db: &str, url: &str) -> Result<(Engine, Arc<SqliteStore>), Failure> {
    let online = std::env::var("PEER_ONLINE").map_or(true, |v| v != "0");
    let mut options = EngineOptions { start_online: online, sync_on_start: online, ..EngineOptions::default() };
    if let Some(ms) = std::env::var("PEER_LEASE_MS").ok().and_then(|v| v.parse().ok()) {
        options.sync_lease = Duration::from_millis(ms);
    }
    let store = Arc::new(SqliteStore::open(db).await?);
    let engine = Engine::builder()
        .store(store.clone())
        .credentials(Credentials::new(AccountId::new("alice")?, "alice-token")?)
        .transport(Arc::new(HttpTransport::new(url)?))
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(options)
        .build()
        .await?;
    Ok((engine, store))
}

async fn write(db: &str, url: &str, prefix: &str, count: u32) -> Result<(), Failure> {
    let (engine, store) = engine(db, url).await?;
    let orders = engine.collection::<WorkOrder>()?;
    let all: Vec<WorkOrder> =
        (0..count).map(|n| WorkOrder { id: format!("{prefix}-{n}"), title: format!("from {prefix}"), n }).collect();
    if std::env::var("PEER_BATCH").is_ok_and(|v| v == "1") {
        orders.insert_many(&all).await?;
    } else {
        for order in &all {
            orders.insert(order).await?;
        }
    }
    if std::env::var("PEER_ONLINE").is_ok_and(|v| v == "0") {
        println!("written");
        engine.shutdown().await;
        return Ok(());
    }
    // Until the outbox this process shares with the other is empty (whoever pushed it).
    // Read from the store: the status counts follow writes only after a short delay.
    let mut status = engine.status();
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let counts = store.counts().await?;
            if counts.pending == 0 && counts.failed == 0 && counts.conflicts == 0 {
                return Ok::<_, sync_core::Error>(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
        }
    })
    .await
    .map_err(|_| format!("still pending after 90 s: {:?}", *status.borrow()))??;
    println!("done");
    engine.shutdown().await;
    Ok(())
}

async fn watch(db: &str, url: &str, id: &str) -> Result<(), Failure> {
    let (engine, _store) = engine(db, url).await?;
    let orders = engine.collection::<WorkOrder>()?;
    let mut results = orders.query().watch();
    let mut announced = false;
    while let Some(result) = results.next().await {
        let records = result?;
        if !announced {
            println!("watching");
            announced = true;
        }
        if records.iter().any(|r| r.id == id) {
            println!("seen {id}");
            engine.shutdown().await;
            return Ok(());
        }
    }
    Err("the watch ended".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [_, "write", db, url, prefix, count] => match count.parse() {
            Ok(count) => write(db, url, prefix, count).await,
            Err(e) => Err(format!("count {count:?}: {e}").into()),
        },
        [_, "watch", db, url, id] => watch(db, url, id).await,
        _ => Err("usage: offsync-peer write <db> <url> <prefix> <count> | watch <db> <url> <id>".into()),
    };
    if let Err(e) = outcome {
        eprintln!("offsync-peer failed: {e}");
        std::process::exit(1);
    }
}
