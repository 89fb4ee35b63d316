//! The reference server on an embedded SQLite file, configured for the field team and
//! seeded with work orders and a catalogue.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sync_core::CollectionName;
use sync_core::protocol::ErrorDetail;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::logic::User;
use sync_server::server::{RunningServer, from_config, start};
use sync_server::store::{ActionHandler, PushJob, PushRules};

use crate::model::{Product, STATUSES, WorkOrder};

/// The technicians, each with a device, and their bearer tokens.
pub const TECHNICIANS: [(&str, &str); 2] = [("ana", "ana-device-token"), ("ben", "ben-device-token")];

/// The team both technicians are in (the work orders' `team`).
pub const TEAM: &str = "north";

/// `mark_arrived` on the server: the dispatch side of "the technician is on site". The
/// device records the arrival on the work order itself; the server accepts the action
/// (a real one would notify the customer).
struct MarkArrived;

impl ActionHandler for MarkArrived {
    fn apply(
        &self,
        user: &User,
        _collection: &CollectionName,
        record_id: Option<&sync_core::RecordId>,
        _args: &Value,
    ) -> Result<(), ErrorDetail> {
        tracing::info!(user = %user.name, record = ?record_id.map(|r| r.as_str()), "technician arrived on site");
        Ok(())
    }
}

fn config_text(database: &Path) -> String {
    let mut text = format!("database = \"sqlite://{}\"\nmax_batch = 1000\n", database.display());
    for (name, token) in TECHNICIANS {
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\ngroups = [\"{TEAM}\"]\n",
            token_sha256(token)
        ));
    }
    text.push_str(
        "[collections.work_orders]\nread = [\"team in user.groups\"]\nwrite = [\"team in user.groups\"]\n\
         [collections.visits]\nread = [\"team in user.groups\"]\nwrite = [\"team in user.groups\"]\n\
         [collections.products]\naccess = \"read_only\"\n",
    );
    text
}

/// A seeded work order.
pub fn seed_order(i: u32) -> WorkOrder {
    const SITES: [&str; 8] =
        ["Depot 4", "City Clinic", "North School", "Harbour Office", "Mill Lane 12", "Station Hall", "Pool", "Library"];
    const TASKS: [&str; 6] =
        ["replace filter", "check boiler", "fix valve", "service pump", "inspect wiring", "bleed radiators"];
    WorkOrder {
        id: format!("wo-{i}"),
        number: 1000 + i,
        site: format!("{} {}", SITES[i as usize % SITES.len()], i / 8 + 1),
        task: TASKS[i as usize % TASKS.len()].to_owned(),
        status: STATUSES[i as usize % 2].to_owned(),
        notes: String::new(),
        team: TEAM.to_owned(),
        arrived_at: None,
    }
}

fn seed_product(i: u32) -> Product {
    const PARTS: [&str; 5] = ["Filter", "Valve", "Gasket", "Fuse", "Sensor"];
    Product {
        id: format!("p-{i}"),
        sku: format!("SKU-{:05}", i),
        name: format!("{} type {}", PARTS[i as usize % PARTS.len()], i / 5 + 1),
        price_cents: 250 + (i * 37) % 9000,
    }
}

/// Starts the server on `dir/server.db` at 127.0.0.1 (any free port) and seeds it with
/// `orders` work orders and `products` products, drawing a progress bar on stderr.
///
/// # Errors
/// When the configuration, the database or the listener fails.
pub async fn start_seeded(dir: &Path, orders: u32, products: u32, progress: bool) -> anyhow::Result<RunningServer> {
    let config = ServerConfig::from_toml(&config_text(&dir.join("server.db")))?;
    let (state, store) = from_config(&config).await?;
    let state = state.action("mark_arrived", MarkArrived);
    let dispatch = User::new("dispatch", true);
    let rules = Arc::new(PushRules {
        collections: config.collections.clone(),
        users: TECHNICIANS.iter().map(|(name, _)| (*name).to_owned()).collect(),
        actions: Default::default(),
    });
    let total = orders + products;
    let mut done = 0;
    let records = (0..orders)
        .map(|i| ("work_orders", json!(seed_order(i))))
        .chain((0..products).map(|i| ("products", json!(seed_product(i)))))
        .collect::<Vec<_>>();
    for chunk in records.chunks(500) {
        let mutations = chunk
            .iter()
            .map(|(collection, data)| {
                json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": collection,
                       "record_id": data["id"], "op": "upsert", "base_version": 0, "data": data})
            })
            .collect();
        store
            .push(PushJob { user: dispatch.clone(), rules: rules.clone(), mutations, client_id: "seed".into() })
            .await?;
        done += chunk.len() as u32;
        if progress {
            draw_progress(done, total);
        }
    }
    if progress {
        eprintln!();
    }
    Ok(start("127.0.0.1:0", state, store, config.tombstone_retention).await?)
}

fn draw_progress(done: u32, total: u32) {
    const WIDTH: u32 = 40;
    let filled = (done * WIDTH / total.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(filled), " ".repeat(WIDTH as usize - filled));
    eprint!("\rseeding the server [{bar}] {done}/{total}");
    let _ = std::io::stderr().flush();
}
