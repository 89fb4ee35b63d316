//! Ready-made sync patterns for offsync, each a [`SyncPattern`] the engine runs per
//! collection. This release has read/write with conflict detection; the others follow.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sync_core::{CollectionSpec, LocalEntity};
//! use sync_patterns::ConflictDetection;
//!
//! #[derive(Serialize, Deserialize)]
//! struct WorkOrder { id: String, title: String }
//! impl LocalEntity for WorkOrder {
//!     const COLLECTION: &'static str = "work_orders";
//!     fn id(&self) -> &str { &self.id }
//! }
//!
//! // Conflicts are stored and shown to the user (the default resolver defers).
//! let spec = CollectionSpec::of::<WorkOrder>(ConflictDetection::new());
//! # let _ = spec;
//! ```

mod conflict_detection;

pub use conflict_detection::ConflictDetection;
pub use sync_core::SyncPattern;
