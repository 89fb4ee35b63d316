//! The flagship example: a field-service work-order app that keeps working offline.
//!
//! It writes work orders while offline, "restarts" (drops the engine and reopens the
//! same SQLite file), goes online and watches the persisted outbox drain, printing the
//! sync status and events as they happen. Until the reference server lands, the server
//! is sync-testkit's in-process `MemoryServer`.
//!
//! Run it with: `cargo run -p work-orders`

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sync_core::{CollectionSpec, Engine, EngineOptions, LocalEntity, RecordId, SyncEvent};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

/// A work order as the technician's device stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkOrder {
    id: String,
    site: String,
    task: String,
    status: String,
}

impl LocalEntity for WorkOrder {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

async fn open_engine(db: &std::path::Path, server: &Arc<MemoryServer>, online: bool) -> anyhow::Result<Engine> {
    let store = SqliteStore::open(db).await?;
    let options =
        EngineOptions { start_online: online, debounce: Duration::from_millis(100), ..EngineOptions::default() };
    let engine = Engine::builder()
        .store(Arc::new(store))
        .transport(server.clone())
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(options)
        .build()
        .await?;
    Ok(engine)
}

/// Prints every event and status change until the engine stops.
fn print_activity(engine: &Engine) {
    let mut events = engine.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                SyncEvent::RecordChanged { .. } => {}
                other => println!("  event:  {other:?}"),
            }
        }
    });
    let mut status = engine.status();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let s = status.borrow_and_update().clone();
            println!(
                "  status: {:?}, {:?}, pending {}, conflicts {}, failed {}",
                s.network, s.phase, s.pending, s.conflicts, s.failed
            );
        }
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("technician.db");
    let server = Arc::new(MemoryServer::new());

    println!("1. In the basement, no network: the technician records three visits.");
    let engine = open_engine(&db, &server, false).await?;
    print_activity(&engine);
    let orders = engine.collection::<WorkOrder>()?;
    for (site, task) in [("Depot 4", "replace filter"), ("Clinic", "check boiler"), ("School", "fix valve")] {
        let order = WorkOrder {
            id: RecordId::generate().to_string(),
            site: site.into(),
            task: task.into(),
            status: "open".into(),
        };
        orders.insert(&order).await?;
        println!("  saved locally: {} - {}", order.site, order.task);
    }
    let mut first = orders.list().await?.remove(0);
    first.status = "done".into();
    orders.update(&first).await?;
    println!("  {} marked done (folded into its unsent create)", first.site);
    tokio::time::sleep(Duration::from_millis(200)).await;

    println!("2. The phone restarts: the engine is dropped and reopened from the same file.");
    engine.shutdown().await;
    let engine = open_engine(&db, &server, false).await?;
    print_activity(&engine);
    println!(
        "  {} work orders and {} queued mutations survived",
        engine.collection::<WorkOrder>()?.list().await?.len(),
        engine.status().borrow().pending
    );

    println!("3. Back in coverage: the outbox drains.");
    engine.set_online(true);
    let report = engine.sync_now().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("  report: pushed {}, pulled {}, conflicts {}", report.pushed, report.pulled, report.conflicts);
    println!("  the server now holds {} work orders:", server.live_records("work_orders").len());
    for (id, data) in server.live_records("work_orders") {
        println!("    {id}: {} - {} ({})", data["site"], data["task"], data["status"]);
    }
    engine.shutdown().await;
    Ok(())
}
