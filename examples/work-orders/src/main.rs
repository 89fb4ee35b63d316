//! The flagship example: a field-service work-order app that keeps working offline.
//!
//! It starts the reference sync server on 127.0.0.1 (embedded SQLite file) and two
//! devices of one technician, a phone and a tablet, each with its own SQLite store,
//! syncing over HTTP. The phone goes offline, edits, restarts, comes back, meets a
//! conflict with the tablet's edit and merges it; both devices converge. Status changes
//! and events are printed as they happen.
//!
//! Run it with: `cargo run -p work-orders`

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sync_core::{AccountId, CollectionSpec, Credentials, Engine, EngineOptions, LocalEntity, Resolution, SyncEvent};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{from_config, start};
use sync_sqlite::SqliteStore;

/// A work order as the technician's devices store it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

fn order(id: &str, site: &str, task: &str, status: &str) -> WorkOrder {
    WorkOrder { id: id.into(), site: site.into(), task: task.into(), status: status.into() }
}

const TOKEN: &str = "technician-7-secret";

/// A device: its engine on its own SQLite file, following the server's change events.
async fn open_device(name: &'static str, db: &Path, url: &str, online: bool) -> anyhow::Result<Engine> {
    let transport = Arc::new(HttpTransport::new(url)?);
    let credentials = Credentials::new(AccountId::new("technician-7")?, TOKEN)?;
    let options =
        EngineOptions { start_online: online, debounce: Duration::from_millis(100), ..EngineOptions::default() };
    let engine = Engine::builder()
        .store(Arc::new(SqliteStore::open(db).await?))
        .credentials(credentials)
        .transport(transport.clone())
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(options)
        .build()
        .await?;
    transport.follow_events(engine.change_notifier());
    print_activity(name, &engine);
    Ok(engine)
}

/// Prints each device's events and status changes as they happen.
fn print_activity(name: &'static str, engine: &Engine) {
    let mut events = engine.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let line = match event {
                SyncEvent::CycleCompleted { report } => {
                    format!(
                        "sync done: pushed {}, pulled {}, conflicts {}",
                        report.pushed, report.pulled, report.conflicts
                    )
                }
                SyncEvent::CycleFailed { error, .. } => format!("sync failed: {error}"),
                SyncEvent::ConflictDetected { id, .. } => format!("CONFLICT on {id}"),
                SyncEvent::ConflictResolved { id, .. } => format!("conflict on {id} resolved"),
                SyncEvent::NetworkChanged { network } => format!("network {network:?}"),
                SyncEvent::RecordChanged { id, origin, .. } => format!("record {id} changed ({origin:?})"),
                _ => continue,
            };
            println!("    [{name} event]  {line}");
        }
    });
    let mut status = engine.status();
    tokio::spawn(async move {
        let mut last = None;
        while status.changed().await.is_ok() {
            let s = status.borrow_and_update().clone();
            let shown = (s.network, s.pending, s.conflicts);
            if last != Some(shown) {
                println!("    [{name} status] {:?}, pending {}, conflicts {}", s.network, s.pending, s.conflicts);
                last = Some(shown);
            }
        }
    });
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = ServerConfig::from_toml(&format!(
        "database = \"sqlite://{}\"\n[[users]]\nname = \"technician-7\"\ntoken_sha256 = \"{}\"\n\
         [collections.work_orders]\naccess = \"owner\"\n",
        dir.path().join("server.db").display(),
        token_sha256(TOKEN)
    ))?;
    let (state, store) = from_config(&config).await?;
    let server = start("127.0.0.1:0", state, store, config.tombstone_retention).await?;
    println!("Reference server listening on {} (SQLite)", server.url());

    let phone_db = dir.path().join("phone.db");
    let phone = open_device("phone", &phone_db, &server.url(), true).await?;
    let tablet = open_device("tablet", &dir.path().join("tablet.db"), &server.url(), true).await?;

    println!("\n1. Morning: the phone records two jobs; the tablet hears of them and pulls.");
    let orders = phone.collection::<WorkOrder>()?;
    orders.insert(&order("wo-1", "Depot 4", "replace filter", "open")).await?;
    orders.insert(&order("wo-2", "Clinic", "check boiler", "open")).await?;
    pause().await;

    println!("\n2. In the basement, no network: the phone keeps working.");
    phone.set_online(false);
    orders.update(&order("wo-1", "Depot 4", "replace filter", "done")).await?;
    orders.insert(&order("wo-3", "School", "fix valve", "open")).await?;
    println!("   Meanwhile the office edits wo-1 on the tablet.");
    let tablet_orders = tablet.collection::<WorkOrder>()?;
    tablet_orders.update(&order("wo-1", "Depot 4 (gate B)", "replace filter", "open")).await?;
    pause().await;

    println!("\n3. The phone restarts while still offline: its queue is on disk.");
    phone.shutdown().await;
    let phone = open_device("phone", &phone_db, &server.url(), false).await?;
    println!("   after restart: {} queued mutations", phone.status().borrow().pending);

    println!("\n4. Back in coverage: the queue drains and wo-1 conflicts with the office's edit.");
    phone.set_online(true);
    phone.sync_now().await?;
    pause().await;
    for c in phone.conflicts().await? {
        println!(
            "   {}: local {}, server {}, base {}",
            c.record_id,
            show(&c.local),
            show(&c.server.and_then(|s| s.data)),
            show(&c.base)
        );
        let merged =
            serde_json::json!({"id": "wo-1", "site": "Depot 4 (gate B)", "task": "replace filter", "status": "done"});
        println!("   the technician merges: {merged}");
        phone.resolve("work_orders", "wo-1", Resolution::Merged(merged)).await?;
    }
    phone.sync_now().await?;
    pause().await;

    println!("\n5. Both devices agree:");
    let mut on_phone = phone.collection::<WorkOrder>()?.list().await?;
    let mut on_tablet = tablet_orders.list().await?;
    on_phone.sort_by(|a, b| a.id.cmp(&b.id));
    on_tablet.sort_by(|a, b| a.id.cmp(&b.id));
    for o in &on_phone {
        println!("   {}: {} - {} ({})", o.id, o.site, o.task, o.status);
    }
    println!("   converged: {}", on_phone == on_tablet);
    phone.shutdown().await;
    tablet.shutdown().await;
    server.stop().await?;
    anyhow::ensure!(on_phone == on_tablet, "the devices did not converge");
    Ok(())
}

fn show(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map_or_else(|| "(none)".into(), |v| format!("{} / {}", v["site"], v["status"]))
}
