//! What a field technician's device holds: work orders (conflict detection with a
//! three-way merge, true conflicts left to the person), visits under a work order
//! (one-to-many) and the product catalogue (read-only, incremental).

use serde::{Deserialize, Serialize};
use sync_core::{CollectionSpec, LocalEntity};
use sync_patterns::resolvers::ThreeWayMerge;
use sync_patterns::{ConflictDetection, OneToMany, ReadOnlyOptimized};

/// The statuses a work order moves through, in order.
pub const STATUSES: [&str; 3] = ["open", "in_progress", "done"];

/// A job at a customer's site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrder {
    /// Its id.
    pub id: String,
    /// The number people say ("WO-1042").
    pub number: u32,
    /// The customer's site.
    pub site: String,
    /// What to do there.
    pub task: String,
    /// One of [`STATUSES`].
    pub status: String,
    /// The technician's notes.
    #[serde(default)]
    pub notes: String,
    /// The team whose technicians see it (the server's sync rule reads it).
    pub team: String,
    /// When the technician marked arrival on site.
    #[serde(default)]
    pub arrived_at: Option<String>,
}

impl LocalEntity for WorkOrder {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A visit to a work order's site, with what was done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    /// Its id.
    pub id: String,
    /// The work order it belongs to.
    pub work_order_id: String,
    /// What happened.
    pub note: String,
    /// When (RFC 3339).
    pub at: String,
    /// The team, as its work order's.
    pub team: String,
}

impl LocalEntity for Visit {
    const COLLECTION: &'static str = "visits";
    fn id(&self) -> &str {
        &self.id
    }
}

/// A product of the catalogue (read-only on devices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Its id.
    pub id: String,
    /// The stock keeping unit.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// Price in cents.
    pub price_cents: u32,
}

impl LocalEntity for Product {
    const COLLECTION: &'static str = "products";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The collections a device registers, with their patterns and list-screen indexes.
pub fn specs() -> anyhow::Result<Vec<CollectionSpec>> {
    Ok(vec![
        CollectionSpec::of::<WorkOrder>(ConflictDetection::new().resolver(ThreeWayMerge::new()))
            .index(&["status", "number"])
            .index(&["site"]),
        CollectionSpec::of::<Visit>(
            OneToMany::new(ConflictDetection::new()).belongs_to("work_order_id", "work_orders")?,
        ),
        CollectionSpec::of::<Product>(ReadOnlyOptimized).index(&["name"]),
    ])
}
